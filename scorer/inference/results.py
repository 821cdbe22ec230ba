"""What scoring gives each row: its status, and its label, probabilities and logits where it was scored."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa

from scorer.inference.rescue import Rescue, finite_rows
from scorer.text.tokens import Encoded

OK, TRUNCATED, NULL, EMPTY, NOT_TEXT, NON_FINITE = "ok", "truncated", "null", "empty", "not_text", "non_finite"
STATUSES = (OK, TRUNCATED, NULL, EMPTY, NOT_TEXT, NON_FINITE)
UNSCORED = (NULL, EMPTY, NOT_TEXT, NON_FINITE)
CODE = {name: code for code, name in enumerate(STATUSES)}
STATUS_NAMES = pa.array(STATUSES, type=pa.string())


@dataclass(frozen=True)
class Prepared:
    """A column ready for the model: statuses (indices into STATUSES), rows to score, their token ids."""

    status: np.ndarray
    valid: np.ndarray
    encoded: Encoded


@dataclass(frozen=True)
class Scored:
    """Per-row results of one column of texts; rows that were not scored have index -1 and NaN scores.

    `status` holds indices into STATUSES; `rescued` marks the rows the fp32 graph scored (non-finite logits from the
    run's own graph).
    """

    predicted: np.ndarray
    probabilities: np.ndarray
    logits: np.ndarray
    status: np.ndarray
    rescued: np.ndarray

    @property
    def scored(self) -> np.ndarray:
        return self.predicted >= 0

    @classmethod
    def concat(cls, parts: list[Scored]) -> Scored:
        """The results of consecutive pieces of one column, as one."""
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(part, f.name) for part in parts]) for f in fields(cls)))

    def split(self, rows: list[int]) -> list[Scored]:
        """The results of consecutive runs of `rows` rows each (the inputs scored together in one bundle)."""
        ends = np.cumsum(rows)
        return [Scored(*(getattr(self, f.name)[end - count:end] for f in fields(self)))
                for end, count in zip(ends, rows, strict=True)]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Each row's probabilities; NaN for a row of non-finite logits, which its callers judge apart (finite_rows),
    without numpy's warning on stderr."""
    with np.errstate(invalid="ignore"):
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)


def decided(probabilities: np.ndarray, threshold: float | None, positive: int) -> np.ndarray:
    """Each row's label index: with a threshold (two labels), the positive label where its probability is at least
    that, else the other one; without, the most probable label."""
    if threshold is None:
        return probabilities.argmax(axis=1)
    return np.where(probabilities[:, positive] >= threshold, positive, 1 - positive)


def scored(prepared: Prepared, valid_logits: np.ndarray, rescue: Rescue) -> Scored:
    """Every row's results; a row whose logits are not finite is scored again on the fp32 graph (`rescue`), and left
    unscored (status non_finite) where that cannot give finite ones either."""
    n, status, rescued = len(prepared.status), prepared.status, np.zeros(len(prepared.status), dtype=bool)
    finite = finite_rows(valid_logits)
    if not finite.all():
        again = ~finite
        valid_logits[again] = rescue.logits(prepared.encoded, np.flatnonzero(again))
        finite = finite_rows(valid_logits)
        rescued[prepared.valid[again & finite]] = True
        status = status.copy()
        status[prepared.valid[~finite]] = CODE[NON_FINITE]
    logits = np.full((n, valid_logits.shape[1]), np.nan, dtype=np.float32)
    logits[prepared.valid[finite]] = valid_logits[finite]
    predicted = np.full(n, -1, dtype=np.int64)
    predicted[prepared.valid[finite]] = valid_logits[finite].argmax(axis=1)
    return Scored(predicted=predicted, probabilities=softmax(logits), logits=logits, status=status, rescued=rescued)
