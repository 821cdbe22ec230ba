"""A Hugging Face sequence-classification model, as transformers saves one fine-tuned in a notebook, through
`scorer export` and `scorer run --check`: the scores must be what transformers itself computes."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scorer.cli import main
from scorer.errors import ModelError
from scorer.machine import cpu_identity
from scorer.pytorch.checkpoints import label_names
from scorer.scoring.check import TOLERANCE
from tests.conftest import tokenizer_source

SHAPE = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 64}
TEXTS = ["The dog barked at the mailman.", None, "Dog the mailman at barked.", "A much longer sentence " * 30, "",
         "Colorless green ideas sleep furiously.", "She sang.", "Sang she the the the."]
TRUE = [1, 0, 0, None, 1, 1, 1, 0]  # label ids, as a CoLA file writes them whatever the model calls its labels


def _classifier(directory: Path, family: str, names: list[str] | None = None, slow_tokenizer: bool = False,
                **config) -> Path:
    """A tiny random `family` sequence classifier saved as transformers saves one fine-tuned in a notebook
    (save_pretrained of the model and its AutoTokenizer), `names` as id2label, with only the slow tokenizer's files
    where `slow_tokenizer`. Its weights are drawn wide (initializer_range 0.3): at BERT's 0.02 a random model gives
    every row the same score to four places, and a row scored as another would not show."""
    import torch
    import transformers

    torch.manual_seed(0)
    kind = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig,
            "distilbert": transformers.DistilBertConfig, "deberta-v2": transformers.DebertaV2Config,
            "modernbert": transformers.ModernBertConfig}[family]
    positions = {  # (and what else the family needs beside SHAPE, with the packaged WordPiece tokenizer's ids)
        "roberta": {"max_position_embeddings": 130, "pad_token_id": 0},
        "distilbert": {"hidden_dim": 64},
        "deberta-v2": {"relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_biased_input": False},
        "modernbert": {"pad_token_id": 0, "cls_token_id": 101, "sep_token_id": 102, "bos_token_id": 101,
                       "eos_token_id": 102, "local_attention": 16},
    }.get(family, {})
    labels = names or ["LABEL_0", "LABEL_1"]
    model_config = kind(**{**SHAPE, **config}, **positions, num_labels=len(labels), id2label=dict(enumerate(labels)),
                        label2id={name: i for i, name in enumerate(labels)}, initializer_range=0.3)
    transformers.AutoModelForSequenceClassification.from_config(model_config).save_pretrained(directory)
    transformers.AutoTokenizer.from_pretrained(str(tokenizer_source())).save_pretrained(directory)
    if slow_tokenizer:  # as transformers 4 saved a slow tokenizer (5 writes tokenizer.json alone)
        (directory / "tokenizer.json").unlink()
        shutil.copy(tokenizer_source() / "vocab.txt", directory / "vocab.txt")
    return directory


def _transformers_scores(checkpoint: Path, texts: list[str], max_length: int) -> np.ndarray:
    """Each text's probabilities as transformers computes them: its tokenizer (truncating) and model."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(checkpoint)).eval()
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        taken = inspect.signature(model.forward).parameters  # (transformers 4's DistilBERT takes no token_type_ids,
        batch = {name: value for name, value in batch.items() if name in taken}  # which its tokenizer gives)
        return model(**batch).logits.softmax(-1).numpy()


@pytest.mark.parametrize("family, names, slow", [("bert", None, False), ("roberta", ["neg", "neutral", "pos"], False),
                                                 ("bert", ["unacceptable", "acceptable"], True),
                                                 ("distilbert", None, False), ("deberta-v2", ["no", "yes"], False),
                                                 ("modernbert", ["neg", "neutral", "pos"], False)])
