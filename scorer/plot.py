"""The training-loss plot written beside every checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path


def training_loss(step_losses: list[float], epoch_losses: list[float], path: Path) -> None:
    """Loss of every step, and each epoch's mean at the step where that epoch ended."""
    try:
        import matplotlib
    except ImportError:  # a declared dependency; only a hand-assembled environment (a GPU test box) lacks it
        logging.getLogger("scorer").warning("matplotlib is not installed; %s was not written", path.name)
        return

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 4.5), dpi=100)
    axes.plot(range(1, len(step_losses) + 1), step_losses, color="#9ab", linewidth=0.8, label="batch loss")
    if epoch_losses:
        per_epoch = len(step_losses) // len(epoch_losses)
        ends = [per_epoch * (i + 1) for i in range(len(epoch_losses))]
        axes.plot(ends, epoch_losses, "o-", color="#c33", label="epoch mean")
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy loss")
    axes.set_title("Training loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
