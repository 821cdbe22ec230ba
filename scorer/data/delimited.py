"""CSV and TSV outputs: every cell as text, in the dialect scorer (and the tools around it) reads back.

CSV is RFC 4180: strings quoted, quotes doubled, line breaks inside quotes. TSV is the IANA format, which is how
scorer reads a `.tsv` input (CoLA's files hold unbalanced quotes, read literally): no quoting at all, so a value
may not hold a tab or a line break. A value with one is refused, naming its column and row, rather than written
quoted, which would give every TSV reader, scorer's included, other text than the input held.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from scorer.data.strings import utf8_text
from scorer.errors import ConfigError

_TSV_BREAKS = "[\t\r\n]"
_INSTEAD = "write Parquet instead (an --output ending in .parquet, or --format parquet)"


class DelimitedWriter:
    """Appends tables to a CSV or TSV file; `rows` counts the rows written, for naming a refused one."""

    def __init__(self, path: Path, fmt: str, schema: pa.Schema, shown: Path, codec: str | None = None) -> None:
        """`codec`: compress the file as it is written (gzip, bz2, zstd, lz4), or not (None)."""
        self.format, self.shown, self.rows = fmt, shown, 0
        self._files = [pa.output_stream(str(path), compression=None if codec == "gzip" else codec)]
        if codec == "gzip":  # (pyarrow's gzip is level 9: half level 6's speed, for the same size on CoLA's text)
            self._files.insert(0, gzip.GzipFile(fileobj=self._files[0], mode="wb", compresslevel=6, mtime=0))
        self._file = self._files[0]
        if fmt == "csv":
            self._csv: pacsv.CSVWriter | None = pacsv.CSVWriter(self._file, _viewless(schema))
            self._tsv = None
        else:
            self._csv = None
            self._tsv = self._file
            self._tsv.write(self._header(schema.names) + b"\n")

    def write_table(self, table: pa.Table) -> None:
        columns = [self._text_safe(name, column) for name, column in zip(table.column_names, table.columns,
                                                                         strict=True)]
        if self._csv is not None:
            self._csv.write_table(pa.table(columns, names=table.column_names))
        elif table.num_rows:
            cells = [pc.fill_null(column.cast(pa.large_string()), "") for column in columns]
            for name, column in zip(table.column_names, cells, strict=True):
                self._refuse_breaks(name, column)
            lines = pc.binary_join_element_wise(*cells, pa.scalar("\t", pa.large_string()))
            self._tsv.write("\n".join(lines.to_pylist()).encode() + b"\n")
        self.rows += table.num_rows

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
        for file in self._files:  # (the gzip stream, then the file under it)
            file.close()

    def _text_safe(self, name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
        """The column as the writer takes it: views as their plain types (the CSV writer has no view types), and
        bytes refused unless UTF-8 (a CSV/TSV file would hold them raw, NUL bytes and all); binary columns of
        UTF-8 text, as Hive writes strings, are written as the text they hold."""
        if not _is_texty(column.type):
            return column
        try:
            return column.cast(pa.large_string())
        except pa.ArrowInvalid:
            row = next(i for i, value in enumerate(column.to_pylist())
                       if value is not None and utf8_text(value) is None)
            raise ConfigError(f"{self.shown}: column '{name}' row {self.rows + row + 1} holds bytes that are not "
                              f"UTF-8 text, which a CSV/TSV file cannot hold; {_INSTEAD}") from None

    def _refuse_breaks(self, name: str, cells: pa.ChunkedArray) -> None:
        found = pc.match_substring_regex(cells, _TSV_BREAKS)
        if pc.any(found).as_py():
            row = pc.index(found, True).as_py()
            raise ConfigError(f"{self.shown}: column '{name}' row {self.rows + row + 1} holds a tab or a line break, "
                              f"which a TSV file cannot hold; write CSV (--format csv, or an --output ending in "
                              f".csv) or {_INSTEAD.removeprefix('write ')}")

    def _header(self, names: list[str]) -> bytes:
        for name in names:
            if any(c in name for c in "\t\r\n"):
                raise ConfigError(f"{self.shown}: the column name {name!r} holds a tab or a line break, which a TSV "
                                  f"file cannot hold; rename the column, or {_INSTEAD}")
        return "\t".join(names).encode()


def _viewless(schema: pa.Schema) -> pa.Schema:
    """The schema with its view and binary columns as large strings, as DelimitedWriter hands them over."""
    fields = [field.with_type(pa.large_string()) if _is_texty(field.type) else field for field in schema]
    return pa.schema(fields)


def _is_texty(kind: pa.DataType) -> bool:
    """String views (which the CSV writer does not take) and bytes (written as the text they hold)."""
    views = [getattr(pa.types, name, lambda _: False) for name in ("is_string_view", "is_binary_view")]  # pyarrow 16+
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or any(is_view(kind) for is_view in views)
