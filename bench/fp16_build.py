"""How long export takes to build its fp16 candidate graphs: one after another (the baseline) and a process each.

    python bench/fp16_build.py --random-dir /tmp/random-bert --repeat 2 --out bench/results/fp16-build-cpu.json

Builds every fp16 attention graph (fused, MultiHeadAttention, unfused) from a random bert-base-shaped export's fp32
graph with export.optimize.optimize_each, with one worker and with one process per attention, alternately, and
checks that both ways write the same files. The rewrites for the kernel settings (row starts, packed) are timed too,
and the trials that export runs in child processes before it loads new kernels (export.fp16_probe
.trials_in_children; here on the CPU, the check rows only), one at a time and three at once.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, write_json
from scoring import random_checkpoint, workload

import export.fp16_probe as probe
from export.fp16_choice import KERNELS
from export.optimize import optimize_each
from export.timing import logits_of
from scorer.config import FP16_ATTENTIONS
from scorer.inference.session import create_session
from scorer.text.tokens import TextEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", default="bert-base", help="Random-weight shape (bench/scoring.py).")
    parser.add_argument("--random-dir", type=Path)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--attentions", default=",".join(FP16_ATTENTIONS), help="Which graphs to build.")
    parser.add_argument("--out", type=Path, default=Path("bench/out/fp16-build.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.random_dir or Path(tmp)
        _, export = random_checkpoint(directory, args.random, 128, "cola", workload("cola", 2000))
        source = export / "model.onnx"
        shape = json.loads((directory / "checkpoint" / "config.json").read_text())
        results = {"machine": machine("cpu"), "source_mb": source.stat().st_size / 2**20, "runs": []}
        attentions = args.attentions.split(",")
        encoded = TextEncoder.from_dir(export, 128).encode(workload("cola", 64))
        rows = np.arange(len(encoded))
        padded = encoded.pad(rows)
        check = (padded, logits_of(create_session(source, "cpu"), encoded, [(rows, None)])[rows])
        for repeat in range(args.repeat):
            seconds, built = {}, {}
            for workers in (1, len(attentions)):
                out = Path(tmp) / f"w{workers}"
                out.mkdir(exist_ok=True)
                started = time.perf_counter()
                built[workers] = optimize_each(source, out, shape["num_attention_heads"], shape["hidden_size"],
                                               attentions, workers)
                seconds[f"{workers} worker{'s' if workers > 1 else ''}"] = time.perf_counter() - started
            same = built[1] == built[len(attentions)] and all(
                filecmp.cmp(Path(tmp) / "w1" / f"{a}.onnx", Path(tmp) / f"w{len(attentions)}" / f"{a}.onnx",
                            shallow=False) for a in attentions)
            for name, kernels in KERNELS.items():
                if kernels.rewrite:
                    for attention in {"fused", "mha"} & set(attentions):
                        started = time.perf_counter()
                        kernels.rewrite(Path(tmp) / "w1" / f"{attention}.onnx", Path(tmp) / f"{attention}-{name}.onnx")
                        seconds[f"rewrite {attention} {name}"] = time.perf_counter() - started
            trials = {f"{a} {k}": (Path(tmp) / (f"w1/{a}.onnx" if k == "default" else f"{a}-{k}.onnx"), k)
                      for a in {"fused", "mha"} & set(attentions) for k in ("default", "efficient")}
            for at_once in (1, 3):
                probe._TRIALS_AT_ONCE = at_once
                started = time.perf_counter()
                failed = probe.trials_in_children(trials, "cpu", check[0], check[1])
                seconds[f"{len(trials)} trials, {at_once} at once"] = time.perf_counter() - started
                assert not failed, failed
            results["runs"].append({"seconds": seconds, "identical_graphs": same})
            print(f"run {repeat + 1}: " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items())
                  + f"; identical graphs: {same}", flush=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
