"""Where and how `scorer train` runs: the seeds, the device, the precision of its steps, and the GPU's memory."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator

import numpy as np
import torch

from scorer.config import TrainConfig
from scorer.errors import ConfigError, ModelError, ProviderError, first_line
from scorer.machine import cpu_flags
from scorer.pytorch.loop import autocast, to_device
from scorer.text.tokens import Encoded

log = logging.getLogger("scorer")


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


def settle_precision(config: TrainConfig, precision: str, encoder: torch.nn.Module, encoded: Encoded,
                     device: str) -> str:
    """The precision the steps run in, once the encoder has run two training rows (the shortest and the longest,
    padded as a batch is) before any step. An encoder that fails under bf16 autocast (DeBERTa v1 in transformers,
    whose attention fills its mask with float32's lowest value, which bf16 cannot hold: transformers issue 35332)
    trains in fp32 where --precision was auto, and is a configuration error where bf16 was asked for; one that fails
    in fp32 too (a fixed input length, as Nystromformer's) is a model error, named, before any work."""
    if not len(encoded):
        return precision
    rows = np.unique([np.argmin(encoded.lengths), np.argmax(encoded.lengths)])
    input_ids, attention_mask = to_device(encoded, rows, device)
    failure = _failure(encoder.to(device), input_ids, attention_mask, device, precision)
    if failure is None:
        return precision
    if precision == "bf16" and _failure(encoder, input_ids, attention_mask, device, "fp32") is None:
        said = f"{type(encoder).__name__} fails under bf16 autocast ({first_line(failure)[:200]})"
        if config.precision == "bf16":
            raise ConfigError(f"--precision bf16: {said}; pass --precision fp32") from failure
        log.warning("%s: training in fp32", said)
        return "fp32"
    raise ModelError(f"{config.model}: {type(encoder).__name__} fails on {len(rows)} training rows padded to "
                     f"{input_ids.shape[1]} tokens ({type(failure).__name__}: {first_line(failure)[:200]}); scorer "
                     "pads each batch to its longest row, so it "
                     "needs an encoder that takes any length up to its limit (BERT, RoBERTa, DeBERTa and their kin "
                     "do)") from failure


def _failure(encoder: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, device: str,
             precision: str) -> Exception | None:
    """What the encoder's forward on these rows raised, in eval mode so that no dropout draws from the seeded
    generators; None where it ran."""
    training = encoder.training
    try:
        with torch.no_grad(), autocast(device, precision):
            encoder.eval()(input_ids=input_ids, attention_mask=attention_mask)
    except torch.cuda.OutOfMemoryError:  # (not the model's doing: device_memory says it)
        raise
    except (RuntimeError, ValueError, IndexError) as exc:
        return exc
    finally:
        encoder.train(training)
    return None


def cpu_has_bf16() -> bool:
    return bool({"amx_bf16", "avx512_bf16"} & (cpu_flags() or frozenset()))
