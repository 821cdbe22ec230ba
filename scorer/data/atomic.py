"""Atomic outputs: everything is written under a temporary name and renamed into place only when complete."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from scorer.errors import OutputError, owner_of


def through_link(path: Path) -> Path:
    """Where what scorer writes at `path` goes: what a symbolic link there points to (written through, the link kept:
    `models/current`, an output linked into a working directory, a `latest.parquet`), else `path`."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden name beside `path`, unique to this process, on the same file system (so rename is atomic)."""
    return path.parent / f".{path.name}.{tag}-{os.getpid()}"


def in_the_way(directory: Path, option: str | None = None) -> OutputError:
    """The error for a directory at the path of a file scorer would write (it never replaces one with a file)."""
    return OutputError(f"{option + ' ' if option else ''}{directory} is a directory, and scorer writes a file there "
                       "(it does not replace a directory with a file); remove it, or give another path")


def not_a_file(path: Path, option: str | None = None) -> OutputError | None:
    """The error for an output path that is a pipe, socket or device (/dev/null, say), which renaming a finished file
    into place would replace (as root, the system's /dev/null); None for anything else (a file, a directory, nothing).
    A symbolic link counts as what it points to."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    what = "a pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return OutputError(f"{option + ' ' if option else ''}{path} is {what}, and scorer writes under a temporary name "
                       "and renames the finished output into place, which would replace it; give another path")


def not_ours_to_replace(path: Path, option: str = "--output") -> OutputError | None:
    """The error for an existing `path` of another account in a directory with the sticky bit (as /tmp, or a shared
    output directory made so), where only its owner (or the directory's, or root) may replace or remove it: the
    rename that completes an output would fail there after all the work."""
    try:
        owned, directory = os.lstat(path).st_uid, os.stat(path.parent)
    except OSError:
        return None
    me = os.geteuid()
    if not directory.st_mode & stat.S_ISVTX or me in (0, owned, directory.st_uid):
        return None
    owner = owner_of(path)
    return OutputError(f"{option} {path} is {owner}'s, in {path.parent}, a directory with the sticky bit (as /tmp), "
                       f"where only its owner may replace it; remove it as {owner}, or choose another {option}")


# A file's temporary name, `.NAME.tmp-PID` (PIDs have up to 7 digits), is this much longer than NAME.
TEMPORARY_NAME = len(".") + len(".tmp-") + 7
# The longest name scorer makes from an output's NAME: a CSV/TSV output's record `.NAME.scorer.json`, or the default
# summary `NAME.summary.json`, each under its temporary name (`.NAME.scorer-parts`, `.NAME.scorer-lock` are shorter).
_BESIDE = len(".") + len(".scorer.json") + TEMPORARY_NAME


def name_too_long(path: Path, option: str = "--output", beside: int = _BESIDE) -> OutputError | None:
    """The error for an output whose name leaves no room for the names scorer makes from it (`beside` bytes more: a
    temporary name, a lock, its finished windows, its record) under the file system's limit on a name (255 bytes on
    most); None where it fits."""
    try:
        limit = os.pathconf(next(p for p in [path.parent, *path.parent.parents] if p.exists()), "PC_NAME_MAX")
    except (OSError, ValueError, StopIteration):
        limit = 255
    size = len(os.fsencode(path.name))
    if size + beside <= limit:
        return None
    return OutputError(f"{option} {path}: its name is {size} bytes, and the names scorer makes from it for the files "
                       f"it keeps beside it add up to {beside} to that, past this file system's {limit}; give {option} "
                       f"a name of at most {limit - beside} bytes")


def check_writable(path: Path, overwrite: bool, option: str = "--output", probed: set[Path] | None = None,
                   marker: str | None = None) -> None:
    """Refuse an existing output (unless overwrite) or a directory we cannot create files in. `probed`: directories
    already found writable by this run, which are not probed again (one run writing many outputs to one directory).
    `marker`: `path` is a directory output, which replaces only a directory holding this file (one scorer wrote) or
    an empty one; else `path` is a file, never written over a directory."""
    refused = not_a_file(path, option) or name_too_long(path, option, beside=TEMPORARY_NAME) or \
        not_ours_to_replace(path, option)
    if refused is not None:
        raise refused
    if marker is not None and path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file, and scorer writes a directory there (it does not replace a file "
                          "with a directory); remove it, or give another path")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists; pass --overwrite to replace it, or choose another {option}")
    if path.is_dir() and not path.is_symlink():
        if marker is None:
            raise in_the_way(path, option)
        if any(path.iterdir()) and not (path / marker).is_file():
            raise OutputError(f"{option} {path} is a directory that scorer did not write (it has no {marker}), and "
                              "replacing it would delete what it holds, --overwrite or not; choose another "
                              f"{option}, or empty it first")
    parent = path.parent
    if probed is not None and parent in probed:
        return
    blocking = next((p for p in [parent, *parent.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        what = "a file" if blocking.is_file() else "a device, socket or pipe"
        raise OutputError(f"{blocking} is {what}, not a directory; choose another {option}")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {parent} ({exc.strerror}); choose another {option}") from exc
    # Create a file rather than ask os.access: root passes access() on read-only and virtual file systems.
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".scorer-probe-"):
            pass
    except OSError as exc:
        raise OutputError(f"{parent} is not writable ({exc.strerror}); choose another {option}") from exc
    if probed is not None:
        probed.add(parent)


def check_keeps(output: Path, inputs: dict[str, Path | None], option: str = "--output") -> None:
    """Refuse an output directory whose replacement would delete an input: the same path, or a directory above it."""
    target = output.resolve()
    for name, path in inputs.items():
        if path is not None and (Path(path).resolve() == target or target in Path(path).resolve().parents):
            raise OutputError(f"{option} {output} holds {name} {path}, which replacing it would delete; choose "
                              f"another {option}")


# What a full or read-only disk, a quota or a file-size limit raise while an output is written.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def out_of_room(exc: BaseException, output: Path, then: str = "then run again") -> OutputError | None:
    """The one-line error for an OSError that says the output cannot grow; None for any other exception."""
    if not isinstance(exc, OSError) or exc.errno not in _NO_ROOM:
        return None
    return OutputError(f"cannot write {output} ({exc.strerror}); free space or choose another --output, {then}")


@contextlib.contextmanager
def atomic_dir(target: Path, overwrite: bool, marker: str) -> Iterator[Path]:
    """Yield a temporary directory that replaces `target` when the block succeeds, and vanishes if it fails. An
    existing `target` is replaced only where it holds `marker` (scorer wrote it) or nothing (check_writable). A
    symbolic link (models/current, say) is written through: the directory it points to is replaced, the link kept."""
    target = through_link(target)
    check_writable(target, overwrite, marker=marker)
    staging = temporary_sibling(target)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        no_room = out_of_room(exc, target)
        if no_room is not None:
            raise no_room from exc
        raise
    if target.exists() and not overwrite:  # written by another run while this one worked: keep theirs
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"{target} was written by another run while this one worked; pass --overwrite to replace "
                          "it, or choose another --output")
    try:
        open_modes(staging)
        if target.is_dir():
            old = temporary_sibling(target, "old")
            os.replace(target, old)
            os.replace(staging, target)
            _remove_replaced(old, target)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_left_behind(target: Path) -> None:
    """Remove what runs killed while they wrote the directory `target` left beside it: their temporary directories
    (`.NAME.tmp-PID`, each up to a whole export's or checkpoint's bytes, which atomic_dir removes only where the run
    lives to see its block fail) and, where `target` is in place, a directory a replace moved aside (`.NAME.old-PID`:
    killed between the renames, or while removing it). Called under `target`'s lock, so no live run writes them."""
    prefixes = (f".{target.name}.tmp-",) + ((f".{target.name}.old-",) if target.is_dir() else ())
    try:
        entries = list(os.scandir(target.parent))
    except OSError:  # (not there yet, or not readable: nothing of ours lies there)
        return
    for entry in entries:
        pid = next((entry.name[len(prefix):] for prefix in prefixes if entry.name.startswith(prefix)), "")
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        if os.path.lexists(path):
            logging.getLogger("scorer").warning(
                "%s, left by a run killed while it wrote %s, could not all be removed (files of another account?); "
                "remove it to free its space", path, target)
        else:
            logging.getLogger("scorer").info("removed %s, left by a run killed while it wrote %s", path, target)


