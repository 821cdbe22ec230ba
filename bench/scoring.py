"""Scoring speed: the notebook way and the best PyTorch way against `scorer run`, same sentences, one process.

CPU (a trained export, e.g. the CoLA model):
    python bench/scoring.py --export runs/cola/onnx --checkpoint runs/cola/checkpoint --rows 3000
GPU (random bert-base weights are fine for speed; see bench/gpu_check.sh):
    python bench/scoring.py --device cuda --random bert-base --rows 200000

Workloads: "cola" = CoLA sentences (../shared/data/cola) repeated to --rows; "long128" = texts of 100 words made
of CoLA words. Every figure is sentences/s end to end from Python strings (baselines) or from a Parquet file to a
Parquet file (scorer run), tokenisation included. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from scorer.config import RunConfig
from scorer.model import SentenceClassifier
from scorer.read import read_labelled
from scorer.score import score_file
from scorer.tokens import TextEncoder

COLA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cola"
# bert-base: about 175 MFLOP per token forward (2 x 85M weights in the encoder layers, attention excluded).
FLOP_PER_TOKEN = {"bert-base": 175e6}


def workload(name: str, rows: int, seed: int = 0) -> list[str]:
    sentences = read_labelled(COLA / "train.tsv", "sentence", "label").texts
    rng = np.random.default_rng(seed)
    if name == "cola":
        return [sentences[i] for i in rng.integers(0, len(sentences), rows)]
    words = " ".join(sentences).split()
    starts = rng.integers(0, len(words) - 100, rows)
    return [" ".join(words[s : s + 100]) for s in starts]


def notebook_way(model: SentenceClassifier, texts: list[str], checkpoint: Path, device: str) -> np.ndarray:
    """The seed notebook: transformers tokenizer padding to 64, batch 32, input order, fp32."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    predictions = []
    with torch.inference_mode():
        for start in range(0, len(texts), 32):
            batch = tokenizer(texts[start : start + 32], padding="max_length", truncation=True, max_length=64,
                              return_tensors="pt").to(device)
            predictions.append(model(batch["input_ids"], batch["attention_mask"]).argmax(1).cpu())
    return torch.cat(predictions).numpy()


def best_pytorch(model: SentenceClassifier, texts: list[str], encoder: TextEncoder, device: str, batch: int,
                 dtype: torch.dtype | None) -> np.ndarray:
    """Sorted by length, padded to the longest of each batch, inference mode, optional autocast."""
    encoded = encoder.encode(texts)
    order = np.argsort(encoded.lengths, kind="stable")
    out = np.empty(len(texts), dtype=np.int64)
    with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            input_ids, mask = (torch.from_numpy(a).to(device) for a in encoded.pad(rows))
            out[rows] = model(input_ids, mask).argmax(1).cpu().numpy()
    return out


def timed(function, *args) -> tuple[object, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = function(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def scorer_run(texts: list[str], export: Path, provider: str, variant: str, tmp: Path) -> tuple[np.ndarray, float]:
    source = tmp / "input.parquet"
    pq.write_table(pa.table({"sentence": texts}), source)
    config = RunConfig(input=str(source), output=tmp / f"out-{variant}.parquet", model=export, provider=provider,
                       variant=variant, overwrite=True)
    summary = score_file(config, progress=False)
    labels = pq.read_table(config.output, columns=["label"]).column("label").to_numpy()
    return labels, summary.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=Path("scorer-artifacts/onnx"))
    parser.add_argument("--checkpoint", type=Path, default=Path("scorer-artifacts/checkpoint"))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--workloads", default="cola,long128")
    parser.add_argument("--variants", default="int8,fp32")
    parser.add_argument("--out", type=Path, default=Path("bench/out/scoring-cpu.json"))
    args = parser.parse_args()
    model = SentenceClassifier.load(args.checkpoint).to(args.device).eval()
    encoder = TextEncoder.from_dir(args.export, model.head_config.max_length)
    provider = "cuda" if args.device == "cuda" else "cpu"
    results = {"machine": machine(args.device), "rows": args.rows, "workloads": {}}
    for name in args.workloads.split(","):
        texts = workload(name, args.rows)
        tokens = int(encoder.encode(texts).lengths.sum())
        figures = {}
        reference, seconds = timed(notebook_way, model, texts, args.checkpoint, args.device)
        figures["pytorch-notebook"] = seconds
        _, figures["pytorch-sorted-b64"] = timed(best_pytorch, model, texts, encoder, args.device, 64, None)
        agreement = {}
        with tempfile.TemporaryDirectory() as tmp:
            for variant in args.variants.split(","):
                labels, figures[f"scorer-run-{variant}"] = scorer_run(texts, args.export, provider, variant, Path(tmp))
                agreement[f"scorer-run-{variant}"] = float((labels == reference).mean())
        rows = {key: {"seconds": s, "sentences_per_s": len(texts) / s, "real_tokens_per_s": tokens / s}
                for key, s in figures.items()}
        for key in rows:
            rows[key]["x_notebook"] = figures["pytorch-notebook"] / figures[key]
            rows[key]["x_best_pytorch"] = figures["pytorch-sorted-b64"] / figures[key]
            rows[key]["label_agreement_with_pytorch_fp32"] = agreement.get(key)
        results["workloads"][name] = {"texts": len(texts), "real_tokens": tokens, "results": rows}
        for key, row in rows.items():
            print(f"{name:8} {key:22} {row['sentences_per_s']:>9,.0f} sent/s {row['real_tokens_per_s']:>11,.0f} tok/s"
                  f"  x{row['x_notebook']:.1f} notebook  x{row['x_best_pytorch']:.2f} best-pytorch"
                  + (f"  agree {row['label_agreement_with_pytorch_fp32']:.2%}" if key in agreement else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


def machine(device: str) -> dict:
    import onnxruntime

    info = {"platform": platform.platform(), "processor": _cpu_name(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "device": device,
            "date": time.strftime("%Y-%m-%d")}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
