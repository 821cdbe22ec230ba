"""The GPU variant's graph: fp16 with ONNX Runtime's BERT fusions, its attention in one of several forms.

ORT's transformer optimizer fuses LayerNorm, GELU, the embeddings and (unless asked not to) attention, as its
`Attention` op ("fused") or its `MultiHeadAttention` op ("mha"); "unfused" keeps the exported MatMul/Softmax nodes.
The fused ops take the padding mask as each row's length (valid because scorer pads on the right), which is what
CUDA's fused attention kernels need; `with_row_starts` adds each row's start as well (the 3B+2 form), the one form
in which ORT's memory-efficient (cutlass) kernels take a padded batch; `packed` removes the padding between the
embeddings and the last layer (ORT's packing mode, CUDA only). Which graph and kernels are fastest is measured where
the graph will run (export.fp16_choice).
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from export.large import held_out_graph, restore_table
from scorer.errors import ModelError
from scorer.machine import usable_cores, usable_memory

log = logging.getLogger("scorer")
# ORT's optimizer keeps one core busy for 17-35 s on a bert-base graph (it copies the whole model, weights and all,
# for each of its shape inferences), at a peak of about 18 times the source's size in memory (7.5 GB for bert-base's
# 415 MB): graphs from a source this large are built at once, a process each, where there is a core and the memory
# for each (bench/RESULTS.md 7.14: on 2 cores, three processes were not reliably faster than one).
_PARALLEL_BYTES, _MEMORY_PER_SOURCE_BYTE, _MIN_CORES = 64 << 20, 20, 4


def optimize_fp16(source: Path, target: Path, num_heads: int, hidden_size: int, attention: str = "fused"
                  ) -> dict[str, int]:
    """Fuse LayerNorm, GELU and (unless `attention` is unfused) attention, as ORT's Attention op ("fused") or its
    MultiHeadAttention op ("mha") taking the mask as sequence lengths, with ORT's BERT optimizer; int32 id inputs,
    fp16 inside, fp32 logits."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions

    options = FusionOptions("bert")
    options.enable_attention = attention != "unfused"
    options.use_multi_head_attention = attention == "mha"
    # EmbedLayerNormalization turns the mask into each row's count of ones (the optimizer's BERT default, said here
    # because the CUDA kernels depend on it: with the 0/1 mask itself, only the unfused math takes it).
    options.attention_mask_format = AttentionMaskFormat.MaskIndexEnd
    graph, held = held_out_graph(source)
    model = optimizer.optimize_model(graph, model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                     opt_level=0, use_gpu=True, optimization_options=options)
    fused = {name: count for name, count in model.get_fused_operator_statistics().items() if count}
    if attention_of(fused) != attention:
        log.warning("ONNX Runtime's optimizer did not fuse %s attention in %s (%s): the graph has %s attention",
                    attention, source, _why_unfused(), attention_of(fused))
    int32_inputs(model.model)
    model.convert_float_to_float16(keep_io_types=True)
    restore_table(model.model, held, source)
    model.save_model_to_file(str(target))
    return fused


def _why_unfused() -> str:
    import onnxruntime

    major, minor = (int(part) for part in onnxruntime.__version__.split(".")[:2])
    if (major, minor) < (1, 31):
        return f"onnxruntime {onnxruntime.__version__} fuses none in scorer's graphs; 1.31 does"
    return "its attention is not written as the BERT optimizer's patterns expect"


def optimize_each(source: Path, directory: Path, num_heads: int, hidden_size: int, attentions: list[str],
                  workers: int | None = None) -> dict[str, dict[str, int] | Exception]:
    """optimize_fp16 with each attention, to graph_file(directory, attention): what the optimizer fused in each, or the
    exception that stopped it. In `workers` processes at once (default: build_workers); a graph whose process died,
    or all of them where no process could start, is built here instead."""
    if workers is None:
        workers = build_workers(source.stat().st_size, len(attentions))
    jobs = {attention: (source, graph_file(directory, attention), num_heads, hidden_size, attention)
            for attention in attentions}
    results: dict[str, dict[str, int] | Exception] = {}
    if workers > 1:
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {attention: pool.submit(optimize_fp16, *job) for attention, job in jobs.items()}
                results = {attention: future.exception() or future.result() for attention, future in futures.items()}
        except OSError as exc:  # no processes to be had here (limits, no /dev/shm): build them here instead
            log.warning("fp16 graphs: no worker processes (%s); building them one after another", exc)
    for attention, job in jobs.items():
        if attention not in results or isinstance(results[attention], BrokenProcessPool):
            try:
                results[attention] = optimize_fp16(*job)
            except Exception as exc:  # any failure of one graph is that graph's (ORT raises many exception types)
                results[attention] = exc
    return results


def graph_file(directory: Path, attention: str) -> Path:
    """Where optimize_each writes the fp16 graph with `attention`."""
    return directory / f"{attention}.onnx"


