"""Where and how `scorer train` runs: the seeds, the device, the precision of its steps, and the GPU's memory."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from scorer.config import TrainConfig
from scorer.errors import ProviderError, first_line


@contextlib.contextmanager
def device_memory(config: TrainConfig, device: str) -> Iterator[None]:
    """The GPU running out of memory (a batch too large for it, another process holding its memory) as one line
    saying what to lower, where PyTorch's message says only how much it tried to allocate."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        said = ". ".join(first_line(exc).split(". ")[:2])  # ("CUDA out of memory. Tried to allocate 2.00 GiB")
        raise ProviderError(f"training ran out of memory on {device} ({said}); lower "
                            f"--batch-size (now {config.batch_size}) or --max-length (now {config.max_length}), or "
                            "free the GPU (is another process using it?); nothing was written") from exc


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(choice: str) -> str:
    if choice == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if choice == "cuda":
        raise ProviderError("--device cuda was asked for but torch sees no CUDA GPU; use --device auto or cpu")
    return "cpu"


def resolve_precision(choice: str, device: str) -> str:
    """auto: bf16 autocast on CPUs with native bf16 matrix units (AMX or AVX512-BF16), else fp32.

    Not on CUDA: at batch 32 a GPU step waits on the host, and autocast's extra casts made bert-base epochs slower
    (H100: 11.4-11.9 s bf16 against 8.5-9.6 s fp32, bench/RESULTS.md).
    """
    if choice != "auto":
        return choice
    return "bf16" if device == "cpu" and cpu_has_bf16() else "fp32"


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))
