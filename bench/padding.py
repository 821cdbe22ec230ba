"""How much padding `scorer run`'s batches carry, and how many runs they take, under each way of batching.

    python bench/padding.py --out bench/out/padding.json

No model runs: the texts are tokenised with the packaged tokenizer, cut into windows and pieces as `scorer run`
cuts them, and batched by scorer.text.batches exactly as OnnxClassifier.run_pieces batches them. For each workload and
setting it reports the batches, padded tokens over real tokens, and the modelled cost of a pass, (padded tokens
+ batches x c) / real tokens, for per-run costs c of 16 tokens (the CPU box, measured) and of 1,300 and 5,500
tokens (two GPU estimates: an H200 run and an H100 run with IO binding; bench/RESULTS.md 7.12).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pyarrow as pa
from common import machine, tokenizer_dir, write_json
from scoring import workload

from scorer.config import RunConfig
from scorer.inference.defaults import DEFAULT_BATCH_OVERHEAD, DEFAULT_MAX_TOKENS, DEFAULT_WINDOW_ROWS
from scorer.scoring.stream import pieces
from scorer.text.batches import BatchTally, WindowBatcher
from scorer.text.tokens import TextEncoder

RUN_COSTS = (16, 1300, 5500)


def settings(provider: str) -> dict[str, tuple[int, float]]:
    """name: (window rows, overhead); the first is scorer's default for the provider."""
    window, overhead = DEFAULT_WINDOW_ROWS[provider], DEFAULT_BATCH_OVERHEAD[provider]
    return {"default": (window, overhead), "budget alone, 16k windows (before)": (16384, math.inf),
            "budget alone": (window, math.inf), "16k windows": (16384, overhead),
            "131k windows": (131072, overhead), "overhead x0.5": (window, overhead / 2),
            "overhead x2": (window, overhead * 2)}


def tally(lengths_by_window: list[list], max_tokens: int, overhead: float) -> BatchTally:
    total = BatchTally()
    for window in lengths_by_window:
        batcher = WindowBatcher(max_tokens, RunConfig.max_batch_rows, overhead)
        for lengths in window:
            for batch in batcher.add(lengths):
                total.add(batch)
        for batch in batcher.flush():
            total.add(batch)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="cola=262144,long128=65536", help="WORKLOAD=ROWS,...")
    parser.add_argument("--providers", default="cuda,cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/out/padding.json"))
    args = parser.parse_args()
    encoder = TextEncoder.from_dir(tokenizer_dir(), 128)
    results = {"machine": machine(), "run_costs": RUN_COSTS, "workloads": {}}
    for item in args.rows.split(","):
        name, rows = item.split("=")
        column = pa.array(workload(name, int(rows)))
        encoded = {}  # window rows -> every window's pieces' lengths
        for provider in args.providers.split(","):
            for setting, (window, overhead) in settings(provider).items():
                if window not in encoded:
                    encoded[window] = [[encoder.encode(piece).lengths for piece in
                                        pieces(column.slice(start, window), RunConfig.piece_chars)]
                                       for start in range(0, len(column), window)]
                figures = tally(encoded[window], DEFAULT_MAX_TOKENS[provider], overhead)
                row = {"window_rows": window, "overhead": overhead, "batches": figures.batches,
                       "padded_over_real": figures.padded_over_real,
                       "cost": {str(c): (figures.padded_tokens + c * figures.batches) / figures.tokens
                                for c in RUN_COSTS}}
                results["workloads"].setdefault(name, {}).setdefault(provider, {})[setting] = row
                print(f"{name:8} {provider:5} {setting:36} {figures.batches:>5} batches, padded/real "
                      f"{row['padded_over_real']:.3f}, cost " + " ".join(f"{c}:{v:.3f}" for c, v in
                                                                      row["cost"].items()), flush=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
