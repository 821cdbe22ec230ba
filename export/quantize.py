"""Dynamic int8 for CPUs, accuracy-aware: MatMuls that flip labels on calibration sentences stay in fp32.

Dynamic int8 of every weight MatMul flipped 2-5% of CoLA dev labels for a fine-tuned MiniLM (bench/RESULTS.md),
far from the 99.5% agreement the parity gate asks. So the quantiser measures on calibration sentences (training
data, never the parity data), ranks MatMuls by how much quantising each alone moves the logits, and keeps the
most sensitive ones in fp32: the fewest that bring label agreement with fp32 to the target.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from scorer.session import create_session
from scorer.tokens import Encoded, budget_batches

log = logging.getLogger("scorer")


@dataclass(frozen=True)
class QuantizeReport:
    """What the int8 quantiser kept in fp32 and how close it came to fp32 on the calibration sentences."""

    quantized: int
    kept_fp32: list[str] = field(default_factory=list)
    calibration_rows: int = 0
    calibration_agreement: float = 1.0
    calibration_max_abs_diff: float = 0.0


def weight_matmuls(model_path: Path) -> list[str]:
    """Names of the MatMul nodes whose second input is a weight (activation × activation MatMuls stay fp32)."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    return [node.name for node in graph.node if node.op_type == "MatMul" and node.input[1] in weights]


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


def logits_of(model_path: Path, encoded: Encoded, batch_rows: int = 256) -> np.ndarray:
    """Logits of every row, in batches of up to `batch_rows` length-sorted rows."""
    session = create_session(model_path, "cpu")
    out = None
    for rows in budget_batches(encoded.lengths, max_tokens=4096 if batch_rows > 1 else 1, max_rows=batch_rows):
        input_ids, attention_mask = encoded.pad(rows)
        logits = session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]
        if out is None:
            out = np.empty((len(encoded), logits.shape[1]), dtype=np.float32)
        out[rows] = logits
    return out


def quantize_int8(source: Path, target: Path, calibration: Encoded, min_agreement: float) -> QuantizeReport:
    """Quantise `source` to `target`, keeping in fp32 the fewest MatMuls needed to reach `min_agreement`."""
    nodes = weight_matmuls(source)
    reference = logits_of(source, calibration)
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "trial.onnx"

        def error_without(exclude: list[str]) -> tuple[float, float]:
            # Dynamic int8 scales activations per batch, so a row's result depends on its batch: judge the
            # extremes, length-sorted batches as `scorer run` makes them and single rows, and take the worse.
            quantize(source, trial, exclude)
            agreement, diff = 1.0, 0.0
            for batch_rows in (256, 1):
                logits = logits_of(trial, calibration, batch_rows)
                agreement = min(agreement, float((logits.argmax(1) == reference.argmax(1)).mean()))
                diff = max(diff, float(np.abs(logits - reference).max()))
            return agreement, diff

        def error_of_only(only: str) -> float:
            quantize(source, trial, [n for n in nodes if n != only])
            return float(np.square(logits_of(trial, calibration) - reference).mean())

        agreement, diff = error_without([])
        kept: list[str] = []
        if agreement < min_agreement:
            ranked = _rank_by_sensitivity(nodes, error_of_only)
            kept, agreement, diff = _fewest_to_keep(ranked, error_without, min_agreement)
    quantize(source, target, kept)
    log.info("int8 variant: %d of %d weight MatMuls quantised; calibration agreement %.2f%% on %d rows",
             len(nodes) - len(kept), len(nodes), 100 * agreement, len(calibration))
    return QuantizeReport(len(nodes) - len(kept), kept, len(calibration), agreement, diff)


def _rank_by_sensitivity(nodes: list[str], error_of_only: Callable[[str], float]) -> list[str]:
    """Nodes ordered from the one whose quantisation alone moves the logits most."""
    errors = {node: error_of_only(node) for node in nodes}
    return sorted(nodes, key=errors.__getitem__, reverse=True)


def _fewest_to_keep(ranked: list[str], error_without, min_agreement: float) -> tuple[list[str], float, float]:
    """Binary search for the shortest prefix of `ranked` to keep in fp32 that reaches `min_agreement`."""
    low, high = 1, len(ranked)
    best = (ranked, 1.0, 0.0)
    while low <= high:
        middle = (low + high) // 2
        agreement, diff = error_without(ranked[:middle])
        if agreement >= min_agreement:
            best = (ranked[:middle], agreement, diff)
            high = middle - 1
        else:
            low = middle + 1
    return best
