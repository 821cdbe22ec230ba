"""The training step loop and batched prediction, shared by training, validation, parity and `run --check`."""

from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional
from tqdm import tqdm

from scorer.config import TrainConfig
from scorer.pytorch import graphs
from scorer.pytorch.epochs import DeviceRows, Epoch
from scorer.text.batches import budget_batches
from scorer.text.tokens import Encoded

log = logging.getLogger("scorer")
_NOTEBOOK_LOG_EVERY = 40
_LAYER = re.compile(r"\.layers?\.(\d+)\.")


def autocast(device: str, precision: str, cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast for the training steps when precision is bf16 (the weights and optimizer stay fp32)."""
    if precision == "bf16":
        return torch.autocast(device, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def to_device(encoded: Encoded, rows: np.ndarray, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids, attention_mask = encoded.pad(rows)
    return (torch.from_numpy(input_ids).to(device, non_blocking=True),
            torch.from_numpy(attention_mask).to(device, non_blocking=True))


class Trainer:
    """AdamW with a linear warm-up/decay schedule over length-bucketed batches; losses are read once per epoch.

    With ema_epochs > 0, an exponential moving average of the weights is what gets validated and kept.
    """

    def __init__(self, model: torch.nn.Module, config: TrainConfig, device: str, precision: str, encoded: Encoded,
                 targets: np.ndarray, progress: bool = True, auxiliary: torch.nn.Module | None = None) -> None:
        self.model, self.config, self.device, self.precision = model, config, device, precision
        # The training steps may run a compiled or graph-captured view of the model (scorer.pytorch.graphs).
        self.forward = graphs.training_forward(model, config.cuda_graphs, config.compile)
        self.data = DeviceRows(encoded, device, targets)
        self.progress = progress
        self.rng = np.random.default_rng(config.seed)
        self.step_losses: list[float] = []
        self.class_weights = _class_weights(targets, model.classifier.out_features, device, config.class_weight)
        groups = _parameter_groups(model, config.learning_rate, config.weight_decay, config.layer_decay)
        # With --rtd-aux, `auxiliary` (training.adapt.ReplacedTokens) adds its loss to every step; its head trains
        # at the full rate, and gradients are clipped over the classifier and that head together.
        self.auxiliary = auxiliary
        self.trained = model if auxiliary is None else torch.nn.ModuleList([model, auxiliary])
        if auxiliary is not None:
            groups += _parameter_groups(auxiliary, config.learning_rate, config.weight_decay, 1.0)
            self.generator = torch.Generator(device).manual_seed(config.seed)
        self.optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, fused=True)
        steps = math.ceil(len(targets) / config.batch_size) * config.epochs
        warmup = int(steps * config.warmup_ratio)
        self.scheduler = linear_scheduler(self.optimizer, warmup, steps)
        self.average = None
        if config.ema_epochs:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            # A moving average over about ema_epochs epochs, whatever the data size (0.998 for CoLA's 268 steps).
            decay = 1.0 - 1.0 / max(1.0, config.ema_epochs * steps / config.epochs)
            self.average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    def state_dict(self) -> dict:
        """What the next epochs depend on (scorer.training.resume): the weights (with --rtd-aux's head), the
        optimizer and schedule, the moving average, the batch order's and the detector's generators, the losses."""
        return {"trained": self.trained.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "average": None if self.average is None else self.average.state_dict(),
                "batches": self.rng.bit_generator.state,
                "generator": self.generator.get_state() if self.auxiliary is not None else None,
                "step_losses": list(self.step_losses)}

    def load_state_dict(self, state: dict) -> None:
        self.trained.load_state_dict(state["trained"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        self.rng.bit_generator.state = state["batches"]
        if self.auxiliary is not None:
            self.generator.set_state(state["generator"])
        self.step_losses = list(state["step_losses"])

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights to validate and keep: the moving average when --ema is on, else the model itself."""
        return self.average.module if self.average is not None else self.model

    def run_epoch(self, epoch: int, resumed: dict | None = None,
                  after_step: Callable[[Epoch], None] | None = None) -> float:
        """Train one epoch and return its mean training loss (the classification loss, without --rtd-aux's).
        `resumed`: an `Epoch.state()` to go on from; `after_step(epoch)` is called after every step (the run's
        saving of its state within an epoch)."""
        self.model.train()
        plan = Epoch(self.data.lengths, self.config.batch_size, self.rng, self.device, resumed)
        bar = tqdm(total=len(plan.batches), initial=plan.done, desc=f"epoch {epoch}/{self.config.epochs}",
                   unit="batch", disable=None if self.progress else True, file=sys.stderr, leave=False)
        with bar:
            mode = self.config.cuda_graphs
            shapes = {} if mode == "off" else {"multiple": graphs.WIDTH_MULTIPLE, "cap": self.config.max_length}
            for batch in self.data.batches(plan.remaining(), **shapes):
                graphs.begin_step(mode)
                plan.record(self._step(*batch))
                bar.update(1)
                if bar.disable and self.progress and plan.done % _NOTEBOOK_LOG_EVERY == 0:
                    log.info("  Batch %5d  of  %5d.    Elapsed: %.0fs.", plan.done, len(plan.batches), plan.seconds())
                if after_step is not None:
                    after_step(plan)
        losses, mean = plan.mean_loss()
        self.step_losses.extend(losses)
        return mean

    def _step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self._loss(input_ids, attention_mask, labels)
        total = loss
        if self.auxiliary is not None:
            total = loss + self.config.rtd_aux * self.auxiliary.loss(self.model.encoder, input_ids, attention_mask,
                                                                     self.generator, self.precision)
        apply_gradients(total, self.optimizer, self.scheduler, self.trained)
        if self.average is not None:
            self.average.update_parameters(self.model)
        return loss.detach()


    def _loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy; with --rdrop, of two dropout passes (one doubled batch) plus their symmetric KL."""
        passes = 2 if self.config.rdrop else 1
        # Graph capture cannot use autocast's weight-cast cache; eager steps keep it.
        with autocast(self.device, self.precision, cache=self.config.cuda_graphs != "captured"):
            logits = self.forward(input_ids.repeat(passes, 1), attention_mask.repeat(passes, 1)).float()
        loss = functional.cross_entropy(logits, labels.repeat(passes), weight=self.class_weights)
        if passes == 2:
            first, second = functional.log_softmax(logits, dim=1).chunk(2)
            kl = functional.kl_div(first, second, log_target=True, reduction="batchmean") \
                + functional.kl_div(second, first, log_target=True, reduction="batchmean")
            loss = loss + self.config.rdrop * kl / 2
        return loss


def _class_weights(targets: np.ndarray, classes: int, device: str, mode: str) -> torch.Tensor | None:
    """'balanced': each class weighted by n / (classes x its count), as scikit-learn does."""
    if mode == "none":
        return None
    counts = np.bincount(targets, minlength=classes).astype(np.float64)
    weights = len(targets) / (classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32, device=device)


def linear_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then linear decay to 0 at `total`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _linear(step, warmup, total))


def apply_gradients(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler, model: torch.nn.Module) -> None:
    """One update: gradients of `loss`, clipped to norm 1, an optimizer step and a scheduler step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()


def _linear(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def _parameter_groups(model: torch.nn.Module, learning_rate: float, weight_decay: float, layer_decay: float
                      ) -> list[dict]:
    """Weight decay on matrices only (not biases or LayerNorm); layer-wise decayed learning rates.

    With layer_decay d < 1, the head trains at the full rate, the top encoder layer at d times it, the one below
    at d², and so on down to the embeddings, so the pretrained lower layers move least. Parameters that share a
    rate and a decay share a group (two groups without layer decay): the fused optimizer launches its kernels once
    per group, so fewer groups mean fewer launches a step, with the same arithmetic for every parameter.
    """
    depth_of = _depth_function(model)
    top = max(depth_of(name) for name, _ in model.named_parameters())
    groups: dict[tuple[float, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        rate = learning_rate * layer_decay ** (top - depth_of(name))
        decays = parameter.ndim >= 2 and "LayerNorm" not in name and "layer_norm" not in name
        group = groups.setdefault((rate, decays), {
            "params": [], "weight_decay": weight_decay if decays else 0.0, "lr": rate,
        })
        group["params"].append(parameter)
    return list(groups.values())


def _depth_function(model: torch.nn.Module):
    """Depth of a parameter: 0 for embeddings, i + 1 for encoder layer i, and above all layers for the rest."""
    layers = [int(match.group(1)) for name, _ in model.named_parameters()
              if (match := _LAYER.search(name)) and name.startswith("encoder.")]
    head = max(layers, default=-1) + 2

    def depth(name: str) -> int:
        if not name.startswith("encoder."):
            return head
        if "embeddings" in name:
            return 0
        match = _LAYER.search(name)
        return int(match.group(1)) + 1 if match else head - 1

    return depth


@torch.no_grad()
def logits_of(model: torch.nn.Module, encoded: Encoded, device: str, max_tokens: int = 8192) -> np.ndarray:
    """Logits for every row (in input order), batched by token budget, in float32.

    Never autocast: validation, parity and `run --check` judge the fp32 model that export reproduces.
    """
    model.eval()
    out = np.zeros((len(encoded), len(model.head_config.labels)), dtype=np.float32)
    for rows in budget_batches(encoded.lengths, max_tokens=max_tokens, max_rows=512):
        input_ids, attention_mask = to_device(encoded, rows, device)
        out[rows] = model(input_ids, attention_mask).float().cpu().numpy()
    return out


def predict(model: torch.nn.Module, encoded: Encoded, device: str, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy against `targets`, and every row's logits."""
    logits = logits_of(model, encoded, device)
    loss = functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets)).item()
    return loss, logits
