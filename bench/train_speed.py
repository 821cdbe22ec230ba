"""Training speed: seconds per epoch of `scorer train` on CoLA (90% split = 7,696 sentences, batch 32).

    python bench/train_speed.py --device cuda --models bert-base,minilm --epochs 4
    python bench/train_speed.py --device cpu --models minilm --epochs 1

"bert-base" is a randomly initialised bert-base-shaped encoder (speed does not depend on the weights) with the
packaged WordPiece tokenizer; "minilm" is the packaged all-MiniLM-L6-v2. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import COLA, machine, random_bert, tokenizer_dir, write_json

from scorer.config import TrainConfig
from scorer.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--models", default="bert-base,minilm")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("bench/out/train-speed.json"))
    args = parser.parse_args()
    results = {"machine": machine(args.device), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = random_bert(Path(tmp) / "bert-base") if name == "bert-base" else tokenizer_dir()
            config = TrainConfig(data=COLA / "train.tsv", model=model, output=Path(tmp) / f"ckpt-{name}",
                                 epochs=args.epochs, batch_size=32, device=args.device, seed=1)
            started = time.perf_counter()
            result = train(config, progress=False)
            total = time.perf_counter() - started
            epochs = [e.seconds for e in result.epochs]
            results["runs"].append({"model": name, "train_rows": result.train_rows, "epochs": args.epochs,
                                    "epoch_seconds": epochs, "total_seconds": total,
                                    "best_val_mcc": result.best.val_mcc})
            print(f"{name}: {result.train_rows} rows, epochs {[round(s, 2) for s in epochs]} s, "
                  f"total {total:.1f}s (with loading and saving)", flush=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
