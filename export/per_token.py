"""Per-token int8: each weight MatMul's activations quantised per row (per token) at run time, its weights per
output column.

x·W ≈ sx·sw·(qx·qW), with qx = round(x / sx) and sx = the row's max |x| / 127. A row's result does not depend on
its batch neighbours (dynamic int8 scales a whole batch by its largest value), and an outlier token scales only
itself. Built from standard operators, so any ONNX Runtime runs it: QuantizeLinear with a per-row scale (uint8 with
zero point 128, for ONNX Runtime's fast u8·s8 kernels; s8 activations ran 4 times slower), MatMulIntegerToFloat
with the weight scales, then a Mul by the row scales.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

_SHARED = {"pt/eps": np.array(1e-8, np.float32), "pt/inv127": np.array(1 / 127, np.float32),
           "pt/one": np.array(1.0, np.float32), "pt/zp": np.array(128, np.uint8),
           "pt/zp1": np.array([128], np.uint8), "pt/last": np.array([-1], np.int64), "pt/zero": np.array([0], np.int64),
           "pt/axis1": np.array([1], np.int64)}


def per_token_int8(source: Path | onnx.ModelProto, target: Path, exclude: list[str]) -> None:
    """Per-token int8 of every weight MatMul of `source` but the nodes in `exclude`, written to `target`."""
    model = onnx.load(str(source)) if isinstance(source, Path) else _copy(source)
    weights = {init.name: init for init in model.graph.initializer}
    extra = [numpy_helper.from_array(value, name) for name, value in _SHARED.items()]
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    nodes, replaced = [], set()
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights or node.name in exclude:
            nodes.append(node)
            continue
        quantised, initializers = _matmul(node, numpy_helper.to_array(weights[node.input[1]]).astype(np.float32),
                                          opset)
        nodes += quantised
        extra += initializers
        replaced.add(node.input[1])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    # the fp32 weights now in int8 go, unless another node still reads them (a weight shared by two MatMuls)
    unused = replaced - {name for node in nodes for name in node.input}
    kept = [init for init in model.graph.initializer if init.name not in unused]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + extra)
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(target))


def _matmul(node: onnx.NodeProto, weight: np.ndarray,
            opset: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes that replace one MatMul (x of any rank by a 2-D weight), and their initialisers, for a graph of
    `opset` (from 18 on, ReduceMax takes its axes as an input, not an attribute)."""
    scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127
    p = f"{node.name}/pt_"
    initializers = [numpy_helper.from_array(np.clip(np.round(weight / scale), -127, 127).astype(np.int8), p + "w"),
                    numpy_helper.from_array(scale.astype(np.float32), p + "sw"),
                    numpy_helper.from_array(np.array([-1, weight.shape[0]], np.int64), p + "rows_shape"),
                    numpy_helper.from_array(np.array([weight.shape[1]], np.int64), p + "n")]
    make, x = onnx.helper.make_node, node.input[0]
    nodes = [
        # rows = x reshaped to (tokens, in); its output is reshaped back to x's leading dims by out
        make("Shape", [x], [p + "shape"]), make("Slice", [p + "shape", "pt/zero", "pt/last"], [p + "lead"]),
        make("Concat", [p + "lead", p + "n"], [p + "out_shape"], axis=0),
        make("Reshape", [x, p + "rows_shape"], [p + "x"]), make("Abs", [p + "x"], [p + "abs"]),
        make("ReduceMax", [p + "abs", "pt/axis1"], [p + "max"], keepdims=0) if opset >= 18 else
        make("ReduceMax", [p + "abs"], [p + "max"], keepdims=0, axes=[1]),
        make("Max", [p + "max", "pt/eps"], [p + "max1"]), make("Mul", [p + "max1", "pt/inv127"], [p + "sx"]),
        make("Shape", [p + "sx"], [p + "count"]), make("Expand", ["pt/zp1", p + "count"], [p + "zps"]),
        make("QuantizeLinear", [p + "x", p + "sx", p + "zps"], [p + "qx"], axis=0),
        make("MatMulIntegerToFloat", [p + "qx", p + "w", "pt/one", p + "sw", "pt/zp"], [p + "y"],
             domain="com.microsoft"),
        make("Unsqueeze", [p + "sx", "pt/last"], [p + "sx1"]), make("Mul", [p + "y", p + "sx1"], [p + "ys"]),
        make("Reshape", [p + "ys", p + "out_shape"], [node.output[0]]),
    ]
    return nodes, initializers


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied
