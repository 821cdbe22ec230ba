"""The fp16 variant's attention and kernels, chosen by measurement on CUDA.

ORT's fused Attention was the slowest fp16 graph with plain `session.run` and the fastest on long texts with IO
binding (H200 anchor, ../shared/device/README.md), while on an H100 IO binding slowed the fused graph on short
sentences by a quarter (bench/RESULTS.md 7.2): which wins depends on the card, the lengths and the run mode. Which
CUDA kernel a fused attention op runs depends on the mask's form and the provider's options (KERNELS): with row
lengths, TensorRT's fused attention up to compute capability 8.9, and on 9.0 (H100, H200) unfused math unless cuDNN's
flash attention is asked for (`sdpa_kernel`; newer ORT releases prefer it there by themselves); with row lengths and
starts, cutlass memory-efficient attention; in ORT's packing mode (padding removed, CUDA only), memory-efficient
attention over the packed rows. So where CUDA works, export builds each graph of FP16_ATTENTIONS, with
each kernel setting for the fused ones, checks each against the fp32 graph on a batch with padding, times each
plainly and with IO binding on the calibration sentences batched as `scorer run` batches them, and keeps the fastest
graph with its run mode and CUDA options, which `scorer run` then uses on CUDA; elsewhere it keeps the fused graph
and says it was not measured.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from export.fp16_probe import trials_in_children
from export.optimize import attention_of, graph_file, optimize_each, optimize_fp16, packed, with_row_starts
from export.timing import best_seconds, logits_of, run_cost
from scorer.config import FP16_ATTENTIONS, RunConfig
from scorer.errors import ModelError, first_line
from scorer.inference.defaults import DEFAULT_BATCH_OVERHEAD, DEFAULT_MAX_TOKENS
from scorer.inference.selfcheck import TOLERANCE, allowed
from scorer.inference.session import batch_runner, create_session, cuda_starts
from scorer.machine import gpu_identity
from scorer.text.batches import budget_batches
from scorer.text.tokens import Encoded

log = logging.getLogger("scorer")
# Best of 3 passes; each pass runs 8 full batches' worth of tokens (the calibration rows repeated): 500 short
# sentences alone make one small batch, where launch overheads, not the attention, decide.
_PASSES, _FULL_BATCHES = 3, 8
# The check rows (calibration rows in their own order, so of mixed lengths, padded to the longest) may differ from the
# fp32 graph's logits as much as scorer.inference.selfcheck allows fp16 (0.05 or 2% of the largest logit; why, there).
_CHECK_ROWS = 64


@dataclass(frozen=True)
class Kernels:
    """How a fused attention op reaches its CUDA kernels: the graph's form (the fused graph as built, the mask as
    lengths, or rewritten by `rewrite(source, target)`) and the provider's options."""

    rewrite: Callable[[Path, Path], None] | None
    cuda_options: dict[str, str]


# ORT's own choice; cuDNN's flash attention asked for (the `sdpa_kernel` bit mask of ORT's AttentionBackend: 8 is
# CUDNN_FLASH_ATTENTION, 16 MATH, the unfused kernels, named as the fallback for shapes cuDNN does not take, since a
# mask without that bit turns them off too); the mask form that memory-efficient attention takes; padding removed
# (ORT's packing mode: its packed attention ops run memory-efficient attention on 8.0 and newer).
KERNELS = {"default": Kernels(None, {}), "cudnn": Kernels(None, {"sdpa_kernel": "24"}),
           "efficient": Kernels(with_row_starts, {}), "packed": Kernels(packed, {})}


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
    # The provider options of the kept kernel setting, which `scorer run` passes to CUDA with this graph, and the
    # setting's name (KERNELS); None: not measured.
    cuda_options: dict[str, str] | None = None
    kernels: str | None = None
    not_timed: str | None = None  # why the graph was built without timing: asked for, or no working CUDA
    # The GPU the candidates were timed on (scorer.machine.gpu_of: "NVIDIA H100 80GB HBM3"); None: not timed on CUDA,
    # or the driver listed none. Another GPU may find other kernels or run modes faster (`scorer run` warns).
    gpu: str | None = None

    def summary(self) -> str:
        """One line for the user: the graph kept, and how (or whether) it was chosen."""
        if self.measured_on is None:
            return f"fp16 graph: {self.attention} attention (not timed: {self.not_timed})"
        left_out = f"; left out: {', '.join(self.failed)}" if self.failed else ""
        return (f"fp16 graph: {self.attention} attention, {self.kernels} kernels, "
                f"{'IO-bound' if self.io_binding else 'plain'} runs: the fastest of {len(self.seconds or ())} ways "
                f"timed on {self.gpu or self.measured_on}{left_out}")


