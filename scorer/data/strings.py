"""Text as Arrow stores it other ways (dictionary-encoded, string views, UTF-8 in binary columns), read as plain
strings wherever scorer reads a text column."""

from __future__ import annotations

import pyarrow as pa


def plain_text(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """`column` with strings stored another way (dictionary-encoded, as pandas categoricals and Spark write them;
    Arrow's string views; UTF-8 bytes in a binary column) turned into plain strings; anything else as it is."""
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return column if kind == column.type else column.cast(kind)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):  # strings without the UTF-8 annotation (Hive)
        try:
            return column.cast(pa.large_string() if pa.types.is_large_binary(kind) else pa.string())
        except pa.ArrowInvalid:  # some rows are not UTF-8: those become nulls here, which `prepare` calls not_text
            return pa.array([utf8_text(value) for value in column.to_pylist()], pa.large_string())
    is_view = getattr(pa.types, "is_string_view", None)  # pyarrow 16 and newer
    return column.cast(pa.large_string()) if is_view is not None and is_view(kind) else column


def utf8_text(value: bytes | None) -> str | None:
    """`value` decoded as UTF-8; None where it is None or not UTF-8."""
    try:
        return None if value is None else value.decode("utf-8")
    except UnicodeDecodeError:
        return None
