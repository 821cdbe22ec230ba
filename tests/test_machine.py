"""What of the machine a process may use, not the machine's whole: threads sized by its cores (its CPU affinity and
cgroup CPU quota), export's plans by its memory (its cgroup's limit), and running out of memory (ulimit -v) said so."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scorer.machine import (
    cgroup_cpu_limit,
    cgroup_memory_room,
    cpu_identity,
    cpu_of,
    cpu_said,
    gpu_of,
    int8_kernels_differ,
    usable_cores,
    usable_memory,
)

ROOT = Path(__file__).resolve().parents[1]
CGROUP_V1 = Path("/sys/fs/cgroup")
MACHINE = os.cpu_count() or 1
needs_two_cores = pytest.mark.skipif(usable_cores() < 2, reason="needs a process allowed two cores or more")


def _proc(tmp_path: Path, mounts: list[str], memberships: list[str]) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir(parents=True)
    (proc / "mountinfo").write_text("".join(f"{line}\n" for line in mounts))
    (proc / "cgroup").write_text("".join(f"{line}\n" for line in memberships))
    return proc


def _write(directory: Path, **files: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("_", ".", 1)).write_text(text + "\n")


def test_the_cpu_limit_is_the_lowest_quota_from_a_v2_cgroup_up_to_its_mount(tmp_path):
    """Kubernetes sets a pod's limit on the pod's cgroup and the container's below it: the lower one holds. The mount
    point has a space in it (mountinfo writes \\040)."""
    hierarchy = tmp_path / "cgroup fs"
    escaped = str(hierarchy).replace(" ", "\\040")
    proc = _proc(tmp_path, ["30 23 0:26 / /proc rw - proc proc rw",
                            f"41 31 0:38 / {escaped} rw,nosuid - cgroup2 cgroup2 rw"], ["0::/kubepods/pod1/container"])
    _write(hierarchy, cpu_max="max 100000")
    _write(hierarchy / "kubepods" / "pod1", cpu_max="150000 100000")
    _write(hierarchy / "kubepods" / "pod1" / "container", cpu_max="400000 100000")
    assert cgroup_cpu_limit(proc) == 1.5
    _write(hierarchy / "kubepods" / "pod1", cpu_max="max 100000")
    assert cgroup_cpu_limit(proc) == 4.0
    _write(hierarchy / "kubepods" / "pod1" / "container", cpu_max="max 100000")
    assert cgroup_cpu_limit(proc) is None


def test_the_cpu_limit_of_a_v1_cgroup_is_found_under_a_mount_of_the_containers_own_cgroup(tmp_path):
    """Docker without a cgroup namespace: /proc/self/cgroup names /docker/ID, and the mount's root is that cgroup, so
    the quota is at the mount point itself. Only the hierarchy holding the cpu controller counts (not cpuset)."""
    cpu, cpuset = tmp_path / "cpu,cpuacct", tmp_path / "cpuset"
    proc = _proc(tmp_path, [f"32 31 0:29 /docker/abc {cpu} rw - cgroup cgroup rw,cpu,cpuacct",
                            f"34 31 0:31 /docker/abc {cpuset} rw - cgroup cgroup rw,cpuset"],
                 ["5:cpuset:/docker/abc", "4:cpu,cpuacct:/docker/abc", "0::/"])
    _write(cpu, cpu_cfs_quota_us="250000", cpu_cfs_period_us="100000")
    _write(cpuset, cpu_cfs_quota_us="100000", cpu_cfs_period_us="100000")
    assert cgroup_cpu_limit(proc) == 2.5
    _write(cpu, cpu_cfs_quota_us="-1")
    assert cgroup_cpu_limit(proc) is None


def test_no_limit_is_read_where_the_files_are_missing_or_unreadable(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "absent") is None
    proc = _proc(tmp_path, [f"41 31 0:38 / {tmp_path / 'v2'} rw - cgroup2 cgroup2 rw", "garbage line"],
                 ["0::/user.slice", "not a membership"])
    assert cgroup_cpu_limit(proc) is None  # (no cpu.max anywhere)
    _write(tmp_path / "v2" / "user.slice", cpu_max="nonsense")
    assert cgroup_cpu_limit(proc) is None


def test_the_memory_room_is_the_least_a_limit_leaves_from_the_cgroup_up_counting_inactive_file_cache_as_free(
        tmp_path):
    """What the kernel reclaims before it kills (inactive file cache) counts as room; v2's memory.max and v1's
    memory.limit_in_bytes, whose "no limit" is a number near 2**63."""
    v2 = tmp_path / "v2"
    proc = _proc(tmp_path, [f"41 31 0:38 / {v2} rw - cgroup2 cgroup2 rw"], ["0::/pod/container"])
    _write(v2 / "pod", memory_max=str(8 << 30), memory_current=str(7 << 30), memory_stat="anon 1\ninactive_file 0")
    _write(v2 / "pod" / "container", memory_max="max", memory_current=str(7 << 30),
           memory_stat=f"anon {5 << 30}\ninactive_file {2 << 30}")
    assert cgroup_memory_room(proc) == 1 << 30  # (the pod's limit, less what it uses)
    _write(v2 / "pod" / "container", memory_max=str(6 << 30))
    assert cgroup_memory_room(proc) == 1 << 30  # 6 GiB less 7 used plus 2 of inactive cache: also 1
    _write(v2 / "pod" / "container", memory_max=str(5 << 30))
    assert cgroup_memory_room(proc) == 0  # 5 less 7 plus 2
    v1 = tmp_path / "memory"
    proc = _proc(tmp_path / "one", [f"35 31 0:32 /docker/abc {v1} rw - cgroup cgroup rw,memory"],
                 ["4:memory:/docker/abc"])
    _write(v1, memory_limit_in_bytes=str(4 << 30), memory_usage_in_bytes=str(3 << 30),
           memory_stat=f"cache 10\ntotal_inactive_file {1 << 29}")
    assert cgroup_memory_room(proc) == (1 << 30) + (1 << 29)
    _write(v1, memory_limit_in_bytes="9223372036854771712")
    assert cgroup_memory_room(proc) is None


def test_usable_memory_is_the_machines_available_memory_lowered_to_a_cgroups_room(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683772 kB\nMemFree:        1000 kB\nMemAvailable:   2097152 kB\n")
    v2 = tmp_path / "v2"
    proc = _proc(tmp_path, [f"41 31 0:38 / {v2} rw - cgroup2 cgroup2 rw"], ["0::/job"])
    assert usable_memory(proc, meminfo) == 2 << 30  # (no limit)
    _write(v2 / "job", memory_max=str(3 << 30), memory_current=str(2 << 30), memory_stat="inactive_file 0")
    assert usable_memory(proc, meminfo) == 1 << 30
    _write(v2 / "job", memory_max=str(5 << 30))
    assert usable_memory(proc, meminfo) == 2 << 30  # (the machine has less than the limit leaves)
    assert usable_memory(proc, tmp_path / "no meminfo") == 3 << 30
    assert usable_memory(tmp_path / "no proc", tmp_path / "no meminfo") is None


def _child(args: list[str], cores: set[int] | None = None, procs: Path | None = None, **env: str) -> str:
    """What a Python child prints, run on `cores` only or in the cgroup whose `procs` file is given."""
    def limit() -> None:
        if cores is not None:
            os.sched_setaffinity(0, cores)
        if procs is not None:
            procs.write_text(str(os.getpid()))

    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=True,
                          preexec_fn=limit, env={**os.environ, **env})
    return done.stdout.strip()


X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse4_1 avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse4_1 avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile
"""
# (as an arm64 Linux writes it: no model name; .ci/arm_emulated.sh binds this Neoverse-N1's under qemu)
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1
"""


def test_the_cpu_is_named_with_the_int8_extensions_its_flags_show_on_x86_and_on_arm(tmp_path):
    (tmp_path / "x86").write_text(X86_CPUINFO)
    (tmp_path / "arm").write_text(ARM_CPUINFO)
    x86 = cpu_of(tmp_path / "x86", "x86_64")
    assert x86 == {"machine": "x86_64", "name": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
                   "int8": ["avx2", "avx512bw", "avx512_vnni", "amx_int8"]}
    arm = cpu_of(tmp_path / "arm", "aarch64")
    assert arm == {"machine": "aarch64", "name": "ARM Neoverse-N1", "int8": ["asimddp"]}
    assert cpu_said(arm) == "ARM Neoverse-N1 (aarch64: asimddp)"
    (tmp_path / "newer").write_text(ARM_CPUINFO.replace("0xd0c", "0xd8e"))  # (a part not named here: its code)
    assert cpu_of(tmp_path / "newer", "aarch64")["name"] == "ARM CPU part 0xd8e"
    (tmp_path / "other").write_text(ARM_CPUINFO.replace("0x41", "0x6d"))
    assert cpu_of(tmp_path / "other", "aarch64")["name"] == "CPU part 0xd0c of implementer 0x6d"
    # not Linux (no /proc/cpuinfo): the platform's name for it, its extensions unknown
    elsewhere = cpu_of(tmp_path / "nowhere", "arm64", lambda: "arm")  # (as macOS names its architecture)
    assert elsewhere == {"machine": "aarch64", "name": "arm", "int8": None}
    assert cpu_said(elsewhere) == "arm (aarch64: int8 extensions unknown)"
    assert cpu_of(tmp_path / "nowhere", "AMD64", lambda: "Intel64 Family 6")["machine"] == "x86_64"  # (Windows)
    assert cpu_of(tmp_path / "nowhere", "x86_64", lambda: "")["name"] == "x86_64"
    here = cpu_identity()
    assert here["machine"] and here["name"] and (here["int8"] is None or isinstance(here["int8"], list))


def test_int8_kernels_differ_between_architectures_and_between_int8_extensions_where_both_are_known(tmp_path):
    (tmp_path / "x86").write_text(X86_CPUINFO)
    (tmp_path / "arm").write_text(ARM_CPUINFO)
    x86, arm = cpu_of(tmp_path / "x86", "x86_64"), cpu_of(tmp_path / "arm", "aarch64")
    older = {**x86, "name": "an older Xeon", "int8": ["avx2", "avx512bw", "avx512_vnni"]}  # (no AMX)
    assert int8_kernels_differ(x86, arm) and int8_kernels_differ(arm, x86) and int8_kernels_differ(x86, older)
    assert not int8_kernels_differ(x86, {**x86, "name": "another name, the same extensions"})
    assert not int8_kernels_differ(x86, {**x86, "int8": None})  # (unknown on one side: the architecture decides)
    assert int8_kernels_differ(x86, {"machine": "aarch64", "name": "?", "int8": None})


def test_the_gpu_is_the_model_the_nvidia_driver_lists_for_each_gpu(tmp_path):
    gpus = tmp_path / "gpus"
    assert gpu_of(gpus) is None  # (no driver: nothing listed)
    for bus, model in [("0000:00:05.0", "NVIDIA H100 80GB HBM3"), ("0000:00:06.0", "NVIDIA H100 80GB HBM3")]:
        (gpus / bus).mkdir(parents=True)
        (gpus / bus / "information").write_text(f"Model: \t\t {model}\nIRQ:   \t\t 42\nGPU UUID: \t GPU-0\n"
                                                "Bus Location: \t {bus}\n")
    assert gpu_of(gpus) == "NVIDIA H100 80GB HBM3"
    (gpus / "0000:00:07.0").mkdir()
    (gpus / "0000:00:07.0" / "information").write_text("Model: \t\t NVIDIA A10G\n")
    assert gpu_of(gpus) == "NVIDIA A10G + NVIDIA H100 80GB HBM3"  # (unlike GPUs: both, never one for all)
    # no listing there (a container that hides it): nvidia-smi's, where it is on PATH (a script that answers as it)
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$*" = "--query-gpu=name --format=csv,noheader" ] || exit 9\n'
                   'printf "NVIDIA H200\\nNVIDIA H200\\n"\n')
    smi.chmod(0o755)
    assert gpu_of(tmp_path / "hidden", str(smi)) == "NVIDIA H200"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\n"
                   "exit 9\n")
    assert gpu_of(tmp_path / "hidden", str(smi)) is None
    assert gpu_of(tmp_path / "hidden", str(tmp_path / "not-there")) is None


@needs_two_cores
def test_scorer_run_gives_onnx_runtime_a_thread_per_core_it_may_use(tiny_export, tmp_path):
    """taskset -c 0 on a machine of two cores or more: one ONNX Runtime thread, as the summary says, where it was
    the machine's count; --cpu-threads says otherwise."""
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": ["the cat sat on the mat", "sat the on cat mat"] * 20}), source)

    def threads(cores: set[int] | None, *options: str) -> int:
        _child(["-m", "scorer", "run", str(source), "--model", str(tiny_export), "--provider", "cpu", "--output",
                str(tmp_path / "out.parquet"), "--overwrite", "--quiet", *options], cores)
        return json.loads((tmp_path / "out.parquet.summary.json").read_text())["cpu_threads"]

    assert threads({0}) == 1
    assert threads(None) == usable_cores() > 1
    assert threads({0}, "--cpu-threads", "3") == 3


