"""Peak memory of `scorer run` against input size: it should be set by the window, not by the file.

    python bench/memory.py --rows 100000,300000,1000000 [--row-group-rows N] [--texts cola|long] [--export DIR]
                           [--huge-cell-mib M] [--out FILE]

Writes Parquet files of CoLA-like sentences (../shared/data/cola, or generated text when it is absent), scores
each in a fresh process (`scorer run --provider cpu --variant fp32`), and records the child's peak RSS (/proc
VmHWM). `--row-group-rows 0` writes each file as one row group, as pandas and pyarrow do up to 1M rows;
`--huge-cell-mib M` puts one text of M MiB (the same words run together; with `--huge-cell-kind base64` an
embedded file's base64, without a space; `hex`, its hex digits: one giant word; `cjk`, Chinese characters
without a space) in the middle of each file. Without --export it builds a tiny random-weight BERT export, since
memory is a property of the pipeline, not of the model's size (the model's own memory is constant).
"""

from __future__ import annotations

import argparse
import base64
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import COLA, machine, random_bert, write_json


def long_texts() -> list[str]:
    """5,000 texts of 20-60 words (about 200 characters): rows five times CoLA's size."""
    words = ["the", "cat", "dog", "ran", "sat", "on", "a", "mat", "with", "big", "small", "red", "blue", "over",
             "under", "quickly", "slowly", "house", "tree", "river"]
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(words, rng.integers(20, 61))) for _ in range(5000)]


def sentences() -> list[str]:
    if (COLA / "train.tsv").is_file():
        return [line.split("\t")[0] for line in (COLA / "train.tsv").read_text().splitlines()[1:]]
    words = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "tree", "quickly", "big", "red"]
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(words, rng.integers(4, 20))) for _ in range(5000)]


def huge_text(pool: list[str], mib: float, kind: str = "words") -> str:
    """One text of about `mib` MiB: the pool's texts, in a seeded order, run together with spaces; or base64 of
    seeded random bytes (an embedded file), which has no space at all; or their hex digits, one giant word; or
    seeded CJK ideographs (U+4E00 to U+62FF, three bytes each in UTF-8) without a space, as Chinese is written."""
    rng, parts, size = np.random.default_rng(1), [], 0
    if kind == "cjk":
        return "".join(map(chr, rng.integers(0x4E00, 0x6300, int(mib * 2**20 / 3))))
    if kind == "base64":
        return base64.b64encode(rng.bytes(int(mib * 2**20 * 3 / 4))).decode()
    if kind == "hex":
        return rng.bytes(int(mib * 2**20 / 2)).hex()
    while size < mib * 2**20:
        parts.append(pool[int(rng.integers(len(pool)))])
        size += len(parts[-1]) + 1
    return " ".join(parts)


def tiny_export(directory: Path) -> Path:
    """A 2-layer random BERT trained for one epoch on the packaged examples, then exported."""
    from export.pipeline import export_model
    from scorer.config import ExportConfig, TrainConfig
    from scorer.training.train import train

    encoder = random_bert(directory / "encoder", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64)
    train(TrainConfig(model=encoder, output=directory / "checkpoint", epochs=1), progress=False)
    export_model(ExportConfig(checkpoint=directory / "checkpoint", output=directory / "onnx", variants=("fp32",)))
    return directory / "onnx"


def measure(source: Path, export: Path, output: Path) -> dict:
    """Run `scorer run` in a child process; sample its RSS, and its high-water mark (VmHWM), every 0.2 s.

    getrusage's ru_maxrss would count the parent's pages the child held between fork and exec, so /proc is read.
    """
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "scorer.cli", "run", str(source), "--model", str(export),
                              "-o", str(output), "--provider", "cpu", "--variant", "fp32", "--quiet", "--overwrite"])
    peak, series = 0, []
    while child.poll() is None:
        status = _proc_status(child.pid)
        if "VmHWM" in status:
            peak = max(peak, status["VmHWM"])
            series.append((round(time.perf_counter() - started, 1), status["VmRSS"] // 1024))
        time.sleep(0.2)
    if child.returncode:
        raise SystemExit(f"scorer run failed with exit code {child.returncode}")
    return {"seconds": time.perf_counter() - started, "peak_rss_mib": peak / 1024,
            "rss_mib_over_time": series[:: max(1, len(series) // 50)]}


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process in KiB (empty once it has gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {line.split(":")[0]: int(line.split()[1]) for line in lines if line.startswith(("VmRSS", "VmHWM"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,300000,1000000")
    parser.add_argument("--row-group-rows", type=int, default=50_000, help="0: the whole file in one row group")
    parser.add_argument("--texts", choices=["cola", "long"], default="cola", help="long: 20-60 words a row")
    parser.add_argument("--huge-cell-mib", type=float, default=0, help="one text of this many MiB in each file")
    parser.add_argument("--huge-cell-kind", choices=["words", "base64", "hex", "cjk"], default="words",
                        help="the huge text: sentences run together, or base64 of random bytes (no space at all), "
                             "or their hex digits (one word), or CJK characters without a space")
    parser.add_argument("--export", type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench/out/memory.json"))
    args = parser.parse_args()
    pool = long_texts() if args.texts == "long" else sentences()
    results = {"machine": machine(), "row_group_rows": args.row_group_rows or "whole file", "texts": args.texts,
               "huge_cell_mib": args.huge_cell_mib, "huge_cell_kind": args.huge_cell_kind, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        export = args.export or tiny_export(tmp_path)
        for rows in sorted(int(r) for r in args.rows.split(",")):
            rng = np.random.default_rng(rows)
            source = tmp_path / f"input-{rows}.parquet"
            texts = [pool[i] for i in rng.integers(0, len(pool), rows)]
            if args.huge_cell_mib:
                texts[rows // 2] = huge_text(pool, args.huge_cell_mib, args.huge_cell_kind)
            pq.write_table(pa.table({"id": np.arange(rows), "sentence": texts}), source,
                           row_group_size=args.row_group_rows or rows)
            figures = measure(source, export, tmp_path / f"out-{rows}.parquet")
            figures.update(rows=rows, input_mib=source.stat().st_size / 2**20,
                           output_rows=pq.ParquetFile(tmp_path / f"out-{rows}.parquet").metadata.num_rows)
            results["runs"].append(figures)
            print(f"{rows:>9,} rows: peak RSS {figures['peak_rss_mib']:.0f} MiB, {figures['seconds']:.1f}s, "
                  f"input {figures['input_mib']:.1f} MiB", flush=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
