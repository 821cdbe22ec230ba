"""Each install pyproject offers resolves to wheels, with no build from source, on the oldest Python its
requires-python allows and on the newest Python released, for Linux with glibc 2.28 (manylinux_2_28: the oldest
the README promises; onnxruntime 1.31 has no wheel for older ones, such as Amazon Linux 2's 2.26).

pyproject said Python 3.10 or newer while onnxruntime, from 1.24 on, ships no wheel for 3.10: on Ubuntu 22.04's
Python, `pip install ".[cpu]"` failed with "No matching distribution found for onnxruntime>=1.31". pip resolves here
as it would on such a machine (`--python-version`, `--platform`), downloading only what it must to decide.
The newest Python is checked for the scoring installs only: resolving PyTorch's wheels for a Python whose PyTorch
wheel is not on this machine's disk downloads gigabytes. The scoring-only install is checked on ARM (aarch64) too,
as a Graviton or Ampere nightly box would run it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

NEWEST_PYTHON = "3.14"
GLIBC_MINORS = (17, 24, 27, 28)  # (pip takes exactly the platform tags given, not the older ones they admit)


def main() -> int:
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    oldest = project["requires-python"].removeprefix(">=")
    base, extras = project["dependencies"], project["optional-dependencies"]
    checks = [(oldest, extra, "x86_64") for extra in ("cpu", "gpu", "train")]
    checks += [(NEWEST_PYTHON, extra, "x86_64") for extra in ("cpu", "gpu")]
    checks += [(python, "cpu", "aarch64") for python in (oldest, NEWEST_PYTHON)]
    failed = []
    for python, extra, machine in checks:
        wanted = base + extras[extra] + (extras["cpu"] if extra == "train" else [])
        platforms = [f"--platform=manylinux_2_{minor}_{machine}" for minor in GLIBC_MINORS]
        with tempfile.TemporaryDirectory() as target:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                 "--only-binary=:all:", "--python-version", python, *platforms, f"--platform=manylinux2014_{machine}",
                 "--target", target, *wanted], capture_output=True, text=True)
        said = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        name = f"Python {python} on {machine}, [{extra}]"
        print(f"{name}: {'resolves' if done.returncode == 0 else 'FAILS'}", *said, sep="\n  ")
        if done.returncode:
            failed.append(name)
    if failed:
        print(f"no wheels for {'; '.join(failed)}: raise requires-python or the floors in pyproject.toml",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
