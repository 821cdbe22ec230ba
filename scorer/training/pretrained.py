"""The encoder `scorer train --model` names: its tokenizer and encoder (with --mlm-epochs, in its masked-LM form),
read from one directory."""

from __future__ import annotations

import functools
from pathlib import Path

from scorer.config import TrainConfig
from scorer.data import snapshot
from scorer.errors import ConfigError
from scorer.pytorch.model import load_encoder, position_limit, pretrained_tokenizer
from scorer.training.adapt import check_mask_token, masked_lm_model


def load_pretrained(config: TrainConfig):
    """The tokenizer, the encoder and (with --mlm-epochs; else None) the masked-LM form (`masked_lm_model`, whose
    encoder is then the one returned) of the model --model names, the max length checked against the encoder. All
    from one directory: one replaced while it is read (a training run finishing into it) is read again
    (scorer.data.snapshot), where its encoder could come from one and its tokenizer from the next."""
    return snapshot.read_whole(Path(config.model), functools.partial(_read, config))


def _read(config: TrainConfig):
    form = masked_lm_model(config.model) if config.mlm_epochs else None
    encoder = form[2] if form else load_encoder(config.model)
    limit = position_limit(encoder.config)
    if config.max_length > limit:
        raise ConfigError(f"--max-length {config.max_length} is above {config.model}'s position limit {limit}")
    tokenizer = pretrained_tokenizer(config.model, encoder.config.vocab_size)
    if form:
        check_mask_token(config.model, tokenizer)
    return tokenizer, encoder, form
