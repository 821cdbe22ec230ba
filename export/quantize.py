"""Dynamic int8 for CPUs, accuracy-aware: smoothed, and the MatMuls that would flip labels stay in fp32.

Plain dynamic int8 of every weight MatMul flipped 2-5% of CoLA dev labels for a fine-tuned MiniLM (bench/RESULTS.md),
far from the 99.5% agreement the parity gate asks. So the quantiser, on calibration sentences (training data,
never the parity data):
1. smooths activation outliers into the weights (SmoothQuant, explicit per-channel scales);
2. if label agreement with fp32 is still below the target, or int8 moves the gap between a row's two highest
   logits by more than a tolerance on more than 1% of the rows, measures how far quantising each group of MatMuls
   (query, key, value, attention output, intermediate, output, across layers) alone moves the logits, and keeps
   the worst groups in fp32, one at a time, until both hold.
Labels alone are not enough: a model is surer of its training sentences than of new ones, so a graph that agrees
on every calibration label can still flip 0.7% of dev labels (a CoLA MiniLM, bench/RESULTS.md); the gap bounds
how far int8 may move any row, whatever its margin.
Dynamic int8 scales activations per batch, so a row's result depends on its batch: agreement is checked under
three batchings (as `scorer run` cuts them, single rows, odd batches padded to the max length); the worst counts.
Keeping groups in fp32 can leave an int8 graph no faster than fp32, so its speed is measured against fp32 on the
calibration sentences and recorded; below MIN_SPEEDUP the variant is the fp32 graph itself (nothing is gained by
int8's error), and `scorer run` prefers int8 on a CPU only when it was measurably faster.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from export.large import data_file, one_file_graph
from export.timing import Batches, best_seconds, logits_of
from scorer.batches import budget_batches
from scorer.session import create_session
from scorer.tokens import Encoded

log = logging.getLogger("scorer")
SMOOTHING_ALPHA = 0.7
SPEED_PASSES = 3
GAP_QUANTILE = 0.99
MIN_SPEEDUP = 1.05


@dataclass(frozen=True)
class QuantizeReport:
    """What the int8 quantiser kept in fp32 and how close it came to fp32 on the calibration sentences."""

    quantized: int
    kept_fp32: list[str] = field(default_factory=list)
    calibration_rows: int = 0
    calibration_agreement: float = 1.0
    calibration_max_abs_diff: float = 0.0
    calibration_gap_p99: float = 0.0  # 99th percentile of how far int8 moved the top-two logit gap, worst batching
    speedup: float = 1.0  # fp32 time / int8 time on the calibration sentences, batched as `scorer run` batches
    # Where the int8 graph met its calibration targets but failed the parity gate on the parity rows, and the int8
    # file became the fp32 graph: what that graph did there (quantised MatMuls, label agreement, max |Δlogit|).
    failed_parity: dict | None = None


@dataclass(frozen=True)
class Closeness:
    """How close a trial int8 graph came to fp32 on the calibration rows, worst over the batchings."""

    agreement: float
    max_abs_diff: float
    gap_p99: float


EXACT = Closeness(1.0, 0.0, 0.0)  # the fp32 graph itself


def closeness(expected: np.ndarray, logits: np.ndarray) -> Closeness:
    """How close `logits` came to the fp32 `expected` logits on one batching."""
    return Closeness(float((logits.argmax(1) == expected.argmax(1)).mean()), float(np.abs(logits - expected).max()),
                     float(np.quantile(gap_shift(expected, logits), GAP_QUANTILE)))


def worst(closenesses) -> Closeness:
    """The worst of each figure over several batchings."""
    found = list(closenesses)
    return Closeness(min(c.agreement for c in found), max(c.max_abs_diff for c in found),
                     max(c.gap_p99 for c in found))


def gap_shift(reference: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Per row: how far `logits` moved the gap between the reference's highest and second-highest logit; a label
    flips only where this exceeds the reference's gap."""
    order = np.argsort(reference, axis=1)
    rows = np.arange(len(reference))
    top, second = order[:, -1], order[:, -2]
    return np.abs((logits[rows, top] - logits[rows, second]) - (reference[rows, top] - reference[rows, second]))


def weight_matmuls(model: onnx.ModelProto) -> dict[str, tuple[str, np.ndarray]]:
    """MatMul nodes whose second input is a weight: name → (activation input, weight). Others stay fp32."""
    weights = {init.name: init for init in model.graph.initializer}
    return {node.name: (node.input[0], numpy_helper.to_array(weights[node.input[1]]))
            for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights}


