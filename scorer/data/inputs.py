"""What a path names as input data: one file, or the data files of a directory or a glob, sorted (`scorer run`'s
INPUT, `scorer train --data`)."""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

from scorer.data.read import data_suffix
from scorer.errors import InputError

_MAGIC = ("*", "?", "[")
log = logging.getLogger("scorer")


UNDERSCORED = "named with or under a leading '_'"  # why a directory's data file is left out (with EMPTY)
EMPTY = "no bytes"
LINK_TO_NOTHING = "a link to nothing (a mount that is down, a directory moved away?)"


def expand_inputs(spec: str, tell: bool = True) -> tuple[list[Path], Path | None]:
    """The input files INPUT names, sorted, and the base directory they are relative to (None for one file);
    `tell`: say which files of a directory were left out (once per command: not again where it is listed again)."""
    files, base, _ = _listing(spec, tell)
    return files, base


def _listing(spec: str, tell: bool) -> tuple[list[Path], Path | None, dict[str, str]]:
    """expand_inputs's files and base, and the data files a directory left out, each (under it) with why."""
    if any(char in spec for char in _MAGIC) and not Path(spec).exists():  # a file may be named "day[1].csv"
        base = _glob_base(spec)
        loop = _loop_under(base) if "**" in spec else None
        if loop is not None:  # (glob follows links to directories: round a loop up to 40 deep, its paths multiplying)
            raise InputError(f"{spec}: its ** would follow links round a loop, at {loop[0]} (back to {loop[1]}); name "
                             f"the directory as INPUT instead (its search follows each directory once), or remove the "
                             f"link")
        for directory in glob.glob(os.path.dirname(spec), recursive=True):  # (the ones the pattern searches)
            if os.path.isdir(directory) and not os.access(directory, os.R_OK | os.X_OK):
                raise _unreadable(PermissionError(13, "Permission denied", directory), spec)
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if _is_data_file(Path(p)))
        if not files:
            raise InputError(f"no .parquet, .csv or .tsv file matches {spec}; check the pattern")
        return files, base, {}
    path = Path(spec)
    if path.is_dir():
        entries = _search(path)
        found = [p for p in entries if _is_data_file(p)]
        listed = [not _unlisted(p.relative_to(path)) for p in found]
        files = [p for p, kept in zip(found, listed, strict=True) if kept]
        left = [str(p.relative_to(path)) for p, kept in zip(found, listed, strict=True) if not kept]
        data = set(found)
        broken = [str(p.relative_to(path)) for p in entries
                  if p not in data and _broken(p) and not _unlisted(p.relative_to(path))]
        if broken and tell:
            log.warning("%s: %d link(s) to nothing, which may have led to inputs: %s", path, len(broken),
                        ", ".join(broken)[:200])
        why = (f"{UNDERSCORED} ({', '.join(left[:3])}{', ...' if len(left) > 3 else ''}), which "
               "scorer leaves out of a directory, as pyarrow and Spark do (Spark's and Hadoop's work in progress, "
               "_temporary, and markers); name one, or a glob, to read it")
        if not files:
            raise InputError(f"{path}'s only data files are {why}" if left else
                             f"{path} holds no .parquet, .csv or .tsv file")
        if left and tell:
            log.info("%s: left out %d data file(s) %s", path, len(left), why)
        return files, path, {**dict.fromkeys(left, UNDERSCORED), **dict.fromkeys(broken, LINK_TO_NOTHING)}
    return [path], None, {}


def parts_of(spec: str) -> list[Path]:
    """The data files of a set written in parts (`scorer train --data`, `export --data`): those `expand_parts` lists."""
    return expand_parts(spec)[0]


