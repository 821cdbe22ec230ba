"""The GPU variant: fp16 with ONNX Runtime's BERT fusions, its attention chosen by measurement on CUDA.

ORT's fused Attention was the slowest fp16 graph with plain `session.run` and the fastest on long texts with IO
binding (H200 anchor, ../shared/device/README.md), while on an H100 IO binding slowed the fused graph on short
sentences by a quarter (bench/RESULTS.md 7.2): which wins depends on the card, the lengths and the run mode.
The fused attention ops take the padding mask as sequence lengths (the mask's row sums, valid because scorer pads on
the right). With those, ORT's CUDA kernels use TensorRT's fused attention up to compute capability 8.9; on 9.0 (H100,
H200) they fall back to unfused attention math unless cuDNN's flash attention (SDPA) is used, which the CUDA
provider's `sdpa_kernel` option asks for (and newer ORT releases prefer there by themselves). So where CUDA works,
export builds the graph with each attention of FP16_ATTENTIONS, runs the fused ones also with cuDNN's attention
asked for, checks each against the fp32 graph on a batch with padding, times each plainly and with IO binding on the
calibration sentences batched as `scorer run` batches them, and keeps the fastest graph with its run mode and kernel
setting, which `scorer run` then uses on CUDA; elsewhere it keeps the fused graph and says it was not measured.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from export.timing import best_seconds, logits_of, run_cost
from scorer.batches import budget_batches
from scorer.classify import DEFAULT_BATCH_OVERHEAD, DEFAULT_MAX_TOKENS
from scorer.config import FP16_ATTENTIONS, RunConfig
from scorer.errors import ModelError, ProviderError, first_line
from scorer.session import CUDA, available, batch_runner, create_session
from scorer.tokens import Encoded

log = logging.getLogger("scorer")
# Best of 3 passes; each pass runs 8 full batches' worth of tokens (the calibration rows repeated): 500 short
# sentences alone make one small batch, where launch overheads, not the attention, decide.
_PASSES, _FULL_BATCHES = 3, 8
# CUDA provider options per attention-kernel setting: ORT's choice, or cuDNN's flash attention asked for (the
# `sdpa_kernel` bit mask of ORT's AttentionBackend: 8 is CUDNN_FLASH_ATTENTION; the unfused math stays the fallback).
KERNELS = {"default": {}, "cudnn": {"sdpa_kernel": "8"}}
# The check rows (calibration rows in their own order, so of mixed lengths, padded to the longest) may differ from the
# fp32 graph's logits by this much: fp16 moved bert-base's by up to 9e-3 on an H200 (../shared/device/README.md);
# a kernel that ignored the padding moves them by far more.
_CHECK_ROWS, FP16_CHECK_TOLERANCE = 64, 0.05


@dataclass(frozen=True)
class Fp16Report:
    """Which attention the fp16 graph has, what the optimizer fused, and the CUDA timings behind the choice."""

    attention: str
    fused: dict[str, int]
    # Per candidate ("fused", "fused io_binding", "mha cudnn", ...); None where CUDA was not there to measure.
    seconds: dict[str, float] | None = None
    measured_on: str | None = None
    io_binding: bool | None = None  # whether the faster run mode was IO binding; None: not measured
    failed: dict[str, str] | None = None  # candidates that did not run, or ran wrong, where measured, and why
    # What one more run of the kept graph costs there, in tokens' worth of work (export.timing.run_cost); `scorer
    # run` batches by it on that provider. None: not measured.
    batch_overhead: int | None = None
    # The provider options of the kept kernel setting (KERNELS), which `scorer run` passes to CUDA with this graph.
    cuda_options: dict[str, str] | None = None


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
    model = optimizer.optimize_model(str(source), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                     opt_level=0, use_gpu=True, optimization_options=options)
    fused = {name: count for name, count in model.get_fused_operator_statistics().items() if count}
    if attention_of(fused) != attention:
        log.warning("ONNX Runtime's optimizer did not fuse %s attention in %s (onnxruntime 1.30 fused none; 1.31 "
                    "does): the graph has %s attention", attention, source, attention_of(fused))
    int32_inputs(model.model)
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(target))
    return fused


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


def build_fp16(source: Path, target: Path, num_heads: int, hidden_size: int, attention: str,
               encoded: Encoded) -> Fp16Report:
    """Write the fp16 variant to `target` with the attention asked for, or (auto) the faster one on CUDA."""
    why = "as asked"
    if attention == "auto" and not _cuda_works(source):
        attention, why = "fused", "not measured: no working CUDA here"
    if attention != "auto":
        fused = optimize_fp16(source, target, num_heads, hidden_size, attention)
        log.info("fp16 variant: attention %s (%s); fused %s", attention, why,
                 ", ".join(f"{n}×{c}" for n, c in sorted(fused.items())) or "nothing")
        return Fp16Report(attention_of(fused), fused)
    return choose_attention(source, target, num_heads, hidden_size, encoded, "cuda")


def choose_attention(source: Path, target: Path, num_heads: int, hidden_size: int, encoded: Encoded,
                     provider: str) -> Fp16Report:
    """Build the fp16 graph with each attention, check each kernel setting against the fp32 graph, time each on
    `provider` as `scorer run` runs them, plain and with IO binding, and keep the fastest graph as `target` (with
    its run mode and kernel setting in the report). A candidate that ONNX Runtime cannot start or run there, or
    that scores the check rows differently, is left out, and the report says why."""
    budget = DEFAULT_MAX_TOKENS["cuda"]
    rows = np.resize(np.arange(len(encoded)), math.ceil(_FULL_BATCHES * budget / encoded.lengths.mean()))
    batches = [(rows[cut], None) for cut in budget_batches(encoded.lengths[rows], budget, RunConfig.max_batch_rows,
                                                            DEFAULT_BATCH_OVERHEAD["cuda"])]
    check = [(np.arange(min(len(encoded), _CHECK_ROWS)), None)]  # mixed lengths: padding in every short row
    expected = logits_of(create_session(source, "cpu"), encoded, check)[check[0][0]]
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        paths, fused, runners, failed = {}, {}, {}, {}
        for attention in FP16_ATTENTIONS:
            paths[attention] = Path(tmp) / f"{attention}.onnx"
            try:
                fused[attention] = optimize_fp16(source, paths[attention], num_heads, hidden_size, attention)
                if attention_of(fused[attention]) != attention:  # not the graph it is named for
                    raise ModelError(f"the optimizer fused {attention_of(fused[attention])} attention instead")
            except Exception as exc:  # any failure of one candidate drops it (ORT raises many exception types)
                failed[attention] = first_line(exc)
                log.warning("fp16 variant: no %s attention graph (%s); left out", attention, failed[attention])
                continue
            for kernels in kernel_settings(attention, provider):
                name = attention + ("" if kernels == "default" else f" {kernels}")
                try:
                    runners.update(_checked_runners(paths[attention], provider, name, kernels, encoded, check,
                                                    expected))
                except Exception as exc:
                    failed[name] = first_line(exc)
                    log.warning("fp16 variant: %s left out on %s (%s)", name, provider, failed[name])
        if not runners:
            raise ModelError(f"no fp16 graph runs on {provider} ({'; '.join(f'{c}: {e}' for c, e in failed.items())})"
                             "; export with --variants fp32,int8")
        seconds = dict(zip(runners, best_seconds(list(runners.values()), encoded, batches, _PASSES), strict=True))
        best = min(seconds, key=seconds.__getitem__)
        attention, *setting = best.split()
        kernels = next((word for word in setting if word in KERNELS), "default")
        per_run = run_cost(runners[best], encoded, rows, budget, RunConfig.max_batch_rows, _PASSES)
        runners.clear()  # the sessions let go of the graph files before the temporary directory goes
        paths[attention].replace(target)
    log.info("fp16 variant: attention %s, %s kernels, %s runs, a run costs %s tokens' worth (%s: %s per pass)",
             attention, kernels, "IO-bound" if best.endswith("io_binding") else "plain",
             "?" if per_run is None else f"{per_run:,.0f}", provider,
             ", ".join(f"{name} {value:.3f}s" for name, value in seconds.items()))
    return Fp16Report(attention, fused[attention], seconds, provider, best.endswith("io_binding"), failed or None,
                      None if per_run is None else round(per_run), KERNELS[kernels])


def kernel_settings(attention: str, provider: str) -> list[str]:
    """The KERNELS to try a graph with: ORT's own choice, and on CUDA cuDNN's attention for the fused ops."""
    return ["default", "cudnn"] if provider == "cuda" and attention != "unfused" else ["default"]


def _checked_runners(path: Path, provider: str, name: str, kernels: str, encoded: Encoded, check, expected
                     ) -> dict:
    """A plain and an IO-bound runner of the graph at `path` with `kernels`, once each has scored the check rows
    within FP16_CHECK_TOLERANCE of the fp32 graph's `expected` logits; raises where either does not."""
    session = create_session(path, provider, KERNELS[kernels])
    runners = {name + (" io_binding" if bound else ""): batch_runner(session, provider, bound)
               for bound in (False, True)}
    for run in runners.values():
        worst = float(np.abs(logits_of(run, encoded, check)[check[0][0]] - expected).max())
        if not worst <= FP16_CHECK_TOLERANCE:  # NaN fails too
            raise ModelError(f"its logits differ from the fp32 graph's by {worst:.3g} on rows with padding "
                             f"(at most {FP16_CHECK_TOLERANCE} allowed)")
    return runners


def _cuda_works(model: Path) -> bool:
    if CUDA not in available():
        return False
    try:
        create_session(model, "cuda")
    except ProviderError as exc:
        log.warning("CUDA is listed but does not start (%s); fp16 attention is not measured", exc)
        return False
    return True
