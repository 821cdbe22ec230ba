"""How fast scorer writes a scored CoLA table as CSV/TSV, plain and compressed (gzip, zstd, bz2, lz4), against
pyarrow's own gzip stream (level 9) as the baseline, in one process: rows/s on the writer thread's one core, and
the file size. A compressed output must not hold back a GPU run that scores 100k+ rows/s.

    python bench/output_codecs.py --rows 200000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_json
from scoring import workload

from scorer.data.csvlint import codec_of
from scorer.data.delimited import DelimitedWriter


def scored_table(rows: int) -> pa.Table:
    """CoLA sentences as `scorer run` writes them: an id, the text, the label, score and status columns."""
    rng = np.random.default_rng(0)
    return pa.table({"id": np.arange(rows), "sentence": workload("cola", rows), "label": rng.integers(0, 2, rows),
                     "score": rng.random(rows, dtype=np.float32), "status": pa.array(["ok"] * rows)})


def timed(write, path: Path, repeats: int) -> dict:
    seconds = []
    for _ in range(repeats):
        path.unlink(missing_ok=True)
        started = time.perf_counter()
        write(path)
        seconds.append(time.perf_counter() - started)
    return {"seconds": min(seconds), "bytes": path.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window-rows", type=int, default=65_536, help="Rows per write, as run writes windows.")
    parser.add_argument("--out", type=Path, default=Path("bench/out/output-codecs.json"))
    args = parser.parse_args()
    table = scored_table(args.rows)
    windows = [table.slice(start, args.window_rows) for start in range(0, args.rows, args.window_rows)]

    def scorer_way(path: Path) -> None:
        fmt = "tsv" if ".tsv" in path.name else "csv"
        writer = DelimitedWriter(path, fmt, table.schema, path, codec_of(path))
        for window in windows:
            writer.write_table(window)
        writer.close()

    def pyarrow_gzip(path: Path) -> None:  # (the baseline: pyarrow's compressed stream, gzip level 9)
        with pa.output_stream(str(path), compression="gzip") as stream, pacsv.CSVWriter(stream, table.schema) as w:
            for window in windows:
                w.write_table(window)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results["pyarrow-gzip-9 (baseline)"] = timed(pyarrow_gzip, tmp / "base.csv.gz", args.repeats)
        for name in ("out.csv", "out.csv.gz", "out.csv.zst", "out.csv.bz2", "out.csv.lz4", "out.tsv", "out.tsv.gz"):
            results[name.removeprefix("out.")] = timed(scorer_way, tmp / name, args.repeats)
    for row in results.values():
        row["rows_per_second"] = args.rows / row["seconds"]
    info = machine()
    print(f"{info['processor']}, {info['cores']} cores; {args.rows:,} CoLA rows in windows of {args.window_rows:,}")
    for name, row in results.items():
        print(f"{name:28s} {row['rows_per_second']:>12,.0f} rows/s {row['bytes'] / 1e6:>8.1f} MB")
    write_json(args.out, {"machine": info, "rows": args.rows, "window_rows": args.window_rows, "results": results})


if __name__ == "__main__":
    main()
