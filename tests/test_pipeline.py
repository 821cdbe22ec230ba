"""The main job end to end: `scorer train` (one epoch), `scorer export`, `scorer run` with their defaults in an empty
directory, and the same pipeline on the real CoLA data (skipped when ../shared/data/cola is absent)."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scorer.cli import main
from scorer.data.labels import read_labelled
from scorer.data.read import TableReader
from tests.conftest import COLA


@pytest.mark.slow
def test_three_commands_with_their_defaults_in_an_empty_directory(tmp_path, monkeypatch):
    """The packaged MiniLM and packaged examples; artefacts land under ./scorer-artifacts. Training is cut to one
    fine-tuning epoch, its only options: the whole default recipe on the packaged MiniLM (16 epochs, 30-45 s on two
    cores) is the quick start's `scorer demo`, which `.ci/run` runs before this suite."""
    monkeypatch.chdir(tmp_path)
    pq.write_table(pa.table({"id": [1, 2, 3], "sentence": ["The dog barked at the mailman.", None,
                                                          "Dog the mailman at barked."]}), "input.parquet")
    runner = CliRunner()
    for args in (["train", "--rtd-epochs", "0", "--epochs", "1", "--quiet"], ["export", "--quiet"],
                 ["run", "input.parquet", "--quiet"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
    assert (tmp_path / "scorer-artifacts" / "checkpoint" / "training_loss.png").is_file()
    manifest = json.loads((tmp_path / "scorer-artifacts" / "onnx" / "manifest.json").read_text())
    assert manifest["parity_passed"] is True
    table = pq.read_table("input.scored.parquet")
    assert table.column("id").to_pylist() == [1, 2, 3]
    assert table.column("status").to_pylist() == ["ok", "null", "ok"]
    assert sorted(os.listdir(tmp_path)) == ["input.parquet", "input.scored.parquet",
                                            "input.scored.parquet.summary.json", "scorer-artifacts"]


def test_demo_shows_each_stage_as_its_command_would(tiny_encoder, tmp_path, monkeypatch):
    """The quick start's demo shows what makes the export trustworthy (the parity table, after the export stage)
    and the run's evaluation with its sample rows, then where its files are. (The tiny encoder stands in for the
    packaged MiniLM, which the CI's quick start runs.)"""
    import functools

    import scorer.demo
    from scorer.config import TrainConfig

    monkeypatch.setattr(scorer.demo, "TrainConfig", functools.partial(TrainConfig, model=tiny_encoder, rtd_epochs=0,
                                                                      learning_rate=1e-3))
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "demo"), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    out = result.output
    export_stage, run_stage = out.index("== 2/3 scorer export"), out.index("== 3/3 scorer run")
    assert export_stage < out.index("variant  provider    runs") < out.index("fp16 graph: ") < run_stage
    assert run_stage < out.index("Matthews correlation (MCC)") < out.index("| row | sentence | true label | "
                                                                         "predicted label | score |")
    assert f"written under {tmp_path / 'demo'}: checkpoint/" in out and "demo.report.md" in out
    assert out.rstrip().splitlines()[-1].startswith("42 rows in 1 file(s)")
    quiet = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "demo"), "--epochs", "1", "--quiet"])
    assert quiet.exit_code == 0 and quiet.output.count("\n") == 1, quiet.output  # cron: the summary line only


def test_demo_refuses_a_work_directory_with_files_it_did_not_write(tmp_path):
    """The demo replaces its work directory's checkpoint and onnx: a real checkpoint there must not be lost."""
    work = tmp_path / "runs"
    (work / "checkpoint").mkdir(parents=True)
    (work / "checkpoint" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "file").write_text("x")
    for workdir, message in ((work, "holds files the demo did not write"), (tmp_path / "file", "is a file")):
        result = CliRunner().invoke(main, ["demo", "--workdir", str(workdir), "--quiet"])
        assert result.exit_code == 5 and message in result.output
    assert (work / "checkpoint" / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint"]


@pytest.mark.cola
def test_cola_files_read_as_documented():
    train = read_labelled(COLA / "train.tsv", "sentence", "label")
    dev = read_labelled(COLA / "dev.tsv", "sentence", "label")
    assert (len(train.texts), sum(train.labels)) == (8551, 6023)
    assert (len(dev.texts), sum(dev.labels)) == (527, 365)
    assert TableReader(COLA / "dev.tsv").columns == ["sentence", "label"]


@pytest.mark.cola
def test_cola_pipeline_on_a_tiny_model(tiny_encoder, tmp_path):
    """Train on 1,000 CoLA sentences, export with parity on dev, score a Parquet copy of dev with --check."""
    subset = tmp_path / "train.tsv"
    subset.write_text("".join((COLA / "train.tsv").read_text().splitlines(keepends=True)[:1001]))
    dev = pa.concat_tables(TableReader(COLA / "dev.tsv").batches(1000))
    pq.write_table(dev, tmp_path / "dev.parquet")
    runner = CliRunner()
    steps = [
        ["train", "--model", tiny_encoder, "--data", subset, "--val-data", COLA / "dev.tsv", "--epochs", "1",
         "--lr", "1e-3", "--output", tmp_path / "ckpt"],
        ["export", "--checkpoint", tmp_path / "ckpt", "--data", COLA / "dev.tsv", "--output", tmp_path / "onnx"],
        ["run", tmp_path / "dev.parquet", "--model", tmp_path / "onnx", "--check", "50", "--variant", "fp32",
         "--report", tmp_path / "dev.md"],
    ]
    for args in steps:
        result = runner.invoke(main, [*map(str, args), "--quiet"])
        assert result.exit_code == 0, (args[0], result.output)
    table = pq.read_table(tmp_path / "dev.scored.parquet")
    assert table.num_rows == 527 and table.column("sentence").to_pylist() == dev.column("sentence").to_pylist()
    summary = json.loads((tmp_path / "dev.scored.parquet.summary.json").read_text())
    assert summary["inputs"][0]["check"]["passed"] and summary["inputs"][0]["check"]["rows"] == 50
    assert summary["inputs"][0]["evaluation"]["rows"] == 527
    parity = json.loads((tmp_path / "onnx" / "parity.json").read_text())
    assert parity["source"].endswith("dev.tsv") and parity["variants"][0]["rows"] == 527 < parity["variants"][0]["runs"]
