"""`scorer run`: stream a file through the exported model and write every row back with its label and score."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from scorer.classify import STATUSES, OnnxClassifier, Scored
from scorer.config import RunConfig
from scorer.errors import InputError, OutputError, ParityError
from scorer.evaluate import Evaluation, Reservoir, write_report
from scorer.read import TableReader
from scorer.write import OutputSink, default_output

log = logging.getLogger("scorer")
RESULT_COLUMNS = ("label", "score", "status")
PREFIX = "pred_"


@dataclass
class RunSummary:
    """What a run did, as printed and written to the JSON summary."""

    input: str
    output: str
    rows: int
    scored: int
    status_counts: dict[str, int]
    seconds: float
    rows_per_second: float
    provider: str
    variant: str
    model_sha256: str
    columns: dict[str, str]
    evaluation: dict | None = None
    check: dict | None = None
    extra: dict = field(default_factory=dict)

    def line(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.status_counts.items() if v and k != "ok")
        text = (f"{self.rows} rows ({self.scored} scored{'; ' + counts if counts else ''}) in {self.seconds:.1f}s, "
                f"{self.rows_per_second:,.0f} rows/s on {self.provider} ({self.variant}) -> {self.output}")
        if self.evaluation:
            text += f"; accuracy {self.evaluation['accuracy']:.4f}, MCC {self.evaluation['mcc']:.4f}"
        if self.check:
            text += f"; check {self.check['agreement']:.1%} agree, max |Δscore| {self.check['max_score_diff']:.2g}"
        return text


def result_columns(input_columns: list[str]) -> dict[str, str]:
    """label/score/status, or pred_label/pred_score/pred_status when the input already has one of those names."""
    clash = any(name in input_columns for name in RESULT_COLUMNS)
    names = {name: (PREFIX + name if clash else name) for name in RESULT_COLUMNS}
    taken = [name for name in names.values() if name in input_columns]
    if taken:
        raise InputError(f"the input already has column(s) {', '.join(taken)}; rename them before scoring")
    return names


def score_file(config: RunConfig, progress: bool = True) -> RunSummary:
    """Score config.input into config.output (atomically); evaluate and cross-check when asked."""
    reader = TableReader(config.input)
    output = config.output or default_output(config.input)
    if output.resolve() == reader.path.resolve():
        raise OutputError(f"--output {output} is the input file; choose another output path")
    classifier = OnnxClassifier(config.model, config.provider, config.variant, config.max_tokens,
                                config.max_batch_rows)
    manifest = classifier.manifest
    text_column = config.text_column or manifest.text_column
    reader.require(text_column, "--text-column")
    label_column = _label_column(config, reader, manifest.label_column)
    names = result_columns(reader.columns)
    evaluation = (Evaluation(manifest.labels, label_column, reader.path, config.samples, config.seed)
                  if label_column else None)
    sample = Reservoir(config.check, config.seed)
    counts: Counter[str] = Counter({status: 0 for status in STATUSES})
    metadata = {"model_sha256": classifier.model_sha256, "variant": classifier.variant,
                "input": str(reader.path), "text_column": text_column}
    sink = OutputSink(output, config.overwrite, metadata)
    log.info("scoring %s on %s (%s variant, %s)", reader.path, classifier.provider, classifier.variant,
             classifier.model_path.name)
    started = time.perf_counter()
    try:
        rows = _stream(reader, classifier, config.window_rows, text_column, label_column, names, sink,
                       counts, evaluation, sample, progress)
        if rows == 0:
            raise InputError(f"{reader.path} has no data rows; nothing to score")
        check = _check(config, classifier, sample) if config.check else None
        if check is not None and not check["passed"]:
            raise ParityError(
                f"--check {config.check}: ONNX ({classifier.variant}) and PyTorch disagree beyond tolerance: "
                f"max |Δscore| {check['max_score_diff']:.3g} > {check['tolerance']:g}, labels agree on "
                f"{check['agreement']:.1%}; no output was written"
            )
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    seconds = time.perf_counter() - started
    summary = RunSummary(
        input=str(reader.path), output=str(output), rows=rows, scored=rows - _unscored(counts),
        status_counts=dict(counts), seconds=seconds, rows_per_second=rows / max(seconds, 1e-9),
        provider=classifier.provider, variant=classifier.variant, model_sha256=classifier.model_sha256,
        columns=names, evaluation=evaluation.to_dict() if evaluation else None, check=check,
    )
    _write_side_files(config, output, summary)
    return summary


def _label_column(config: RunConfig, reader: TableReader, manifest_column: str) -> str | None:
    """--label-column must exist; otherwise the training label column is used when the input has it."""
    if config.label_column:
        reader.require(config.label_column, "--label-column")
        return config.label_column
    return manifest_column if manifest_column in reader.columns else None


def _stream(reader, classifier, window_rows, text_column, label_column, names, sink, counts, evaluation,
            sample, progress) -> int:
    rows = 0
    with tqdm(total=reader.num_rows, unit="rows", disable=None if progress else True, file=sys.stderr,
              desc="scoring", leave=False) as bar:
        for window in reader.batches(window_rows):
            texts = window.column(text_column)
            scored = classifier.classify(texts)
            sink.write(_with_results(window, scored, names, classifier))
            counts.update(scored.status.tolist())
            text_values = texts.to_pylist()
            if evaluation is not None:
                evaluation.add(rows + 1, window.column(label_column).to_pylist(), scored.predicted, text_values)
            for row in np.flatnonzero(scored.scored):
                sample.offer((text_values[row], scored.logits[row]))
            rows += window.num_rows
            bar.update(window.num_rows)
    return rows


def _with_results(window: pa.Table, scored: Scored, names: dict[str, str], classifier: OnnxClassifier) -> pa.Table:
    labels = classifier.labels
    label_type = pa.int64() if all(isinstance(v, int) for v in labels) else pa.string()
    predicted = [labels[i] if i >= 0 else None for i in scored.predicted.tolist()]
    score = scored.probabilities[:, classifier.positive] if len(labels) == 2 else scored.probabilities.max(axis=1)
    mask = ~scored.scored
    table = window.append_column(names["label"], pa.array(predicted, type=label_type))
    table = table.append_column(names["score"], pa.array(score.astype(np.float32), mask=mask))
    return table.append_column(names["status"], pa.array(scored.status.tolist(), type=pa.string()))


def _unscored(counts: Counter[str]) -> int:
    return sum(counts[status] for status in ("null", "empty", "not_text"))


def _check(config: RunConfig, classifier: OnnxClassifier, sample: Reservoir) -> dict:
    from scorer.check import cross_check

    checkpoint = config.checkpoint or Path(classifier.manifest.checkpoint)
    return cross_check(checkpoint, classifier, sample.items)


def _write_side_files(config: RunConfig, output: Path, summary: RunSummary) -> None:
    from scorer.atomic import write_text

    if summary.evaluation and config.report:
        write_report(summary.evaluation, config.report)
    summary_path = config.summary or output.with_name(output.name + ".summary.json")
    write_text(summary_path, json.dumps(asdict(summary), indent=2, default=str) + "\n")
    summary.extra["summary_path"] = str(summary_path)
