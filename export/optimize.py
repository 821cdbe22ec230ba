"""The GPU variant: fp16 with ONNX Runtime's BERT fusions (attention, LayerNorm, GELU)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("scorer")


def optimize_fp16(source: Path, target: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Fuse attention, LayerNorm and GELU with ORT's BERT optimizer, then cast to fp16 (inputs/outputs kept)."""
    from onnxruntime.transformers import optimizer

    model = optimizer.optimize_model(
        str(source), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0, use_gpu=True
    )
    fused = {name: count for name, count in model.get_fused_operator_statistics().items() if count}
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(target))
    log.info("fp16 variant: fused %s", ", ".join(f"{n}×{c}" for n, c in sorted(fused.items())) or "nothing")
    return fused
