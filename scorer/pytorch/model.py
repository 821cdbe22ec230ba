"""The classifier: a Hugging Face encoder, a pooling of its hidden states, and a linear head."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from scorer.config import POOLINGS
from scorer.errors import ConfigError, ModelError, first_line
from scorer.manifest import MANIFEST, check_readable

HEAD_CONFIG = "scorer_head.json"
HEAD_WEIGHTS = "scorer_head.safetensors"
_PADDING_FLOOR = -1e4  # below any hidden state, and an fp16 number: what max pooling sees at padding
# A cut-off or foreign weights file: safetensors' header errors, torch's size mismatches, a damaged pickle.
DAMAGED_WEIGHTS = (SafetensorError, RuntimeError, pickle.UnpicklingError, EOFError)
# The files a fast tokenizer is built from: its own, or a slow one's that transformers converts (WordPiece's vocabulary,
# byte-level BPE's, SentencePiece's models).
TOKENIZER_SOURCES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model",
                     "tokenizer.model")
# Models whose position ids start after the padding index, so two positions are not usable for tokens.
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer"}


@dataclass(frozen=True)
class HeadConfig:
    """What the classification head needs beyond the encoder: labels, pooling and the trained length."""

    labels: list[int | str]
    pooling: str
    max_length: int
    dropout: float = 0.1
    label_ids: bool = False  # whether files may write a label as its index (scorer.data.labels.LabelIndex)

    @property
    def positive_label(self) -> int | str:
        """The label whose probability is written as `score`: 1 (or True) if present, else the last label."""
        for candidate in (1, "1", "true", "True", "yes", "positive"):
            if candidate in self.labels:
                return candidate
        return self.labels[-1]


class SentenceClassifier(nn.Module):
    """Encoder + pooling + dropout + linear; forward(input_ids, attention_mask) returns logits."""

    def __init__(self, encoder: nn.Module, head: HeadConfig) -> None:
        super().__init__()
        if head.pooling not in POOLINGS:
            raise ConfigError(f"pooling '{head.pooling}' is not one of {', '.join(POOLINGS)}")
        self.encoder = encoder
        self.head_config = head
        self.dropout = nn.Dropout(head.dropout)
        width = encoder.config.hidden_size * (2 if head.pooling == "mean-max" else 1)
        self.classifier = nn.Linear(width, len(head.labels))
        if head.pooling == "mix":
            self.classifier.register_parameter(
                "layer_weights", nn.Parameter(torch.zeros(encoder.config.num_hidden_layers + 1))
            )
        nn.init.normal_(self.classifier.weight, std=encoder.config.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooling = self.head_config.pooling
        outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                               output_hidden_states=pooling == "mix")
        if pooling == "mix":
            weights = torch.softmax(self.classifier.layer_weights, dim=0)
            hidden = sum(w * h for w, h in zip(weights, outputs.hidden_states, strict=True))
        else:
            hidden = outputs[0]
        if pooling == "cls":
            return self.classifier(self.dropout(hidden[:, 0]))
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = []
        if pooling in ("mean", "mix", "mean-max"):
            pooled.append((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0))
        if pooling in ("max", "mean-max"):
            pooled.append(hidden.masked_fill(mask == 0, _PADDING_FLOOR).amax(dim=1))
        return self.classifier(self.dropout(torch.cat(pooled, dim=-1) if len(pooled) > 1 else pooled[0]))

    def save(self, directory: Path) -> None:
        """Write a Hugging Face encoder directory plus the head's weights and settings."""
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(directory, safe_serialization=True)
        state = self.classifier.state_dict()
        weights = {name: tensor.detach().float().cpu().contiguous() for name, tensor in state.items()}
        save_file(weights, str(directory / HEAD_WEIGHTS))
        (directory / HEAD_CONFIG).write_text(json.dumps(asdict(self.head_config), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, attn_implementation: str | None = None) -> SentenceClassifier:
        """Load a checkpoint written by `save` (always in float32, whatever dtype it was stored in)."""
        directory = Path(directory)
        if not directory.is_dir():
            what = "is a file, not a checkpoint directory" if directory.exists() else "does not exist"
            raise ModelError(f"{directory} {what}; run `scorer train` first or pass --checkpoint")
        missing = [name for name in (HEAD_CONFIG, HEAD_WEIGHTS, "config.json") if not (directory / name).is_file()]
        if missing and (directory / MANIFEST).is_file():
            raise ModelError(f"{directory} is a `scorer export` directory (ONNX graphs), not a PyTorch checkpoint; "
                             f"pass the checkpoint it was exported from{_exported_from(directory)}")
        if missing:
            if missing == [HEAD_CONFIG, HEAD_WEIGHTS]:  # an encoder without a head: the step before training
                raise ModelError(f"{directory} is a pretrained encoder, not a scorer checkpoint; train it first "
                                 f"(scorer train --model {directory}) and pass the checkpoint directory")
            raise ModelError(
                f"{directory} is not a scorer checkpoint (missing {', '.join(missing)}); "
                "pass the directory that `scorer train` wrote"
            )
        try:
            head = HeadConfig(**json.loads((directory / HEAD_CONFIG).read_text()))
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{directory / HEAD_CONFIG} is damaged ({first_line(exc)}); train again or restore "
                             "the checkpoint") from exc
        model = cls(load_encoder(directory, attn_implementation), head)
        try:
            model.classifier.load_state_dict(load_file(str(directory / HEAD_WEIGHTS)))
        except DAMAGED_WEIGHTS as exc:
            raise ModelError(f"{directory / HEAD_WEIGHTS} is damaged or not this head's ({first_line(exc)}); "
                             "train again or restore the checkpoint") from exc
        return model.eval()


