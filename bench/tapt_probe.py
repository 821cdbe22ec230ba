"""Experiment: does masked-LM training on CoLA's training sentences (task-adaptive pretraining) before
fine-tuning lift dev MCC of the packaged all-MiniLM-L6-v2? Its contrastive sentence-embedding training may have
worn away token-level syntax that an MLM objective asks for again.

    python bench/tapt_probe.py --mlm-epochs 20 --mlm-lr 1e-4 --seeds 1,2,3 [--recipe mean-1e-4-balanced-e6-bf16]

Writes the adapted encoder to a temporary directory, fine-tunes it once per seed with a recipe of
bench/recipes.py (on top of its BASE), and appends each run to bench/out/recipes.json as recipe
"<recipe>+tapt<N>-lr<LR>". The masked-LM stage runs once, with --mlm-seed, for all fine-tuning seeds.
This is the experiment that chose the feature; the product path is `scorer train --mlm-epochs N`
(scorer/adapt.py: the same masking and loss, length-bucketed batches, one masked-LM stage per training run).
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
from recipes import BASE, RECIPES, summarise

from scorer.config import TrainConfig, packaged_model
from scorer.read import read_labelled
from scorer.tokens import TextEncoder
from scorer.train import train


def masked_lm(directory: Path, epochs: int, seed: int, learning_rate: float) -> Path:
    """MLM on CoLA train sentences (15% masking, 80/10/10), then save the encoder without the MLM head.

    The package has no MLM head (sentence-transformers dropped it), so a new one is trained with the encoder. The
    vocabulary projection runs on the masked positions only; steps run under bf16 autocast where the CPU has it.
    """
    from transformers import BertForMaskedLM

    from scorer.loop import autocast
    from scorer.train import _resolve_precision

    torch.manual_seed(seed)
    model = BertForMaskedLM.from_pretrained(str(packaged_model()), dtype=torch.float32)
    encoder = TextEncoder.from_dir(packaged_model(), 64)
    encoded = encoder.encode(read_labelled(COLA / "train.tsv", "sentence", "label").texts)
    steps = epochs * -(-len(encoded) // 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / (steps // 10 + 1), max(0.0, (steps - step) / (steps - steps // 10))))
    precision = _resolve_precision("auto", "cpu")
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(encoded))
        losses = []
        started = time.perf_counter()
        for start in range(0, len(order), 32):
            input_ids, mask = (torch.from_numpy(a) for a in encoded.pad(order[start : start + 32]))
            special = (input_ids == 101) | (input_ids == 102) | (mask == 0)
            chosen = (torch.rand(input_ids.shape) < 0.15) & ~special
            targets = input_ids[chosen]
            roll = torch.rand(input_ids.shape)
            input_ids = input_ids.masked_fill(chosen & (roll < 0.8), 103)
            random_tokens = chosen & (roll >= 0.8) & (roll < 0.9)
            input_ids[random_tokens] = torch.randint(1000, vocab, (int(random_tokens.sum()),))
            with autocast("cpu", precision):
                hidden = model.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
                logits = model.cls(hidden[chosen])
            loss = torch.nn.functional.cross_entropy(logits.float(), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.detach())
        print(f"MLM epoch {epoch + 1}: loss {torch.stack(losses).mean():.3f} ({time.perf_counter() - started:.0f}s)",
              flush=True)
    model.bert.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (directory / name).write_bytes((packaged_model() / name).read_bytes())
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlm-epochs", type=int, default=3)
    parser.add_argument("--mlm-lr", type=float, default=5e-5)
    parser.add_argument("--mlm-seed", type=int, default=0, help="Seed of the masked-LM stage (shared by --seeds).")
    parser.add_argument("--seeds", default="1", help="Fine-tuning seeds, all from the same adapted encoder.")
    parser.add_argument("--recipe", default="mean-1e-4-balanced-e6-bf16")
    parser.add_argument("--out", type=Path, default=Path("bench/out/recipes.json"))
    args = parser.parse_args()
    name = f"{args.recipe}+tapt{args.mlm_epochs}-lr{args.mlm_lr:g}"
    overrides = {**RECIPES[args.recipe], "mlm_epochs": args.mlm_epochs, "mlm_lr": args.mlm_lr}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        encoder = masked_lm(Path(tmp) / "adapted", args.mlm_epochs, args.mlm_seed, args.mlm_lr)
        mlm_seconds = time.perf_counter() - started
        for seed in map(int, args.seeds.split(",")):
            config = TrainConfig(data=COLA / "train.tsv", val_data=COLA / "dev.tsv", model=encoder,
                                 output=Path(tmp) / f"ckpt{seed}", seed=seed)
            config = replace(config, **{**BASE, **RECIPES[args.recipe]})
            started = time.perf_counter()
            result = train(config, progress=False)
            run = {"recipe": name, "seed": seed, "overrides": overrides, "best_epoch": result.best_epoch,
                   "best_mcc": result.best.val_mcc, "best_accuracy": result.best.val_accuracy,
                   "seconds": time.perf_counter() - started + mlm_seconds, "device": result.device,
                   "precision": result.precision, "mcc_per_epoch": [e.val_mcc for e in result.epochs],
                   "accuracy_per_epoch": [e.val_accuracy for e in result.epochs]}
            state = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
            state["runs"].append(run)
            state["summary"] = summarise(state["runs"])
            args.out.write_text(json.dumps(state, indent=2) + "\n")
            print(f"{name} seed {seed}: best MCC {run['best_mcc']:.4f} (epoch {run['best_epoch']}), "
                  f"per epoch {[round(m, 3) for m in run['mcc_per_epoch']]}", flush=True)


if __name__ == "__main__":
    main()
