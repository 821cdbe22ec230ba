"""What of the machine this process may use: its cores (its CPU affinity, as taskset, a cpuset or a batch scheduler
sets, and its cgroup's CPU quota, as docker --cpus or a Kubernetes CPU limit sets) and its memory (the machine's
available memory and its cgroup's memory limit). os.cpu_count() and /proc/meminfo count the machine's: threads
sized by them on a 64-core host for a job limited to 2 cores spin against each other and are throttled, and work
sized by them in a container limited to 8 GiB is killed by the kernel without a word. And which CPU and GPU it has,
as far as export's timings care: its int8-or-fp32 choice is a measurement on one CPU, its fp16 graph's kernels and
run mode one on one GPU."""

from __future__ import annotations

import functools
import math
import os
import platform
import resource
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

_PROC = Path("/proc/self")
_NO_LIMIT = 1 << 60  # (cgroup v1 writes "no limit" as about 2**63 rounded to pages)
# The CPU extensions ONNX Runtime's int8 matrix kernels (MLAS) choose between: on x86 AVX2, AVX-512 and their VNNI dot
# products and AMX tiles; on ARM the dot-product and matrix-multiply instructions and SVE. Two CPUs that differ in
# them run an int8 graph at different speeds against fp32.
INT8_EXTENSIONS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve", "svei8mm")
# One name per architecture: Windows says AMD64 for x86_64, macOS arm64 for aarch64.
ARCHITECTURES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}
# An ARM /proc/cpuinfo names no model, only its implementer and part (as Linux's arch/arm64 cputype.h and lscpu
# know them): the cloud's ARM cores by name (Graviton 2-4 and Grace are Neoverse cores), others by their codes.
ARM_IMPLEMENTERS = {"0x41": "ARM", "0xc0": "Ampere", "0x61": "Apple", "0x4e": "NVIDIA", "0x51": "Qualcomm",
                    "0x48": "HiSilicon"}
ARM_PARTS = {("0x41", "0xd0c"): "Neoverse-N1", ("0x41", "0xd40"): "Neoverse-V1", ("0x41", "0xd49"): "Neoverse-N2",
             ("0x41", "0xd4f"): "Neoverse-V2", ("0xc0", "0xac3"): "Ampere-1", ("0xc0", "0xac4"): "Ampere-1a"}


@functools.cache
def usable_cores() -> int:
    """The cores this process may use (at least 1): found once per process."""
    cores = _affinity()
    quota = cgroup_cpu_limit()
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # (not on Linux)
        return os.cpu_count() or 1


