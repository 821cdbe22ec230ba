"""Self-supervised stages on the training sentences before fine-tuning (task-adaptive pretraining).

The packaged all-MiniLM-L6-v2 was trained to embed sentences, which wore away much of the token-level syntax a
grammaticality task needs (bench/RESULTS.md, layer probe). Two objectives ask for that syntax again on the task's
own training sentences (Gururangan et al., 2020, "Don't stop pretraining"), never the validation rows:
- masked-LM (`masked_lm`): BERT's objective; the MLM head comes from the checkpoint when it has one, else it
  starts fresh (the packaged model has none);
- replaced-token detection (`replaced_token_detection`): ELECTRA's discriminator objective on corruptions made
  without a generator model (`_corrupt`); scorer train's default.
Both share one training loop (`_epochs`); only the encoder is kept.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from scorer.errors import ConfigError
from scorer.pytorch.epochs import DeviceRows, Epoch
from scorer.pytorch.loop import apply_gradients, autocast, linear_scheduler
from scorer.pytorch.model import check_encoder_dir, quiet_transformers
from scorer.text.tokens import Encoded
from scorer.training.resume import Stage

log = logging.getLogger("scorer")
MASK_RATE = 0.15  # of the ordinary tokens; of those 80% become [MASK], 10% a random token, 10% stay
# Replaced-token detection's corruptions, as shares of the ordinary tokens (see _corrupt).
SWAP_RATE, REPLACE_RATE, DELETE_RATE, INSERT_RATE = 0.075, 0.075, 0.05, 0.05
# The MLM head's attribute in BERT-like, RoBERTa-like and ALBERT masked-LM models (run on the masked tokens alone);
# other families' (ModernBERT, DistilBERT, ELECTRA) are run as the whole model's forward
_HEADS = ("cls", "lm_head", "predictions")


def masked_lm(form: tuple[nn.Module, nn.Module, nn.Module], encoded: Encoded, tokenizer, epochs: int,
              learning_rate: float, batch_size: int, device: str, precision: str, seed: int,
              stage: Stage | None = None) -> tuple[nn.Module, list[float]]:
    """The encoder of a model in its masked-LM `form` (`masked_lm_model`) after `epochs` of masked-LM training on
    `encoded`, and the loss per epoch."""
    model, head, encoder = form
    model.to(device).train()
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=device)

    def step(input_ids: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator):
        masked, chosen, targets = _mask(input_ids, attention_mask, special, tokenizer.mask_token_id,
                                        model.config.vocab_size, generator)
        if not len(targets):  # a batch of very short sentences can draw no token to mask
            return None
        with autocast(device, precision):
            if head is None:
                logits = model(input_ids=masked, attention_mask=attention_mask).logits[chosen]
            else:
                hidden = encoder(input_ids=masked, attention_mask=attention_mask).last_hidden_state
                logits = head(hidden[chosen])  # the vocabulary projection only where a token was masked
        return functional.cross_entropy(logits.float(), targets)

    losses = _epochs("masked-LM", model, step, encoded, epochs, learning_rate, batch_size, device, seed, stage)
    return encoder.eval(), losses


def masked_lm_model(model_dir) -> tuple[nn.Module, nn.Module | None, nn.Module]:
    """`model_dir` in its masked-LM form: the whole model, its MLM head (None where it is not one module: the whole
    model's forward is run then) and its encoder (which, for BERT, has no pooler: the encoder a run with
    --mlm-epochs fine-tunes). Its tokenizer must have a mask token (`check_mask_token`)."""
    quiet_transformers()
    from transformers import AutoModelForMaskedLM

    check_encoder_dir(model_dir)  # (before transformers, whose message for a missing one is of a download)

    try:
        model = AutoModelForMaskedLM.from_pretrained(str(model_dir), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--mlm-epochs: {model_dir} has no masked-LM form in transformers ({exc})") from exc
    head = next((getattr(model, name) for name in _HEADS if hasattr(model, name)), None)
    return model, head, getattr(model, model.base_model_prefix)


def check_mask_token(model_dir, tokenizer) -> None:
    if tokenizer.mask_token_id is None:
        raise ConfigError(f"--mlm-epochs: {model_dir} is not a BERT- or RoBERTa-style masked-LM model (its tokenizer "
                          "has no mask token)")


def replaced_token_detection(encoder: nn.Module, encoded: Encoded, special_ids: list[int], epochs: int,
                             learning_rate: float, batch_size: int, device: str, precision: str, seed: int,
                             draw: str = "frequency", stage: Stage | None = None) -> tuple[nn.Module, list[float]]:
    """`encoder` after `epochs` of replaced-token detection (`ReplacedTokens`) on `encoded`, and the loss per
    epoch. Only the encoder is kept."""
    encoder.to(device).train()
    objective = ReplacedTokens.build(encoder, encoded, special_ids, device, draw)

    def step(input_ids: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator):
        return objective.loss(encoder, input_ids, attention_mask, generator, precision)

    losses = _epochs("replaced-token", nn.ModuleList([encoder, objective]), step, encoded, epochs, learning_rate,
                     batch_size, device, seed, stage)
    return encoder.eval(), losses


class ReplacedTokens(nn.Module):
    """ELECTRA's discriminator objective, without a generator model: a batch is corrupted (`_corrupt`; `draws` say
    where replaced and inserted tokens come from), and a small head on every token's last hidden state says which
    tokens changed, or follow a deleted one. The replaced-token stage trains on it alone; `scorer train
    --rtd-aux W` adds W times it to the classification loss of every fine-tuning step."""

    def __init__(self, width: int, special: torch.Tensor, draws: Draws) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))
        self.special, self.draws = special, draws

    @classmethod
    def build(cls, encoder: nn.Module, encoded: Encoded, special_ids: list[int], device: str,
              draw: str = "frequency") -> ReplacedTokens:
        """A fresh head for `encoder`, drawing from the token frequencies (or bigrams) of `encoded`."""
        special = torch.tensor(sorted(set(special_ids)), device=device)
        draws = Draws.from_encoded(encoded, special_ids, device, context=draw == "context")
        return cls(encoder.config.hidden_size, special, draws).to(device)

    def loss(self, encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             generator: torch.Generator, precision: str) -> torch.Tensor:
        """Binary cross-entropy of the head's changed-or-not over the ordinary tokens of a corrupted copy."""
        corrupted, mask, ordinary, changed = _corrupt(input_ids, attention_mask, self.special, self.draws, generator)
        with autocast(input_ids.device.type, precision):
            hidden = encoder(input_ids=corrupted, attention_mask=mask).last_hidden_state
            logits = self.head(hidden[ordinary]).squeeze(-1)
        return functional.binary_cross_entropy_with_logits(logits.float(), changed[ordinary].float())


class Draws:
    """Where replaced and inserted tokens come from. By frequency: drawn by the training sentences' token
    frequencies, whatever stands around them (mostly function words). In context (`followers` given): drawn among
    the tokens that follow the new token's left neighbour (as it stood before the batch's replacements) somewhere
    in the training sentences, by how often they do, so that the change reads right from the left and the detector
    has to weigh the words after it too; a neighbour that no ordinary token ever follows falls back to frequency.
    `followers` is (starts, sizes, tokens): the tokens that follow token t are tokens[starts[t]:starts[t] +
    sizes[t]], with repeats."""

    def __init__(self, frequencies: torch.Tensor,
                 followers: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
        self.frequencies, self.followers = frequencies, followers

    @classmethod
    def from_encoded(cls, encoded: Encoded, special_ids: list[int], device: str, context: bool) -> Draws:
        counts = np.bincount(encoded.ids, minlength=int(encoded.ids.max()) + 1).astype(np.float64)
        counts[[token for token in special_ids if token < len(counts)]] = 0
        frequencies = torch.from_numpy(counts / counts.sum()).float().to(device)
        if not context:
            return cls(frequencies)
        left, right = encoded.ids[:-1], encoded.ids[1:]
        pairs = ~np.isin(right, special_ids)
        pairs[encoded.offsets[1:-1] - 1] = False  # no pair across two sentences
        order = np.argsort(left[pairs], kind="stable")
        lefts, tokens = left[pairs][order], right[pairs][order]
        vocabulary = np.arange(len(counts))
        starts = np.searchsorted(lefts, vocabulary)
        sizes = np.searchsorted(lefts, vocabulary, side="right") - starts
        followers = tuple(torch.from_numpy(np.asarray(a, dtype=np.int64)).to(device) for a in (starts, sizes, tokens))
        return cls(frequencies, followers)

    def draw(self, previous: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A token for each place whose left neighbour is `previous` (1-D)."""
        drawn = _draw(self.frequencies, len(previous), generator)
        if self.followers is None or not len(previous):
            return drawn
        starts, sizes, tokens = self.followers
        known = previous < len(starts)
        previous = torch.where(known, previous, 0)
        size = torch.where(known, sizes[previous], 0)
        pick = torch.rand(len(previous), generator=generator, device=previous.device) * size
        index = (starts[previous] + pick.long().clamp(max=torch.clamp(size - 1, min=0))).clamp(max=len(tokens) - 1)
        return torch.where(size > 0, tokens[index], drawn)


def _epochs(name: str, model: nn.Module, step, encoded: Encoded, epochs: int, learning_rate: float, batch_size: int,
            device: str, seed: int, stage: Stage | None = None) -> list[float]:
    """The loop both stages share: AdamW (weight decay 0.01) with 10% linear warm-up and linear decay over `epochs`
    of length-bucketed batches of `encoded`. `step(input_ids, attention_mask, generator)` gives a batch's loss, or
    None to skip the batch. Returns the mean loss per epoch (read once per epoch: no host sync per step). With a
    `stage` (scorer.training.resume), it resumes from the stage's saved state and saves its own within and after
    each epoch."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device).manual_seed(seed)
    steps = math.ceil(len(encoded) / batch_size) * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01, fused=True)
    scheduler = linear_scheduler(optimizer, steps // 10, steps)
    data = DeviceRows(encoded, device)
    losses, first, within = [], 1, None
    if stage is not None and stage.resumed is not None:
        saved = stage.resumed
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        rng.bit_generator.state, losses, first = saved["batches"], list(saved["losses"]), saved["epoch"] + 1
        generator.set_state(saved["generator"])
        within = stage.within
        stage.restore_random()

    def state() -> dict:  # what the stage saves, within an epoch and after it
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "batches": rng.bit_generator.state, "generator": generator.get_state(), "losses": list(losses)}

    for epoch in range(first, epochs + 1):
        plan, within = Epoch(encoded.lengths, batch_size, rng, device, within), None
        for input_ids, attention_mask, _ in data.batches(plan.remaining()):
            loss = step(input_ids, attention_mask, generator)
            if loss is not None:
                apply_gradients(loss, optimizer, scheduler, model)
            plan.record(loss)
            if stage is not None:
                stage.during(epoch, plan, state)
        losses.append(plan.mean_loss()[1])
        log.info("%s epoch %d / %d: loss %.4f (%.0fs)", name, epoch, epochs, losses[-1], plan.seconds())
        if stage is not None:
            stage.done(epoch, state)
    return losses


def _corrupt(input_ids: torch.Tensor, attention_mask: torch.Tensor, special: torch.Tensor, draws: Draws,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ungrammatical-looking copies of a batch: SWAP_RATE of the ordinary tokens swap places with their right
    neighbour, REPLACE_RATE become a drawn token (`Draws`), and of the tokens left alone DELETE_RATE are dropped
    and INSERT_RATE get a drawn token inserted before them. Returns the new ids, their attention mask, the mask of
    ordinary tokens, and the labels: tokens that differ from the input at their place, inserted tokens, and each
    token that follows a deleted one."""
    ordinary = _ordinary(input_ids, attention_mask, special)
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    swap = ordinary & (draw < SWAP_RATE)
    swap[:, :-1] &= ordinary[:, 1:]
    swap[:, -1] = False
    swap[:, 1:] &= ~swap[:, :-1].clone()  # a token swapped with its left neighbour starts no swap of its own
    replace = ordinary & (draw >= SWAP_RATE) & (draw < SWAP_RATE + REPLACE_RATE)
    replace[:, 1:] &= ~swap[:, :-1]
    corrupted = input_ids.clone()
    left, right = swap.nonzero(as_tuple=True)
    corrupted[left, right] = input_ids[left, right + 1]
    corrupted[left, right + 1] = input_ids[left, right]
    rows, columns = replace.nonzero(as_tuple=True)
    corrupted[rows, columns] = draws.draw(corrupted[rows, (columns - 1).clamp(min=0)], generator)
    changed = corrupted != input_ids
    left_alone = ordinary & ~changed
    delete = left_alone & (draw >= 1 - DELETE_RATE)
    insert = left_alone & (draw >= 1 - DELETE_RATE - INSERT_RATE) & ~delete
    return _insert_delete(corrupted, attention_mask, changed, delete, insert, special, draws, generator)


def _insert_delete(input_ids: torch.Tensor, attention_mask: torch.Tensor, changed: torch.Tensor, delete: torch.Tensor,
                   insert: torch.Tensor, special: torch.Tensor, draws: Draws,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows with the `delete` tokens dropped and a drawn token inserted before each `insert` token, re-padded."""
    # Each kept token moves left by the deletions before it and right by the insertions up to and including it.
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    moved = positions - (torch.cumsum(delete.long(), 1) - delete.long()) + torch.cumsum(insert.long(), 1)
    lengths = attention_mask.sum(1) - delete.sum(1) + insert.sum(1)
    mask = (torch.arange(int(lengths.max()), device=input_ids.device)[None, :] < lengths[:, None]).long()
    ids = torch.zeros_like(mask, dtype=input_ids.dtype)
    labels = torch.zeros_like(mask, dtype=torch.bool)
    rows, columns = (attention_mask.bool() & ~delete).nonzero(as_tuple=True)
    ids[rows, moved[rows, columns]] = input_ids[rows, columns]
    labels[rows, moved[rows, columns]] = changed[rows, columns]
    rows, columns = insert.nonzero(as_tuple=True)
    # The new token's left neighbour is a kept token, already in place (an inserted token never follows another).
    ids[rows, moved[rows, columns] - 1] = draws.draw(ids[rows, (moved[rows, columns] - 2).clamp(min=0)], generator)
    labels[rows, moved[rows, columns] - 1] = True
    rows, columns = delete.nonzero(as_tuple=True)  # the next kept token lands where the deleted one would have
    labels[rows, moved[rows, columns]] = True
    ordinary = _ordinary(ids, mask, special)
    return ids, mask, ordinary, labels & ordinary  # a deletion just before [SEP] labels nothing


def _ordinary(input_ids: torch.Tensor, attention_mask: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """Where a row holds a real token that is not a special one ([CLS], [SEP], padding...)."""
    return attention_mask.bool() & ~torch.isin(input_ids, special)


def _draw(frequencies: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    if not count:
        return torch.zeros(0, dtype=torch.long, device=frequencies.device)
    return torch.multinomial(frequencies, count, replacement=True, generator=generator)


def _mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, special: torch.Tensor, mask_id: int, vocab: int,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT's masking: the inputs with MASK_RATE of ordinary tokens replaced, which were chosen, their targets."""
    ordinary = _ordinary(input_ids, attention_mask, special)
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    chosen = ordinary & (draw < MASK_RATE)
    roll = draw / MASK_RATE  # uniform in [0, 1) again where chosen
    masked = input_ids.masked_fill(chosen & (roll < 0.8), mask_id)
    random_tokens = chosen & (roll >= 0.8) & (roll < 0.9)
    noise = torch.randint(0, vocab, input_ids.shape, generator=generator, device=input_ids.device)
    masked = torch.where(random_tokens, noise, masked)
    return masked, chosen, input_ids[chosen]
