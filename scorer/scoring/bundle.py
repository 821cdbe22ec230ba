"""The order units are scored in: each on its own, or small ones together.

An input of at most a quarter window of rows is small (RunConfig.small_rows). Consecutive small inputs share one
window: their rows are tokenised and batched together, so a model fed thousands of small files (a nightly inbox of
hourly drops, say) still gets full batches, where scoring each alone gave a batch per file. Each input keeps its own
output (written under a temporary name and renamed when complete), its own summary, evaluation and --check. What
small inputs give up is resuming part by part: a window is the unit of resuming anyway, and a run stopped during a
bundle scores its inputs again.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa

from scorer.config import RunConfig
from scorer.data import atomic
from scorer.data.lock import OutputLock
from scorer.data.write import OutputSink
from scorer.errors import OutputTaken, ScorerError
from scorer.inference.classify import OnnxClassifier
from scorer.inference.results import Scored
from scorer.scoring.parts import temporaries_by_output, work_dir
from scorer.scoring.single import (
    OpenUnit,
    check_unchanged,
    failure,
    finish_unit,
    open_unit,
    said_done,
    score_unit,
    taken,
    up_to_date,
)
from scorer.scoring.stream import Waits, checked_windows, joined_pieces, with_results
from scorer.scoring.summary import UnitSummary
from scorer.scoring.units import WorkUnit

log = logging.getLogger("scorer")
MAX_INPUTS = 256  # inputs in one bundle: each holds its output's lock (an open file) until the bundle is written
# Open files a bundle member holds (its output's lock, its input: a Parquet file or a CSV reader left open), and those
# kept for everything else (ONNX Runtime, the threads, the parts and outputs being written).
FILES_PER_MEMBER, FILES_KEPT = 2, 32
SMALL_CSV_BYTES = 8 << 20  # a larger CSV/TSV file is not read to count its rows: it is scored on its own
RERUN = "then run again"

Outcome = tuple[WorkUnit, UnitSummary | BaseException]


def outcomes(units: list[WorkUnit], classifier: OnnxClassifier, config: RunConfig,
             progress: bool) -> Iterator[list[Outcome]]:
    """Each unit's summary, or the exception it failed with, in the units' order: a list at a time, one unit
    scored on its own or the small ones scored together. A fatal exception (a stop, a bug) ends the list with the
    units it stopped, the unit it struck last."""
    if len(units) == 1:  # (one input is scored as it is: a bundle would only lose its resuming)
        yield [(units[0], _alone(units[0], classifier, config, progress))]
        return
    bundle = Bundle(classifier, config)
    try:
        for unit in units:
            try:
                opened, entry = bundle.open(unit)
            except BaseException as exc:  # (ScorerError: this unit failed; anything else stops the run)
                bundle.add(unit, exc)
                if config.fail_fast or not isinstance(exc, ScorerError):
                    yield bundle.flush(stopped=None if isinstance(exc, ScorerError) else exc)
                    return
                continue
            if isinstance(entry, UnitSummary):
                bundle.add(unit, entry)
            elif entry is not None:
                if not bundle.has_room(entry):
                    yield bundle.flush()
                bundle.add(unit, entry)
            else:
                yield bundle.flush()
                yield [(unit, _alone(unit, classifier, config, progress, opened))]
        yield bundle.flush()
    finally:
        bundle.release()


def _alone(unit: WorkUnit, classifier: OnnxClassifier, config: RunConfig, progress: bool,
           opened: OpenUnit | None = None) -> UnitSummary | BaseException:
    try:
        return score_unit(unit, classifier, config, progress, opened)
    except OutputTaken as exc:
        return taken(unit) if config.share else exc
    except BaseException as exc:
        return exc


def most_members() -> int:
    """MAX_INPUTS, or fewer where this process may not open the files that many members hold (`ulimit -n`: 256 by
    default on macOS, as low as 64 in some containers): each member's files were then refused, and read as damaged."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_INPUTS
    return max(1, min(MAX_INPUTS, (soft - FILES_KEPT) // FILES_PER_MEMBER))


@dataclass
class Member:
    """A small input read for a bundle: its one window, its output's lock held until the bundle is written, and
    then its outcome."""

    opened: OpenUnit
    window: pa.Table
    lock: OutputLock
    outcome: UnitSummary | BaseException | None = None


class Bundle:
    """Small inputs gathered, in order, with the summaries of the units around them (skipped, failed)."""

    def __init__(self, classifier: OnnxClassifier, config: RunConfig) -> None:
        self.classifier, self.config = classifier, config
        self.limit = max(1, config.window_rows // 4) if config.small_rows is None \
            else min(config.small_rows, config.window_rows)
        self.entries: list[tuple[WorkUnit, Member | UnitSummary | BaseException]] = []
        self.count, self.rows, self.reading = 0, 0, 0.0  # members, their rows, the seconds it took to read them
        self.most = most_members()
        self.temporaries: dict[Path, dict[str, list[Path]]] = {}  # each output directory's, listed once a run
        self.probed: set[Path] = set()  # output directories found writable (scorer.data.atomic.check_writable)

    @property
    def members(self) -> list[Member]:
        return [entry for _, entry in self.entries if isinstance(entry, Member)]

    def open(self, unit: WorkUnit) -> tuple[OpenUnit | None, Member | UnitSummary | None]:
        """`unit` opened, and read where it is small (`read`); or its summary: up to date, or (--share) its output
        written by another run now."""
        try:
            opened = open_unit(unit, self.classifier, self.config, self.probed)
            return (None, opened) if isinstance(opened, UnitSummary) else (opened, self.read(opened))
        except OutputTaken:
            if not self.config.share:
                raise
            return None, taken(unit)

    def read(self, opened: OpenUnit) -> Member | UnitSummary | None:
        """`opened`'s rows read and checked, with its output locked, where it is small; None where it is scored on its
        own: over a quarter window, or with an earlier run's parts to resume from; its summary where another run
        completed its output since it was opened."""
        reader, output = opened.reader, opened.unit.output
        if reader.num_rows is None:  # (CSV/TSV: its rows are known once it is read)
            small = reader.path.stat().st_size <= SMALL_CSV_BYTES
        else:
            small = reader.num_rows <= self.limit
        if not small or self.limit == 0 or work_dir(output).exists():
            return None
        started = time.perf_counter()
        if output.parent not in self.temporaries:
            self.temporaries[output.parent] = temporaries_by_output(output.parent)
        lock = OutputLock(output, self.temporaries[output.parent].get(output.name, [])).__enter__()
        try:
            skipped = up_to_date(opened, self.config, locked=True)
            if skipped is not None:
                lock.__exit__(None, None, None)
                return skipped
            # (a window one row over the limit, so that a CSV file is read no further than it takes to tell)
            window = next(checked_windows(reader, self.classifier, opened.columns,
                                          replace(self.config, window_rows=self.limit + 1), 0))
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        self.reading += time.perf_counter() - started
        if window.num_rows > self.limit:
            lock.__exit__(None, None, None)
            return None
        return Member(opened, window, lock)

    def has_room(self, member: Member) -> bool:
        return self.count < self.most and self.rows + member.window.num_rows <= self.config.window_rows

    def add(self, unit: WorkUnit, entry: Member | UnitSummary | BaseException) -> None:
        self.entries.append((unit, entry))
        if isinstance(entry, Member):
            self.count, self.rows = self.count + 1, self.rows + entry.window.num_rows

    def flush(self, stopped: BaseException | None = None) -> list[Outcome]:
        """Score the members together and finish each; every entry's outcome, in order. `stopped`: the run stops
        (its members are not scored, and get that outcome too)."""
        members = self.members
        if stopped is not None:
            for member in members:
                member.outcome = stopped
        elif members:
            self._score(members)
        done: list[Outcome] = []
        for unit, entry in self.entries:
            done.append((unit, entry.outcome if isinstance(entry, Member) else entry))
            if self.config.fail_fast and isinstance(done[-1][1], ScorerError):
                break  # (--fail-fast: the run stops at this input, and the ones after it were not finished)
        self.release()
        return done

    def release(self) -> None:
        """Unlock the members' outputs and forget them (each wrote its output or failed)."""
        for member in self.members:
            member.lock.__exit__(None, None, None)
        self.entries, self.count, self.rows, self.reading = [], 0, 0, 0.0

    def _score(self, members: list[Member]) -> None:
        """Each member's outcome: scored together, then finished one by one."""
        started, waits = time.perf_counter(), Waits()
        waits["reading"] = self.reading
        try:
            scored = self._infer(members, waits)
        except BaseException as exc:  # (the model failed: every member with it)
            for member in members:
                member.outcome = failure(exc, member.opened.unit, self.classifier, RERUN) or exc
            return
        for number, (member, rows) in enumerate(zip(members, scored, strict=True)):
            member.outcome = self._finish(member, rows)
            # a stop or a bug: no more finishing; with --fail-fast, a failure too (the rest are left unwritten)
            if not isinstance(member.outcome, UnitSummary) and \
                    (not isinstance(member.outcome, ScorerError) or self.config.fail_fast):
                for rest in members[number + 1:]:
                    rest.outcome = member.outcome
                break
        # The outputs' renames made lasting: each directory synced once, not once an output
        written = [m for m in members if isinstance(m.outcome, UnitSummary)]
        for directory in {m.opened.unit.output.parent for m in written}:
            try:
                atomic.sync(directory)
            except OSError as exc:
                for member in written:
                    if member.opened.unit.output.parent == directory:
                        member.outcome = failure(exc, member.opened.unit, self.classifier, RERUN) or exc
        seconds, total = time.perf_counter() - started + self.reading, sum(m.window.num_rows for m in members)
        for member in members:
            if isinstance(member.outcome, UnitSummary):  # (the bundle's time, shared by rows)
                share = member.window.num_rows / total if total else 1 / len(members)
                member.outcome.seconds, member.outcome.bundled_with = seconds * share, len(members) - 1
                member.outcome.waits = {stage: waited * share for stage, waited in waits.items()}
                said_done(member.outcome, self.classifier)
        log.info("%d small inputs scored together: %d rows in %.1fs", len(members), total, seconds)

    def _infer(self, members: list[Member], waits: Waits) -> list[Scored]:
        """Every member's rows scored, the members' rows joined and cut into pieces, tokenised on
        config.tokenize_threads threads and batched together."""
        cut = joined_pieces([m.window.column(m.opened.columns.text) for m in members], self.config.piece_chars)
        with ThreadPoolExecutor(self.config.tokenize_threads, "scorer-tokenize") as tokenizing:
            prepared = [tokenizing.submit(self.classifier.prepare, piece) for piece in cut]
            results = self.classifier.finish_pieces(
                self.classifier.begin(waits("tokenising", future) for future in prepared))
        return Scored.concat(results).split([m.window.num_rows for m in members])

    def _finish(self, member: Member, scored: Scored) -> UnitSummary | BaseException:
        opened, sink = member.opened, None
        try:
            sink = OutputSink(opened.unit.output, overwrite=True, metadata=opened.record, probed=self.probed,
                              sync_directory=False,  # (synced once for the bundle's outputs, in _score)
                              columns=opened.columns.written())
            table = with_results(member.window, self.classifier, opened.columns, scored)
            sink.write(table)
            check_unchanged(opened)
            return finish_unit(opened, self.classifier, self.config, sink, [table], int(scored.rescued.sum()), 0)
        except BaseException as exc:
            if sink is not None:
                sink.abort()
            return failure(exc, opened.unit, self.classifier, RERUN) or exc