def usable_memory(proc: Path = _PROC, meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes a new allocation may take now: the machine's available memory (Linux's MemAvailable, which counts
    reclaimable caches), lowered to what this process's cgroups' memory limits leave; None where neither is known."""
    try:
        line = next(line for line in meminfo.read_text().splitlines() if line.startswith("MemAvailable"))
        machine = int(line.split()[1]) * 1024
    except (OSError, StopIteration, ValueError, IndexError):
        machine = None
    return min((known for known in (machine, cgroup_memory_room(proc)) if known is not None), default=None)


def memory_said() -> str:
    """What this process may use of memory, in words, for an out-of-memory message: what is available to it, and its
    address-space limit where one is set (ulimit -v, as some batch schedulers set: a model that loads in 1 GB of
    memory can need more of address space); "no memory figure known" where neither is."""
    said = []
    room = usable_memory()
    if room is not None:
        said.append(f"{room / 2**30:.1f} GiB of memory available to this process")
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY:
        said.append(f"its address space limited to {soft / 2**30:.2f} GiB (ulimit -v)")
    return ", ".join(said) or "no memory figure known"


def cgroup_cpu_limit(proc: Path = _PROC) -> float | None:
    """The CPUs' worth of time this process's cgroups allow it (the lowest quota from its own cgroup up: cgroup v2's
    cpu.max, v1's cpu.cfs_quota_us over cpu.cfs_period_us); None where there is no limit or none can be read."""
    return min(_over_cgroups(proc, "cpu", _cpu_limit_of), default=None)


def cgroup_memory_room(proc: Path = _PROC) -> int | None:
    """Bytes this process's cgroups' memory limits leave (the least from its own cgroup up: the limit less what the
    cgroup uses, counting its inactive file cache, which the kernel reclaims before it kills, as free); None where
    there is no limit or none can be read."""
    return min(_over_cgroups(proc, "memory", _memory_room_of), default=None)


def _over_cgroups(proc: Path, controller: str, read: Callable[[Path, int], float | None]) -> list:
    """What `read` finds in each cgroup directory of `controller` from this process's cgroup up to its hierarchy's
    mount (cgroup v2, and v1 where a hierarchy holds `controller`)."""
    try:
        memberships = (proc / "cgroup").read_text().splitlines()
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return []
    found = []
    for mount_root, mount_point, version in _mounts(mounts, controller):
        for line in memberships:
            hierarchy, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if (version == 2 and hierarchy == "0" and controllers == "") or \
                    (version == 1 and controller in controllers.split(",")):
                parts = [part for part in _relative(path, mount_root).split("/") if part]
                for depth in range(len(parts), -1, -1):
                    value = read(Path(mount_point).joinpath(*parts[:depth]), version)
                    if value is not None:
                        found.append(value)
    return found


def _mounts(mounts: list[str], controller: str) -> list[tuple[str, str, int]]:
    """(root, mount point, version) of each cgroup hierarchy mounted that may hold `controller`, from mountinfo lines
    ("36 35 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct")."""
    found = []
    for line in mounts:
        mine, _, theirs = line.partition(" - ")
        fields, kind = mine.split(), theirs.split()
        if len(fields) < 5 or not kind:
            continue
        root, point = (_unescape(field) for field in fields[3:5])
        if kind[0] == "cgroup2" or (kind[0] == "cgroup" and len(kind) > 2 and controller in kind[2].split(",")):
            found.append((root, point, 2 if kind[0] == "cgroup2" else 1))
    return found


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline or backslash in a path as an octal escape (\\040)."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def _relative(path: str, mount_root: str) -> str:
    """A cgroup's path below its hierarchy's mount: "" where the mount is the process's own cgroup (a container)."""
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root.rstrip("/") + "/")):
        path = path[len(mount_root):]
    return path.strip("/")