@needs_two_cores
def test_pytorch_threads_are_lowered_to_the_cores_and_never_raised():
    code = ("import torch; from scorer.machine import fit_torch_threads; before = torch.get_num_threads(); "
            "fit_torch_threads(); print(before, torch.get_num_threads())")
    # (OMP_NUM_THREADS: torch starts with the machine's count, as it does under a cgroup quota)
    assert _child(["-c", code], OMP_NUM_THREADS=str(MACHINE)) == f"{MACHINE} {usable_cores()}"
    assert _child(["-c", code], {0}, OMP_NUM_THREADS=str(MACHINE)) == f"{MACHINE} 1"
    assert _child(["-c", code], OMP_NUM_THREADS="1") == "1 1"


@contextlib.contextmanager
def real_cgroup(controller: str, **settings: str):
    """A real cgroup v1 of `controller` with `settings` (needs root and the controller mounted writable: skipped
    elsewhere); yields its cgroup.procs file."""
    directory = CGROUP_V1 / controller / f"scorer-test-{os.getpid()}"
    try:
        directory.mkdir()
        for name, value in settings.items():
            (directory / name).write_text(value)
    except OSError as exc:
        if directory.exists():
            directory.rmdir()
        pytest.skip(f"cannot make a {controller} cgroup here: {exc}")
    try:
        yield directory / "cgroup.procs"
    finally:
        directory.rmdir()


