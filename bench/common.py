"""What the bench scripts share: where CoLA and the tokenizer are, machine facts, small model builders."""

from __future__ import annotations

import os
import platform
import shutil
import time
from pathlib import Path

# ../shared/data/cola beside the repository; SCORER_COLA_DIR where it travels elsewhere (the GPU test machine).
COLA = Path(os.environ.get("SCORER_COLA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "cola"))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def tokenizer_dir() -> Path:
    """The packaged MiniLM (tokenizer and weights), or SCORER_TOKENIZER_DIR where that package is missing."""
    if os.environ.get("SCORER_TOKENIZER_DIR"):
        return Path(os.environ["SCORER_TOKENIZER_DIR"])
    from scorer.packaged import packaged_model

    return packaged_model()


def random_bert(directory: Path, **shape: int) -> Path:
    """A randomly initialised BERT encoder (bert-base shape unless `shape` says otherwise) with our tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    from scorer.pytorch.model import quiet_transformers

    quiet_transformers()
    torch.manual_seed(0)
    BertModel(BertConfig(**shape)).save_pretrained(directory)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir() / name).is_file():
            shutil.copy(tokenizer_dir() / name, directory / name)
    return directory


def write_json(path: Path, data: dict) -> None:
    """Write a result file (creating bench/out/ or wherever it goes)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def machine(device: str = "cpu") -> dict:
    """Machine, versions and date, printed with every result."""
    import onnxruntime
    import torch

    from scorer.machine import cpu_identity, usable_cores

    info = {"platform": platform.platform(), "python": platform.python_version(), "processor": cpu_identity()["name"],
            "cpu_int8_extensions": cpu_identity()["int8"], "cores": os.cpu_count(), "usable_cores": usable_cores(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "providers": onnxruntime.get_available_providers(), "device": device, "date": time.strftime("%Y-%m-%d")}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def bench_session(path: Path | bytes, provider: str, options: dict | None = None, threads: int | None = None,
                  spinning: bool = True, level: str = "all"):
    """An ONNX Runtime session as scorer.inference.session.create_session makes it, for a graph file or a serialised
    graph, with the knobs the benches turn: intra-op threads (None: scorer's own choice for the provider; 0: one per
    core), spinning, and the graph optimisation level (disabled, basic, extended or all)."""
    from scorer.inference.session import CPU, CUDA, default_threads, onnxruntime

    ort = onnxruntime()
    settings = ort.SessionOptions()
    settings.log_severity_level = 3
    settings.intra_op_num_threads = threads or default_threads(provider if threads is None else "cpu")
    settings.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    settings.graph_optimization_level = getattr(ort.GraphOptimizationLevel, "ORT_DISABLE_ALL" if level == "disabled"
                                                else f"ORT_ENABLE_{level.upper()}")
    chain = [(CUDA, options or {}), (CPU, {})] if provider == "cuda" else [(CPU, {})]
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), sess_options=settings,
                                providers=chain)


def bound_median(session, feeds: dict, device: str, repeats: int, output=None, host_inputs: bool = False) -> float:
    """Median seconds of one IO-bound run of `session` (after 3 untimed): `feeds` put on `device` once, or
    (`host_inputs`) bound from the host arrays on every run, so copied in as `scorer run` copies them; the first
    output bound to the OrtValue `output`, or allocated on the device."""
    import statistics

    from scorer.inference.session import onnxruntime

    ort = onnxruntime()
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, device, 0))
    name = session.get_outputs()[0].name
    if output is None:
        binding.bind_output(name, device)
    else:
        binding.bind_ortvalue_output(name, output)
    times = []
    for _ in range(repeats + 3):
        started = time.perf_counter()
        if host_inputs:
            for key, array in feeds.items():
                binding.bind_cpu_input(key, array)
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        times.append(time.perf_counter() - started)
    return statistics.median(times[3:])

