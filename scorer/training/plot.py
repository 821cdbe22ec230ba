"""The training-loss plot written beside every checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path


def training_loss(step_losses: list[float], train_losses: list[float], val_losses: list[float], kept: int,
                  path: Path) -> None:
    """Loss of every step; each epoch's mean training loss and its validation loss at the step where that epoch
    ended; the epoch kept (1-based) marked: where validation loss turns up while training loss falls, it overfits."""
    # An account without a writable home (a cron job's, say) makes matplotlib warn, as it is imported, that it keeps
    # its font cache in a temporary directory instead: nothing the plot needs, so not said with --quiet.
    said = logging.getLogger("matplotlib")
    level = said.level
    said.setLevel(max(level, logging.ERROR))
    try:
        import matplotlib
    except ImportError:  # a declared dependency; only a hand-assembled environment (a GPU test box) lacks it
        logging.getLogger("scorer").warning("matplotlib is not installed; %s was not written", path.name)
        return
    finally:
        said.setLevel(level)

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 4.5), dpi=100)
    axes.plot(range(1, len(step_losses) + 1), step_losses, color="#9ab", linewidth=0.8, label="batch loss")
    if train_losses:
        per_epoch = len(step_losses) // len(train_losses)
        ends = [per_epoch * (i + 1) for i in range(len(train_losses))]
        axes.plot(ends, train_losses, "o-", color="#c33", label="training loss, epoch mean")
        axes.plot(ends, val_losses, "s--", color="#26a", label="validation loss")
        if 1 <= kept <= len(ends):
            axes.axvline(ends[kept - 1], color="#555", linestyle=":", linewidth=1, label=f"kept: epoch {kept}")
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy loss")
    axes.set_title("Training and validation loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
