"""Evaluation of labelled input: metrics, the sample table, and the Markdown/JSON report."""

from __future__ import annotations

import json
from pathlib import Path

from scorer.metrics import Confusion


def evaluation(confusion: Confusion, column: str, unlabelled: int, unscored: int, samples: list[dict]) -> dict:
    """The evaluation as a JSON-ready dict: metrics, per-class figures, confusion matrix, sample table."""
    result = confusion.to_dict()
    result.update(label_column=column, unlabelled_rows=unlabelled, unscored_labelled_rows=unscored,
                  samples=samples)
    return result


def nothing_evaluated(column: str, rows: int) -> dict:
    """What --report says of an input none of whose `rows` has both a label (in `column`) and a score."""
    return {"rows": 0, "accuracy": None, "mcc": None, "label_column": column, "input_rows": rows}


def markdown(evaluation: dict, about: dict | None = None) -> str:
    """The report as Markdown: what was scored with what, headline metrics, per-class table, confusion matrix,
    sample table."""
    lines = ["# Evaluation", "", *_provenance(about or {})]
    if not evaluation["rows"]:
        return "\n".join([*lines, f"No row has both a label (column '{evaluation['label_column']}') and a score, of "
                                  f"{evaluation['input_rows']} rows: nothing to evaluate."]) + "\n"
    labels = [str(label) for label in evaluation["labels"]]
    lines += [
        f"- rows evaluated: {evaluation['rows']}",
        f"- accuracy: {evaluation['accuracy']:.4f}",
        f"- Matthews correlation (MCC): {evaluation['mcc']:.4f}",
        "",
        "| label | precision | recall | F1 | support |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {c['label']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
        for c in evaluation["per_class"]
    ]
    lines += ["", "Confusion matrix (rows: true label, columns: predicted):", ""]
    lines += ["| true \\ predicted | " + " | ".join(labels) + " |", "| --- " * (len(labels) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(map(str, row)) + " |"
              for label, row in zip(labels, evaluation["confusion_matrix"], strict=True)]
    lines += _thresholds(evaluation)
    if evaluation["samples"]:
        lines += ["", "| row | sentence | true label | predicted label | score |", "| --- | --- | --- | --- | --- |"]
        lines += [
            f"| {s['row']} | {_cell(s['sentence'])} | {s['true_label']} | {s['predicted_label']} | {s['score']:.4f} |"
            for s in evaluation["samples"]
        ]
    return "\n".join(lines) + "\n"


def sample_table(samples: list[dict]) -> str:
    """An unlabelled input's sampled rows as a Markdown table (a labelled one's are in its evaluation's)."""
    lines = ["| row | sentence | predicted label | score |", "| --- | --- | --- | --- |"]
    lines += [f"| {s['row']} | {_cell(s['sentence'])} | {s['predicted_label']} | {s['score']:.4f} |" for s in samples]
    return "\n".join(lines)


def _thresholds(evaluation: dict) -> list[str]:
    """A two-label model's figures at thresholds on the score (every 0.1, and the best MCC's), where it has them."""
    found = evaluation.get("thresholds")
    if not found:
        return []
    positive, best = found["positive_label"], found["best_mcc_threshold"]
    lines = ["", f"By threshold (a row labelled {positive} where its score is at least the threshold):", "",
             f"| threshold | accuracy | MCC | precision ({positive}) | recall ({positive}) |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['threshold']:.2f} | {r['accuracy']:.4f} | {r['mcc']:.4f} | {r['precision']:.4f} | "
              f"{r['recall']:.4f} |" for r in found["sweep"]
              if round(r["threshold"] * 10, 6).is_integer() or r["threshold"] == best]
    advice = "as the more probable label gives (`--threshold 0.5`)" if best == 0.5 else \
        f"chosen on these rows, so confirm it on other labelled rows before scoring with `--threshold {best:g}` (or " \
        f"recording it with the model: `scorer export --threshold {best:g}`)"
    return [*lines, "", f"MCC is highest here at {best:.2f} ({found['best_mcc']:.4f}; the labels written: "
                        f"{evaluation['mcc']:.4f}): {advice}."]


def _provenance(about: dict) -> list[str]:
    """The input, output, model and time a report is of, with the PyTorch check where the run made one."""
    if not about:
        return []
    lines = [f"- input: {about['input']} -> {about['output']}",
             f"- model: {about['model']} ({about['variant']} on {about['provider']}, sha256 "
             f"{about['model_sha256'][:12]}); score: {about['score']}"]
    if about.get("threshold") is not None:
        source = " (the export's threshold)" if about.get("threshold_from") == "export" else " (--threshold)"
        lines.append(f"- labels: the positive one where the score is at least {about['threshold']:g}{source}")
    check = about.get("check")
    if check and check["passed"] is not None:
        lines.append(f"- PyTorch check: {check['agreement']:.1%} of {check['rows']} rows agree, max |Δscore| "
                     f"{check['max_score_diff']:.2g}")
    return [*lines, f"- scored: {about['scored_at']}", ""]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(evaluation: dict, path: Path, about: dict | None = None) -> tuple[Path, Path]:
    """Write `path` as Markdown and the same figures as JSON beside it (`about`, the run, under "run"); where `path`
    is a link, beside the file it points to."""
    from scorer.data.atomic import through_link, write_text

    path = through_link(path)
    json_path = path.with_suffix(".json")
    write_text(path, markdown(evaluation, about), "--report")
    write_text(json_path, json.dumps({**evaluation, "run": about} if about else evaluation, indent=2, default=str)
               + "\n", "--report")
    return path, json_path
