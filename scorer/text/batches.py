"""Which rows run through the model together: token-budget batches of length-sorted rows, little padding.

A batch costs the model about (rows x padded width) tokens of work plus a fixed cost per run (launches, copies, a
synchronisation), worth `overhead` tokens. Cutting only by the budget pads short rows up to the longest of their
batch: on CoLA-like text in windows of 16,384 rows that was 16% more tokens than the real ones (bench/padding.py).
So a batch is also closed where the next, longer rows would pad the rows already in it by more than one more run
would cost, and a window's rows are batched together across the pieces it was tokenised in (`WindowBatcher`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def budget_batches(lengths: np.ndarray, max_tokens: int, max_rows: int, overhead: float = math.inf
                   ) -> list[np.ndarray]:
    """Row indices sorted by length and cut so that rows x padded length stays within max_tokens.

    With a finite `overhead` (tokens' worth of work one more run costs), a batch also ends before a longer width
    when padding its rows to that width would cost more than `overhead`; infinite: cut by the budget alone.
    """
    order = np.argsort(lengths, kind="stable")
    widths = np.asarray(lengths, dtype=np.int64)[order]
    batches: list[np.ndarray] = []
    start, total = 0, len(order)
    while start < total:
        end = _budget_end(widths, start, max_tokens, max_rows)
        if overhead != math.inf and end - start > 1:
            # Where the width grows inside [start, end): rows before that point would be padded by the step.
            steps = start + 1 + np.flatnonzero(np.diff(widths[start:end]))
            costly = np.flatnonzero((steps - start) * (widths[steps] - widths[steps - 1]) > overhead)
            if costly.size:
                end = int(steps[costly[0]])
        batches.append(order[start:end])
        start = end
    return batches


def _budget_end(widths: np.ndarray, start: int, max_tokens: int, max_rows: int) -> int:
    """The largest end such that widths[start:end] (sorted ascending) padded fits the budget; at least start + 1."""
    # (end - start) * widths[end - 1] grows with end, so the longest batch within budget is found by bisection.
    low, high = start + 1, min(len(widths), start + max_rows)
    while low < high:
        middle = (low + high + 1) // 2
        if (middle - start) * widths[middle - 1] <= max_tokens:
            low = middle
        else:
            high = middle - 1
    return low


@dataclass(frozen=True)
class Batch:
    """Rows of one or more pieces that run together, padded to `width`: piece number and row indices, in order;
    `tokens` is the rows' real token count."""

    width: int
    parts: tuple[tuple[int, np.ndarray], ...]
    tokens: int

    def __len__(self) -> int:
        return sum(len(rows) for _, rows in self.parts)


@dataclass
class BatchTally:
    """What the batches cost so far: how many, their real tokens and their padded ones (rows x width), and the wall
    seconds during which at least one of them was on the model (`model_seconds`; batches in flight overlap)."""

    batches: int = 0
    rows: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    model_seconds: float = 0.0

    @property
    def padded_over_real(self) -> float:
        return self.padded_tokens / max(self.tokens, 1)

    def add(self, batch: Batch) -> None:
        self.batches += 1
        self.rows += len(batch)
        self.tokens += batch.tokens
        self.padded_tokens += len(batch) * batch.width


@dataclass
class WindowBatcher:
    """Batches for the rows of one window, which arrives in pieces (tokenised one after another).

    Rows of one width wait in a bucket until they fill a batch of that width exactly (no padding at all), so the
    model can start on the first piece; `flush` batches what is left, across widths, once the last piece is in.
    Sorting a whole window instead of each piece matters for short texts, whose pieces are small.
    """

    max_tokens: int
    max_rows: int
    overhead: float = math.inf
    _pieces: int = 0
    _waiting: dict[int, list[tuple[int, np.ndarray]]] = field(default_factory=dict)

    def capacity(self, width: int) -> int:
        return max(1, min(self.max_rows, self.max_tokens // max(width, 1)))

    def add(self, lengths: np.ndarray) -> list[Batch]:
        """Take the next piece's row lengths; return the batches that are now full."""
        piece, self._pieces = self._pieces, self._pieces + 1
        lengths = np.asarray(lengths, dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        widths = lengths[order]
        full: list[Batch] = []
        for cut in np.split(np.arange(len(order)), np.flatnonzero(np.diff(widths)) + 1):
            if not cut.size:
                continue
            width = int(widths[cut[0]])
            bucket = self._waiting.setdefault(width, [])
            bucket.append((piece, order[cut]))
            full.extend(self._full(width, bucket))
        return full

    def _full(self, width: int, bucket: list[tuple[int, np.ndarray]]) -> list[Batch]:
        """Whole batches of `width` out of its bucket; the remainder stays in it."""
        size, waiting = self.capacity(width), sum(len(rows) for _, rows in bucket)
        batches = []
        while waiting >= size:
            parts, need = [], size
            while need:
                piece, rows = bucket[0]
                take = rows[:need]
                parts.append((piece, take))
                need -= len(take)
                if len(take) == len(rows):
                    bucket.pop(0)
                else:
                    bucket[0] = (piece, rows[len(take):])
            waiting -= size
            batches.append(Batch(width, tuple(parts), width * size))
        return batches

    def flush(self) -> list[Batch]:
        """Every row still waiting, in budget batches across widths; the batcher is empty afterwards."""
        pieces, rows, lengths = [], [], []
        for width in sorted(self._waiting):
            for piece, chunk in self._waiting[width]:
                pieces.append(np.full(len(chunk), piece))
                rows.append(chunk)
                lengths.append(np.full(len(chunk), width))
        self._waiting.clear()
        if not rows:
            return []
        piece_of, row_of, width_of = (np.concatenate(a) for a in (pieces, rows, lengths))
        batches = []
        for cut in budget_batches(width_of, self.max_tokens, self.max_rows, self.overhead):
            cut = cut[np.lexsort((row_of[cut], piece_of[cut]))]
            splits = np.flatnonzero(np.diff(piece_of[cut])) + 1
            parts = tuple((int(piece_of[s[0]]), row_of[s]) for s in np.split(cut, splits))
            batches.append(Batch(int(width_of[cut].max()), parts, int(width_of[cut].sum())))
        return batches
