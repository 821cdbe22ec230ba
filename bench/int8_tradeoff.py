"""Speed and faithfulness of int8 variants on CPU: which scheme, which MatMul groups, at what cost in labels.

    python bench/int8_tradeoff.py --export bench/out/cola/onnx [--rows 3000] [--out bench/out/int8-tradeoff.json]
                                  [--only per-token,dynamic,static,MatMulNBits]

For a trained export, each variant's model-only sentences/s (best of 5 passes; CoLA-like sentences, pre-tokenised,
token-budget batches) and, against fp32, under the three batchings of bench/int8_schemes.py (the worst counts):
label agreement on the quantiser's 500 calibration sentences of CoLA train and on CoLA dev, near-ties (fp32
top-two gap under the gate's 0.05) left out; dev agreement counting every row; the 99th percentile of how far
int8 moved the top-two gap; the largest |Δprobability| (what `scorer run --check` bounds); and the dev agreement
the quantiser predicts from the calibration rows (export/quantize.py), to set beside the dev agreement measured.
Variants: the quantiser's per-token int8 with every weight MatMul, the FFN output or the whole FFN in fp32, and 1,
2, ... groups in fp32 in the quantiser's order; ONNX Runtime's dynamic int8 (scaled per batch) with and without
smoothing and with the FFN in fp32; static int8 (QDQ, ranges fixed from the calibration rows); 8-bit MatMulNBits
(needs the `onnx-ir` package, else left out).
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
from int8_schemes import batchings, blockwise_int8, dynamic_int8, smooth, static_int8
from scoring import workload

from export.int8_prediction import top_two_gap
from export.per_token import per_token_int8
from export.quantize import closeness, groups_of, sensitivity_order, weight_matmuls
from export.timing import logits_of, pass_seconds
from scorer.config import ExportConfig
from scorer.data.labels import read_labelled
from scorer.inference.results import softmax
from scorer.inference.session import create_session
from scorer.text.batches import budget_batches
from scorer.text.tokens import Encoded, TextEncoder

REPEATS = 5  # best of REPEATS passes (as timeit does): this shared machine's noise only ever slows a pass down
TIE = ExportConfig.tie_margin


def speed(path: Path, encoded: Encoded) -> float:
    session = create_session(path, "cpu")
    batches = [(rows, None) for rows in budget_batches(encoded.lengths, 4096, 1024)]
    logits_of(session, encoded, batches[:3])  # warm-up
    return len(encoded) / min(pass_seconds(session, encoded, batches) for _ in range(REPEATS))


class Faithfulness:
    """fp32's logits on the calibration and dev rows under each batching, to hold each variant against."""

    def __init__(self, fp32: Path, calibration: Encoded, dev: Encoded, max_length: int) -> None:
        session = create_session(fp32, "cpu")
        self.sets = {"calibration": calibration, "dev": dev}
        self.cuts = {name: batchings(rows, max_length) for name, rows in self.sets.items()}
        self.reference = {name: [logits_of(session, self.sets[name], cut) for cut in self.cuts[name]]
                          for name in self.sets}
        self.dev_gaps = top_two_gap(self.reference["dev"][0])

    def of(self, path: Path) -> dict:
        session = create_session(path, "cpu")
        row = {}
        for name, rows in self.sets.items():
            found = [(reference, logits_of(session, rows, cut))
                     for reference, cut in zip(self.reference[name], self.cuts[name], strict=True)]
            # as the quantiser measures a trial graph, with the dev rows' gaps as the rows it predicts for
            close = [closeness(ref, got, self.dev_gaps, TIE) for ref, got in found]
            row[f"{name}_agreement"] = min(c.agreement for c in close)
            row[f"{name}_agreement_every_row"] = min(float((got.argmax(1) == ref.argmax(1)).mean())
                                                     for ref, got in found)
            row[f"{name}_max_score_diff"] = max(float(np.abs(softmax(got) - softmax(ref)).max()) for ref, got in found)
            row[f"{name}_gap_p99"] = max(c.gap_p99 for c in close)
            if name == "calibration":
                row["dev_predicted_agreement"] = min(c.predicted for c in close)
        return row


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
    faithfulness = Faithfulness(source, calibration, dev, max_length)
    original = onnx.load(str(source))
    groups = groups_of(weight_matmuls(original))
    # dynamic int8 turns a Gemm (the classification head) into "<name>_MatMul": kept fp32, as per-token int8 keeps it
    head = [f"{node.name}_MatMul" for node in original.graph.node if node.op_type == "Gemm"]
    ffn_out, ffn_in = (next(g for g in groups if g.endswith(suffix))
                       for suffix in ("#/output/dense/MatMul", "#/intermediate/dense/MatMul"))
    wanted = (lambda name: True) if args.only is None else (
        lambda name: name == "fp32" or any(word in name for word in args.only.split(",")))
    results = {"machine": machine(), "rows": args.rows, "tie_margin": TIE, "variants": []}
    with tempfile.TemporaryDirectory() as tmp:
        smoothed, trial = Path(tmp) / "smoothed.onnx", Path(tmp) / "trial.onnx"
        onnx.save(smooth(original, calibration), str(smoothed))
        per_token = [("every MatMul", []), ("FFN output in fp32", groups[ffn_out]),
                     ("whole FFN in fp32", groups[ffn_out] + groups[ffn_in])]
        if wanted("per-token int8, most sensitive"):  # the quantiser's order, worst group first
            batches = batchings(calibration, max_length)[0]
            reference = logits_of(create_session(source, "cpu"), calibration, batches)
            ranked = sensitivity_order(original, trial, groups, calibration, reference, batches)
            per_token += [(f"{k} most sensitive group(s) in fp32", [n for g in ranked[:k] for n in groups[g]])
                          for k in range(1, len(ranked))]
        # (name, what writes the trial graph, the MatMuls kept in fp32)
        cases = [("fp32", None, [])]
        cases += [(f"per-token int8, {what}", functools.partial(per_token_int8, source, exclude=kept), kept)
                  for what, kept in per_token]
        cases += [(f"dynamic int8, {what}", functools.partial(dynamic_int8, base, exclude=kept + head), kept)
                  for what, base, kept in (("every MatMul", source, []), ("every MatMul, smoothed", smoothed, []),
                                           ("smoothed, FFN output in fp32", smoothed, groups[ffn_out]),
                                           ("smoothed, whole FFN in fp32", smoothed, groups[ffn_out] + groups[ffn_in]))]
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
                   "sentences_per_s": speed(path, speed_set), **faithfulness.of(path)}
            results["variants"].append(row)
            print(f"{name:50} {row['sentences_per_s']:6.0f} sent/s  calibration {row['calibration_agreement']:.2%} "
                  f"gap {row['calibration_gap_p99']:.3f}  dev {row['dev_agreement']:.2%} (predicted "
                  f"{row['dev_predicted_agreement']:.2%}; every row {row['dev_agreement_every_row']:.2%}) gap "
                  f"{row['dev_gap_p99']:.3f}, max |Δscore| calibration {row['calibration_max_score_diff']:.3f} dev "
                  f"{row['dev_max_score_diff']:.3f}", flush=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
