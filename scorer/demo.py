"""`scorer demo`: train → export → run on the packaged model, examples and demo file, in one work directory."""

from __future__ import annotations

import logging
from pathlib import Path

from scorer.config import RunConfig, TrainConfig
from scorer.errors import OutputError
from scorer.packaged import example_file
from scorer.scoring.score import score_file
from scorer.scoring.summary import RunSummary

log = logging.getLogger("scorer")
_MARK = ".scorer-demo"  # says that the demo made the work directory, so its next run may replace what is in it


def run_demo(workdir: Path, epochs: int | None = None, progress: bool = True) -> RunSummary:
    """Run the three stages with their defaults, writing everything under `workdir` (replacing earlier runs), and
    show what a user of each command would see: the parity table, the evaluation with its sample rows."""
    from export.pipeline import export_model
    from scorer.config import ExportConfig
    from scorer.scoring.evaluate import markdown
    from scorer.training.train import train

    _claim(workdir)
    checkpoint, onnx_dir = workdir / "checkpoint", workdir / "onnx"
    train_options = {"epochs": epochs} if epochs else {}
    log.info("== 1/3 scorer train (packaged MiniLM, packaged example sentences) ==")
    train(TrainConfig(output=checkpoint, overwrite=True, **train_options), progress=progress)
    log.info("== 2/3 scorer export (fp32, fp16, int8; parity against PyTorch) ==")
    exported = export_model(ExportConfig(checkpoint=checkpoint, output=onnx_dir, overwrite=True))
    log.info("%s", exported.shown())
    log.info("== 3/3 scorer run (the shipped demo.csv, with a PyTorch cross-check of 20 rows) ==")
    config = RunConfig(input=str(example_file("demo.csv")), output=workdir / "demo.scored.csv", model=onnx_dir,
                       check=20, samples=10, report=workdir / "demo.report.md", overwrite=True)
    summary = score_file(config, progress=progress)
    if summary.evaluation:
        log.info("%s", markdown(summary.evaluation).rstrip())
    log.info("written under %s: checkpoint/ (with training_loss.png), onnx/ (with parity.json), %s, %s", workdir,
             config.output.name, config.report.name)
    return summary


def _claim(workdir: Path) -> None:
    """Refuse a work directory with files the demo did not write (a real checkpoint, say), then mark it as the
    demo's own."""
    if workdir.exists() and not workdir.is_dir():
        raise OutputError(f"--workdir {workdir} is a file; choose a new or empty directory")
    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / _MARK).is_file():
        raise OutputError(f"--workdir {workdir} holds files the demo did not write, and the demo replaces its "
                          "checkpoint and onnx directories; choose a new or empty directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / _MARK).write_text("made by `scorer demo`, which replaces what it wrote here on each run\n")
    except OSError as exc:
        raise OutputError(f"cannot write to --workdir {workdir} ({exc.strerror}); choose a directory this account can "
                          "write (--workdir DIR)") from exc
