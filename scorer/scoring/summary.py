"""The JSON summary of a run: what happened to each input, and the whole run's figures."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from scorer import __version__
from scorer.config import RunConfig
from scorer.data import atomic
from scorer.errors import ScorerError
from scorer.inference.classify import OnnxClassifier
from scorer.inference.results import EMPTY, NON_FINITE, NOT_TEXT, NULL, TRUNCATED
from scorer.scoring.progress import UNDERWAY, RunProgress
from scorer.scoring.units import WorkUnit

log = logging.getLogger("scorer")
# How the one-line summary names each row status but "ok" (the unscored ones keep their row, without a score).
ROW_KINDS = {TRUNCATED: "truncated", NULL: "unscored (null text)", EMPTY: "unscored (empty text)",
             NOT_TEXT: "unscored (not text)", NON_FINITE: "unscored (non-finite logits)"}

LEFT_OUT_LISTED = 100  # the data files `left_out` names, the first in sorted order; `left_out_counts` counts them all
LINE_STATES = ("scored", "resumed", "skipped", "taken", "failed")  # (counted in the one-line summary)
STATE_WORDS = {"taken": "left to other runs"}


@dataclass
class UnitSummary:
    """What happened to one input: scored, resumed, skipped (already done), taken (--share: another run was writing
    its output), failed, or interrupted / terminated / hung up (Ctrl-C, SIGTERM, SIGHUP: its finished windows are
    kept for the rerun)."""

    input: str
    output: str
    state: str
    rows: int = 0
    rows_this_run: int = 0
    resumed_from_row: int = 0
    seconds: float = 0.0
    status_counts: dict[str, int] = field(default_factory=dict)
    # Scored rows by predicted label, every label of the model's (scorer.scoring.tally.Tally).
    predicted_counts: dict[str, int] = field(default_factory=dict)
    evaluation: dict | None = None
    samples: list[dict] | None = None  # an unlabelled input's sampled rows (--samples; a labelled one's: evaluation)
    check: dict | None = None
    error: str | None = None
    exit_code: int = 0
    # Seconds the thread that feeds the model waited for reading, tokenising and writing (scorer.scoring.stream).
    waits: dict[str, float] = field(default_factory=dict)
    # Rows of the output (resumed parts included) whose logits were not finite in the run's variant and were
    # scored by the fp32 graph.
    rescued_rows: int = 0
    # How many other small inputs were scored in one window with this one (scorer.scoring.bundle); its seconds and waits
    # are then its rows' share of theirs.
    bundled_with: int = 0
    # The output's columns of results by what they hold, where it has them: {"label": "pred_label", "score": ...,
    # "status": ..., "probabilities": [...]} (pred_... where the input had one of the names; scorer.scoring.single).
    columns: dict | None = None


@dataclass
class RunSummary:
    """The whole run, as printed and written to the JSON summary."""

    inputs: list[UnitSummary]
    rows: int
    rows_this_run: int
    status_counts: dict[str, int]
    seconds: float
    rows_per_second: float  # rows written now over the run's seconds less checking_seconds
    rescued_rows: int
    provider: str
    variant: str
    model_sha256: str
    # Why that variant: "--variant", or why `scorer run` took it (scorer.inference.defaults.chosen_variant: on a CPU,
    # export's timing of int8 against fp32 and the CPU it was timed on).
    variant_from: str = ""
    # What the run warned of about export's timings: made on a CPU whose int8 kernels differ from this machine's, or
    # on another GPU model than this machine's, so that its choices may not be the fastest here.
    cautions: list[str] = field(default_factory=list)
    score: str = ""  # what the score column holds: "the probability of label 1"
    # The positive label where score >= this (None: the more probable), from --threshold or the export's
    # (threshold_from: "--threshold" or "export").
    threshold: float | None = None
    threshold_from: str | None = None
    # Scored rows by predicted label over the inputs scored or resumed now (a skipped one's entry says what its output
    # holds, as the run that wrote it counted it; not counted here, not being this run's work).
    predicted_counts: dict[str, int] = field(default_factory=dict)
    checking_seconds: float = 0.0  # of `seconds`, spent on --check (PyTorch's start, mostly)
    io_binding: bool = False
    infer_threads: int = 1
    # ONNX Runtime's intra-op threads, as its session has them: on a CPU the cores this process may use (its affinity
    # and cgroup CPU quota: scorer.machine), on a GPU 1.
    cpu_threads: int = 0
    provider_options: dict = field(default_factory=dict)  # as given to ONNX Runtime (CUDA: export's kernel choice)
    # The recorded batch's logits on this machine against export's (scorer.inference.selfcheck); None for older exports.
    self_check: dict | None = None
    # Batches run, with their real and padded token counts and the seconds the model was busy (scorer.text.batches),
    # and the window size used.
    batching: dict = field(default_factory=dict)
    # Seconds the thread that feeds the model waited for reading, tokenising and writing, over all inputs.
    waits: dict[str, float] = field(default_factory=dict)
    summary_path: str = ""
    # "running" while the run runs (written as it starts and every minute after: scoring.heartbeat), then "finished".
    # A summary left "running" whose `updated_at` is old is a run killed without cleaning up (kill -9, out of memory).
    state: str = "finished"
    # The run's exit code and, where it is not 0, why in one line: what a monitor reading this file checks (a run
    # stopped before any input, its model or this machine refused, has no inputs and says so here); null while the
    # run runs.
    exit_code: int | None = 0
    error: str | None = None
    planned_inputs: int = 0  # the inputs the run was given (`inputs` lists those it has finished)
    # The data files of a directory INPUT left out, under it, each with why: "named with or under a leading '_'"
    # (Spark's _temporary/ attempts, its markers), "no bytes" (an empty part among several) or "a link to nothing
    # ..." (a link whose target is gone, not named as a data file: scorer.data.inputs.LINK_TO_NOTHING); the first
    # LEFT_OUT_LISTED of them, so that a _temporary/ of thousands of attempts' files does not swell every beat's
    # write, and how many there were of each why (`left_out_counts`: the list was cut where they add up to more).
    left_out: dict[str, str] = field(default_factory=dict)
    left_out_counts: dict[str, int] = field(default_factory=dict)
    # While the run runs: each input being scored, with its rows done (resumed ones included) of how many (null where
    # the file does not say: CSV), its rows/s and the seconds left; empty once the run has finished.
    underway: list[dict] = field(default_factory=list)
    # How far the whole run got (scoring.progress.RunProgress), by its input files' bytes: bytes_planned,
    # bytes_finished (an input underway counted by its rows done), fraction, and seconds_left at this run's rate
    # (null before it has read any); empty until its model has started.
    progress: dict = field(default_factory=dict)
    scorer_version: str = __version__
    started_at: str = ""  # UTC, ISO 8601, as a nightly job's log wants to match it
    finished_at: str = ""
    updated_at: str = ""  # when this file was written
    host: str = field(default_factory=platform.node)
    pid: int = field(default_factory=os.getpid)

    @property
    def failed(self) -> list[UnitSummary]:
        return [unit for unit in self.inputs if unit.state == "failed"]

    @property
    def evaluation(self) -> dict | None:
        return self.inputs[0].evaluation if len(self.inputs) == 1 else None

    def line(self) -> str:
        states = {s: sum(u.state == s for u in self.inputs) for s in LINE_STATES}
        files = ", ".join(f"{n} {STATE_WORDS.get(s, s)}" for s, n in states.items() if n)
        kinds = [f"{v} {ROW_KINDS[k]}" for k, v in self.status_counts.items() if v and k in ROW_KINDS]
        if self.rescued_rows:
            kinds.append(f"{self.rescued_rows} scored by the fp32 graph (non-finite in {self.variant})")
        counts = ", ".join(kinds)
        checking = f" ({self.checking_seconds:.1f}s of it the PyTorch check)" if self.checking_seconds else ""
        labelled = "" if self.threshold is None else f", labelled at score >= {self.threshold:g}" + \
            (", the export's threshold" if self.threshold_from == "export" else "")
        text = (f"{self.rows} rows in {len(self.inputs)} file(s) ({files}){'; ' + counts if counts else ''}; "
                f"{self.rows_this_run} written now in {self.seconds:.1f}s{checking}, {self.rows_per_second:,.0f} "
                f"rows/s on {self.provider} ({self.variant}{labelled})")
        if len(self.inputs) == 1:
            text += f" -> {self.inputs[0].output}"
            unit = self.inputs[0]
            if unit.evaluation:
                text += f"; accuracy {unit.evaluation['accuracy']:.4f}, MCC {unit.evaluation['mcc']:.4f}"
            if unit.check:
                text += "; check: no scored row" if unit.check["passed"] is None else (
                    f"; check {unit.check['agreement']:.1%} agree, max |Δscore| {unit.check['max_score_diff']:.2g}")
        return text


def now() -> str:
    """The time in UTC, ISO 8601, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def summarise(units: list[UnitSummary], classifier: OnnxClassifier, seconds: float, window_rows: int
               ) -> RunSummary:
    """The run's summary from its units' and the classifier's figures."""
    counts: dict[str, int] = {}
    predicted: dict[str, int] = {}
    waits: dict[str, float] = {}
    for unit in units:
        if unit.state == "skipped":  # (what its output holds, counted by the run that wrote it: not this run's work)
            continue
        for key, value in unit.status_counts.items():
            counts[key] = counts.get(key, 0) + value
        for key, value in unit.predicted_counts.items():
            predicted[key] = predicted.get(key, 0) + value
        for stage, waited in unit.waits.items():
            waits[stage] = waits.get(stage, 0.0) + waited
    rows_now = sum(u.rows_this_run for u in units)
    checking = sum((u.check or {}).get("seconds", 0.0) for u in units)
    return RunSummary(inputs=units, rows=sum(u.rows for u in units), rows_this_run=rows_now, status_counts=counts,
                      seconds=seconds, rows_per_second=rows_now / max(seconds - checking, 1e-9),
                      checking_seconds=checking,
                      rescued_rows=sum(u.rescued_rows for u in units), provider=classifier.provider,
                      io_binding=classifier.io_binding, infer_threads=classifier.infer_threads,
                      cpu_threads=classifier.cpu_threads,
                      provider_options=classifier.provider_options,
                      variant=classifier.variant, variant_from=classifier.variant_from,
                      cautions=classifier.cautions,
                      model_sha256=classifier.model_sha256,
                      score=classifier.score_means, threshold=classifier.threshold,
                      threshold_from=classifier.threshold_from, predicted_counts=predicted,
                      batching={**asdict(classifier.tally), "window_rows": window_rows}, waits=waits)


