"""What an output's columns are: `--keep-columns` carries only the input columns named (an id, say) beside the
results, every row still kept in order; `--probabilities` adds each label's probability. What an output carries is
part of what makes it up to date."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.test_bundle import _inbox
from tests.test_nightly import _crash_on_the_third_window, run, sentences


@pytest.fixture
def labelled(tmp_path):
    """A labelled input with an id column and a list column."""
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(30)], "sentence": sentences(30),
                             "label": [i % 2 for i in range(30)], "tags": [[i] for i in range(30)]}), path)
    return path


def test_the_output_carries_the_columns_named_in_their_order_and_the_same_results(tiny_export, labelled, tmp_path):
    common = ["--model", tiny_export, "--variant", "fp32", "--window-rows", "8"]
    assert run(labelled, "-o", tmp_path / "all.parquet", *common).exit_code == 0
    every = pq.read_table(tmp_path / "all.parquet")
    result = run(labelled, "-o", tmp_path / "ids.parquet", "--keep-columns", "id", *common)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output  # (the label column is read for evaluation, though not carried)
    kept = pq.read_table(tmp_path / "ids.parquet")
    # (the input has a `label` column, so the results are pred_*: named as they are without --keep-columns)
    assert kept.column_names == ["id", "pred_label", "pred_score", "pred_status"]
    assert kept == every.select(kept.column_names)
    # CSV, in the order named (a list column not carried is no bar to CSV), and the results alone
    assert run(labelled, "-o", tmp_path / "two.csv", "--keep-columns", "sentence, id", *common).exit_code == 0
    two = pacsv.read_csv(tmp_path / "two.csv")
    assert two.column_names == ["sentence", "id", "pred_label", "pred_score", "pred_status"]
    assert two.column("id").to_pylist() == every.column("id").to_pylist()
    assert two.column("pred_label").to_pylist() == every.column("pred_label").to_pylist()
    assert run(labelled, "-o", tmp_path / "bare.parquet", "--keep-columns", "", *common).exit_code == 0
    bare = pq.read_table(tmp_path / "bare.parquet")
    assert bare == every.select(["pred_label", "pred_score", "pred_status"])


@pytest.mark.parametrize(("keep", "code", "said"), [
    ("id,Sentence", 3, "column 'Sentence' not found in {dir}/in.parquet; columns are id, sentence, label, tags; pass "
                       "--keep-columns sentence (so the header writes it)"),
    ("id,,label", 2, "--keep-columns 'id,,label' has an empty name; separate the names by single commas"),
    ("id,label,id", 2, "--keep-columns names 'id' more than once; name each column once"),
    ("id,tags", 2, "column(s) 'tags' (list<element: int64>) cannot be written to out.csv, a CSV/TSV file; write "
                   "Parquet instead (an --output ending in .parquet, or --format parquet), or leave them out "
                   "(--keep-columns id)"),
])
def test_a_column_that_cannot_be_kept_is_refused_in_one_line_before_any_work(tiny_export, labelled, tmp_path, keep,
                                                                              code, said):
    result = run(labelled, "-o", tmp_path / "out.csv", "--keep-columns", keep, "--model", tiny_export)
    assert result.exit_code == code and result.output.count("\n") == 1, result.output
    assert said.replace("{dir}", str(tmp_path)) in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


def test_a_name_with_a_comma_or_edge_spaces_is_kept_in_double_quotes_as_the_refusal_says(tiny_export, tmp_path):
    """Names were split at every comma and trimmed, so a column 'a,b' or ' pad ' could not be kept, and the refusal
    told the user to pass --keep-columns ' pad ', which was trimmed again. A name in double quotes is taken as
    written; the refusal's advice, typed as it says, works."""
    source = tmp_path / "odd.parquet"
    pq.write_table(pa.table({"id": [1, 2], "a,b": [3, 4], " pad ": [5, 6], 'say "hi"': [7, 8],
                             "sentence": sentences(2)}), source)
    common = ["--model", tiny_export, "--variant", "fp32"]
    result = run(source, "-o", tmp_path / "o.parquet", "--keep-columns", "Pad", *common)
    assert result.exit_code == 3 and result.output.endswith("""pass --keep-columns '" pad "' (so the header """
                                                            "writes it)\n"), result.output
    advice = shlex.split(result.output.split("; pass ")[1].split(" (so")[0])
    assert advice == ["--keep-columns", '" pad "']
    result = run(source, "-o", tmp_path / "o.parquet", "--keep-columns", 'id,a,b', *common)
    assert result.exit_code == 3 and """in double quotes ('id,"a,b"')""" in result.output
    result = run(source, "-o", tmp_path / "o.parquet", *advice, *common)
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "o.parquet").column_names == [" pad ", "label", "score", "status"]
    keep = ' id , "a,b"," pad ","say ""hi"""'
    assert run(source, "-o", tmp_path / "o.parquet", "--keep-columns", keep, "--update", *common).exit_code == 0
    assert pq.read_table(tmp_path / "o.parquet").column_names == ["id", "a,b", " pad ", 'say "hi"', "label", "score",
                                                                   "status"]
    result = run(source, "-o", tmp_path / "x.parquet", "--keep-columns", 'id,"a,b', *common)
    assert result.exit_code == 2 and "from character 4 on, a quote is not closed" in result.output
    assert not (tmp_path / "x.parquet").exists()


