"""Resumable units: each finished window is a part file beside the output, which grows beside them.

A run killed at any moment leaves only whole parts (each is renamed into place when complete) and a state file
that says which input, model and settings they belong to. The next run with the same state skips the rows those
parts hold and carries on; with a different state it starts again. The output itself is written window by window
under a temporary name (scorer.data.write.OutputSink; a resumed run first copies the parts it keeps into it), renamed
into place when complete, and then the parts are removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from scorer.data import atomic
from scorer.data.lock import OutputLock
from scorer.errors import OutputError, OutputTaken, owner_of

log = logging.getLogger("scorer")
STATE = "state.json"
RESCUED = b"scorer-rescued"  # a part's count of rows the fp32 graph scored, in its schema metadata
_PARTS = ".scorer-parts"  # a parts directory's name: .NAME.scorer-parts beside the output NAME
_TEMPORARY = re.compile(r"\.(.+)\.tmp-\d+")  # an output's temporary name (scorer.data.atomic.temporary_sibling)


def fingerprint(path: Path) -> dict:
    """What identifies an input's content cheaply: resolved path, size and modification time."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def work_dir(output: Path) -> Path:
    return output.parent / f".{output.name}{_PARTS}"


def temporaries_by_output(directory: Path) -> dict[str, list[Path]]:
    """The temporary outputs in `directory` (`.NAME.tmp-PID`, scorer.data.atomic.temporary_sibling), by output name: one
    listing for many outputs, where a search per output would read a directory of N outputs N times."""
    found: dict[str, list[Path]] = {}
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            match = _TEMPORARY.fullmatch(entry.name)
            if match:
                found.setdefault(match[1], []).append(directory / entry.name)
    return found


def drop_leftover_parts(output: Path, record: dict, locked: bool) -> None:
    """Remove the finished windows an earlier run left beside `output` where they made what it now holds (the same
    model, input and column as `record`, the making of the complete output that is skipped as up to date): that run
    was stopped between renaming its output into place and removing them, and nothing would ever resume from them.
    Under the output's lock (`locked`: held already); where another run holds it, they are kept."""
    directory = work_dir(output)
    try:
        state = json.loads((directory / STATE).read_text())
    except (OSError, ValueError):
        return
    same = ("model_sha256", "variant", "input", "columns")
    if not isinstance(state, dict) or any(state.get(key) != record.get(key) for key in same):
        return  # (another making's, stopped midway: resumable where it is run again)
    try:
        with contextlib.nullcontext() if locked else OutputLock(output):
            shutil.rmtree(directory, ignore_errors=True)
    except OutputTaken:
        return
    log.info("%s: removed the finished windows of the run that wrote it (stopped before it removed them)", output)


