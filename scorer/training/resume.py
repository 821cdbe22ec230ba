"""A training run's state, so that a stopped run resumes where it was last saved.

After the first training step (of the masked-LM, replaced-token or fine-tuning stage) or epoch where --save-state-every
seconds have passed since the run started or last saved (with 0: after every epoch, and never within one),
everything the rest of the run depends on goes into one file beside the checkpoint directory
(`.<name>.resume/state.pt`, replaced atomically): the weights, the optimizer and its schedule, the moving average,
the epochs' figures and the kept epoch's weights, the losses so far, the state of every random generator, and within
an epoch, its batches' generator state and the steps done. Run again with the same options, data files and --model
files, `scorer train` loads it and goes on from the next step; on the CPU its checkpoint is then bit for bit the one
a run never stopped writes (tests/test_resume.py). A run that ends removes the file; a run with other options or
data starts afresh and replaces it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

import scorer
from scorer.config import TrainConfig, to_json
from scorer.data import atomic
from scorer.data.inputs import expand_inputs
from scorer.data.snapshot import file_listing
from scorer.pytorch.epochs import Epoch

log = logging.getLogger("scorer")
STAGES = ("masked-LM", "replaced-token", "fine-tuning")  # in the order a run goes through them
_FORMAT = 2  # 2: states saved within an epoch
# Settings that do not change what a run computes: a run given other values of them still resumes.
_NOT_COMPARED = ("overwrite", "save_state_every")


class RunState:
    """The state file of the run writing `config.output`: the one loaded at the start (where it is this run's), and
    the saving of this run's own."""

    def __init__(self, config: TrainConfig, device: str, precision: str) -> None:
        target = atomic.through_link(config.output)
        self.directory = target.parent / f".{target.name}.resume"
        self.file = self.directory / "state.pt"
        self.every = config.save_state_every
        self.fingerprint = _fingerprint(config, device, precision)
        self.last_save = time.monotonic()
        self.saved: str | None = None  # the last state this run saved, in words
        self.failed = False  # a save failed (said once)
        self.loaded = self._load()

    def _load(self) -> dict | None:
        if not self.file.is_file():
            return None
        try:
            state = torch.load(self.file, map_location="cpu", weights_only=True)
        except Exception as exc:  # (a damaged file: nothing of it can be trusted)
            log.warning("cannot read the stopped run's state in %s (%s); starting afresh", self.file, exc)
            return None
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            log.warning("the stopped run's state in %s was saved by another version of scorer; starting afresh, and "
                        "this run replaces it", self.directory)
            return None
        recorded = state["fingerprint"]
        differ = [key for key in self.fingerprint if recorded.get(key) != self.fingerprint[key]]
        if differ:
            log.warning("the stopped run's state in %s is not this run's (other %s); starting afresh, and this run "
                        "replaces it", self.directory, ", ".join(_named(key) for key in differ))
            return None
        log.info("resuming the stopped run of this command after %s (saved %s in %s)", _said(state),
                 state["saved_at"], self.directory)
        return state

    def past(self, stage: str) -> bool:
        """Whether the loaded state comes after all of `stage`, so the stage is not run again."""
        return self.loaded is not None and STAGES.index(self.loaded["stage"]) > STAGES.index(stage)

    def stage(self, name: str, epochs: int, carried: Callable[[], dict] | None = None) -> Stage:
        return Stage(self, name, epochs, carried or dict)

    def due(self, within: bool) -> bool:
        """Whether to save now: --save-state-every seconds have passed since the last save (or the run's start);
        within an epoch only where they are more than 0."""
        return (self.every > 0 or not within) and time.monotonic() - self.last_save >= self.every

    def save(self, stage: str, epoch: int, epochs: int, payload: Callable[[], dict],
             steps: tuple[int, int] | None = None) -> None:
        """Save the state after `epoch` epochs of `stage` (and, within the next, `steps`: done of all) where it is
        due. A state that cannot be written is warned of, and the run goes on without it."""
        if not self.due(within=steps is not None):
            return
        started = time.perf_counter()
        state = {"format": _FORMAT, "fingerprint": self.fingerprint, "stage": stage, "epoch": epoch, "epochs": epochs,
                 "steps": steps, "saved_at": datetime.now().astimezone().isoformat(timespec="seconds"),
                 "random": _random_states(), **payload()}
        staging = atomic.temporary_sibling(self.file)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            torch.save(state, staging)
            atomic.sync(staging)
            os.replace(staging, self.file)
        except BaseException as exc:  # (Ctrl-C while saving included: no half-written file is left)
            staging.unlink(missing_ok=True)
            if not isinstance(exc, OSError):
                raise
            log.log(logging.DEBUG if self.failed else logging.WARNING,
                    "could not save this run's state in %s (%s); the run goes on, but stopped now it would resume "
                    "from %s", self.directory, exc.strerror or exc,
                    f"its state after {self._last()}" if self._last() else "its start")
            self.failed = True
            self.last_save = time.monotonic()  # (tried again when the next save is due, not after every step)
            return
        log.log(logging.INFO if self.saved is None else logging.DEBUG,
                "state saved in %s (%.0f MB, %.1f s) so that a stopped run resumes; removed when the run ends",
                self.file, self.file.stat().st_size / 1e6, time.perf_counter() - started)
        self.saved = _said(state)
        self.last_save = time.monotonic()

    def _last(self) -> str | None:
        """The state a stopped run would resume from, in words: this run's last save, else the one it loaded."""
        return self.saved or (_said(self.loaded) if self.loaded is not None else None)

    def finish(self) -> None:
        """The run is done: its state (and any left by another run into the same --output) goes."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def stopped_note(self) -> str | None:
        """What a stopped run says of its saved state, where it saved one."""
        state = self._last()
        if state is None:
            return None
        return (f"the state after {state} is kept in {self.directory}: run the same command again to resume from "
                "there")


class NoState:
    """Stages run without resuming or saving (a bench script's own use of them)."""

    loaded = None

    def past(self, stage: str) -> bool:
        return False

    def stage(self, name: str, epochs: int, carried: Callable[[], dict] | None = None) -> None:
        return None


NO_STATE = NoState()


class Stage:
    """One stage's view of the run's state: the state to resume it from (None: from its start), and the save after
    each of its epochs. `carried` gives what the state must also hold from the stages before (their losses)."""

    def __init__(self, run: RunState, name: str, epochs: int, carried: Callable[[], dict]) -> None:
        self.run, self.name, self.epochs, self.carried = run, name, epochs, carried
        loaded = run.loaded
        self.resumed = loaded if loaded is not None and loaded["stage"] == name else None

    def restore_random(self) -> None:
        """Put every random generator where it was when the resumed state was saved (after the stage's own
        set-up, before its next epoch, as in the run that saved it)."""
        _set_random_states(self.resumed["random"])

    @property
    def within(self) -> dict | None:
        """The epoch under way when the resumed state was saved (an `Epoch.state()`), where it was saved within one."""
        return None if self.resumed is None else self.resumed.get("within")

    def done(self, epoch: int, payload: Callable[[], dict]) -> None:
        """After epoch `epoch`: `payload()` is what the stage needs to go on from the next."""
        self.run.save(self.name, epoch, self.epochs, lambda: {**self.carried(), **payload(), "within": None})

    def during(self, epoch: int, plan: Epoch, payload: Callable[[], dict]) -> None:
        """After a step of epoch `epoch` (`plan`): `payload()` as for `done`, this epoch's own state besides."""
        if plan.done < len(plan.batches) and self.run.due(within=True):
            self.run.save(self.name, epoch - 1, self.epochs,
                          lambda: {**self.carried(), **payload(), "within": plan.state()},
                          steps=(plan.done, len(plan.batches)))


def _said(state: dict) -> str:
    if state["steps"] is None:
        return f"{state['stage']} epoch {state['epoch']} of {state['epochs']}"
    done, steps = state["steps"]
    return f"step {done} of {steps} of {state['stage']} epoch {state['epoch'] + 1} of {state['epochs']}"


def _named(key: str) -> str:
    return key if key.startswith(("--", "device", "precision", "torch", "scorer")) else "--" + key.replace("_", "-")


def _fingerprint(config: TrainConfig, device: str, precision: str) -> dict[str, object]:
    """What a state must have been saved under to be this run's: every setting that changes what it computes, the
    data files and --model files as they are now (path, size, modification time), the device, precision, torch and
    scorer."""
    settings = {key: value for key, value in json.loads(to_json(config)).items() if key not in _NOT_COMPARED}
    settings["--data files"] = _files_identity(config.data)
    settings["--val-data files"] = _files_identity(config.val_data) if config.val_data else None
    settings["--model files"] = file_listing(Path(config.model))
    settings.update({"device": device, "precision": precision, "torch version": str(torch.__version__),
                     "scorer version": scorer.__version__})
    return settings


def _files_identity(spec: Path) -> list:
    """Each data file a --data or --val-data path names (a file, a directory or a glob), as it is now."""
    return [[str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns]
            for path in expand_inputs(str(spec), tell=False)[0]]




def _random_states() -> dict:
    numpy_state = np.random.get_state(legacy=False)
    key = torch.from_numpy(numpy_state["state"]["key"])  # (a tensor: the state file loads with weights_only)
    return {
        "python": random.getstate(),
        "numpy": {**numpy_state, "state": {**numpy_state["state"], "key": key}},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def _set_random_states(states: dict) -> None:
    random.setstate(states["python"])
    numpy_state = states["numpy"]
    np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": numpy_state["state"]["key"].numpy()}})
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
