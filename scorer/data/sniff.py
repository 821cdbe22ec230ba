"""What a data file really holds, told from its first bytes, for the error where its name says otherwise: a gzip
file named .csv, an Excel workbook or UTF-16 text saved as .csv, a Parquet file named .csv or a CSV named .parquet.
Without this, such files fail deep in a reader with advice for another problem (re-encode from Windows-1252)."""

from __future__ import annotations

from pathlib import Path

# Compression formats scorer decompresses as it reads, by their first bytes (the frame magic numbers).
_COMPRESSED = {".gz": b"\x1f\x8b", ".bz2": b"BZh", ".zst": b"\x28\xb5\x2f\xfd", ".lz4": b"\x04\x22\x4d\x18"}
_NAMES = {".gz": "gzip", ".bz2": "bzip2", ".zst": "zstd", ".lz4": "lz4"}
_PARQUET = b"PAR1"
_ZIP = b"PK\x03\x04"
_HEAD = 64


def disguised(path: Path, fmt: str, compression: str | None) -> str | None:
    """What is wrong where `path`'s bytes are not what its name says (`fmt`: parquet, csv or tsv; `compression`:
    the name's compression suffix, or None), said after the path, with what to do; None where they fit, or where
    the first bytes cannot tell (the reader's own errors then speak)."""
    with open(path, "rb") as handle:
        head = handle.read(_HEAD)
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(size - 4, 0))
        tail = handle.read(4)
    found = _compression(head)
    if fmt == "parquet":
        return _not_parquet(path, head, found)
    plain = path.name[: -len(compression)] if compression else path.name  # (the name without its compression)
    if found is not None and found == compression:
        return None
    if found is not None:
        if compression is not None:
            return f"is {_NAMES[found]}-compressed, not {_NAMES[compression]}-compressed; name it {plain}{found}"
        return (f"is {_NAMES[found]}-compressed; name it {path.name}{found} (scorer decompresses "
                f"{', '.join(_COMPRESSED)} files as it reads them)")
    kind = _kind(head, tail)
    if kind == "plain text":
        return f"is plain text, not {_NAMES[compression]}-compressed; name it {plain}" if compression else None
    if kind == "a Parquet file":
        return f"is a Parquet file, not {fmt.upper()}; name it {plain.rsplit('.', 1)[0]}.parquet"
    if kind == "a ZIP archive":
        return (f"is a ZIP archive (an Excel .xlsx workbook, say), not {fmt.upper()} text; save it as "
                f"{'CSV UTF-8' if fmt == 'csv' else 'tab-separated UTF-8 text'}, or unzip it")
    if kind == "UTF-16 text":
        return (f"is UTF-16 text (as Excel saves 'Unicode Text'), not UTF-8; re-encode it as UTF-8 "
                f"(iconv -f utf-16 -t utf-8 {path.name} > utf8-{plain})")
    return None


def _compression(head: bytes) -> str | None:
    if _looks_like_text(head):  # bzip2's magic is ASCII ("BZh91AY&SY"): a text header could start so
        return None
    return next((suffix for suffix, magic in _COMPRESSED.items() if head.startswith(magic)), None)


def _kind(head: bytes, tail: bytes) -> str | None:
    """A name for what the first bytes (and the last four) hold, where they tell."""
    if head.startswith(_PARQUET) and tail == _PARQUET:
        return "a Parquet file"
    if head.startswith(_ZIP):
        return "a ZIP archive"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text"
    pairs = head[: len(head) // 2 * 2]
    if len(pairs) >= 8 and not any(pairs[1::2]) and all(pairs[0::2]):
        return "UTF-16 text"  # without a byte-order mark: ASCII with a zero byte after each character
    if head and _looks_like_text(head):
        return "plain text"
    return None


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not a multi-byte character cut by the end of `head`
            return False
        text = head[: exc.start].decode("utf-8")
    text = text.removeprefix("\ufeff")
    return bool(text) and all(char.isprintable() or char in "\t\r\n" for char in text)


def _not_parquet(path: Path, head: bytes, found: str | None) -> str | None:
    if not head:
        return "is empty (0 bytes), not a Parquet file; check that it was written whole"
    if head.startswith(_PARQUET):
        return None
    if found is not None:
        return (f"is {_NAMES[found]}-compressed, not a Parquet file (Parquet compresses inside the file); "
                "decompress it")
    if _looks_like_text(head):
        suffix = ".tsv" if "\t" in head.split(b"\n")[0].decode("utf-8", errors="ignore") else ".csv"
        return f"holds text, not Parquet (a {suffix[1:].upper()} file?); name it {path.name.rsplit('.', 1)[0]}{suffix}"
    return None
