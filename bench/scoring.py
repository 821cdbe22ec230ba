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
from scorer.data.labels import read_labelled
from scorer.manifest import load_manifest
from scorer.pytorch.model import SentenceClassifier
from scorer.scoring.score import score_file
from scorer.text.batches import BatchTally
from scorer.text.tokens import TextEncoder

# bert-base: about 175 MFLOP per token forward (2 x 85M weights in the encoder layers, attention excluded).
FLOP_PER_TOKEN = {"bert-base": 175e6}
# Random-weight shapes: bert-base for the GPU figures; tiny to try this script's whole path quickly on a CPU.
RANDOM_SHAPES = {"bert-base": {}, "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                                           "intermediate_size": 128}}


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


def run_config(spec: str, source: Path, output: Path, export: Path, provider: str) -> RunConfig:
    """The RunConfig of a variant spec: VARIANT, then optionally ":plain" or ":bound" (IO binding off/on) and
    ":FIELD=N" for integer RunConfig fields (max_batch_rows, max_tokens, tokenize_threads, window_rows,
    piece_chars, batch_overhead; word_cache=0 tokenises with the tokenizer alone). Before scorer.text.batches:
    "fp16:window_rows=16384:batch_overhead=1000000000" (batches cut by the budget alone, one sort per 16,384 rows)."""
    variant, *options = spec.split(":")
    settings: dict = {}
    for option in options:
        if option in ("plain", "bound"):
            settings["io_binding"] = option == "bound"
        else:
            key, _, value = option.partition("=")
            settings[key] = bool(int(value)) if key == "word_cache" else int(value)
    return RunConfig(input=str(source), output=output, model=export, provider=provider, variant=variant,
                     overwrite=True, **settings)


def scorer_run(source: Path, export: Path, provider: str, spec: str, tmp: Path, memory: list | None = None
               ) -> tuple[np.ndarray, float, dict]:
    """`scorer run` end to end: Parquet in, Parquet out, tokenisation included (summary.seconds); the labels,
    the seconds, and the summary's batching figures with the share of the run the model was busy and what the
    thread feeding it waited for."""
    config = run_config(spec, source, tmp / "out.parquet", export, provider)
    with GpuMemory(memory if provider == "cuda" else None):
        summary = score_file(config, progress=False)
    labels = pq.read_table(config.output, columns=["label"]).column("label").to_numpy()
    return labels, summary.seconds, {**summary.batching, "waits": summary.waits,
                                     "model_busy_share": summary.batching["model_seconds"] / summary.seconds}


def stages(texts: list[str], export: Path, provider: str, spec: str) -> dict:
    """Each stage of `scorer run` alone, in sentences/s, to find the bottleneck: tokenising the pieces of each
    window of an in-memory Arrow column (one thread, as one tokenize thread does it; no file is read), and the
    model (each window's batches, padding and host copies included), with the batches' padding."""
    from scorer.scoring.score import open_classifier
    from scorer.scoring.stream import pieces

    classifier, config = open_classifier(run_config(spec, Path("unused"), None, export, provider))
    column, rows = pa.array(texts), config.window_rows
    windows = [pieces(column.slice(start, rows), config.piece_chars) for start in range(0, len(texts), rows)]
    classifier.infer([classifier.prepare(piece) for piece in windows[0]])  # warm-up: first shapes, arena
    started = time.perf_counter()
    prepared = [[classifier.prepare(piece) for piece in window] for window in windows]
    tokenise = time.perf_counter() - started
    if provider == "cuda":
        torch.cuda.synchronize()
    classifier.tally = BatchTally()
    started = time.perf_counter()
    for window in prepared:
        classifier.infer(window)
    model = time.perf_counter() - started
    tally = classifier.tally
    return {"spec": spec, "tokenise_sentences_per_s": len(texts) / tokenise, "model_sentences_per_s":
            len(texts) / model, "window_rows": rows, "batches": tally.batches,
            "padded_over_real_tokens": tally.padded_over_real}


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


def random_export(directory: Path, workload: str) -> Path:
    """Where random_checkpoint exports the random model for `workload`."""
    return directory / f"onnx-{workload}"


def random_checkpoint(directory: Path, shape: str, max_length: int, workload: str, texts: list[str]
                      ) -> tuple[Path, Path]:
    """A randomly initialised bert-base-shaped classifier, saved and exported (fp32 + fp16): speed only.

    One checkpoint; one export per workload, calibrated on that workload's texts, so that export's timing of the
    fp16 attentions and kernel settings (all recorded in the manifest) chooses for texts like the ones scored, as
    a user's export does with its training data.
    """
    from export.pipeline import export_model
    from scorer.config import ExportConfig
    from scorer.errors import ParityError
    from scorer.pytorch.model import HeadConfig, load_encoder

    checkpoint, export = directory / "checkpoint", random_export(directory, workload)
    if (export / "manifest.json").is_file():
        return checkpoint, export
    if not (checkpoint / "scorer_head.json").is_file():
        encoder = random_bert(directory / "encoder", **RANDOM_SHAPES[shape])
        SentenceClassifier(load_encoder(encoder), HeadConfig([0, 1], "mean", max_length)).save(checkpoint)
        for name in TOKENIZER_FILES:
            shutil.copy(encoder / name, checkpoint / name)
    calibration = directory / f"calibration-{workload}.parquet"
    pq.write_table(pa.table({"sentence": texts[:2000]}), calibration)
    try:  # random weights put every logit near a tie, so only the fp32 gate means anything here
        export_model(ExportConfig(checkpoint=checkpoint, output=export, variants=("fp32", "fp16"),
                                  calibration=calibration, min_agreement=1e-9))
    except ParityError as exc:
        print(f"parity (random weights): {exc}")
    return checkpoint, export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=Path("scorer-artifacts/onnx"))
    parser.add_argument("--checkpoint", type=Path, default=Path("scorer-artifacts/checkpoint"))
    parser.add_argument("--random", choices=sorted(RANDOM_SHAPES), help="Use random weights of this shape instead.")
    parser.add_argument("--random-dir", type=Path, help="Keep the random model here and reuse it if it is there.")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--baseline-rows", type=int, default=20000, help="Rows the PyTorch baselines score.")
    parser.add_argument("--workloads", default="cola,long128")
    parser.add_argument("--variants", default="int8,fp32",
                        help="Variant specs to run: VARIANT[:plain|:bound][:FIELD=N...] (IO binding off/on, RunConfig "
                        "integers such as max_batch_rows=4096 or tokenize_threads=1).")
    parser.add_argument("--stages", metavar="SPECS", help="Also time tokenising and the model alone for these specs "
                        "(comma-separated).")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="Dense fp16 peak, for %% of limit.")
    parser.add_argument("--out", type=Path, default=Path("bench/out/scoring-cpu.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        args.random_dir = args.random_dir or Path(tmp) / "random"
        results = measure_all(args, Path(tmp))
    write_json(args.out, results)


def measure_all(args: argparse.Namespace, tmp: Path) -> dict:
    provider = "cuda" if args.device == "cuda" else "cpu"
    best_batch, best_dtype = (256, torch.bfloat16) if args.device == "cuda" else (64, None)
    best_name = f"pytorch-sorted-b{best_batch}" + ("-bf16" if best_dtype else "")
    results = {"machine": machine(args.device), "rows": args.rows, "random_weights": args.random, "workloads": {}}
    for name in args.workloads.split(","):
        texts = workload(name, args.rows)
        checkpoint, export, export_seconds = args.checkpoint, args.export, None
        if args.random:
            started = time.perf_counter()
            fresh = not (random_export(args.random_dir, name) / "manifest.json").is_file()
            checkpoint, export = random_checkpoint(args.random_dir, args.random, 128, name, texts)
            if fresh:  # what export itself took here (with the random checkpoint, the first time)
                export_seconds = time.perf_counter() - started
                print(f"{name:8} export (random {args.random}, fp32 + fp16): {export_seconds:.0f} s", flush=True)
        model = SentenceClassifier.load(checkpoint).to(args.device).eval()
        encoder = TextEncoder.from_dir(export, model.head_config.max_length)
        subset = texts[: args.baseline_rows]
        reference, seconds = timed(notebook_way, model, subset, checkpoint, args.device)
        rates = {"pytorch-notebook": len(subset) / seconds}
        _, seconds = timed(best_pytorch, model, subset, encoder, args.device, best_batch, best_dtype)
        rates[best_name] = len(subset) / seconds
        agreement, memory, batching = {}, {}, {}
        source, warm_up = tmp / f"input-{name}.parquet", tmp / f"warm-up-{name}.parquet"
        pq.write_table(pa.table({"sentence": texts}), source)
        # The first `scorer run` in a process pays one-off costs (mostly ONNX Runtime's first runs, then first calls
        # into pyarrow and numpy): a 3,000-row CPU run of the tiny model did 10.7k sentences/s first and 16-18k
        # after. An untimed run on a few rows first keeps that off the first variant.
        pq.write_table(pa.table({"sentence": texts[:2000]}), warm_up)
        scorer_run(warm_up, export, provider, args.variants.split(",")[0], tmp)
        for number, variant in enumerate(args.variants.split(",")):
            key = f"scorer-run-{variant}" + (f" (run {number + 1})" if f"scorer-run-{variant}" in rates else "")
            memory[key] = []
            labels, seconds, batching[key] = scorer_run(source, export, provider, variant, tmp, memory[key])
            rates[key] = len(texts) / seconds
            agreement[key] = float((labels[: len(subset)] == reference).mean())
        profile = [stages(texts, export, provider, spec) for spec in args.stages.split(",")] if args.stages else []
        for stage in profile:
            print(f"{name:8} stages ({stage['spec']}): tokenise {stage['tokenise_sentences_per_s']:,.0f}/s, model "
                  f"{stage['model_sentences_per_s']:,.0f}/s in {stage['batches']} batches, padded/real tokens "
                  f"{stage['padded_over_real_tokens']:.3f}", flush=True)
        tokens_per_row = encoder.encode(texts).lengths.mean()
        rows = {key: {"sentences_per_s": rate, "real_tokens_per_s": rate * tokens_per_row,
                      "x_notebook": rate / rates["pytorch-notebook"], "x_best_pytorch": rate / rates[best_name],
                      "label_agreement_with_pytorch_fp32": agreement.get(key)} for key, rate in rates.items()}
        for key, figures in batching.items():
            rows[key]["batching"] = figures
            rows[key]["padded_over_real_tokens"] = figures["padded_tokens"] / max(figures["tokens"], 1)
        if args.device == "cuda" and args.random == "bert-base":
            for row in rows.values():
                row["percent_of_physical_limit"] = 100 * row["real_tokens_per_s"] * FLOP_PER_TOKEN["bert-base"] \
                    / (args.peak_tflops * 1e12)
        results["workloads"][name] = {"texts": len(texts), "baseline_texts": len(subset),
                                      "mean_tokens": float(tokens_per_row), "results": rows, "stages": profile,
                                      "export": load_manifest(export).extra, "export_seconds": export_seconds,
                                      "gpu_memory_used_mib": {k: v for k, v in memory.items() if v}}
        _print_rows(name, rows)
    return results


def _print_rows(name: str, rows: dict) -> None:
    """One line per way of scoring a workload: its speed, against the baselines, and where scorer's run waited."""
    for key, row in rows.items():
        agreement = row["label_agreement_with_pytorch_fp32"]
        print(f"{name:8} {key:24} {row['sentences_per_s']:>9,.0f} sent/s {row['real_tokens_per_s']:>11,.0f} tok/s"
              f"  x{row['x_notebook']:.1f} notebook  x{row['x_best_pytorch']:.2f} best-pytorch"
              + (f"  agree {agreement:.2%}" if agreement is not None else "")
              + (f"  padded/real {row['padded_over_real_tokens']:.3f}, model busy "
                 f"{row['batching']['model_busy_share']:.0%}, waits "
                 + ", ".join(f"{k} {v:.2f}s" for k, v in row["batching"]["waits"].items())
                 if "batching" in row else ""),
              flush=True)


if __name__ == "__main__":
    main()