@pytest.fixture
def one_cpu_cgroup():
    with real_cgroup("cpu", **{"cpu.cfs_quota_us": "100000", "cpu.cfs_period_us": "100000"}) as procs:
        yield procs


@needs_two_cores
def test_a_cgroup_cpu_quota_lowers_onnx_runtime_and_pytorch_threads(one_cpu_cgroup, tiny_export, tiny_encoder,
                                                                    tmp_path):
    """docker --cpus=1 or a Kubernetes limit of 1 CPU on a bigger machine: the process sees every core (affinity and
    os.cpu_count), and its quota is one CPU's time; `scorer train` there steps on one thread, as metrics.json says,
    and a command leaves Arrow's pool (Parquet and CSV decoding) one thread, where Arrow counts only the affinity."""
    code = ("import sys, pyarrow; from scorer.cli import main; arrow = pyarrow.cpu_count(); "
            "main(['train', *sys.argv[1:]], standalone_mode=False); print(arrow, pyarrow.cpu_count())")
    said = _child(["-c", code, "--model", str(tiny_encoder), "--output", str(tmp_path / "c"), "--epochs", "1",
                   "--max-length", "16", "--quiet"], procs=one_cpu_cgroup)
    assert said.splitlines()[-1] == f"{len(os.sched_getaffinity(0))} 1"
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["cpu_threads"] == 1
    code = ("import os, torch; from scorer.machine import usable_cores, fit_torch_threads; "
            "from scorer.inference.session import create_session; "
            f"session = create_session({str(tiny_export / 'model.onnx')!r}, 'cpu'); fit_torch_threads(); "
            "print(len(os.sched_getaffinity(0)), usable_cores(), "
            "session.get_session_options().intra_op_num_threads, torch.get_num_threads())")
    seen, usable, ort_threads, torch_threads = _child(["-c", code], procs=one_cpu_cgroup).split()
    assert (int(seen), usable, ort_threads, torch_threads) == (len(os.sched_getaffinity(0)), "1", "1", "1")