def expand_parts(spec: str) -> tuple[list[Path], Path | None, dict[str, str]]:
    """What `expand_inputs` gives, less the empty files among several (a zero-byte part: a writer's empty partition,
    as Spark writes an empty CSV one), which hold no row and, for CSV, no header; said once. One file is returned as
    it is, empty or not (`scorer run` refuses it, saying so). And every data file left out, under INPUT, with why."""
    files, base, left_out = _listing(spec, tell=True)
    if len(files) == 1:
        return files, base, left_out
    empty = {path for path in files if _size(path) == 0}
    kept = [path for path in files if path not in empty]
    if empty:
        named = [str(path.relative_to(base)) if base else path.name for path in files if path in empty]
        log.info("%s: left out %d empty file(s), of no bytes, so no rows (%s)", spec, len(empty),
                 ", ".join(named)[:200])
        left_out = {**left_out, **dict.fromkeys(named, EMPTY)}
    if not kept:
        raise InputError(f"{spec}: every data file is empty; nothing to read")
    return kept, base, left_out


def _search(directory: Path) -> list[Path]:
    """Every file and link to nothing under `directory`, sorted, hidden directories left unsearched. Links to
    directories are followed, each directory searched once: a link to one inside `directory`, or up to it, is not
    searched (its target is, as itself), and of two links to one directory outside, the first is. A directory that
    this account cannot list hides its inputs: searching on would skip them, and the run would end well with them
    unscored, so it is refused (unless hidden, or under a leading '_')."""
    root = directory.resolve()
    searched, found, denied = {root}, [], []
    for top, names, others in os.walk(directory, followlinks=True, onerror=denied.append):
        kept = []
        for name in sorted(names):
            real = Path(top, name).resolve()
            inside = real == root or root in real.parents
            if not name.startswith(".") and real not in searched and not (Path(top, name).is_symlink() and inside):
                searched.add(real)
                kept.append(name)
        names[:] = kept
        found += [Path(top, name) for name in others]
    refused = [error for error in denied if not _unlisted(Path(error.filename or directory).relative_to(directory))]
    if refused:
        raise _unreadable(refused[0], str(directory))
    return sorted(path for path in found if not _hidden(path.relative_to(directory)))


def _loop_under(base: Path) -> tuple[Path, Path] | None:
    """Where the directories under `base`, links followed, lead back to one on the way to them (`real/up -> ..`):
    that directory's path, and where it leads; None where they do not. Hidden directories are not searched, as `**`
    does not search them."""
    state: dict[Path, bool] = {}  # each directory reached: False while the search is under it, then True

    def search(directory: Path) -> tuple[Path, Path] | None:
        state[directory.resolve()] = False
        try:
            with os.scandir(directory) as listing:
                names = sorted(entry.name for entry in listing if not entry.name.startswith(".") and entry.is_dir())
        except OSError:  # (said where the glob meets it)
            names = []
        for name in names:
            path = Path(directory, name)
            real = path.resolve()
            if state.get(real) is False:
                return path, real
            found = None if real in state else search(path)
            if found is not None:
                return found
        state[directory.resolve()] = True
        return None

    return search(base)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:  # (a link to nothing, or a file gone since it was listed: it fails when opened, saying so)
        return None


def _unreadable(error: OSError, spec: str) -> InputError:
    return InputError(f"{error.filename} cannot be read ({error.strerror}), so the inputs in it cannot be found; make "
                      f"it readable by this account, or move it out of {spec}")


def _is_data_file(path: Path) -> bool:
    """A data file's name on a file, or on a link to nothing (an input that fails, naming its target, where it was
    passed over: a mount that is down)."""
    name = path.name
    return ((path.is_file() or _broken(path)) and data_suffix(path) is not None and ".scored." not in name
            and not name.startswith("."))


def _broken(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _unlisted(relative: Path) -> bool:
    """A file of a directory's that is not scored with it: named with, or under a directory named with, a leading
    '_' (a Spark job's _temporary attempts, its _SUCCESS and _committed markers)."""
    return any(part.startswith("_") for part in relative.parts)


def _glob_base(pattern: str) -> Path:
    """The longest leading directory of a glob pattern without wildcards."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if any(char in part for char in _MAGIC):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")
