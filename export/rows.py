"""The rows export checks and calibrates on: --data and --calibration where given, else the checkpoint's own
validation and training rows (as `scorer train` read them), else the packaged examples."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scorer.config import ExportConfig, TrainConfig
from scorer.data.inputs import expand_inputs, parts_of
from scorer.data.labels import LabelIndex
from scorer.data.read import TableReader
from scorer.data.strings import plain_text
from scorer.errors import InputError, ScorerError
from scorer.packaged import example_file
from scorer.pytorch.model import HeadConfig
from scorer.text.tokens import Encoded
from scorer.training.dataset import TrainingData, load_training_data

log = logging.getLogger("scorer")
# Fewer validation rows than this make a noisy gate (one flipped label is 0.5% of 200): the packaged examples then.
MIN_HELD_OUT = 200


@dataclass(frozen=True)
class ParityRows:
    """Texts, label indices (-1 where a row has no label; None without labels) and where they came from."""

    texts: list[str]
    targets: np.ndarray | None
    source: str


def recorded_data(trained: dict, head: HeadConfig) -> TrainingData | None:
    """The checkpoint's training and validation rows, split as `scorer train` split them, where its files are still
    there and still hold the model's labels; else None (said why, where a file is there but reads otherwise)."""
    data, val = trained.get("data"), trained.get("val_data")
    if not data or not _still_there(data) or (val and not _still_there(val)):
        return None
    try:
        loaded = load_training_data(TrainConfig(
            data=Path(data), val_data=Path(val) if val else None, text_column=trained.get("text_column", "sentence"),
            label_column=trained.get("label_column", "label"), seed=trained.get("seed", 42),
            val_fraction=trained.get("val_fraction", 0.1)), warn=False)
    except ScorerError as exc:
        log.warning("the checkpoint's training data no longer reads as it did (%s); not used by export", exc)
        return None
    if loaded.labels != head.labels:
        log.warning("%s now holds the labels %s, and the model knows %s; not used by export", data,
                    loaded.labels, head.labels)
        return None
    return loaded


def _still_there(spec: str) -> bool:
    """Whether the data files a recorded --data or --val-data (a file, a directory or a glob) names are there."""
    try:
        return all(path.is_file() for path in expand_inputs(spec, tell=False)[0])
    except InputError:
        return False


def parity_rows(config: ExportConfig, head: HeadConfig, recorded: TrainingData | None, text_column: str,
                label_column: str) -> ParityRows:
    """--data; else the checkpoint's validation rows where there are MIN_HELD_OUT of them; else the packaged
    examples (read by their own columns, their labels used only where they are the model's)."""
    if config.data is None and recorded is not None and len(recorded.val_texts) >= MIN_HELD_OUT:
        chosen = slice(0, config.max_rows)
        return ParityRows(recorded.val_texts[chosen], recorded.val_targets[chosen],
                          f"{recorded.val_source} (the checkpoint's validation data)")
    path = config.data
    if path is None:
        path, text_column, label_column = packaged_examples()
    read = _DataRows.read(path, text_column, label_column)
    rows = read.with_text()[: config.max_rows]
    texts = [read.texts[i] for i in rows]
    if not rows:
        raise InputError(f"{path} has no row with text in column '{text_column}'; parity needs sentences")
    if rows[-1] + 1 > len(rows):  # what `scorer run` scores as empty or not_text has no parity to check
        log.info("parity: %d row(s) of %s without text left out", rows[-1] + 1 - len(rows), path)
    if read.labels is None:  # ('': --label-column '', no labels)
        if config.label_column and config.data is not None:
            read.require(label_column, "--label-column")  # named by the user: its absence is an error
        return ParityRows(texts, None, str(path))
    index = LabelIndex(head.labels, ids=head.label_ids)
    try:
        targets = np.array([index.index(read.labels[i], *read.place(i, label_column)) for i in rows],
                           dtype=np.int64)
    except InputError:
        if config.data is not None:
            raise
        return ParityRows(texts, None, str(path))  # the packaged examples' labels are not this model's
    return ParityRows(texts, targets if (targets >= 0).any() else None, str(path))


def without_hollow(rows: ParityRows, encoded: Encoded, bare_length: int) -> tuple[ParityRows, Encoded]:
    """The parity rows less those the tokenizer reads no token in (zero-width or control characters only: text to
    Python), which `scorer run` leaves unscored (status empty) as it does blank ones, so that parity's figures are of
    the rows a run scores."""
    kept = np.flatnonzero(encoded.lengths > bare_length)
    if len(kept) == len(encoded):
        return rows, encoded
    if not len(kept):
        raise InputError(f"{rows.source} has no row with a token the tokenizer reads (zero-width or control "
                         "characters only); parity needs sentences")
    log.info("parity: %d row(s) of %s without a token the tokenizer reads left out (scorer run leaves them "
             "unscored)", len(encoded) - len(kept), rows.source)
    targets = None if rows.targets is None else rows.targets[kept]
    return ParityRows([rows.texts[i] for i in kept], targets, rows.source), encoded.take(kept)