def _remove_replaced(old: Path, target: Path) -> None:
    """Remove the directory a new one replaced; where that cannot be done (another account's files in it), say where
    it is, since it holds a whole checkpoint's or export's bytes."""
    shutil.rmtree(old, ignore_errors=True)
    if old.exists():
        logging.getLogger("scorer").warning(
            "%s was replaced, but its old contents, moved aside to %s, could not all be removed (files of another "
            "account?); remove that directory to free its space", target, old)


def open_modes(directory: Path) -> None:
    """Give every file under `directory` the permissions a plain open() gives there (0644 under the usual umask).

    Some writers create their files readable by their owner alone: safetensors (a checkpoint's weights) and onnx's
    external data (a model over 2 GB) write 0600 whatever the umask, which would keep a checkpoint or an export from
    the other accounts of a shared directory (the nightly job's, say) where every other file of it is readable.
    """
    probe = directory / ".scorer-mode-probe"
    os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) != mode:
            path.chmod(mode)


@contextlib.contextmanager
def atomic_file(target: Path, overwrite: bool, option: str = "--output") -> Iterator[Path]:
    """Yield a temporary file path that is renamed to `target` when the block succeeds, deleted if it fails
    (`option`: what the user named `target` with, for errors)."""
    target = through_link(target)
    check_writable(target, overwrite, option)
    staging = temporary_sibling(target)
    try:
        yield staging
        replace(staging, target)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def replace(staging: Path, target: Path) -> None:
    """Move the file `staging` to `target`; never over a directory (one made there while the file was written is
    kept, and the file dropped), nor over a pipe, socket or device."""
    refused = in_the_way(target) if target.is_dir() and not target.is_symlink() else not_a_file(target)
    if refused is not None:
        staging.unlink(missing_ok=True)
        raise refused
    os.replace(staging, target)


def sync(path: Path) -> None:
    """Flush a file (or a directory's entries) to the disk, so that a crash of the machine after a rename cannot
    leave an empty file under the final name."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text(target: Path, text: str, option: str = "--output") -> None:
    """Write a small text file atomically, replacing any previous version."""
    with atomic_file(target, overwrite=True, option=option) as staging:
        staging.write_text(text)