def test_what_an_output_carries_is_part_of_being_up_to_date(tiny_export, labelled, tmp_path):
    output = tmp_path / "out.parquet"
    common = ["-o", output, "--model", tiny_export, "--variant", "fp32"]
    assert run(labelled, *common, "--keep-columns", "id").exit_code == 0
    summary = output.with_name(output.name + ".summary.json")
    assert run(labelled, *common, "--keep-columns", "id").exit_code == 0
    skipped = json.loads(summary.read_text())["inputs"][0]
    assert skipped["state"] == "skipped"  # (and says what its result columns are called, as a scored one does)
    assert skipped["columns"] == {"label": "pred_label", "score": "pred_score", "status": "pred_status"}
    result = run(labelled, *common)
    assert result.exit_code == 5, result.output
    assert "out.parquet already exists (written carrying input column(s) 'id', and this run would carry every input " \
           "column (--keep-columns)); pass --overwrite to replace it, or --update" in result.output
    assert pq.read_table(output).column_names == ["id", "pred_label", "pred_score", "pred_status"]
    assert run(labelled, *common, "--update").exit_code == 0
    assert json.loads(summary.read_text())["inputs"][0]["state"] == "scored"
    assert pq.read_table(output).column_names == ["id", "sentence", "label", "tags", "pred_label", "pred_score",
                                                  "pred_status"]
    assert run(labelled, *common).exit_code == 0  # (an output of every column, as before the option: up to date)
    assert json.loads(summary.read_text())["inputs"][0]["state"] == "skipped"


def test_small_inputs_scored_together_carry_the_columns_named(tiny_export, tmp_path):
    _inbox(tmp_path / "inbox", [3, 5, 2])
    out = tmp_path / "out"
    result = run(tmp_path / "inbox", "-o", out, "--model", tiny_export, "--keep-columns", "id", "--format", "csv")
    assert result.exit_code == 0, result.output
    for i, size in enumerate([3, 5, 2]):
        table = pacsv.read_csv(out / f"f{i:02d}.csv")
        assert table.column_names == ["id", "label", "score", "status"]
        assert table.column("id").to_pylist() == [f"{i}-{j}" for j in range(size)]


def test_a_crashed_run_resumes_to_the_output_it_would_have_written(tiny_export, tmp_path, monkeypatch):
    """The finished windows hold the columns read (the text for --check, those carried; a Parquet file's others are
    not read at all); the output, written from them on resuming, carries only those named."""
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(50)), "sentence": sentences(50), "wide": ["x" * 100] * 50}), source)
    common = ["--model", tiny_export, "--window-rows", "10", "--variant", "fp32", "--keep-columns", "id"]
    assert run(source, "-o", tmp_path / "reference.csv", *common).exit_code == 0
    output = tmp_path / "out.csv"
    _crash_on_the_third_window(monkeypatch, source, output, *common)
    parts = sorted(tmp_path.glob(".out.csv.scorer-parts/part-*"))
    assert not output.exists() and len(parts) == 2
    assert pq.read_schema(parts[0]).names == ["id", "sentence", "label", "score", "status"]  # (no "wide")
    assert run(source, "-o", output, *common).exit_code == 0
    summary = json.loads(output.with_name(output.name + ".summary.json").read_text())["inputs"][0]
    assert summary["state"] == "resumed" and summary["resumed_from_row"] == 20
    assert output.read_bytes() == (tmp_path / "reference.csv").read_bytes()
    assert output.read_text().startswith("\"id\",\"label\",\"score\",\"status\"\n")