def failed_start(config: RunConfig, units: list[WorkUnit], error: ScorerError, started_at: str,
                 left_out: dict[str, str]) -> None:
    """Say, where a summary is kept, that the run stopped before it scored any input (its inputs not there, its
    model, its checkpoint or this machine refused), so that the file never goes on showing the last run's success:
    at --summary, or where an earlier run left its summary. Only an earlier summary or a new file is written, never
    another file."""
    if config.summary is None and not units:
        return
    path = summary_path(config, units)
    if path.exists() or config.summary is None:  # (in the default place, only where an earlier summary lies)
        try:
            earlier = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(earlier, dict) or "scorer_version" not in earlier:
            return
    summary = bare(config, units, started_at, exit_code=error.exit_code, error=str(error), finished_at=now())
    with_left_out(summary, left_out)
    try:
        write_summary(config, units, summary)
    except (ScorerError, OSError) as exc:
        log.warning("the summary %s could not be written either (%s)", path, exc)


def bare(config: RunConfig, units: list[WorkUnit], started_at: str, **fields) -> RunSummary:
    """A summary without any input's figures: of a run that stopped before any, or has not yet started its model."""
    return RunSummary(inputs=[], rows=0, rows_this_run=0, status_counts={}, seconds=0.0, rows_per_second=0.0,
                      rescued_rows=0, provider=config.provider, variant=config.variant or "",
                      variant_from="--variant" if config.variant else "", model_sha256="",
                      planned_inputs=len(units), started_at=started_at, **fields)


