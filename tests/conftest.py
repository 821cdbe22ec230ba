"""Shared fixtures: a tiny random-weight BERT built in code, trained and exported once per test session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from scorer.packaged import packaged_model

COLA = Path(os.environ.get("SCORER_COLA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "cola"))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
TINY_POSITIONS = 128


def pytest_collection_modifyitems(config, items):
    """GPU tests skip themselves without CUDA; CoLA tests skip themselves without the data."""
    cuda = _cuda_available()
    tensorrt = cuda and _tensorrt_available()
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs onnxruntime-gpu and a CUDA GPU"))
        if "tensorrt" in item.keywords and not tensorrt:
            item.add_marker(pytest.mark.skip(reason="needs the TensorRT execution provider and TensorRT 10 libraries"))
        if "cola" in item.keywords and not (COLA / "train.tsv").is_file():
            item.add_marker(pytest.mark.skip(reason=f"CoLA data not found at {COLA}"))


def _cuda_available() -> bool:
    try:
        import onnxruntime
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() and "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _tensorrt_available() -> bool:
    from export import tensorrt

    return tensorrt.available()


def build_tiny_encoder(directory: Path, **config) -> Path:
    """A 2-layer, 32-wide BERT with random weights (seed 0; BertConfig fields in `config` override) and the
    packaged model's real WordPiece tokenizer, saved in `directory`."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=TINY_POSITIONS, **config)
              ).save_pretrained(directory)
    return with_tokenizer(directory)


def with_tokenizer(directory: Path) -> Path:
    """`directory` with the packaged model's WordPiece tokenizer files copied in."""
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_source() / name, directory / name)
    return directory


SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's and XLM-R's special tokens, in their order


def trained_tokenizer(kind: str, texts: list[str], vocab_size: int):
    """A tokenizer without the word cache, trained here on `texts`, with RoBERTa's <s> ... </s>: a byte-level BPE
    (RoBERTa's kind, "bytelevel"), a SentencePiece-style BPE (Metaspace, NFKC: "metaspace"), tokenizers' own
    SentencePiece-style unigram model (Nmt, NFKC, runs of spaces: "unigram"), or XLM-R's as its checkpoints ship it
    ("precompiled": `sentencepiece_tokenizer`)."""
    from tokenizers import (
        ByteLevelBPETokenizer,
        SentencePieceBPETokenizer,
        SentencePieceUnigramTokenizer,
        Tokenizer,
        processors,
    )

    if kind == "precompiled":
        return sentencepiece_tokenizer(texts, vocab_size)
    trainer = {"bytelevel": ByteLevelBPETokenizer, "metaspace": SentencePieceBPETokenizer,
               "unigram": SentencePieceUnigramTokenizer}[kind]()
    extra = {"unk_token": "<unk>"} if kind == "unigram" else {}
    trainer.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False, **extra)
    tokenizer = Tokenizer.from_str(trainer._tokenizer.to_str())
    ids = {token: tokenizer.token_to_id(token) for token in ("<s>", "</s>")}
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", ids["</s>"]), ("<s>", ids["<s>"]))
    return tokenizer


def sentencepiece_tokenizer(texts: list[str], vocab_size: int):
    """An XLM-RoBERTa tokenizer as real checkpoints ship it: a SentencePiece unigram model trained here on `texts`
    with SentencePiece's NFKC rules, converted by transformers' converter (its precompiled normaliser, Strip, runs of
    spaces replaced, Metaspace, <s> ... </s>); XLM-R's ids (the four specials first, the pieces one up)."""
    import io

    import sentencepiece
    from transformers.convert_slow_tokenizer import XLMRobertaConverter

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        normalization_rule_name="nmt_nfkc", character_coverage=1.0, minloglevel=2)

    class Original:  # what the converter reads of a slow XLMRobertaTokenizer
        def __init__(self, path: str) -> None:
            self.vocab_file = path
            self.pieces = sentencepiece.SentencePieceProcessor(model_file=path)

        def convert_tokens_to_ids(self, token: str) -> int:
            specials = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
            return specials[token] if token in specials else self.pieces.piece_to_id(token) + 1

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "sentencepiece.model"
        path.write_bytes(model.getvalue())
        return XLMRobertaConverter(Original(str(path))).converted()


def rewritten_fp16(export: Path, directory: Path, attention: str, kernels: str) -> tuple[Path, Path]:
    """A tiny export's fp16 graph with `attention` (the mask as row lengths), and that graph as export rewrites it
    for the kernel setting `kernels` (export.fp16_choice.KERNELS; the same file where no rewrite applies)."""
    from export.fp16_choice import KERNELS
    from export.optimize import optimize_fp16

    lengths_graph, rewritten = directory / "lengths.onnx", directory / f"{kernels}.onnx"
    optimize_fp16(export / "model.onnx", lengths_graph, 2, 32, attention)
    if not KERNELS[kernels].rewrite:
        return lengths_graph, lengths_graph
    KERNELS[kernels].rewrite(lengths_graph, rewritten)
    return lengths_graph, rewritten


