"""Classification metrics from a confusion matrix: accuracy, Matthews correlation, per-class precision/recall."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class Confusion:
    """A running confusion matrix over a fixed label list (rows: true label, columns: predicted)."""

    def __init__(self, labels: Sequence[int | str]) -> None:
        self.labels = list(labels)
        self.matrix = np.zeros((len(self.labels), len(self.labels)), dtype=np.int64)

    def add(self, true_index: np.ndarray, predicted_index: np.ndarray) -> None:
        np.add.at(self.matrix, (np.asarray(true_index), np.asarray(predicted_index)), 1)

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    def accuracy(self) -> float:
        return float(np.trace(self.matrix) / self.total) if self.total else float("nan")

    def mcc(self) -> float:
        """Matthews correlation, the multi-class form (Gorodkin 2004); 0 when undefined, as scikit-learn does."""
        c = self.matrix.astype(np.float64)
        total = c.sum()
        correct = np.trace(c)
        predicted = c.sum(axis=0)
        actual = c.sum(axis=1)
        numerator = correct * total - predicted @ actual
        denominator = np.sqrt(total**2 - predicted @ predicted) * np.sqrt(total**2 - actual @ actual)
        return float(numerator / denominator) if denominator else 0.0

    def per_class(self) -> list[dict]:
        rows = []
        for i, label in enumerate(self.labels):
            tp = int(self.matrix[i, i])
            predicted = int(self.matrix[:, i].sum())
            actual = int(self.matrix[i, :].sum())
            precision = tp / predicted if predicted else 0.0
            recall = tp / actual if actual else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            rows.append({"label": label, "precision": precision, "recall": recall, "f1": f1, "support": actual})
        return rows

    def to_dict(self) -> dict:
        return {
            "rows": self.total,
            "accuracy": self.accuracy(),
            "mcc": self.mcc(),
            "per_class": self.per_class(),
            "labels": self.labels,
            "confusion_matrix": self.matrix.tolist(),
        }


def confusion_of(labels: Sequence[int | str], true_index: np.ndarray, predicted_index: np.ndarray) -> Confusion:
    confusion = Confusion(labels)
    confusion.add(true_index, predicted_index)
    return confusion


SWEEP = tuple(round(0.05 * step, 2) for step in range(1, 20))  # the thresholds a two-label evaluation tries


def threshold_sweep(true_positive: np.ndarray, scores: np.ndarray) -> dict:
    """A two-label model's figures had its rows been labelled positive at each threshold of SWEEP on their score
    (`true_positive`: whether each row's true label is the positive one), and the threshold of the best MCC."""
    positives, negatives = np.sort(scores[true_positive]), np.sort(scores[~true_positive])
    rows = []
    for threshold in SWEEP:
        tp = len(positives) - int(np.searchsorted(positives, threshold, side="left"))
        fp = len(negatives) - int(np.searchsorted(negatives, threshold, side="left"))
        fn, tn = len(positives) - tp, len(negatives) - fp
        confusion = Confusion([0, 1])
        confusion.matrix[:] = [[tn, fp], [fn, tp]]
        rows.append({"threshold": threshold, "accuracy": confusion.accuracy(), "mcc": confusion.mcc(),
                     "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0})
    # Of equal MCCs, the threshold nearest 0.5 (the more probable label's): a model whose labels do no better at any
    # other threshold (every row one label, say) is not advised to move it.
    best = max(rows, key=lambda row: (row["mcc"], -abs(row["threshold"] - 0.5)))
    return {"sweep": rows, "best_mcc_threshold": best["threshold"], "best_mcc": best["mcc"]}
