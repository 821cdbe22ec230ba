"""A stopped `scorer train` resumes from its last saved epoch, to the checkpoint a run never stopped writes."""

from __future__ import annotations

import filecmp
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from scorer.cli import main
from scorer.config import TrainConfig
from scorer.training import resume
from scorer.training.train import train

# Every stage saves and resumes: masked-LM, replaced-token detection, fine-tuning with a moving average and the
# replaced-token loss beside it (their generators, heads and optimizers all in the state).
SETTINGS = dict(epochs=2, max_length=32, learning_rate=1e-3, mlm_epochs=2, rtd_epochs=2, ema_epochs=1.0, rtd_aux=0.5,
                save_state_every=0.0)
WRITTEN = ("model.safetensors", "scorer_head.safetensors", "training_loss.png")


@pytest.fixture(scope="module")
def unstopped(tiny_encoder, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("unstopped") / "checkpoint"
    train(TrainConfig(model=tiny_encoder, output=output, **SETTINGS), progress=False)
    return output


def stop_after_saves(monkeypatch, count: int) -> None:
    """Stop the run (as Ctrl-C does) right after its `count`-th saved state."""
    save, saves = resume.RunState.save, []

    def stopping(self, *args, **kwargs):
        save(self, *args, **kwargs)
        saves.append(self.saved)
        if len(saves) == count:
            raise KeyboardInterrupt

    monkeypatch.setattr(resume.RunState, "save", stopping)


def stop_at(monkeypatch, said: str) -> list[str]:
    """Stop the run (as Ctrl-C does) right after it saves the state `said` (as its messages say it); the states
    saved, in words."""
    save, saves = resume.RunState.save, []

    def stopping(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if self.saved != (saves[-1] if saves else None):
            saves.append(self.saved)
        if self.saved == said:
            raise KeyboardInterrupt

    monkeypatch.setattr(resume.RunState, "save", stopping)
    return saves


def assert_same_checkpoint(first: Path, second: Path) -> None:
    for name in WRITTEN:
        assert filecmp.cmp(first / name, second / name, shallow=False), name
    metrics = [json.loads((path / "metrics.json").read_text()) for path in (first, second)]
    for epochs in (m["epochs"] for m in metrics):
        for epoch in epochs:
            epoch.pop("seconds")
    assert metrics[0] == metrics[1]


EPOCH_ENDS = [f"{stage} epoch {epoch} of 2" for stage in resume.STAGES for epoch in (1, 2)]
# Saving whenever a moment has passed saves after every step but an epoch's last (8 steps), and after every epoch.
EVERY_STEP = [f"step {step} of 8 of masked-LM epoch 1 of 2" for step in range(1, 8)] + [
    "masked-LM epoch 1 of 2", "step 1 of 8 of masked-LM epoch 2 of 2"]


@pytest.mark.parametrize(("every", "stage"), [
    (0.0, "masked-LM epoch 1 of 2"), (0.0, "replaced-token epoch 1 of 2"), (0.0, "fine-tuning epoch 1 of 2"),
    (1e-9, "step 3 of 8 of masked-LM epoch 1 of 2"), (1e-9, "step 7 of 8 of replaced-token epoch 2 of 2"),
    (1e-9, "step 1 of 8 of fine-tuning epoch 1 of 2"), (1e-9, "step 5 of 8 of fine-tuning epoch 2 of 2")])
def test_a_run_stopped_after_or_within_an_epoch_resumes_to_the_checkpoint_of_a_run_never_stopped(
        tiny_encoder, unstopped, tmp_path, monkeypatch, caplog, every, stage):
    config = TrainConfig(model=tiny_encoder, output=tmp_path / "checkpoint", **{**SETTINGS, "save_state_every": every})
    saves = stop_at(monkeypatch, stage)
    with caplog.at_level(logging.INFO, logger="scorer"), pytest.raises(KeyboardInterrupt):
        train(config, progress=False)
    expected = EVERY_STEP if every else EPOCH_ENDS  # (with 0: after every epoch, never within one)
    assert saves[: len(expected)] == expected[: len(saves)]
    state = tmp_path / ".checkpoint.resume" / "state.pt"
    assert state.is_file() and not config.output.exists()
    assert f"stopped; the state after {stage} is kept in {state.parent}: run the same command again" in caplog.text
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scorer"):
        train(config, progress=False)
    assert f"resuming the stopped run of this command after {stage}" in caplog.text
    assert_same_checkpoint(unstopped, config.output)
    assert not state.parent.exists()  # a run that ended leaves no state behind


def test_an_epoch_resumed_within_counts_its_time_before_the_stop(tiny_encoder, tmp_path, monkeypatch):
    from scorer.pytorch.loop import Trainer

    config = TrainConfig(model=tiny_encoder, output=tmp_path / "c", epochs=1, rtd_epochs=0, max_length=32,
                         save_state_every=1e-9)
    step = Trainer._step

    def slow(self, *args):  # (the stopped run's 7 steps take 2.1 s at least)
        time.sleep(0.3)
        return step(self, *args)

    monkeypatch.setattr(Trainer, "_step", slow)
    stop_at(monkeypatch, "step 7 of 8 of fine-tuning epoch 1 of 1")
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False)
    monkeypatch.undo()
    started = time.perf_counter()
    result = train(config, progress=False)
    # counted from this run alone, the epoch would take less than the whole run took (on a slow machine too)
    assert result.epochs[0].seconds > max(2.1, time.perf_counter() - started)


def test_a_resumed_run_with_patience_stops_early_where_the_run_never_stopped_does(tiny_encoder, tmp_path,
                                                                                 monkeypatch):
    settings = dict(model=tiny_encoder, epochs=8, rtd_epochs=0, max_length=32, learning_rate=1e-3, patience=2,
                    save_state_every=0.0)
    unstopped = train(TrainConfig(output=tmp_path / "unstopped", **settings), progress=False)
    assert unstopped.stopped_early and len(unstopped.epochs) > 3  # (these settings stop early, after epoch 3)
    stop_at(monkeypatch, "fine-tuning epoch 3 of 8")
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(output=tmp_path / "checkpoint", **settings), progress=False)
    monkeypatch.undo()
    resumed = train(TrainConfig(output=tmp_path / "checkpoint", **settings), progress=False)
    assert resumed.stopped_early == 2 and resumed.best_epoch == unstopped.best_epoch
    assert_same_checkpoint(tmp_path / "unstopped", tmp_path / "checkpoint")