def _exported_from(export: Path) -> str:
    """', ' and the checkpoint an export's manifest names, where it does."""
    try:
        checkpoint = json.loads((export / MANIFEST).read_text())["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f", {checkpoint}" if isinstance(checkpoint, str) else ""


def load_encoder(path: Path | str, attn_implementation: str | None = None) -> nn.Module:
    """A pretrained encoder in float32 (transformers 5 would keep an fp16 checkpoint in fp16)."""
    quiet_transformers()
    from transformers import AutoModel

    check_encoder_dir(path)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    # (BERT's pooler feeds only its own classifier, which scorer's head does not use.)
    return from_pretrained(AutoModel, path, "encoder", optional=("pooler.",), **kwargs)


def check_encoder_dir(path: Path | str) -> None:
    """`path` is a readable directory that is not an export's (what --model must name), before transformers is
    asked, whose own message for a path that is not a directory is of a download from the hub."""
    if not Path(path).is_dir():
        raise ModelError(f"{path} is not a directory; pass a local Hugging Face model directory with --model")
    if (Path(path) / MANIFEST).is_file() and not (Path(path) / "config.json").is_file():
        raise ModelError(f"{path} is a `scorer export` directory (ONNX graphs); pass a Hugging Face encoder or a "
                         "training checkpoint with --model")
    check_readable(Path(path))


def from_pretrained(auto_class, path: Path | str, what: str, optional: tuple[str, ...] = (), **kwargs) -> nn.Module:
    """`auto_class.from_pretrained` in float32, refusing weights that would leave any of the model's tensors but the
    `optional` ones random (weights saved under other names, as a sentence-transformers directory or a hand-edited
    config can have them): transformers only warns, and the model would train or score from noise."""
    try:
        model, info = auto_class.from_pretrained(str(path), dtype=torch.float32, output_loading_info=True, **kwargs)
    except (OSError, ValueError, *DAMAGED_WEIGHTS) as exc:
        raise ModelError(f"{path}: cannot load a Hugging Face {what} ({first_line(exc)})") from exc
    missing = sorted(key for key in info["missing_keys"] if not key.startswith(optional))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelError(f"{path}: its weights lack the {what}'s {shown}, which would start random; pass the "
                         "directory the model was saved to with save_pretrained")
    return model


def pretrained_tokenizer(path: Path | str, vocab_size: int):
    """transformers' fast tokenizer for the model in `path` (converted, where it kept only a slow tokenizer's files:
    vocab.txt, sentencepiece.bpe.model), refused where there is none, or where it has more tokens than the model's
    `vocab_size` (another model's tokenizer)."""
    quiet_transformers()
    from transformers import AutoTokenizer

    if not any((Path(path) / name).is_file() for name in TOKENIZER_SOURCES):  # (said alike by transformers 4 and 5)
        raise _no_tokenizer(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"{path}: no usable fast tokenizer ({first_line(exc)}); copy the model's tokenizer into "
                         "that directory") from exc
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):  # (transformers 5 builds an empty one from odd files)
        raise _no_tokenizer(path)
    check_vocabulary(path, len(tokenizer), vocab_size)
    return tokenizer