def drop_orphaned_parts(directory: Path, outputs: set[Path]) -> None:
    """Remove the finished windows under `directory` (a run's --output DIR) whose input is gone: a run stopped midway
    through an input that was then removed (an inbox whose files expire) left them, and nothing can resume them.
    Those of `outputs` (this run's, resolved), of inputs still there, and of outputs another run holds are kept."""
    for parts in _parts_directories(directory):
        output = parts.parent / parts.name[1:-len(_PARTS)]
        try:
            source = json.loads((parts / STATE).read_text())["input"]["path"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # (not a parts directory of ours, or one being created)
        if output.resolve() in outputs or Path(source).exists():
            continue
        try:
            with OutputLock(output):
                shutil.rmtree(parts, ignore_errors=True)
        except (OutputTaken, OutputError):
            continue
        log.info("%s: removed the finished windows of %s, which is gone, so nothing can resume them", output, source)


def _parts_directories(directory: Path) -> Iterator[Path]:
    """Every parts directory under `directory`, found without entering them or any other hidden directory."""
    for root, directories, _ in os.walk(directory):
        yield from (Path(root) / name for name in directories if name.startswith(".") and name.endswith(_PARTS))
        directories[:] = [name for name in directories if not name.startswith(".")]


def _refuse_unwritable(directory: Path) -> None:
    """An earlier run's parts directory that this account cannot change (another account's run left it, say)."""
    if os.access(directory, os.W_OK | os.X_OK):
        return
    owner = owner_of(directory)
    raise OutputError(f"{directory} holds the finished windows of an earlier run by {owner}, which this account cannot "
                      f"write to; run as {owner} to resume it, or remove the directory (its windows are then scored "
                      "again)")


def _same_work(state: object, identity: dict) -> bool:
    """Whether parts made under `state` are parts of the work `identity` describes: the same input, model and
    settings, whatever the window size (a run resumed with a smaller --window-rows, after running out of memory, keeps
    the windows finished; a resumed run skips the rows its parts hold, not a count of windows)."""
    if not isinstance(state, dict):
        return False
    return {k: v for k, v in state.items() if k != "window_rows"} == \
        {k: v for k, v in identity.items() if k != "window_rows"}


class PartStore:
    """The finished windows of one unit, as part-NNNNNN.parquet files in a hidden directory beside the output."""

    def __init__(self, output: Path, identity: dict) -> None:
        self.output = output
        self.identity = identity
        self.directory = work_dir(output)
        self.made = 0  # parts there should be: those found by open() and those written since

    def open(self) -> int:
        """Prepare the directory; return how many parts an earlier run of the same work already finished."""
        state_path = self.directory / STATE
        if self.directory.is_dir():
            _refuse_unwritable(self.directory)
            try:
                state = json.loads(state_path.read_text())
            except (OSError, json.JSONDecodeError):
                state = None
            if _same_work(state, self.identity):
                done = self._readable_parts()
                for stray in self.directory.glob(".*"):
                    stray.unlink(missing_ok=True)
                if state != self.identity:  # (other --window-rows: the parts are kept, the next ones of the new size)
                    atomic.write_text(state_path, json.dumps(self.identity, indent=2) + "\n")
                if done:
                    log.info("resuming %s: %d finished windows found", self.output.name, done)
                self.made = done
                return done
            log.info("discarding unfinished work for %s: it was for another input, model or settings",
                     self.output.name)
            shutil.rmtree(self.directory)
        try:
            self.directory.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(f"cannot create {self.directory} ({exc.strerror}); choose another --output") from exc
        atomic.write_text(state_path, json.dumps(self.identity, indent=2) + "\n")
        return 0

    def part(self, index: int) -> Path:
        return self.directory / f"part-{index:06d}.parquet"

    def write(self, index: int, table: pa.Table, rescued: int = 0) -> None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), RESCUED: str(rescued).encode()})
        with atomic.atomic_file(self.part(index), overwrite=True) as staging:
            pq.write_table(table, staging, compression="zstd")
        self.made = max(self.made, index + 1)

    def read(self, index: int) -> pa.Table:
        """Part `index` as the window was written (without the part's own metadata)."""
        table = pq.read_table(self.part(index))
        metadata = {k: v for k, v in (table.schema.metadata or {}).items() if k != RESCUED}
        return table.replace_schema_metadata(metadata or None)

    def rescued_rows(self, parts: list[Path]) -> int:
        """Rows of `parts` the fp32 graph scored: counted from the parts, so that a resumed run counts the ones an
        interrupted run rescued too."""
        return sum(int((pq.read_schema(part).metadata or {}).get(RESCUED, b"0")) for part in parts)

    @staticmethod
    def rows(parts: list[Path]) -> int:
        """Rows held by `parts` (a run's last window may hold fewer than a window's rows)."""
        return sum(pq.read_metadata(part).num_rows for part in parts)

    def parts(self) -> list[Path]:
        return [self.part(i) for i in range(self._contiguous_parts())]

    def finished_parts(self) -> list[Path]:
        """Every part of the unit, once it is scored; refused where some are gone (another job removed them, or the
        output's directory, while the run wrote them): its figures, which are read from them, would be short."""
        parts = self.parts()
        if len(parts) != self.made:
            raise OutputError(f"{self.directory}: finished windows were removed while this run wrote them (the first "
                              f"{len(parts)} of {self.made} left; the output's directory removed by another job?); "
                              "nothing was written; run again")
        return parts

    def _contiguous_parts(self) -> int:
        count = 0
        while self.part(count).is_file():
            count += 1
        return count

    def _readable_parts(self) -> int:
        """How many parts from the first are whole Parquet files; the rest are removed. A part is renamed into place
        only when written, but a crash of the machine can still leave one empty or cut (its data never synced)."""
        count = self._contiguous_parts()
        for index in range(count):
            try:
                pq.read_metadata(self.part(index))
            except (OSError, pa.ArrowException):
                log.info("part %d of %s is damaged; resuming before it", index, self.output.name)
                for later in range(index, count):
                    self.part(later).unlink(missing_ok=True)
                return index
        return count

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
