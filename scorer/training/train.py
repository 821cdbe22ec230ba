"""Fine-tune an encoder with a classification head: seeded, length-bucketed, keeping the best epoch."""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from scorer.config import TrainConfig, to_json
from scorer.data import atomic
from scorer.data.lock import sole_writer
from scorer.errors import ConfigError
from scorer.inference.results import softmax
from scorer.machine import fit_torch_threads
from scorer.metrics import confusion_of, threshold_sweep
from scorer.pytorch.graphs import check_compiler
from scorer.pytorch.loop import Trainer, predict
from scorer.pytorch.model import (
    HEAD_CONFIG,
    HeadConfig,
    SentenceClassifier,
    backend_copy,
    check_layer_options,
    keep_bottom_layers,
    reinitialize_top_layers,
)
from scorer.text.tokens import Encoded, TextEncoder
from scorer.training import plot
from scorer.training.adapt import ReplacedTokens, masked_lm, replaced_token_detection
from scorer.training.dataset import TrainingData, check_coverage, load_training_data, refuse_hollow
from scorer.training.device import device_memory, resolve_device, resolve_precision, seed_everything, settle_precision
from scorer.training.pretrained import load_pretrained
from scorer.training.resume import NO_STATE, NoState, RunState, Stage

log = logging.getLogger("scorer")


