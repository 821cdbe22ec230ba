"""How many cores this process may use: the CPUs it may run on (its affinity: taskset, a cpuset, a batch scheduler's
allocation) and its cgroup's CPU quota (docker --cpus, a Kubernetes CPU limit). os.cpu_count() counts the machine's:
threads sized by it on a 64-core host for a job limited to 2 cores spin against each other and are throttled."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path


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


def cgroup_cpu_limit(proc: Path = Path("/proc/self")) -> float | None:
    """The CPUs' worth of time this process's cgroups allow it (the lowest quota from its own cgroup up to the
    hierarchy's root that it can see), for cgroup v2 (cpu.max) and v1 (cpu.cfs_quota_us over cpu.cfs_period_us);
    None where there is no limit or none can be read."""
    try:
        memberships = (proc / "cgroup").read_text().splitlines()
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    limits = []
    for mount_root, mount_point, version in _cpu_mounts(mounts):
        for line in memberships:
            hierarchy, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if (version == 2 and hierarchy == "0" and controllers == "") or \
                    (version == 1 and "cpu" in controllers.split(",")):
                limits += _limits_up_from(Path(mount_point), _relative(path, mount_root), version)
    return min(limits, default=None)


def _cpu_mounts(mounts: list[str]) -> list[tuple[str, str, int]]:
    """(root, mount point, version) of each cgroup hierarchy mounted that holds the cpu controller, from mountinfo
    lines ("36 35 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct")."""
    found = []
    for line in mounts:
        mine, _, theirs = line.partition(" - ")
        fields, kind = mine.split(), theirs.split()
        if len(fields) < 5 or not kind:
            continue
        root, point = (_unescape(field) for field in fields[3:5])
        if kind[0] == "cgroup2" or (kind[0] == "cgroup" and len(kind) > 2 and "cpu" in kind[2].split(",")):
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


def _limits_up_from(mount_point: Path, relative: str, version: int) -> list[float]:
    """The CPU limits set on the cgroup at `relative` below `mount_point` and on each cgroup above it there."""
    parts = [part for part in relative.split("/") if part]
    limits = []
    for depth in range(len(parts), -1, -1):
        directory = mount_point.joinpath(*parts[:depth])
        limit = _limit_of(directory, version)
        if limit is not None:
            limits.append(limit)
    return limits


def _limit_of(directory: Path, version: int) -> float | None:
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


def fit_torch_threads() -> None:
    """PyTorch's intra-op threads lowered to the usable cores: it counts affinity but not a cgroup's quota (a 1-core
    quota on 2 cores: a MiniLM training step 24% slower with 2 threads than with 1). Never raised: OMP_NUM_THREADS
    or torch.set_num_threads set lower stays."""
    import torch

    if torch.get_num_threads() > usable_cores():
        torch.set_num_threads(usable_cores())
