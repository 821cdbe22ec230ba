"""ONNX Runtime's graph optimisation levels for the graph `scorer run` would use, against the level it uses (all).

CPU (a trained export; int8 and fp32 graphs):
    python bench/ort_options.py --export runs/cola/onnx --rows 3000
GPU (random bert-base weights; the fp16 graph with export's kernel choice, run as scorer runs it there):
    python bench/ort_options.py --device cuda --random bert-base --random-dir /tmp/random-bert --rows 100000

On CoLA sentences tokenised once and batched as scorer batches them (token budget, per-run cost), each graph gets a
session per level (disabled, basic, extended, all: what each level adds is in ONNX Runtime's graph optimisation
docs), timed in interleaved passes (best of --passes after a warm-up of each); printed and written per level:
sentences/s, the time the session took to start (its optimisation included), and how far its logits and labels are
from level "all"'s. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import bench_session, machine, write_json
from scoring import random_checkpoint, workload

from export.timing import best_seconds, logits_of
from scorer.config import RunConfig
from scorer.inference.defaults import (
    DEFAULT_BATCH_OVERHEAD,
    DEFAULT_MAX_TOKENS,
    default_batch_overhead,
    default_io_binding,
    default_provider_options,
)
from scorer.inference.session import batch_runner
from scorer.manifest import load_manifest
from scorer.text.batches import budget_batches
from scorer.text.tokens import TextEncoder

LEVELS = ("disabled", "basic", "extended", "all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=Path("scorer-artifacts/onnx"))
    parser.add_argument("--random", help="Random weights of this shape (bench/scoring.py) instead of --export.")
    parser.add_argument("--random-dir", type=Path)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--variants", help="Graphs to time [cpu: int8,fp32; cuda: fp16].")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/out/ort-options.json"))
    args = parser.parse_args()
    provider = args.device
    texts = workload("cola", args.rows)
    variants = (args.variants or ("fp16" if provider == "cuda" else "int8,fp32")).split(",")
    with tempfile.TemporaryDirectory() as tmp:
        export = random_checkpoint(args.random_dir or Path(tmp), args.random, 128, "cola", texts)[1] \
            if args.random else args.export
        manifest = load_manifest(export)
        encoded = TextEncoder.from_dir(export, manifest.max_length).encode(texts)
        results = {"machine": machine(args.device), "export": str(export), "rows": len(texts), "variants": {}}
        for variant in variants:
            overhead = default_batch_overhead(provider, variant, manifest)
            batches = [(cut, None) for cut in budget_batches(encoded.lengths, DEFAULT_MAX_TOKENS[provider],
                                                             RunConfig.max_batch_rows, overhead)]
            options = default_provider_options(provider, variant, manifest) or {}
            binding = default_io_binding(provider, variant, manifest)
            path = manifest.variant(variant, export)
            runners, started = {}, {}
            for level in LEVELS:
                begun = time.perf_counter()
                runners[level] = batch_runner(bench_session(path, provider, options, level=level), provider,
                                              binding)
                started[level] = time.perf_counter() - begun
            seconds = dict(zip(LEVELS, best_seconds(list(runners.values()), encoded, batches, args.passes),
                               strict=True))
            reference = logits_of(runners["all"], encoded, batches)
            rows = {}
            for level in LEVELS:
                logits = logits_of(runners[level], encoded, batches)
                rows[level] = {"sentences_per_s": len(encoded) / seconds[level], "session_start_s": started[level],
                               "max_abs_diff_vs_all": float(np.abs(logits - reference).max()),
                               "labels_agree_with_all": float((logits.argmax(1) == reference.argmax(1)).mean())}
                print(f"{variant:5} {level:9} {rows[level]['sentences_per_s']:>10,.0f} sentences/s  start "
                      f"{started[level]:6.2f}s  vs all: max |diff| {rows[level]['max_abs_diff_vs_all']:.2e}, labels "
                      f"{rows[level]['labels_agree_with_all']:.2%}", flush=True)
            results["variants"][variant] = {"levels": rows, "batches": len(batches), "io_binding": binding,
                                            "provider_options": options, "batch_overhead": overhead,
                                            "default_overhead": DEFAULT_BATCH_OVERHEAD[provider]}
    write_json(args.out, results)


if __name__ == "__main__":
    main()