@dataclass(frozen=True)
class EpochResult:
    """One epoch's figures, as written to metrics.json."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_mcc: float
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced and where."""

    checkpoint: Path
    epochs: list[EpochResult]
    best_epoch: int
    device: str
    precision: str
    train_rows: int
    val_rows: int
    # A two-label model's validation figures at each threshold on its score (scorer.metrics.threshold_sweep)
    thresholds: dict | None = None
    stopped_early: int = 0  # the --patience that ended fine-tuning before its last epoch (0: it ran them all)

    @property
    def best(self) -> EpochResult:
        return self.epochs[self.best_epoch - 1]


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Run the whole training job described by `config` and write the checkpoint directory."""
    atomic.check_keeps(config.output, {"--model": config.model, "--data": config.data, "--val-data": config.val_data})
    atomic.check_writable(config.output, config.overwrite, marker=HEAD_CONFIG)
    with sole_writer(config.output, "train"):
        seed_everything(config.seed)
        fit_torch_threads()
        device = resolve_device(config.device)
        if config.cuda_graphs != "off" and device != "cuda":
            raise ConfigError(f"--cuda-graphs needs a CUDA device, and this run is on {device}: drop --cuda-graphs, "
                              "or use --device cuda/auto on a machine with a GPU")
        check_compiler(config.compile, config.cuda_graphs, device)
        precision = resolve_precision(config.precision, device)
        data = load_training_data(config)
        with device_memory(config, device):
            return _train(config, device, precision, data, progress)


def _train(config: TrainConfig, device: str, precision: str, data: TrainingData, progress: bool) -> TrainResult:
    hf_tokenizer, encoder_model, masked_form = load_pretrained(config)
    check_layer_options(encoder_model, config.keep_layers, config.reinit_layers)
    text_encoder = TextEncoder(backend_copy(hf_tokenizer), config.max_length)
    train_set = text_encoder.encode(data.train_texts)
    check_coverage(train_set, hf_tokenizer, config)
    val_set = text_encoder.encode(data.val_texts)
    refuse_hollow(data.train_texts + data.val_texts, np.concatenate([train_set.lengths, val_set.lengths]),
                   text_encoder.bare_length, config)
    precision = settle_precision(config, precision, encoder_model, train_set, device)
    state = RunState(config, device, precision)
    try:
        result = _stages(config, device, precision, data, progress, state, hf_tokenizer, (encoder_model, masked_form),
                         train_set, val_set)
    except KeyboardInterrupt:
        note = state.stopped_note()
        if note:
            log.warning("stopped; %s", note)
        raise
    state.finish()
    return result


def _stages(config: TrainConfig, device: str, precision: str, data: TrainingData, progress: bool, state: RunState,
            hf_tokenizer, pretrained: tuple, train_set: Encoded, val_set: Encoded) -> TrainResult:
    """The self-supervised stages, fine-tuning and the checkpoint, each resumed from `state` where it was saved;
    `pretrained`: the encoder and its masked-LM form (or None), as `load_pretrained` read them."""
    encoder_model, masked_form = pretrained
    encoder_model, adapt_losses = _adapt(encoder_model, config, hf_tokenizer, train_set, device, precision, state,
                                         masked_form)
    keep_bottom_layers(encoder_model, config.keep_layers)
    reinitialize_top_layers(encoder_model, config.reinit_layers)
    head = HeadConfig(labels=data.labels, pooling=config.pooling, max_length=config.max_length, dropout=config.dropout)
    model = SentenceClassifier(encoder_model, head).to(device)
    log.info(
        "training on %s (%s): %d train rows, %d validation rows (%s), labels %s, %d epoch%s",
        device, precision, len(data.train_texts), len(data.val_texts), data.val_source, data.labels, config.epochs,
        "" if config.epochs == 1 else "s",
    )
    auxiliary = (ReplacedTokens.build(model.encoder, train_set, hf_tokenizer.all_special_ids, device, config.rtd_draw)
                 if config.rtd_aux else None)
    trainer = Trainer(model, config, device, precision, train_set, data.train_targets, progress=progress,
                      auxiliary=auxiliary)
    stage = state.stage("fine-tuning", config.epochs, lambda: {"adapt_losses": adapt_losses})
    epochs, best_epoch, best_state, best_logits = _fine_tune(trainer, val_set, data, config, device, stage)
    model.load_state_dict(best_state)
    result = TrainResult(config.output, epochs, best_epoch, device, precision, len(data.train_texts),
                         len(data.val_texts), _thresholds(head, best_logits, data.val_targets),
                         config.patience if len(epochs) < config.epochs else 0)
    _write_checkpoint(model, hf_tokenizer, config, data, result, trainer.step_losses, adapt_losses)
    log.info("best epoch %d by %s: validation accuracy %.4f, MCC %.4f; checkpoint in %s",
             best_epoch, config.select, result.best.val_accuracy, result.best.val_mcc, config.output)
    advice = threshold_advice(result.thresholds)
    if advice:
        log.info("%s", advice)
    return result


def _thresholds(head: HeadConfig, logits: np.ndarray, targets: np.ndarray) -> dict | None:
    """How a two-label model's kept epoch would have labelled its validation rows at each threshold on its score
    (the positive label's probability); None for more labels."""
    if len(head.labels) != 2:
        return None
    positive = head.labels.index(head.positive_label)
    sweep = threshold_sweep(targets == positive, softmax(logits)[:, positive])
    return {"positive_label": head.positive_label, **sweep}


def threshold_advice(thresholds: dict | None) -> str | None:
    """Where a threshold other than 0.5 (the more probable label) gave the best validation MCC, which, and how to
    label by it."""
    if not thresholds or thresholds["best_mcc_threshold"] == 0.5:
        return None
    best = thresholds["best_mcc_threshold"]
    at_half = next(row["mcc"] for row in thresholds["sweep"] if row["threshold"] == 0.5)
    return (f"validation MCC is highest at threshold {best:.2f} on the score ({thresholds['best_mcc']:.4f}, "
            f"{at_half:.4f} by the more probable label); to label by it, export with --threshold {best:g} (chosen on "
            "the rows that chose the epoch: confirm it on other labelled rows)")




def _fine_tune(trainer: Trainer, val_set: Encoded, data: TrainingData, config: TrainConfig, device: str,
               stage: Stage) -> tuple[list[EpochResult], int, dict[str, torch.Tensor], np.ndarray]:
    """The fine-tuning epochs, each validated and logged: every epoch's result, the epoch kept by config.select,
    its weights (on the CPU) and its validation logits; resumed from `stage`'s saved state, saved within and after
    each."""
    epochs: list[EpochResult] = []
    best_state, best_epoch, best_logits = {}, 0, None
    within = stage.within
    if stage.resumed is not None:
        saved = stage.resumed
        trainer.load_state_dict(saved["trainer"])
        epochs = [EpochResult(**epoch) for epoch in saved["results"]]
        best_epoch, best_state, best_logits = saved["best_epoch"], saved["best_state"], saved["best_logits"]
        best_logits = None if best_logits is None else best_logits.numpy()
        stage.restore_random()
    for epoch in range(len(epochs) + 1, config.epochs + 1):
        started = time.perf_counter() - (within["seconds"] if within else 0.0)  # (an epoch's time before a stop too)
        log.info("")
        log.info("======== Epoch %d / %d ========", epoch, config.epochs)  # before the epoch's batch lines
        state = functools.partial(_fine_tuning_state, trainer, epochs, best_epoch, best_state, best_logits)
        train_loss = trainer.run_epoch(epoch, within, functools.partial(stage.during, epoch, payload=state))
        within = None
        _check_finite(train_loss, f"epoch {epoch}'s loss", "--lr", config.learning_rate)
        val_loss, logits = predict(trainer.evaluated, val_set, device, data.val_targets)
        confusion = confusion_of(data.labels, data.val_targets, logits.argmax(axis=1))
        result = EpochResult(epoch, train_loss, val_loss, confusion.accuracy(), confusion.mcc(),
                             time.perf_counter() - started)
        epochs.append(result)
        _log_epoch(result)
        if best_epoch == 0 or _better(result, epochs[best_epoch - 1], config.select):
            best_epoch, best_logits = epoch, logits
            best_state = {key: value.detach().to("cpu", copy=True)
                          for key, value in trainer.evaluated.state_dict().items()}
        if config.patience and epoch - best_epoch >= config.patience and epoch < config.epochs:
            log.info("no better validation %s in the %d epoch(s) since epoch %d: stopping early, after epoch %d of %d "
                     "(--patience %d)", config.select.replace("mcc", "MCC"), epoch - best_epoch, best_epoch, epoch,
                     config.epochs, config.patience)
            break
        stage.done(epoch, functools.partial(_fine_tuning_state, trainer, epochs, best_epoch, best_state, best_logits))
    return epochs, best_epoch, best_state, best_logits


def _fine_tuning_state(trainer: Trainer, epochs: list[EpochResult], best_epoch: int, best_state: dict,
                       best_logits: np.ndarray) -> dict:
    """What fine-tuning saves after an epoch (scorer.training.resume), besides the state every stage saves."""
    return {"trainer": trainer.state_dict(), "results": [asdict(epoch) for epoch in epochs], "best_epoch": best_epoch,
            "best_state": best_state, "best_logits": None if best_logits is None else torch.from_numpy(best_logits)}


def _check_finite(loss: float, what: str, option: str, rate: float) -> None:
    """Stop a run whose loss has diverged: its weights are NaN or infinite, and so would every score be."""
    if not math.isfinite(loss):
        raise ConfigError(f"training diverged: {what} is {loss}; nothing was written; lower {option} (now {rate:g})")


def _better(candidate: EpochResult, best: EpochResult, select: str) -> bool:
    if select == "last":
        return True
    key = "val_mcc" if select == "mcc" else "val_accuracy"
    return getattr(candidate, key) > getattr(best, key)


def _log_epoch(result: EpochResult) -> None:
    log.info("  Average training loss: %.4f", result.train_loss)
    log.info("  Validation loss: %.4f", result.val_loss)
    log.info("  Validation accuracy: %.4f", result.val_accuracy)
    log.info("  Validation MCC: %.4f", result.val_mcc)
    log.info("  Epoch took: %s", _clock(result.seconds))


def _adapt(encoder_model, config: TrainConfig, hf_tokenizer, train_set, device: str, precision: str,
           state: RunState | NoState = NO_STATE, masked_form=None):
    """The encoder after the optional self-supervised stages on the training sentences: masked-LM epochs (on
    `masked_form`, the model's masked-LM form, whose encoder `encoder_model` is), then replaced-token-detection
    epochs; and each stage's loss per epoch (empty lists for a stage that is off). A stage that a resumed state
    comes after is not run again: its losses come from the state, and the encoder's weights with the later
    stage's."""
    losses: dict[str, list[float]] = {"mlm_losses": [], "rtd_losses": []}

    def carried() -> dict:  # what a stage's saved state also holds: the losses of the stages before it
        return {"adapt_losses": {key: list(value) for key, value in losses.items()}}

    if config.mlm_epochs and state.past("masked-LM"):  # (encoder_model is already of the form the stage leaves)
        losses["mlm_losses"] = list(state.loaded["adapt_losses"]["mlm_losses"])
    elif config.mlm_epochs:
        log.info("masked-LM training of the encoder on the %d training sentences, %d epochs", len(train_set),
                 config.mlm_epochs)
        encoder_model, losses["mlm_losses"] = masked_lm(masked_form, train_set, hf_tokenizer, config.mlm_epochs,
                                                        config.mlm_lr, config.batch_size, device, precision,
                                                        config.seed, state.stage("masked-LM", config.mlm_epochs,
                                                                                 carried))
    if config.rtd_epochs and state.past("replaced-token"):
        losses["rtd_losses"] = list(state.loaded["adapt_losses"]["rtd_losses"])
    elif config.rtd_epochs:
        log.info("replaced-token detection on the %d training sentences, %d epochs", len(train_set),
                 config.rtd_epochs)
        encoder_model, losses["rtd_losses"] = replaced_token_detection(
            encoder_model, train_set, hf_tokenizer.all_special_ids, config.rtd_epochs, config.rtd_lr,
            config.batch_size, device, precision, config.seed, config.rtd_draw,
            state.stage("replaced-token", config.rtd_epochs, carried))
    for stage, what, option, rate in (("mlm_losses", "the masked-LM epochs' loss", "--mlm-lr", config.mlm_lr),
                                      ("rtd_losses", "the replaced-token epochs' loss", "--rtd-lr", config.rtd_lr)):
        _check_finite(losses[stage][-1] if losses[stage] else 0.0, what, option, rate)
    return encoder_model, losses


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _write_checkpoint(model, hf_tokenizer, config: TrainConfig, data: TrainingData, result: TrainResult,
                      step_losses: list[float], adapt_losses: dict[str, list[float]]) -> None:
    with atomic.atomic_dir(config.output, config.overwrite, HEAD_CONFIG) as staging:
        model.to("cpu").save(staging)
        hf_tokenizer.save_pretrained(str(staging))
        (staging / "train_config.json").write_text(to_json(replace(config, overwrite=False)))
        metrics = {
            "best_epoch": result.best_epoch,
            "selected_by": config.select,
            "stopped_early": bool(result.stopped_early),
            "device": result.device,
            "precision": result.precision,
            "cpu_threads": torch.get_num_threads(),  # (PyTorch's: the cores this process may use, scorer.machine)
            "train_rows": result.train_rows,
            "val_rows": result.val_rows,
            "val_source": data.val_source,
            "labels": data.labels,
            **adapt_losses,
            "epochs": [asdict(epoch) for epoch in result.epochs],
            "thresholds": result.thresholds,
        }
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        plot.training_loss(step_losses, [e.train_loss for e in result.epochs], [e.val_loss for e in result.epochs],
                           result.best_epoch, staging / "training_loss.png")
