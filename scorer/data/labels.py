"""Class labels as files write them: one reading of a label value for training, export and evaluation, and a
labelled file read whole (read_labelled)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scorer.data.inputs import parts_of
from scorer.data.read import TableReader
from scorer.data.strings import plain_text
from scorer.errors import InputError

log = logging.getLogger("scorer")
# A boolean label as CSV writers spell it (pandas True, Spark true, R TRUE, in any case), read as Parquet's are
_BOOLEANS = {"false": 0, "true": 1}


def label_value(value: object) -> int | str | None:
    """A label as an int where it is a whole number however written (1, 1.0, "1", " 1.0 ", True), else the stripped
    text; None where it is missing (null, NaN, blank), as pandas and CSV files write a missing label."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if value.is_integer() else str(value)
    text = str(value).strip()
    if not text:
        return None
    number = _whole_number(text)
    return text if number is None else number


def booleans_as_numbers(values: list[int | str | None]) -> list[int | str | None]:
    """`label_value`s of one file whose every label is a boolean as CSV writers spell it (pandas True, Spark true, R
    TRUE) as 1 and 0, as Parquet's booleans read; a file whose labels include other names (true, false and
    half-true, say) keeps them all as names."""
    present = [value for value in values if value is not None]
    if not present or not all(isinstance(value, str) and value.lower() in _BOOLEANS for value in present):
        return values
    return [None if value is None else _BOOLEANS[value.lower()] for value in values]


