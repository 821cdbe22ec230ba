"""Tokenising alone: the Hugging Face tokenizer (scorer's way before 2026-11-27) against scorer's word cache.

    python bench/tokenize_speed.py [--rows 200000] [--threads 1,2] [--out bench/out/tokenize-cpu.json]

Same texts, same run, same tokenizer.json (the packaged MiniLM's, or $SCORER_TOKENIZER_DIR's). Workloads: "cola"
(CoLA sentences repeated to --rows, as bench/scoring.py), "cola-once" (train.tsv once: no sentence repeats), "long128"
(texts of 100 CoLA words) and "unique" (ten random 3-9 character strings per row: nearly every word new, the cache's
worst case, where it hands the texts to the tokenizer). Texts are cut into windows of 16,384 rows, tokenised by T
threads as `scorer run`'s tokenize threads do. Three ways: the tokenizer alone (TextEncoder word_cache=False; its
own thread pool spreads each window over every core), the word cache starting empty ("cold"), and the same cache
again ("warm"); each the best of --repeat passes (a fresh cache for each cold pass). Every way must give identical
ids, offsets and truncation flags; the script fails otherwise.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import COLA, machine, tokenizer_dir, write_json
from scoring import workload

from scorer.data.labels import read_labelled
from scorer.text.tokens import Encoded, TextEncoder

WINDOW = 16384


def texts_of(name: str, rows: int) -> list[str]:
    if name == "cola-once":
        return read_labelled(COLA / "train.tsv", "sentence", "label").texts
    if name == "unique":
        rng = np.random.default_rng(0)
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
        return [" ".join("".join(rng.choice(letters, rng.integers(3, 10))) for _ in range(10)) for _ in range(rows)]
    return workload(name, rows)


def timed(encoder: TextEncoder, windows: list[list[str]], threads: int) -> tuple[float, list[Encoded]]:
    with ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        results = list(pool.map(encoder.encode, windows))
        return time.perf_counter() - started, results


def same(a: list[Encoded], b: list[Encoded]) -> bool:
    return all(np.array_equal(x.ids, y.ids) and np.array_equal(x.offsets, y.offsets)
               and np.array_equal(x.truncated, y.truncated) for x, y in zip(a, b, strict=True))


def measure(name: str, rows: int, threads: list[int], max_length: int, repeat: int) -> dict:
    texts = texts_of(name, rows)
    windows = [texts[start : start + WINDOW] for start in range(0, len(texts), WINDOW)]
    tokenizer = TextEncoder.from_dir(tokenizer_dir(), max_length, word_cache=False)
    results: dict[str, float] = {}
    for count in threads:
        for _ in range(repeat):  # best of `repeat` for each way; a fresh (cold) cache each time
            seconds, reference = timed(tokenizer, windows, count)
            results[f"tokenizer-T{count}"] = min(seconds, results.get(f"tokenizer-T{count}", seconds))
            cache = TextEncoder.from_dir(tokenizer_dir(), max_length)
            for state in ("cold", "warm"):
                seconds, encoded = timed(cache, windows, count)
                if not same(encoded, reference):
                    raise SystemExit(f"{name}: the word cache ({state}, {count} threads) gave other ids than the "
                                     "tokenizer")
                key = f"word-cache-{state}-T{count}"
                results[key] = min(seconds, results.get(key, seconds))
    tokens = sum(int(e.ids.size) for e in reference)
    rows_done = len(texts)
    table = {key: {"sentences_per_s": rows_done / seconds, "tokens_per_s": tokens / seconds, "seconds": seconds}
             for key, seconds in results.items()}
    for key, row in table.items():
        baseline = table[f"tokenizer-T{key.rsplit('-T', 1)[1]}"]
        row["x_tokenizer"] = row["sentences_per_s"] / baseline["sentences_per_s"]
        print(f"{name:9} {key:22} {row['sentences_per_s']:>11,.0f} sent/s {row['tokens_per_s']:>12,.0f} tok/s "
              f"x{row['x_tokenizer']:.2f}", flush=True)
    return {"texts": rows_done, "mean_tokens": tokens / rows_done, "identical_ids": True, "results": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200000)
    parser.add_argument("--threads", default="1,2", help="Tokenize threads to try (comma-separated).")
    parser.add_argument("--workloads", default="cola,cola-once,long128,unique")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3, help="Best of this many passes for each way.")
    parser.add_argument("--out", type=Path, default=Path("bench/out/tokenize-cpu.json"))
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    results = {"machine": machine(), "tokenizer": str(tokenizer_dir()), "window_rows": WINDOW,
               "max_length": args.max_length, "repeat": args.repeat, "workloads": {}}
    for name in args.workloads.split(","):
        results["workloads"][name] = measure(name, args.rows, threads, args.max_length, args.repeat)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
