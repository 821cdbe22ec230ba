"""What every `scorer` command shares: --quiet/--debug, logging, SIGTERM and SIGHUP as interrupts, one-line errors with
their exit codes, Arrow's threads fitted to the cores, and option defaults shown from the config dataclasses."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import resource
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator

import click

from scorer.errors import HungUp, ScorerError, Terminated, one_line, stopped, unexpected
from scorer.machine import fit_arrow_threads

log = logging.getLogger("scorer")


def _standard_streams() -> None:
    """A command started with a standard stream closed (`2>&-`, a daemon's job) gets /dev/null there. Else Python has
    no sys.stderr to say anything on (the run failed, exit 1, with nothing written and nothing said), and the first
    file opened takes that descriptor, so what a library writes to it (ONNX Runtime's log, to descriptor 2) would
    land in that file, an output among them."""
    for descriptor, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(descriptor)
        except OSError:
            _devnull_at(descriptor)
        if getattr(sys, name) is None:  # (the stream lives as long as the process: nothing to close)
            setattr(sys, name, open(descriptor, "r" if descriptor == 0 else "w", closefd=False))  # noqa: SIM115


def _more_open_files() -> None:
    """This process's open-file limit raised to its hard limit (up to 65,536), as a process may without privileges:
    many small inputs scored together each hold files open, and some systems start processes with 256 (macOS) or
    fewer."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _setup_logging(quiet: bool, debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def command(func: Callable) -> Callable:
    """Shared --quiet/--debug options; ScorerError becomes one line on stderr and its exit code."""

    @click.option("--quiet", "-q", is_flag=True,
                  help="Only warnings, errors and the result (one line for run); no progress bars (for cron).")
    @click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
    @functools.wraps(func)
    def wrapper(*args, quiet: bool, debug: bool, **kwargs):
        _standard_streams()
        _more_open_files()
        fit_arrow_threads()
        _setup_logging(quiet, debug)
        try:
            with _sigterm_unwinds():
                return func(*args, progress=not quiet, **kwargs)
        except ScorerError as exc:
            if debug:
                raise
            click.echo(f"error: {one_line(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
            said, code = stopped(exc)
            click.echo(said, err=True)
            sys.exit(code)
        except Exception as exc:
            if isinstance(exc, BrokenPipeError) and _stdout_closed():
                sys.exit(141)  # (`scorer run ... | head`: the reader went away; said as a SIGPIPE death is, silently)
            if debug:
                raise
            click.echo(f"error: {unexpected(exc)} (rerun with --debug and report it)", err=True)
            sys.exit(1)

    return wrapper


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader is gone; if so, it is pointed at /dev/null, so that Python's
    last flush at exit does not fail again."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # (no file descriptor: a test's captured output)
        return False
    if gone:
        _devnull_at(sys.stdout.fileno())
    return gone


def _devnull_at(descriptor: int) -> None:
    """Point `descriptor` at /dev/null (where it is closed, the open below takes it itself)."""
    null = os.open(os.devnull, os.O_RDWR)
    if null != descriptor:
        os.dup2(null, descriptor)
        os.close(null)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into exceptions, so the run stops its threads and removes its temporary files
    (SIGHUP only where it is not ignored: `nohup scorer run ...` runs on when its terminal closes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise HungUp() if signum == signal.SIGHUP else Terminated()

    caught = [signal.SIGTERM] + ([signal.SIGHUP] if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN else [])
    previous = {signum: signal.signal(signum, terminate) for signum in caught}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def shown(cls: type, field: str) -> str:
    """'[default: V]' read from the config dataclass, so that the help cannot drift from the defaults."""
    value = next(f.default for f in dataclasses.fields(cls) if f.name == field)
    return f"[default: {value:g}]" if isinstance(value, float) else f"[default: {value}]"


def shown_by_provider(table: dict[str, int]) -> str:
    """'[default: …]' of a per-provider default of scorer.inference.defaults."""
    tensorrt = "" if table["tensorrt"] == table["cuda"] else f", {table['tensorrt']} with TensorRT"
    return f"[default: {table['cuda']} on CUDA, {table['cpu']} on a CPU{tensorrt}]"


def build(cls: type, **options):
    """A config from the options the user gave; the dataclass defaults fill in the rest."""
    return cls(**{key: value for key, value in options.items() if value is not None})
