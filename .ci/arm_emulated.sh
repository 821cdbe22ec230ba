#!/usr/bin/env bash
# scorer's scoring-only install on ARM (aarch64), checked under emulation: a Debian 12 arm64 system run by
# qemu-user scores INPUT with the export MODEL_DIR, and its output is compared, column for column, with this
# machine's scoring of the same input. By hand, as root, on an x86-64 Debian or Ubuntu machine; not part of .ci/run
# (about 20 minutes on a 2-core box the first time, mostly building the arm64 system, which is kept for the next run;
# then the scoring itself, emulated: about 3 CoLA rows/s for MiniLM in fp32).
#
#   bash .ci/arm_emulated.sh MODEL_DIR INPUT [scorer run options, e.g. --variant int8]
#
# Needs debootstrap and qemu-user-static (apt install debootstrap qemu-user-static), scorer installed in the Python
# this runs (`python`, or $PYTHON: the x86 side, and the wheel's builder) and the package registries. The arm64
# system lives in $ARM_ROOT (default /var/tmp/scorer-arm64). Prints one JSON line; exit 1 where the outputs differ in
# rows, columns, carried values or statuses, in a score by more than 0.05, or in more than 0.5% of labels.
#
# Under qemu-user, ONNX Runtime's import crashes (signal 11, no message) while /proc/cpuinfo describes the x86 host,
# as qemu 7.2 shows it; an ARM Neoverse-N1's description is bound over it for the run.
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '8p' "$0" >&2; exit 2; fi
model=$(realpath "$1"); input=$(realpath "$2"); shift 2
root=${ARM_ROOT:-/var/tmp/scorer-arm64}
python=${PYTHON:-python}
checkout=$(realpath "$(dirname "$0")/..")
work=$(mktemp -d)
cleanup() {
  for m in proc/cpuinfo proc sys dev; do umount -R -l "$root/$m" 2>/dev/null || true; done
  rm -rf "$work" "$root/work"
}
trap cleanup EXIT

if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
fi
if [ ! -x "$root/opt/v/bin/python" ]; then
  if [ -e "$root" ]; then echo "$root is there but holds no finished arm64 system: remove it, or set ARM_ROOT" >&2; exit 2; fi
  echo "building the arm64 system in $root (its log: $root.log)" >&2
  debootstrap --arch=arm64 --foreign --include=python3,python3-venv,ca-certificates bookworm "$root" \
    http://deb.debian.org/debian > "$root.log" 2>&1
  chroot "$root" /debootstrap/debootstrap --second-stage >> "$root.log" 2>&1
  # This machine's own certificate authorities (a registry behind a proxy), as the arm64 system's.
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$root" update-ca-certificates > /dev/null 2>&1
  chroot "$root" python3 -m venv /opt/v
fi

mount -t proc proc "$root/proc"
for m in sys dev; do mount --rbind "/$m" "$root/$m"; mount --make-rslave "$root/$m"; done
for cpu in 0 1; do
  printf 'processor\t: %s\nBogoMIPS\t: 243.75\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\n' \
    "$cpu" "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs"
  printf 'CPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n'
done > "$work/cpuinfo"
mount --bind "$work/cpuinfo" "$root/proc/cpuinfo"
cp /etc/resolv.conf "$root/etc/resolv.conf"

"$python" -m pip wheel -q --no-deps -w "$work/dist" "$checkout"
mkdir -p "$root/work/input"
cp "$work"/dist/scorer-*.whl "$root/work/"
cp -r "$model" "$root/work/model"
cp "$input" "$root/work/input/"
wheel=/work/$(basename "$work"/dist/scorer-*.whl)
in_chroot() { chroot "$root" env -i PATH=/opt/v/bin:/usr/bin:/bin HOME=/root "$@"; }
in_chroot pip install -q "${wheel}[cpu]"
in_chroot pip install -q --force-reinstall --no-deps "$wheel"

"$python" -m scorer run "$input" --model "$model" --provider cpu --quiet -o "$work/x86.parquet" "$@"
in_chroot scorer run "/work/input/$(basename "$input")" --model /work/model --provider cpu --quiet \
  -o /work/arm.parquet "$@"

"$python" - "$work/x86.parquet" "$root/work/arm.parquet" "$(in_chroot python -c 'import platform, onnxruntime;
print(platform.machine(), onnxruntime.__version__)')" <<'EOF'
import json
import sys

import numpy as np
import pyarrow.parquet as pq

x86, arm = (pq.read_table(path) for path in sys.argv[1:3])
result = {"arm": sys.argv[3], "rows": [x86.num_rows, arm.num_rows], "same_columns": x86.schema == arm.schema}
ok = result["same_columns"] and x86.num_rows == arm.num_rows
if ok:
    # Scores and probabilities within the self-check's int8 allowance (0.05, on logits), predicted labels on 99.5% of
    # rows (int8's integer kernels differ between the instruction sets), every other column equal.
    for name in x86.column_names:
        if name == "pred_score" or name.startswith("prob_"):  # (a row not scored: null, NaN here)
            a, b = (table[name].to_numpy(zero_copy_only=False) for table in (x86, arm))
            diff = result[f"{name}_max_abs_diff"] = float(np.nanmax(np.abs(a - b), initial=0.0))
            ok = ok and diff <= 0.05 and bool((np.isnan(a) == np.isnan(b)).all())
        elif name == "pred_label":
            pairs = zip(x86[name].to_pylist(), arm[name].to_pylist(), strict=True)
            agreement = result["pred_label_agreement"] = float(np.mean([a == b for a, b in pairs] or [True]))
            ok = ok and agreement >= 0.995
        else:
            same = result[f"{name}_equal"] = x86[name].equals(arm[name])
            ok = ok and same
result["ok"] = bool(ok)
print(json.dumps(result))
sys.exit(0 if ok else 1)
EOF
