"""`scorer run`: score every unit (input file → output file: scoring.single, small ones together: scoring.bundle) and
summarise the whole run."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import replace

from scorer.config import RunConfig
from scorer.data.lock import OutputLock
from scorer.data.snapshot import read_whole
from scorer.errors import ConfigError, OutputTaken, ProviderError, ScorerError, stopped, unexpected
from scorer.extras import require_training_stack
from scorer.inference.classify import OnnxClassifier
from scorer.inference.defaults import DEFAULT_WINDOW_ROWS
from scorer.inference.session import memory_failure
from scorer.scoring.bundle import outcomes
from scorer.scoring.check import exported_from
from scorer.scoring.heartbeat import Heartbeat
from scorer.scoring.parts import drop_orphaned_parts
from scorer.scoring.single import checkpoint_of, graph_failure
from scorer.scoring.summary import (
    RunRecord,
    RunSummary,
    UnitSummary,
    bare,
    failed_start,
    now,
    running,
    summary_path,
    with_left_out,
    write_summary,
)
from scorer.scoring.units import WorkUnit, plan_run, refuse_overwriting

log = logging.getLogger("scorer")


def open_classifier(config: RunConfig) -> tuple[OnnxClassifier, RunConfig]:
    """The classifier that `config` asks for, and `config` with the window size of the provider it landed on."""
    classifier = OnnxClassifier(config.model, config.provider, config.variant, config.max_tokens,
                                config.max_batch_rows, io_binding=config.io_binding,
                                infer_threads=config.infer_threads, cpu_threads=config.cpu_threads,
                                word_cache=config.word_cache,
                                batch_overhead=config.batch_overhead, threshold=config.threshold)
    return classifier, replace(config, window_rows=config.window_rows or DEFAULT_WINDOW_ROWS[classifier.provider])


def score_file(config: RunConfig, progress: bool = True) -> RunSummary:
    """Score every unit of config.input; failures of single units are collected, then raised at the end."""
    units: list[WorkUnit] = []
    began = now()
    with _said_in_summary(config, units, began):  # (the inputs not there: an inbox not mounted, say)
        planned, left_out = plan_run(config.input, config.output, config.output_format)
        units += planned
    _refuse_before_work(config, units)  # (what the summary itself may not replace, among others: not said there)
    with _summary_held(config, units):
        return _score_all(config, units, left_out, began, progress)


@contextlib.contextmanager
def _summary_held(config: RunConfig, units: list[WorkUnit]) -> Iterator[None]:
    """--share: the run's --summary locked while it runs, so that two sharing runs given the same one are refused,
    where the later summary would replace the earlier run's record (and a failure a monitor looks for)."""
    with contextlib.ExitStack() as held:
        if config.share:
            path = summary_path(config, units)
            try:
                held.enter_context(OutputLock(path))
            except OutputTaken as exc:
                raise ConfigError(f"--summary {path} is another sharing run's, which is running; give each run its "
                                  "own --summary") from exc
        yield


def _score_all(config: RunConfig, units: list[WorkUnit], left_out: dict[str, str], began: str, progress: bool
               ) -> RunSummary:
    """Start the model and score `units` (score_file, once they are planned and checked); `left_out`: the data files
    INPUT's listing left out, for the summary."""
    # From its start, the run's summary says it is running: where one is kept whatever happens (--summary, or where
    # an earlier run left one: summary.failed_start) before the model starts, and where several inputs are
    # summarised, once it has.
    early = config.summary is not None or summary_path(config, units).is_file()
    kept = early or len(units) > 1
    if early:
        write_summary(config, units, running(with_left_out(bare(config, units, began), left_out)))
    with _said_in_summary(config, units, began, left_out):
        classifier, config, self_check = _start(config, units)
    record = RunRecord(config, units, classifier, began, self_check, left_out,
                       lines=progress and len(units) > 1 and not sys.stderr.isatty())
    try:
        with Heartbeat(record.beat, enabled=kept):
            fatal, stopper = _score_units(units, classifier, config, progress, record.inputs)
            if fatal is None and config.share:
                fatal, stopper = _taken_again(units, classifier, config, progress, record.inputs)
    except BaseException as exc:  # (a stop or a bug outside any unit's scoring: between two units, say)
        fatal, stopper = exc, None
    finally:
        classifier.close()
    summary = record.summary()
    summary.finished_at = now()
    written = kept or fatal is None
    if written:
        summary.summary_path = str(summary_path(config, units))
    if fatal is not None:  # (the input's that stopped the run)
        said = stopper or _unit_summary(units[0], fatal)  # (the run's error and exit code, said as a unit's)
        summary.error, summary.exit_code = said.error, said.exit_code
    elif summary.failed:
        first = summary.failed[0]
        summary.error = (f"{len(summary.failed)} of {len(units)} inputs failed (see {summary.summary_path}); "
                         f"first: {first.error}")
        summary.exit_code = first.exit_code
    if written:
        write_summary(config, units, summary)
    if fatal is None:
        _tidy(config, units)
    if fatal is not None:
        raise fatal
    if summary.failed:
        error = ScorerError(summary.error)
        error.exit_code = summary.exit_code
        raise error
    return summary


def _tidy(config: RunConfig, units: list[WorkUnit]) -> None:
    """Under --output DIR, the finished windows of inputs that are gone (scoring.parts.drop_orphaned_parts)."""
    directory = config.output
    if directory is not None and directory.is_dir() and all(unit.output != directory for unit in units):
        drop_orphaned_parts(directory, {unit.output.resolve() for unit in units})


