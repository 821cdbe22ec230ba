"""Per-token int8 for CPUs, accuracy-aware: the MatMuls that would move labels or probabilities too far stay fp32.

Each weight MatMul becomes per-token int8 (export.per_token): a row's activations are scaled by the row's own
largest value, so its scores do not depend on its batch neighbours, and one outlier token does not crush the rest.
ONNX Runtime's dynamic int8, which scales a whole batch by its largest value, ran up to a quarter faster with every
MatMul quantised but flipped 7-15 of 527 CoLA dev labels where per-token int8 flipped 0-1 (bench/RESULTS.md section
4), and there a row's label can depend on the rows it is batched with.

What int8 will do to the rows the parity gate checks is predicted before the gate measures it. int8 moves the gap
between a row's two highest logits by a shift that grows as the model is less sure of the row (on a CoLA MiniLM,
twice as far on the less sure half of the rows), and a row flips where the shift closes its gap. So on calibration
sentences (training data, never the parity rows) the quantiser measures each row's fp32 gap and how far int8 moved
it; a parity row with gap g is predicted to flip as often as the 50 calibration rows whose gaps are nearest
g were moved down by more than g (near-ties, gap under the gate's --tie-margin, left out, as the gate leaves them
out), and its probability to move as far as the largest of their shifts moves it. Only the parity rows' fp32
logits are used, never int8's. Where the predicted agreement or probability move misses its target, the groups of
MatMuls (query, key, value, attention output, intermediate, output, across layers) are kept in fp32, the one whose
int8 alone moved the calibration logits most first, until both hold. A model is surer of its training sentences
than of new ones, so agreement on the calibration labels themselves says too little (a CoLA MiniLM agreed on every
one and flipped 0.7% of dev), and a bound on the shift in logits suits one model's scale and not another's.

The gate then measures the graph on the parity rows, holding int8 to the labels and to `scorer run --check`'s
tolerance on every probability. Predicted from training rows, the moves ran up to 2.3 times as far on unseen ones
(bench/RESULTS.md section 4), so a graph the gate refuses gives way to the next (`Quantiser.step_down`: one more
group in fp32), down to the fp32 graph. Keeping groups in fp32 can leave an int8 graph no faster than fp32, so
each graph's speed is measured against fp32 on the calibration sentences and recorded; below MIN_SPEEDUP the
variant is the fp32 graph itself (nothing is gained by int8's error), and `scorer run` prefers int8 on a CPU only
when it was measurably faster.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from export.int8_prediction import predicted_agreement, predicted_score_shift, top_two_gap
from export.large import data_file, one_file_graph
from export.per_token import per_token_int8
from export.timing import Batches, best_seconds, logits_of
from scorer.inference.defaults import MIN_INT8_SPEEDUP as MIN_SPEEDUP
from scorer.inference.session import create_session
from scorer.machine import cpu_identity, cpu_said
from scorer.text.batches import budget_batches
from scorer.text.tokens import Encoded

log = logging.getLogger("scorer")
SCHEME = "per-token"
SPEED_PASSES = 3
GAP_QUANTILE = 0.99


@dataclass(frozen=True)
class QuantizeReport:
    """What the int8 quantiser kept in fp32 and how close it came to fp32."""

    quantized: int
    kept_fp32: list[str] = field(default_factory=list)
    calibration_rows: int = 0
    calibration_agreement: float = 1.0  # labels kept on the calibration rows, near-ties left out
    calibration_max_abs_diff: float = 0.0
    calibration_gap_p99: float = 0.0  # 99th percentile of how far int8 moved the top-two logit gap
    # On the parity rows, predicted before the gate measures them: label agreement (near-ties left out), and the
    # largest move of a row's probability
    predicted_agreement: float = 1.0
    predicted_max_score_shift: float = 0.0
    speedup: float = 1.0  # fp32 time / int8 time on the calibration sentences, batched as `scorer run` batches
    scheme: str = SCHEME
    # The last int8 graph timed against fp32 (even one too slow to keep, where the int8 file is then the fp32 graph):
    # {"speedup": its speed over fp32's, "cpu": the CPU it was timed on (scorer.machine.cpu_of)}; None where no int8
    # graph was timed (none met the accuracy targets). Another CPU's int8 kernels may run it otherwise.
    timed: dict | None = None
    # Where the graph the quantiser chose failed the parity gate on the parity rows: what it did there (quantised
    # MatMuls, label agreement, max |Δscore|), and the graphs tried after it, each keeping one more group in fp32,
    # that failed too; where all failed, the int8 file is the fp32 graph.
    failed_parity: dict | None = None
    stepped_down: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Closeness:
    """How close a trial int8 graph came to fp32: on the calibration rows, and as predicted on the parity rows."""

    agreement: float
    max_abs_diff: float
    gap_p99: float
    predicted: float
    predicted_score_shift: float


EXACT = Closeness(1.0, 0.0, 0.0, 1.0, 0.0)  # the fp32 graph itself


@dataclass(frozen=True)
class Targets:
    """What an int8 graph must reach on the parity rows, as predicted: label agreement (near-ties, fp32 gap under
    `tie_margin`, left out) and the largest move of a row's probability; optionally also a bound on how far it may
    move the calibration rows' gaps (99% of them)."""

    agreement: float
    tie_margin: float
    max_score_shift: float
    gap_tolerance: float | None = None

    def met(self, close: Closeness) -> bool:
        return (close.predicted >= self.agreement and close.predicted_score_shift <= self.max_score_shift
                and (self.gap_tolerance is None or close.gap_p99 <= self.gap_tolerance))


def weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes whose second input is a weight (those int8 quantises); others stay fp32."""
    weights = {init.name for init in model.graph.initializer}
    return [node.name for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights]


def groups_of(names: list[str]) -> dict[str, list[str]]:
    """MatMuls grouped by their role, the layer number taken out of the name (query, value, output dense...)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(re.sub(r"\d+", "#", name), []).append(name)
    return groups


class Quantiser:
    """Per-token int8 graphs of one fp32 graph, from the fewest groups of MatMuls kept in fp32 that meet the
    targets, then (`step_down`, where the parity gate refuses a graph) one more group at a time."""

    def __init__(self, source: Path, calibration: Encoded, held_out: Encoded, targets: Targets,
                 min_speedup: float = MIN_SPEEDUP) -> None:
        self.source, self.calibration, self.targets, self.min_speedup = source, calibration, targets, min_speedup
        self.batches = _budget(calibration)
        fp32 = create_session(source, "cpu")
        self.reference = logits_of(fp32, calibration, self.batches)
        self.held_out_gaps = top_two_gap(logits_of(fp32, held_out, _budget(held_out)))
        # (over 2 GB: its word table in fp16, to fit one file; the trials measure against the fp32 graph itself)
        self.original = one_file_graph(source)
        self.every = weight_matmuls(self.original)
        self.groups = groups_of(self.every)  # (a Gemm, the classification head, is no MatMul: it stays fp32)
        self._order: list[str] | None = None

    def first(self, target: Path) -> QuantizeReport:
        """Write the graph that keeps the fewest groups in fp32 and meets the targets (else fp32) to `target`."""
        close = self._closeness([], target)
        kept: list[str] = []
        if not self.targets.met(close):
            kept, close = self.every, EXACT  # (every group kept is the fp32 graph: no trial needed)
            for level in range(1, len(self.groups)):
                trial = self._kept(level)
                found = self._closeness(trial, target)
                if self.targets.met(found):
                    kept, close = trial, found
                    break
        return self._written(target, kept, close)

    def step_down(self, target: Path, report: QuantizeReport, gate: dict) -> QuantizeReport:
        """After the parity gate refused the graph of `report` (what it found: `gate`), the next one, keeping one
        more group in fp32, or the fp32 graph; its report says what the gate refused."""
        refused = (report.failed_parity or gate, report.stepped_down + ([gate] if report.failed_parity else []))
        level = sum(all(name in report.kept_fp32 for name in names) for names in self.groups.values()) + 1
        kept = self._kept(level) if level < len(self.groups) else self.every
        close = self._closeness(kept, target) if len(kept) < len(self.every) else EXACT
        return replace(self._written(target, kept, close), failed_parity=refused[0], stepped_down=refused[1])

    def _kept(self, level: int) -> list[str]:
        """The MatMuls of the `level` most sensitive groups."""
        if self._order is None:
            trial = _trial(self.source)
            try:
                self._order = sensitivity_order(self.original, trial, self.groups, self.calibration, self.reference,
                                                self.batches)
            finally:
                trial.unlink(missing_ok=True)
        return [name for group in self._order[:level] for name in self.groups[group]]

    def _closeness(self, kept: list[str], target: Path) -> Closeness:
        trial = _trial(target)
        per_token_int8(self.original, trial, kept)
        try:
            logits = logits_of(create_session(trial, "cpu"), self.calibration, self.batches)
        finally:
            trial.unlink()
        return closeness(self.reference, logits, self.held_out_gaps, self.targets.tie_margin)

    def _written(self, target: Path, kept: list[str], close: Closeness) -> QuantizeReport:
        """Write the graph that keeps `kept` in fp32 to `target` where it is fast enough, else the fp32 graph."""
        speedup, timed = 1.0, None
        if len(kept) < len(self.every):
            per_token_int8(self.original, target, kept)
            speedup = measure_speedup(self.source, target, self.calibration, self.batches)
            timed = {"speedup": round(speedup, 3), "cpu": cpu_identity()}
            if speedup < self.min_speedup:  # int8 exists to be faster; a graph that is not only costs accuracy
                log.info("int8 variant: with %d of %d weight MatMuls quantised it ran at only %.2fx the speed of "
                         "fp32 on %s (needs %.2fx): keeping fp32", len(self.every) - len(kept), len(self.every),
                         speedup, cpu_said(timed["cpu"]), self.min_speedup)
                kept, close, speedup = self.every, EXACT, 1.0
        if len(kept) == len(self.every):  # nothing quantised: the plain fp32 graph
            shutil.copyfile(self.source, target)
            data_file(target).unlink(missing_ok=True)  # (over 2 GB: an int8 graph's own weights; fp32's are read)
            log.info("int8 variant: the fp32 graph (no int8 graph met its targets and ran faster)")
        else:
            log.info("int8 variant: %d of %d weight MatMuls quantised (%s); on the parity rows labels predicted to "
                     "agree %.2f%%, probabilities to move ≤ %.3f; %.2fx the speed of fp32 on %s",
                     len(self.every) - len(kept), len(self.every), SCHEME, 100 * close.predicted,
                     close.predicted_score_shift, speedup, cpu_said(timed["cpu"]))
        return QuantizeReport(len(self.every) - len(kept), kept, len(self.calibration), close.agreement,
                              close.max_abs_diff, close.gap_p99, close.predicted, close.predicted_score_shift, speedup,
                              timed=timed)


