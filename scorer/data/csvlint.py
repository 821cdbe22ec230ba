"""CSV and TSV files as Python's csv module reads them: the header line (pyarrow reads the rows), and what is wrong
with a file, found by reading it again (slow, and only when something is wrong or could be): the first line that is
not UTF-8 or has the wrong number of fields, and a stray quote that swallowed the rows after it."""

from __future__ import annotations

import contextlib
import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from scorer.config import COMPRESSIONS
from scorer.errors import InputError

# CSV and TSV may come compressed (nightly feeds often do); they are decompressed as they are read, and
# compressed as written where an output's name asks for it.
CODECS = dict(zip(COMPRESSIONS, ("gzip", "bz2", "zstd", "lz4"), strict=True))  # (pyarrow's names)
_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?")
_HEADER_LIMIT = 1 << 24  # bytes read for a header line, at most
_LINE_END = re.compile(rb"[\r\n]")
_EXCEL_SEP = re.compile(r"(?i)sep=[^\r\n],*")  # ("sep=;" on line 1: the delimiter Excel is to split the lines by)


def codec_of(path: Path) -> str | None:
    """The compression a CSV/TSV file's name says, whatever its case (gzip for .csv.gz and .CSV.GZ, ...), or None."""
    return next((codec for ending, codec in CODECS.items() if path.name.lower().endswith(ending)), None)


def open_raw(path: Path) -> tuple[pa.NativeFile, pa.NativeFile]:
    """The file opened, and its bytes as read: decompressed where its name says it is compressed (pyarrow's own
    detection knows lowercase names only, so an EXPORT.CSV.GZ was read as text). The first's position is how far the
    compressed bytes have been read."""
    raw = pa.OSFile(str(path))
    codec = codec_of(path)
    return raw, pa.CompressedInputStream(raw, codec) if codec else raw


def open_binary(path: Path) -> BinaryIO:
    """The file's bytes, decompressed if its name says it is compressed."""
    if codec_of(path):
        return io.BufferedReader(open_raw(path)[1])
    return open(path, "rb")


def not_utf8(path: Path) -> str:
    """What is wrong with a line of `path` that is not UTF-8, and what to do."""
    how = "" if path.suffix.lower() in COMPRESSIONS else f" (iconv -f cp1252 -t utf-8 {path.name} > utf8-{path.name})"
    return ("bytes that are not UTF-8 (a file saved in another encoding, as Excel saves Windows-1252); re-encode the "
            f"file as UTF-8{how}")


def read_header(path: Path, fmt: str) -> list[str]:
    """The column names on a CSV/TSV file's first line."""
    with open_binary(path) as handle:
        first = _first_line(handle, path)
    if not first.strip():
        with open_binary(path) as handle:
            more = handle.read(1 << 20).strip()
        if more:  # (blank lines above the header: the header is not on the first line)
            how = "" if path.suffix.lower() in COMPRESSIONS else f" (sed '/./,$!d' {path.name} > fixed-{path.name})"
            raise InputError(f"{path}: its first line is blank, and scorer takes the column names from the first "
                             f"line; remove the blank line(s) above the header{how}")
        raise InputError(f"{path} is empty (no header line); nothing to read: write its header line, or leave the "
                         "file out")
    try:
        line = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} line 1 (the header): {not_utf8(path)}") from exc
    if _EXCEL_SEP.fullmatch(line.strip(" ")):  # (Excel reads it as the delimiter to use; no other reader does)
        how = "" if path.suffix.lower() in COMPRESSIONS else f" (tail -n +2 {path.name} > fixed-{path.name})"
        raise InputError(f"{path} line 1 is {line.strip(' ')!r}, Excel's note of the delimiter, not a header line; "
                         f"remove that line{how}")
    delimiter = "\t" if fmt == "tsv" else ","
    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
    try:
        return next(csv.reader([line], delimiter=delimiter, quoting=quoting, strict=True))
    except csv.Error as exc:  # (a quote left open in the header: its line end would be inside the value)
        raise InputError(f"{path} line 1 (the header): {exc}; fix the header") from exc


def looks_like_data(name: str) -> bool:
    """A column name that is a number or a sentence (five words or more): a header line is seldom either."""
    return bool(_NUMBER.fullmatch(name.strip())) or len(name.split()) >= 5


def _first_line(handle, path: Path) -> bytes:
    """The file's first line without its end: a line feed, CR LF, or a lone CR (old Mac and some Excel exports end
    lines so); read no further than that, or than _HEADER_LIMIT bytes."""
    data = bytearray()
    while chunk := handle.read(1 << 16):
        end = _LINE_END.search(chunk)
        if end:
            return bytes(data + chunk[: end.start()])
        data += chunk
        if len(data) > _HEADER_LIMIT:
            raise InputError(f"{path}: no line end in its first {_HEADER_LIMIT >> 20} MiB, so no header line; is it "
                             "a CSV/TSV file?")
    return bytes(data)


# What a TSV row split otherwise than its header, with a value that opens a quote, most likely is
_TSV_QUOTED = ("a value there opens a quote, as a CSV writer quotes one holding a tab or a line break (pandas: "
               "to_csv(sep=\"\\t\")), and a .tsv file is read as written, quotes as text; write the file as CSV "
               "(to_csv without sep) or Parquet")


