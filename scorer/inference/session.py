"""ONNX Runtime sessions on the provider that was asked for, checked after creation, never a silent fallback."""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scorer.errors import ProviderError, first_line
from scorer.extras import install_command
from scorer.machine import memory_said, usable_cores

log = logging.getLogger("scorer")

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
_NAMES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}
_INSTALL = f"install onnxruntime-gpu ({install_command('gpu')}) on a machine with an NVIDIA GPU, or use --provider cpu"


def onnxruntime():
    """The onnxruntime module, or a clear error saying which extra installs it."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise _not_loaded(exc) from exc
    return ort


def _not_loaded(exc: ImportError) -> ProviderError:
    """Why onnxruntime cannot be imported: not installed, out of memory mapping its library (ulimit -v, say), or
    installed and broken (something it imports missing)."""
    install = f"{install_command('cpu')} (the 'gpu' extra on a GPU machine)"
    said = first_line(exc)
    if isinstance(exc, ModuleNotFoundError) and exc.name == "onnxruntime":
        return ProviderError(f"onnxruntime is not installed: {install}")
    if any(sign in said for sign in ("failed to map segment", "Cannot allocate memory")):
        return ProviderError(f"onnxruntime could not be loaded: out of memory ({said}; {memory_said()}); free memory "
                             "or raise this process's limits")
    return ProviderError(f"onnxruntime is installed but could not be loaded ({said}); reinstall it: {install}")


def available() -> list[str]:
    return list(onnxruntime().get_available_providers())


def _preload_cuda() -> list[str]:
    """Load the CUDA/cuDNN libraries that pip installed (nvidia-* wheels or torch's; onnxruntime-gpu >= 1.21) and
    return those it could not load. ONNX Runtime prints its complaints, which are kept off stdout: a nightly job keeps
    that for the summary line."""
    preload = getattr(onnxruntime(), "preload_dlls", None)
    if preload is None:
        return []
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as exc:  # preload is best effort: the session check is the real test
        log.debug("onnxruntime.preload_dlls failed: %s", exc)
    if printed.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", printed.getvalue().strip())
    return re.findall(r"Failed to load (\S+?):", printed.getvalue())


def resolve_provider(requested: str) -> str:
    """'auto' becomes cuda when this onnxruntime has the CUDA provider, else cpu; others are checked."""
    names = available()
    if requested == "auto":  # (where this process already found that CUDA does not start, and said so: the CPU)
        return "cuda" if CUDA in names and _CUDA_STARTS != [False] else "cpu"
    if _NAMES[requested] not in names:
        raise ProviderError(
            f"--provider {requested}: this onnxruntime has no {_NAMES[requested]} (it has {', '.join(names)}); "
            + _INSTALL
        )
    missing = missing_tensorrt_libraries() if requested == "tensorrt" else []
    if missing:  # (onnxruntime-gpu lists the provider whether or not TensorRT is there)
        raise ProviderError(f"--provider tensorrt: the TensorRT 10 libraries {', '.join(missing)} cannot be loaded "
                            "here; put them on the library path (README, 'GPU and TensorRT') or use --provider cuda")
    return requested


TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvonnxparser.so.10")


def missing_tensorrt_libraries() -> list[str]:
    """The TensorRT libraries that ONNX Runtime's TensorRT provider needs and that cannot be loaded here."""
    missing = []
    for library in TENSORRT_LIBRARIES:
        try:
            ctypes.CDLL(library)
        except OSError:
            missing.append(library)
    return missing


_CUDA_STARTS: list[bool] = []  # the verdict of cuda_starts, found once per process


def cuda_starts(model: Path | bytes) -> bool:
    """Whether sessions start on CUDA here: this onnxruntime has the provider, and CUDA's libraries and a GPU are
    there. Found once per process by starting a session of `model`, and said where the provider is listed but does
    not start (onnxruntime-gpu without CUDA's libraries, or without a GPU)."""
    if not _CUDA_STARTS:
        verdict = CUDA in available()
        if verdict:
            try:
                create_session(model, "cuda")
            except ProviderError as exc:
                log.warning("CUDA is listed but does not start (%s); continuing on the CPU", exc)
                verdict = False
        _CUDA_STARTS.append(verdict)
    return _CUDA_STARTS[0]


def default_threads(provider: str) -> int:
    """ONNX Runtime intra-op threads: one per core this process may use on a CPU (scorer.machine: its affinity and
    cgroup quota, not the machine's count). On a GPU the graph's CPU work is a few shape ops: one thread, so that no
    pool of spinning threads competes with tokenisation for the cores (H100: model stage 99k sentences/s with 1
    thread, 92k with 16)."""
    return usable_cores() if provider == "cpu" else 1


def create_session(model: Path | bytes, provider: str, provider_options: dict | None = None,
                   threads: int | None = None):
    """A session on `provider` (cpu, cuda or tensorrt) for a model file (or serialised model); raises when it
    silently landed on the CPU instead."""
    ort = onnxruntime()
    missing = []
    if provider in ("cuda", "tensorrt"):
        missing = _preload_cuda()
        if not log.isEnabledFor(logging.DEBUG):  # ONNX Runtime's own account of a failed CUDA start, in red on
            ort.set_default_logger_severity(4)   # stderr; the check below says it in one line (--debug shows it)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # A failed run's own account (out of memory, say) is in the exception, which scorer says in one line; ONNX
    # Runtime would also print it, in red, on stderr (--debug keeps that).
    options.log_severity_level = 3 if log.isEnabledFor(logging.DEBUG) else 4
    options.intra_op_num_threads = threads or default_threads(provider)
    chain = [(_NAMES[provider], provider_options or {})]
    if provider == "tensorrt":
        chain.append((CUDA, {}))
    if provider != "cpu":
        chain.append((CPU, {}))
    try:
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=options,
                                       providers=chain)
    except Exception as exc:
        name = "the model" if isinstance(model, bytes) else model
        raise _no_memory_to_load(name, provider, exc) or \
            ProviderError(f"{name}: ONNX Runtime could not start on {provider} ({first_line(exc)})") from exc
    if session.get_providers()[0] != _NAMES[provider]:
        why = f"the CUDA libraries {', '.join(missing)} could not be loaded" if missing else \
            "no usable GPU, or CUDA/cuDNN libraries missing"
        raise ProviderError(
            f"--provider {provider}: ONNX Runtime started the session on {session.get_providers()[0]} instead "
            f"({why}); {_INSTALL}"
        )
    return session


