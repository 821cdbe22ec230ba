"""Experiment: does self-supervised training on CoLA's training sentences before fine-tuning lift dev MCC of the
packaged all-MiniLM-L6-v2? Its contrastive sentence-embedding training may have worn away token-level syntax that
masked-LM training (task-adaptive pretraining) or replaced-token detection (ELECTRA's objective) asks for again.

    python bench/tapt_probe.py --mlm-epochs 20 --mlm-lr 1e-4 --seeds 1,2,3 [--recipe mean-1e-4-balanced-e6-bf16]
    python bench/tapt_probe.py --mlm-epochs 0 --rtd-epochs 10 --seeds 1,2,3

Writes the adapted encoder to a temporary directory, fine-tunes it once per seed with a recipe of
bench/recipes.py (on top of its BASE), and appends each run to bench/out/recipes.json as recipe
"<recipe>+tapt<N>-lr<LR>" and/or "+rtd<N>-lr<LR>". The stages run once, with --mlm-seed, for all fine-tuning
seeds. They are scorer/training/adapt.py's, as `scorer train --mlm-epochs N --rtd-epochs M` runs them (there once per
training run, seeded by --seed). The three-seed tapt20 figures in bench/RESULTS.md came from this script's
earlier, self-contained copy of the masked-LM stage (commit ced35a4: random-order batches, no gradient
clipping); the seed-42 pipeline run used scorer/training/adapt.py.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import COLA, TOKENIZER_FILES
from recipes import BASE, RECIPES, summarise

from scorer.config import RTD_DRAWS, TrainConfig
from scorer.data.labels import read_labelled
from scorer.packaged import packaged_model
from scorer.text.tokens import TextEncoder
from scorer.training.train import train


def adapted_encoder(directory: Path, epochs: int, seed: int, learning_rate: float, rtd_epochs: int = 0,
                    rtd_lr: float = 1e-4, rtd_draw: str = "frequency") -> Path:
    """`scorer train`'s self-supervised stages as it runs them (masked-LM epochs, then replaced-token detection),
    once, on CoLA's training sentences, saved as an encoder directory."""
    from scorer.training.device import resolve_precision
    from scorer.training.pretrained import load_pretrained
    from scorer.training.train import _adapt

    source = packaged_model()
    config = TrainConfig(data=COLA / "train.tsv", model=source, output=directory, mlm_epochs=epochs,
                         mlm_lr=learning_rate, rtd_epochs=rtd_epochs, rtd_lr=rtd_lr, rtd_draw=rtd_draw,
                         batch_size=32, seed=seed)
    encoded = TextEncoder.from_dir(source, 64).encode(read_labelled(config.data, "sentence", "label").texts)
    torch.manual_seed(seed)
    tokenizer, encoder, masked_form = load_pretrained(config)  # (as train loads it: the masked-LM form's encoder)
    encoder, losses = _adapt(encoder, config, tokenizer, encoded, "cpu", resolve_precision("auto", "cpu"),
                             masked_form=masked_form)
    print(f"losses per epoch: {losses}", flush=True)
    encoder.save_pretrained(directory)
    for name in TOKENIZER_FILES:
        (directory / name).write_bytes((source / name).read_bytes())
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlm-epochs", type=int, default=3)
    parser.add_argument("--mlm-lr", type=float, default=5e-5)
    parser.add_argument("--rtd-epochs", type=int, default=0,
                        help="Epochs of replaced-token detection after the masked-LM ones (scorer/training/adapt.py).")
    parser.add_argument("--rtd-lr", type=float, default=1e-4)
    parser.add_argument("--rtd-draw", choices=RTD_DRAWS, default="frequency")
    parser.add_argument("--tag", default="", help="Appended to the recipe name, to tell versions of a stage apart.")
    parser.add_argument("--mlm-seed", type=int, default=0, help="Seed of the masked-LM stage (shared by --seeds).")
    parser.add_argument("--seeds", default="1", help="Fine-tuning seeds, all from the same adapted encoder.")
    parser.add_argument("--recipe", default="mean-1e-4-balanced-e6-bf16")
    parser.add_argument("--out", type=Path, default=Path("bench/out/recipes.json"))
    parser.add_argument("--stage-dir", type=Path,
                        help="Keep the adapted encoder here, or reuse it when this directory already holds one "
                             "(made by the same stage options: its name should say which).")
    args = parser.parse_args()
    name = args.recipe
    overrides = dict(RECIPES[args.recipe])
    if args.mlm_epochs:
        name += f"+tapt{args.mlm_epochs}-lr{args.mlm_lr:g}"
        overrides.update(mlm_epochs=args.mlm_epochs, mlm_lr=args.mlm_lr)
    if args.rtd_epochs:
        name += f"+rtd{args.rtd_epochs}-lr{args.rtd_lr:g}" + ("-context" if args.rtd_draw == "context" else "")
        overrides.update(rtd_epochs=args.rtd_epochs, rtd_lr=args.rtd_lr, rtd_draw=args.rtd_draw)
    name += args.tag
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        stage = args.stage_dir or Path(tmp) / "adapted"
        if (stage / "config.json").exists():
            encoder, stage_seconds = stage, json.loads((stage / "stage.json").read_text())["seconds"]
            print(f"reusing the adapted encoder in {stage} ({stage_seconds:.0f} s to make)", flush=True)
        else:
            stage.mkdir(parents=True, exist_ok=True)
            encoder = adapted_encoder(stage, args.mlm_epochs, args.mlm_seed, args.mlm_lr, args.rtd_epochs,
                                      args.rtd_lr, args.rtd_draw)
            stage_seconds = time.perf_counter() - started
            (stage / "stage.json").write_text(json.dumps({"seconds": stage_seconds, "args": vars(args)}, default=str))
        for seed in map(int, args.seeds.split(",")):
            config = TrainConfig(data=COLA / "train.tsv", val_data=COLA / "dev.tsv", model=encoder,
                                 output=Path(tmp) / f"ckpt{seed}", seed=seed)
            config = replace(config, **{**BASE, **RECIPES[args.recipe]})
            started = time.perf_counter()
            result = train(config, progress=False)
            run = {"recipe": name, "seed": seed, "overrides": overrides, "best_epoch": result.best_epoch,
                   "best_mcc": result.best.val_mcc, "best_accuracy": result.best.val_accuracy,
                   "seconds": time.perf_counter() - started + stage_seconds, "device": result.device,
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
