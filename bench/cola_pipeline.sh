#!/usr/bin/env bash
# The main job on real data with default settings: train on CoLA train, validate on dev, export with parity on
# dev, score a Parquet copy of dev with a PyTorch cross-check. Everything lands in ${OUT:-bench/out/cola}.
# Usage: bash bench/cola_pipeline.sh [extra `scorer train` options...]
set -euo pipefail
cola=${SCORER_COLA_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data/cola}
out=${OUT:-bench/out/cola}
mkdir -p "$out"
python - "$cola/dev.tsv" "$out/dev.parquet" <<'PY'
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from scorer.data.read import TableReader

table = pa.concat_tables(TableReader(sys.argv[1]).batches(100_000))
pq.write_table(table.set_column(1, "label", table.column("label").cast(pa.int64())), sys.argv[2])
PY
timed() { local name=$1; shift; local start=$SECONDS; "$@" 2>&1 | tee "$out/$name.log"; echo "$name: $((SECONDS - start))s" | tee -a "$out/times.txt"; }
: > "$out/times.txt"
timed train scorer train --data "$cola/train.tsv" --val-data "$cola/dev.tsv" --output "$out/checkpoint" --overwrite "$@"
timed export scorer export --checkpoint "$out/checkpoint" --output "$out/onnx" --data "$cola/dev.tsv" --overwrite
timed run scorer run "$out/dev.parquet" --model "$out/onnx" --provider cpu --check 100 --samples 10 \
  --report "$out/dev-report.md" --overwrite
