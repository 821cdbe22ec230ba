"""BERT-family encoders other than BERT itself (DistilBERT, RoBERTa, ELECTRA, XLM-RoBERTa) through train → export →
run, with the packaged WordPiece tokenizer and with their own kinds of tokenizer (byte-level BPE, SentencePiece
unigram), which have no word cache and whose padding id is not 0."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scorer.cli import main
from scorer.packaged import example_file
from scorer.text.tokens import TextEncoder
from tests.conftest import SPECIALS, trained_tokenizer, with_tokenizer

SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _encoder(family: str, directory: Path) -> Path:
    """A tiny random encoder of `family`: with the packaged WordPiece tokenizer (ids are ids to the pipeline), or,
    for roberta-bpe and xlm-roberta, with a byte-level BPE or SentencePiece unigram tokenizer trained here on the
    packaged example sentences."""
    import torch
    import transformers

    torch.manual_seed(0)
    if family in ("roberta-bpe", "xlm-roberta"):
        vocab = _own_tokenizer(family, directory)
        kind = transformers.RobertaConfig if family == "roberta-bpe" else transformers.XLMRobertaConfig
        config = kind(vocab_size=vocab, max_position_embeddings=130, pad_token_id=SPECIALS.index("<pad>"), **SHAPE)
        transformers.AutoModel.from_config(config).save_pretrained(directory)
        return directory
    if family == "distilbert":
        config = transformers.DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                               max_position_embeddings=128)
    elif family == "roberta":  # positions start after the padding id, so two more than the longest input
        config = transformers.RobertaConfig(vocab_size=30522, max_position_embeddings=130, pad_token_id=0, **SHAPE)
    elif family == "mpnet":
        config = transformers.MPNetConfig(vocab_size=30522, max_position_embeddings=130, pad_token_id=0, **SHAPE)
    elif family == "albert":
        config = transformers.AlbertConfig(vocab_size=30522, embedding_size=16, max_position_embeddings=128, **SHAPE)
    elif family in ("deberta", "deberta-v2"):  # (v2 is DeBERTa-v3's model type): relative positions only
        kind = transformers.DebertaConfig if family == "deberta" else transformers.DebertaV2Config
        config = kind(vocab_size=30522, max_position_embeddings=128, relative_attention=True,
                      pos_att_type=["p2c", "c2p"], position_biased_input=False, **SHAPE)
    elif family == "modernbert":  # (local attention over 16 tokens in every other layer: rows longer than that)
        config = transformers.ModernBertConfig(vocab_size=30522, max_position_embeddings=128, pad_token_id=0,
                                               cls_token_id=101, sep_token_id=102, bos_token_id=101, eos_token_id=102,
                                               local_attention=16, **SHAPE)
    else:
        config = transformers.ElectraConfig(vocab_size=30522, embedding_size=16, max_position_embeddings=128, **SHAPE)
    transformers.AutoModel.from_config(config).save_pretrained(directory)
    return with_tokenizer(directory)


def _own_tokenizer(family: str, directory: Path) -> int:
    """Train the family's kind of tokenizer on the packaged examples into `directory` (RoBERTa's byte-level BPE, or
    XLM-R's as its checkpoints ship it: SentencePiece unigram with its precompiled normaliser); its vocabulary
    size."""
    with open(example_file("train.csv"), newline="") as handle:
        texts = [row["sentence"] for row in csv.DictReader(handle)]
    tokenizer = trained_tokenizer("bytelevel" if family == "roberta-bpe" else "precompiled", texts, vocab_size=600)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    names = dict(zip(["bos_token", "pad_token", "eos_token", "unk_token", "mask_token"], SPECIALS, strict=True))
    (directory / "special_tokens_map.json").write_text(json.dumps({**names, "cls_token": "<s>", "sep_token": "</s>"}))
    (directory / "tokenizer_config.json").write_text(json.dumps({**names, "cls_token": "<s>", "sep_token": "</s>",
                                                                 "model_max_length": 128}))
    return tokenizer.get_vocab_size()


@pytest.mark.parametrize("family", ["distilbert", "roberta", "electra", "roberta-bpe", "xlm-roberta", "mpnet",
                                    "albert", "deberta", "deberta-v2", "modernbert"])
def test_other_bert_family_encoders_train_export_and_score(family, tmp_path):
    encoder = _encoder(family, tmp_path / family)
    runner = CliRunner()
    steps = [
        ["train", "--model", encoder, "--output", tmp_path / "checkpoint", "--epochs", "1", "--rtd-epochs", "0",
         "--max-length", "48", "--lr", "1e-3"],
        ["export", "--checkpoint", tmp_path / "checkpoint", "--output", tmp_path / "onnx"],
    ]
    for args in steps:
        result = runner.invoke(main, [*map(str, args), "--quiet"])
        assert result.exit_code == 0, (args[0], result.output)
    parity = json.loads((tmp_path / "onnx" / "parity.json").read_text())
    assert parity["passed"] and {v["variant"] for v in parity["variants"]} == {"pytorch", "fp32", "fp16", "int8"}
    own = family in ("roberta-bpe", "xlm-roberta")  # their own tokenizers: no word cache
    assert (TextEncoder.from_dir(tmp_path / "onnx", 48).words is None) == own
    source = tmp_path / "in.parquet"
    texts = ["The dog barked at the mailman.", None, "Dog the mailman at barked.", "A much longer sentence " * 20]
    pq.write_table(pa.table({"sentence": texts}), source)
    for variant in ("fp32", "fp16", "int8"):
        output = tmp_path / f"{variant}.parquet"
        result = runner.invoke(main, ["run", str(source), "--model", str(tmp_path / "onnx"), "--variant", variant,
                                      "--check", "3", "-o", str(output), "--quiet"])
        assert result.exit_code == 0, (variant, result.output)
        assert pq.read_table(output).column("status").to_pylist() == ["ok", "null", "ok", "truncated"]
        check = json.loads(output.with_name(output.name + ".summary.json").read_text())["inputs"][0]["check"]
        assert check["passed"] and check["rows"] == 3


def test_an_encoder_that_fails_under_bf16_autocast_trains_in_fp32_unless_bf16_was_asked_for(tmp_path, monkeypatch):
    """DeBERTa v1 in transformers fills its attention mask with float32's lowest value, which bf16 cannot hold: on a
    CPU with bf16 units (where --precision auto means bf16) training stopped in its first step with "unexpected
    RuntimeError: value cannot be converted to type c10::BFloat16 without overflow". It now trains in fp32 and says
    why; with --precision bf16 asked for, it is a configuration error before any step."""
    import scorer.training.device

    encoder = _encoder("deberta", tmp_path / "deberta")
    monkeypatch.setattr(scorer.training.device, "cpu_has_bf16", lambda: True)  # (auto: bf16, as on such a CPU)
    args = ["train", "--epochs", "1", "--rtd-epochs", "0", "--max-length", "48", "--model"]
    asked = CliRunner().invoke(main, [*args, str(encoder), "--output", str(tmp_path / "bf16"), "--precision", "bf16"])
    assert asked.exit_code == 2, asked.output
    # (torch's own words within: 2.6 says at::BFloat16, newer ones c10::BFloat16)
    assert re.fullmatch(r"error: --precision bf16: DebertaModel fails under bf16 autocast \(value cannot be converted "
                        r"to type (c10|at)::BFloat16 without overflow\); pass --precision fp32",
                        asked.output.strip().splitlines()[-1]), asked.output
    assert not (tmp_path / "bf16").exists()
    auto = CliRunner().invoke(main, [*args, str(encoder), "--output", str(tmp_path / "auto")])
    assert auto.exit_code == 0, auto.output
    assert "DebertaModel fails under bf16 autocast" in auto.output and "training in fp32" in auto.output
    assert "trained 1 epoch on cpu (fp32)" in auto.output
    electra = _encoder("electra", tmp_path / "electra")  # (an encoder that runs under bf16 autocast keeps it)
    kept = CliRunner().invoke(main, [*args, str(electra), "--output", str(tmp_path / "electra-out")])
    assert kept.exit_code == 0 and "trained 1 epoch on cpu (bf16)" in kept.output, kept.output


def test_encoders_scorer_cannot_batch_are_refused_by_name_before_any_work(tmp_path):
    """Nystromformer takes one fixed input length, and Longformer's and Funnel's forwards keep sizes that tracing
    fixes: training the first stopped in its first step, and exporting the others while building variants or checking
    parity, each with "unexpected RuntimeError"/"unexpected Fail" and a message from deep inside (exit 1); XLNet
    (which has no position limit: "--max-length 48 is above its position limit -1") reads padded positions. Each is
    now a model error (exit 4) naming the architecture and why, before any step or graph is written."""
    import transformers

    from tests.conftest import with_tokenizer

    encoders = {}
    for name, config in [("nystromformer", transformers.NystromformerConfig(
            vocab_size=30522, max_position_embeddings=130, num_landmarks=4, segment_means_seq_len=48, **SHAPE)),
            ("longformer", transformers.LongformerConfig(vocab_size=30522, max_position_embeddings=130,
                                                         pad_token_id=0, attention_window=16, **SHAPE))]:
        transformers.AutoModel.from_config(config).save_pretrained(tmp_path / name)
        encoders[name] = with_tokenizer(tmp_path / name)
    train = ["train", "--epochs", "1", "--rtd-epochs", "0", "--max-length", "48", "--precision", "fp32", "--model"]
    refused = CliRunner().invoke(main, [*train, str(encoders["nystromformer"]), "-o", str(tmp_path / "n-ck")])
    assert refused.exit_code == 4, refused.output
    assert "NystromformerModel fails on 2 training rows padded to" in refused.output
    assert "needs an encoder that takes any length up to its limit" in refused.output
    assert not (tmp_path / "n-ck").exists()
    trained = CliRunner().invoke(main, [*train, str(encoders["longformer"]), "-o", str(tmp_path / "l-ck")])
    assert trained.exit_code == 0, trained.output
    exported = CliRunner().invoke(main, ["export", "--checkpoint", str(tmp_path / "l-ck"), "-o",
                                         str(tmp_path / "onnx")])
    assert exported.exit_code == 4, exported.output
    last = exported.output.strip().splitlines()[-1]
    assert last.startswith("error: LongformerModel's ONNX graph, traced by torch.onnx at 2x16 tokens, fails on a "
                           "batch of 3x23 (Reshape node ") and last.endswith(
        "cannot be exported with dynamic batch and sequence axes; nothing was written"), last
    # A fine-tuned Funnel classifier as transformers saves one: its pooling keeps the traced length
    config = transformers.FunnelConfig(vocab_size=30522, block_sizes=[1, 1], d_model=32, n_head=2, d_head=16,
                                       d_inner=64, num_labels=2)
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "funnel")
    exported = CliRunner().invoke(main, ["export", "--checkpoint", str(with_tokenizer(tmp_path / "funnel")), "-o",
                                         str(tmp_path / "onnx"), "--max-length", "48"])
    assert exported.exit_code == 4, exported.output
    assert "error: FunnelBaseModel's " in exported.output, exported.output
    # XLNet classifies by its last token, padded on the left: padded on the right, a row's score was what it was
    # batched with (here only the PyTorch cross-check of a run could tell: fp32 failed it, fp16 and int8 passed)
    config = transformers.XLNetConfig(vocab_size=30522, d_model=32, n_layer=2, n_head=2, d_inner=64, num_labels=2)
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "xlnet")
    exported = CliRunner().invoke(main, ["export", "--checkpoint", str(with_tokenizer(tmp_path / "xlnet")), "-o",
                                         str(tmp_path / "onnx"), "--max-length", "48"])
    assert exported.exit_code == 4, exported.output
    assert re.search(r"error: XLNetModel's logits for a row of 12 tokens change when it is padded to 23 in a batch "
                     r"\(\[[-\d., ]+\] alone, \[[-\d., ]+\] padded\): the model reads padded positions",
                     exported.output), exported.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["funnel", "l-ck", "longformer", "nystromformer", "xlnet"]


def test_a_graph_that_fails_on_a_parity_batch_is_a_model_error_and_running_out_of_memory_is_not():
    """Parity runs the graph on batches of shapes export's own check did not try: ONNX Runtime failing there is the
    graph keeping a traced shape, said as such (exit 4), where it was "unexpected Fail" (exit 1); an allocation that
    failed is raised as it came (run and export say those in their own words)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    from export.onnx_graph import fixed_shape
    from scorer.errors import ModelError

    graph = helper.make_graph(  # a Reshape to 2x16, as a traced graph keeps its tracing's shape
        [helper.make_node("Reshape", ["input_ids", "traced"], ["logits"])], "fixed",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.INT64, None)],
        [helper.make_tensor("traced", TensorProto.INT64, [2], [2, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with fixed_shape("TracedModel", (2, 16)):
        session.run(None, {"input_ids": np.zeros((2, 16), np.int64)})
    said = (r"^TracedModel's ONNX graph, traced by torch.onnx at 2x16 tokens, fails on a batch of 1x31 \(Reshape node "
            r".*: its forward fixes a shape when traced")
    with pytest.raises(ModelError, match=said), fixed_shape("TracedModel", (1, 31)):
        session.run(None, {"input_ids": np.zeros((1, 31), np.int64)})

    with pytest.raises(Fail, match="Failed to allocate memory"), fixed_shape("TracedModel", (1, 31)):
        raise Fail("[ONNXRuntimeError] : 1 : FAIL : Failed to allocate memory for requested buffer of size 99")
    with pytest.raises(KeyError), fixed_shape("TracedModel", (1, 31)):  # (not ONNX Runtime's: a bug, as it came)
        raise KeyError("input_ids")


@pytest.mark.parametrize("family", ["albert", "modernbert", "distilbert", "electra"])
def test_masked_lm_epochs_and_fewer_or_fresh_layers_train_other_families(family, tmp_path):
    """`--mlm-epochs` refused ALBERT, ModernBERT, DistilBERT and ELECTRA ("not a BERT- or RoBERTa-style masked-LM
    model": their MLM heads are not one module named cls or lm_head); their masked-LM form is now run whole (ALBERT's
    head by name). `--keep-layers` on ModernBERT failed saving its config (a layer type per layer: "unexpected
    StrictDataclassClassValidationError"), and `--reinit-layers` on its bias-free LayerNorms with "unexpected
    AttributeError"; on ALBERT, whose one layer is applied as each of its layers, `--keep-layers` did nothing and
    `--reinit-layers` started every layer afresh."""
    import transformers

    encoder = _encoder(family, tmp_path / family)
    args = ["train", "--model", str(encoder), "--output", str(tmp_path / "checkpoint"), "--epochs", "1",
            "--rtd-epochs", "0", "--max-length", "48", "--mlm-epochs", "1", "--keep-layers", "1"]
    if family == "albert":  # one layer's weights applied as each layer: kept fewer times, never started afresh alone
        refused = CliRunner().invoke(main, [*args, "--reinit-layers", "1"])
        assert refused.exit_code == 2 and "masked-LM epoch" not in refused.output, refused.output
        assert refused.output.strip().splitlines()[-1] == (
            "error: --reinit-layers: AlbertModel applies one layer's weights as each of its 2 layers, so its top "
            "layers cannot start afresh alone; drop --reinit-layers")
    result = CliRunner().invoke(main, [*args, *(["--reinit-layers", "1"] if family != "albert" else [])])
    assert result.exit_code == 0, result.output
    assert re.search(r"masked-LM epoch 1 / 1: loss \d+\.\d+", result.output), result.output
    config = transformers.AutoConfig.from_pretrained(tmp_path / "checkpoint")
    assert config.num_hidden_layers == 1 and len(getattr(config, "layer_types", None) or [0]) == 1
    exported = CliRunner().invoke(main, ["export", "--checkpoint", str(tmp_path / "checkpoint"), "--output",
                                         str(tmp_path / "onnx"), "--variants", "fp32", "--quiet"])
    assert exported.exit_code == 0, exported.output
