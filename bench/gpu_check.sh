#!/usr/bin/env bash
# Every GPU measurement in one go, on the GPU test machine (Python 3.12, torch, no registry), after
# bench/gpu_prepare.sh and the four earlier `run` calls that left the wheel parts in /tmp/keep (see that script).
# Each step has its own time limit and log under $OUT; one failing step does not stop the others.
set -uo pipefail
out=${OUT:-bench/out/gpu}
mkdir -p "$out"
cat /tmp/keep/ortpart.* > /tmp/keep/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/keep/*.whl
export PYTHONPATH=$PWD:$PWD/bench:/tmp/site
export SCORER_TOKENIZER_DIR=$PWD/.devcarry/minilm SCORER_COLA_DIR=$PWD/.devcarry/cola

step() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "exit $?" >> "$out/$name.log"
  tail -n 12 "$out/$name.log"
}

step env 30 python3 -c "import torch, onnxruntime as o; o.preload_dlls(); print(torch.cuda.get_device_name(), \
torch.__version__, o.__version__, o.get_available_providers())"
step pytest-gpu 90 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
step scoring-cola 150 python3 bench/scoring.py --device cuda --random bert-base --random-dir /tmp/random-bert --workloads cola --rows 200000 \
  --baseline-rows 20000 --variants fp16,fp16:plain,fp32 --out "$out/scoring-cola.json"
step scoring-long128 80 python3 bench/scoring.py --device cuda --random bert-base --random-dir /tmp/random-bert --workloads long128 \
  --rows 20000 --baseline-rows 4000 --variants fp16,fp16:plain --out "$out/scoring-long128.json"
step gpu-memory-1m 70 python3 bench/scoring.py --device cuda --random bert-base --random-dir /tmp/random-bert --workloads cola --rows 1000000 \
  --baseline-rows 1000 --variants fp16 --out "$out/gpu-memory-1m.json"
step train-speed 120 python3 bench/train_speed.py --device cuda --models bert-base,minilm --epochs 4 \
  --out "$out/train-speed.json"
ls -la "$out"