def left_out_listing(left_out: dict[str, str]) -> tuple[dict[str, str], dict[str, int]]:
    """The data files INPUT left out (`left_out`: every one, under INPUT, with why) as a summary says them: the first
    LEFT_OUT_LISTED, and how many there were of each why."""
    return dict(sorted(left_out.items())[:LEFT_OUT_LISTED]), dict(Counter(left_out.values()))


def with_left_out(summary: RunSummary, left_out: dict[str, str]) -> RunSummary:
    summary.left_out, summary.left_out_counts = left_out_listing(left_out)
    return summary


def running(summary: RunSummary, underway: list[dict] | None = None) -> RunSummary:
    """`summary` said as that of a run still running (scorer.scoring.heartbeat), with the inputs `underway` (those
    UNDERWAY lists now, where not given)."""
    summary.state, summary.exit_code, summary.error = "running", None, None
    summary.underway = UNDERWAY.said() if underway is None else underway
    return summary


class RunRecord:
    """The run's summary so far, once its model has started: its inputs' summaries, added as they finish
    (`inputs`), with the run's figures and how far it got."""

    def __init__(self, config: RunConfig, units: list[WorkUnit], classifier: OnnxClassifier, began: str,
                 self_check: dict | None, left_out: dict[str, str], lines: bool) -> None:
        self.config, self.units, self.classifier, self.began = config, units, classifier, began
        self.self_check, self.lines, self.beats = self_check, lines, 0
        self.left_out = left_out_listing(left_out)  # (once: a summary is written every beat)
        self.inputs: list[UnitSummary] = []
        self.progress = RunProgress([unit.source for unit in units])

    def summary(self, underway: list[dict] | None = None) -> RunSummary:
        """The summary as it stands, with the inputs `underway` counted in its progress."""
        summary = summarise(list(self.inputs), self.classifier, time.perf_counter() - self.progress.started,
                            self.config.window_rows)
        summary.started_at, summary.self_check, summary.planned_inputs = self.began, self.self_check, len(self.units)
        summary.left_out, summary.left_out_counts = self.left_out
        summary.progress = self.progress.as_dict(summary.inputs, underway or [])
        return summary

    def beat(self) -> None:
        """The running summary written (scoring.heartbeat); and, every beat after the first where `lines` (a run of
        several inputs logging without a terminal), how far the run got in a log line."""
        underway = UNDERWAY.said()
        summary = running(self.summary(underway), underway)
        write_summary(self.config, self.units, summary)
        if self.lines and self.beats:
            log.info("%s", self.progress.line(summary.progress, len(summary.inputs)))
        self.beats += 1


def summary_path(config: RunConfig, units: list[WorkUnit]) -> Path:
    """Where the summary goes: --summary, else beside the one output or in the --output directory."""
    if config.summary is not None:
        return config.summary
    mirrored = config.output is not None and \
        units[0].output.resolve().parent != atomic.through_link(config.output).resolve().parent
    single = units[0].output
    return config.output / "scorer-summary.json" if mirrored else single.with_name(single.name + ".summary.json")


def write_summary(config: RunConfig, units: list[WorkUnit], summary: RunSummary) -> None:
    """Write the summary as JSON where summary_path says."""
    path = summary_path(config, units)
    summary.summary_path, summary.updated_at = str(path), now()
    atomic.write_text(path, json.dumps(asdict(summary), indent=2, default=str) + "\n",
                      "--summary" if config.summary is not None else "--output")