def warn_if_few(rows: ParityRows, config: ExportConfig) -> None:
    """Say where the parity rows are too few for the gate to tell a variant that meets --min-agreement from one that
    does not: below 1 / (1 - min_agreement) rows (200 at 99.5%), one flipped label alone fails it."""
    enough = math.ceil(1 / (1 - config.min_agreement) - 1e-9) if config.min_agreement < 1 else 0
    if len(rows.texts) >= enough:
        return
    how = f"--max-rows {enough} or more" if config.max_rows < enough else f"--data with {enough} or more rows"
    log.warning("parity on %d row(s) of %s: too few to judge a label agreement of %s (--min-agreement); one flipped "
                "label is %.1f%% of them, and none proves little; pass %s", len(rows.texts), rows.source,
                f"{config.min_agreement:.1%}", 100 / len(rows.texts), how)


def calibration_texts(config: ExportConfig, trained: dict, recorded: TrainingData | None,
                      text_column: str) -> list[str]:
    """Sentences for int8 calibration, never the parity rows: --calibration; else the checkpoint's training rows
    (its split-off validation rows left out); else its training file; else the packaged examples."""
    path = config.calibration
    if path is None and recorded is not None:
        texts, path = recorded.train_texts, Path(trained["data"])
    else:
        if path is None:
            path = Path(trained["data"]) if trained.get("data") and _still_there(trained["data"]) else None
        if path is None:
            path, text_column, _ = packaged_examples()
            if "int8" in (config.variants or ("int8",)):
                log.warning("int8 is calibrated on the packaged example sentences, not on text of this model's own "
                            "(no --calibration, and no training file recorded with the checkpoint); pass "
                            "--calibration FILE with sentences like those it will score")
        read = _DataRows.read(path, text_column, None)
        texts = [read.texts[i] for i in read.with_text()]
    if not texts:
        raise InputError(f"{path} has no sentences in column '{text_column}' to calibrate int8 with")
    rows = np.random.default_rng(0).permutation(len(texts))[: config.calibration_rows]
    what = " and ".join(use for variant, use in (("int8", "int8 calibration"), ("fp16", "the fp16 graph's choice"))
                        if variant in (config.variants or ("int8", "fp16")))
    log.info("%s on %d sentences of %s", what, len(rows), path)
    return [texts[i] for i in sorted(rows)]


@dataclass(frozen=True)
class _DataRows:
    """Every row of the data files a --data or --calibration path names (a file, a directory or a glob, listed as
    `scorer run` lists INPUT), one file after another: its text, its label where every file has the label column."""

    files: list[Path]
    ends: np.ndarray  # the rows up to the end of each file
    texts: list
    labels: list | None

    @classmethod
    def read(cls, spec: Path, text_column: str, label_column: str | None) -> _DataRows:
        files, texts, labels, ends = parts_of(str(spec)), [], [], []
        for path in files:
            reader = TableReader(path)
            reader.require(text_column, "--text-column")
            table = reader.read_all()
            reader.warn_if_quoted_as_csv()
            texts += plain_text(table.column(text_column)).to_pylist()
            labels = labels + table.column(label_column).to_pylist() \
                if labels is not None and label_column in reader.columns else None
            ends.append(len(texts))
        return cls(files, np.array(ends), texts, labels)

    def with_text(self) -> list[int]:
        """The rows that hold text (not null, not blank)."""
        return [i for i, text in enumerate(self.texts) if isinstance(text, str) and text.strip()]

    def place(self, row: int, column: str) -> tuple[Path, str, int]:
        """Where a row is, as LabelIndex.index names it: its file, the column and its row in the file (from 1)."""
        file = int(np.searchsorted(self.ends, row, side="right"))
        return self.files[file], column, row + 1 - (int(self.ends[file - 1]) if file else 0)

    def require(self, column: str, option: str) -> None:
        """Refuse the first file without `column`, naming it."""
        for path in self.files:
            TableReader(path).require(column, option)


def packaged_examples() -> tuple[Path, str, str]:
    """The packaged example sentences and their own columns, whatever columns the checkpoint was trained on."""
    return example_file("train.csv"), "sentence", "label"
