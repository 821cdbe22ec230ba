"""An epoch's batches: shuffled, length-bucketed batches of the tokenised training rows, those rows on the training
device, and an epoch's progress, which a stopped run resumes from (scorer.training.resume)."""

from __future__ import annotations

import time

import numpy as np
import torch

from scorer.text.tokens import Encoded

# Sort by length inside pools of this many batches: padding stays small, batch order stays random.
_POOL_BATCHES = 50


def bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of `batch_size` rows, each drawn from a length-sorted pool of random rows."""
    order = rng.permutation(len(lengths))
    pool = batch_size * _POOL_BATCHES
    batches: list[np.ndarray] = []
    for start in range(0, len(order), pool):
        part = order[start : start + pool]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


class Epoch:
    """One epoch's shuffled batches, drawn from `rng`, and its losses so far (0-dim tensors, read once at its end).

    `state()` is what resumes it after the steps done so far (scorer.training.resume): the batch generator's state
    before the epoch drew its batches, the steps done, their losses and seconds. Built from that state (`resumed`),
    it draws the same batches, leaves `rng` where the epoch never stopped would, and `remaining()` gives the batches
    not yet stepped through.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, rng: np.random.Generator, device: str,
                 resumed: dict | None = None) -> None:
        if resumed is not None:
            rng.bit_generator.state = resumed["batches"]
        self._start = rng.bit_generator.state
        self.batches = bucketed_batches(lengths, batch_size, rng)
        self.done = 0 if resumed is None else int(resumed["step"])
        self.losses: list[torch.Tensor] = [] if resumed is None else list(resumed["losses"].to(device).unbind())
        self._started = time.perf_counter() - (0.0 if resumed is None else resumed["seconds"])

    def remaining(self) -> list[np.ndarray]:
        return self.batches[self.done:]

    def record(self, loss: torch.Tensor | None) -> None:
        """A step done, with its loss (None: a batch skipped)."""
        self.done += 1
        if loss is not None:
            self.losses.append(loss.detach())

    def state(self) -> dict:
        return {"batches": self._start, "step": self.done,
                "losses": torch.stack(self.losses).float().cpu() if self.losses else torch.zeros(0),
                "seconds": self.seconds()}

    def seconds(self) -> float:
        """Since the epoch began, its time before a stop included."""
        return time.perf_counter() - self._started

    def mean_loss(self) -> tuple[list[float], float]:
        """Every recorded step's loss, and their mean (the one host sync of an epoch)."""
        losses = torch.stack(self.losses).float().cpu()
        return losses.tolist(), float(losses.mean())


class DeviceRows:
    """A tokenised set on the training device, cut into padded batches there: one host-to-device copy per epoch
    instead of three per step (a copy from pageable host memory waits for the GPU to finish the step before)."""

    def __init__(self, encoded: Encoded, device: str, targets: np.ndarray | None = None) -> None:
        self.device = device
        self.lengths = encoded.lengths
        self._ids = torch.from_numpy(encoded.ids).to(device)
        self._starts = torch.from_numpy(encoded.offsets[:-1].copy()).to(device)
        self._lengths = torch.from_numpy(self.lengths).to(device)
        self._targets = None if targets is None else torch.from_numpy(targets).to(device)

    def batches(self, batches: list[np.ndarray], multiple: int = 1, cap: int = 0):
        """(input_ids, attention_mask, labels) of each batch in turn: the same tensors Encoded.pad gives (labels
        None without targets). With multiple > 1, each batch's width is rounded up to a multiple of it (never past
        `cap`, nor below the longest row): more padding, fewer distinct shapes (one CUDA graph each)."""
        order = torch.from_numpy(np.concatenate(batches)).to(self.device)
        start = 0
        for rows in batches:
            index = order[start : start + len(rows)]
            start += len(rows)
            width = int(self.lengths[rows].max())
            width = max(width, min(-(-width // multiple) * multiple, cap or width))
            positions = torch.arange(width, device=self.device)
            mask = positions < self._lengths[index, None]
            gather = (self._starts[index, None] + positions).clamp_(max=len(self._ids) - 1)
            yield self._ids[gather] * mask, mask.long(), None if self._targets is None else self._targets[index]
