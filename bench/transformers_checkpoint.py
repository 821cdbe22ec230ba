"""A model fine-tuned with transformers, the notebook way, through `scorer export` and `scorer run`, against
transformers scoring it itself, on CoLA dev.

1. Fine-tunes the packaged MiniLM as `BertForSequenceClassification` on CoLA train as a notebook does (its own
   tokenizer padding to 64, batch 32, AdamW, labels named unacceptable/acceptable) and saves it with save_pretrained
   (`--reuse` keeps one already there).
2. `scorer export --checkpoint` it with parity on dev and int8 calibration on train.
3. Scores dev (a Parquet copy, labels 0/1) with transformers (batch 32, padded to the longest, the export's max
   length) and with `scorer run` for each variant (`--check` on every row), and compares: max |Δscore|, label
   agreement, accuracy and MCC. (A check of fidelity, not of speed: 527 rows time start-up and the PyTorch check.)

    python bench/transformers_checkpoint.py [--epochs 2] [--out bench/out/hf-cola] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from common import COLA, machine, tokenizer_dir, write_json

from scorer.data.labels import read_labelled
from scorer.data.read import TableReader
from scorer.metrics import confusion_of

NAMES = ["unacceptable", "acceptable"]


def fine_tune(directory: Path, epochs: int, lr: float) -> float:
    """The notebook's loop; returns its seconds."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    train = read_labelled(COLA / "train.tsv", "sentence", "label")
    texts, labels = train.texts, [int(label) for label in train.labels]
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tokenizer_dir()), num_labels=2,
                                                               id2label=dict(enumerate(NAMES)),
                                                               label2id={n: i for i, n in enumerate(NAMES)})
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    order, rng = list(range(len(texts))), random.Random(0)
    started = time.perf_counter()
    for epoch in range(epochs):
        rng.shuffle(order)
        model.train()
        for start in range(0, len(order), 32):
            rows = order[start:start + 32]
            batch = tokenizer([texts[i] for i in rows], padding="max_length", truncation=True, max_length=64,
                              return_tensors="pt")
            loss = model(**batch, labels=torch.tensor([labels[i] for i in rows])).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        print(f"epoch {epoch + 1}: last batch loss {loss.item():.3f}", flush=True)
    seconds = time.perf_counter() - started
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return seconds


def transformers_scores(checkpoint: Path, texts: list[str], max_length: int) -> np.ndarray:
    """P(acceptable) for each text as transformers computes it, batch 32 in input order."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForSequenceClassification.from_pretrained(str(checkpoint)).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), 32):
            batch = tokenizer(texts[start:start + 32], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            out.append(model(**batch).logits.softmax(-1)[:, 1].numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--out", type=Path, default=Path("bench/out/hf-cola"))
    parser.add_argument("--reuse", action="store_true", help="keep a fine-tuned model already in OUT/checkpoint")
    args = parser.parse_args()
    checkpoint, export = args.out / "checkpoint", args.out / "onnx"
    result = {"machine": machine(), "epochs": args.epochs, "lr": args.lr}
    if not (args.reuse and (checkpoint / "config.json").is_file()):
        result["fine_tune_seconds"] = fine_tune(checkpoint, args.epochs, args.lr)
    started = time.perf_counter()
    subprocess.run(["scorer", "export", "--checkpoint", str(checkpoint), "-o", str(export), "--overwrite",
                    "--data", str(COLA / "dev.tsv"), "--calibration", str(COLA / "train.tsv"), "-q"], check=True)
    result["export_seconds"] = time.perf_counter() - started
    result["parity"] = json.loads((export / "parity.json").read_text())["variants"]
    dev = args.out / "dev.parquet"
    table = pa.concat_tables(TableReader(COLA / "dev.tsv").batches(100_000))
    pq.write_table(table.set_column(1, "label", table.column("label").cast(pa.int64())), dev)
    texts, truth = table.column("sentence").to_pylist(), np.array(table.column("label").cast(pa.int64()).to_pylist())
    max_length = json.loads((export / "manifest.json").read_text())["max_length"]
    reference = transformers_scores(checkpoint, texts, max_length)
    result["transformers"] = _figures(reference, truth)
    for variant in ("fp32", "fp16", "int8"):
        output = args.out / f"dev.{variant}.parquet"
        subprocess.run(["scorer", "run", str(dev), "--model", str(export), "--variant", variant, "--provider", "cpu",
                        "--check", str(len(texts)), "-o", str(output), "--overwrite", "-q"], check=True)
        scores = np.array(pq.read_table(output).column("pred_score").to_pylist())
        check = json.loads(output.with_name(output.name + ".summary.json").read_text())["inputs"][0]["check"]
        result[variant] = {**_figures(scores, truth), "max_score_diff_vs_transformers":
                           float(np.abs(scores - reference).max()),
                           "labels_agree_with_transformers": float(np.mean((scores > 0.5) == (reference > 0.5))),
                           "check": check}
        print(f"{variant}: max |Δscore| against transformers {result[variant]['max_score_diff_vs_transformers']:.2g}, "
              f"labels agree {100 * result[variant]['labels_agree_with_transformers']:.2f}%, accuracy "
              f"{result[variant]['accuracy']:.4f}, MCC {result[variant]['mcc']:.4f}", flush=True)
    print(f"transformers: accuracy {result['transformers']['accuracy']:.4f}, MCC {result['transformers']['mcc']:.4f}")
    write_json(args.out / "transformers-checkpoint.json", result)


def _figures(scores: np.ndarray, truth: np.ndarray) -> dict:
    confusion = confusion_of([0, 1], truth, (scores > 0.5).astype(np.int64))
    return {"accuracy": confusion.accuracy(), "mcc": confusion.mcc()}


if __name__ == "__main__":
    main()
