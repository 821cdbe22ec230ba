"""Several `scorer run --share` processes on one inbox of small files against one run, wall clock, same inbox, same
export, in one script.

A directory of many small files is held by each input's own file work (open, read, lock, write, fsync: about 3 ms an
input on the 2-core CPU box, bench/RESULTS.md 3.3), done in turn by one Python process; where the model leaves cores
idle (a GPU), runs that share the inbox do that work side by side.

CPU (file-bound with a tiny random model):
    python bench/share_runs.py --random tiny --files 3000 --mean-rows 1 --runs 1 2
GPU (see bench/gpu_check.sh):
    python bench/share_runs.py --device cuda --random bert-base --files 2000 --mean-rows 10 --runs 1 2 4

Each figure is end to end from starting the processes to the last one's exit (their start-up, about 2 s, and
self-check included). Checked: every run exits 0, each input was scored by exactly one run, and its scores equal
the single run's. Writes JSON to --out.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, write_json
from small_files import inbox_and_export, inbox_options, scored


def shared_runs(source: Path, output: Path, export: Path, provider: str, count: int) -> dict:
    """`count` runs started together with --share on `source`; wall seconds and what each did."""
    summaries = [output.with_name(f"{output.name}-run{n}.json") for n in range(count)]
    started = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-m", "scorer.cli", "run", str(source), "-o", str(output),
                                   "--model", str(export), "--provider", provider, "--share", "--summary",
                                   str(summary), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for summary in summaries]
    for process in processes:
        _, errors = process.communicate()
        if process.returncode:
            raise SystemExit(f"a shared run exited {process.returncode}: {errors.strip()[-2000:]}")
    seconds = time.perf_counter() - started
    states = [[u["state"] for u in json.loads(path.read_text())["inputs"]] for path in summaries]
    scored_by = [sum(state == "scored" for state in run) for run in states]
    once = all(sum(run[i] == "scored" for run in states) == 1 for i in range(len(states[0])))
    return {"runs": count, "seconds": seconds, "inputs_scored_by_each_run": scored_by, "each_input_scored_once": once}


def main() -> None:
    parser = inbox_options(__doc__.splitlines()[0], files=3000, mean_rows=1)
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 2], help="Run counts to compare (1 first).")
    parser.add_argument("--out", type=Path, default=Path("bench/out/share-runs-cpu.json"))
    args = parser.parse_args()
    provider = "cuda" if args.device == "cuda" else "cpu"
    counts = sorted(set(args.runs) | {1})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _, sizes, export = inbox_and_export(args, tmp)
        shared_runs(tmp / "inbox", tmp / "warm-up", export, provider, 1)  # (page cache, compiled kernels)
        results = [shared_runs(tmp / "inbox", tmp / f"out-{count}", export, provider, count) for count in counts]
        reference = scored(tmp / "out-1")
        for row in results:
            row["max_score_diff_from_one_run"] = float(np.abs(scored(tmp / f"out-{row['runs']}") - reference).max())
    for row in results:
        row["inputs_per_s"] = args.files / row["seconds"]
        row["x_one_run"] = results[0]["seconds"] / row["seconds"]
        print(f"{row['runs']} run(s): {row['seconds']:6.2f} s, {row['inputs_per_s']:7.0f} inputs/s "
              f"({row['x_one_run']:.2f}x one run), scored by each {row['inputs_scored_by_each_run']}, "
              f"each input once: {row['each_input_scored_once']}", flush=True)
    write_json(args.out, {"machine": machine(args.device), "files": args.files, "rows": sum(sizes),
                          "random_weights": args.random, "results": results})


if __name__ == "__main__":
    main()
