"""One input scored into one output: checked and opened (`open_unit`), streamed window by window, resumably
(`score_unit`), then tallied, cross-checked and renamed into place (`finish_unit`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from scorer.config import RunConfig
from scorer.data import atomic
from scorer.data.lock import OutputLock
from scorer.data.read import TableReader
from scorer.data.strings import plain_text
from scorer.data.write import OutputSink, check_text_format, completion_record
from scorer.errors import InputError, ModelError, OutputError, ParityError, ProviderError, ScorerError
from scorer.inference.classify import OnnxClassifier
from scorer.inference.results import NON_FINITE
from scorer.inference.session import memory_failure, ort_account, raised_by_onnxruntime
from scorer.scoring.evaluate import nothing_evaluated, write_report
from scorer.scoring.making import how_written, made_alike, record_of, result_names
from scorer.scoring.parts import PartStore, drop_leftover_parts, fingerprint
from scorer.scoring.stream import stream
from scorer.scoring.summary import UnitSummary, now
from scorer.scoring.tally import Columns, Part, scored_sample, tally
from scorer.scoring.units import WorkUnit
from scorer.text.tokens import is_text

log = logging.getLogger("scorer")
RESULT_COLUMNS = ("label", "score", "status")
PREFIX = "pred_"


@dataclass
class OpenUnit:
    """A unit checked and ready to score: its input open, its columns, the input's fingerprint, and what its output
    records of its making."""

    unit: WorkUnit
    reader: TableReader
    columns: Columns
    source: dict
    record: dict


def result_columns(input_columns: list[str], source: Path, labels: list | None = None) -> list[str]:
    """label, score, status (and prob_<label> for each of `labels`), each prefixed pred_ where the input already has
    one of those names."""
    wanted = [*RESULT_COLUMNS, *(f"prob_{label}" for label in labels or ())]
    clash = any(name in input_columns for name in wanted)
    names = [PREFIX + name if clash else name for name in wanted]
    taken = [name for name in names if name in input_columns]
    if taken:
        raise InputError(f"{source} already has column(s) {', '.join(taken)}, the names scorer writes its results "
                         "under; rename them before scoring")
    return names


def checkpoint_of(config: RunConfig, classifier: OnnxClassifier) -> Path:
    """The PyTorch checkpoint --check compares with: --checkpoint, else the one the export was made from."""
    return config.checkpoint or Path(classifier.manifest.checkpoint)


def score_unit(unit: WorkUnit, classifier: OnnxClassifier, config: RunConfig, progress: bool,
               opened: OpenUnit | None = None) -> UnitSummary:
    """Score one input into one output (`opened`: already opened): skip it when already done, resume it when partly
    done."""
    opened = opened or open_unit(unit, classifier, config)
    if isinstance(opened, UnitSummary):
        return opened
    store = PartStore(unit.output, {**opened.record, "window_rows": config.window_rows})  # (parts: window-sized)
    with OutputLock(unit.output):
        skipped = up_to_date(opened, config, locked=True)  # (completed by another run since it was opened)
        if skipped is not None:
            return skipped
        first = store.open()
        sink = OutputSink(unit.output, overwrite=True, metadata=opened.record, columns=opened.columns.written())
        started = time.perf_counter()
        try:
            waits = stream(opened.reader, classifier, opened.columns, store, sink, first, config, progress)
            check_unchanged(opened)
            parts = store.finished_parts()
            summary = finish_unit(opened, classifier, config, sink, parts, store.rescued_rows(parts),
                                  store.rows(parts[:first]))
            store.discard()
        except BaseException as exc:
            sink.abort()
            # Bad input or a failed check: the parts could only reproduce the failure, so nothing is kept.
            # Anything else (a kill, a full disk) keeps them, and the next run resumes from them.
            if isinstance(exc, ScorerError):
                store.discard()
            said = failure(exc, unit, classifier, "then run again: it resumes from its last finished window")
            if said is not None:
                raise said from exc
            raise
    summary.seconds, summary.waits = time.perf_counter() - started, waits
    said_done(summary, classifier)
    return summary


def open_unit(unit: WorkUnit, classifier: OnnxClassifier, config: RunConfig,
              probed: set[Path] | None = None) -> OpenUnit | UnitSummary:
    """The unit opened and checked before any work; its summary as skipped where its output is up to date.
    `probed`: output directories this run already found writable (scorer.data.atomic.check_writable)."""
    too_long = atomic.name_too_long(unit.output)  # (one input's alone: the others of an inbox are scored)
    if too_long is not None:
        raise too_long
    reader = TableReader(unit.source)
    columns = _columns(config, reader, classifier)
    check_text_format(unit.output, reader.schema, reader.path, columns.kept)
    if columns.kept is not None:  # (what is scored, evaluated and carried: a wide file's other columns go unread)
        reader.read_only({columns.text, *([columns.label] if columns.label else []), *columns.kept})
    source = fingerprint(reader.path)
    record = record_of(classifier.model_sha256, classifier.variant, source, columns, classifier.score_means,
                       classifier.threshold)
    opened = OpenUnit(unit, reader, columns, source, record)
    existed = unit.output.exists()  # (looked at first: an output another run completes just after is up to date)
    done = None if config.overwrite else completion_record(unit.output)  # (read once: a CSV output is hashed)
    skipped = _skipped(done, opened, config, locked=False)
    if skipped is not None:
        return skipped
    if existed and not config.overwrite:
        how = how_written(done, record)
        if not (config.update and done):  # (--update scores again only what scorer wrote: never another's file)
            raise OutputError(f"{unit.output} already exists (written {how}); pass --overwrite to replace it"
                              + (", or --update to score again every output written so" if done else ""))
        log.info("%s was written %s: scored again (--update)", unit.output, how)
    atomic.check_writable(unit.output, overwrite=True, probed=probed)
    return opened


def up_to_date(opened: OpenUnit, config: RunConfig, locked: bool = False) -> UnitSummary | None:
    """The unit's summary as skipped where its output is complete, made by this model from this input and column
    (never with --overwrite). Asked again once the output's lock is held (`locked`): another run may have completed
    it since the unit was opened (runs that share their inputs, --share; a cron job that overlapped the last)."""
    done = None if config.overwrite else completion_record(opened.unit.output)
    return _skipped(done, opened, config, locked)


def _skipped(done: dict | None, opened: OpenUnit, config: RunConfig, locked: bool) -> UnitSummary | None:
    """up_to_date, given what the output records of its making (`done`, None where nothing or --overwrite)."""
    unit = opened.unit
    if not (done and made_alike(done, opened.record)):
        return None
    log.info("%s is up to date (same input, column and model); skipped", unit.output)
    drop_leftover_parts(unit.output, opened.record, locked)
    if config.report:  # (one input only: asked for by name, so said as a warning)
        log.warning("%s is up to date, so it was not scored again and --report %s was not written; pass "
                    "--overwrite to score it again", unit.output, config.report)
    if config.check:  # (a nightly run over a growing inbox skips yesterday's files: said in passing)
        log.info("%s: --check does not check a skipped output", unit.output)
    # (what the output holds, as the run that wrote it counted and evaluated it: a run killed before its summary, then
    # run again, still reports it; nothing where an older scorer wrote the output)
    return UnitSummary(str(unit.source), str(unit.output), "skipped", rows=done.get("rows", 0),
                       status_counts=done.get("status_counts") or {},
                       predicted_counts=done.get("predicted_counts") or {}, evaluation=done.get("evaluation"),
                       columns=result_names(done.get("columns") or {}))


def taken(unit: WorkUnit) -> UnitSummary:
    """The summary of a unit left to the run that is writing its output (--share)."""
    log.info("%s: another run is writing %s; left to it (--share)", unit.source, unit.output)
    return UnitSummary(str(unit.source), str(unit.output), "taken")


def check_unchanged(opened: OpenUnit) -> None:
    """Refuse an input that changed while it was scored: a feed still being written, or replaced mid-run."""
    try:
        now = fingerprint(opened.reader.path)
    except FileNotFoundError as exc:
        raise InputError(f"{opened.reader.path} was removed while it was scored (moved away by another job?); no "
                         "output was written") from exc
    if now != opened.source:
        raise InputError(f"{opened.reader.path} changed while it was scored (still being written?); no output was "
                         "written; run again once the file is complete")


def failure(exc: BaseException, unit: WorkUnit, classifier: OnnxClassifier, rerun: str) -> ScorerError | None:
    """What a unit that failed with `exc` says, where that is not `exc` itself: a full disk, a model out of memory
    (with what to do; `rerun`: how a run after it goes on), or a graph that fails on a batch."""
    no_room = atomic.out_of_room(exc, unit.output, rerun)
    if no_room is not None:
        return no_room
    said = memory_failure(exc, classifier.provider)
    if said:
        in_flight = f" or --infer-threads (now {classifier.infer_threads})" \
            if classifier.infer_threads > 1 else ""  # (each batch in flight holds its own memory)
        return ProviderError(
            f"{unit.source}: the model ran out of memory on {classifier.provider} ({said}); free memory there (is "
            f"another process using it?) or lower --max-tokens (now {classifier.max_tokens:,}){in_flight}, {rerun}")
    return graph_failure(exc, classifier, str(unit.source))


def graph_failure(exc: BaseException, classifier: OnnxClassifier, what: str) -> ScorerError | None:
    """ONNX Runtime failing to run the graph on `what`'s batch (asked after memory_failure): a model error on the CPU
    (a graph that keeps a shape it was traced at, exported before export checked other shapes), a provider's
    elsewhere; None where `exc` is not ONNX Runtime's (a bug of ours, raised as it came)."""
    if not raised_by_onnxruntime(exc):
        return None
    error = ModelError if classifier.provider == "cpu" else ProviderError
    elsewhere = "another --variant" if classifier.provider == "cpu" else "another --variant, or --provider cpu"
    return error(f"{what}: the {classifier.variant} graph of {classifier.directory} failed on {classifier.provider} "
                 f"({ort_account(exc)[:300]}); no output was written. A graph that keeps a shape it was traced at "
                 "fails so: export the model again (export now runs its graph at other shapes first and names such a "
                 f"model), or try {elsewhere}")


