"""Many small inputs: `scorer run DIR` with small inputs scored together (scorer.scoring.bundle) against each input
scored on its own (the way before it, RunConfig.small_rows=0), and the same rows as one file (the most a bundle can
give), in one process on one export.

CPU (a trained export, e.g. the CoLA model):
    python bench/small_files.py --export runs/cola/onnx --files 400
GPU (random weights are fine for speed; see bench/gpu_check.sh):
    python bench/small_files.py --device cuda --random bert-base --files 2000

Workload: CoLA sentences (../shared/data/cola, repeated as needed) cut into --files inputs of 1 to 2 x --mean-rows
rows (seeded), alternately Parquet and CSV. Every figure is end to end, files in to files out (each way's whole
`score_file`, its model's start and self-check included). Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from common import machine, write_json
from scoring import random_checkpoint, workload

from scorer.config import RunConfig
from scorer.scoring.score import score_file

WAYS = {"each-alone": {"small_rows": 0}, "bundled": {}}


def inbox(directory: Path, texts: list[str], files: int, mean_rows: int, seed: int = 0) -> list[int]:
    """`texts` cut into `files` inputs under `directory`; their row counts."""
    sizes = np.random.default_rng(seed).integers(1, 2 * mean_rows + 1, files)
    directory.mkdir(parents=True)
    start = 0
    for number, size in enumerate(sizes):
        table = pa.table({"id": np.arange(start, start + size), "sentence": texts[start : start + size]})
        if number % 2:
            pacsv.write_csv(table, directory / f"part-{number:05d}.csv")
        else:
            pq.write_table(table, directory / f"part-{number:05d}.parquet")
        start += size
    return [int(size) for size in sizes]


def scored(directory: Path) -> np.ndarray:
    """The scores of every output under `directory`, in input order."""
    outputs = sorted(directory.glob("part-*.parquet"))
    return np.concatenate([pq.read_table(p, columns=["score"]).column("score").to_numpy() for p in outputs]) \
        if outputs else pq.read_table(directory / "all.parquet", columns=["score"]).column("score").to_numpy()


def run_way(source: Path, output: Path, export: Path, provider: str, settings: dict) -> dict:
    config = RunConfig(input=str(source), output=output, model=export, provider=provider, overwrite=True, **settings)
    started = time.perf_counter()
    summary = score_file(config, progress=False)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows_per_s": summary.rows / seconds, "inputs_per_s": len(summary.inputs) / seconds,
            "batches": summary.batching["batches"], "model_seconds": summary.batching["model_seconds"],
            "model_busy_share": summary.batching["model_seconds"] / seconds, "waits": summary.waits,
            "variant": summary.variant, "provider": summary.provider}


def inbox_options(description: str, files: int, mean_rows: int) -> argparse.ArgumentParser:
    """The options of a script that scores an inbox of small files (this one, share_runs.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--export", type=Path, default=Path("scorer-artifacts/onnx"))
    parser.add_argument("--random", choices=["bert-base", "tiny"], help="Use random weights of this shape instead.")
    parser.add_argument("--random-dir", type=Path, help="Keep the random model here and reuse it if it is there.")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--files", type=int, default=files)
    parser.add_argument("--mean-rows", type=int, default=mean_rows,
                        help="Rows per input, on average (1 to twice this).")
    return parser


def inbox_and_export(args: argparse.Namespace, tmp: Path) -> tuple[list[str], list[int], Path]:
    """The workload's texts, the inbox of args.files inputs cut from them under `tmp`/inbox (their row counts), and
    the export to score it with (random weights where args.random asks, built once in args.random_dir)."""
    texts = workload("cola", args.files * 2 * args.mean_rows)
    export = args.export
    if args.random:
        _, export = random_checkpoint(args.random_dir or tmp / "random", args.random, 128, "cola", texts)
    return texts, inbox(tmp / "inbox", texts, args.files, args.mean_rows), export


def main() -> None:
    parser = inbox_options(__doc__.splitlines()[0], files=400, mean_rows=10)
    parser.add_argument("--out", type=Path, default=Path("bench/out/small-files-cpu.json"))
    args = parser.parse_args()
    provider = "cuda" if args.device == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts, sizes, export = inbox_and_export(args, tmp)
        pq.write_table(pa.table({"id": np.arange(sum(sizes)), "sentence": texts[: sum(sizes)]}), tmp / "all.parquet")
        run_way(tmp / "all.parquet", tmp / "warm-up" / "all.parquet", export, provider, {})  # (one-off costs)
        results = {way: run_way(tmp / "inbox", tmp / way, export, provider, settings) for way, settings in WAYS.items()}
        results["one-file"] = run_way(tmp / "all.parquet", tmp / "one-file" / "all.parquet", export, provider, {})
        reference = scored(tmp / "one-file")
        for way in WAYS:
            results[way]["max_score_diff_from_one_file"] = float(np.abs(scored(tmp / way) - reference).max())
    for way, row in results.items():
        row["x_each_alone"] = row["rows_per_s"] / results["each-alone"]["rows_per_s"]
        print(f"{way:11} {row['rows_per_s']:>9,.0f} rows/s ({row['x_each_alone']:.2f}x each alone), "
              f"{row['batches']} batches, model busy {row['model_busy_share']:.0%}", flush=True)
    write_json(args.out, {"machine": machine(args.device), "files": args.files, "rows": sum(sizes),
                          "mean_rows": float(np.mean(sizes)), "random_weights": args.random, "results": results})


if __name__ == "__main__":
    main()