def build_fp16(source: Path, target: Path, num_heads: int, hidden_size: int, attention: str,
               encoded: Encoded) -> Fp16Report:
    """Write the fp16 variant to `target` with the attention asked for, or (auto) the faster one on CUDA."""
    why = "asked for with --fp16-attention"
    if attention == "auto" and not cuda_starts(source):
        attention, why = "fused", "no working CUDA here to time the candidates on"
    if attention != "auto":
        fused = optimize_fp16(source, target, num_heads, hidden_size, attention)
        log.info("fp16 variant: attention %s (%s); fused %s", attention, why,
                 ", ".join(f"{n}×{c}" for n, c in sorted(fused.items())) or "nothing")
        return Fp16Report(attention_of(fused), fused, not_timed=why)
    return choose_attention(source, target, num_heads, hidden_size, encoded, "cuda")


def choose_attention(source: Path, target: Path, num_heads: int, hidden_size: int, encoded: Encoded,
                     provider: str) -> Fp16Report:
    """Build the fp16 graph with each attention and kernel setting, check each against the fp32 graph, time each on
    `provider` as `scorer run` runs them, plain and with IO binding, and keep the fastest graph as `target` (with
    its run mode and CUDA options in the report). A candidate that ONNX Runtime cannot start or run there, or that
    scores the check rows differently, is left out, and the report says why."""
    budget = DEFAULT_MAX_TOKENS["cuda"]
    rows = np.resize(np.arange(len(encoded)), math.ceil(_FULL_BATCHES * budget / encoded.lengths.mean()))
    batches = [(rows[cut], None) for cut in budget_batches(encoded.lengths[rows], budget, RunConfig.max_batch_rows,
                                                            DEFAULT_BATCH_OVERHEAD["cuda"])]
    check = [(np.arange(min(len(encoded), _CHECK_ROWS)), None)]  # mixed lengths: padding in every short row
    expected = logits_of(create_session(source, "cpu"), encoded, check)[check[0][0]]
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        candidates = _Candidates(Path(tmp), provider, encoded, check, expected, batches)
        built = optimize_each(source, Path(tmp), num_heads, hidden_size, list(FP16_ATTENTIONS))
        for attention in FP16_ATTENTIONS:
            candidates.add(attention, built[attention])
        candidates.start()
        runners, failed = candidates.runners, candidates.failed
        if not runners:
            raise ModelError(f"no fp16 graph runs on {provider} ({'; '.join(f'{c}: {e}' for c, e in failed.items())})"
                             "; export with --variants fp32,int8")
        seconds = dict(zip(runners, best_seconds(list(runners.values()), encoded, batches, _PASSES), strict=True))
        best = min(seconds, key=seconds.__getitem__)
        name = best.removesuffix(" io_binding")
        (attention, *_), (graph, kernels) = name.split(), candidates.graphs[name]
        per_run = run_cost(runners[best], encoded, rows, budget, RunConfig.max_batch_rows, _PASSES)
        runners.clear()  # the sessions let go of the graph files before the temporary directory goes
        graph.replace(target)
    log.info("fp16 variant: attention %s, %s kernels, %s runs, a run costs %s tokens' worth (%s: %s per pass)",
             attention, kernels, "IO-bound" if best.endswith("io_binding") else "plain",
             "?" if per_run is None else f"{per_run:,.0f}", provider,
             ", ".join(f"{key} {value:.3f}s" for key, value in seconds.items()))
    return Fp16Report(attention, candidates.fused[attention], seconds, provider, best.endswith("io_binding"),
                      failed or None, None if per_run is None else round(per_run), KERNELS[kernels].cuda_options,
                      kernels, gpu=gpu_identity() if provider == "cuda" else None)


def kernel_settings(attention: str, provider: str) -> list[str]:
    """The KERNELS to try a graph with: ORT's own choice; for the fused ops also the row-starts mask, and on CUDA
    cuDNN's attention and the packed graph, which has no CPU kernels (on a CPU the row-starts graph only proves that
    it computes the same logits)."""
    if attention == "unfused":
        return ["default"]
    return ["default", "cudnn", "efficient", "packed"] if provider == "cuda" else ["default", "efficient"]


