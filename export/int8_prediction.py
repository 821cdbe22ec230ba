"""What int8 will do to rows it has not seen, predicted from rows it has: how many labels it flips, how far it
moves a probability (see export/quantize.py for why, and bench/RESULTS.md section 4 for how well it predicts)."""

from __future__ import annotations

import numpy as np

NEIGHBOURS = 50  # calibration rows of nearest gap that predict what int8 does to a held-out row


def top_two_gap(reference: np.ndarray, logits: np.ndarray | None = None) -> np.ndarray:
    """Per row: the gap between the reference's highest and second-highest logit, as `logits` have it (the
    reference's own where None); a label flips where this falls below 0."""
    order = np.argsort(reference, axis=1)
    rows, top, second = np.arange(len(reference)), order[:, -1], order[:, -2]
    logits = reference if logits is None else logits
    return logits[rows, top] - logits[rows, second]


def predicted_agreement(calibration_gaps: np.ndarray, shifts: np.ndarray, held_out_gaps: np.ndarray,
                        tie_margin: float, neighbours: int = NEIGHBOURS) -> float:
    """The share of held-out rows (those with a gap of at least `tie_margin`) whose labels int8 is predicted to
    keep: a row with gap g flips as often as the `neighbours` calibration rows of nearest gap had theirs moved
    down (`shifts`, signed) by more than g."""
    gaps = held_out_gaps[held_out_gaps >= tie_margin]
    if not gaps.size or not calibration_gaps.size:
        return 1.0
    return float(1.0 - (_neighbour_shifts(calibration_gaps, shifts, gaps, neighbours) < -gaps[:, None]).mean())


def predicted_score_shift(calibration_gaps: np.ndarray, shifts: np.ndarray, held_out_gaps: np.ndarray,
                          neighbours: int = NEIGHBOURS) -> float:
    """The largest move of a held-out row's probability that int8 is predicted to make: each row's gap g moved
    by the largest shift of the `neighbours` calibration rows of nearest gap (the probability of the top label
    read as the logistic of the top-two gap, as it is with two labels)."""
    if not held_out_gaps.size or not calibration_gaps.size:
        return 0.0
    moved = held_out_gaps[:, None] + _neighbour_shifts(calibration_gaps, shifts, held_out_gaps, neighbours)
    return float(np.abs(_logistic(moved) - _logistic(held_out_gaps)[:, None]).max())


def _neighbour_shifts(calibration_gaps: np.ndarray, shifts: np.ndarray, gaps: np.ndarray, neighbours: int
                      ) -> np.ndarray:
    """For each of `gaps`, the shifts of the `neighbours` calibration rows whose gaps are nearest it."""
    order = np.argsort(calibration_gaps, kind="stable")
    by_gap, shifts = calibration_gaps[order], shifts[order]
    count, size = min(neighbours, by_gap.size), by_gap.size
    # The nearest `count` lie within `count` places of where g would sort in: look at those 2·count (or all) only.
    width = min(2 * count, size)
    start = np.clip(np.searchsorted(by_gap, gaps) - count, 0, size - width)
    window = start[:, None] + np.arange(width)[None, :]
    closest = np.argsort(np.abs(by_gap[window] - gaps[:, None]), axis=1, kind="stable")[:, :count]
    return shifts[np.take_along_axis(window, closest, axis=1)]


def _logistic(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))
