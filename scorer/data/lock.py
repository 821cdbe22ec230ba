"""An exclusive lock on one output, so that two runs (an overlapping cron job, say) never write it at once."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from scorer.data import atomic
from scorer.errors import OutputError, OutputTaken, out_of_descriptors, too_many_files

log = logging.getLogger("scorer")


class OutputLock:
    """An exclusive lock on one output, so two runs (an overlapping cron job, say) never write it at once.

    flock is released by the kernel when the holder dies, so a run killed with -9 leaves no stale lock.
    """

    def __init__(self, output: Path, temporaries: list[Path] | None = None) -> None:
        """`temporaries`: the output's temporary files, where the caller listed its directory once for many outputs
        (temporaries_by_output); else the directory is searched for them."""
        self.output = output
        self.path = output.parent / f".{output.name}.scorer-lock"
        self.temporaries = temporaries
        self._handle = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A holder removes the lock file as it lets go: a run that opened the file just before, and locks it just
        # after, holds a lock on a file no longer there, while the next run creates and locks a new one. So the lock
        # counts only once the path is still the file locked; else the new file is locked (or found taken).
        while not self._locked():
            pass
        # Temporary outputs left by a killed run (an output grows while it is scored): we hold the lock, so none
        # of them is live.
        stale = self.temporaries if self.temporaries is not None else \
            self.output.parent.glob(f".{self.output.name}.tmp-*")
        for path in stale:
            try:
                path.unlink(missing_ok=True)
            except PermissionError as exc:  # (another account's, in a directory with the sticky bit, say)
                log.warning("%s: a temporary output left by a killed run, which this account cannot remove (%s); "
                            "remove it to free its space", path, exc.strerror)
        return self

    def _locked(self) -> bool:
        """Lock the file at self.path: True once it is locked and still there, False where it was removed meanwhile
        (try again); raises OutputTaken where another run holds it."""
        try:  # (read-only: flock needs no more, so a lock file left by another account's killed run locks too)
            self._handle = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o666)
        except PermissionError as exc:
            raise OutputError(f"cannot create the lock file {self.path} ({exc.strerror}); make {self.path.parent} "
                              "writable by this account, or choose another --output") from exc
        except OSError as exc:
            if out_of_descriptors(exc):
                raise too_many_files(self.path) from exc
            raise
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._handle)
            raise OutputTaken(f"another scorer run is writing {self.output}; wait for it to finish, or pass --share "
                              "to both runs to split their inputs between them") from exc
        except OSError as exc:  # (ENOLCK, EOPNOTSUPP, ENOSYS: an NFS mount without its lock service, some FUSE ones)
            os.close(self._handle)
            raise OutputError(f"cannot lock {self.path} ({exc.strerror}): its filesystem does not support file locks, "
                              "which keep two runs from writing one output at once; write the outputs to a "
                              "filesystem that does (a local disk; NFS with its lock service)") from exc
        held = os.fstat(self._handle)
        try:
            there = os.stat(self.path)
        except FileNotFoundError:
            there = None
        if there is not None and (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino):
            return True
        os.close(self._handle)  # (which lets the lock of the removed file go)
        return False

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(FileNotFoundError, PermissionError):  # (kept: the next run locks it as it is)
            self.path.unlink()
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        os.close(self._handle)


@contextlib.contextmanager
def sole_writer(output: Path, command: str) -> Iterator[None]:
    """`output`'s lock, held while `scorer COMMAND` (train, export) writes it: a second run into the same output (an
    overlapping cron job) is refused before any work, where the later would fail at its end, its work lost (or, with
    --overwrite, replace the earlier's), and two training runs would replace each other's resume state."""
    target = atomic.through_link(output)
    lock = OutputLock(target, temporaries=[])
    try:
        lock.__enter__()
    except OutputTaken as exc:
        raise OutputError(f"another scorer {command} is writing {output}; wait for it to finish, or choose another "
                          "--output") from exc
    except OutputError as exc:  # (a filesystem without locks: its output is written whole and renamed all the same)
        log.warning("%s; the run goes on without the lock, so a second run into the same output is not refused", exc)
        lock = None
    else:  # (only under the lock: without it, a temporary directory there may be another live run's)
        atomic.remove_left_behind(target)
    try:
        yield
    finally:
        if lock is not None:
            lock.__exit__()
