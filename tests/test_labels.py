"""Labels however a file writes them (1, "1", 1.0, "1.0", True; NaN or blank for none) mean one thing in train,
export and evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scorer.cli import main
from scorer.data.labels import LabelIndex, label_value, normalise_labels, read_labelled
from scorer.errors import InputError
from tests.conftest import fp32_parity_and_run_evaluation


@pytest.mark.parametrize("value,expected", [
    (1, 1), (True, 1), (0.0, 0), ("1", 1), (" 1.0 ", 1), ("-2", -2), ("1e1", 10), (0.5, "0.5"), ("yes ", "yes"),
    ("nan", "nan"), (None, None), (math.nan, None), ("", None), ("  ", None),
])
def test_a_label_is_a_whole_number_however_written_text_otherwise_and_nan_or_blank_is_none(value, expected):
    assert label_value(value) == expected


def test_labels_are_all_numbers_or_all_text():
    assert normalise_labels(["0", 1.0, True, " 0.0"]) == [0, 1, 1, 0]
    assert normalise_labels(["1", "yes", 2.0]) == ["1", "yes", "2"]


def test_a_stray_name_among_number_labels_is_refused_naming_its_row(tmp_path):
    # One "yes" among 0/1 made every label a name, and "yes" the positive class: each score was P("yes").
    path = tmp_path / "train.csv"
    rows = [f"sentence {i},{i % 2}" for i in range(30)]
    path.write_text("sentence,label\n" + "\n".join([*rows[:5], "sentence x,yes", *rows[5:]]) + "\n")
    with pytest.raises(InputError, match=r"train.csv row 6: column 'label' holds the label 'yes' where 30 other rows "
                                         r"hold whole numbers \(0, 1\); labels must be all whole numbers or all names"):
        read_labelled(path, "sentence", "label")
    path.write_text("sentence,label\n" + "".join(f"s {i},{'good' if i % 2 else 'bad'}\n" for i in range(9))
                    + "s,1\nt,0.5\nu,2.0\n")  # 0.5 is no whole number: a name
    with pytest.raises(InputError, match=r"row 10: column 'label' holds the label 1 \(and 1 more row\(s\)\) where 10 "
                                         r"other rows hold names \(0.5, bad, good\)"):
        read_labelled(path, "sentence", "label")
    path.write_text("sentence,label\na,1.0\nb,yes\nc,1\n")  # as many of each: the names are the odd ones
    with pytest.raises(InputError, match=r"row 2: column 'label' holds the label 'yes' where 2 other rows"):
        read_labelled(path, "sentence", "label")


def test_a_label_too_rare_to_learn_and_a_sentence_with_two_labels_are_warned_of(tmp_path, caplog):
    from scorer.config import TrainConfig
    from scorer.training.dataset import load_training_data

    data = tmp_path / "train.csv"
    data.write_text("sentence,label\n" + "".join(f"s {i},{i % 2}\n" for i in range(40)) + "s x,11\n")
    load_training_data(TrainConfig(data=data))
    assert "label 11 in column 'label' occurs in only 1 of 41 rows, too few to learn it; is it a typo?" in caplog.text
    assert "label 0" not in caplog.text and "label 1 " not in caplog.text
    assert "more than one label" not in caplog.text
    data.write_text("sentence,label\n" + "".join(f"s {i},{i % 2}\n" for i in range(40)) + "s 4,1\ns 5,0\ns 6,0\n")
    load_training_data(TrainConfig(data=data))
    assert "train.csv: 2 sentence(s) occur with more than one label ('s 4' as 0 and 1)" in caplog.text


def test_the_index_finds_a_label_however_written_and_skips_missing_ones():
    index = LabelIndex([0, 1])
    assert index.indices([1, "0", "1.0", 0.0, None, math.nan, " "], "f.csv", "label", 1).tolist() == [
        1, 0, 1, 0, -1, -1, -1]
    with pytest.raises(InputError, match=r"f.csv row 3: label '2' in column 'label' is not one the model knows"):
        index.indices(["1", "0", "2"], "f.csv", "label", 1)
    assert LabelIndex(["1", "yes"]).indices([1, "yes"], "f.csv", "label", 1).tolist() == [0, 1]


def test_a_boolean_label_is_one_label_whether_a_file_holds_it_as_a_boolean_or_as_text(tiny_export, tmp_path):
    """Parquet holds a boolean label as a boolean (read as 1 and 0); a CSV file as the text its writer gives it
    (pandas `True`, Spark `true`, R `TRUE`), which was a name: a model trained on the Parquet file refused that CSV
    file's labels ("label 'True' ... is not one the model knows (0, 1)"), and one trained on the CSV file labelled
    rows `False`/`True` where the same data as Parquet gave 0/1. Both read as 1 and 0 now, in training and evaluation
    alike; a model that learnt them as names (an older export's `False`/`True`) still finds them, written either way."""
    texts = [f"sentence number {i}" for i in range(12)]
    flags = [i % 3 == 0 for i in range(12)]
    pq.write_table(pa.table({"sentence": texts, "label": flags}), tmp_path / "train.parquet")
    for name, written in (("pandas.csv", ("True", "False")), ("spark.csv", ("true", "false")),
                          ("r.csv", ("TRUE", "FALSE"))):
        (tmp_path / name).write_text("sentence,label\n" + "".join(
            f"{text},{written[0] if flag else written[1]}\n" for text, flag in zip(texts, flags, strict=True)))
        assert read_labelled(tmp_path / name, "sentence", "label").labels == \
            read_labelled(tmp_path / "train.parquet", "sentence", "label").labels == [int(f) for f in flags]
        out = tmp_path / f"{name}.scored.parquet"
        result = CliRunner().invoke(main, ["run", str(tmp_path / name), "--model", str(tiny_export), "-o", str(out),
                                           "--quiet"])
        assert result.exit_code == 0, result.output
        summary = json.loads((tmp_path / f"{name}.scored.parquet.summary.json").read_text())
        assert summary["inputs"][0]["evaluation"]["rows"] == 12
    (tmp_path / "parts").mkdir()  # (one labelled set in parts of both kinds: one kind of label)
    pq.write_table(pa.table({"sentence": texts[:6], "label": flags[:6]}), tmp_path / "parts" / "a.parquet")
    (tmp_path / "parts" / "b.csv").write_text("sentence,label\n" + "".join(
        f"{text},{flag}\n" for text, flag in zip(texts[6:], flags[6:], strict=True)))  # (Python's True, False)
    assert read_labelled(tmp_path / "parts", "sentence", "label").labels == [int(f) for f in flags]
    older = LabelIndex(["False", "True"])
    assert older.indices(["True", "false", 1, True, "0", " TRUE "], "f.csv", "label", 1).tolist() == [1, 0, 1, 1, 0, 1]
    assert LabelIndex([0, 1]).unknown(["true", "FALSE", "maybe", 2]) == ["2", "maybe"]
    # Labels that include other names keep true and false as names: a fact-checking set's half-true beside them
    (tmp_path / "claims.csv").write_text("sentence,label\n" + "".join(
        f"claim {i},{('true', 'false', 'half-true')[i % 3]}\n" for i in range(12)))
    assert read_labelled(tmp_path / "claims.csv", "sentence", "label").labels[:3] == ["true", "false", "half-true"]
    named = LabelIndex(["false", "half-true", "true"])
    assert named.indices(["true", "false"], "f.csv", "label", 1).tolist() == [2, 0]
    with pytest.raises(InputError, match="label 1 in column 'label' is not one the model knows"):
        named.indices([1], "f.csv", "label", 1)


def test_a_transformers_models_named_labels_may_be_written_as_their_ids():
    """A model whose config names its labels (id2label) is evaluated on files that write the ids, as CoLA's do;
    a model trained by scorer on named labels is not (its labels' order is only their sort order)."""
    named = ["unacceptable", "acceptable"]
    index = LabelIndex(named, ids=True)
    assert index.indices([1, "0", "acceptable", 1.0, None, -1], "f.csv", "label", 1).tolist() == [1, 0, 1, 1, -1, -1]
    with pytest.raises(InputError, match=r"row 1: label 2 .* knows \(unacceptable \(0\), acceptable \(1\)\)"):
        index.indices([2], "f.csv", "label", 1)
    with pytest.raises(InputError, match=r"row 1: label 1 .* knows \(unacceptable, acceptable\)"):
        LabelIndex(named).indices([1], "f.csv", "label", 1)


def test_minus_one_is_a_missing_label_where_the_model_has_no_such_label():
    """Hugging Face datasets label every row of a test split -1: unlabelled, unless -1 is one of the model's labels
    (a -1/+1 dataset) or the file is training data (which must leave such rows blank)."""
    values = [-1, "-1", 1, 0, "-1.0"]
    assert LabelIndex([0, 1]).indices(values, "f.csv", "label", 1).tolist() == [-1, -1, 1, 0, -1]
    assert LabelIndex([-1, 1]).indices([-1, 1, "-1"], "f.csv", "label", 1).tolist() == [0, 1, 0]
    assert LabelIndex([0, 1]).unknown([-1, 2, None]) == ["2"]
    strict = LabelIndex([0, 1], unlabelled_mark=False)
    assert strict.unknown([-1, 2]) == ["-1", "2"]
    with pytest.raises(InputError, match=r"row 1: label -1 in column 'label' is not one the model knows"):
        strict.indices([-1], "f.csv", "label", 1)


def test_a_test_split_labelled_minus_one_is_scored_without_evaluation(tiny_export, tmp_path):
    path = tmp_path / "test.parquet"
    pq.write_table(pa.table({"sentence": [f"sentence number {i}" for i in range(9)], "label": [-1] * 8 + [1]}), path)
    result = CliRunner().invoke(main, ["run", str(path), "--model", str(tiny_export), "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads(path.with_name("test.scored.parquet.summary.json").read_text())["inputs"][0]
    assert summary["rows"] == 9 and summary["evaluation"]["rows"] == 1 and summary["evaluation"]["unlabelled_rows"] == 8


def test_a_label_column_of_another_meaning_is_scored_without_evaluation_given_an_empty_label_column(
        tiny_checkpoint, tiny_export, tmp_path):
    """A nightly file whose column 'label' (the training label column's name) holds something else (a moderation
    tag) could not be scored without renaming the column in the data, which the refusal advised. --label-column ''
    uses no labels: every row scored, the column kept; export's --data alike; training and --report refuse it."""
    path = tmp_path / "day.csv"
    path.write_text("sentence,label\nThe cat sat on the mat.,spam\nMat the on sat cat.,ham\n")
    runner = CliRunner()
    refused = runner.invoke(main, ["run", str(path), "--model", str(tiny_export), "-q"])
    assert refused.exit_code == 3 and refused.output.endswith(
        "fix the row, pass --label-column for another column, or --label-column '' to use no labels\n")
    result = runner.invoke(main, ["run", str(path), "--model", str(tiny_export), "--label-column", "", "-q"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "day.scored.parquet")
    assert table.column("label").to_pylist() == ["spam", "ham"]
    assert table.column("pred_status").to_pylist() == ["ok", "ok"]
    assert json.loads((tmp_path / "day.scored.parquet.summary.json").read_text())["inputs"][0]["evaluation"] is None
    exported = runner.invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path / "onnx"),
                                    "--data", str(path), "--label-column", "", "--variants", "fp32", "-q"])
    assert exported.exit_code == 0, exported.output
    parity = json.loads((tmp_path / "onnx" / "parity.json").read_text())
    assert parity["source"] == str(path) and all(v["accuracy"] is None for v in parity["variants"])
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["label_column"] == json.loads((tiny_export / "manifest.json").read_text())["label_column"]
    for args, said in ((["run", str(path), "--model", str(tiny_export), "--label-column", "", "--report", "r.md"],
                        "--report needs labels, and --label-column '' says to use none"),
                       (["train", "--data", str(path), "--label-column", "", "-o", str(tmp_path / "c")],
                        "--label-column '' (no labels) is for run and export; training needs labels")):
        result = runner.invoke(main, [*args, "-q"])
        assert result.exit_code == 2 and said in result.output, result.output


def test_a_nan_label_in_training_data_is_a_missing_label_not_a_class(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"sentence": ["a", "b", "c"], "label": [1.0, math.nan, 0.0]}), path)
    with pytest.raises(InputError, match=r"train.parquet row 2: column 'label' has no label"):
        read_labelled(path, "sentence", "label")


