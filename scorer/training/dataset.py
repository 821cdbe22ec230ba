"""Training data: the labelled file, its label set, a validation split (a file or a seeded fraction), and checks
of what the tokenizer reads of it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from scorer.config import TrainConfig
from scorer.data.labels import LabelIndex, read_labelled
from scorer.errors import InputError
from scorer.text.tokens import Encoded

log = logging.getLogger("scorer")
MAX_LABELS = 100
_RARE_ROWS = 5  # a label with fewer training rows is warned of
_OVERLAP_WARNING = 0.1  # share of validation sentences that are also training sentences worth a warning
_UNKNOWN_WARNING = 0.05  # share of [UNK] training tokens that says the vocabulary does not fit the text


@dataclass(frozen=True)
class TrainingData:
    """Train and validation texts with label indices into `labels`."""

    labels: list[int | str]
    train_texts: list[str]
    train_targets: np.ndarray
    val_texts: list[str]
    val_targets: np.ndarray
    val_source: str


def load_training_data(config: TrainConfig, warn: bool = True) -> TrainingData:
    """Read --data (and --val-data), fix the label set from the training labels, split when needed; `warn`: say
    what in the data works against training (export, reading the rows again for parity, has no use for that)."""
    train = read_labelled(config.data, config.text_column, config.label_column)
    labels = sorted(set(train.labels), key=lambda v: (str(type(v)), v))
    if len(labels) < 2:
        raise InputError(
            f"{config.data}: column '{config.label_column}' has only the label {labels[0]!r}; "
            "a classifier needs at least two"
        )
    if len(labels) > MAX_LABELS:
        raise InputError(
            f"{config.data}: column '{config.label_column}' has {len(labels)} distinct values; "
            f"at most {MAX_LABELS} labels are supported; is --label-column right?"
        )
    index = LabelIndex(labels, unlabelled_mark=False)
    targets = index.indices(train.labels, config.data, config.label_column, 1)
    if warn:
        _warn_rare(labels, targets, config)
        _warn_conflicts(train.texts, targets, labels, config)
    if config.val_data is not None:
        val = read_labelled(config.val_data, config.text_column, config.label_column)
        unknown = index.unknown(val.labels)
        if unknown:
            raise InputError(
                f"{config.val_data}: label(s) {', '.join(unknown)} in column '{config.label_column}' "
                f"do not occur in {config.data}; the model only knows {', '.join(map(str, labels))}"
            )
        if warn:
            _warn_overlap(train.texts, val.texts, config)
        val_targets = index.indices(val.labels, config.val_data, config.label_column, 1)
        return TrainingData(labels, train.texts, targets, val.texts, val_targets, str(config.val_data))
    return _split(labels, train.texts, targets, config)


def _warn_rare(labels: list, targets: np.ndarray, config: TrainConfig) -> None:
    """Say when a label has too few rows to be learnt: a typo (11 for 1) makes a class of its own."""
    counts = np.bincount(targets, minlength=len(labels))
    for label, count in zip(labels, counts, strict=True):
        if count < _RARE_ROWS:
            log.warning("%s: label %r in column '%s' occurs in only %d of %d rows, too few to learn it; is it a typo?",
                        config.data, label, config.label_column, count, len(targets))


def _warn_conflicts(texts: list[str], targets: np.ndarray, labels: list, config: TrainConfig) -> None:
    """Say when one sentence occurs with different labels (CoLA's training file has 11): no model fits both."""
    seen: dict[str, set[int]] = {}
    for text, target in zip(texts, targets.tolist(), strict=True):
        seen.setdefault(text, set()).add(target)
    conflicts = [(text, sorted(found)) for text, found in seen.items() if len(found) > 1]
    if conflicts:
        text, found = conflicts[0]
        log.warning("%s: %d sentence(s) occur with more than one label (%r as %s); the model cannot fit both",
                    config.data, len(conflicts), text[:80], " and ".join(str(labels[i]) for i in found))


def _warn_overlap(train_texts: list[str], val_texts: list[str], config: TrainConfig) -> None:
    """Say when many validation sentences are training sentences too: then validation measures recall, and the
    epoch it selects is the one that memorised best."""
    seen = set(train_texts)
    shared = sum(text in seen for text in val_texts)
    if shared > _OVERLAP_WARNING * len(val_texts):
        log.warning("%d of %d validation sentences in %s also occur in %s: validation partly measures memory, "
                    "not new sentences", shared, len(val_texts), config.val_data, config.data)


def _split(labels: list, texts: list[str], targets: np.ndarray, config: TrainConfig) -> TrainingData:
    if len(texts) < 4:
        raise InputError(f"{config.data} has {len(texts)} rows; too few to split off a validation set; pass "
                         "--val-data, or give at least 4 rows")
    # Stratified: each label gives its share of rows (at least one where it has two), so a rare class is validated.
    rng = np.random.default_rng(config.seed)
    chosen = [rng.permutation(rows)[: max(1, round(len(rows) * config.val_fraction))]
              for rows in (np.flatnonzero(targets == label) for label in range(len(labels))) if len(rows) >= 2]
    if not chosen:
        raise InputError(f"{config.data}: no label has two rows, so none can be validated; pass --val-data")
    val_rows = np.sort(np.concatenate(chosen))
    train_rows = np.setdiff1d(np.arange(len(texts)), val_rows)
    return TrainingData(
        labels=labels,
        train_texts=[texts[i] for i in train_rows],
        train_targets=targets[train_rows],
        val_texts=[texts[i] for i in val_rows],
        val_targets=targets[val_rows],
        val_source=f"{config.val_fraction:.0%} of each label of {config.data.name}, seed {config.seed}",
    )


def check_coverage(train_set: Encoded, hf_tokenizer, config: TrainConfig) -> None:
    """Refuse text the encoder's vocabulary cannot read at all; warn where much of it is [UNK]."""
    known, unknown = train_set.coverage(hf_tokenizer.unk_token_id, hf_tokenizer.all_special_ids)
    if not known:
        raise InputError(f"{config.data}: no sentence has a token that the vocabulary of {config.model} knows "
                         f"({unknown} [UNK]); is --model right for this text?")
    if unknown > _UNKNOWN_WARNING * (known + unknown):
        log.warning("%.0f%% of the training tokens are [UNK]: the vocabulary of %s reads this text poorly; is "
                    "--model right for it?", 100 * unknown / (known + unknown), config.model)


def refuse_hollow(texts: list[str], lengths: np.ndarray, bare: int, config: TrainConfig) -> None:
    """Refuse sentences the tokenizer reads no token in (zero-width or control characters only): not blank to Python,
    so not refused as empty where the file was read, but `[CLS] [SEP]` alone to the model, as `scorer run` leaves
    such a row unscored (status empty)."""
    hollow = np.flatnonzero(lengths <= bare)
    if hollow.size:
        shown = ", ".join(ascii(texts[i]) for i in hollow[:3]) + (", ..." if hollow.size > 3 else "")
        raise InputError(f"{config.data}{' or ' + str(config.val_data) if config.val_data else ''}: {hollow.size} "
                         f"sentence(s) hold no token the tokenizer reads ({shown}: zero-width or control characters "
                         "only); fix or remove those rows")
