"""What an output records of its making (model, variant, input, the columns it scored and carries), whether an
existing output's record makes it up to date, and how it differs where not."""

from __future__ import annotations

from dataclasses import asdict

from scorer import __version__
from scorer.scoring.tally import Columns


def record_of(model_sha256: str, variant: str, source: dict, columns: Columns, score: str,
              threshold: float | None = None) -> dict:
    """The record an output is written with (its Parquet footer, a CSV/TSV output's sidecar) and its parts' state
    holds: JSON values throughout, as it is compared with what an earlier run wrote. The threshold is recorded only
    where one labelled the rows (as outputs were recorded before --threshold)."""
    record = {"model_sha256": model_sha256, "variant": variant, "input": source, "columns": _recorded(columns),
              "score": score, "scorer": __version__}
    return record if threshold is None else {**record, "threshold": threshold}


def made_alike(done: dict, record: dict) -> bool:
    """Whether an output recorded as `done` is what a run making `record` would write: the same model, input, text
    column, columns written and threshold (the variant is part of the model's sha256)."""
    return (done.get("model_sha256") == record["model_sha256"] and done.get("input") == record["input"]
            and _text(done) == _text(record) and _kept(done) == _kept(record)
            and _probabilities(done) == _probabilities(record) and done.get("threshold") == record.get("threshold"))


def how_written(done: dict | None, record: dict) -> str:
    """How an existing output (recorded as `done`; None: not by scorer) differs from what `record` would make."""
    if not done:
        return "not by scorer"
    variant, ours, how = done.get("variant"), record["variant"], []
    other_model = done.get("model_sha256") != record["model_sha256"]
    if other_model:
        how.append(f"by the {variant} variant, and this run uses {ours}" if variant != ours else "by another model")
    if done.get("input") != record["input"]:
        how.append("from another version of the input")
    if _text(done) != _text(record):
        how.append(f"scoring column '{_text(done)}', and this run scores '{_text(record)}'")
    if _kept(done) != _kept(record):
        how.append(f"carrying {_carried(_kept(done))}, and this run would carry {_carried(_kept(record))} "
                   "(--keep-columns)")
    if bool(_probabilities(done)) != bool(_probabilities(record)):
        how.append("without each label's probability, and this run with (--probabilities)" if _probabilities(record)
                   else "with each label's probability, and this run without (--probabilities)")
    if done.get("threshold") != record.get("threshold"):
        how.append(f"labelled {_labelled(done)}, and this run {_labelled(record)} (--threshold, or the export's)")
    if other_model and variant != ours and len(how) == 1:
        how[0] += f": --variant {variant} keeps it"
    return ", ".join(how)


def result_names(recorded: dict) -> dict:
    """The result columns of an output by what they hold, from its record's columns."""
    names = {"label": recorded.get("predicted"), "score": recorded.get("score"), "status": recorded.get("status")}
    return {**names, "probabilities": recorded["probabilities"]} if recorded.get("probabilities") else names


def _recorded(columns: Columns) -> dict:
    """The columns as a record holds them: without `kept` where every input column is kept, nor `probabilities`
    where none is written, as outputs were recorded before --keep-columns and --probabilities."""
    recorded = asdict(columns)
    kept, probabilities = recorded.pop("kept"), recorded.pop("probabilities")
    if kept is not None:
        recorded["kept"] = list(kept)
    if probabilities:
        recorded["probabilities"] = list(probabilities)
    return recorded


def _labelled(record: dict) -> str:
    threshold = record.get("threshold")
    return "by the more probable label" if threshold is None else f"at score >= {threshold:g}"


def _text(record: dict) -> str | None:
    return (record.get("columns") or {}).get("text")


def _kept(record: dict) -> tuple[str, ...] | None:
    """The input columns an output carries (--keep-columns; None: all, as before there was a choice)."""
    kept = (record.get("columns") or {}).get("kept")
    return None if kept is None else tuple(kept)


def _probabilities(record: dict) -> tuple[str, ...]:
    return tuple((record.get("columns") or {}).get("probabilities") or ())


def _carried(kept: tuple[str, ...] | None) -> str:
    if kept is None:
        return "every input column"
    return "the results alone" if not kept else "input column(s) " + ", ".join(repr(name) for name in kept)
