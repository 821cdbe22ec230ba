"""`python -m tests.paced run ...`: `scorer run` whose finished windows each wait PACE seconds before they are
written, for the tests that stop a run midway (tests/test_nightly.py `_midway`). A run of a dozen windows is then
still running when the test has seen its first parts, on a loaded machine as on an idle one, where an unpaced run
had to be given tens of thousands of rows to be sure of it. Everything else is the real run: its windows, its
threads (the next window's batches are in flight during the wait) and its handling of signals."""

from __future__ import annotations

import time

from scorer.scoring.parts import PartStore

PACE = 0.1  # seconds before each finished window is written

_write = PartStore.write


def _paced(self, index, table, rescued=0) -> None:
    time.sleep(PACE)
    _write(self, index, table, rescued)


PartStore.write = _paced

if __name__ == "__main__":
    from scorer.cli import main

    main(prog_name="scorer")