def test_each_label_s_probability_beside_the_results_null_where_unscored(tiny_export, tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(6)), "sentence": ["a cat sat.", None, "", "dogs run.", "x " * 300,
                                                                "birds sing."]}), source)
    common = ["--model", tiny_export, "--variant", "fp32"]
    result = run(source, "-o", tmp_path / "out.parquet", "--probabilities", *common)
    assert result.exit_code == 0, result.output
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == ["id", "sentence", "label", "score", "status", "prob_0", "prob_1"]
    rows = out.to_pylist()
    assert [r["status"] for r in rows] == ["ok", "null", "empty", "ok", "truncated", "ok"]
    for row in rows:
        if row["label"] is None:
            assert row["prob_0"] is None and row["prob_1"] is None
        else:
            assert row["prob_1"] == row["score"] and row["prob_0"] + row["prob_1"] == pytest.approx(1, abs=1e-6)
            assert row["label"] == int(row["prob_1"] > row["prob_0"])
    # A name taken in the input moves every result column to pred_*, as for label, score and status
    pq.write_table(pq.read_table(source).append_column("prob_1", pa.array([0.0] * 6)), source)
    assert run(source, "-o", tmp_path / "taken.csv", "--probabilities", *common).exit_code == 0
    summary = json.loads((tmp_path / "taken.csv.summary.json").read_text())["inputs"][0]
    assert summary["columns"] == {"label": "pred_label", "score": "pred_score", "status": "pred_status",
                                  "probabilities": ["pred_prob_0", "pred_prob_1"]}
    assert pacsv.read_csv(tmp_path / "taken.csv").column_names == [
        "id", "sentence", "prob_1", "pred_label", "pred_score", "pred_status", "pred_prob_0", "pred_prob_1"]
    result = run(source, "-o", tmp_path / "taken.csv", *common)
    assert result.exit_code == 5 and "written with each label's probability, and this run without " \
        "(--probabilities)" in result.output, result.output


def test_the_label_column_scored_as_text_is_not_its_own_evaluation(tiny_export, labelled, tmp_path):
    """--text-column naming the training label column: its values are scored, and not compared with themselves."""
    result = run(labelled, "-o", tmp_path / "out.parquet", "--model", tiny_export, "--text-column", "id")
    assert result.exit_code == 0 and "accuracy" in result.output  # (the label column, another one: evaluated)
    pq.write_table(pq.read_table(labelled).set_column(2, "label", pa.array([f"{i} cats" for i in range(30)])),
                   labelled)
    result = run(labelled, "-o", tmp_path / "self.parquet", "--model", tiny_export, "--text-column", "label")
    assert result.exit_code == 0 and "accuracy" not in result.output, result.output
    summary = json.loads((tmp_path / "self.parquet.summary.json").read_text())["inputs"][0]
    assert summary["evaluation"] is None and summary["status_counts"]["ok"] == 30


def test_a_threshold_labels_a_row_positive_where_its_score_reaches_it_and_is_part_of_being_up_to_date(
        tiny_export, labelled, tmp_path):
    """--threshold T: a two-label model's row is labelled the positive label where its score (that label's
    probability) is at least T, else the other; the evaluation and --check judge those labels; an output labelled at
    another threshold is not up to date."""
    output, plain = tmp_path / "out.parquet", tmp_path / "plain.parquet"
    common = ["--model", tiny_export, "--variant", "fp32", "--keep-columns", "id,label"]
    assert run(labelled, "-o", plain, *common).exit_code == 0
    scores = pq.read_table(plain).column("pred_score").to_numpy()
    threshold = float(np.quantile(scores, 0.7, method="lower"))  # (a score itself: relabels some rows)
    result = run(labelled, "-o", output, *common, "--threshold", str(threshold), "--check", "10")
    assert result.exit_code == 0 and f"labelled at score >= {threshold:g})" in result.output, result.output
    table = pq.read_table(output)
    assert table.column("pred_score").to_numpy().tolist() == scores.tolist()
    assert table.column("pred_label").to_pylist() == [int(s >= threshold) for s in scores]
    assert pq.read_table(plain).column("pred_label").to_pylist() == [int(s >= 0.5) for s in scores]
    summary = json.loads(output.with_name(output.name + ".summary.json").read_text())
    unit = summary["inputs"][0]
    assert summary["threshold"] == threshold and unit["check"]["agreement"] == 1.0
    truth = [i % 2 for i in range(30)]
    assert unit["evaluation"]["accuracy"] == pytest.approx(
        np.mean([int(s >= threshold) == t for s, t in zip(scores, truth, strict=True)]))
    assert json.loads(table.schema.metadata[b"scorer"])["threshold"] == threshold
    # the evaluation says how each threshold would have labelled these rows, and which gave the best MCC
    plain_evaluation = json.loads(plain.with_name(plain.name + ".summary.json").read_text())["inputs"][0][
        "evaluation"]
    sweep = {row["threshold"]: row for row in plain_evaluation["thresholds"]["sweep"]}
    assert list(sweep) == [round(0.05 * i, 2) for i in range(1, 20)]
    assert sweep[0.5]["mcc"] == pytest.approx(plain_evaluation["mcc"])
    assert sweep[0.3]["accuracy"] == pytest.approx(np.mean([(s >= 0.3) == t for s, t in zip(scores, truth,
                                                                                              strict=True)]))
    best = plain_evaluation["thresholds"]["best_mcc_threshold"]
    assert sweep[best]["mcc"] == max(row["mcc"] for row in sweep.values())
    result = run(labelled, "-o", output, *common)
    assert result.exit_code == 5 and f"(written labelled at score >= {threshold:g}, and this run by the more " \
        "probable label (--threshold, or the export's))" in result.output, result.output
    assert run(labelled, "-o", output, *common, "--update").exit_code == 0
    assert pq.read_table(output).column("pred_label").to_pylist() == [int(s >= 0.5) for s in scores]
    for bad in ("0", "1", "-0.2"):
        refused = run(labelled, "-o", tmp_path / "x.parquet", *common, "--threshold", bad)
        assert refused.exit_code == 2 and "--threshold must be between 0 and 1" in refused.output


