"""Read Parquet, CSV and TSV files: whole (for training) or as a stream of fixed-size row windows (for scoring)."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from scorer.data.csvlint import (
    COMPRESSIONS,
    locate_problem,
    looks_like_data,
    read_header,
)
from scorer.data.csvrows import CsvRows
from scorer.data.names import as_listed
from scorer.data.sniff import disguised
from scorer.errors import InputError, not_utf8, out_of_descriptors, too_many_files

log = logging.getLogger("scorer")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv"}
_PARQUET_BATCH = 1 << 14
_SEPARATORS = {"csv": ",", "tsv": "\t"}


def data_suffix(path: Path) -> str | None:
    """The end of a data file's name that gives its format (.parquet, .csv, .csv.gz, ...); None for other files."""
    name = path.name.lower()
    for suffix, fmt in FORMATS.items():
        endings = [suffix] if fmt == "parquet" else [suffix, *(suffix + c for c in COMPRESSIONS)]
        found = next((e for e in endings if name.endswith(e) and len(name) > len(e)), None)
        if found:
            return found
    return None


def data_stem(path: Path) -> str:
    """A data file's name without its format and compression suffixes."""
    suffix = data_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.stem


def detect_format(path: Path) -> str:
    """The file format implied by the file name: parquet, csv or tsv."""
    suffix = data_suffix(path)
    if suffix is None:
        raise InputError(f"{path}: unknown file type '{path.suffix}'; use a .parquet, .csv or .tsv file "
                         f"(CSV and TSV may be compressed: {', '.join(COMPRESSIONS)})")
    return FORMATS["." + suffix.split(".")[1]]