def quantize(source: Path, target: Path, exclude: list[str]) -> None:
    """Per-channel dynamic int8 of the weight MatMuls of `source`, except the nodes in `exclude`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic logs a pre-processing hint on the root logger at WARNING; it does not apply here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=exclude,
                         extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)


def _batchings(encoded: Encoded, max_length: int) -> list[Batches]:
    """Three ways to cut the rows into batches: token budget (as scored), single rows, odd batches at max length."""
    budget = [(rows, None) for rows in budget_batches(encoded.lengths, max_tokens=4096, max_rows=256)]
    single = [(np.array([row]), None) for row in range(len(encoded))]
    padded = [(np.arange(s, min(s + 7, len(encoded))), max_length) for s in range(0, len(encoded), 7)]
    return [budget, single, padded]


def activation_ranges(model: onnx.ModelProto, inputs: list[str], encoded: Encoded) -> dict[str, np.ndarray]:
    """Per-channel max |x| of each named tensor over the calibration rows, from one fp32 pass."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in inputs:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = create_session(probe.SerializeToString(), "cpu")
    ranges: dict[str, np.ndarray] = {}
    for rows in budget_batches(encoded.lengths, max_tokens=4096, max_rows=256):
        input_ids, attention_mask = encoded.pad(rows)
        values = session.run(inputs, {"input_ids": input_ids, "attention_mask": attention_mask})
        for name, value in zip(inputs, values, strict=True):
            peak = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            ranges[name] = np.maximum(ranges[name], peak) if name in ranges else peak
    return ranges


def smooth(model: onnx.ModelProto, encoded: Encoded, alpha: float = SMOOTHING_ALPHA) -> onnx.ModelProto:
    """SmoothQuant (Xiao et al., 2022) with an explicit scale: x·W = (x / s)·(s W) per input channel.

    BERT's activations have a few outlier channels that set the per-tensor int8 scale and crush the rest;
    dividing them down (and scaling the weight rows up) balances the two. The scale is a Mul before each
    MatMul, not folded into a LayerNorm, because in a post-LN BERT that output also feeds the residual path.
    """
    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    matmuls = weight_matmuls(smoothed)
    ranges = activation_ranges(smoothed, sorted({a for a, _ in matmuls.values()}), encoded)
    weights = {init.name: init for init in smoothed.graph.initializer}
    nodes = []
    for node in smoothed.graph.node:
        if node.name in matmuls:
            activation, weight = matmuls[node.name]
            scale = (np.maximum(ranges[activation], 1e-5) ** alpha
                     / np.maximum(np.abs(weight).max(axis=1), 1e-5) ** (1 - alpha)).astype(np.float32)
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(weight * scale[:, None], node.input[1]))
            inverse, scaled = f"{node.name}/smooth_scale", f"{node.name}/smoothed_input"
            smoothed.graph.initializer.append(numpy_helper.from_array(1.0 / scale, inverse))
            nodes.append(onnx.helper.make_node("Mul", [activation, inverse], [scaled], name=f"{node.name}/smooth"))
            node.input[0] = scaled
        nodes.append(node)
    del smoothed.graph.node[:]
    smoothed.graph.node.extend(nodes)
    return smoothed