def test_a_run_of_other_options_or_data_starts_afresh_and_replaces_the_state(tiny_encoder, tmp_path, monkeypatch,
                                                                             caplog):
    data = tmp_path / "train.csv"
    data.write_text("sentence,label\n" + "".join(f"sentence number {i} is here,{i % 2}\n" for i in range(60)))
    config = TrainConfig(model=tiny_encoder, output=tmp_path / "c", data=data, epochs=3, rtd_epochs=0, max_length=32,
                         save_state_every=0.0)
    stop_after_saves(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False)
    monkeypatch.undo()
    other = TrainConfig(**{**config.__dict__, "learning_rate": 3e-4, "save_state_every": 300.0})
    with caplog.at_level(logging.INFO, logger="scorer"):
        result = train(other, progress=False)
    assert "is not this run's (other --learning-rate); starting afresh" in caplog.text
    assert [e.epoch for e in result.epochs] == [1, 2, 3] and not (tmp_path / ".c.resume").exists()
    # the data file written again since the state was saved: not the run that saved it
    again = TrainConfig(**{**config.__dict__, "overwrite": True})
    stop_after_saves(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(again, progress=False)
    monkeypatch.undo()
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 10**9))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scorer"):
        train(again, progress=False)
    assert "(other --data files); starting afresh" in caplog.text
    assert not (tmp_path / ".c.resume").exists()


@pytest.mark.parametrize(("content", "said"), [
    (b"not a state", "cannot read the stopped run's state in"),
    ({"format": 0, "stage": "fine-tuning"}, "was saved by another version of scorer; starting afresh")])
def test_a_damaged_or_older_state_is_warned_of_and_the_run_starts_afresh(tiny_encoder, tmp_path, caplog, content,
                                                                         said):
    import torch

    state = tmp_path / ".c.resume" / "state.pt"
    state.parent.mkdir()
    state.write_bytes(content) if isinstance(content, bytes) else torch.save(content, state)
    with caplog.at_level(logging.INFO, logger="scorer"):
        result = train(TrainConfig(model=tiny_encoder, output=tmp_path / "c", epochs=1, rtd_epochs=0, max_length=32),
                       progress=False)
    assert said in caplog.text and "starting afresh" in caplog.text
    assert result.epochs and not state.parent.exists()