def test_a_transformers_classifier_is_exported_and_scored_as_transformers_scores_it(family, names, slow, tmp_path):
    checkpoint = _classifier(tmp_path / "hf", family, names, slow_tokenizer=slow)
    runner = CliRunner()
    calibration = tmp_path / "calibration.csv"  # (its own sentences for one of the three; the packaged ones else)
    calibration.write_text("sentence\n" + "".join(f"Calibration sentence number {i}.\n" for i in range(40)))
    own = ["--calibration", str(calibration)] if family == "roberta" else []
    result = runner.invoke(main, ["export", "--checkpoint", str(checkpoint), "-o", str(tmp_path / "onnx"),
                                  "--variants", "fp32,int8", "--max-length", "40", "-q", *own])
    assert result.exit_code == 0, result.output
    # Such a checkpoint records no training file: int8 is calibrated on the packaged sentences, said so
    assert ("int8 is calibrated on the packaged example sentences" in result.output) is not bool(own)
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    expected_labels = names or [0, 1]  # transformers' unnamed LABEL_0, LABEL_1 are the numbers they stand for
    assert manifest["labels"] == expected_labels and manifest["max_length"] == 40
    assert (tmp_path / "onnx" / "tokenizer.json").is_file()  # converted from vocab.txt where the checkpoint had none
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": TEXTS, "label": TRUE}), source)
    output = tmp_path / "out.parquet"
    result = runner.invoke(main, ["run", str(source), "--model", str(tmp_path / "onnx"), "--variant", "fp32",
                                  "--check", "5", "-o", str(output), "-q"])
    assert result.exit_code == 0, result.output
    table = {name.removeprefix("pred_"): values for name, values in pq.read_table(output).to_pydict().items()}
    assert table["status"] == ["ok", "null", "ok", "truncated", "empty", "ok", "ok", "ok"]
    rows = [i for i, text in enumerate(TEXTS) if text]
    probabilities = _transformers_scores(checkpoint, [TEXTS[i] for i in rows], 40)
    positive = expected_labels.index(manifest["positive_label"])
    scores = np.array([table["score"][i] for i in rows])
    if len(expected_labels) == 2:
        np.testing.assert_allclose(scores, probabilities[:, positive], atol=1e-5)
    else:  # more than two labels: the predicted label's probability
        np.testing.assert_allclose(scores, probabilities.max(1), atol=1e-5)
    assert [table["label"][i] for i in rows] == [expected_labels[k] for k in probabilities.argmax(1)]
    assert np.ptp(probabilities[:, positive]) > 0.01  # the rows differ, so a row scored as another would show
    summary = json.loads(output.with_name(output.name + ".summary.json").read_text())["inputs"][0]
    assert summary["check"]["passed"] and summary["check"]["rows"] == 5
    assert summary["check"]["checkpoint"] == str(checkpoint.resolve())
    # The file's label ids are the model's labels (transformers' label2id): evaluated, not refused.
    labelled = [k for k, i in enumerate(rows) if TRUE[i] is not None]
    right = [probabilities[k].argmax() == TRUE[rows[k]] for k in labelled]
    assert summary["evaluation"]["rows"] == len(labelled) and summary["evaluation"]["accuracy"] == np.mean(right)


def _export_calibrated_on_alike_sentences(tmp_path: Path) -> tuple[Path, str]:
    """A RoBERTa classifier exported with int8 calibrated on 40 sentences alike (`Calibration sentence number N.`)
    and checked on the packaged examples, unlike them: its output directory and what export printed."""
    checkpoint = _classifier(tmp_path / "hf", "roberta", ["neg", "neutral", "pos"])
    calibration = tmp_path / "calibration.csv"
    calibration.write_text("sentence\n" + "".join(f"Calibration sentence number {i}.\n" for i in range(40)))
    out = tmp_path / "onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "-o", str(out), "--variants",
                                       "fp32,int8", "--max-length", "40", "--calibration", str(calibration)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_an_int8_graph_that_fails_the_parity_gate_gives_way_to_one_keeping_more_in_fp32(tmp_path, monkeypatch):
    """Predicted from 40 sentences alike, the quantiser's first graph moves the packaged examples' probabilities
    too far for the gate (which holds int8 to `scorer run --check`'s tolerance): export chose to quantise, so it
    quantises less, one group of MatMuls at a time, until the gate passes, instead of failing (exit 7)."""
    import export.quantize

    # (int8 is kept only where it runs faster than fp32, which this tiny model's need not: here it is said to)
    monkeypatch.setattr(export.quantize, "measure_speedup", lambda *args: 2.0)
    out, said = _export_calibrated_on_alike_sentences(tmp_path)
    int8 = json.loads((out / "manifest.json").read_text())["extra"]["int8"]
    failed, steps = int8["failed_parity"], int8["stepped_down"]
    assert f"int8 variant: with {failed['quantized']} weight MatMuls quantised it failed the parity gate " in said
    assert failed["max_score_diff"] > TOLERANCE["int8"] or failed["agreement"] < 0.995
    tried = [failed["quantized"]] + [step["quantized"] for step in steps] + [int8["quantized"]]
    assert tried == sorted(tried, reverse=True) and len(set(tried)) == len(tried) and int8["quantized"] > 0
    assert int8["timed"] == {"speedup": 2.0, "cpu": cpu_identity()}  # (the graph kept, timed on this machine's CPU)
    report = {v["variant"]: v for v in json.loads((out / "parity.json").read_text())["variants"]}
    assert report["int8"]["passed"] and report["int8"]["max_score_diff"] <= TOLERANCE["int8"]
    assert "MatMulIntegerToFloat" in {node.op_type for node in onnx.load(str(out / "model.int8.onnx")).graph.node}


