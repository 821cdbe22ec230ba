"""A model or checkpoint directory replaced (a finished one renamed into its place, as export and train write them)
while a run or an export reads it: nothing is made of two of them."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import scorer.inference.classify
from scorer.cli import main
from scorer.manifest import load_manifest
from tests.test_nightly import sentences


@pytest.fixture(scope="module")
def flipped_built(tiny_checkpoint, tmp_path_factory) -> Path:
    """Another model: the tiny checkpoint with its head's weights negated (its labels the other way round), exported
    fp32 once for the module."""
    from safetensors.torch import load_file, save_file

    directory = tmp_path_factory.mktemp("flipped")
    flipped = Path(shutil.copytree(tiny_checkpoint, directory / "checkpoint"))
    head = flipped / "scorer_head.safetensors"
    save_file({name: -value if value.dim() == 2 else value for name, value in load_file(head).items()}, head)
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(flipped), "--output", str(directory / "onnx"),
                                       "--variants", "fp32"])
    assert result.exit_code == 0, result.output
    return directory / "onnx"


@pytest.fixture
def flipped(flipped_built, tmp_path) -> Path:
    """A private copy of that export, for a test to rename into another's place."""
    return Path(shutil.copytree(flipped_built, tmp_path / "flipped"))


def replace_dir(target: Path, new: Path) -> None:
    """What scorer.data.atomic.atomic_dir does to put a finished directory in place of another."""
    old = target.with_name(f".{target.name}.old-1")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old)


def before_each_call(monkeypatch, owner, name: str, action) -> None:
    """`owner.name` made to do `action()` before each call (an export or a training run finishing just then)."""
    real = getattr(owner, name)

    def wrapped(*args, **kwargs):
        action()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


def retrained_copy(checkpoint: Path, directory: Path) -> Path:
    """A copy of `checkpoint` at `directory` with its head's weights doubled: another training run's checkpoint."""
    from safetensors.torch import load_file, save_file

    new = Path(shutil.copytree(checkpoint, directory))
    head = new / "scorer_head.safetensors"
    save_file({name: value * 2 for name, value in load_file(head).items()}, head)
    return new


def rewrite_in_place(target: Path, new: Path) -> None:
    """`new`'s files copied over `target`'s (`cp new/* target/`), then `new` removed."""
    shutil.copytree(new, target, dirs_exist_ok=True)
    shutil.rmtree(new)


@pytest.mark.parametrize("swap", [replace_dir, rewrite_in_place], ids=["renamed", "in place"])
def test_a_model_directory_replaced_while_the_run_starts_is_read_again_whole(flipped, export_copy, tmp_path,
                                                                             monkeypatch, swap):
    """An export finishing as a nightly run started (here as the run opens its graph, after it read the manifest):
    the run read one export's manifest and the next one's graph, and failed with a hash mismatch (or, between the
    check and the load, scored one model's graph under the other's record). It reads the new export again, whole,
    whether it was renamed into place or its files were copied over the old ones."""
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": sentences(40)}), source)
    common = ["--variant", "fp32", "--summary", str(tmp_path / "summary.json")]
    expected = CliRunner().invoke(main, ["run", str(source), "--model", str(flipped),
                                         "-o", str(tmp_path / "new.parquet"), *common, "--quiet"])
    assert expected.exit_code == 0, expected.output
    new_sha = load_manifest(flipped).variants["fp32"].sha256
    before_each_call(monkeypatch, scorer.inference.classify, "create_session",  # (the first: the export finishes)
                     lambda: flipped.exists() and swap(export_copy, flipped))
    result = CliRunner().invoke(main, ["run", str(source), "--model", str(export_copy),
                                       "-o", str(tmp_path / "out.parquet"), *common])
    assert result.exit_code == 0, result.output
    assert f"{export_copy} was replaced while it was read (an export or training run finishing?); reading it again" \
        in result.output
    scored, reference = pq.read_table(tmp_path / "out.parquet"), pq.read_table(tmp_path / "new.parquet")
    assert scored.select(["label", "score"]).equals(reference.select(["label", "score"]))
    assert json.loads((tmp_path / "summary.json").read_text())["model_sha256"] == new_sha


