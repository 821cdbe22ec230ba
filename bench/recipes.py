"""Training recipes on CoLA: each recipe × seeds through `scorer train`, dev MCC per epoch, written as JSON.

Usage: python bench/recipes.py --recipes baseline,lr1e-4 --seeds 1,2,3 [--out bench/out/recipes.json]
Runs are appended to the JSON file as they finish and skipped when already there, so it can be resumed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import COLA, machine

from scorer.config import TrainConfig
from scorer.training.train import train

# The settings every recipe starts from: scorer's defaults when the search began (the notebook's batch size and
# schedule with mean pooling, warm-up and weight decay). Pinned here so a recipe means the same whatever the
# defaults become; each recipe lists what it changes.
BASE = {"pooling": "mean", "learning_rate": 5e-5, "warmup_ratio": 0.1, "weight_decay": 0.01, "batch_size": 32,
        "epochs": 4, "class_weight": "none", "ema_epochs": 0.0, "layer_decay": 1.0, "reinit_layers": 0,
        "keep_layers": 0, "rdrop": 0.0, "dropout": 0.1, "select": "mcc", "max_length": 64, "precision": "fp32",
        "mlm_epochs": 0, "rtd_epochs": 0, "rtd_aux": 0.0}
RECIPES: dict[str, dict] = {
    "notebook-cls-2e-5": {"pooling": "cls", "learning_rate": 2e-5, "warmup_ratio": 0.0, "epochs": 4,
                          "weight_decay": 0.0, "select": "last"},
    "defaults": {},
    "mean-1e-4-e8": {"pooling": "mean", "learning_rate": 1e-4, "epochs": 8},
    "mean-2e-4-e8": {"pooling": "mean", "learning_rate": 2e-4, "epochs": 8},
    "cls-1e-4-e8": {"pooling": "cls", "learning_rate": 1e-4, "epochs": 8},
    "mean-5e-5-e8": {"pooling": "mean", "learning_rate": 5e-5, "epochs": 8},
    "mean-5e-5-bs16-e6": {"learning_rate": 5e-5, "batch_size": 16, "epochs": 6},
    "mean-1e-4-bs16-e6": {"learning_rate": 1e-4, "batch_size": 16, "epochs": 6},
    "mean-1e-4-ld0.8-e6": {"learning_rate": 1e-4, "layer_decay": 0.8, "epochs": 6},
    "mean-1e-4-balanced-e6": {"learning_rate": 1e-4, "class_weight": "balanced", "epochs": 6},
    "mean-1e-4-reinit1-e6": {"learning_rate": 1e-4, "reinit_layers": 1, "epochs": 6},
    "mean-1e-4-reinit2-e6": {"learning_rate": 1e-4, "reinit_layers": 2, "epochs": 6},
    "mean-3e-5-e10": {"learning_rate": 3e-5, "epochs": 10},
    "mean-1e-4-keep4-e6": {"learning_rate": 1e-4, "keep_layers": 4, "epochs": 6},
    "mean-1e-4-keep5-e6": {"learning_rate": 1e-4, "keep_layers": 5, "epochs": 6},
    "mean-1e-4-balanced-e4": {"learning_rate": 1e-4, "class_weight": "balanced", "epochs": 4},
    "mean-2e-4-balanced-e4": {"learning_rate": 2e-4, "class_weight": "balanced", "epochs": 4},
    "mean-1e-4-balanced-ema-e6": {"learning_rate": 1e-4, "class_weight": "balanced", "ema_epochs": 2.0, "epochs": 6},
    "mean-1e-4-balanced-ema-e10": {"learning_rate": 1e-4, "class_weight": "balanced", "ema_epochs": 2.0, "epochs": 10},
    "mean-1e-4-balanced-e6-bf16": {"learning_rate": 1e-4, "class_weight": "balanced", "epochs": 6,
                                   "precision": "bf16"},
    "mean-1e-4-balanced-e6-bf16-rtd10": {"learning_rate": 1e-4, "class_weight": "balanced", "epochs": 6,
                                         "precision": "bf16", "rtd_epochs": 10},
    # scorer's default since 2026-11-27 (bf16 steps, as `--precision auto` picks on a CPU with bf16 units).
    "mean-1e-4-balanced-e6-bf16-rtd10-wd0.1": {"learning_rate": 1e-4, "class_weight": "balanced", "epochs": 6,
                                               "precision": "bf16", "rtd_epochs": 10, "weight_decay": 0.1},
    # The default's fine-tuning stretched to 10 epochs (its best epoch was often the last of 6).
    "mean-1e-4-balanced-e10-bf16": {"learning_rate": 1e-4, "class_weight": "balanced", "epochs": 10,
                                    "precision": "bf16"},
    "mean-5e-5-balanced-e10-bf16": {"learning_rate": 5e-5, "class_weight": "balanced", "epochs": 10,
                                    "precision": "bf16"},
    "mean-1e-4-balanced-e6-bf16-rdrop1": {"learning_rate": 1e-4, "class_weight": "balanced", "epochs": 6,
                                          "precision": "bf16", "rdrop": 1.0},
    # The default with mean and max pooling side by side, as `scorer train --pooling mean-max` runs it.
    "meanmax-1e-4-balanced-e6-bf16-rtd10": {"pooling": "mean-max", "learning_rate": 1e-4, "class_weight": "balanced",
                                            "epochs": 6, "precision": "bf16", "rtd_epochs": 10},
    # Max pooling after the replaced-token stage: that stage teaches the encoder to mark odd tokens, and a maximum
    # over the tokens keeps one odd token's mark where a mean would dilute it.
    "max-1e-4-balanced-e6-bf16": {"pooling": "max", "learning_rate": 1e-4, "class_weight": "balanced", "epochs": 6,
                                  "precision": "bf16"},
    "meanmax-1e-4-balanced-e6-bf16": {"pooling": "mean-max", "learning_rate": 1e-4, "class_weight": "balanced",
                                      "epochs": 6, "precision": "bf16"},
    # Layer-wise learning-rate decay after the replaced-token stage: lower layers move less in fine-tuning, so
    # what that stage taught them is worn away less (before the stage, decay 0.8 lost: 0.324).
    "mean-1e-4-balanced-e6-bf16-ld0.9": {"learning_rate": 1e-4, "class_weight": "balanced", "epochs": 6,
                                         "precision": "bf16", "layer_decay": 0.9},
    # Replaced-token detection kept on as a second loss while fine-tuning (`--rtd-aux`), so fine-tuning does not
    # wear away what the replaced-token stage taught.
    "mean-1e-4-balanced-e6-bf16-aux0.5": {"learning_rate": 1e-4, "class_weight": "balanced", "epochs": 6,
                                          "precision": "bf16", "rtd_aux": 0.5},
    "mix-1e-4-balanced-e6": {"pooling": "mix", "learning_rate": 1e-4, "class_weight": "balanced", "epochs": 6},
    "mean-1e-4-balanced-e6-bf16-drop0.3": {"learning_rate": 1e-4, "class_weight": "balanced", "epochs": 6,
                                           "precision": "bf16", "dropout": 0.3},
}


def run(recipe: str, seed: int) -> dict:
    overrides = RECIPES[recipe]
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(data=COLA / "train.tsv", val_data=COLA / "dev.tsv", output=Path(tmp) / "ckpt",
                             seed=seed)
        config = replace(config, **{**BASE, **overrides})
        started = time.perf_counter()
        result = train(config, progress=False)
        seconds = time.perf_counter() - started
    return {
        "recipe": recipe, "seed": seed, "overrides": overrides, "best_epoch": result.best_epoch,
        "best_mcc": result.best.val_mcc, "best_accuracy": result.best.val_accuracy, "seconds": seconds,
        "device": result.device, "precision": result.precision, "mcc_per_epoch": [e.val_mcc for e in result.epochs],
        "accuracy_per_epoch": [e.val_accuracy for e in result.epochs],
    }


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for recipe in dict.fromkeys(r["recipe"] for r in runs):
        mccs = [r["best_mcc"] for r in runs if r["recipe"] == recipe]
        rows.append({"recipe": recipe, "seeds": len(mccs), "mean_mcc": statistics.mean(mccs),
                     "min_mcc": min(mccs), "max_mcc": max(mccs),
                     "stdev_mcc": statistics.stdev(mccs) if len(mccs) > 1 else 0.0})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--out", type=Path, default=Path("bench/out/recipes.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    state["machine"] = machine("cuda" if torch.cuda.is_available() else "cpu")
    done = {(r["recipe"], r["seed"]) for r in state["runs"]}
    for recipe in args.recipes.split(","):
        for seed in map(int, args.seeds.split(",")):
            if (recipe, seed) in done:
                continue
            result = run(recipe, seed)
            # Re-read before writing: another process may have added runs to the same file meanwhile.
            if args.out.exists():
                state["runs"] = json.loads(args.out.read_text())["runs"]
            state["runs"].append(result)
            state["summary"] = summarise(state["runs"])
            args.out.write_text(json.dumps(state, indent=2) + "\n")
            last = state["runs"][-1]
            print(f"{recipe} seed {seed}: best MCC {last['best_mcc']:.4f} (epoch {last['best_epoch']}), "
                  f"{last['seconds']:.0f}s, per epoch {[round(m, 3) for m in last['mcc_per_epoch']]}", flush=True)
    print(markdown(state["runs"]))


def markdown(runs: list[dict]) -> str:
    """The recipe table for bench/RESULTS.md and the README: every recipe, its settings and its seeds."""
    lines = ["| recipe | changes from BASE | seeds | dev MCC mean | min | max | best epochs |"
             " s/run |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    # Recipes run with several seeds first, then the single-seed screening runs; best mean first in each.
    for row in sorted(summarise(runs), key=lambda r: (-r["seeds"], -r["mean_mcc"])):
        mine = [r for r in runs if r["recipe"] == row["recipe"]]
        settings = ", ".join(f"{k}={v}" for k, v in mine[0]["overrides"].items()) or "-"
        epochs = ",".join(str(r["best_epoch"]) for r in mine)
        seconds = statistics.mean(r["seconds"] for r in mine)
        lines.append(f"| {row['recipe']} | {settings} | {row['seeds']} | {row['mean_mcc']:.3f} | "
                     f"{row['min_mcc']:.3f} | {row['max_mcc']:.3f} | {epochs} | {seconds:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