def locate_problem(path: Path, fmt: str, expected: int) -> tuple[str, str | None] | None:
    """Find the first line that is not UTF-8 or has the wrong number of fields (slow path, errors only): where
    (" line 3 (...)", or "" where no line is to blame), and what to do where that is known; None when the file
    cannot be decompressed."""
    try:
        # (Latin-1 reads any byte as itself, so each line's bytes come back whole; lines end in LF, CR LF or CR)
        with io.TextIOWrapper(open_binary(path), encoding="latin-1", newline=None) as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    line.encode("latin-1").decode("utf-8")
                except UnicodeDecodeError:
                    return f" line {number}", not_utf8(path)
        with _rows(path, fmt) as rows:
            start = 1  # the line the record being read starts on
            for row in rows:
                if len(row) != expected and row:
                    if rows.line_num == start:
                        return f" line {start} (expected {expected} fields, found {len(row)})", \
                            _TSV_QUOTED if fmt == "tsv" and any(field.startswith('"') for field in row) else None
                    if len(row) > expected:
                        return (f" line {start} (expected {expected} fields, found {len(row)} in the record on lines "
                                f"{start}-{rows.line_num})"), None
                    return (f" line {start} (a quote there is not closed where it was meant to be: lines {start}-"
                            f"{rows.line_num} read as one record of {len(row)} field(s), {expected} expected)"), \
                        "quote that value whole (doubling the quotes inside it) or remove the stray quote"
                start = rows.line_num + 1
    except (OSError, EOFError, pa.ArrowException):
        return None
    except csv.Error as exc:
        return f" line {rows.line_num} ({exc})", None
    return "", None


def swallowed_rows(path: Path) -> str | None:
    """Where a CSV value's closing quote is followed by more text instead of a comma or the line's end, lines after
    the value's start: a stray quote at a value's start does that, and lenient readers (pyarrow's, Python's) then
    read every line up to the next quote in the file as part of that one value, and those rows are lost without an
    error; or where a quote is never closed (the file ends inside the value: a stray quote, or a file cut short).
    None where no such value spans lines (one that closes early on its own line loses no row)."""
    with _rows(path, "csv", strict=True) as rows:
        start = 1  # the line the record being read starts on
        while True:
            try:
                next(rows)
            except StopIteration:
                return None
            except csv.Error as exc:
                if "unexpected end of data" in str(exc):  # (strict: the file ended inside a quoted value)
                    lost = f", reading lines {start}-{rows.line_num} as one value and losing their rows" \
                        if rows.line_num > start else ""
                    return (f"{path} line {start}: a quote opened there is never closed (the file ends inside it"
                            f"{lost}): a stray quote, or a file cut short; quote that value whole (doubling the "
                            "quotes inside it) or remove the stray quote, or copy the file again")
                if rows.line_num > start:
                    return (f"{path} line {start}: a quoted value there closes on line {rows.line_num} and is not "
                            f"followed by a comma or the line's end ({exc}): a stray quote, which reads the lines "
                            "after it as part of one value and loses their rows; quote that value whole (doubling "
                            "the quotes inside it) or remove the stray quote")
            start = rows.line_num + 1


def unclosed_at_end(path: Path, tail: bytes) -> str | None:
    """What is wrong with a CSV file whose last line (`tail`: the file's last bytes) has no line end and opens a
    quote it never closes (a file cut short mid-value), which pyarrow reads as if the quote were closed; None where
    it does not. The file is read strictly (swallowed_rows) only where that last line holds a quote, or is longer
    than the bytes kept. (A quote left open before a last line end makes a value holding a line break, which
    scorer's reader checks for as it reads.)"""
    if not tail or tail[-1:] in (b"\n", b"\r"):
        return None
    last = _LINE_END.split(tail)[-1]
    if b'"' in last or len(last) == TailKept.KEPT:
        return swallowed_rows(path)
    return None


class TailKept:
    """A binary stream that keeps the last bytes read from it (pyarrow reads it as a Python file); and, where it
    reads a compressed file (`compressed`: that file, open_raw's first), how much the bytes read so far grew
    decompressed, both counted as each read returns (the file's position moves while a read decompresses a block)."""

    KEPT = 1 << 16

    def __init__(self, raw, compressed: pa.NativeFile | None = None) -> None:
        self.raw, self.tail, self.closed, self.compressed = raw, b"", False, compressed
        self.count, self.inflation = 0, 0.0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if data:
            self.tail = (self.tail + data[-self.KEPT:])[-self.KEPT:]
            self.count += len(data)
            if self.compressed is not None:
                self.inflation = self.count / max(self.compressed.tell(), 1)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.raw.close()
        self.closed = True


@contextlib.contextmanager
def _rows(path: Path, fmt: str, strict: bool = False) -> Iterator:
    """Python's csv reader over the decompressed file (TSV as scorer reads it: no quoting), any cell size."""
    limit = csv.field_size_limit(1 << 30)  # a huge cell is not the problem (the reader takes it)
    try:
        with io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", newline="") as handle:
            yield csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" \
                else csv.reader(handle, strict=strict)
    finally:
        csv.field_size_limit(limit)