def _no_tokenizer(path: Path | str) -> ModelError:
    return ModelError(f"{path}: no tokenizer files (tokenizer.json, or vocab.txt for WordPiece); copy the tokenizer "
                      "the model was trained with into that directory")


def check_vocabulary(path: Path | str, tokens: int, vocab_size: int) -> None:
    """Refuse a tokenizer with more tokens than the model's embeddings: its ids past them would fail at the first
    such token, deep in PyTorch or ONNX Runtime."""
    if tokens > vocab_size:
        raise ModelError(f"{path}: the tokenizer has {tokens} tokens and the model only {vocab_size}; the tokenizer "
                         "does not belong to this model")


def backend_copy(hf_tokenizer) -> Tokenizer:
    """The `tokenizers` Tokenizer inside a transformers tokenizer, as a copy of its own."""
    return Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())


def quiet_transformers() -> None:
    """No hub access (every model is local) and no progress bars or info logs from transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def transformer_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer layers (encoder.layer in BERT/RoBERTa, transformer.layer in DistilBERT)."""
    for name, module in encoder.named_modules():
        if name.endswith(("layer", "layers")) and isinstance(module, nn.ModuleList):
            return module
    raise ConfigError(f"cannot find the transformer layers of {type(encoder).__name__}")


def check_layer_options(encoder: nn.Module, keep: int, reinit: int) -> None:
    """--keep-layers and --reinit-layers against the encoder, before any stage runs. A model that applies one layer's
    weights as each of its layers (ALBERT, one group) keeps fewer by applying it fewer times, and cannot start its
    top layers afresh alone."""
    groups = getattr(encoder.config, "num_hidden_groups", None)
    if groups is not None and (keep or reinit):
        option = "--keep-layers" if keep else "--reinit-layers"
        if groups != 1:
            raise ConfigError(f"{option}: {type(encoder).__name__} shares its layers' weights in {groups} groups; "
                              f"{option} takes a model with one group of shared layers, or with none")
        if reinit:
            raise ConfigError(f"--reinit-layers: {type(encoder).__name__} applies one layer's weights as each of its "
                              f"{encoder.config.num_hidden_layers} layers, so its top layers cannot start afresh "
                              "alone; drop --reinit-layers")
    total = encoder.config.num_hidden_layers if groups is not None else len(transformer_layers(encoder))
    if keep > total:
        raise ConfigError(f"--keep-layers {keep}: the encoder has only {total} layers")
    if reinit > (keep or total):
        raise ConfigError(f"--reinit-layers {reinit}: the encoder has only {keep or total} layers"
                          + (f" once --keep-layers {keep} has kept the lowest" if keep else ""))


def keep_bottom_layers(encoder: nn.Module, count: int) -> None:
    """Drop all but the lowest `count` layers (0 keeps them all; check_layer_options first); the saved config records
    the new depth."""
    if count <= 0:
        return
    if getattr(encoder.config, "num_hidden_groups", None) is None:
        del transformer_layers(encoder)[count:]
    if isinstance(getattr(encoder.config, "layer_types", None), list):  # (ModernBERT's: one a layer, checked on save)
        encoder.config.layer_types = encoder.config.layer_types[:count]
    encoder.config.num_hidden_layers = count  # (ALBERT's shared layer is applied this many times)


def reinitialize_top_layers(encoder: nn.Module, count: int) -> None:
    """Give the top `count` transformer layers fresh random weights (the model's own init distribution;
    check_layer_options first).

    The top layers of a sentence-embedding model are specialised for its contrastive objective; starting them
    afresh can suit another task better (Zhang et al., 2021, "Revisiting few-sample BERT fine-tuning").
    """
    if count <= 0:
        return
    layers = transformer_layers(encoder)
    std = getattr(encoder.config, "initializer_range", 0.02)
    with torch.no_grad():
        for module in layers[len(layers) - count :].modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):  # (ModernBERT's have no bias)
                module.weight.fill_(1.0)
                if module.bias is not None:
                    module.bias.zero_()


def position_limit(config: object) -> int:
    """The longest token sequence the encoder's position embeddings allow (at most 512)."""
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:  # (none, or XLNet's -1: relative positions alone, no limit)
        return 512
    if getattr(config, "model_type", "") in _OFFSET_POSITION_MODELS:
        limit -= 2
    return min(limit, 512)
