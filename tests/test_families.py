"""BERT-family encoders other than BERT itself (DistilBERT, RoBERTa, ELECTRA, XLM-RoBERTa) through train → export →
run, with the packaged WordPiece tokenizer and with their own kinds of tokenizer (byte-level BPE, SentencePiece
unigram), which have no word cache and whose padding id is not 0."""

from __future__ import annotations

import csv
import json
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


@pytest.mark.parametrize("family", ["distilbert", "roberta", "electra", "roberta-bpe", "xlm-roberta"])
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
