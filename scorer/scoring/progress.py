"""How far a run got: each input being scored (Progress, listed in UNDERWAY while it runs) and the whole run
(RunProgress), for the log lines of a job without a terminal and the running summary a monitor reads."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("scorer")
LOG_SECONDS = 60.0  # between two progress lines where stderr is no terminal (Progress)
MOVED_ON = ("scored", "resumed")  # the states of inputs this run read through (a skipped one it did not read)
CUT_SHORT = ("interrupted", "terminated", "hung up")  # (scorer.errors.stopped: not finished, their windows kept)


class Progress:
    """How far one input got: its rows done (a resumed run's included) of how many (`expected`: exact where the file
    says, as Parquet's footer does; estimated from what was read for a CSV/TSV file), the rate and, from it, the time
    left. Said in a log line every LOG_SECONDS where `lines` (stderr no terminal, so no progress bar: a cron job's
    log), and in the running summary (UNDERWAY)."""

    def __init__(self, path: Path, expected: Callable[[], tuple[int | None, bool]], done: int, lines: bool) -> None:
        self.path, self.expected, self.done, self.now, self.lines = path, expected, done, 0, lines
        self.started = self.said = time.perf_counter()

    def update(self, rows: int) -> None:
        self.done, self.now = self.done + rows, self.now + rows
        if not self.lines or time.perf_counter() - self.said < LOG_SECONDS:
            return
        self.said = time.perf_counter()
        figures = self.as_dict()
        total, about = figures["rows_total"], "" if figures["rows_total_exact"] else "about "
        of = f" of {about}{total:,} ({min(self.done / max(total, 1), 1):.0%})" if total else ""
        left = f", about {duration(figures['seconds_left'])} left" if figures["seconds_left"] is not None else ""
        log.info("%s: %s rows%s, %s rows/s%s", self.path.name, f"{self.done:,}", of,
                 f"{figures['rows_per_second']:,.0f}", left)

    def as_dict(self) -> dict:
        """As the running summary lists it."""
        total, exact = self.expected()
        rate = self.now / max(time.perf_counter() - self.started, 1e-9)
        left = (total - self.done) / rate if total and rate and self.done < total else None
        return {"input": str(self.path), "rows_done": self.done, "rows_this_run": self.now, "rows_total": total,
                "rows_total_exact": exact, "rows_per_second": round(rate, 1),
                "seconds_left": None if left is None else round(left, 1)}


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else \
        f"{seconds / 3600:.1f} h"


class Underway:
    """The inputs being scored now, each with how far it got (Progress), for the running summary: a run of one big
    input, the usual nightly job, says how far that input got, not only that it has not finished."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inputs: dict[int, Any] = {}

    @contextlib.contextmanager
    def tracking(self, progress: Any) -> Iterator[None]:
        """`progress` (with an as_dict()) listed while the block runs."""
        with self.lock:
            self.inputs[id(progress)] = progress
        try:
            yield
        finally:
            with self.lock:
                del self.inputs[id(progress)]

    def said(self) -> list[dict]:
        with self.lock:
            inputs = list(self.inputs.values())
        return [progress.as_dict() for progress in inputs]


UNDERWAY = Underway()  # (one run per process)


class RunProgress:
    """How far the whole run got, by its input files' bytes (a measure of each input's work known before it is read,
    for Parquet and compressed CSV alike, where rows are not): the share of them finished, an input underway counted
    by its rows done (one a stop cut short, whose summary has no rows, by what was last seen of it), and the time
    left at the rate of what this run read so far (inputs skipped as up to date, and the rows a resumed input had
    before, took none of it)."""

    def __init__(self, sources: list[Path]) -> None:
        self.sizes = {str(source): _size(source) for source in sources}
        self.planned = sum(self.sizes.values())
        self.started = time.perf_counter()
        # The most counted so far: an input whose rows are all done leaves UNDERWAY while its output is completed,
        # before its summary is among the finished, and the run would seem to go back.
        self.most = (0.0, 0.0)

    def as_dict(self, finished: list, underway: list[dict]) -> dict:
        """`finished`: the inputs' summaries (scoring.summary.UnitSummary); `underway`: UNDERWAY.said()."""
        done = now = 0.0
        for unit in finished:
            if unit.state in CUT_SHORT:
                continue
            size = self.sizes.get(unit.input, 0)
            done += size
            if unit.state in MOVED_ON:
                now += size * (unit.rows_this_run / unit.rows if unit.rows else 1.0)
        for item in underway:
            size, total = self.sizes.get(item["input"], 0), item["rows_total"]
            if total:
                done += size * min(item["rows_done"] / total, 1.0)
                now += size * min(item["rows_this_run"] / total, 1.0)
        done, now = max(done, self.most[0]), max(now, self.most[1])
        self.most = (done, now)
        left, seconds = max(self.planned - done, 0.0), time.perf_counter() - self.started
        return {"bytes_planned": self.planned, "bytes_finished": round(done),
                "fraction": round(done / self.planned, 4) if self.planned else 1.0,
                "seconds_left": 0.0 if not left else round(left * seconds / now, 1) if now else None}

    def line(self, figures: dict, finished: int) -> str:
        """The log line of the run's progress (said every minute by the heartbeat of a run of several inputs)."""
        left = "" if figures["seconds_left"] is None else f", about {duration(figures['seconds_left'])} left"
        return f"run: {finished} of {len(self.sizes)} inputs finished, {figures['fraction']:.0%} of their bytes{left}"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # (gone since it was listed: it fails when opened, saying so)
        return 0
