"""`scorer run`: score every unit (input file → output file), resumably, and summarise the whole run."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pyarrow as pa

from scorer import __version__, atomic
from scorer.classify import OnnxClassifier
from scorer.config import RunConfig
from scorer.defaults import DEFAULT_WINDOW_ROWS
from scorer.errors import (
    ConfigError,
    InputError,
    OutputError,
    ParityError,
    ProviderError,
    ScorerError,
    stopped,
)
from scorer.evaluate import nothing_evaluated, write_report
from scorer.extras import require_training_stack
from scorer.manifest import verify_checkpoint
from scorer.parts import OutputLock, PartStore, fingerprint
from scorer.read import TableReader, plain_text
from scorer.results import NON_FINITE
from scorer.session import memory_failure
from scorer.stream import stream
from scorer.summary import RunSummary, UnitSummary, failed_start, now, summarise, summary_path, write_summary
from scorer.tally import Columns, scored_sample, tally
from scorer.tokens import is_text
from scorer.units import WorkUnit, plan_units, refuse_overwriting
from scorer.write import OutputSink, check_text_format, completion_record

log = logging.getLogger("scorer")
RESULT_COLUMNS = ("label", "score", "status")
PREFIX = "pred_"


def result_columns(input_columns: list[str], source: Path) -> dict[str, str]:
    """label/score/status, or pred_label/pred_score/pred_status when the input already has one of those names."""
    clash = any(name in input_columns for name in RESULT_COLUMNS)
    names = {name: (PREFIX + name if clash else name) for name in RESULT_COLUMNS}
    taken = [name for name in names.values() if name in input_columns]
    if taken:
        raise InputError(f"{source} already has column(s) {', '.join(taken)}, the names scorer writes its results "
                         "under; rename them before scoring")
    return names


def open_classifier(config: RunConfig) -> tuple[OnnxClassifier, RunConfig]:
    """The classifier that `config` asks for, and `config` with the window size of the provider it landed on."""
    classifier = OnnxClassifier(config.model, config.provider, config.variant, config.max_tokens,
                                config.max_batch_rows, io_binding=config.io_binding,
                                infer_threads=config.infer_threads, word_cache=config.word_cache,
                                batch_overhead=config.batch_overhead)
    return classifier, replace(config, window_rows=config.window_rows or DEFAULT_WINDOW_ROWS[classifier.provider])


def score_file(config: RunConfig, progress: bool = True) -> RunSummary:
    """Score every unit of config.input; failures of single units are collected, then raised at the end."""
    units: list[WorkUnit] = []
    began = now()
    with _said_in_summary(config, units, began):  # (the inputs not there: an inbox not mounted, say)
        units += plan_units(config.input, config.output, config.output_format)
    _refuse_before_work(config, units)  # (what the summary itself may not replace, among others: not said there)
    with _said_in_summary(config, units, began):
        classifier, config, self_check = _start(config, units)
    summaries: list[UnitSummary] = []
    fatal: BaseException | None = None
    started, began = time.perf_counter(), now()
    try:
        for unit in units:
            try:
                summaries.append(score_unit(unit, classifier, config, progress))
            except ScorerError as exc:
                summaries.append(UnitSummary(str(unit.source), str(unit.output), "failed", error=str(exc),
                                             exit_code=exc.exit_code))
                if len(units) == 1 or config.fail_fast:
                    fatal = exc
                    break
                log.error("error: %s", exc)
            except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the summary says where the run stopped
                said, code = stopped(exc)
                summaries.append(UnitSummary(str(unit.source), str(unit.output), said, error=said, exit_code=code))
                fatal = exc
                break
            except Exception as exc:  # a bug of ours: the summary says so too (exit 1), then it is raised as it came
                summaries.append(UnitSummary(str(unit.source), str(unit.output), "failed", exit_code=1,
                                             error=f"unexpected {type(exc).__name__}: {exc}"))
                fatal = exc
                break
    finally:
        classifier.close()
    summary = summarise(summaries, classifier, time.perf_counter() - started, config.window_rows)
    summary.started_at, summary.finished_at, summary.self_check = began, now(), self_check
    # (one input that failed: beside its output only where an earlier run's summary would go on saying otherwise)
    written = len(units) > 1 or config.summary or fatal is None or summary_path(config, units).is_file()
    if written:
        summary.summary_path = str(summary_path(config, units))
    if fatal is not None:  # (the last input's, which stopped the run)
        summary.error, summary.exit_code = summaries[-1].error, summaries[-1].exit_code
    elif summary.failed:
        first = summary.failed[0]
        summary.error = (f"{len(summary.failed)} of {len(units)} inputs failed (see {summary.summary_path}); "
                         f"first: {first.error}")
        summary.exit_code = first.exit_code
    if written:
        write_summary(config, units, summary)
    if fatal is not None:
        raise fatal
    if summary.failed:
        error = ScorerError(summary.error)
        error.exit_code = summary.exit_code
        raise error
    return summary


@contextlib.contextmanager
def _said_in_summary(config: RunConfig, units: list[WorkUnit], began: str) -> Iterator[None]:
    """A run that stops here has scored nothing: where a summary is kept, it says so (scorer.summary.failed_start)."""
    try:
        yield
    except ScorerError as exc:
        failed_start(config, units, exc, began)
        raise


def _start(config: RunConfig, units: list[WorkUnit]) -> tuple[OnnxClassifier, RunConfig, dict | None]:
    """The classifier, checked on this machine before any output (and --check's checkpoint found unchanged), and
    `config` with the window size of the provider it landed on."""
    classifier, config = open_classifier(config)
    log.info("model %s (%s variant) on %s; %d input file(s)", classifier.model_path, classifier.variant,
             classifier.provider, len(units))
    try:
        if config.check:
            verify_checkpoint(checkpoint_of(config, classifier), classifier.manifest, classifier.directory)
        return classifier, config, _self_check(classifier)
    except BaseException:
        classifier.close()
        raise


def _self_check(classifier: OnnxClassifier) -> dict | None:
    """Before any output: this machine must compute the graph as export's did (a GPU already full stops it here)."""
    try:
        return classifier.self_check()
    except Exception as exc:
        said = memory_failure(exc)
        if said:
            raise ProviderError(f"{classifier.directory}: the self-check's small batch ran out of memory on "
                                f"{classifier.provider} ({said}); free memory there (is another process using it?), "
                                "then run again") from exc
        raise


def checkpoint_of(config: RunConfig, classifier: OnnxClassifier) -> Path:
    """The PyTorch checkpoint --check compares with: --checkpoint, else the one the export was made from."""
    return config.checkpoint or Path(classifier.manifest.checkpoint)


def _refuse_before_work(config: RunConfig, units: list[WorkUnit]) -> None:
    """What the run is asked to do that it cannot do as asked, or not without replacing what it reads."""
    if config.check:
        require_training_stack(f"--check {config.check} (the PyTorch cross-check)")
    if config.report and len(units) > 1:
        raise ConfigError(f"--report evaluates one input, and {config.input} names {len(units)}; each input's "
                          "evaluation is in the JSON summary (--summary), or run them one at a time")
    report_json = config.report.with_suffix(".json") if config.report else None
    refuse_overwriting(units, {"--report": config.report, "--report's JSON": report_json, "--summary": config.summary},
                       {"--model": config.model, "--checkpoint": config.checkpoint})


def score_unit(unit: WorkUnit, classifier: OnnxClassifier, config: RunConfig, progress: bool) -> UnitSummary:
    """Score one input into one output: skip it when already done, resume it when partly done."""
    reader = TableReader(unit.source)
    columns = _columns(config, reader, classifier)
    check_text_format(unit.output, reader.schema, reader.path)
    source = fingerprint(reader.path)
    done = completion_record(unit.output)
    if done and done.get("model_sha256") == classifier.model_sha256 and done.get("input") == source \
            and _scored_column(done) == columns.text and not config.overwrite:
        log.info("%s is up to date (same input, column and model); skipped", unit.output)
        if config.report:  # (one input only: asked for by name, so said as a warning)
            log.warning("%s is up to date, so it was not scored again and --report %s was not written; pass "
                        "--overwrite to score it again", unit.output, config.report)
        if config.check:  # (a nightly run over a growing inbox skips yesterday's files: said in passing)
            log.info("%s: --check does not check a skipped output", unit.output)
        return UnitSummary(str(unit.source), str(unit.output), "skipped", rows=done.get("rows", 0))
    if unit.output.exists() and not config.overwrite:
        raise OutputError(f"{unit.output} already exists (written {_written_how(done, classifier, source, columns)}); "
                          "pass --overwrite to replace it")
    atomic.check_writable(unit.output, overwrite=True)
    # What the output records of its making; the parts also depend on the window size.
    record = {"model_sha256": classifier.model_sha256, "variant": classifier.variant, "input": source,
              "columns": asdict(columns), "score": classifier.score_means, "scorer": __version__}
    store = PartStore(unit.output, {**record, "window_rows": config.window_rows})
    with OutputLock(unit.output):
        first = store.open()
        sink = OutputSink(unit.output, overwrite=True, metadata=record)
        started = time.perf_counter()
        try:
            waits = stream(reader, classifier, columns, store, sink, first, config, progress)
            if fingerprint(reader.path) != source:  # a feed still being written, or replaced mid-run
                raise InputError(f"{reader.path} changed while it was scored (still being written?); no output was "
                                 "written; run again once the file is complete")
            parts = store.parts()
            summary = _finish(unit, classifier, config, columns, store, sink, parts, first)
        except BaseException as exc:
            sink.abort()
            # Bad input or a failed check: the parts could only reproduce the failure, so nothing is kept.
            # Anything else (a kill, a full disk) keeps them, and the next run resumes from them.
            if isinstance(exc, ScorerError):
                store.discard()
            no_room = atomic.out_of_room(exc, unit.output, "then run again: it resumes from its last finished window")
            if no_room is not None:
                raise no_room from exc
            said = memory_failure(exc)
            if said:
                in_flight = f" or --infer-threads (now {classifier.infer_threads})" \
                    if classifier.infer_threads > 1 else ""  # (each batch in flight holds its own memory)
                raise ProviderError(
                    f"{unit.source}: the model ran out of memory on {classifier.provider} ({said}); "
                    f"free memory there (is another process using it?) or lower --max-tokens (now "
                    f"{classifier.max_tokens:,}){in_flight}, then run again: it resumes from its last finished "
                    "window") from exc
            raise
    summary.seconds, summary.waits = time.perf_counter() - started, waits
    _warn_non_finite(summary, classifier)
    log.info("%s -> %s: %d rows (%d written now%s) in %.1fs", unit.source, unit.output, summary.rows,
             summary.rows_this_run, f", resumed at row {summary.resumed_from_row}" if summary.resumed_from_row else "",
             summary.seconds)
    return summary


def _warn_non_finite(summary: UnitSummary, classifier: OnnxClassifier) -> None:
    """Say which rows the model could not score as it runs: scored by the fp32 graph instead, or not at all."""
    if summary.rescued_rows:
        log.warning("%s: %d row(s) got NaN or infinite logits from the %s graph on %s and were scored by the fp32 "
                    "graph instead", summary.input, summary.rescued_rows, classifier.variant, classifier.provider)
    lost = summary.status_counts.get(NON_FINITE, 0)
    if lost:
        log.warning("%s: %d row(s) got NaN or infinite logits%s; they are kept without a score (status %s): the "
                    "model cannot score them", summary.input, lost,
                    " from the fp32 graph too" if classifier.rescue.possible else "", NON_FINITE)


def _scored_column(done: dict) -> str | None:
    return (done.get("columns") or {}).get("text")


def _written_how(done: dict | None, classifier: OnnxClassifier, source: dict, columns: Columns) -> str:
    """How an existing output differs from what this run would write."""
    if not done:
        return "not by scorer"
    variant, column, how = done.get("variant"), _scored_column(done), []
    other_model = done.get("model_sha256") != classifier.model_sha256
    if other_model:
        how.append(f"by the {variant} variant, and this run uses {classifier.variant}" if variant != classifier.variant
                   else "by another model")
    if done.get("input") != source:
        how.append("from another version of the input")
    if column != columns.text:
        how.append(f"scoring column '{column}', and this run scores '{columns.text}'")
    if other_model and variant != classifier.variant and len(how) == 1:
        how[0] += f": --variant {variant} keeps it"
    return ", ".join(how)


def _columns(config: RunConfig, reader: TableReader, classifier: OnnxClassifier) -> Columns:
    text = config.text_column or classifier.manifest.text_column
    reader.require(text, "--text-column")
    kind = reader.schema.field(text).type if reader.schema is not None else None
    if kind is not None and pa.types.is_null(kind):  # every row null (pandas writes an all-None column so)
        log.warning("%s: column '%s' holds no value in any row: every row is kept unscored (null)", reader.path, text)
    elif kind is not None and not is_text(plain_text(pa.nulls(0, kind))):
        log.warning("%s: column '%s' holds %s, not text: its rows are scored as not_text; is --text-column right?",
                    reader.path, text, kind)
    if config.label_column:
        reader.require(config.label_column, "--label-column")
        label = config.label_column
    else:
        label = classifier.manifest.label_column if classifier.manifest.label_column in reader.columns else None
    if label is None and config.report:
        raise InputError(f"--report needs labels, and {reader.path} has no column "
                         f"'{classifier.manifest.label_column}'; pass --label-column, or drop --report")
    names = result_columns(reader.columns, reader.path)
    return Columns(text=text, label=label, predicted=names["label"], score=names["score"], status=names["status"])


def _finish(unit: WorkUnit, classifier: OnnxClassifier, config: RunConfig, columns: Columns, store: PartStore,
            sink: OutputSink, parts: list[Path], first: int) -> UnitSummary:
    figures = tally(parts, columns, classifier.label_index(), unit.source, config.samples, config.seed)
    if not figures.rows:
        log.warning("%s has no data rows; its output has the columns and no rows", unit.source)
    check = None
    if config.check:
        from scorer.check import cross_check

        texts, scores, predicted = scored_sample(parts, columns, config.check, config.seed)
        check = cross_check(checkpoint_of(config, classifier), classifier, texts, scores, predicted)
        if check["passed"] is False:
            raise ParityError(
                f"--check {config.check}: scorer (its tokenising, the {classifier.variant} ONNX graph) and PyTorch "
                f"(the checkpoint's tokenizer and model) disagree beyond tolerance on {unit.source}: max |Δscore| "
                f"{check['max_score_diff']:.3g} > {check['tolerance']:g}, labels agree on {check['agreement']:.1%}; "
                "no output was written" + ("" if classifier.manifest.checkpoint_weights else
                "; this export records no checkpoint weights (it predates that), so a checkpoint retrained since "
                "the export would fail the same way: if it was, export it again")
            )
    rescued, resumed = store.rescued_rows(parts), store.rows(parts[:first])
    sink.finish()
    store.discard()
    if config.report:  # (a report without a row to evaluate says so: the file asked for is there)
        about = {"input": str(unit.source), "output": str(unit.output), "model": str(classifier.directory),
                 "variant": classifier.variant, "provider": classifier.provider,
                 "model_sha256": classifier.model_sha256, "score": classifier.score_means, "check": check,
                 "scored_at": now()}
        write_report(figures.evaluation or nothing_evaluated(columns.label, figures.rows), config.report, about)
    return UnitSummary(str(unit.source), str(unit.output), "resumed" if resumed else "scored", rows=figures.rows,
                       rows_this_run=figures.rows - resumed, resumed_from_row=resumed,
                       status_counts=figures.status_counts, rescued_rows=rescued, evaluation=figures.evaluation,
                       check=check)
