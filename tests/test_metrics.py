"""Accuracy, MCC and per-class figures against scikit-learn as the oracle."""

from __future__ import annotations

import numpy as np
import pytest

from scorer.metrics import confusion_of

metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("classes,seed", [(2, 0), (2, 1), (3, 2), (5, 3)])
def test_matches_scikit_learn(classes, seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, classes, 400)
    predicted = np.where(rng.random(400) < 0.7, true, rng.integers(0, classes, 400))
    confusion = confusion_of(list(range(classes)), true, predicted)
    assert confusion.accuracy() == pytest.approx(metrics.accuracy_score(true, predicted))
    assert confusion.mcc() == pytest.approx(metrics.matthews_corrcoef(true, predicted))
    precision, recall, f1, support = metrics.precision_recall_fscore_support(true, predicted, zero_division=0)
    for i, row in enumerate(confusion.per_class()):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision[i], recall[i], f1[i], support[i])
        )
    assert confusion.matrix.tolist() == metrics.confusion_matrix(true, predicted).tolist()


def test_constant_prediction_has_mcc_zero():
    confusion = confusion_of([0, 1], np.array([0, 1, 1, 1]), np.array([1, 1, 1, 1]))
    assert confusion.mcc() == 0.0
    assert confusion.accuracy() == 0.75


def test_the_threshold_sweep_matches_labelling_the_rows_at_each_threshold():
    from scorer.metrics import SWEEP, confusion_of, threshold_sweep

    rng = np.random.default_rng(3)
    truth = rng.random(500) < 0.4
    scores = np.clip(rng.normal(np.where(truth, 0.65, 0.35), 0.2), 0, 1).astype(np.float32)
    scores[:20] = 0.5  # (rows exactly at a threshold are labelled positive)
    found = threshold_sweep(truth, scores)
    for row, threshold in zip(found["sweep"], SWEEP, strict=True):
        confusion = confusion_of([0, 1], truth.astype(int), (scores >= threshold).astype(int))
        positive = confusion.per_class()[1]
        assert row["threshold"] == threshold and row["accuracy"] == pytest.approx(confusion.accuracy())
        assert row["mcc"] == pytest.approx(confusion.mcc()) and row["precision"] == pytest.approx(positive["precision"])
        assert row["recall"] == pytest.approx(positive["recall"])
    assert found["best_mcc"] == max(row["mcc"] for row in found["sweep"])


def test_of_equal_mccs_the_sweep_keeps_the_threshold_nearest_the_more_probable_label():
    """A model that labels every row alike scores MCC 0 at every threshold: the best was the lowest (0.05), and
    training and the evaluation advised `--threshold 0.05`."""
    from scorer.metrics import threshold_sweep

    truth = np.arange(100) % 2 == 0
    assert threshold_sweep(truth, np.full(100, 0.52, dtype=np.float32))["best_mcc_threshold"] == 0.5
    scores = np.where(truth, 0.9, 0.1).astype(np.float32)  # every threshold from 0.15 to 0.9 separates them
    assert threshold_sweep(truth, scores)["best_mcc_threshold"] == 0.5
    scores = np.where(truth, 0.9, 0.6).astype(np.float32)  # from 0.65 to 0.9: the nearest 0.5 of those
    assert threshold_sweep(truth, scores)["best_mcc_threshold"] == 0.65