def needs_trial(kernels: str, provider: str) -> bool:
    """Whether a candidate is tried in a child process before export loads it: kernels that no earlier GPU run has
    run, off the CPU (ORT's CPU kernels are the ones every test runs)."""
    return kernels != "default" and provider != "cpu"


class _Candidates:
    """The graphs and runners that choose_attention times, added one attention at a time; what failed, and why."""

    def __init__(self, directory: Path, provider: str, encoded: Encoded, check, expected: np.ndarray, batches
                 ) -> None:
        self.directory, self.provider = directory, provider
        self.encoded, self.check, self.expected, self.batches = encoded, check, expected, batches
        # candidate name ("mha efficient") -> its graph and kernel setting, for each graph that was built
        self.graphs: dict[str, tuple[Path, str]] = {}
        self.fused: dict[str, dict[str, int]] = {}
        self.runners: dict = {}
        self.failed: dict[str, str] = {}

    def add(self, attention: str, fused: dict[str, int] | Exception) -> None:
        """Add `attention`'s graph (what the optimizer `fused` in it, or why it was not built) as a candidate for
        each kernel setting, rewritten where the setting needs it."""
        graph = graph_file(self.directory, attention)
        try:
            if isinstance(fused, Exception):
                raise fused
            self.fused[attention] = fused
            if attention_of(fused) != attention:  # not the graph it is named for
                raise ModelError(f"the optimizer fused {attention_of(fused)} attention instead")
        except Exception as exc:  # any failure of one candidate drops it (ORT raises many exception types)
            self.failed[attention] = first_line(exc)
            log.warning("fp16 variant: no %s attention graph (%s); left out", attention, self.failed[attention])
            return
        for kernels in kernel_settings(attention, self.provider):
            name = attention + ("" if kernels == "default" else f" {kernels}")
            try:
                path = graph
                if KERNELS[kernels].rewrite:
                    path = self.directory / f"{attention}-{kernels}.onnx"
                    KERNELS[kernels].rewrite(graph, path)
                self.graphs[name] = path, kernels
            except Exception as exc:
                self._leave_out(name, exc)

    def start(self) -> None:
        """A plain and an IO-bound runner of every candidate added, each checked; first, off the CPU, a trial in a
        child process of each candidate whose kernels no earlier GPU run has run."""
        trials = {name: graph for name, graph in self.graphs.items() if needs_trial(graph[1], self.provider)}
        failed = trials_in_children(trials, self.provider, *self._trial_inputs) if trials else {}
        for name in self.graphs:
            try:
                if name in failed:
                    raise ModelError(failed[name])
                self.runners.update(self._checked_runners(name))
            except Exception as exc:
                self._leave_out(name, exc)

    def _leave_out(self, name: str, exc: Exception) -> None:
        self.failed[name] = first_line(exc)
        log.warning("fp16 variant: %s left out on %s (%s)", name, self.provider, self.failed[name])

    @cached_property
    def _trial_inputs(self) -> tuple:
        """The check rows padded, their expected logits, and the timing batches padded: what each trial runs."""
        return self.encoded.pad(*self.check[0]), self.expected, [self.encoded.pad(*batch) for batch in self.batches]

    def _checked_runners(self, name: str) -> dict:
        """A plain and an IO-bound runner of candidate `name`, once each has scored the check rows as close to the
        fp32 graph's logits as fp16 allows (check_logits); raises where either does not."""
        graph, kernels = self.graphs[name]
        session = create_session(graph, self.provider, KERNELS[kernels].cuda_options)
        runners = {name + (" io_binding" if bound else ""): batch_runner(session, self.provider, bound)
                   for bound in (False, True)}
        for run in runners.values():
            check_logits(logits_of(run, self.encoded, self.check)[self.check[0][0]], self.expected)
        return runners


def check_logits(logits: np.ndarray, expected: np.ndarray) -> None:
    """Raise unless `logits` are as close to the fp32 graph's `expected` as fp16 allows (NaN fails too)."""
    worst = float(np.abs(logits - expected).max())
    limit = allowed(expected, *TOLERANCE["fp16"])
    if not worst <= limit:
        raise ModelError(f"its logits differ from the fp32 graph's by {worst:.3g} on rows with padding "
                         f"(at most {limit:.3g} allowed)")