def test_a_state_that_cannot_be_saved_is_warned_of_once_and_the_run_goes_on(tiny_encoder, tmp_path, monkeypatch,
                                                                              caplog):
    import errno

    def full(state, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(resume.torch, "save", full)
    with caplog.at_level(logging.INFO, logger="scorer"):
        result = train(TrainConfig(model=tiny_encoder, output=tmp_path / "c", epochs=3, rtd_epochs=0, max_length=32,
                                   save_state_every=0.0), progress=False)
    warned = [r.message for r in caplog.records if "could not save" in r.message]
    assert warned == [f"could not save this run's state in {tmp_path / '.c.resume'} (No space left on device); the run "
                      "goes on, but stopped now it would resume from its start"]
    assert len(result.epochs) == 3 and (tmp_path / "c" / "model.safetensors").is_file()
    assert not (tmp_path / ".c.resume").exists()


def test_a_state_that_cannot_be_saved_is_tried_again_when_the_next_save_is_due_not_at_every_step(
        tiny_encoder, tmp_path, monkeypatch):
    import errno
    import types

    from scorer.pytorch.loop import Trainer

    clock, tries = [0.0], []
    step = Trainer._step

    def timed(self, *args):  # every step takes a minute, by the state's clock
        clock[0] += 60.0
        return step(self, *args)

    def full(state, path):
        tries.append(clock[0])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Trainer, "_step", timed)
    monkeypatch.setattr(resume, "time", types.SimpleNamespace(monotonic=lambda: clock[0],
                                                              perf_counter=time.perf_counter))
    monkeypatch.setattr(resume.torch, "save", full)
    result = train(TrainConfig(model=tiny_encoder, output=tmp_path / "c", epochs=3, rtd_epochs=0, max_length=32,
                               save_state_every=300.0), progress=False)
    assert len(result.epochs) == 3  # 24 steps of a minute: a try every 5 minutes, not one a step after the first
    assert tries == [300.0, 600.0, 900.0, 1200.0]


def test_scorer_train_terminated_says_where_its_state_is_and_the_same_command_resumes(tiny_encoder, tmp_path):
    output = tmp_path / "checkpoint"
    args = ["train", "--model", str(tiny_encoder), "--output", str(output), "--epochs", "8", "--max-length", "32",
            "--lr", "1e-3", "--rtd-epochs", "2", "--save-state-every", "0", "--quiet"]
    state = tmp_path / ".checkpoint.resume" / "state.pt"
    child = subprocess.Popen([sys.executable, "-m", "scorer", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not state.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGTERM)  # (a scheduler's timeout, a preempted machine's shutdown)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 143, err
    assert "stopped; the state after " in err and f"is kept in {state.parent}: run the same command again to resume " \
        "from there" in err and err.rstrip().endswith("terminated")
    assert not output.exists()
    again = CliRunner().invoke(main, [a for a in args if a != "--quiet"])
    assert again.exit_code == 0, again.output
    assert "resuming the stopped run of this command after" in again.output
    assert not state.parent.exists()
    reference = tmp_path / "unstopped"
    train(TrainConfig(model=tiny_encoder, output=reference, epochs=8, max_length=32, learning_rate=1e-3,
                      rtd_epochs=2), progress=False)
    assert_same_checkpoint(reference, output)
    assert not (tmp_path / ".unstopped.resume").exists()  # (the default saves every 300 s: this run never did)


def test_save_state_every_must_not_be_negative(tiny_encoder, tmp_path):
    result = CliRunner().invoke(main, ["train", "--model", str(tiny_encoder), "--output", str(tmp_path / "c"),
                                       "--save-state-every", "-1"])
    assert result.exit_code == 2 and "--save-state-every must be 0 (every epoch) or more seconds, not -1" in \
        result.output


def test_a_state_saved_by_another_scorer_version_is_not_resumed(tiny_encoder, tmp_path, monkeypatch, caplog):
    import scorer

    config = TrainConfig(model=tiny_encoder, output=tmp_path / "c", epochs=2, rtd_epochs=0, max_length=32,
                         save_state_every=0.0)
    stop_after_saves(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False)
    monkeypatch.undo()
    monkeypatch.setattr(scorer, "__version__", "99.0")  # (its training may compute otherwise)
    with caplog.at_level(logging.INFO, logger="scorer"):
        train(config, progress=False)
    assert "is not this run's (other scorer version); starting afresh" in caplog.text