def test_a_cgroup_memory_limit_lowers_the_memory_export_plans_with():
    """A container limited to 1 GiB on a bigger machine: export's memory rule (18 times the weights for the fp16 and
    int8 builds) and its parallel builds go by what the limit leaves, where they went by the machine's MemAvailable,
    and the kernel killed the export without a word (a 1.2 GB limit, the CoLA MiniLM: exit 137 before, the fp32
    graph alone and a warning after, by hand)."""
    machine = usable_memory()
    if machine is None or machine < 2 << 30:
        pytest.skip("needs more than 2 GiB available")
    code = "from scorer.machine import usable_memory; print(usable_memory())"
    with real_cgroup("memory", **{"memory.limit_in_bytes": str(1 << 30)}) as procs:
        room = int(_child(["-c", code], procs=procs))
    assert 0 < room < 1 << 30 < machine


_LIMIT_ADDRESS_SPACE = (
    "import re, resource\n"
    "def limit(margin):\n"
    "    vm = int(re.search(r'VmSize:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024\n"
    "    resource.setrlimit(resource.RLIMIT_AS, (vm + margin, resource.RLIM_INFINITY))\n"
)


def test_onnxruntime_that_cannot_load_is_not_said_to_be_missing(tmp_path):
    """ulimit -v (an address-space limit, as some batch schedulers set) too small for ONNX Runtime's 36 MB library:
    "out of memory", with the limit, where scorer said "onnxruntime is not installed: pip install ..."; a broken
    install (a module of it missing) is said as such; a missing one still is."""
    code = ("import sys\nfrom scorer.errors import ProviderError\nfrom scorer.inference.session import onnxruntime\n"
            + _LIMIT_ADDRESS_SPACE + "if sys.argv[1] == 'limited': limit(16 << 20)\n"
            "if sys.argv[1] == 'missing': sys.modules['onnxruntime'] = None\n"
            "try:\n    onnxruntime()\nexcept ProviderError as exc:\n    print(exc)\n")
    said = _child(["-c", code, "limited"])
    assert said.startswith("onnxruntime could not be loaded: out of memory (") and "failed to map segment" in said
    assert "its address space limited to" in said and "(ulimit -v)" in said and "not installed" not in said
    broken = tmp_path / "site" / "onnxruntime"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("from onnxruntime.capi import _pybind_state\n")
    said = _child(["-c", code, "broken"], PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(ROOT)]))
    assert said.startswith("onnxruntime is installed but could not be loaded (No module named 'onnxruntime.capi')")
    assert "reinstall it: pip install" in said
    assert _child(["-c", code, "missing"]).startswith("onnxruntime is not installed: pip install")


