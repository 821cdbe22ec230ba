#!/usr/bin/env bash
# On this (CPU) machine, before a GPU session: everything the GPU test machine lacks, as ignored folders for the
# device tool's `carry`. .devwheels/p0..p4: onnxruntime-gpu in five parts (../shared/device/ort-gpu-wheel.sh).
# .devcarry/: the packaged MiniLM in fp16 (44 MiB, with its tokenizer) and the CoLA files (never committed).
# Then, in five back-to-back `run` calls:
#   p0..p3: carry [".devwheels/pN"], command: mkdir -p /tmp/keep && cp .devwheels/pN/* /tmp/keep/
#   p4:     carry [".devwheels/p4", ".devcarry"], command: mkdir -p /tmp/keep && cp .devwheels/p4/* /tmp/keep/ &&
#           bash bench/gpu_check.sh
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
bash ../shared/device/ort-gpu-wheel.sh
grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >> .git/info/exclude
rm -rf .devcarry && mkdir -p .devcarry/minilm .devcarry/cola
cp ../shared/data/cola/*.tsv .devcarry/cola/
python - <<'PY'
import shutil
import torch
from transformers import AutoModel
from scorer.config import packaged_model

source = packaged_model()
AutoModel.from_pretrained(str(source), dtype=torch.float16).save_pretrained(".devcarry/minilm")
for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(source / name, f".devcarry/minilm/{name}")
PY
du -sh .devwheels/p* .devcarry
