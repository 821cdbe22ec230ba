"""int8 schemes that bench/int8_tradeoff.py compares with the quantiser's per-token int8 (export/per_token.py):
ONNX Runtime's dynamic int8 (with and without SmoothQuant), static int8, 8-bit MatMulNBits; and the batchings a
row's scores are compared under (dynamic int8 scales each batch as a whole, so its results depend on the cut)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from export.timing import Batches
from scorer.inference.session import create_session
from scorer.text.batches import budget_batches
from scorer.text.tokens import Encoded

SMOOTHING_ALPHA = 0.7


def batchings(encoded: Encoded, max_length: int) -> list[Batches]:
    """Three ways to cut the rows into batches: token budget (as scored), single rows, odd batches at max length."""
    budget = [(rows, None) for rows in budget_batches(encoded.lengths, max_tokens=4096, max_rows=256)]
    single = [(np.array([row]), None) for row in range(len(encoded))]
    padded = [(np.arange(s, min(s + 7, len(encoded))), max_length) for s in range(0, len(encoded), 7)]
    return [budget, single, padded]


def dynamic_int8(source: Path, target: Path, exclude: list[str]) -> None:
    """ONNX Runtime's per-channel dynamic int8 of the weight MatMuls of `source`, except the nodes in `exclude`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # (quantize_dynamic logs a pre-processing hint on the root logger; it does not apply)
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=exclude,
                         extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)


def _matmul_weights(model: onnx.ModelProto) -> dict[str, tuple[str, np.ndarray]]:
    weights = {init.name: init for init in model.graph.initializer}
    return {node.name: (node.input[0], numpy_helper.to_array(weights[node.input[1]]))
            for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights}


def _activation_ranges(model: onnx.ModelProto, inputs: list[str], encoded: Encoded) -> dict[str, np.ndarray]:
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
    """SmoothQuant (Xiao et al., 2022) with an explicit scale, x·W = (x / s)·(s W) per input channel: a Mul
    before each weight MatMul (in a post-LN BERT the LayerNorm's output also feeds the residual path)."""
    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    matmuls = _matmul_weights(smoothed)
    ranges = _activation_ranges(smoothed, sorted({a for a, _ in matmuls.values()}), encoded)
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


def static_int8(source: Path, target: Path, calibration: Encoded, max_length: int) -> None:
    """Static int8 of every weight MatMul (QDQ, per-channel weights, activation ranges by min/max over the
    calibration rows, fed as batches of 25 padded to the max length: the calibrator needs one shape)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Rows(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(calibration) - 24, 25))

        def get_next(self) -> dict | None:
            start = next(self.batches, None)
            if start is None:
                return None
            input_ids, attention_mask = calibration.pad(np.arange(start, start + 25), max_length)
            return {"input_ids": input_ids, "attention_mask": attention_mask}

    quantize_static(str(source), str(target), Rows(), quant_format=QuantFormat.QDQ, per_channel=True,
                    op_types_to_quantize=["MatMul"], activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def blockwise_int8(source: Path, target: Path, block: int) -> bool:
    """8-bit MatMulNBits of every weight MatMul, int8 compute (accuracy level 4); False without `onnx-ir`."""
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )
    except ImportError:
        return False
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=True, accuracy_level=4, bits=8))
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    return True