def groups_of(names: list[str]) -> dict[str, list[str]]:
    """MatMuls grouped by their role, the layer number taken out of the name (query, value, output dense...)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(re.sub(r"\d+", "#", name), []).append(name)
    return groups


def quantize_int8(source: Path, target: Path, calibration: Encoded, min_agreement: float, max_length: int,
                  gap_tolerance: float, min_speedup: float = MIN_SPEEDUP) -> QuantizeReport:
    """Quantise `source` to `target`, smoothed, keeping in fp32 the fewest MatMul groups that reach the targets:
    label agreement ≥ `min_agreement` and the top-two gap moved by at most `gap_tolerance` on 99% of the rows. If
    the result is not `min_speedup` times as fast as fp32, `target` is the fp32 graph."""
    batchings = _batchings(calibration, max_length)
    reference = logits_of(create_session(source, "cpu"), calibration, batchings[0])
    with tempfile.TemporaryDirectory() as tmp:
        smoothed, trial = Path(tmp) / "smoothed.onnx", Path(tmp) / "trial.onnx"
        # (over 2 GB: its word table in fp16, to fit one file; the trials measure against the fp32 graph itself)
        original = one_file_graph(source)
        onnx.save(smooth(original, calibration), str(smoothed))
        groups = groups_of(list(weight_matmuls(original)))
        # The quantiser turns a Gemm (the classification head) into "<name>_MatMul" and would quantise it: it is
        # tiny, so nothing is gained, and its error lands on the logits directly. It stays fp32.
        head = [f"{node.name}_MatMul" for node in original.graph.node if node.op_type == "Gemm"]

        def closeness_keeping(kept: list[str]) -> Closeness:
            quantize(smoothed, trial, kept + head)
            session = create_session(trial, "cpu")
            return worst(closeness(reference, logits_of(session, calibration, cut)) for cut in batchings)

        def good(close: Closeness) -> bool:
            return close.agreement >= min_agreement and close.gap_p99 <= gap_tolerance

        every = [name for names in groups.values() for name in names]
        close = closeness_keeping([])
        kept: list[str] = []
        if not good(close):
            order = sensitivity_order(smoothed, trial, groups, head, calibration, reference, batchings[0])
            kept, close = _fewest_groups_to_keep([groups[g] for g in order], closeness_keeping, good)
        speedup = 1.0
        if len(kept) < len(every):
            quantize(smoothed, target, kept + head)
            speedup = measure_speedup(source, target, calibration, batchings[0])
            if speedup < min_speedup:  # int8 exists to be faster; a graph that is not only costs accuracy
                log.info("int8 variant: with %d of %d weight MatMuls quantised it ran at only %.2fx the speed of "
                         "fp32 (needs %.2fx): keeping fp32", len(every) - len(kept), len(every), speedup, min_speedup)
                kept, close, speedup = every, EXACT, 1.0
    if len(kept) == len(every):  # nothing quantised: the plain fp32 graph, without smoothing scales
        shutil.copyfile(source, target)
        log.info("int8 variant: the fp32 graph (no int8 graph met the calibration targets and ran faster)")
    else:
        log.info("int8 variant: %d of %d weight MatMuls quantised (smoothed); calibration agreement %.2f%% on %d "
                 "rows, top-two gap moved ≤ %.3f on 99%% of them; %.2fx the speed of fp32", len(every) - len(kept),
                 len(every), 100 * close.agreement, len(calibration), close.gap_p99, speedup)
    return QuantizeReport(len(every) - len(kept), kept, len(calibration), close.agreement, close.max_abs_diff,
                          close.gap_p99, speedup)


def unquantized(source: Path, target: Path, report: QuantizeReport, agreement: float, max_abs_diff: float
                ) -> QuantizeReport:
    """Make `target` the fp32 graph `source` again, after its int8 graph failed the parity gate (its calibration
    sentences were too few, or unlike the parity rows), and the report that says so."""
    shutil.copyfile(source, target)
    data_file(target).unlink(missing_ok=True)  # (over 2 GB: the int8 graph's own weights; the copy reads fp32's)
    return QuantizeReport(0, [], report.calibration_rows, failed_parity={
        "quantized": report.quantized, "agreement": agreement, "max_abs_diff": max_abs_diff})


def sensitivity_order(smoothed: Path, trial: Path, groups: dict[str, list[str]], keep: list[str],
                      calibration: Encoded, reference: np.ndarray, batches: Batches) -> list[str]:
    """The groups by how far quantising each alone (`keep` always stays fp32) moves the logits off `reference`
    over `batches`, the worst first: the order in which the quantiser keeps them in fp32."""
    every = [name for names in groups.values() for name in names]
    moved = {}
    for group, names in groups.items():
        quantize(smoothed, trial, [n for n in every if n not in names] + keep)
        moved[group] = float(np.abs(logits_of(create_session(trial, "cpu"), calibration, batches) - reference).max())
    return sorted(groups, key=moved.__getitem__, reverse=True)


def measure_speedup(reference: Path, candidate: Path, encoded: Encoded, batches: Batches) -> float:
    """fp32 seconds / int8 seconds over `batches`, best of SPEED_PASSES interleaved passes each."""
    fp32, int8 = best_seconds([create_session(reference, "cpu"), create_session(candidate, "cpu")], encoded, batches,
                              SPEED_PASSES)
    return fp32 / int8


def _fewest_groups_to_keep(ranked: list[list[str]], closeness_keeping, good) -> tuple[list[str], Closeness]:
    """Keep whole groups in fp32, most sensitive first, until the trial graph is good enough."""
    kept: list[str] = []
    for members in ranked:
        kept += members
        close = closeness_keeping(kept)
        if good(close):
            return kept, close
    return kept, EXACT  # everything kept in fp32 agrees by construction
