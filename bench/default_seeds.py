"""The training target with scorer's own defaults: `scorer train` on CoLA train, dev to validate, one run per seed.

    python bench/default_seeds.py --seeds 1,2,3 --out bench/out/default-seeds.json
    python bench/default_seeds.py --parallel ...   # all seeds at once (a GPU leaves most of itself idle per run)

Each run is the command line a user types, nothing pinned: `python -m scorer train --data train.tsv --val-data
dev.tsv --seed N` (plus --model where SCORER_TOKENIZER_DIR says where the packaged MiniLM was carried, and any
options after `--`). Reads each checkpoint's metrics.json and writes the dev MCC per seed, the mean, and whether
the target holds (mean ≥ 0.45, every seed ≥ 0.40), with each run's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import COLA, machine, write_json

TARGET_MEAN, TARGET_EACH = 0.45, 0.40


def command(seed: int, output: Path, extra: list[str]) -> list[str]:
    args = [sys.executable, "-m", "scorer", "train", "--data", str(COLA / "train.tsv"), "--val-data",
            str(COLA / "dev.tsv"), "--output", str(output), "--seed", str(seed), "--quiet"]
    if os.environ.get("SCORER_TOKENIZER_DIR"):
        args += ["--model", os.environ["SCORER_TOKENIZER_DIR"]]
    return args + extra


def run_seeds(seeds: list[int], parallel: bool, extra: list[str], workdir: Path) -> list[dict]:
    """Start the runs (all at once, or one after another) and collect what each checkpoint's metrics say."""
    pending, ended = [], {}
    for seed in seeds:
        output = workdir / f"seed-{seed}"
        log = open(workdir / f"seed-{seed}.log", "w")  # noqa: SIM115 - closed when the run ends
        started = time.perf_counter()
        process = subprocess.Popen(command(seed, output, extra), stdout=log, stderr=subprocess.STDOUT)
        pending.append((seed, output, log, started, process))
        if not parallel:
            process.wait()
            ended[seed] = time.perf_counter()
    while len(ended) < len(pending):  # each run's own end, whatever order the runs end in
        for seed, _, _, _, process in pending:
            if seed not in ended and process.poll() is not None:
                ended[seed] = time.perf_counter()
        time.sleep(0.5)
    runs = []
    for seed, output, log, started, process in pending:
        code = process.wait()
        seconds = ended[seed] - started
        log.close()
        if code != 0:
            tail = (workdir / f"seed-{seed}.log").read_text()[-2000:]
            raise SystemExit(f"scorer train --seed {seed} exited {code}:\n{tail}")
        runs.append(record(seed, seconds, output))
    return runs


def record(seed: int, seconds: float, output: Path) -> dict:
    """One run as the result file holds it, from its checkpoint's metrics.json."""
    metrics = json.loads((output / "metrics.json").read_text())
    best = next(e for e in metrics["epochs"] if e["epoch"] == metrics["best_epoch"])
    return {"seed": seed, "seconds": seconds, "device": metrics["device"], "precision": metrics.get("precision"),
            "best_epoch": metrics["best_epoch"], "best_mcc": best["val_mcc"], "best_accuracy": best["val_accuracy"],
            "mcc_per_epoch": [e["val_mcc"] for e in metrics["epochs"]],
            "epoch_seconds": [e["seconds"] for e in metrics["epochs"]],
            "rtd_losses": metrics.get("rtd_losses"), "mlm_losses": metrics.get("mlm_losses")}


def summary(runs: list[dict]) -> dict:
    mccs = [r["best_mcc"] for r in runs]
    return {"mean_mcc": statistics.mean(mccs), "min_mcc": min(mccs), "max_mcc": max(mccs),
            "target_met": statistics.mean(mccs) >= TARGET_MEAN and min(mccs) >= TARGET_EACH}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--parallel", action="store_true", help="start every seed at once")
    parser.add_argument("--out", type=Path, default=Path("bench/out/default-seeds.json"))
    parser.add_argument("--keep", type=Path, help="keep checkpoints and logs here (default: a temporary directory)")
    parser.add_argument("extra", nargs="*", help="`scorer train` options after --, e.g. -- --device cpu")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        runs = run_seeds(seeds, args.parallel, args.extra, args.keep)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            runs = run_seeds(seeds, args.parallel, args.extra, Path(tmp))
    import torch

    result = {"machine": machine("cuda" if torch.cuda.is_available() else "cpu"), "parallel": args.parallel,
              "extra_options": args.extra, "wall_seconds": time.perf_counter() - started, "runs": runs,
              "summary": summary(runs)}
    write_json(args.out, result)
    for run in runs:
        print(f"seed {run['seed']}: dev MCC {run['best_mcc']:.4f} (epoch {run['best_epoch']}, {run['device']} "
              f"{run['precision']}), {run['seconds']:.0f}s, per epoch {[round(m, 3) for m in run['mcc_per_epoch']]}")
    s = result["summary"]
    print(f"mean {s['mean_mcc']:.4f}, min {s['min_mcc']:.4f}: target {'met' if s['target_met'] else 'NOT met'}; "
          f"{result['wall_seconds']:.0f}s in all")


if __name__ == "__main__":
    main()