def build_workers(source_bytes: int, graphs: int) -> int:
    """How many processes build `graphs` fp16 graphs from a source of `source_bytes` at once (1: here, in turn)."""
    cores = usable_cores()
    if source_bytes <= _PARALLEL_BYTES or cores < _MIN_CORES:
        return 1
    available = usable_memory()
    if available is None:  # (not on Linux: no parallel builds)
        return 1
    return max(1, min(graphs, cores, available // (_MEMORY_PER_SOURCE_BYTE * source_bytes)))


def attention_of(fused: dict[str, int]) -> str:
    """Which attention a graph has, from the optimizer's counts of fused operators."""
    return "fused" if fused.get("Attention") else "mha" if fused.get("MultiHeadAttention") else "unfused"


def int32_inputs(model: onnx.ModelProto) -> None:
    """Make the int64 graph inputs int32, which the fused embedding and attention ops take directly.

    A Cast of an input to int32 becomes the input itself; any other consumer reads it through one Cast back to
    int64, placed first so the node order stays topological. (ORT's change_graph_inputs_to_int32 drops the mask's
    Cast to float in graphs without fused attention.)
    """
    graph = model.graph
    for value in graph.input:
        if value.type.tensor_type.elem_type != onnx.TensorProto.INT64:
            continue
        value.type.tensor_type.elem_type = onnx.TensorProto.INT32
        name, wide = value.name, f"{value.name}_int64"
        consumers = [node for node in graph.node if name in node.input]
        to_int32 = [n for n in consumers if n.op_type == "Cast"
                    and any(a.name == "to" and a.i == onnx.TensorProto.INT32 for a in n.attribute)]
        for cast in to_int32:
            for node in graph.node:
                node.input[:] = [name if i == cast.output[0] else i for i in node.input]
            graph.node.remove(cast)
        others = [n for n in consumers if n not in to_int32]
        for node in others:
            node.input[:] = [wide if i == name else i for i in node.input]
        if others:
            graph.node.insert(0, onnx.helper.make_node("Cast", [name], [wide], to=onnx.TensorProto.INT64,
                                                       name=f"{name}_to_int64"))


def with_row_starts(source: Path, target: Path) -> None:
    """Copy the fused fp16 graph at `source` to `target` with its attention ops' mask as [lengths, query starts, key
    starts] (3B+2 values: each row's length, then B+1 offsets of the rows in the padded batch, twice)."""
    model = onnx.load(str(source))
    graph = model.graph
    attention = [node for node in graph.node if node.op_type in ("Attention", "MultiHeadAttention")]
    embed = next((node for node in graph.node if node.op_type == "EmbedLayerNormalization"), None)
    if not attention or embed is None or len(embed.output) < 2:
        raise ModelError(f"{source}: no fused attention op takes its mask from EmbedLayerNormalization")
    lengths, ids = embed.output[1], embed.input[0]  # the ids give the padded batch's shape
    graph.initializer.extend([helper.make_tensor("row_starts_0", TensorProto.INT64, [], [0]),
                              helper.make_tensor("row_starts_1", TensorProto.INT64, [], [1])])
    nodes = [helper.make_node("Shape", [ids], ["row_starts_shape"]),
             helper.make_node("Gather", ["row_starts_shape", "row_starts_0"], ["row_starts_rows"], axis=0),
             helper.make_node("Gather", ["row_starts_shape", "row_starts_1"], ["row_starts_width"], axis=0),
             helper.make_node("Add", ["row_starts_rows", "row_starts_1"], ["row_starts_count"]),
             helper.make_node("Range", ["row_starts_0", "row_starts_count", "row_starts_1"], ["row_starts_index"]),
             helper.make_node("Mul", ["row_starts_index", "row_starts_width"], ["row_starts_int64"]),
             helper.make_node("Cast", ["row_starts_int64"], ["row_starts"], to=TensorProto.INT32),
             helper.make_node("Concat", [lengths, "row_starts", "row_starts"], ["row_starts_mask"], axis=0)]
    at = list(graph.node).index(embed) + 1
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)
    for node in attention:
        node.input[:] = ["row_starts_mask" if name == lengths else name for name in node.input]
    onnx.save(model, str(target))


def packed(source: Path, target: Path) -> None:
    """Copy the fused fp16 graph at `source` to `target` in ORT's packing mode: `RemovePadding` after the embeddings
    packs the batch's real tokens into one (tokens, hidden) matrix, the attention ops become `PackedAttention` or
    `PackedMultiHeadAttention` (each row's tokens found by cumulative lengths), and `RestorePadding` after the last
    layer norm pads them back for the classifier head. Every matrix product between runs on real tokens only. ORT
    has these ops on CUDA only."""
    from onnxruntime.transformers.convert_to_packing_mode import PackingMode
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(source)))
    if not any(model.get_nodes_by_op_type(op) for op in ("Attention", "MultiHeadAttention")):
        raise ModelError(f"{source}: ONNX Runtime's packing mode needs a fused attention op")
    # ORT's symbolic shape inference is left out: it is slow on bert-base and ORT infers the shapes at load anyway.
    PackingMode(model).convert(use_symbolic_shape_infer=False)
    if not model.get_nodes_by_op_type("RemovePadding"):  # the converter logs why and returns where it cannot convert
        raise ModelError(f"{source}: ONNX Runtime's packing mode could not convert its attention")
    model.save_model_to_file(str(target))