def test_where_the_gate_refuses_every_int8_graph_the_int8_file_is_the_fp32_graph_and_export_says_so(
        tmp_path, monkeypatch):
    import export.parity
    import export.quantize

    monkeypatch.setattr(export.quantize, "measure_speedup", lambda *args: 2.0)
    # the gate holding int8 to a `scorer run --check` tolerance no int8 graph of this model can meet
    monkeypatch.setattr(export.parity, "TOLERANCE", {**TOLERANCE, "int8": 1e-5})
    out, said = _export_calibrated_on_alike_sentences(tmp_path)
    assert "int8 variant: quantised on 40 calibration rows, it failed the parity gate on the parity rows (last " \
           "labels agree " in said
    assert "at every level that ran faster than fp32, so its file is the fp32 graph; for an int8 graph that " \
           "passes, pass --calibration with more sentences like those it will score" in said
    manifest = json.loads((out / "manifest.json").read_text())
    int8 = manifest["extra"]["int8"]
    assert int8["quantized"] == 0 and int8["failed_parity"]["quantized"] > 0 and int8["timed"] is None
    assert [step["quantized"] for step in int8["stepped_down"]][-1:] != [0]  # only int8 graphs were refused
    assert (out / "model.int8.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    report = {v["variant"]: v for v in json.loads((out / "parity.json").read_text())["variants"]}
    assert report["int8"]["passed"] and report["int8"]["agreement"] == 1.0 and manifest["parity_passed"]


def test_the_max_length_can_be_set_at_export_up_to_the_position_limit(tiny_checkpoint, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path / "long"),
                                  "--variants", "fp32", "--max-length", "129", "-q"])
    assert result.exit_code == 2 and "position limit 128" in result.output
    result = runner.invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path / "short"),
                                  "--variants", "fp32", "--max-length", "8", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "short" / "manifest.json").read_text())["max_length"] == 8
    source = tmp_path / "in.csv"
    source.write_text("sentence\nA dog.\nThe dog barked at the mailman all day long.\n")
    result = runner.invoke(main, ["run", str(source), "--model", str(tmp_path / "short"), "--check", "2",
                                  "-o", str(tmp_path / "out.parquet"), "-q"])
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "out.parquet").column("status").to_pylist() == ["ok", "truncated"]


@pytest.mark.parametrize("config, said", [({"problem_type": "multi_label_classification"}, "multi-label"),
                                          ({"num_labels": 1}, "regression")])
def test_classifiers_scorer_cannot_score_are_refused(config, said, tmp_path):
    import transformers

    model_config = transformers.BertConfig(**SHAPE, **config)
    transformers.BertForSequenceClassification(model_config).save_pretrained(tmp_path / "hf")
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tmp_path / "hf"), "-o", str(tmp_path / "onnx")])
    assert result.exit_code == 4 and said in result.output
    assert not (tmp_path / "onnx").exists()


def test_a_classifier_whose_weights_lack_its_head_is_refused(tmp_path):
    """A config that says sequence classification over weights without the head (a base model's, say) would export
    a random head: transformers only warns."""
    from safetensors.torch import load_file, save_file

    checkpoint = _classifier(tmp_path / "hf", "bert")
    weights = checkpoint / "model.safetensors"
    save_file({name: tensor for name, tensor in load_file(weights).items() if not name.startswith("classifier")},
              weights)
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "-o", str(tmp_path / "onnx")])
    assert result.exit_code == 4, result.output
    assert "its weights lack the classifier's classifier.bias, classifier.weight, which would start random" \
        in result.output


def test_another_models_tokenizer_is_refused(tmp_path):
    """Ids past the model's embeddings would fail at the first such token, deep in ONNX Runtime."""
    checkpoint = _classifier(tmp_path / "hf", "bert", vocab_size=1000)
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "-o", str(tmp_path / "onnx")])
    assert result.exit_code == 4, result.output
    assert "the tokenizer has 30522 tokens and the model only 1000; the tokenizer does not belong" in result.output


def test_label_names():
    assert label_names({0: "LABEL_0", 1: "LABEL_1"}, 2) == [0, 1]
    assert label_names({0: "0", 1: "1", 2: "2"}, 3) == [0, 1, 2]
    assert label_names({"0": "no", "1": "yes"}, 2) == ["no", "yes"]  # keys as a JSON config writes them
    assert label_names({0: "LABEL_0", 1: "yes"}, 2) == ["LABEL_0", "yes"]
    with pytest.raises(ModelError, match="alike"):
        label_names({0: "yes", 1: "yes"}, 2)
