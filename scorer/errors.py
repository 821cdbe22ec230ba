"""The error hierarchy: every expected failure is a ScorerError with a one-line message and an exit code."""

from __future__ import annotations

import errno
import os
import pwd
import resource
from pathlib import Path


class ScorerError(Exception):
    """A failure the user can act on; the message says what happened and what to do."""

    exit_code = 1


class ConfigError(ScorerError):
    """An option value that cannot work (a max length above the model's limit, say)."""

    exit_code = 2


class InputError(ScorerError):
    """Input data that is missing, unreadable, empty, or lacks a column or label the job needs."""

    exit_code = 3


class ModelError(ScorerError):
    """A model or checkpoint directory with missing files, mismatched hashes or a mismatched tokenizer."""

    exit_code = 4


class OutputError(ScorerError):
    """An output path that already exists (without --overwrite) or cannot be written."""

    exit_code = 5


class OutputTaken(OutputError):
    """Another scorer run holds the output's lock: it is writing that output now (a failure, unless the runs share
    their inputs: --share)."""


class ProviderError(ScorerError):
    """An execution provider (CUDA, TensorRT) that was asked for but is not usable here, or that ran out of memory
    running the model."""

    exit_code = 6


class ParityError(ScorerError):
    """ONNX and PyTorch disagree beyond the tolerance (the export parity gate, `run --check`), or this machine
    computes the exported graph otherwise than export recorded (`run`'s self-check)."""

    exit_code = 7


def owner_of(path: str | os.PathLike) -> str:
    """The account that owns `path`, for a message that says whose a file is ("another account" where unknown)."""
    try:
        return pwd.getpwuid(os.stat(path).st_uid).pw_name
    except (KeyError, OSError):
        return "another account"


def out_of_descriptors(exc: BaseException) -> bool:
    """Whether `exc` says this process has as many files open as it may (EMFILE, ENFILE; pyarrow's errors say it
    in words): no fault of the file being opened."""
    return (isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)) or "Too many open files" in str(exc)


def too_many_files(path: Path) -> ConfigError:
    """The error for a file this process could not open because it has as many open as it may."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return ConfigError(f"{path}: not opened, this process having as many files open as it may (ulimit -n: {soft}); "
                       "raise the limit (ulimit -n 4096) and run again")


def not_utf8(path: str | os.PathLike) -> str | None:
    """Where `path`'s name holds bytes that are not UTF-8 (a name written in another encoding, as an old archive or a
    Windows share leaves one: Python holds them as lone surrogates), the path as a message shows it (`caf\\xe9.csv`);
    else None. pyarrow and ONNX Runtime open UTF-8 names only."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    return None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# Control characters as they are written in Python strings: a file or column name holding a line break would
# otherwise break a one-line error (or result line) in two, and a log reader would take the second for another.
_SHOWN = {code: repr(chr(code))[1:-1] for code in [*range(32), 127]}


def one_line(text: str) -> str:
    """`text` with its line breaks, tabs and other control characters written as escapes (\\n, \\t, \\x1b)."""
    return text.translate(_SHOWN)


# The characters of an unexpected error's message said (torch's TypeError for an odd path held the whole traced
# graph: 600 KB on one line of a nightly log); --debug shows it whole.
UNEXPECTED_SHOWN = 1_000


def unexpected(exc: BaseException) -> str:
    """A bug's error in one line, as the run says it and its summary records it: its type and message, cut short."""
    text = one_line(str(exc))
    if len(text) > UNEXPECTED_SHOWN:
        text = f"{text[:UNEXPECTED_SHOWN]}... ({len(text):,} characters in all)"
    return f"unexpected {type(exc).__name__}: {text}"


EXIT_CODES = {
    0: "success",
    1: "unexpected internal error (rerun with --debug and report it)",
    2: "bad option or configuration",
    3: "bad input data",
    4: "bad model directory",
    5: "output exists or cannot be written",
    6: "requested execution provider not usable, or out of its memory while running the model (finished windows kept)",
    7: "ONNX/PyTorch parity check failed, or the self-check: this machine computes the model otherwise",
    129: "hung up (SIGHUP: the terminal it ran in closed, an SSH session dropped): cleaned up like Ctrl-C",
    130: "interrupted (Ctrl-C)",
    141: "standard output's reader went away (`| head`), as a tool killed by SIGPIPE says it; said after the work",
    143: "terminated (SIGTERM, as a scheduler's timeout sends): cleaned up like Ctrl-C, finished windows kept",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a terminated run unwinds and cleans up as an interrupted one."""


class HungUp(Terminated):
    """SIGHUP (the terminal closed), handled as SIGTERM is; not where the run was started to ignore it (nohup)."""


def stopped(exc: KeyboardInterrupt) -> tuple[str, int]:
    """What a run stopped by Ctrl-C, SIGTERM or SIGHUP says, and its exit code."""
    if isinstance(exc, HungUp):
        return "hung up", 129
    return ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