def test_a_file_gone_with_the_model_directory_replaced_while_it_was_read_is_read_again(flipped, export_copy,
                                                                                      tmp_path, monkeypatch):
    """A file of the directory an export moved aside and removed, gone as the run opened it: read again from the new
    one, where the run stopped with an unexpected error (exit 1)."""
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": sentences(5)}), source)

    def gone() -> None:
        if flipped.exists():
            replace_dir(export_copy, flipped)
            raise FileNotFoundError(2, "No such file or directory", str(export_copy / "model.onnx"))

    before_each_call(monkeypatch, scorer.inference.classify, "create_session", gone)
    result = CliRunner().invoke(main, ["run", str(source), "--model", str(export_copy)])
    assert result.exit_code == 0 and "was replaced while it was read" in result.output, result.output


@pytest.mark.parametrize("name", ["onnx", "model[1]"])  # (a name, not a pattern)
def test_a_model_directory_missing_while_it_is_replaced_is_waited_for(tiny_export, tmp_path, name):
    """Between an export's two renames (the old directory moved aside, the new one not yet in place) the model is
    missing for microseconds; a run starting then failed, exit 4, "does not exist". Where the moved-aside directory
    is there, the run waits for the new one (here 0.3 s)."""
    model = tmp_path / name
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": sentences(5)}), source)
    result = invoked_mid_swap(Path(shutil.copytree(tiny_export, tmp_path / "new")), model,
                              ["run", str(source), "--model", str(model), "--quiet"])
    assert result.exit_code == 0, result.output
    # without a directory moved aside beside it, a missing model is refused at once, as before
    shutil.rmtree(model)
    started = time.monotonic()
    result = CliRunner().invoke(main, ["run", str(source), "--model", str(model), "--quiet", "--overwrite"])
    assert result.exit_code == 4 and "does not exist; run `scorer export` first" in result.output
    assert time.monotonic() - started < 2.0


def test_a_directory_replaced_at_every_read_stops_the_run_saying_so(export_copy, tmp_path, monkeypatch):
    """An export rewriting the model in a loop: the run gives up after three reads, exit 4, saying why."""
    from scorer.data import snapshot

    spare = tmp_path / "spare"
    shutil.copytree(export_copy, spare)
    before_each_call(monkeypatch, scorer.inference.classify, "create_session",
                     lambda: replace_dir(export_copy, Path(shutil.copytree(spare, tmp_path / "next"))))
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": sentences(5)}), source)
    result = CliRunner().invoke(main, ["run", str(source), "--model", str(export_copy), "--quiet"])
    assert result.exit_code == 4, result.output
    assert f"{export_copy} was replaced {snapshot.TRIES} times while this run read it" in result.output
    assert not (tmp_path / "in.scored.parquet").exists()


@pytest.mark.parametrize("swap", [replace_dir, rewrite_in_place], ids=["renamed", "in place"])
def test_an_export_whose_checkpoint_is_replaced_while_it_reads_it_writes_nothing(tiny_checkpoint, tmp_path,
                                                                                 monkeypatch, swap):
    """A training run finishing into the checkpoint an export is reading (or its files copied over the old ones):
    the export's graphs came from one checkpoint and its record of the checkpoint's weights (what `run --check`
    trusts) from the next. It is refused, exit 4, and nothing is written."""
    import export.pipeline

    checkpoint = Path(shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint"))
    before_each_call(monkeypatch, export.pipeline.selfcheck, "record",
                     lambda: swap(checkpoint, retrained_copy(tiny_checkpoint, tmp_path / "retrained")))
    output = tmp_path / "onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "--output", str(output),
                                       "--variants", "fp32"])
    assert result.exit_code == 4, result.output
    assert f"{checkpoint} was replaced while export read it (a training run finished writing it?)" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_an_export_started_while_training_replaces_its_checkpoint_waits_for_the_new_one(tiny_checkpoint, tmp_path):
    """A checkpoint missing between a training run's two renames, its old one moved aside beside it: export waits for
    the new one (here 0.3 s), where it failed, exit 4, "does not exist"."""
    checkpoint = tmp_path / "checkpoint"
    result = invoked_mid_swap(Path(shutil.copytree(tiny_checkpoint, tmp_path / "new")), checkpoint,
                              ["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "onnx"),
                               "--variants", "fp32"])
    assert result.exit_code == 0, result.output