def test_csv_labels_written_as_decimals_train_the_classes_parquet_integers_evaluate(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("sentence,label\na,1.0\nb,0.0\nc,1\n")
    assert read_labelled(path, "sentence", "label").labels == [1, 0, 1]


def test_run_evaluates_decimal_and_nan_labels_against_an_integer_labelled_model(tiny_export, tmp_path):
    """pandas writes an unlabelled row's label as NaN in a float column; those rows are unlabelled, not errors."""
    texts = [f"sentence number {i} is here" for i in range(30)]
    labels = [math.nan if i % 5 == 0 else float(i % 2) for i in range(30)]
    data = tmp_path / "dev.parquet"
    pq.write_table(pa.table({"sentence": texts, "label": labels}), data)
    csv = tmp_path / "dev_text.csv"
    csv.write_text("sentence,label\n" + "".join(f"{t},{'' if math.isnan(v) else f'{v:.1f}'}\n"
                                                for t, v in zip(texts, labels, strict=True)))
    for path in (data, csv):
        result = CliRunner().invoke(main, ["run", str(path), "--model", str(tiny_export), "-q"])
        assert result.exit_code == 0, result.output
        evaluation = json.loads(path.with_name(f"{path.stem}.scored.parquet.summary.json").read_text()
                                )["inputs"][0]["evaluation"]
        assert evaluation["rows"] == 24 and evaluation["unlabelled_rows"] == 6
        scored = pq.read_table(path.with_name(f"{path.stem}.scored.parquet"))
        true = np.array([v for v in labels if not math.isnan(v)], dtype=int)
        predicted = np.array([p for p, v in zip(scored.column("pred_label").to_pylist(), labels, strict=True)
                              if not math.isnan(v)])
        assert evaluation["accuracy"] == pytest.approx((true == predicted).mean())


def test_export_parity_counts_accuracy_on_the_labelled_rows_only(tiny_checkpoint, tmp_path):
    data = tmp_path / "parity.parquet"
    texts = [f"a sentence with {i} words in it" for i in range(40)]
    pq.write_table(pa.table({"sentence": texts, "label": [math.nan if i % 4 == 0 else float(i % 2)
                                                          for i in range(40)]}), data)
    _, fp32, run = fp32_parity_and_run_evaluation(tiny_checkpoint, data, tmp_path / "onnx")
    assert run["rows"] == 30 and fp32["accuracy"] == pytest.approx(run["accuracy"])


def test_an_input_joined_with_its_headers_is_scored_whole_and_said_so(tiny_export, tmp_path):
    """A nightly file joined from two with their headers: without labels every row is kept and scored, the header
    rows named in a warning; with labels the header row's label is named as the column's own name."""
    part = "id,sentence,label\n" + "".join(f"{i},the cat sat on mat {i}.,{i % 2}\n" for i in range(20))
    data = tmp_path / "day.csv"
    data.write_text(part * 2)
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(main, ["run", str(data), "--model", str(tiny_export), "-o", str(out),
                                       "--label-column", ""])
    assert result.exit_code == 0, result.output
    assert f"{data}: data row(s) 21 repeat the header line (id,sentence,label): files joined with their headers " \
        "(cat a.csv b.csv)? they were scored as text like any other row: remove those lines" in result.output
    assert pq.read_table(out).column("sentence").to_pylist()[20] == "sentence" and pq.read_table(out).num_rows == 41
    result = CliRunner().invoke(main, ["run", str(data), "--model", str(tiny_export), "-o", str(tmp_path / "l.parquet"),
                                       "--quiet"])
    assert result.exit_code == 3 and "row 21: label 'label' in column 'label' is not one the model knows (0, 1) " \
        "(the column's own name: a header line repeated" in result.output, result.output


def test_three_text_labels_train_export_and_score_with_the_predicted_labels_probability(tiny_encoder, tmp_path):
    """A model of three labels written as words: trained, exported (parity per label), scored with --check; the
    score is the predicted label's probability, and the evaluation has a row and a column per label."""
    words = {"neg": ["awful", "terrible", "horrible"], "neu": ["table", "chair", "window"],
             "pos": ["great", "lovely", "excellent"]}
    rng = np.random.default_rng(0)
    names = [str(label) for label in rng.choice(sorted(words), 450)]
    texts = [f"the {rng.choice(words[label])} thing number {i}" for i, label in enumerate(names)]
    data = tmp_path / "three.parquet"
    pq.write_table(pa.table({"sentence": texts, "label": names}), data)
    runner = CliRunner()
    for args in (["train", "--model", tiny_encoder, "--data", data, "--output", tmp_path / "checkpoint", "--epochs",
                  "3", "--rtd-epochs", "0", "--lr", "3e-3", "--max-length", "16"],
                 ["export", "--checkpoint", tmp_path / "checkpoint", "--output", tmp_path / "onnx", "--data", data],
                 ["run", data, "--model", tmp_path / "onnx", "--check", "20", "-o", tmp_path / "out.csv"]):
        result = runner.invoke(main, [*map(str, args), "--quiet"])
        assert result.exit_code == 0, (args[0], result.output)
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["labels"] == ["neg", "neu", "pos"]
    out = pacsv.read_csv(tmp_path / "out.csv").to_pydict()
    assert set(out["pred_label"]) <= {"neg", "neu", "pos"} and all(1 / 3 <= s <= 1 for s in out["pred_score"])
    whole = json.loads((tmp_path / "out.csv.summary.json").read_text())
    assert whole["score"] == "the probability of the predicted label (of 3)"
    assert json.loads((tmp_path / ".out.csv.scorer.json").read_text())["score"] == whole["score"]
    summary = whole["inputs"][0]
    evaluation = summary["evaluation"]
    assert evaluation["rows"] == 450 and evaluation["accuracy"] > 0.6  # three words per label: easy to learn
    assert evaluation["labels"] == ["neg", "neu", "pos"] and len(evaluation["per_class"]) == 3
    assert np.array(evaluation["confusion_matrix"]).shape == (3, 3) and np.sum(evaluation["confusion_matrix"]) == 450
    assert summary["check"]["passed"] and summary["check"]["rows"] == 20
    # the rows by predicted label, in the model's label order, for a monitor to compare night to night
    counted = {name: out["pred_label"].count(name) for name in ("neg", "neu", "pos")}
    assert summary["predicted_counts"] == counted and list(summary["predicted_counts"]) == ["neg", "neu", "pos"]
    assert whole["predicted_counts"] == counted and sum(counted.values()) == 450
    # --probabilities: a column per label, in the model's label order, that the label and score are drawn from
    result = runner.invoke(main, ["run", str(data), "--model", str(tmp_path / "onnx"), "-o",
                                  str(tmp_path / "p.parquet"), "--probabilities", "--keep-columns", "", "--quiet"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.column_names == ["pred_label", "pred_score", "pred_status", "pred_prob_neg", "pred_prob_neu",
                                  "pred_prob_pos"]
    probabilities = np.stack([table.column(f"pred_prob_{name}").to_numpy() for name in ("neg", "neu", "pos")], 1)
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert [["neg", "neu", "pos"][i] for i in probabilities.argmax(1)] == out["pred_label"]
    assert np.allclose(probabilities.max(1), table.column("pred_score").to_numpy())
    # a threshold is a two-label model's: refused before any output
    result = runner.invoke(main, ["run", str(data), "--model", str(tmp_path / "onnx"), "-o",
                                  str(tmp_path / "t.parquet"), "--threshold", "0.6", "--quiet"])
    assert result.exit_code == 2 and "--threshold needs a model of two labels, and" in result.output
    assert "has 3 (neg, neu, pos)" in result.output and not (tmp_path / "t.parquet").exists()
    result = runner.invoke(main, ["export", "--checkpoint", str(tmp_path / "checkpoint"), "--output",
                                  str(tmp_path / "t-onnx"), "--threshold", "0.6", "--quiet"])
    assert result.exit_code == 2 and "--threshold needs a model of two labels, and" in result.output
    assert "has 3 (neg, neu, pos); drop --threshold" in result.output and not (tmp_path / "t-onnx").exists()
