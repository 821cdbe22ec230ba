"""Evaluation of labelled input while it streams: metrics, a sample table, and the Markdown/JSON report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from scorer.errors import InputError
from scorer.metrics import Confusion


class Reservoir:
    """A seeded uniform sample of up to `size` items from a stream of unknown length (Algorithm R)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.items: list = []
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    def offer(self, item: object) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            return
        slot = int(self._rng.integers(0, self.seen))
        if slot < self.size:
            self.items[slot] = item


class Evaluation:
    """Accumulates a confusion matrix of true against predicted labels, window by window."""

    def __init__(self, labels: list, column: str, source: Path, samples: int, seed: int) -> None:
        self.column, self.source = column, source
        self.confusion = Confusion(labels)
        self._index = {str(label): i for i, label in enumerate(labels)}
        self.unlabelled = 0
        self.unscored = 0
        self.samples = Reservoir(samples, seed)

    def add(self, first_row: int, true_values: list, predicted: np.ndarray, texts: list) -> None:
        """Add one window; rows are numbered from 1 in messages, counting data rows only."""
        true_index = np.full(len(true_values), -1, dtype=np.int64)
        for row, value in enumerate(true_values):
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            key = _label_key(value)
            if key not in self._index:
                raise InputError(
                    f"{self.source} row {first_row + row}: label {value!r} in column '{self.column}' is not one the "
                    f"model knows ({', '.join(self._index)}); fix the row or pass --label-column for another column"
                )
            true_index[row] = self._index[key]
        has_label = true_index >= 0
        self.unlabelled += int((~has_label).sum())
        self.unscored += int((has_label & (predicted < 0)).sum())
        usable = np.flatnonzero(has_label & (predicted >= 0))
        self.confusion.add(true_index[usable], predicted[usable])
        labels = self.confusion.labels
        for row in usable:
            self.samples.offer((first_row + int(row), texts[row], labels[true_index[row]], labels[predicted[row]]))

    def to_dict(self) -> dict:
        result = self.confusion.to_dict()
        result.update(label_column=self.column, unlabelled_rows=self.unlabelled, unscored_labelled_rows=self.unscored)
        result["samples"] = [
            {"row": row, "sentence": text, "true_label": true, "predicted_label": pred}
            for row, text, true, pred in sorted(self.samples.items)
        ]
        return result


def _label_key(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def markdown(evaluation: dict) -> str:
    """The report as Markdown: headline metrics, per-class table, confusion matrix, sample table."""
    labels = [str(label) for label in evaluation["labels"]]
    lines = [
        "# Evaluation",
        "",
        f"- rows evaluated: {evaluation['rows']}",
        f"- accuracy: {evaluation['accuracy']:.4f}",
        f"- Matthews correlation (MCC): {evaluation['mcc']:.4f}",
        "",
        "| label | precision | recall | F1 | support |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {c['label']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
        for c in evaluation["per_class"]
    ]
    lines += ["", "Confusion matrix (rows: true label, columns: predicted):", ""]
    lines += ["| true \\ predicted | " + " | ".join(labels) + " |", "| --- " * (len(labels) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(map(str, row)) + " |"
              for label, row in zip(labels, evaluation["confusion_matrix"], strict=True)]
    if evaluation["samples"]:
        lines += ["", "| row | sentence | true label | predicted label |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {s['row']} | {_cell(s['sentence'])} | {s['true_label']} | {s['predicted_label']} |"
            for s in evaluation["samples"]
        ]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(evaluation: dict, path: Path) -> tuple[Path, Path]:
    """Write `path` as Markdown and the same figures as JSON beside it."""
    from scorer.atomic import write_text

    json_path = path.with_suffix(".json")
    write_text(path, markdown(evaluation))
    write_text(json_path, json.dumps(evaluation, indent=2, default=str) + "\n")
    return path, json_path