def _no_memory_to_load(name: object, provider: str, exc: Exception) -> ProviderError | None:
    """A session that could not be created for want of memory, saying how much this process may use (a container's
    limit, ulimit -v); None for other failures."""
    said = memory_failure(exc)
    if not said:
        return None
    said = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : |Load model from .* failed: ?", "", said)
    return ProviderError(f"{name}: ONNX Runtime ran out of memory loading it on {provider} ({said}; {memory_said()}): "
                         "free memory, raise this process's limits, or score it on a machine with more")


# How ONNX Runtime says an allocation failed: its arena (on any device), CUDA itself, cuBLAS, cuDNN, the C++ runtime.
_NO_MEMORY = ("Failed to allocate memory", "is smaller than requested bytes", "out of memory", "ALLOC_FAILED",
              "bad allocation", "bad_alloc")


def memory_failure(exc: BaseException, provider: str | None = None) -> str | None:
    """ONNX Runtime's account, in a few words, of an allocation that failed in a run (another process holding the
    GPU's memory, say), on the CPU (`provider` "cpu") with what this process may use of memory (a container's limit);
    None for any other exception."""
    if not raised_by_onnxruntime(exc):
        return None
    if not any(said in first_line(exc) for said in _NO_MEMORY):
        return None
    said = _status_message(first_line(exc)).split(" ; ")[0]
    return f"{said}; {memory_said()}" if provider == "cpu" else said


def raised_by_onnxruntime(exc: BaseException) -> bool:
    """Whether `exc` is ONNX Runtime's own (its Fail, RuntimeException, InvalidArgument...: a run that failed)."""
    return type(exc).__module__.startswith("onnxruntime")


def ort_account(exc: BaseException) -> str:
    """ONNX Runtime's message for a failed run without its C++ file, function and template: the node, where it
    names one, and what went wrong there."""
    node = re.search(r"running (\w+) node\. Name:'([^']*)'", first_line(exc))
    return (f"{node[1]} node {node[2]}: " if node else "") + _status_message(first_line(exc))


def _status_message(text: str) -> str:
    text = text.rsplit("Status Message: ", 1)[-1]
    return re.sub(r"^\S+:\d+ [^)]*\) (\[with [^]]*\] )?", "", text).strip()  # (its C++ file, function, template)


def batch_runner(session, provider: str, io_binding: bool) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """A function from one batch's inputs to its first output (the logits), as a float32 array on the host.

    Plain: `session.run`. IO binding: the inputs are copied to the provider's device when bound and the output is
    allocated there, then copied back once; on CUDA this keeps ONNX Runtime from synchronising on host copies
    inside the run (measured fastest for fused fp16 attention, ../shared/device/README.md).
    """
    output = session.get_outputs()[0].name
    # Ids arrive as int64; a graph with int32 inputs (the fp16 variant) gets them cast here, once per batch.
    dtypes = {i.name: np.int32 if i.type == "tensor(int32)" else np.int64 for i in session.get_inputs()}
    if not io_binding:
        return lambda feed: session.run([output], {k: np.asarray(v, dtypes[k]) for k, v in feed.items()})[0]
    device = "cpu" if provider == "cpu" else "cuda"

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        binding = session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array, dtypes[name]))
        binding.bind_output(output, device)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    return run
