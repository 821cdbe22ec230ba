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
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from common import COLA, TOKENIZER_FILES, machine, random_bert, write_json

from scorer.config import RunConfig
from scorer.manifest import load_manifest
from scorer.model import SentenceClassifier
from scorer.read import read_labelled
from scorer.score import score_file
from scorer.tokens import TextEncoder

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
    """The seed notebook: transformers tokenizer padding to the max length (64 for CoLA), batch 32, input order,
    fp32."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    predictions = []
    with torch.inference_mode():
        for start in range(0, len(texts), 32):
            batch = tokenizer(texts[start : start + 32], padding="max_length", truncation=True,
                              max_length=model.head_config.max_length, return_tensors="pt").to(device)
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


def scorer_run(texts: list[str], export: Path, provider: str, spec: str, tmp: Path, memory: list | None = None
               ) -> tuple[np.ndarray, float]:
    """`scorer run` end to end: Parquet in, Parquet out, tokenisation included (summary.seconds).

    `spec` is a variant, optionally with ":plain" (IO binding off) or ":bound" (on); else scorer's default.
    """
    variant, _, mode = spec.partition(":")
    source = tmp / "input.parquet"
    pq.write_table(pa.table({"sentence": texts}), source)
    config = RunConfig(input=str(source), output=tmp / f"out-{variant}.parquet", model=export, provider=provider,
                       variant=variant, overwrite=True, io_binding={"plain": False, "bound": True}.get(mode))
    with GpuMemory(memory if provider == "cuda" else None):
        summary = score_file(config, progress=False)
    labels = pq.read_table(config.output, columns=["label"]).column("label").to_numpy()
    return labels, summary.seconds


class GpuMemory:
    """Samples nvidia-smi's memory.used (MiB) twice a second while a run goes on (ORT's arena is not torch's)."""

    def __init__(self, samples: list | None) -> None:
        self.samples = samples
        self._stop = threading.Event()

    def __enter__(self) -> GpuMemory:
        if self.samples is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        started = time.perf_counter()
        while not self._stop.wait(0.5):
            used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True).stdout.split()
            if used:
                self.samples.append((round(time.perf_counter() - started, 1), int(used[0])))

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self.samples is not None:
            self._thread.join()


def random_checkpoint(directory: Path, shape: str, max_length: int) -> tuple[Path, Path]:
    """A randomly initialised bert-base-shaped classifier, saved and exported (fp32 + fp16): speed only."""
    from export.pipeline import export_model
    from scorer.config import ExportConfig
    from scorer.errors import ParityError
    from scorer.model import HeadConfig, load_encoder

    if shape != "bert-base":
        raise SystemExit(f"unknown --random shape {shape}")
    checkpoint, export = directory / "checkpoint", directory / "onnx"
    if (export / "manifest.json").is_file():
        return checkpoint, export
    encoder = random_bert(directory / "encoder")
    SentenceClassifier(load_encoder(encoder), HeadConfig([0, 1], "mean", max_length)).save(checkpoint)
    for name in TOKENIZER_FILES:
        shutil.copy(encoder / name, checkpoint / name)
    try:  # random weights put every logit near a tie, so only the fp32 gate means anything here
        export_model(ExportConfig(checkpoint=checkpoint, output=export, variants=("fp32", "fp16"),
                                  min_agreement=1e-9))
    except ParityError as exc:
        print(f"parity (random weights): {exc}")
    return checkpoint, export



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=Path("scorer-artifacts/onnx"))
    parser.add_argument("--checkpoint", type=Path, default=Path("scorer-artifacts/checkpoint"))
    parser.add_argument("--random", choices=["bert-base"], help="Use random weights of this shape instead.")
    parser.add_argument("--random-dir", type=Path, help="Keep the random model here and reuse it if it is there.")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--baseline-rows", type=int, default=20000, help="Rows the PyTorch baselines score.")
    parser.add_argument("--workloads", default="cola,long128")
    parser.add_argument("--variants", default="int8,fp32",
                        help="Variants to run, each optionally VARIANT:plain or VARIANT:bound (IO binding off/on).")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="Dense fp16 peak, for %% of limit.")
    parser.add_argument("--out", type=Path, default=Path("bench/out/scoring-cpu.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.random:
            args.checkpoint, args.export = random_checkpoint(args.random_dir or Path(tmp) / "random", args.random, 128)
        results = measure_all(args, Path(tmp))
    write_json(args.out, results)


def measure_all(args: argparse.Namespace, tmp: Path) -> dict:
    model = SentenceClassifier.load(args.checkpoint).to(args.device).eval()
    encoder = TextEncoder.from_dir(args.export, model.head_config.max_length)
    provider = "cuda" if args.device == "cuda" else "cpu"
    best_batch, best_dtype = (256, torch.bfloat16) if args.device == "cuda" else (64, None)
    best_name = f"pytorch-sorted-b{best_batch}" + ("-bf16" if best_dtype else "")
    results = {"machine": machine(args.device), "rows": args.rows, "random_weights": args.random,
               "export": load_manifest(args.export).extra, "workloads": {}}
    for name in args.workloads.split(","):
        texts = workload(name, args.rows)
        subset = texts[: args.baseline_rows]
        reference, seconds = timed(notebook_way, model, subset, args.checkpoint, args.device)
        rates = {"pytorch-notebook": len(subset) / seconds}
        _, seconds = timed(best_pytorch, model, subset, encoder, args.device, best_batch, best_dtype)
        rates[best_name] = len(subset) / seconds
        agreement, memory = {}, {}
        for variant in args.variants.split(","):
            memory[variant] = []
            labels, seconds = scorer_run(texts, args.export, provider, variant, tmp, memory[variant])
            rates[f"scorer-run-{variant}"] = len(texts) / seconds
            agreement[f"scorer-run-{variant}"] = float((labels[: len(subset)] == reference).mean())
        tokens_per_row = encoder.encode(texts).lengths.mean()
        rows = {key: {"sentences_per_s": rate, "real_tokens_per_s": rate * tokens_per_row,
                      "x_notebook": rate / rates["pytorch-notebook"], "x_best_pytorch": rate / rates[best_name],
                      "label_agreement_with_pytorch_fp32": agreement.get(key)} for key, rate in rates.items()}
        if args.device == "cuda" and args.random == "bert-base":
            for row in rows.values():
                row["percent_of_physical_limit"] = 100 * row["real_tokens_per_s"] * FLOP_PER_TOKEN["bert-base"] \
                    / (args.peak_tflops * 1e12)
        results["workloads"][name] = {"texts": len(texts), "baseline_texts": len(subset),
                                      "mean_tokens": float(tokens_per_row), "results": rows,
                                      "gpu_memory_used_mib": {k: v for k, v in memory.items() if v}}
        for key, row in rows.items():
            print(f"{name:8} {key:24} {row['sentences_per_s']:>9,.0f} sent/s {row['real_tokens_per_s']:>11,.0f} tok/s"
                  f"  x{row['x_notebook']:.1f} notebook  x{row['x_best_pytorch']:.2f} best-pytorch"
                  + (f"  agree {row['label_agreement_with_pytorch_fp32']:.2%}" if key in agreement else ""),
                  flush=True)
    return results





if __name__ == "__main__":
    main()
