"""A run's JSON summary while the run runs: written as it starts (state "running", exit code null) and brought up to
date every minute, so that a monitor tells a run still going (and how far it got) from one that finished, and a run
killed without cleaning up (kill -9, the kernel's out-of-memory killer, a crash of the machine) from last night's
success, which the file would otherwise go on showing."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("scorer")

HEARTBEAT_SECONDS = 60.0  # between two writes of a running run's summary (`updated_at` says when the last was)


class Heartbeat:
    """Calls `write` as the block starts and then every HEARTBEAT_SECONDS on a thread of its own while it runs (not
    at all where `enabled` is false). A write that fails is warned of once; the run goes on (its last summary is
    written, or fails, at its end as always)."""

    def __init__(self, write: Callable[[], None], enabled: bool = True) -> None:
        self.write, self.enabled, self.warned, self.took = write, enabled, False, 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="scorer-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        if self.enabled:
            self._write()
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()  # (before the run's last summary is written: one writer at a time)

    def _beat(self) -> None:
        # A summary of many thousand inputs takes a while to write (JSON, on the GIL): at most 5% of the run's time.
        while not self.stop.wait(max(HEARTBEAT_SECONDS, 20 * self.took)):
            self._write()

    def _write(self) -> None:
        started = time.perf_counter()
        try:
            self.write()
        except Exception as exc:  # (a full disk, say: the run's own work decides what happens)
            if not self.warned:
                log.warning("the running summary could not be brought up to date (%s); the run goes on", exc)
                self.warned = True
        self.took = time.perf_counter() - started