def said_done(summary: UnitSummary, classifier: OnnxClassifier) -> None:
    """Log a finished unit, and the rows the model could not score as it runs."""
    _warn_non_finite(summary, classifier)
    log.info("%s -> %s: %d rows (%d written now%s) in %.1fs", summary.input, summary.output, summary.rows,
             summary.rows_this_run, f", resumed at row {summary.resumed_from_row}" if summary.resumed_from_row else "",
             summary.seconds)


def finish_unit(opened: OpenUnit, classifier: OnnxClassifier, config: RunConfig, sink: OutputSink,
                parts: list[Part], rescued: int, resumed: int) -> UnitSummary:
    """Tally the scored rows (`parts`), cross-check them (--check) and complete the output; `rescued` rows were
    scored by the fp32 graph, the first `resumed` by an earlier run."""
    unit, columns = opened.unit, opened.columns
    figures = tally(parts, columns, classifier.label_index(), unit.source, config.samples, config.seed,
                    classifier.positive if len(classifier.labels) == 2 else None)
    if not figures.rows:
        log.warning("%s has no data rows; its output has the columns and no rows", unit.source)
    repeated = opened.reader.repeated_header()
    if repeated:
        log.warning("%s: %s they were scored as text like any other row: remove those lines", unit.source, repeated)
    opened.reader.warn_if_quoted_as_csv()
    check = None
    if config.check:
        from scorer.scoring.check import cross_check

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
    # (its sampled rows' text is not kept with the output)
    evaluated = None if figures.evaluation is None else {**figures.evaluation, "samples": None}
    sink.finish({"status_counts": figures.status_counts, "predicted_counts": figures.predicted_counts,
                 "evaluation": evaluated})
    if config.report:  # (a report without a row to evaluate says so: the file asked for is there)
        about = {"input": str(unit.source), "output": str(unit.output), "model": str(classifier.directory),
                 "variant": classifier.variant, "provider": classifier.provider,
                 "model_sha256": classifier.model_sha256, "score": classifier.score_means,
                 "threshold": classifier.threshold, "threshold_from": classifier.threshold_from, "check": check,
                 "scored_at": now()}
        write_report(figures.evaluation or nothing_evaluated(columns.label, figures.rows), config.report, about)
    return UnitSummary(str(unit.source), str(unit.output), "resumed" if resumed else "scored", rows=figures.rows,
                       rows_this_run=figures.rows - resumed, resumed_from_row=resumed,
                       status_counts=figures.status_counts, predicted_counts=figures.predicted_counts,
                       rescued_rows=rescued, evaluation=figures.evaluation, samples=figures.samples,
                       check=check, columns=result_names(opened.record["columns"]))


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


