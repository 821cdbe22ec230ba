"""Scoring and training in a process limited to fewer cores than the machine has (a CPU affinity, as taskset or a
batch scheduler sets; a cgroup CPU quota, as docker --cpus or a Kubernetes CPU limit sets): threads sized by the
cores this process may use (scorer.machine, the default) against threads sized by the machine's count (what scorer
did before: os.cpu_count()), alternated in one run on one machine.

    python bench/cpu_limits.py --export runs/cola/onnx

Scoring: `scorer run --provider cpu` on --rows CoLA sentences (../shared/data/cola, sampled with repeats), Parquet in
and out, in a child process under each limit, with `--cpu-threads <machine's cores>` (the baseline) and without.
Training: --steps bf16-or-fp32 (as `scorer train` picks) steps of --model (default the packaged MiniLM) at batch 32
on CoLA sentences, in a child under each limit, with PyTorch's own thread count (the baseline) and after
scorer.machine.fit_torch_threads. The cgroup limit needs root and a writable cgroup v1 cpu controller or a cgroup v2
hierarchy with cpu enabled; it is skipped, saying why, elsewhere. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import machine, write_json
from scoring import workload

CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")


def train_steps(steps: int, fit: bool, model_dir: Path) -> None:
    """(In the child.) Time `steps` training steps of the encoder in `model_dir` (3 warm-up steps first, fewer when
    fewer are timed); print the threads and milliseconds a step as JSON."""
    import torch
    from transformers import AutoModel

    from scorer.machine import fit_torch_threads
    from scorer.pytorch.loop import autocast
    from scorer.text.tokens import TextEncoder
    from scorer.training.device import resolve_precision

    if fit:
        fit_torch_threads()
    torch.manual_seed(0)
    model = AutoModel.from_pretrained(str(model_dir))
    optimizer = torch.optim.AdamW(model.parameters(), 2e-5)
    precision = resolve_precision("auto", "cpu")
    encoded = TextEncoder.from_dir(model_dir, 64).encode(workload("cola", 32))
    input_ids, attention_mask = (torch.from_numpy(a) for a in encoded.pad(list(range(32))))

    def step() -> None:
        with autocast("cpu", precision):
            loss = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(min(3, steps)):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    print(json.dumps({"torch_threads": torch.get_num_threads(), "precision": precision,
                      "ms_per_step": 1000 * (time.perf_counter() - started) / steps}))


@contextmanager
def quota_cgroup(cpus: float):
    """A fresh cgroup allowing `cpus` CPUs' time; yields the file a child writes its pid to, or a reason."""
    name = f"scorer-bench-{os.getpid()}"
    v2_controllers = CGROUP_V2 / "cgroup.subtree_control"
    if (CGROUP_V1 / "cpu.cfs_quota_us").is_file():
        directory, files = CGROUP_V1 / name, {"cpu.cfs_quota_us": str(int(cpus * 100000))}
    elif v2_controllers.is_file() and "cpu" in v2_controllers.read_text().split():
        directory, files = CGROUP_V2 / name, {"cpu.max": f"{int(cpus * 100000)} 100000"}
    else:
        yield None, "no cgroup v1 cpu controller or cgroup v2 hierarchy with cpu enabled here"
        return
    try:
        directory.mkdir()
        for file, value in files.items():
            (directory / file).write_text(value)
    except OSError as exc:
        yield None, f"cannot make a cgroup with a CPU quota here ({exc.strerror}; needs root)"
        return
    try:
        yield directory / "cgroup.procs", None
    finally:
        directory.rmdir()


def child(command: list[str], cores: set[int] | None, procs: Path | None) -> subprocess.CompletedProcess:
    """Run `command` under the limit: an affinity (`cores`) or a cgroup (its `procs` file)."""
    def limit() -> None:
        if cores is not None:
            os.sched_setaffinity(0, cores)
        if procs is not None:
            procs.write_text(str(os.getpid()))

    return subprocess.run(command, check=True, preexec_fn=limit, capture_output=True, text=True)


def measure(limit: str, cores: set[int] | None, procs: Path | None, args, work: Path) -> dict:
    machine_cores = os.cpu_count() or 1
    scoring = {"machine-count": [], "usable-cores": []}
    training = {"machine-count": [], "usable-cores": []}
    for _ in range(args.repeats):
        for way in scoring:
            out = work / f"{way}.parquet"
            command = [sys.executable, "-m", "scorer", "run", str(work / "in.parquet"), "--model", str(args.export),
                       "--provider", "cpu", "--output", str(out), "--overwrite", "--quiet"]
            if way == "machine-count":
                command += ["--cpu-threads", str(machine_cores)]
            started = time.perf_counter()
            child(command, cores, procs)
            seconds = time.perf_counter() - started
            summary = json.loads(Path(f"{out}.summary.json").read_text())
            scoring[way].append({"seconds": seconds, "rows_per_second": summary["rows_per_second"],
                                 "cpu_threads": summary["cpu_threads"]})
        for way in training:
            if args.steps:
                fit = "1" if way == "usable-cores" else "0"
                done = child([sys.executable, __file__, "--child-train", str(args.steps), fit, str(args.model)],
                             cores, procs)
                training[way].append(json.loads(done.stdout.strip().splitlines()[-1]))
    best = {way: max(r["rows_per_second"] for r in runs) for way, runs in scoring.items()}
    result = {"limit": limit, "scoring": scoring, "scoring_speedup": best["usable-cores"] / best["machine-count"]}
    if args.steps:
        fastest = {way: min(r["ms_per_step"] for r in runs) for way, runs in training.items()}
        result.update(training=training, training_speedup=fastest["machine-count"] / fastest["usable-cores"])
    print(json.dumps({k: v for k, v in result.items() if k.endswith("speedup") or k == "limit"}), flush=True)
    return result


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child-train":
        train_steps(int(sys.argv[2]), sys.argv[3] == "1", Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, required=True, help="an export directory (the CoLA model, say)")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15, help="training steps timed per child (0: no training)")
    parser.add_argument("--model", type=Path, default=None,
                        help="the encoder trained, a Hugging Face model directory (default: the packaged MiniLM)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/cpu-limits.json"))
    args = parser.parse_args()
    if args.model is None:
        from scorer.packaged import packaged_model
        args.model = packaged_model()
    results = {"machine": machine(), "rows": args.rows, "steps": args.steps, "model": str(args.model), "limits": []}
    print(json.dumps(results["machine"]), flush=True)
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        pq.write_table(pa.table({"sentence": workload("cola", args.rows)}), work / "in.parquet")
        results["limits"].append(measure("affinity: 1 core", {0}, None, args, work))
        with quota_cgroup(1.0) as (procs, why):
            if procs is None:
                print(f"cgroup quota: skipped, {why}")
                results["limits"].append({"limit": "cgroup quota: 1 CPU", "skipped": why})
            else:
                results["limits"].append(measure("cgroup quota: 1 CPU", None, procs, args, work))
    write_json(args.out, results)


if __name__ == "__main__":
    main()
