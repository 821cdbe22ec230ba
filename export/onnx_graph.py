"""Export a classifier (scorer.pytorch.checkpoints.load_classifier) to ONNX with dynamic batch and sequence axes,
and check the saved graph."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch
from torch import nn

from export.large import data_file
from scorer.errors import ConfigError, ModelError

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("logits",)
# Declared as data, so the export call and the check of the saved graph cannot drift apart.
DYNAMIC_AXES = {
    "input_ids": {0: "batch", 1: "sequence"},
    "attention_mask": {0: "batch", 1: "sequence"},
    "logits": {0: "batch"},
}
# Export at a shape that parity never uses (it checks batch 1, odd lengths and the max length).
_EXPORT_BATCH, _EXPORT_LENGTH = 2, 16
# ...and run the graph at others (rows x tokens; None: the max length) before any variant is built from it.
_OTHER_SHAPES = ((3, 23), (2, 5), (1, None))


def export_onnx(model: nn.Module, path: Path, opset: int) -> None:
    """Write `model` as an fp32 ONNX graph: TorchScript exporter, so ORT's optimizer can fuse attention."""
    model = model.eval().to("cpu")
    vocab = model.encoder.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000 if vocab > 2000 else 1, vocab, (_EXPORT_BATCH, _EXPORT_LENGTH), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, _EXPORT_LENGTH // 2 :] = 0
    check_opset(opset)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (input_ids, attention_mask),
            str(path),
            dynamo=False,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=DYNAMIC_AXES,
            opset_version=opset,
            do_constant_folding=True,
        )
    gather_external_data(path)
    check_graph(path)
    check_other_shapes(path, type(model.encoder).__name__, vocab, model.head_config.max_length,
                       getattr(model.encoder.config, "pad_token_id", None) or 0)


def newest_opset() -> int:
    """The newest opset this environment can both export (torch's exporter) and check (onnx's checker)."""
    return min(_limits().values())


def check_opset(opset: int) -> None:
    """Refuse, before any work, an opset that torch cannot write or that the installed onnx cannot check: onnx 1.16
    knows opsets up to 21, and its checker refuses torch's opset-23 graphs for their IR version ("the exported graph
    fails onnx.checker"), after a whole export."""
    for name, newest in _limits().items():
        if opset > newest:
            verb = "export" if name == "torch" else "check"
            raise ConfigError(f"--opset {opset} is newer than {name} {_version(name)} can {verb} (at most {newest}): "
                              f"use --opset {newest_opset()} or older, or upgrade {name}")


def _limits() -> dict[str, int]:
    exporter = getattr(torch.onnx._constants, "ONNX_MAX_OPSET", None)  # (a private constant: absent, onnx's alone)
    return {**({"torch": exporter} if exporter is not None else {}), "onnx": onnx.defs.onnx_opset_version()}


def _version(name: str) -> str:
    return torch.__version__ if name == "torch" else onnx.__version__


def gather_external_data(path: Path) -> None:
    """Over 2 GB, where protobuf cannot hold the weights, torch writes each tensor to a file of its own beside the
    graph: move them into one file, `<graph>.data`, which the manifest hashes with the graph."""
    scattered = external_files(path)
    if not scattered or scattered == [data_file(path).name]:
        return
    graph = onnx.load(str(path))  # (with its tensors)
    onnx.save_model(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_file(path).name, size_threshold=1024)
    for name in scattered:
        (path.parent / name).unlink()


def external_files(path: Path) -> list[str]:
    """The files beside the graph `path` that hold its tensors (none for a graph under 2 GB)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return sorted({entry.value for tensor in graph.initializer if tensor.data_location == onnx.TensorProto.EXTERNAL
                   for entry in tensor.external_data if entry.key == "location"})


def check_graph(path: Path) -> None:
    """onnx.checker passes and every declared dynamic axis is symbolic in the saved graph."""
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{path}: the exported graph fails onnx.checker ({exc})") from exc
    graph = onnx.load(str(path), load_external_data=False).graph
    values = {value.name: value for value in [*graph.input, *graph.output]}
    problems = []
    for name, axes in DYNAMIC_AXES.items():
        if name not in values:
            problems.append(f"{name} is not a graph input or output")
            continue
        dims = values[name].type.tensor_type.shape.dim
        problems.extend(
            f"{name} axis {axis} is {dims[axis].dim_value}, not symbolic '{label}'"
            for axis, label in axes.items()
            if dims[axis].dim_param != label
        )
    if problems:
        raise ModelError(f"{path}: {'; '.join(problems)}")


def check_other_shapes(path: Path, architecture: str, vocab: int, max_length: int, pad_id: int = 0) -> None:
    """The graph runs at batch shapes other than the one it was traced at, and a row's logits do not depend on the
    padding after it. A forward whose tracing fixed a shape (Longformer's padding to its attention window, Funnel's
    pooling) fails here, named, where it failed later, building the variants or checking parity, with "unexpected
    Fail" and ONNX Runtime's whole message (parity's batches, of other shapes still, are run the same way: see
    export.parity); a model that reads a padded position (XLNet, which classifies by the last token and is padded on
    the left) would score a row by what it was batched with, and is refused."""
    import numpy as np

    from scorer.inference.session import batch_runner, create_session

    rng = np.random.default_rng(0)
    run = batch_runner(create_session(path, "cpu", threads=1), "cpu", False)
    for rows, length in _OTHER_SHAPES:
        input_ids = rng.integers(1000 if vocab > 2000 else 1, vocab, (rows, length or max_length), dtype=np.int64)
        attention_mask = np.ones_like(input_ids)
        kept = input_ids.shape[1] // 2 + 1
        attention_mask[-1, kept:] = 0
        input_ids[-1, kept:] = pad_id  # (as scorer pads)
        with fixed_shape(architecture, input_ids.shape):
            padded = run({"input_ids": input_ids, "attention_mask": attention_mask})[-1]
        with fixed_shape(architecture, (1, kept)):
            alone = run({"input_ids": input_ids[-1:, :kept], "attention_mask": attention_mask[-1:, :kept]})[0]
        if not np.allclose(padded, alone, rtol=1e-3, atol=1e-3):
            raise ModelError(f"{architecture}'s logits for a row of {kept} tokens change when it is padded to "
                             f"{input_ids.shape[1]} in a batch ({_shown(alone)} alone, {_shown(padded)} padded): "
                             "the model reads padded positions (as one padded on the left and classifying by its last "
                             "token does), and scorer pads on the right, so it would score a row by what it was "
                             "batched with; nothing was written")


def _shown(logits) -> str:
    return "[" + ", ".join(f"{value:.4f}" for value in logits) + "]"


@contextlib.contextmanager
def fixed_shape(architecture: str, shape: tuple[int, int]) -> Iterator[None]:
    """ONNX Runtime failing to run the exported graph on a batch of `shape` (rows, tokens) as a model error: the
    graph keeps a shape it was traced at (running out of memory is not that, and is raised as it came)."""
    from scorer.inference.session import memory_failure, ort_account, raised_by_onnxruntime

    try:
        yield
    except Exception as exc:
        if not raised_by_onnxruntime(exc) or memory_failure(exc):
            raise
        raise ModelError(f"{architecture}'s ONNX graph, traced by torch.onnx at {_EXPORT_BATCH}x{_EXPORT_LENGTH} "
                         f"tokens, fails on a batch of {shape[0]}x{shape[1]} ({ort_account(exc)[:300]}): its forward "
                         "fixes a shape when traced, so it cannot be exported with dynamic batch and sequence axes; "
                         "nothing was written") from exc
