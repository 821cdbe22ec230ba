"""TensorRT through ONNX Runtime's TensorRT execution provider: fp16, explicit shape profiles, an engine cache.

The TensorRT EP builds an engine per input-shape profile. With one explicit profile covering every batch the
token-budget batcher can make (1..max_rows rows × 1..max_length tokens) and an engine cache directory, the engine
is built once (by `scorer export --tensorrt` or by the first run) and reused, instead of rebuilt per new shape.

It needs onnxruntime-gpu plus the TensorRT 10 libraries (libnvinfer.so.10, libnvonnxparser.so.10) on the
library path; `available()` says whether both are there.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("scorer")
CACHE_DIR = "tensorrt-cache"
# The shape TensorRT tunes kernels for: a full token-budget batch of short sentences.
_OPT_ROWS, _OPT_LENGTH = 256, 32


def available() -> bool:
    """True when onnxruntime lists the TensorRT EP and the TensorRT libraries can be loaded."""
    from scorer.inference.session import TENSORRT, missing_tensorrt_libraries
    from scorer.inference.session import available as providers

    return TENSORRT in providers() and not missing_tensorrt_libraries()


def provider_options(cache_dir: Path, max_length: int, max_rows: int) -> dict[str, object]:
    """TensorRT EP options: fp16, one profile from 1×1 to max_rows×max_length, engine and timing caches."""
    cache_dir.mkdir(parents=True, exist_ok=True)

    def shape(rows: int, length: int) -> str:
        return f"input_ids:{rows}x{length},attention_mask:{rows}x{length}"

    return {
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
        "trt_profile_min_shapes": shape(1, 1),
        "trt_profile_opt_shapes": shape(min(_OPT_ROWS, max_rows), min(_OPT_LENGTH, max_length)),
        "trt_profile_max_shapes": shape(max_rows, max_length),
    }


def build_engine(model: Path, cache_dir: Path, max_length: int, max_rows: int) -> None:
    """Build and cache the engine now (at export), so that no nightly run pays for it."""
    from scorer.inference.session import create_session

    session = create_session(model, "tensorrt", provider_options(cache_dir, max_length, max_rows))
    for rows, length in ((1, 1), (min(_OPT_ROWS, max_rows), min(_OPT_LENGTH, max_length)), (max_rows, max_length)):
        ones = np.ones((rows, length), dtype=np.int64)
        session.run(None, {"input_ids": ones, "attention_mask": ones})
    log.info("TensorRT engine cached in %s", cache_dir)
