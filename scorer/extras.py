"""What an install without the `train` extra lacks: `scorer run` needs only ONNX Runtime, tokenizers and pyarrow;
training, export, the demo and run's PyTorch cross-check need PyTorch, transformers and onnx."""

from __future__ import annotations

import importlib.util

from scorer.errors import ConfigError

TRAINING_STACK = ("torch", "transformers", "safetensors", "onnx")
INSTALL = "pip install 'scorer[train]'"


def require_training_stack(what: str) -> None:
    """Refuse `what` before any work where the training stack is not installed (a scoring-only install)."""
    missing = [name for name in TRAINING_STACK if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"{what} needs {', '.join(missing)}, which this install lacks (scoring alone needs none of "
                          f"them); install the 'train' extra: {INSTALL}")
