"""A directory read as a whole (an export, a checkpoint), as it was when the reading began.

Export and training replace a directory by renaming a finished one into its place (scorer.data.atomic.atomic_dir), so
one read while it is replaced has some files of each: a manifest of one export and a graph of the next, say, which
failed the run with a hash mismatch in the first case and, in the worst, scored with one model's graph under another's
record. A directory is the same one all through where its identity is: its device and inode (through a link), and
its files' names, sizes and modification times, so that files written again in place (`cp new/* model/`, where
export and train rename) count as another directory too."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from scorer.errors import ModelError, ScorerError

log = logging.getLogger("scorer")
T = TypeVar("T")
TRIES = 3  # reads of a directory replaced while it was read, before the run gives up
# The most a directory being replaced is waited for while it is missing: between atomic_dir's two renames (the old one
# moved aside, the new one not yet in place) it is missing for microseconds.
SWAP_SECONDS = 5.0


def identity(directory: Path) -> tuple | None:
    """The directory's device and inode (a link's target's) and `file_listing`, or None where there is none (or it
    cannot be listed)."""
    try:
        found = os.stat(directory)
        return found.st_dev, found.st_ino, file_listing(Path(directory))
    except OSError:
        return None


def file_listing(directory: Path) -> tuple:
    """Each file's name, size and modification time in `directory` (not below it), sorted: a directory written
    again in place is not the one read before. Hidden files are left out: scorer's own locks and temporaries
    (`.NAME.scorer-lock`, `.NAME.tmp-*`) come and go beside an output written into a model's directory."""
    with os.scandir(directory) as entries:
        files = [(entry.name, entry.stat()) for entry in entries if entry.is_file() and not entry.name.startswith(".")]
    return tuple(sorted((name, found.st_size, found.st_mtime_ns) for name, found in files))


def read_whole(directory: Path, read: Callable[[], T], discard: Callable[[T], None] = lambda _: None) -> T:
    """`read()` of `directory` (what reads the files in it), done again where the directory was replaced while it ran,
    so that what it returns comes from one directory; `discard` lets go of a reading that is not kept. A failure of a
    reading during which the directory stayed the same is raised as it came."""
    for _ in range(TRIES):
        await_swap(directory)
        before = identity(directory)
        try:
            result = read()
        except (ScorerError, OSError):  # (OSError: a file gone with the directory moved aside and removed)
            if identity(directory) == before:
                raise
        else:
            if identity(directory) == before:
                return result
            discard(result)
        log.info("%s was replaced while it was read (an export or training run finishing?); reading it again",
                 directory)
    raise ModelError(f"{directory} was replaced {TRIES} times while this run read it; run again once what writes it "
                     "(an export or training run in a loop?) has stopped")


def await_swap(directory: Path) -> None:
    """Where `directory` is missing while a directory moved aside from its place is beside it (atomic_dir's
    `.NAME.old-PID`), it is being replaced: wait for the new one, up to SWAP_SECONDS."""
    real = Path(os.path.realpath(directory))
    deadline = time.monotonic() + SWAP_SECONDS
    while not real.exists() and time.monotonic() < deadline and _moved_aside(real):
        time.sleep(0.01)


def _moved_aside(directory: Path) -> bool:
    """Whether a directory atomic_dir moved aside from `directory`'s place is beside it (a name, not a pattern:
    `model[1]` holds no wildcard)."""
    try:
        return any(entry.name.startswith(f".{directory.name}.old-") for entry in os.scandir(directory.parent))
    except OSError:  # (its parent not there, or not readable: nothing is being replaced there)
        return False


def unchanged(directory: Path, before: tuple | None, what: str) -> None:
    """Refuse to go on where `directory`, whose identity was `before` when `what` began reading it, has been replaced
    since: what was read of it may come from two of them."""
    if identity(directory) != before:
        raise ModelError(f"{directory} was replaced while {what} read it (a training run finished writing it?), so "
                         f"what was read may mix two of them; nothing was written: run {what} again")