def quantize_int8(source: Path, target: Path, calibration: Encoded, held_out: Encoded, targets: Targets,
                  min_speedup: float = MIN_SPEEDUP) -> QuantizeReport:
    """Quantise `source` to `target`, keeping in fp32 the fewest MatMul groups that meet `targets` as predicted
    for the `held_out` rows (the parity gate's). If the result is not `min_speedup` times as fast as fp32, `target`
    is the fp32 graph."""
    return Quantiser(source, calibration, held_out, targets, min_speedup).first(target)


def closeness(reference: np.ndarray, logits: np.ndarray, held_out_gaps: np.ndarray, tie_margin: float
              ) -> Closeness:
    """How close int8's calibration `logits` came to fp32's `reference`, and what that predicts for rows whose fp32
    gaps are `held_out_gaps`."""
    gaps = top_two_gap(reference)
    shifts = top_two_gap(reference, logits) - gaps
    decisive = gaps >= tie_margin
    agreement = float((logits.argmax(1) == reference.argmax(1))[decisive].mean()) if decisive.any() else 1.0
    return Closeness(agreement, float(np.abs(logits - reference).max()),
                     float(np.quantile(np.abs(shifts), GAP_QUANTILE)),
                     predicted_agreement(gaps, shifts, held_out_gaps, tie_margin),
                     predicted_score_shift(gaps, shifts, held_out_gaps))


def _budget(encoded: Encoded) -> Batches:
    return [(rows, None) for rows in budget_batches(encoded.lengths, max_tokens=4096, max_rows=256)]


def _trial(target: Path) -> Path:
    return target.with_name(f".{target.name}.trial")


def sensitivity_order(original: onnx.ModelProto, trial: Path, groups: dict[str, list[str]], calibration: Encoded,
                      reference: np.ndarray, batches: Batches,
                      build: Callable[[onnx.ModelProto, Path, list[str]], None] = per_token_int8) -> list[str]:
    """The groups by how far int8 of each alone (`build` writes a graph with the named MatMuls kept in fp32) moves
    the logits off `reference` over `batches`, the worst first: the order in which the quantiser keeps them."""
    every = [name for names in groups.values() for name in names]
    moved = {}
    for group, names in groups.items():
        build(original, trial, [n for n in every if n not in names])
        moved[group] = float(np.abs(logits_of(create_session(trial, "cpu"), calibration, batches) - reference).max())
    return sorted(groups, key=moved.__getitem__, reverse=True)


def measure_speedup(reference: Path, candidate: Path, encoded: Encoded, batches: Batches) -> float:
    """fp32 seconds / int8 seconds over `batches`, best of SPEED_PASSES interleaved passes each."""
    fp32, int8 = best_seconds([create_session(reference, "cpu"), create_session(candidate, "cpu")], encoded, batches,
                              SPEED_PASSES)
    return fp32 / int8
