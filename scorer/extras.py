"""What an install without the `train` extra lacks: `scorer run` needs only ONNX Runtime, tokenizers and pyarrow;
training, export, the demo and run's PyTorch cross-check need PyTorch, transformers and onnx."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

from scorer.errors import ConfigError

TRAINING_STACK = ("torch", "transformers", "safetensors", "onnx")


def install_command(extra: str, module: str = __file__) -> str:
    """How to add `extra` to this install (`module`: a file of the scorer package installed). scorer installs from
    its source, never by name: the project called scorer on PyPI is another one, which `pip install 'scorer[train]'`
    would put in scorer's place."""
    root = Path(module).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "scorer" / "cli.py").is_file():  # (an editable install)
        return f"pip install -e {shlex.quote(f'{root}[{extra}]')}"
    return f"pip install '.[{extra}]' in scorer's source directory (not 'scorer[{extra}]': PyPI's scorer is another " \
        "project)"


def require_training_stack(what: str) -> None:
    """Refuse `what` before any work where the training stack is not installed (a scoring-only install)."""
    missing = [name for name in TRAINING_STACK if importlib.util.find_spec(name) is None]
    if missing:
        # (pip's default PyTorch on Linux is the CUDA build, gigabytes a CPU machine does not need)
        first = "; without a GPU, PyTorch's CPU build first: pip install torch --index-url " \
            "https://download.pytorch.org/whl/cpu" if "torch" in missing else ""
        raise ConfigError(f"{what} needs {', '.join(missing)}, which this install lacks (scoring alone needs none of "
                          f"them); install the 'train' extra: {install_command('train')}{first}")