def _cpu_limit_of(directory: Path, version: int) -> float | None:
    try:
        if version == 2:
            quota, _, period = (directory / "cpu.max").read_text().strip().partition(" ")
        else:
            quota = (directory / "cpu.cfs_quota_us").read_text().strip()
            period = (directory / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1") or int(quota) <= 0:
            return None
        return int(quota) / int(period or 100000)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _memory_room_of(directory: Path, version: int) -> int | None:
    names = ("memory.max", "memory.current", "inactive_file") if version == 2 else \
        ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
    try:
        limit = (directory / names[0]).read_text().strip()
        if limit == "max" or int(limit) >= _NO_LIMIT:
            return None
        used = int((directory / names[1]).read_text())
        stat = dict(line.split() for line in (directory / "memory.stat").read_text().splitlines() if " " in line)
        return max(0, int(limit) - used + int(stat.get(names[2], stat.get("inactive_file", 0))))
    except (OSError, ValueError):
        return None


def fit_arrow_threads() -> None:
    """Arrow's CPU thread pool (Parquet's and CSV's decoding, compute functions) lowered to the usable cores: it
    counts the affinity but not a cgroup's quota. Never raised (OMP_NUM_THREADS or pyarrow.set_cpu_count set lower
    stays)."""
    import pyarrow

    if pyarrow.cpu_count() > usable_cores():
        pyarrow.set_cpu_count(usable_cores())


def fit_torch_threads() -> None:
    """PyTorch's intra-op threads lowered to the usable cores: it counts affinity but not a cgroup's quota (a 1-CPU
    quota on 2 cores: a MiniLM training step 1.23x as fast with 1 thread as with 2, bench/RESULTS.md 3.6). Never
    raised: OMP_NUM_THREADS or torch.set_num_threads set lower stays."""
    import torch

    if torch.get_num_threads() > usable_cores():
        torch.set_num_threads(usable_cores())


@functools.cache
def cpu_identity() -> dict:
    """This machine's CPU (cpu_of: its architecture, name and int8 extensions), read once per process."""
    return cpu_of(Path("/proc/cpuinfo"), platform.machine())


def cpu_of(cpuinfo: Path, machine: str, processor: Callable[[], str] = platform.processor) -> dict:
    """{"machine": x86_64 or aarch64..., "name": the CPU's model name, "int8": the INT8_EXTENSIONS it has (null where
    its flags cannot be read: not Linux)}. `processor` names it where `cpuinfo` does not (asked only then: on Linux
    Python runs `uname -p` for it)."""
    first = _first_fields(cpuinfo)
    name = first.get("model name") or (_arm_name(first.get("CPU implementer", "?"), first["CPU part"])
                                       if "CPU part" in first else processor() or machine)
    flags = _flags(first)
    int8 = None if flags is None else [flag for flag in INT8_EXTENSIONS if flag in flags]
    return {"machine": ARCHITECTURES.get(machine.lower(), machine), "name": name, "int8": int8}


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """This machine's CPU flags as /proc/cpuinfo lists them (x86's `flags`, ARM's `Features`); None where it cannot
    be read (not Linux)."""
    return _flags(_first_fields(Path("/proc/cpuinfo")))


def _first_fields(cpuinfo: Path) -> dict[str, str]:
    """Each field of `cpuinfo` as its first processor gives it."""
    first: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            first.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return first


def _flags(fields: dict[str, str]) -> frozenset[str] | None:
    flags = fields.get("flags", fields.get("Features"))
    return None if flags is None else frozenset(flags.split())


@functools.cache
def gpu_identity() -> str | None:
    """This machine's NVIDIA GPU model (gpu_of), found once per process."""
    return gpu_of(Path("/proc/driver/nvidia/gpus"))


def gpu_of(gpus: Path, smi: str = "nvidia-smi") -> str | None:
    """The model of the NVIDIA GPUs the driver lists ("NVIDIA H100 80GB HBM3"), their models joined with " + " where
    they differ; None where none is listed. From each GPU's `information` file under `gpus` (/proc/driver/nvidia/gpus,
    there wherever the driver is loaded, torch or not), else from `nvidia-smi` where it is on PATH."""
    models = set()
    try:
        for information in gpus.glob("*/information"):
            for line in information.read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "Model" and value.strip():
                    models.add(value.strip())
    except OSError:
        pass
    if not models and shutil.which(smi):
        try:
            listed = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                    text=True, timeout=20, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            listed = ""
        models = {line.strip() for line in listed.splitlines() if line.strip()}
    return " + ".join(sorted(models)) or None


def _arm_name(implementer: str, part: str) -> str:
    maker = ARM_IMPLEMENTERS.get(implementer.lower())
    core = ARM_PARTS.get((implementer.lower(), part.lower()))
    if maker is None:
        return f"CPU part {part} of implementer {implementer}"
    return f"{maker} {core}" if core else f"{maker} CPU part {part}"


def cpu_said(cpu: dict) -> str:
    """A CPU of cpu_of in words: "AMD EPYC (x86_64: avx2 avx512bw avx512_vnni)"."""
    extensions = "int8 extensions unknown" if cpu.get("int8") is None else " ".join(cpu["int8"]) or "no int8 extensions"
    return f"{cpu.get('name')} ({cpu.get('machine')}: {extensions})"


def int8_kernels_differ(recorded: dict, here: dict) -> bool:
    """Whether ONNX Runtime's int8 kernels may run differently on CPU `here` than on `recorded` (both of cpu_of): an
    other architecture, or other int8 extensions where both are known."""
    if recorded.get("machine") != here.get("machine"):
        return True
    known = recorded.get("int8") is not None and here.get("int8") is not None
    return known and set(recorded["int8"]) != set(here["int8"])