def test_a_model_too_big_for_the_memory_left_is_said_to_be_out_of_memory_with_the_limits(tmp_path):
    """A 64 MB graph in a process whose address space has 32 MB left: ONNX Runtime's std::bad_alloc becomes "ran
    out of memory loading it", with what this process may use, where it was "could not start on cpu"."""
    code = ("import sys\nimport numpy as np, onnx\nfrom onnx import TensorProto, helper, numpy_helper\n"
            "from scorer.errors import ProviderError\nfrom scorer.inference.session import create_session, "
            "onnxruntime\n" + _LIMIT_ADDRESS_SPACE +
            "size = 16 << 20\n"
            "graph = helper.make_graph([helper.make_node('Add', ['x', 'w'], ['y'])], 'g', "
            "[helper.make_tensor_value_info('x', TensorProto.FLOAT, [size])], "
            "[helper.make_tensor_value_info('y', TensorProto.FLOAT, [size])], "
            "[numpy_helper.from_array(np.ones(size, np.float32), 'w')])\n"
            "onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)]), sys.argv[1])\n"
            "del graph\nonnxruntime()\nlimit(32 << 20)\n"
            "try:\n    create_session(sys.argv[1], 'cpu')\n    print('loaded')\nexcept ProviderError as exc:\n"
            "    print(exc)\n")
    said = _child(["-c", code, str(tmp_path / "big.onnx")])
    assert said.startswith(f"{tmp_path / 'big.onnx'}: ONNX Runtime ran out of memory loading it on cpu ("), said
    assert "of memory available to this process" in said and "(ulimit -v)" in said
    assert said.endswith("free memory, raise this process's limits, or score it on a machine with more")