def _columns(config: RunConfig, reader: TableReader, classifier: OnnxClassifier) -> Columns:
    text = config.text_column or classifier.manifest.text_column
    reader.require(text, "--text-column")
    kind = reader.schema.field(text).type if reader.schema is not None else None
    if kind is not None and pa.types.is_null(kind):  # every row null (pandas writes an all-None column so)
        log.warning("%s: column '%s' holds no value in any row: every row is kept unscored (null)", reader.path, text)
    elif kind is not None and not is_text(plain_text(pa.nulls(0, kind))):
        log.warning("%s: column '%s' holds %s, not text: its rows are scored as not_text; is --text-column right?",
                    reader.path, text, kind)
    if config.label_column == "":  # (--label-column '': no labels, whatever the input's columns are called)
        label = None
    elif config.label_column:
        reader.require(config.label_column, "--label-column")
        label = config.label_column
    else:  # (the training label column, where the input has it and it is not the text scored: --text-column label)
        label = classifier.manifest.label_column if classifier.manifest.label_column in reader.columns else None
        label = None if label == text else label
    if label is None and config.report:
        raise InputError(f"--report needs labels, and {reader.path} has no column "
                         f"'{classifier.manifest.label_column}'; pass --label-column, or drop --report")
    for name in config.keep_columns or ():
        reader.require(name, "--keep-columns")
    names = result_columns(reader.columns, reader.path, classifier.labels if config.probabilities else None)
    return Columns(text=text, label=label, predicted=names[0], score=names[1], status=names[2],
                   kept=config.keep_columns, probabilities=tuple(names[3:]))
