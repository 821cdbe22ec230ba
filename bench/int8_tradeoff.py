"""Speed and faithfulness of int8 variants on CPU: which MatMul groups can be int8, by which scheme, at what cost.

    python bench/int8_tradeoff.py --export bench/out/cola/onnx [--rows 3000] [--out bench/out/int8-tradeoff.json]
                                  [--only per-token,static,MatMulNBits]

For a trained export: model-only sentences/s (best of 5 passes) on CoLA-like sentences (pre-tokenised,
token-budget batches), and on the quantiser's 500 calibration sentences of CoLA train and on CoLA dev the worst
label agreement with fp32 and the 99th percentile of how far int8 moved the top-two logit gap (worst of the three
batchings the quantiser checks), for fp32, int8 of every weight MatMul (with and without smoothing), int8 keeping
the FFN in fp32, and int8 keeping 1, 2, ... of the groups in fp32 in the quantiser's order (most sensitive first).
Per-token int8 (activations scaled per row at run time, not per batch: a row's scores do not depend on its batch),
with every weight MatMul, the FFN output or the whole FFN in fp32. Two other int8 schemes of ONNX Runtime's, for
comparison: static int8 (QDQ, activation ranges fixed from the
calibration rows: a row's scores do not depend on its batch) and 8-bit MatMulNBits (int8 weights, activations
quantised to int8 in blocks of each row, accuracy level 4; needs the `onnx-ir` package, else left out).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx
from common import COLA, machine, write_json
from scoring import workload

from export.quantize import (
    _batchings,
    closeness,
    groups_of,
    quantize,
    sensitivity_order,
    smooth,
    weight_matmuls,
    worst,
)
from export.timing import logits_of, pass_seconds
from scorer.batches import budget_batches
from scorer.read import read_labelled
from scorer.session import create_session
from scorer.tokens import Encoded, TextEncoder

# Best of REPEATS passes (as timeit does): this shared machine's noise only ever slows a pass down.
REPEATS = 5


def speed(path: Path, encoded: Encoded) -> float:
    session = create_session(path, "cpu")
    batches = [(rows, None) for rows in budget_batches(encoded.lengths, 4096, 1024)]
    logits_of(session, encoded, batches[:3])  # warm-up
    return len(encoded) / min(pass_seconds(session, encoded, batches) for _ in range(REPEATS))


def worst_closeness(reference: Path, path: Path, encoded: Encoded, max_length: int) -> tuple[float, float]:
    """Worst label agreement with fp32 and worst 99th-percentile top-two gap shift, over the quantiser's batchings
    (each against fp32 under the same batching)."""
    fp32, candidate = create_session(reference, "cpu"), create_session(path, "cpu")
    found = worst(closeness(logits_of(fp32, encoded, batches), logits_of(candidate, encoded, batches))
                  for batches in _batchings(encoded, max_length))
    return found.agreement, found.gap_p99


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


def per_token_int8(source: Path, target: Path, exclude: list[str]) -> None:
    """int8 of every weight MatMul but `exclude`, activations scaled per row (per token) at run time, weights per
    output column: x·W ≈ sx·sw·(qx·qW), qx = round(x / sx) with sx = max|x| of the row / 127. A row's result does
    not depend on its batch, and an outlier token scales only itself. Built from standard operators: QuantizeLinear
    with a per-row scale (uint8, zero point 128: ONNX Runtime's fast u8·s8 kernels), MatMulIntegerToFloat with the
    weight scales, a Mul by the row scales."""
    model = onnx.load(str(source))
    weights = {init.name: init for init in model.graph.initializer}
    shared = {"pt/eps": np.array(1e-8, np.float32), "pt/inv127": np.array(1 / 127, np.float32),
              "pt/one": np.array(1.0, np.float32), "pt/zp": np.array(128, np.uint8),
              "pt/zp1": np.array([128], np.uint8), "pt/last": np.array([-1], np.int64),
              "pt/zero": np.array([0], np.int64)}
    extra = [onnx.numpy_helper.from_array(value, name) for name, value in shared.items()]
    make = onnx.helper.make_node
    nodes = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights or node.name in exclude:
            nodes.append(node)
            continue
        weight = onnx.numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127
        p = f"{node.name}/pt_"
        extra += [onnx.numpy_helper.from_array(np.clip(np.round(weight / scale), -127, 127).astype(np.int8), p + "w"),
                  onnx.numpy_helper.from_array(scale.astype(np.float32), p + "sw"),
                  onnx.numpy_helper.from_array(np.array([-1, weight.shape[0]], np.int64), p + "rows_shape"),
                  onnx.numpy_helper.from_array(np.array([weight.shape[1]], np.int64), p + "n")]
        x = node.input[0]
        nodes += [
            make("Shape", [x], [p + "shape"]), make("Slice", [p + "shape", "pt/zero", "pt/last"], [p + "lead"]),
            make("Concat", [p + "lead", p + "n"], [p + "out_shape"], axis=0),
            make("Reshape", [x, p + "rows_shape"], [p + "x"]), make("Abs", [p + "x"], [p + "abs"]),
            make("ReduceMax", [p + "abs"], [p + "max"], keepdims=0, axes=[1]),
            make("Max", [p + "max", "pt/eps"], [p + "max1"]), make("Mul", [p + "max1", "pt/inv127"], [p + "sx"]),
            make("Shape", [p + "sx"], [p + "count"]), make("Expand", ["pt/zp1", p + "count"], [p + "zps"]),
            make("QuantizeLinear", [p + "x", p + "sx", p + "zps"], [p + "qx"], axis=0),
            make("MatMulIntegerToFloat", [p + "qx", p + "w", "pt/one", p + "sw", "pt/zp"], [p + "y"],
                 domain="com.microsoft"),
            make("Unsqueeze", [p + "sx", "pt/last"], [p + "sx1"]), make("Mul", [p + "y", p + "sx1"], [p + "ys"]),
            make("Reshape", [p + "ys", p + "out_shape"], [node.output[0]]),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(extra)
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(target))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=Path("bench/out/int8-tradeoff.json"))
    parser.add_argument("--only", help="comma-separated words: only the variants whose names hold one (and fp32)")
    args = parser.parse_args()
    source = args.export / "model.onnx"
    max_length = json.loads((args.export / "manifest.json").read_text())["max_length"]
    encoder = TextEncoder.from_dir(args.export, max_length)
    speed_set = encoder.encode(workload("cola", args.rows))
    train = read_labelled(COLA / "train.tsv", "sentence", "label").texts
    calibration = encoder.encode([train[i] for i in sorted(np.random.default_rng(0).permutation(len(train))[:500])])
    dev = encoder.encode(read_labelled(COLA / "dev.tsv", "sentence", "label").texts)
    original = onnx.load(str(source))
    groups = groups_of(list(weight_matmuls(original)))
    head = [f"{node.name}_MatMul" for node in original.graph.node if node.op_type == "Gemm"]
    ffn_out, ffn_in = (next(g for g in groups if g.endswith(suffix))
                       for suffix in ("#/output/dense/MatMul", "#/intermediate/dense/MatMul"))
    results = {"machine": machine(), "rows": args.rows, "variants": []}
    with tempfile.TemporaryDirectory() as tmp:
        smoothed, trial = Path(tmp) / "smoothed.onnx", Path(tmp) / "trial.onnx"
        onnx.save(smooth(original, calibration), str(smoothed))
        dynamic = [("int8 every MatMul, no smoothing", source, []), ("int8 every MatMul, smoothed", smoothed, []),
                   ("int8 smoothed, FFN output in fp32", smoothed, groups[ffn_out]),
                   ("int8 smoothed, whole FFN in fp32", smoothed, groups[ffn_out] + groups[ffn_in])]
        # The quantiser's order: how far quantising each group alone moves the calibration logits, worst first.
        wanted = (lambda name: True) if args.only is None else (
            lambda name: name == "fp32" or any(word in name for word in args.only.split(",")))
        if wanted("most sensitive group"):
            batches = _batchings(calibration, max_length)[0]
            reference = logits_of(create_session(source, "cpu"), calibration, batches)
            ranked = sensitivity_order(smoothed, trial, groups, head, calibration, reference, batches)
            dynamic += [(f"int8 smoothed, {k} most sensitive group(s) in fp32", smoothed,
                         [n for g in ranked[:k] for n in groups[g]]) for k in range(1, len(ranked))]
        # (name, what writes the trial graph, the MatMuls kept in fp32)
        cases = [("fp32", None, [])]
        cases += [(name, functools.partial(quantize, base, exclude=kept + head), kept) for name, base, kept in dynamic]
        cases += [(f"per-token int8, {what}", functools.partial(per_token_int8, source, exclude=kept + head), kept)
                  for what, kept in (("every MatMul", []), ("FFN output in fp32", groups[ffn_out]),
                                     ("whole FFN in fp32", groups[ffn_out] + groups[ffn_in]))]
        cases += [("static int8 (QDQ, min/max ranges)",
                   functools.partial(static_int8, source, calibration=calibration, max_length=max_length), [])]
        cases += [(f"8-bit MatMulNBits, blocks of {block}, int8 compute",
                   functools.partial(blockwise_int8, source, block=block), []) for block in (32, 128)]
        for name, build, kept in filter(lambda case: wanted(case[0]), cases):
            path = source if build is None else trial
            if build is not None and build(target=trial) is False:
                print(f"{name}: left out (needs the onnx-ir package)")
                continue
            row = {"variant": name, "kept_fp32": sorted({re.sub(r"\d+", "#", n) for n in kept}),
                   "sentences_per_s": speed(path, speed_set)}
            row["calibration_agreement"], row["calibration_gap_p99"] = worst_closeness(source, path, calibration,
                                                                                       max_length)
            row["dev_worst_agreement"], row["dev_gap_p99"] = worst_closeness(source, path, dev, max_length)
            results["variants"].append(row)
            print(f"{name:48} {row['sentences_per_s']:7.0f} sent/s  calibration {row['calibration_agreement']:.2%} "
                  f"gap {row['calibration_gap_p99']:.3f}  dev {row['dev_worst_agreement']:.2%} gap "
                  f"{row['dev_gap_p99']:.3f}", flush=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
