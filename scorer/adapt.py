"""Task-adaptive pretraining: masked-LM training of the encoder on the training sentences, before fine-tuning.

The packaged all-MiniLM-L6-v2 was trained to embed sentences, which wore away much of the token-level syntax a
grammaticality task needs (bench/RESULTS.md, layer probe). Masked-LM training on the task's own training
sentences (Gururangan et al., 2020, "Don't stop pretraining") asks for that syntax again. The encoder keeps its
weights; the MLM head comes from the checkpoint when it has one, else it starts fresh (the packaged model has
none). Only the training split is used, never the validation rows.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from scorer.errors import ConfigError
from scorer.loop import DeviceRows, apply_gradients, autocast, bucketed_batches, linear_scheduler
from scorer.model import quiet_transformers
from scorer.tokens import Encoded

log = logging.getLogger("scorer")
MASK_RATE = 0.15  # of the ordinary tokens; of those 80% become [MASK], 10% a random token, 10% stay
_HEADS = ("cls", "lm_head")  # the MLM head's attribute in BERT-like and RoBERTa-like masked-LM models


def masked_lm(model_dir, encoded: Encoded, tokenizer, epochs: int, learning_rate: float, batch_size: int,
              device: str, precision: str, seed: int) -> tuple[nn.Module, list[float]]:
    """The encoder of `model_dir` after `epochs` of masked-LM training on `encoded`, and the loss per epoch."""
    quiet_transformers()
    from transformers import AutoModelForMaskedLM

    try:
        model = AutoModelForMaskedLM.from_pretrained(str(model_dir), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--mlm-epochs: {model_dir} has no masked-LM form in transformers ({exc})") from exc
    head = next((getattr(model, name) for name in _HEADS if hasattr(model, name)), None)
    if head is None or tokenizer.mask_token_id is None:
        raise ConfigError(f"--mlm-epochs: {model_dir} is not a BERT- or RoBERTa-style masked-LM model")
    encoder = getattr(model, model.base_model_prefix)
    model.to(device).train()
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=device)
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device).manual_seed(seed)
    steps = math.ceil(len(encoded) / batch_size) * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01, fused=True)
    scheduler = linear_scheduler(optimizer, steps // 10, steps)
    data = DeviceRows(encoded, device)
    losses = []
    for epoch in range(1, epochs + 1):
        started, epoch_losses = time.perf_counter(), []
        for input_ids, attention_mask, _ in data.batches(bucketed_batches(encoded.lengths, batch_size, rng)):
            masked, chosen, targets = _mask(input_ids, attention_mask, special, tokenizer.mask_token_id,
                                            model.config.vocab_size, generator)
            if not len(targets):  # a batch of very short sentences can draw no token to mask
                continue
            with autocast(device, precision):
                hidden = encoder(input_ids=masked, attention_mask=attention_mask).last_hidden_state
                logits = head(hidden[chosen])  # the vocabulary projection only where a token was masked
            loss = functional.cross_entropy(logits.float(), targets)
            apply_gradients(loss, optimizer, scheduler, model)
            epoch_losses.append(loss.detach())
        losses.append(float(torch.stack(epoch_losses).float().mean()))
        log.info("masked-LM epoch %d / %d: loss %.4f (%.0fs)", epoch, epochs, losses[-1], time.perf_counter() - started)
    return encoder.eval(), losses


def _mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, special: torch.Tensor, mask_id: int, vocab: int,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT's masking: the inputs with MASK_RATE of ordinary tokens replaced, which were chosen, their targets."""
    ordinary = attention_mask.bool() & ~torch.isin(input_ids, special)
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    chosen = ordinary & (draw < MASK_RATE)
    roll = draw / MASK_RATE  # uniform in [0, 1) again where chosen
    masked = input_ids.masked_fill(chosen & (roll < 0.8), mask_id)
    random_tokens = chosen & (roll >= 0.8) & (roll < 0.9)
    noise = torch.randint(0, vocab, input_ids.shape, generator=generator, device=input_ids.device)
    masked = torch.where(random_tokens, noise, masked)
    return masked, chosen, input_ids[chosen]