class TableReader:
    """A Parquet/CSV/TSV file opened for streaming; CSV columns are read as text, exactly as written."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        shown = not_utf8(self.path)
        if shown is not None:
            raise InputError(f"{shown}: the file's name is not UTF-8 (bytes of another encoding, shown as \\x..), and "
                             "pyarrow, which reads it, opens UTF-8 names only; rename it (convmv -f cp1252 -t utf-8 "
                             "--notest FILE, or mv)")
        if self.path.exists() and not (self.path.is_file() or self.path.is_dir()):  # (`<(zcat day.csv.gz)`, a FIFO)
            raise InputError(f"{self.path} is a pipe or a device, not a file; scorer reads an input more than once (to "
                             "resume it, to see it did not change), so write it to a file first and pass that")
        self.format = detect_format(self.path)
        if self.path.is_symlink() and not self.path.exists():
            raise InputError(f"{self.path} is a link to {os.readlink(self.path)}, which does not exist (a mount that "
                             "is down, a file moved away?); restore its target, or remove the link")
        if not self.path.is_file():
            what = "is a directory" if self.path.is_dir() else "does not exist"
            raise InputError(f"{self.path} {what}; pass an existing .parquet, .csv or .tsv file")
        if not os.access(self.path, os.R_OK):
            raise InputError(f"{self.path} is not readable; check its permissions")
        suffix = data_suffix(self.path) or ""
        try:
            problem = disguised(self.path, self.format, next((c for c in COMPRESSIONS if suffix.endswith(c)), None))
        except OSError as exc:
            if out_of_descriptors(exc):
                raise too_many_files(self.path) from exc
            raise
        if problem is not None:
            raise InputError(f"{self.path} {problem}")
        self.columns: list[str] = []
        self._only: list[str] | None = None  # the Parquet columns read (read_only); None: all
        self._parquet_rows_read: int | None = None  # Parquet rows read so far (to find a damaged row group)
        self._csv: CsvRows | None = None  # a CSV/TSV file's rows as read
        with self._errors():
            if self.format == "parquet":
                # No pre-buffering: it reads a whole row group ahead, which alone can be a gigabyte of text.
                self._parquet = pq.ParquetFile(self.path, pre_buffer=False)
                self.columns = list(self._parquet.schema_arrow.names)
                self.num_rows: int | None = self._parquet.metadata.num_rows
            else:
                self.columns = read_header(self.path, self.format)
                self.num_rows = None
                self._csv = CsvRows(self.path, self.format, self.columns)
        duplicates = sorted({name for name in self.columns if self.columns.count(name) > 1})
        if duplicates:
            raise InputError(f"{self.path}: column name(s) {', '.join(duplicates)} appear more than once; rename them")

    @property
    def schema(self) -> pa.Schema | None:
        """The Parquet file's column types; None for CSV/TSV, whose columns are all read as text."""
        return self._parquet.schema_arrow if self.format == "parquet" else None

    def require(self, column: str, option: str) -> None:
        """Raise a clear error when a needed column is missing."""
        if column not in self.columns:
            own = _SEPARATORS.get(self.format)
            separator = next((sep for sep in (";", "\t", ",", "|") if sep != own and len(self.columns) == 1
                              and sep in self.columns[0]), None)
            if own is not None and separator is not None:
                raise InputError(f"{self.path} has one column, '{self.columns[0]}': its fields are separated by "
                                 f"{separator!r}, not {own!r}; write it as .csv with commas or "
                                 ".tsv with tabs")
            data = next((name for name in self.columns if looks_like_data(name)), None)
            if data is not None:  # (CoLA's original files, say: source, label, mark, sentence, and no header)
                raise InputError(f"column '{column}' not found in {self.path}, whose first line looks like a row "
                                 f"of data, not a header (a column named {data[:40]!r}); scorer takes the column names "
                                 f"from the first line: add a header line naming its {len(self.columns)} columns "
                                 f"('{column}' among them, or pass {option} with the name you give it)")
            # A header's spaces and case are easy to miss: such names are shown quoted, a near match offered.
            quoted = any(name != name.strip() or not name or "," in name for name in self.columns)
            names = ", ".join(repr(name) if quoted else name for name in self.columns) or "(none)"
            near = [name for name in self.columns if name.strip().casefold() == column.strip().casefold()]
            listed = option == "--keep-columns"  # (a list of names: one with a comma or edge spaces is quoted in it)
            advice = f"pass {option} {shlex.quote(as_listed(near[0])) if listed else repr(near[0])} (so the header " \
                "writes it)" if near else f"pass {option} with one of them"
            if listed and not near and quoted:
                advice += ", a name holding a comma or spaces at its ends in double quotes ('id,\"a,b\"')"
            raise InputError(f"column '{column}' not found in {self.path}; columns are {names}; {advice}")

    def read_only(self, names: set[str]) -> None:
        """Read only these columns (in the file's order) of a Parquet file. A CSV/TSV file is parsed whole anyway,
        and a stray quote in any column must be seen, so it is read whole."""
        if self.format == "parquet":
            self._only = [name for name in self.columns if name in names]

    def batches(self, rows: int, skip_rows: int = 0) -> Iterator[pa.Table]:
        """Yield consecutive windows of exactly `rows` rows (the last may be shorter), after `skip_rows`."""
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        with self._errors():
            for batch in self._record_batches(skip_rows):
                pending.append(batch)
                pending_rows += batch.num_rows
                while pending_rows >= rows:
                    table = pa.Table.from_batches(pending)
                    yield table.slice(0, rows).combine_chunks()
                    rest = table.slice(rows)
                    pending, pending_rows = rest.to_batches(), rest.num_rows
            if pending_rows:
                yield pa.Table.from_batches(pending).combine_chunks()

    def rows_expected(self) -> tuple[int | None, bool]:
        """The file's rows, and whether that is exact: Parquet's from its footer; a CSV/TSV file's estimated as it
        is read (csvrows.CsvRows.rows_expected), exact once it has been read."""
        return (self.num_rows, True) if self._csv is None else self._csv.rows_expected()

    def repeated_header(self) -> str | None:
        """Which CSV/TSV data rows read so far repeat the header line, said after the file's name; None where none
        does (and for Parquet)."""
        return None if self._csv is None else self._csv.repeated_header()

    def warn_if_quoted_as_csv(self) -> None:
        """Warn of a TSV file's values read so far that look quoted as a CSV writer quotes them (read as written, as
        run, train and export read them); nothing for CSV and Parquet."""
        quoted = None if self._csv is None else self._csv.quoted_as_csv()
        if quoted:
            log.warning("%s: %s", self.path, quoted)

    @property
    def header_rows(self) -> tuple[list[int], int]:
        """The CSV/TSV data rows read so far that repeat the header line: the first few, and how many in all."""
        return ([], 0) if self._csv is None else self._csv.header_rows

    def read_all(self) -> pa.Table:
        """The whole file as one table (for training data, which fits in memory)."""
        with self._errors():
            if self.format == "parquet":
                return self._parquet.read()
            batches = list(self._record_batches(0))
        return pa.Table.from_batches(batches) if batches else self.empty()

    def empty(self) -> pa.Table:
        """A table of the file's columns and no rows."""
        if self.format == "parquet":
            empty = self._parquet.schema_arrow.empty_table()
            return empty if self._only is None else empty.select(self._only)
        return pa.table({name: pa.array([], pa.string()) for name in self.columns})

    def _record_batches(self, skip_rows: int) -> Iterator[pa.RecordBatch]:
        if self.format == "parquet":
            yield from self._parquet_batches(skip_rows)
            return
        for batch in self._csv.batches():
            if skip_rows >= batch.num_rows:
                skip_rows -= batch.num_rows
                continue
            yield batch.slice(skip_rows)
            skip_rows = 0

    def _parquet_batches(self, skip_rows: int) -> Iterator[pa.RecordBatch]:
        # Skip whole row groups without reading them, so that a resumed run does not reread finished work; read the
        # rest in batches, not whole row groups (pandas and pyarrow write up to 1M rows in one group by default).
        meta = self._parquet.metadata
        first = 0
        while first < meta.num_row_groups and meta.row_group(first).num_rows <= skip_rows:
            skip_rows -= meta.row_group(first).num_rows
            first += 1
        if first == meta.num_row_groups:
            return
        self._parquet_rows_read = sum(meta.row_group(group).num_rows for group in range(first))
        for batch in self._parquet.iter_batches(_PARQUET_BATCH, row_groups=range(first, meta.num_row_groups),
                                                columns=self._only):
            self._parquet_rows_read += batch.num_rows
            if skip_rows >= batch.num_rows:
                skip_rows -= batch.num_rows
                continue
            yield batch.slice(skip_rows)
            skip_rows = 0

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
            if out_of_descriptors(exc):
                raise too_many_files(self.path) from exc
            raise InputError(self._describe(exc)) from exc

    def _damaged_row_group(self) -> str | None:
        """After a read failed midway, the first row group from there on that cannot be read, with its rows
        (1-based); None where the reading did not start or every group reads now."""
        if self._parquet_rows_read is None:
            return None
        meta, start = self._parquet.metadata, 0
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            if start + rows > self._parquet_rows_read:
                try:
                    self._parquet.read_row_group(group)
                except (pa.ArrowException, OSError):
                    return f"row group {group + 1} of {meta.num_row_groups} (rows {start + 1:,}-{start + rows:,})"
            start += rows
        return None

    def _describe(self, exc: Exception) -> str:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if self.format == "parquet":
            damaged = self._damaged_row_group()
            if damaged:
                return f"{self.path}: {damaged} cannot be read ({text}): the file is damaged; write it again"
            return f"{self.path}: not a readable Parquet file ({text}); check that the file is complete"
        found = locate_problem(self.path, self.format, len(self.columns))
        if found is None:
            return f"{self.path}: cannot be decompressed ({text}); check that the file was copied whole"
        where, advice = found
        return f"{self.path}{where}: {advice or text + '; fix or remove that row'}"
