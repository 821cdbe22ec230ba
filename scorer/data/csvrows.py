"""A CSV/TSV file's rows as pyarrow reads them, every column as text: streamed in blocks, with what the stream
shows of the file on the way (a stray quote, a header line repeated, how many rows it holds)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from scorer.data.csvlint import TailKept, codec_of, open_raw, swallowed_rows, unclosed_at_end
from scorer.errors import InputError

# pyarrow's CSV reader needs every row inside one block: a row larger than the block (one huge cell) is read again
# from the start with blocks four times larger, up to MAX_BLOCK.
BLOCK, MAX_BLOCK = 1 << 22, 1 << 30
# A value as a CSV writer quotes one that holds a quote (`"He said ""hi""."`): wrapped in quotes, its own doubled
_CSV_QUOTED = r'^"([^"]|"")*""([^"]|"")*"$'


def _with_last(batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[pa.RecordBatch, bool]]:
    """Each of `batches` with whether it is the last, known by reading the next before handing one on."""
    held = None
    for batch in batches:
        if held is not None:
            yield held, False
        held = batch
    if held is not None:
        yield held, True


class CsvRows:
    """The rows of `path` (`fmt`: csv or tsv) under `columns` (its header's names), read in blocks."""

    def __init__(self, path: Path, fmt: str, columns: list[str]) -> None:
        self.path, self.format, self.columns = path, fmt, columns
        self.compressed = codec_of(path) is not None
        self.quotes_checked = False
        self.read = (0, 0, False)  # rows and bytes read so far, and whether that was the whole file
        self.inflation = 0.0  # a compressed file's bytes read over its compressed bytes read so far (0: none yet)
        # Data rows (numbered from 1) read so far that repeat the header line, as files joined with their headers
        # (`cat a.csv b.csv`) hold: the first few, and how many in all
        self.header_rows: tuple[list[int], int] = ([], 0)
        # TSV values read so far that look quoted as a CSV writer quotes them: the first (its row and column), and
        # how many in all
        self.csv_quoted: tuple[tuple[int, str, str] | None, int] = (None, 0)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The file's rows, a block's at a time; the last handed on once the file has been read to its end, so that
        its rows are known exactly by whoever counts them on its way."""
        block, done = BLOCK, 0  # rows already yielded, skipped when a larger block reads the file again
        while True:
            seen, read, last = 0, 0, False
            raw, opened = open_raw(self.path)
            stream = TailKept(opened, raw if opened is not raw else None)
            try:  # (read through TailKept, which keeps the file's last bytes for _check_last_line)
                for batch, last in _with_last(pacsv.open_csv(
                        pa.PythonFile(stream, mode="r"), read_options=pacsv.ReadOptions(block_size=block),
                        parse_options=self._parse_options(),
                        convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in self.columns},
                                                             strings_can_be_null=False))):
                    self._check_quotes(batch)
                    if last:
                        self._check_last_line(stream.tail)
                    # (a block a batch, all but the last full; said before the batch is handed on)
                    self.read, self.inflation = (seen + batch.num_rows, read + block, last), stream.inflation
                    if seen + batch.num_rows > done:
                        fresh = batch.slice(max(0, done - seen))
                        self._note_header_rows(fresh, max(done, seen))
                        self._note_csv_quoted(fresh, max(done, seen))
                        yield fresh
                        done = seen + batch.num_rows
                    seen, read = seen + batch.num_rows, read + block
                if not last:  # (no batch at all: a header line alone)
                    self._check_last_line(stream.tail)
                    self.read = (0, 0, True)
                return
            except pa.ArrowInvalid as exc:
                if "straddl" not in str(exc) or block >= MAX_BLOCK:
                    raise
                block *= 4
            finally:
                stream.close()
                raw.close()

    def rows_expected(self) -> tuple[int | None, bool]:
        """The file's rows, and whether that is exact: estimated from the rows its blocks read so far held (each of a
        known size: within a few % after the first) against its size (a compressed one's: its compressed size times
        how much its bytes read so far grew decompressed), exact once it has been read; None before any block."""
        rows, read, whole = self.read
        if whole:
            return rows, True
        try:  # (a file removed or replaced while it is read: no estimate; the run's end check says what happened)
            size = round(self.path.stat().st_size * (self.inflation if self.compressed else 1)) if read else 0
        except OSError:
            size = 0
        return (max(rows, round(rows * size / min(read, size))), False) if size else (None, False)

    def repeated_header(self) -> str | None:
        """Which data rows read so far repeat the header line, said after the file's name; None where none does."""
        rows, total = self.header_rows
        if not total:
            return None
        more = f" and {total - len(rows)} more" if total > len(rows) else ""
        return (f"data row(s) {', '.join(map(str, rows))}{more} repeat the header line "
                f"({','.join(self.columns)[:200]}): files joined with their headers (cat a.csv b.csv)?")

    def quoted_as_csv(self) -> str | None:
        """What a TSV file's values read so far that look quoted as a CSV writer quotes them are, said after the
        file's name; None where none does (and for CSV, which reads quotes as quotes)."""
        first, total = self.csv_quoted
        if first is None:
            return None
        row, column, value = first
        return (f"{total} value(s) look quoted as a CSV writer quotes them (data row {row}, column '{column}': "
                f"{value[:80]!r}), and a .tsv file is read as written, so they were read with those quotes; write the "
                "file as CSV (pandas: to_csv without sep) or Parquet, where quotes are read as quotes")

    def _note_csv_quoted(self, batch: pa.RecordBatch, first: int) -> None:
        """Note the values of a TSV `batch` (its first the file's data row `first` + 1) wrapped in quotes with
        their own doubled, as pandas' to_csv(sep="\\t") writes a value holding a quote: a TSV file is read as
        written (IANA's format, where a quote is a character like any other), so those quotes are read as text."""
        if self.format != "tsv" or not batch.num_rows:
            return
        for name, column in zip(self.columns, batch.columns, strict=True):
            quoted = pc.match_substring_regex(column, _CSV_QUOTED)
            count = pc.sum(quoted).as_py() or 0
            if count:
                found, total = self.csv_quoted
                if found is None:
                    index = pc.index(quoted, True).as_py()
                    found = (first + index + 1, name, column[index].as_py())
                self.csv_quoted = (found, total + count)

    def _check_quotes(self, batch: pa.RecordBatch) -> None:
        """Once a CSV value holds a line break (legal inside quotes, and what a stray quote makes of the rows after
        it), read the file strictly once: rows swallowed by a stray quote are an error, not a row fewer."""
        if self.format != "csv" or self.quotes_checked:
            return
        if any(pc.any(pc.match_substring_regex(column, "[\r\n]")).as_py() for column in batch.columns):
            self.quotes_checked = True
            problem = swallowed_rows(self.path)
            if problem:
                raise InputError(problem)

    def _note_header_rows(self, batch: pa.RecordBatch, first: int) -> None:
        """Note the rows of `batch` (its first the file's data row `first` + 1) whose every field is its column's
        name: a header line repeated (two or more columns: a one-column file's row may well be its name)."""
        if len(self.columns) < 2 or not batch.num_rows:
            return
        # (the first field without a byte-order mark: `cat` keeps the second file's, as Excel writes its CSV files)
        fields = [pc.utf8_ltrim(batch.column(0), characters="\ufeff"), *batch.columns[1:]]
        repeated = functools.reduce(pc.and_, (pc.equal(field, name)
                                              for field, name in zip(fields, self.columns, strict=True)))
        count = pc.sum(repeated).as_py() or 0
        if count:
            rows, total = self.header_rows
            found = pc.indices_nonzero(repeated).to_pylist()[: max(0, 5 - len(rows))]
            self.header_rows = (rows + [first + i + 1 for i in found], total + count)

    def _check_last_line(self, tail: bytes) -> None:
        """A quote left open at the end of a CSV file whose last line has no line end (csvlint.unclosed_at_end),
        unless the file has been read strictly already."""
        if self.format == "csv" and not self.quotes_checked:
            problem = unclosed_at_end(self.path, tail)
            if problem:
                raise InputError(problem)

    def _parse_options(self) -> pacsv.ParseOptions:
        """A one-column file's blank line is a row, of one empty field (as Excel writes a one-column sheet's empty
        cell and `cut -f2` an empty value); a wider file's holds no field at all and is no row, as pandas and pyarrow
        read it."""
        blank_rows = len(self.columns) == 1
        if self.format == "tsv":
            return pacsv.ParseOptions(delimiter="\t", quote_char=False, ignore_empty_lines=not blank_rows)
        return pacsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=not blank_rows)
