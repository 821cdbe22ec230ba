"""Experiment: does masked-LM training on CoLA's training sentences (task-adaptive pretraining) before
fine-tuning lift dev MCC of the packaged all-MiniLM-L6-v2? Its contrastive sentence-embedding training may have
worn away token-level syntax that an MLM objective asks for again.

    python bench/tapt_probe.py --mlm-epochs 3 --seed 1 [--recipe mean-1e-4-balanced-e6]

Writes the adapted encoder to a temporary directory, fine-tunes it with a recipe of bench/recipes.py, and appends
the result to bench/out/explore.json as recipe "<recipe>+tapt<N>".
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common import COLA
from recipes import RECIPES, summarise

from scorer.config import TrainConfig, packaged_model
from scorer.read import read_labelled
from scorer.tokens import TextEncoder
from scorer.train import train


def masked_lm(directory: Path, epochs: int, seed: int) -> Path:
    """MLM on CoLA train sentences (15% masking, 80/10/10), then save the encoder without the MLM head."""
    from transformers import BertForMaskedLM

    torch.manual_seed(seed)
    model = BertForMaskedLM.from_pretrained(str(packaged_model()), dtype=torch.float32)
    encoder = TextEncoder.from_dir(packaged_model(), 64)
    encoded = encoder.encode(read_labelled(COLA / "train.tsv", "sentence", "label").texts)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01, fused=True)
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(encoded))
        losses = []
        for start in range(0, len(order), 32):
            input_ids, mask = (torch.from_numpy(a) for a in encoded.pad(order[start : start + 32]))
            labels = input_ids.clone()
            special = (input_ids == 101) | (input_ids == 102) | (mask == 0)
            chosen = (torch.rand(input_ids.shape) < 0.15) & ~special
            labels[~chosen] = -100
            roll = torch.rand(input_ids.shape)
            input_ids = input_ids.masked_fill(chosen & (roll < 0.8), 103)
            random_tokens = chosen & (roll >= 0.8) & (roll < 0.9)
            input_ids[random_tokens] = torch.randint(1000, vocab, (int(random_tokens.sum()),))
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        print(f"MLM epoch {epoch + 1}: loss {np.mean(losses):.3f}", flush=True)
    model.bert.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (directory / name).write_bytes((packaged_model() / name).read_bytes())
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlm-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--recipe", default="mean-1e-4-balanced-e6")
    parser.add_argument("--out", type=Path, default=Path("bench/out/explore.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        encoder = masked_lm(Path(tmp) / "adapted", args.mlm_epochs, args.seed)
        config = replace(TrainConfig(data=COLA / "train.tsv", val_data=COLA / "dev.tsv", model=encoder,
                                     output=Path(tmp) / "ckpt", seed=args.seed), **RECIPES[args.recipe])
        result = train(config, progress=False)
        seconds = time.perf_counter() - started
    name = f"{args.recipe}+tapt{args.mlm_epochs}"
    run = {"recipe": name, "seed": args.seed, "overrides": {**RECIPES[args.recipe], "mlm_epochs": args.mlm_epochs},
           "best_epoch": result.best_epoch, "best_mcc": result.best.val_mcc,
           "best_accuracy": result.best.val_accuracy, "seconds": seconds, "device": result.device,
           "mcc_per_epoch": [e.val_mcc for e in result.epochs],
           "accuracy_per_epoch": [e.val_accuracy for e in result.epochs]}
    state = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    state["runs"].append(run)
    state["summary"] = summarise(state["runs"])
    args.out.write_text(json.dumps(state, indent=2) + "\n")
    print(f"{name} seed {args.seed}: best MCC {run['best_mcc']:.4f} (epoch {run['best_epoch']}), "
          f"per epoch {[round(m, 3) for m in run['mcc_per_epoch']]}")


if __name__ == "__main__":
    main()
