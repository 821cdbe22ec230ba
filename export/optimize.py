"""The GPU variant: fp16 with ONNX Runtime's BERT fusions, attention fused or not, chosen by measurement on CUDA.

ORT's fused Attention was the slowest fp16 graph with plain `session.run` and the fastest on long texts with IO
binding (H200 anchor, ../shared/device/README.md), while on an H100 IO binding slowed the fused graph on short
sentences by a quarter (bench/RESULTS.md 7.2): which wins depends on the card, the lengths and the run mode. ORT's
MultiHeadAttention op (flash or memory-efficient attention kernels on CUDA) is a third candidate. So when export
runs where CUDA works, it builds the three graphs, times each with plain runs and with IO binding on the
calibration sentences, batched as `scorer run` batches them, and keeps the fastest graph and records its faster run
mode, which `scorer run` then uses on CUDA unless told otherwise; elsewhere it keeps the fused graph and says it
was not measured.
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


@dataclass(frozen=True)
class Fp16Report:
    """Which attention the fp16 graph has, what the optimizer fused, and the CUDA timings behind the choice."""

    attention: str
    fused: dict[str, int]
    # Per attention choice and run mode ("fused", "fused io_binding", ...); None where CUDA was not there to measure.
    seconds: dict[str, float] | None = None
    measured_on: str | None = None
    io_binding: bool | None = None  # whether the faster run mode was IO binding; None: not measured
    failed: dict[str, str] | None = None  # attentions whose graph did not run where it was measured, and why
    # What one more run of the kept graph costs there, in tokens' worth of work (export.timing.run_cost); `scorer
    # run` batches by it on that provider. None: not measured.
    batch_overhead: int | None = None


def optimize_fp16(source: Path, target: Path, num_heads: int, hidden_size: int, attention: str = "fused"
                  ) -> dict[str, int]:
    """Fuse LayerNorm, GELU and (unless `attention` is unfused) attention, as ORT's Attention op ("fused") or its
    MultiHeadAttention op ("mha"), with ORT's BERT optimizer; int32 id inputs, fp16 inside, fp32 logits."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_attention = attention != "unfused"
    options.use_multi_head_attention = attention == "mha"
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
    """Build the fp16 graph with each attention, time each on `provider` as `scorer run` runs them, plain and with
    IO binding, and keep the fastest graph as `target` (with the faster mode in the report). A graph that ONNX
    Runtime cannot start or run there is left out, and the report says why."""
    budget = DEFAULT_MAX_TOKENS["cuda"]
    rows = np.resize(np.arange(len(encoded)), math.ceil(_FULL_BATCHES * budget / encoded.lengths.mean()))
    batches = [(rows[cut], None) for cut in budget_batches(encoded.lengths[rows], budget, RunConfig.max_batch_rows,
                                                            DEFAULT_BATCH_OVERHEAD["cuda"])]
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        paths, fused, runners, failed = {}, {}, {}, {}
        for choice in FP16_ATTENTIONS:
            paths[choice] = Path(tmp) / f"{choice}.onnx"
            try:
                fused[choice] = optimize_fp16(source, paths[choice], num_heads, hidden_size, choice)
                if attention_of(fused[choice]) != choice:  # not the graph it is named for: nothing new to time
                    raise ModelError(f"the optimizer fused {attention_of(fused[choice])} attention instead")
                session = create_session(paths[choice], provider)
                modes = {choice + (" io_binding" if bound else ""): batch_runner(session, provider, bound)
                         for bound in (False, True)}
                for run in modes.values():  # one batch each way: does it run here at all?
                    logits_of(run, encoded, batches[:1])
            except Exception as exc:  # any failure of one candidate drops it (ORT raises many exception types)
                failed[choice] = first_line(exc)
                log.warning("fp16 variant: the %s attention graph does not run on %s (%s); left out", choice,
                            provider, failed[choice])
                continue
            runners.update(modes)
        if not runners:
            raise ModelError(f"no fp16 graph runs on {provider} ({'; '.join(f'{c}: {e}' for c, e in failed.items())})"
                             "; export with --variants fp32,int8")
        seconds = dict(zip(runners, best_seconds(list(runners.values()), encoded, batches, _PASSES), strict=True))
        best = min(seconds, key=seconds.__getitem__)
        attention = best.split()[0]
        per_run = run_cost(runners[best], encoded, rows, budget, RunConfig.max_batch_rows, _PASSES)
        paths[attention].replace(target)
    log.info("fp16 variant: attention %s, %s runs, a run costs %s tokens' worth (%s: %s per pass)", attention,
             "IO-bound" if best.endswith("io_binding") else "plain", "?" if per_run is None else f"{per_run:,.0f}",
             provider, ", ".join(f"{name} {value:.3f}s" for name, value in seconds.items()))
    return Fp16Report(attention, fused[attention], seconds, provider, best.endswith("io_binding"), failed or None,
                      None if per_run is None else round(per_run))


def _cuda_works(model: Path) -> bool:
    if CUDA not in available():
        return False
    try:
        create_session(model, "cuda")
    except ProviderError as exc:
        log.warning("CUDA is listed but does not start (%s); fp16 attention is not measured", exc)
        return False
    return True