def test_a_threshold_recorded_at_export_labels_every_run_that_gives_none_of_its_own(tiny_checkpoint, tiny_export,
                                                                                     labelled, tmp_path):
    """A threshold chosen on labelled rows is recorded with the model (`export --threshold`), so that nightly runs
    label by it without each naming it (and a run that forgot it cannot label by another); the parity gate judges
    the labels at it; a run's own --threshold still decides; an output labelled before it was recorded is not up to
    date."""
    from click.testing import CliRunner

    from scorer.cli import main

    common = ["--variant", "fp32", "--keep-columns", "id,label"]
    plain = tmp_path / "plain.parquet"
    assert run(labelled, "-o", plain, "--model", tiny_export, *common).exit_code == 0
    scores = np.sort(pq.read_table(plain).column("pred_score").to_numpy())
    threshold = round(float(scores[20] + scores[21]) / 2, 6)  # (between two scores: relabels some rows)
    export = tmp_path / "onnx"
    exported = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(export),
                                         "--variants", "fp32", "--threshold", str(threshold), "--quiet"])
    assert exported.exit_code == 0, exported.output
    assert exported.output.rstrip().endswith(f"parity passed (labels at score >= {threshold:g}, recorded: `scorer "
                                             "run` labels by it)")
    assert json.loads((export / "manifest.json").read_text())["threshold"] == threshold
    parity = json.loads((export / "parity.json").read_text())
    assert parity["threshold"] == threshold and parity["passed"]
    assert f"over 0.05 from the threshold {threshold:g}" in parity["variants"][1]["requirement"]
    output = tmp_path / "out.parquet"
    result = run(labelled, "-o", output, "--model", export, *common, "--report", tmp_path / "report.md")
    assert result.exit_code == 0 and f"labelled at score >= {threshold:g}, the export's threshold)" in result.output
    assert f"- labels: the positive one where the score is at least {threshold:g} (the export's threshold)\n" in \
        (tmp_path / "report.md").read_text()
    scored = pq.read_table(output)
    assert scored.column("pred_label").to_pylist() == [int(s >= threshold) for s in scored["pred_score"].to_pylist()]
    assert sum(scored.column("pred_label").to_pylist()) == 9  # (the 9 scores above it; 0.5 labels others so)
    summary = json.loads(output.with_name(output.name + ".summary.json").read_text())
    assert (summary["threshold"], summary["threshold_from"]) == (threshold, "export")
    assert json.loads(scored.schema.metadata[b"scorer"])["threshold"] == threshold
    # a run's own threshold decides (0.5: the more probable label, as the export without a threshold labels)
    own = run(labelled, "-o", tmp_path / "own.parquet", "--model", export, *common, "--threshold", "0.5",
              "--report", tmp_path / "own.md")
    assert own.exit_code == 0 and "labelled at score >= 0.5)" in own.output, own.output
    assert "- labels: the positive one where the score is at least 0.5 (--threshold)\n" in \
        (tmp_path / "own.md").read_text()
    assert pq.read_table(tmp_path / "own.parquet")["pred_label"] == pq.read_table(plain)["pred_label"]
    # the output of the export without a threshold, scored again by this one: not up to date (same graph, other labels)
    result = run(labelled, "-o", plain, "--model", export, *common)
    assert result.exit_code == 5 and f"and this run at score >= {threshold:g} (--threshold, or the export's)" \
        in result.output, result.output