def _score_units(units: list[WorkUnit], classifier: OnnxClassifier, config: RunConfig, progress: bool,
                 summaries: list[UnitSummary]) -> tuple[BaseException | None, UnitSummary | None]:
    """Score `units`, appending each one's summary to `summaries` in order; the exception that stops the run, if
    one does, and the summary of the unit it stopped (failures of single units are logged and the run goes on)."""
    with contextlib.closing(outcomes(units, classifier, config, progress)) as each:
        for batch in each:
            fatal = None
            for unit, result in batch:
                summaries.append(_unit_summary(unit, result))
                if isinstance(result, BaseException) and fatal is None and \
                        (not isinstance(result, ScorerError) or len(units) == 1 or config.fail_fast):
                    fatal, stopper = result, summaries[-1]
                elif isinstance(result, ScorerError):
                    log.error("error: %s", result)
            if fatal is not None:
                return fatal, stopper
    return None, None


def _taken_again(units: list[WorkUnit], classifier: OnnxClassifier, config: RunConfig, progress: bool,
                 summaries: list[UnitSummary]) -> tuple[BaseException | None, UnitSummary | None]:
    """--share: the inputs left to another run, tried once more at the end; each is skipped where that run finished
    it, left to it where it still holds it, and scored (resumed from its finished windows) where that run stopped
    without finishing it (killed, say), so that the night's work does not wait for the next run."""
    taken = [number for number, summary in enumerate(summaries) if summary.state == "taken"]
    if not taken:
        return None, None
    again: list[UnitSummary] = []
    fatal = _score_units([units[number] for number in taken], classifier, config, progress, again)
    for number, summary in zip(taken, again, strict=False):  # (a stop ends `again` early)
        summaries[number] = summary
    return fatal


def _unit_summary(unit: WorkUnit, result: UnitSummary | BaseException) -> UnitSummary:
    """What happened to `unit`: its summary, or the error it failed with (ScorerError), the stop that stopped it
    (Ctrl-C, SIGTERM: its finished windows are kept), or a bug of ours (exit 1; raised as it came, after the
    summary)."""
    if isinstance(result, UnitSummary):
        return result
    if isinstance(result, ScorerError):
        return UnitSummary(str(unit.source), str(unit.output), "failed", error=str(result), exit_code=result.exit_code)
    if isinstance(result, KeyboardInterrupt):
        said, code = stopped(result)
        return UnitSummary(str(unit.source), str(unit.output), said, error=said, exit_code=code)
    return UnitSummary(str(unit.source), str(unit.output), "failed", exit_code=1,
                       error=unexpected(result))


@contextlib.contextmanager
def _said_in_summary(config: RunConfig, units: list[WorkUnit], began: str, left_out: dict[str, str] | None = None
                     ) -> Iterator[None]:
    """A run that stops here has scored nothing: where a summary is kept, it says so (summary.failed_start), with
    the data files INPUT's listing left out where it got that far."""
    try:
        yield
    except ScorerError as exc:
        failed_start(config, units, exc, began, left_out or {})
        raise


def _start(config: RunConfig, units: list[WorkUnit]) -> tuple[OnnxClassifier, RunConfig, dict | None]:
    """The classifier, checked on this machine before any output (and --check's checkpoint found unchanged), and
    `config` with the window size of the provider it landed on; read again where its directory was replaced while it
    was read (an export finishing: scorer.data.snapshot)."""
    return read_whole(config.model, lambda: _opened(config, units), discard=lambda started: started[0].close())


def _opened(config: RunConfig, units: list[WorkUnit]) -> tuple[OnnxClassifier, RunConfig, dict | None]:
    classifier, config = open_classifier(config)
    log.info("model %s (%s variant) on %s; %d input file(s)", classifier.model_path, classifier.variant,
             classifier.provider, len(units))
    try:
        if config.check:
            exported_from(checkpoint_of(config, classifier), classifier)
        return classifier, config, _self_check(classifier)
    except BaseException:
        classifier.close()
        raise


def _self_check(classifier: OnnxClassifier) -> dict | None:
    """Before any output: this machine must compute the graph as export's did (a GPU already full stops it here)."""
    try:
        return classifier.self_check()
    except Exception as exc:
        said = memory_failure(exc, classifier.provider)
        if said:
            raise ProviderError(f"{classifier.directory}: the self-check's small batch ran out of memory on "
                                f"{classifier.provider} ({said}); free memory there (is another process using it?), "
                                "then run again") from exc
        failed = graph_failure(exc, classifier, "the self-check's small batch")
        if failed is not None:
            raise failed from exc
        raise


def _refuse_before_work(config: RunConfig, units: list[WorkUnit]) -> None:
    """What the run is asked to do that it cannot do as asked, or not without replacing what it reads."""
    if config.check:
        require_training_stack(f"--check {config.check} (the PyTorch cross-check)")
    if config.report and len(units) > 1:
        raise ConfigError(f"--report evaluates one input, and {config.input} names {len(units)}; each input's "
                          "evaluation is in the JSON summary (--summary), or run them one at a time")
    report_json = config.report.with_suffix(".json") if config.report else None
    if report_json is not None and report_json == config.report:
        raise ConfigError(f"--report {config.report}: the report is Markdown, with its JSON beside it under the same "
                          f"name ending in .json, which would be the report itself; name the report "
                          f"{config.report.with_suffix('.md').name}")
    refuse_overwriting(units, {"--report": config.report, "--report's JSON": report_json, "--summary": config.summary},
                       {"--model": config.model, "--checkpoint": config.checkpoint})
