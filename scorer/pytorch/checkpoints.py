"""The two kinds of PyTorch checkpoint that `scorer export` and `scorer run --check` take: what `scorer train` writes
(scorer.pytorch.model.SentenceClassifier), and a Hugging Face sequence-classification model, as transformers' `Trainer`
saves one fine-tuned in a notebook (its own head and labels: `TransformersClassifier`)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from scorer.errors import ConfigError, ModelError, first_line
from scorer.manifest import check_readable
from scorer.pytorch.model import (
    HEAD_CONFIG,
    HeadConfig,
    SentenceClassifier,
    backend_copy,
    check_vocabulary,
    from_pretrained,
    position_limit,
    pretrained_tokenizer,
    quiet_transformers,
)
from scorer.text.tokens import TOKENIZER_FILE

_DEFAULT_NAME = re.compile(r"LABEL_(\d+)")  # what transformers calls a label nobody named


def is_sequence_classifier(directory: Path) -> bool:
    """Whether `directory` holds a Hugging Face `*ForSequenceClassification` model (and no scorer head)."""
    if (directory / HEAD_CONFIG).is_file():
        return False
    try:
        architectures = json.loads((directory / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return False
    return any(str(name).endswith("ForSequenceClassification") for name in architectures)


def load_classifier(directory: Path, attn_implementation: str | None = None,
                    max_length: int | None = None) -> nn.Module:
    """The checkpoint in `directory` as a module mapping (input_ids, attention_mask) to logits, with `head_config`
    (labels, max length) and `encoder` (whose `config` holds the shape); `max_length` overrides the checkpoint's."""
    directory = Path(directory)
    if directory.is_dir():
        check_readable(directory)
    if is_sequence_classifier(directory):
        model = TransformersClassifier.load(directory, attn_implementation)
    else:
        model = SentenceClassifier.load(directory, attn_implementation)
    if max_length is not None:
        limit = position_limit(model.encoder.config)
        if max_length > limit:
            raise ConfigError(f"--max-length {max_length} is above {directory}'s position limit {limit}")
        model.head_config = replace(model.head_config, max_length=max_length)
    return model


class TransformersClassifier(nn.Module):
    """A Hugging Face sequence-classification model (encoder, its pooler and head) returning only its logits."""

    def __init__(self, model: nn.Module, head: HeadConfig) -> None:
        super().__init__()
        self.model, self.head_config = model, head

    @property
    def encoder(self) -> nn.Module:
        """The encoder, whose config export reads the shape from, as from a SentenceClassifier's (a property: as an
        attribute it would be a second name for the same weights in the state dict)."""
        return self.model.base_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    @classmethod
    def load(cls, directory: Path, attn_implementation: str | None = None) -> TransformersClassifier:
        quiet_transformers()
        from transformers import AutoModelForSequenceClassification

        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = from_pretrained(AutoModelForSequenceClassification, directory, "classifier", **kwargs)
        config = model.config
        if config.problem_type == "multi_label_classification":
            raise ModelError(f"{directory} is a multi-label classifier (a sigmoid per label); scorer scores "
                             "single-label classifiers (a softmax over the labels)")
        if config.num_labels < 2 or config.problem_type == "regression":
            raise ModelError(f"{directory} is a regression model ({config.num_labels} output); scorer scores "
                             "classifiers with two or more labels")
        labels = label_names(config.id2label, config.num_labels)
        head = HeadConfig(labels=labels, pooling=type(model).__name__, max_length=default_max_length(directory, config),
                          dropout=0.0, label_ids=any(isinstance(label, str) for label in labels))
        return cls(model, head).eval()


def label_names(id2label: dict, count: int) -> list[int | str]:
    """The labels in logit order: transformers' unnamed LABEL_i (and names that are whole numbers) as the numbers,
    so a model fine-tuned on 0/1 labels writes and evaluates 0/1; other names as they are."""
    names = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(count)]
    numbers = [int(match.group(1)) if (match := _DEFAULT_NAME.fullmatch(name)) else
               int(name) if re.fullmatch(r"-?\d+", name) else None for name in names]
    if None in numbers or len(set(numbers)) < count:
        if len(set(names)) < count:
            raise ModelError(f"the model names two labels alike ({names}); fix id2label in its config.json")
        return names
    return numbers


def default_max_length(directory: Path, config: object) -> int:
    """The tokenizer's model_max_length where it sets one, at most the position limit (and 512)."""
    limit = position_limit(config)
    try:
        said = json.loads((directory / "tokenizer_config.json").read_text()).get("model_max_length")
    except (OSError, ValueError, AttributeError):
        said = None
    return int(said) if isinstance(said, int | float) and 2 < said < limit else limit


def checkpoint_tokenizer(directory: Path, vocab_size: int) -> Tokenizer:
    """The checkpoint's fast tokenizer: its tokenizer.json, or, where it kept only the files of a slow tokenizer, the
    one transformers converts them to (model.pretrained_tokenizer); either refused where it has more tokens
    than the model's `vocab_size`."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        return backend_copy(pretrained_tokenizer(directory, vocab_size))
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ModelError(f"{path}: not a readable tokenizer ({first_line(exc)})") from exc
    check_vocabulary(directory, tokenizer.get_vocab_size(with_added_tokens=True), vocab_size)
    return tokenizer
