"""Figures of a finished unit, read back from its parts: status counts, evaluation, sampled rows.

Reading the written parts (not counters kept while streaming) makes a resumed run report the same figures as an
uninterrupted one, and makes the check and the sample table describe exactly what was written. A part is a part file
or, for a small input scored with others (scorer.scoring.bundle), the scored table itself.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scorer.data.labels import LabelIndex
from scorer.data.strings import plain_text
from scorer.inference.results import STATUSES, TRUNCATED, UNSCORED
from scorer.metrics import confusion_of, threshold_sweep
from scorer.scoring.evaluate import evaluation

log = logging.getLogger("scorer")


Part = Path | pa.Table


@dataclass(frozen=True)
class Columns:
    """Names of the columns a unit reads and writes."""

    text: str
    label: str | None
    predicted: str
    score: str
    status: str
    kept: tuple[str, ...] | None = None  # the input columns the output carries (--keep-columns); None: all
    probabilities: tuple[str, ...] = ()  # each label's probability column, in the model's label order (--probabilities)

    def results(self) -> list[str]:
        """The columns scorer adds, in their order."""
        return [self.predicted, self.score, self.status, *self.probabilities]

    def written(self) -> list[str] | None:
        """The output's columns where --keep-columns chose them, else None (every input column, then the results)."""
        return None if self.kept is None else [*self.kept, *self.results()]


@dataclass(frozen=True)
class Tally:
    rows: int
    status_counts: dict[str, int]
    evaluation: dict | None
    # Scored rows by predicted label, every label of the model's in its order (JSON keys: the labels as text): what
    # a monitor compares night to night, where a broken feed shows first (every row one label, say).
    predicted_counts: dict[str, int]
    # An unlabelled input's sampled scored rows (--samples; a labelled one's are in its evaluation).
    samples: list[dict] | None = None


def read_column(parts: list[Part], name: str) -> pa.ChunkedArray:
    # concat_tables joins the parts' chunks without copying; pa.chunked_array of ChunkedArrays would convert
    # them element by element through Python (0.1 s per 200k rows).
    return pa.concat_tables([_read(part, name) for part in parts]).column(name)


def _read(part: Part, name: str) -> pa.Table:
    return part.select([name]) if isinstance(part, pa.Table) else pq.read_table(part, columns=[name])


def tally(parts: list[Part], columns: Columns, index: LabelIndex, source: Path, samples: int, seed: int,
          positive: int | None = None) -> Tally:
    """The unit's figures; `positive`: a two-label model's positive label index (its evaluation then says how each
    threshold on the score would have done)."""
    status = read_column(parts, columns.status)
    counts = Counter({name: 0 for name in STATUSES})
    counts.update({row["values"]: row["counts"] for row in pc.value_counts(status).to_pylist()})
    predicted_column = read_column(parts, columns.predicted)
    found = {row["values"]: row["counts"] for row in pc.value_counts(predicted_column).to_pylist()}
    predicted_counts = {str(label): found.get(label, 0) for label in index.labels}
    if columns.label is None:
        return Tally(len(status), dict(counts), None, predicted_counts, _unlabelled_sample(parts, columns, status,
                                                                                          samples, seed))
    labels = index.labels
    true = index.indices(read_column(parts, columns.label).to_pylist(), source, columns.label, 1)
    predicted = index.indices(predicted_column.to_pylist(), source, columns.predicted, 1)
    usable = np.flatnonzero((true >= 0) & (predicted >= 0))
    if not usable.size:  # accuracy would be 0/0: NaN in the summary, which strict JSON readers refuse
        if len(status):  # (a file without rows is warned of once, as such)
            log.warning("%s: no row has both a label and a score; nothing to evaluate", source)
        return Tally(len(status), dict(counts), None, predicted_counts)
    confusion = confusion_of(labels, true[usable], predicted[usable])
    chosen = _choose(usable, samples, seed)
    texts, scores = rows_of(parts, columns.text, chosen), rows_of(parts, columns.score, chosen)
    table = [{"row": int(r) + 1, "sentence": text, "true_label": labels[true[r]],
              "predicted_label": labels[predicted[r]], "score": score}
             for r, text, score in zip(chosen, texts, scores, strict=True)]
    result = evaluation(confusion, columns.label, int((true < 0).sum()),
                        int(((true >= 0) & (predicted < 0)).sum()), table)
    if positive is not None:
        scores_of = read_column(parts, columns.score).to_numpy(zero_copy_only=False)[usable]
        result["thresholds"] = {"positive_label": labels[positive],
                                **threshold_sweep(true[usable] == positive, scores_of)}
    return Tally(len(status), dict(counts), result, predicted_counts)


def _unlabelled_sample(parts: list[Part], columns: Columns, status: pa.ChunkedArray, size: int,
                       seed: int) -> list[dict] | None:
    """`size` scored rows of an unlabelled input, chosen at random (seeded): what its predictions look like."""
    if size <= 0:
        return None
    chosen = _choose(np.flatnonzero(~np.isin(status.to_numpy(zero_copy_only=False), UNSCORED)), size, seed)
    return [{"row": int(r) + 1, "sentence": text, "predicted_label": label, "score": score}
            for r, text, label, score in zip(chosen, rows_of(parts, columns.text, chosen),
                                             rows_of(parts, columns.predicted, chosen),
                                             rows_of(parts, columns.score, chosen), strict=True)]


def scored_sample(parts: list[Part], columns: Columns, size: int, seed: int) -> tuple[list[str], np.ndarray, list]:
    """Texts, scores and predicted labels of `size` scored rows chosen at random (seeded), a quarter of them (at
    least one) truncated rows where there are any: the rare long rows are where scorer's tokenising does most (the
    long-row cut), and a uniform sample would seldom hold one."""
    status = read_column(parts, columns.status).to_numpy(zero_copy_only=False)
    scored = np.flatnonzero(~np.isin(status, UNSCORED))
    long = _choose(np.flatnonzero(status == TRUNCATED), max(1, size // 4) if size > 0 else 0, seed)
    chosen = np.union1d(long, _choose(np.setdiff1d(scored, long), size - len(long), seed))
    scores = np.array(rows_of(parts, columns.score, chosen), dtype=np.float64)
    return rows_of(parts, columns.text, chosen), scores, rows_of(parts, columns.predicted, chosen)


def _choose(rows: np.ndarray, size: int, seed: int) -> np.ndarray:
    if size <= 0 or len(rows) == 0:
        return np.array([], dtype=np.int64)
    picked = np.random.default_rng(seed).choice(rows, size=min(size, len(rows)), replace=False)
    return np.sort(picked)


def rows_of(parts: list[Part], column: str, rows: np.ndarray) -> list:
    """Values of `column` at global row numbers `rows` (sorted), reading only the parts that hold them; text stored
    another way (bytes, string views) as strings."""
    out: list = []
    start = 0
    for part in parts:
        count = part.num_rows if isinstance(part, pa.Table) else pq.ParquetFile(part).metadata.num_rows
        inside = rows[(rows >= start) & (rows < start + count)] - start
        if len(inside):
            values = plain_text(_read(part, column).column(column))  # text as the run read it
            out.extend(values.take(pa.array(inside)).to_pylist())
        start += count
    return out