def after_logits(export: Path, variant: str, nodes: list, initializers: list) -> None:
    """Append `nodes` (reading `clean_logits`, writing `logits`) to the end of the export's `variant` graph, as a
    damaged or overflowing graph would compute, and record its new sha256."""
    import onnx

    from scorer.manifest import load_manifest, sha256_file

    manifest = load_manifest(export)
    path = manifest.variant(variant, export)
    model = onnx.load(path)
    graph = model.graph
    producer = next(node for node in graph.node if "logits" in node.output)
    producer.output[list(producer.output).index("logits")] = "clean_logits"
    graph.initializer.extend(initializers)
    graph.node.extend(nodes)
    onnx.save(model, path)
    manifest.variants[variant].sha256 = sha256_file(path)
    manifest.save(export)


def make_unchangeable(path: Path) -> bool:
    """`path` made immutable (chattr +i): not even root may write, remove or add to it, as a run of one account finds
    what another account left (root, running the tests, would pass any permission check). False where it cannot be:
    not root, a file system without the flag, or no chattr at all (e2fsprogs: a slim container has none)."""
    try:
        return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def make_unchangeable_or_skip(path: Path) -> None:
    if not make_unchangeable(path):
        pytest.skip("chattr +i is not available here (needs root, a file system that has it, and chattr)")


def make_changeable(path: Path) -> None:
    subprocess.run(["chattr", "-i", str(path)], check=True)


def poison(export: Path, variant: str, word: str) -> int:
    """Make the export's `variant` graph give -inf logits (NaN probabilities) to every row holding `word` (one
    WordPiece token), as an fp16 graph overflowing on a row would; returns the token id."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper
    from tokenizers import Tokenizer

    from scorer.manifest import load_manifest

    token = Tokenizer.from_file(str(export / "tokenizer.json")).token_to_id(word)
    manifest = load_manifest(export)
    with np.load(export / manifest.extra["self_check"]["file"]) as saved:  # else the run stops at its self-check
        assert token not in saved["input_ids"], f"'{word}' is in the export's self-check rows; poison another word"
    ids = onnx.load(manifest.variant(variant, export), load_external_data=False).graph.input[0]
    after_logits(export, variant, [
        helper.make_node("Equal", [ids.name, "poison_token"], ["poison_hit"]),
        helper.make_node("Cast", ["poison_hit"], ["poison_hits"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["poison_hits"], ["poison_row"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["poison_one", "poison_row"], ["poison_keep"]),
        helper.make_node("Log", ["poison_keep"], ["poison_shift"]),  # 0 for clean rows, -inf for poisoned ones
        helper.make_node("Add", ["clean_logits", "poison_shift"], ["logits"]),
    ], [helper.make_tensor("poison_token", ids.type.tensor_type.elem_type, [], [token]),
        helper.make_tensor("poison_one", TensorProto.FLOAT, [], [1.0])])
    return token


def fp32_parity_and_run_evaluation(checkpoint: Path, data: Path, out: Path) -> tuple[str, dict, dict]:
    """Export `checkpoint` (fp32 only) with parity on `data`, then score `data` with that export: what export
    printed, its parity report's fp32 row and the run's evaluation, so a test can hold export's accuracy to what
    `run` measures."""
    from click.testing import CliRunner

    from scorer.cli import main
    from scorer.data.write import default_output

    exported = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "-o", str(out), "--data",
                                         str(data), "--variants", "fp32"])
    assert exported.exit_code == 0, exported.output
    fp32 = next(v for v in json.loads((out / "parity.json").read_text())["variants"] if v["variant"] == "fp32")
    scored = CliRunner().invoke(main, ["run", str(data), "--model", str(out), "--variant", "fp32", "-q"])
    assert scored.exit_code == 0, scored.output
    summary = default_output(data).with_name(default_output(data).name + ".summary.json")
    return exported.output, fp32, json.loads(summary.read_text())["inputs"][0]["evaluation"]


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    """The tiny random BERT of `build_tiny_encoder`, built once per test session."""
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"))


def tokenizer_source() -> Path:
    """The packaged MiniLM's WordPiece files; SCORER_TOKENIZER_DIR where that package is not installed (GPU box)."""
    override = os.environ.get("SCORER_TOKENIZER_DIR")
    return Path(override) if override else packaged_model()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_encoder, tmp_path_factory) -> Path:
    """The tiny BERT fine-tuned for 2 epochs on the packaged examples."""
    from scorer.config import TrainConfig
    from scorer.training.train import train

    output = tmp_path_factory.mktemp("tiny-trained") / "checkpoint"
    train(TrainConfig(model=tiny_encoder, output=output, epochs=2, max_length=48, learning_rate=1e-3),
          progress=False)
    return output


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint exported with all three variants (the tiny model passes the gate)."""
    from export.pipeline import export_model
    from scorer.config import ExportConfig

    output = tmp_path_factory.mktemp("tiny-export") / "onnx"
    export_model(ExportConfig(checkpoint=tiny_checkpoint, output=output))
    return output


@pytest.fixture
def export_copy(tiny_export, tmp_path) -> Path:
    """A private copy of the tiny export for tests that damage it."""
    return Path(shutil.copytree(tiny_export, tmp_path / "onnx"))