def invoked_mid_swap(new: Path, target: Path, args: list[str]):
    """`scorer ARGS` started between atomic_dir's two renames putting `new` in place of `target`: the old one moved
    aside beside it (a copy of `new` here), `new` renamed into place 0.3 s later and the old one removed."""
    aside = target.with_name(f".{target.name}.old-1")
    shutil.copytree(new, aside)

    def finish() -> None:
        time.sleep(0.3)
        os.replace(new, target)
        shutil.rmtree(aside)

    finishing = threading.Thread(target=finish)
    finishing.start()
    try:
        return CliRunner().invoke(main, args)
    finally:
        finishing.join()


@pytest.mark.parametrize("linked", [False, True])
def test_a_directory_s_identity_is_its_target_s_and_changes_when_it_is_replaced_or_written_in_place(tmp_path, linked):
    from scorer.data.snapshot import identity

    (tmp_path / "v1").mkdir()
    path = tmp_path / "current" if linked else tmp_path / "v1"
    if linked:
        path.symlink_to(tmp_path / "v1")
    first = identity(path)
    assert first is not None and identity(path) == first
    (tmp_path / "v1" / ".NAME.scorer-lock").write_text("scorer's own lock or temporary: the same directory")
    assert identity(path) == first
    (tmp_path / "v1" / "file").write_text("a file written in place: another directory")
    assert identity(path) not in (None, first)
    first = identity(path)
    (tmp_path / "v2").mkdir()
    replace_dir(tmp_path / "v1", tmp_path / "v2")
    assert identity(path) not in (None, first)
    shutil.rmtree(tmp_path / "v1")
    assert identity(path) is None


def test_a_checkpoint_retrained_while_a_checked_run_runs_is_refused_as_such_not_taken_for_a_disagreement(
        tiny_checkpoint, tiny_export, tmp_path, monkeypatch):
    """`run --check` against a checkpoint a training run replaced after the run started (which found it the one the
    export was made from): the new checkpoint's scores were compared with the export's, and the run failed with a
    parity error, exit 7, as if the export disagreed with PyTorch. It is found not to be the export's checkpoint as it
    is loaded for the check: exit 4, saying so."""
    import scorer.scoring.check

    checkpoint = Path(shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint"))
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": sentences(20)}), source)
    before_each_call(monkeypatch, scorer.scoring.check, "cross_check",
                     lambda: replace_dir(checkpoint, retrained_copy(tiny_checkpoint, tmp_path / "retrained")))
    result = CliRunner().invoke(main, ["run", str(source), "--model", str(tiny_export), "--check", "10",
                                       "--checkpoint", str(checkpoint), "--quiet"])
    assert result.exit_code == 4, result.output
    assert f"--check: {checkpoint} is not the checkpoint {tiny_export} was exported from (it has another " \
        "scorer_head.safetensors: retrained or replaced since the export)" in result.output
    assert not (tmp_path / "in.scored.parquet").exists()


@pytest.mark.parametrize("mlm_epochs", ["0", "1"])
def test_a_model_replaced_while_train_reads_it_is_read_again_whole(tiny_encoder, tmp_path, monkeypatch, mlm_epochs):
    """`scorer train --model DIR` with DIR replaced as train read it (another training run finishing into it): train
    took the encoder of one and the tokenizer of the next, here a BERT's embeddings under a RoBERTa's byte-level BPE
    ids, and trained and saved that without a word. It reads the new one again, whole: encoder (with --mlm-epochs,
    its masked-LM form) and tokenizer."""
    import scorer.training.pretrained
    from tests.test_families import _encoder

    model = Path(shutil.copytree(tiny_encoder, tmp_path / "model"))
    new = _encoder("roberta-bpe", tmp_path / "new")
    before_each_call(monkeypatch, scorer.training.pretrained, "pretrained_tokenizer",  # (once its encoder is read)
                     lambda: new.exists() and replace_dir(model, new))
    output = tmp_path / "checkpoint"
    result = CliRunner().invoke(main, ["train", "--model", str(model), "--output", str(output), "--epochs", "1",
                                       "--rtd-epochs", "0", "--mlm-epochs", mlm_epochs, "--max-length", "32"])
    assert result.exit_code == 0, result.output
    assert f"{model} was replaced while it was read (an export or training run finishing?); reading it again" \
        in result.output
    assert json.loads((output / "config.json").read_text())["model_type"] == "roberta"
    saved, read = (json.loads((path / "tokenizer.json").read_text())["model"] for path in (output, model))
    assert saved["type"] == read["type"] == "BPE" and saved["vocab"] == read["vocab"]
