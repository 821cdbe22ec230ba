"""Training speed: seconds per epoch of `scorer train` on CoLA (90% split = 7,696 sentences, batch 32).

    python bench/train_speed.py --device cuda --models bert-base,minilm --epochs 4
    python bench/train_speed.py --device cpu --models minilm --epochs 1 --precisions fp32,bf16
    python bench/train_speed.py --device cuda --modes eager,compile,graphs   # torch.compile, then CUDA graphs
    python bench/train_speed.py --device cuda --precisions fp32 --modes eager,graphs,bf16:graphs

"bert-base" is a randomly initialised bert-base-shaped encoder (speed does not depend on the weights) with the
packaged WordPiece tokenizer; "minilm" is the packaged all-MiniLM-L6-v2. Beside each model's `scorer train`
run, the same process times one epoch the seed notebook's way on as many CoLA sentences: BertForSequenceClassification,
every sentence padded to 64 tokens, random batches of 32, non-fused AdamW, the loss read after every step, fp32.
scorer's epoch time includes its validation pass; the notebook's does not. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import COLA, machine, random_bert, tokenizer_dir, write_json

from scorer.config import TrainConfig
from scorer.data.labels import read_labelled
from scorer.training.train import train

MODES = {"eager": {}, "compile": {"compile": True}, "graphs": {"cuda_graphs": "compiled"},
         "captured": {"cuda_graphs": "captured"}}


def runs(precisions: str, modes: str) -> list[tuple[str, str]]:
    """(precision, mode) pairs in order: each mode at every --precisions value, or at its own PRECISION: prefix."""
    pairs = []
    for entry in modes.split(","):
        precision, _, mode = entry.rpartition(":")
        pairs += [(precision, mode)] if precision else [(p, mode) for p in precisions.split(",")]
    return pairs


def notebook_epoch(model_dir: Path, rows: int, device: str) -> float:
    """Seconds for one training epoch of `rows` CoLA sentences the way the seed notebook trains."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = read_labelled(COLA / "train.tsv", "sentence", "label")
    order = torch.randperm(len(data.texts), generator=torch.Generator().manual_seed(1))[:rows]
    texts, labels = [data.texts[i] for i in order], torch.tensor([int(data.labels[i]) for i in order])
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=2).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, eps=1e-8)
    batches = torch.arange(rows).split(32)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / len(batches))
    started = time.perf_counter()
    total_loss = 0.0
    for batch in batches:
        output = model(input_ids=encoded["input_ids"][batch].to(device),
                       attention_mask=encoded["attention_mask"][batch].to(device), labels=labels[batch].to(device))
        total_loss += output.loss.item()  # the notebook reads the loss every step: a host sync per step
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        model.zero_grad()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--models", default="bert-base,minilm")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rtd-epochs", type=int, default=0,
                        help="replaced-token epochs before fine-tuning (scorer's default is 10; the targets time the "
                             "fine-tuning epochs, so 0 here unless asked)")
    parser.add_argument("--precisions", default="auto", help="comma-separated scorer --precision values to time")
    parser.add_argument("--modes", default="eager",
                        help="comma-separated, timed one after the other: eager (the default steps), compile "
                             "(`scorer train --compile`), graphs (`--cuda-graphs compiled`), captured (`--cuda-graphs "
                             "captured`; both CUDA only); "
                             "PRECISION:MODE (bf16:graphs) times that mode at that precision only")
    parser.add_argument("--out", type=Path, default=Path("bench/out/train-speed.json"))
    args = parser.parse_args()
    results = {"machine": machine(args.device), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = random_bert(Path(tmp) / "bert-base") if name == "bert-base" else tokenizer_dir()
            baseline = None
            for precision, mode in runs(args.precisions, args.modes):
                if mode not in MODES:
                    parser.error(f"--modes: {mode!r} is not one of {', '.join(MODES)}")
                config = TrainConfig(data=COLA / "train.tsv", model=model, output=Path(tmp) / f"ckpt-{name}",
                                     epochs=args.epochs, batch_size=32, device=args.device, seed=1,
                                     precision=precision, rtd_epochs=args.rtd_epochs, overwrite=True, **MODES[mode])
                started = time.perf_counter()
                result = train(config, progress=False)
                total = time.perf_counter() - started
                epochs = [e.seconds for e in result.epochs]
                if baseline is None:
                    baseline = notebook_epoch(model, result.train_rows, result.device)
                results["runs"].append({"model": name, "train_rows": result.train_rows, "epochs": args.epochs,
                                        "rtd_epochs": args.rtd_epochs,
                                        "precision": result.precision, "mode": mode,
                                        "epoch_seconds": epochs,
                                        "total_seconds": total, "notebook_epoch_seconds": baseline,
                                        "speedup_vs_notebook": baseline / min(epochs),
                                        "best_val_mcc": result.best.val_mcc})
                print(f"{name} ({result.precision}, {mode}): {result.train_rows} rows, scorer epochs "
                      f"{[round(s, 2) for s in epochs]} s, total {total:.1f}s (with loading and saving); notebook "
                      f"way {baseline:.1f}s per epoch ({baseline / min(epochs):.1f}x slower)", flush=True)
                write_json(args.out, results)  # after every run: a step cut off by its time limit keeps the rest


if __name__ == "__main__":
    main()