def _whole_number(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None


def check_one_kind(values: list[int | str], path: Path | str, column: str) -> None:
    """Refuse labels that mix whole numbers and names (`label_value`s, rows numbered from 1). One stray name among
    0/1 (a typo, a note) would otherwise make every label a name, and that name the positive class: each score would
    be the probability of the typo."""
    names = [row for row, value in enumerate(values) if isinstance(value, str)]
    if not names or len(names) == len(values):
        return
    numbers = [row for row, value in enumerate(values) if not isinstance(value, str)]
    odd, usual, kind = (names, numbers, "whole numbers") if len(names) <= len(numbers) else (numbers, names, "names")
    examples = sorted({str(values[row]) for row in usual})
    shown = ", ".join(examples[:5]) + (", ..." if len(examples) > 5 else "")
    more = f" (and {len(odd) - 1} more row(s))" if len(odd) > 1 else ""
    raise InputError(
        f"{path} row {odd[0] + 1}: column '{column}' holds the label {values[odd[0]]!r}{more} where {len(usual)} "
        f"other rows hold {kind} ({shown}); labels must be all whole numbers or all names: fix that row"
    )


def normalise_labels(values: list) -> list[int | str]:
    """Present labels as ints when every one is a whole number, else all as text (so "1" and "yes" are one kind)."""
    out = [label_value(v) for v in values]
    if all(isinstance(v, int) for v in out):
        return out
    return [str(v) for v in out]


# How Hugging Face datasets label a row without a label (every row of GLUE's test splits): missing, where -1 is not
# one of the model's labels.
UNLABELLED = -1


class LabelIndex:
    """Maps label values as written in any file (1, "1", 1.0) to the model's label indices."""

    def __init__(self, labels: list, unlabelled_mark: bool = True, ids: bool = False) -> None:
        """`unlabelled_mark`: whether UNLABELLED, where it is not one of `labels`, marks a row without a label (in
        files to score and check on; training data must say which rows lack a label by leaving them blank). `ids`:
        whether a label may also be written as its index, as a transformers model's label2id numbers its named
        labels (a CoLA file's 0 and 1 for a model that calls them unacceptable and acceptable)."""
        self.labels = labels
        self._index = {str(label_value(label)): i for i, label in enumerate(labels)}
        self._known = ", ".join(f"{label} ({i})" if ids else label for label, i in self._index.items())
        if ids:
            self._index.update({str(i): i for i in range(len(labels)) if str(i) not in self._index})
        self._mark = unlabelled_mark and str(UNLABELLED) not in self._index
        # A model of two boolean labels (1 and 0, or False and True learnt as names) finds them written either way:
        # as a Parquet boolean (1, 0) or as CSV writers spell one (True, false, ...).
        spelled = {key.lower(): i for key, i in self._index.items()}
        self._booleans: dict[str, int] = {}
        for no, yes in (("0", "1"), ("false", "true")):
            if len(self._index) == 2 and set(spelled) == {no, yes}:
                self._booleans = {"0": spelled[no], "false": spelled[no], "1": spelled[yes], "true": spelled[yes]}

    def _missing(self, key: int | str | None) -> bool:
        return key is None or (self._mark and key == UNLABELLED)

    def index(self, value: object, source: Path | str, column: str, row: int) -> int:
        """The model's index of `value`, -1 where the label is missing (or -1 and not a label of the model's); an
        unknown value is an InputError naming its row."""
        key = label_value(value)
        if self._missing(key):
            return -1
        index = self._find(key)
        if index is None:
            header = " (the column's own name: a header line repeated, as files joined with their headers hold? " \
                "remove that line)" if str(value).strip() == column else ""
            raise InputError(
                f"{source} row {row}: label {value!r} in column '{column}' is not one the model "
                f"knows ({self._known}){header}; fix the row, pass --label-column for another column, or "
                "--label-column '' to use no labels"
            )
        return index

    def indices(self, values: list, source: Path | str, column: str, first_row: int) -> np.ndarray:
        """`index` of each value, rows numbered from `first_row`."""
        return np.array([self.index(value, source, column, first_row + row) for row, value in enumerate(values)],
                        dtype=np.int64)

    def unknown(self, values: list) -> list[str]:
        """The distinct present values that are not the model's labels, as text, sorted."""
        return sorted({str(value) for value in values
                       if not self._missing(label_value(value)) and self._find(label_value(value)) is None})

    def _find(self, key: int | str) -> int | None:
        index = self._index.get(str(key))
        return self._booleans.get(str(key).lower()) if index is None else index


@dataclass(frozen=True)
class LabelledData:
    """Texts and their labels from one file, with the file they came from."""

    texts: list[str]
    labels: list[int | str]
    source: Path


def read_labelled(path: Path, text_column: str, label_column: str) -> LabelledData:
    """Read a whole labelled file, or every data file of a directory or glob (listed as `scorer run` lists its
    INPUT: sorted, names with a leading '_' or '.' left out of a directory) one after another; every row needs a
    non-empty text and a label."""
    files = parts_of(str(path))
    parts = [_read_labelled_file(file, text_column, label_column, len(files) > 1) for file in files]
    if len(parts) == 1:
        return LabelledData(texts=parts[0][0], labels=normalise_labels(parts[0][1]), source=Path(path))
    if not any(texts for texts, _ in parts):
        raise InputError(f"{path} has no data rows in any of its {len(files)} files; labelled data needs at least one")
    filled = [(file, values) for file, (_, values) in zip(files, parts, strict=True) if values]
    _check_one_kind_across([file for file, _ in filled], [values for _, values in filled], label_column)
    texts = [text for part, _ in parts for text in part]
    log.info("%s: %d rows from %d files", path, len(texts), len(files))
    return LabelledData(texts=texts, labels=normalise_labels([value for _, part in parts for value in part]),
                        source=Path(path))


def _read_labelled_file(path: Path, text_column: str, label_column: str,
                        part: bool) -> tuple[list[str], list[int | str]]:
    """One file's texts and labels; `part`: one of several, which may hold no row (an empty partition's)."""
    reader = TableReader(path)
    reader.require(text_column, "--text-column")
    reader.require(label_column, "--label-column")
    table = reader.read_all()
    if table.num_rows == 0 and not part:
        raise InputError(f"{path} has no data rows; a labelled file needs at least one")
    repeated = reader.repeated_header()
    if repeated:  # (its label would be learnt as a label of its own: the column's name)
        raise InputError(f"{path}: {repeated} remove those lines (join such files keeping the first one's header "
                         "alone: tail -n +2 on the others)")
    reader.warn_if_quoted_as_csv()
    texts = plain_text(table.column(text_column)).to_pylist()
    values = booleans_as_numbers([label_value(label) for label in table.column(label_column).to_pylist()])
    for row, (text, value) in enumerate(zip(texts, values, strict=True), start=1):
        if not isinstance(text, str) or not text.strip():
            raise InputError(
                f"{path} row {row}: column '{text_column}' is empty or not text; fix or remove that row"
            )
        if value is None:
            raise InputError(f"{path} row {row}: column '{label_column}' has no label; fix or remove that row")
    check_one_kind(values, path, label_column)
    return texts, values


def _check_one_kind_across(files: list[Path], values: list[list[int | str]], column: str) -> None:
    """Refuse files of one labelled set whose labels are of two kinds (whole numbers in one, names in another): as
    within a file, the names would make every label a name."""
    kinds = [isinstance(part[0], str) for part in values]
    if len(set(kinds)) > 1:
        names, numbers = files[kinds.index(True)], files[kinds.index(False)]
        raise InputError(f"{names}: column '{column}' holds names ({values[kinds.index(True)][0]!r}, ...) where "
                         f"{numbers} holds whole numbers ({values[kinds.index(False)][0]!r}, ...); labels must be all "
                         "whole numbers or all names: make the files agree")
