"""Stream scored windows to Parquet or CSV under a temporary name; rename into place only when complete."""

from __future__ import annotations

import contextlib
import json
import shlex
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from scorer.data import atomic
from scorer.data.csvlint import COMPRESSIONS, codec_of
from scorer.data.delimited import DelimitedWriter
from scorer.data.names import as_listed
from scorer.data.read import data_stem, detect_format
from scorer.errors import ConfigError, InputError, OutputError
from scorer.manifest import sha256_file

METADATA_KEY = b"scorer"
# What a complete Parquet output holds (scorer.scoring.single.finish_unit: its rows by status and by predicted label,
# its evaluation), known only once it is written, so in the file's footer alone, not in its schema (written first).
FIGURES_KEY = b"scorer-figures"


def output_format(path: Path) -> str:
    """parquet, csv or tsv, as the output's name ends (a CSV/TSV output may be compressed: .csv.gz, ...)."""
    try:
        return detect_format(path)
    except InputError:
        raise OutputError(f"{path}: unknown output type '{path.suffix}'; name the output .parquet, .csv or .tsv (CSV "
                          f"and TSV may be compressed: {', '.join('.csv' + c for c in COMPRESSIONS)}, ...)") from None


def check_text_format(output: Path, schema: pa.Schema | None, source: Path, kept: tuple[str, ...] | None) -> None:
    """Refuse a CSV/TSV output for input columns it carries (`kept`; None: all) that have no one-cell text form
    (lists, structs, maps)."""
    if schema is None or output_format(output) == "parquet":
        return
    carried = schema.names if kept is None else [name for name in kept if name in schema.names]
    nested = [name for name in carried if pa.types.is_nested(schema.field(name).type)]
    if nested:
        rest = ",".join(as_listed(name) for name in carried if name not in nested)
        leave = f"--keep-columns {shlex.quote(rest)}" if rest else "--keep-columns ''"
        raise ConfigError(f"{source}: column(s) {', '.join(f'{n!r} ({schema.field(n).type})' for n in nested)} "
                          f"cannot be written to {output.name}, a CSV/TSV file; write Parquet instead (an --output "
                          f"ending in .parquet, or --format parquet), or leave them out ({leave})")


def default_output(source: Path) -> Path:
    """`<name>.scored.parquet` beside the input."""
    return source.with_name(f"{data_stem(source)}.scored.parquet")


def sidecar(output: Path) -> Path:
    """Completion record of a CSV/TSV output (Parquet outputs carry it in their footer)."""
    return output.with_name(f".{output.name}.scorer.json")


def completion_record(output: Path) -> dict | None:
    """The metadata scorer wrote with a complete output (with its row count), or None when the output is not one of
    ours. A Parquet output is complete once it has its final name (it is renamed into place when finished)."""
    if not output.is_file():
        return None
    if output_format(output) == "parquet":
        try:
            footer = pq.read_metadata(output)
        except (pa.ArrowInvalid, OSError):
            return None
        raw, figures = ((footer.metadata or {}).get(key) for key in (METADATA_KEY, FIGURES_KEY))
        return {"rows": footer.num_rows, **json.loads(raw), **(json.loads(figures) if figures else {})} if raw else None
    try:
        record = json.loads(sidecar(output).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("output_sha256") == sha256_file(output) else None


class OutputSink:
    """Writes tables to a hidden temporary file; `finish` completes it and renames it to the final path, `abort`
    deletes it. `metadata` (what scored the output, from which input) goes into a Parquet output's footer or, with
    the row count and a checksum, into a CSV/TSV output's sidecar record."""

    def __init__(self, path: Path, overwrite: bool, metadata: dict | None = None,
                 probed: set[Path] | None = None, sync_directory: bool = True,
                 columns: list[str] | None = None) -> None:
        """`probed`: directories this run already found writable (scorer.data.atomic.check_writable); `sync_directory`:
        False where the caller syncs the directory itself, once for many outputs (scorer.scoring.bundle); `columns`:
        the columns of each table written, in this order (None: all)."""
        self.path = Path(path)
        self.columns = columns
        self.format = output_format(self.path)
        atomic.check_writable(self.path, overwrite, probed=probed)
        self.staging = atomic.temporary_sibling(self.path)
        self.metadata = metadata or {}
        self._writer: pq.ParquetWriter | DelimitedWriter | None = None
        self.rows = 0
        self.sync_directory = sync_directory

    def write(self, table: pa.Table) -> None:
        if self.columns is not None:
            table = table.select(self.columns)
        if self._writer is None:
            self._writer = self._open(table.schema)
        try:
            self._writer.write_table(table.cast(self._writer.schema) if self.format == "parquet" else table)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InputError(
                f"{self.path}: a later part of the input changed column types ({exc}); "
                "make the input's schema consistent"
            ) from exc
        self.rows += table.num_rows

    def _open(self, schema: pa.Schema) -> pq.ParquetWriter | DelimitedWriter:
        try:
            if self.format == "parquet":
                meta = {**(schema.metadata or {}), METADATA_KEY: json.dumps(self.metadata).encode()}
                return pq.ParquetWriter(self.staging, schema.with_metadata(meta), compression="zstd")
            return DelimitedWriter(self.staging, self.format, schema, self.path, codec_of(self.path))
        except OSError as exc:
            raise OutputError(f"cannot write {self.staging} ({exc}); choose another --output") from exc

    def close(self) -> None:
        """Finish writing the temporary file (idempotent)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self, figures: dict | None = None) -> None:
        """Complete the file (a CSV/TSV output's record beside it), recording `figures` (what it holds, which a run
        that finds it up to date reports) with what made it, and move it to its final name."""
        # (pyarrow 17 on, as pyproject asks; run from the source tree under an older one, as on the GPU test machine,
        # the output records no figures, as one an older scorer wrote, and a run that skips it reports none)
        if figures and self.format == "parquet" and hasattr(self._writer, "add_key_value_metadata"):
            self._writer.add_key_value_metadata({FIGURES_KEY: json.dumps(figures).encode()})
        self.close()
        if self.format != "parquet":
            record = {**self.metadata, **(figures or {}), "rows": self.rows, "output_sha256": sha256_file(self.staging)}
            atomic.write_text(sidecar(self.path), json.dumps(record, indent=2) + "\n")
        atomic.sync(self.staging)
        atomic.replace(self.staging, self.path)
        if self.sync_directory:
            atomic.sync(self.path.parent)

    def abort(self) -> None:
        if self._writer is not None:
            # The file is deleted next, so a failure to close it changes nothing.
            with contextlib.suppress(Exception):
                self._writer.close()
        self.staging.unlink(missing_ok=True)
