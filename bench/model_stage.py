"""The model stage of `scorer run` alone, under each session and batching setting: where does GPU time go?

    python bench/model_stage.py --device cuda --random bert-base --random-dir /tmp/random-bert --out stage.json

On pre-tokenised CoLA-like sentences (as scorer tokenises them, in windows), times the token-budget batches
through an ONNX Runtime session for each setting in SETTINGS (window size and batch overhead, i.e. padding, as
scorer.text.batches batches a window; rows per batch, token budget, IO binding, padded width rounded up, intra-op
threads and spinning, each fp16 attention (fused, MultiHeadAttention, unfused) with each kernel setting of
export.fp16_choice, batches in flight), then one fixed shape run repeatedly, with and without a captured CUDA graph: the
graph's ceiling, launches included or not.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import bench_session, bound_median, machine, write_json
from scoring import random_checkpoint, workload

from export.fp16_choice import KERNELS
from scorer.config import FP16_ATTENTIONS
from scorer.inference.defaults import (
    DEFAULT_INFER_THREADS,
    DEFAULT_WINDOW_ROWS,
    default_batch_overhead,
    default_io_binding,
    default_provider_options,
)
from scorer.inference.session import batch_runner, onnxruntime
from scorer.manifest import VARIANT_FILES, load_manifest
from scorer.text.batches import BatchTally, WindowBatcher
from scorer.text.tokens import Encoded, TextEncoder


@dataclass(frozen=True)
class Setting:
    """One way to run the model stage. None: scorer's own choice for the provider (intra-op threads: one on a GPU,
    one per core on a CPU; 0 is one per core anyway). Width multiple: padded widths rounded up to it."""

    graph: str = "chosen"
    max_rows: int = 4096
    max_tokens: int = 32768
    io_binding: bool | None = None  # None: the run mode that export timed faster (scorer's default on CUDA)
    multiple: int = 1
    threads: int | None = None
    spinning: bool = True
    in_flight: int | None = None
    window_rows: int | None = None
    overhead: int | None = None
    kernels: str | None = None  # export.fp16_choice.KERNELS; None: what export chose for its graph (on CUDA)


SETTINGS = {
    "scorer default": Setting(),
    "run 4's batching (16k windows, budget cuts only)": Setting(window_rows=16384, overhead=10**9),
    "16k windows": Setting(window_rows=16384),
    "131k windows": Setting(window_rows=131072),
    "overhead 1024": Setting(overhead=1024),
    "overhead 4096": Setting(overhead=4096),
    "one batch in flight": Setting(in_flight=1),
    "three batches in flight": Setting(in_flight=3),
    "plain runs": Setting(io_binding=False),
    "IO binding": Setting(io_binding=True),
    "a thread per core": Setting(threads=0),
    "a thread per core, no spinning": Setting(threads=0, spinning=False),
    "rows 8192 budget 64k": Setting(max_rows=8192, max_tokens=65536),
    "widths rounded up to x8": Setting(multiple=8),
    "fused attention": Setting(graph="fused", kernels="default"),
    "fused attention, cuDNN kernels": Setting(graph="fused", kernels="cudnn"),
    "fused attention, memory-efficient kernels": Setting(graph="fused", kernels="efficient"),
    "MultiHeadAttention": Setting(graph="mha", kernels="default"),
    "MultiHeadAttention, cuDNN kernels": Setting(graph="mha", kernels="cudnn"),
    "MultiHeadAttention, memory-efficient kernels": Setting(graph="mha", kernels="efficient"),
    "unfused attention": Setting(graph="unfused", kernels="default"),
    # last: kernels that export only tried in a child process, so a crash here cannot spoil the settings before
    "fused attention, padding removed": Setting(graph="fused", kernels="packed"),
    "MultiHeadAttention, padding removed": Setting(graph="mha", kernels="packed"),
}


def stage_rate(runner, windows: list[Encoded], setting: Setting, overhead: int, in_flight: int
               ) -> tuple[float, BatchTally]:
    """Sentences/s of every window's batches through `runner` (after one warm-up window), and what they cost; with
    `in_flight` threads calling it at once, as `scorer run --infer-threads` does."""

    def one_pass(items, pool):
        tally = BatchTally()
        for encoded in items:  # as scorer.inference.classify runs a window: each batch padded and run by a worker
            def run(batch, encoded=encoded):
                width = -(-batch.width // setting.multiple) * setting.multiple
                ids, mask = encoded.pad(batch.parts[0][1], width)
                return runner({"input_ids": ids, "attention_mask": mask})

            batcher = WindowBatcher(setting.max_tokens, setting.max_rows, overhead)
            batches = batcher.add(encoded.lengths) + batcher.flush()
            for batch in batches:
                tally.add(batch)
            for _ in pool.map(run, batches) if pool else map(run, batches):
                pass
        return tally

    with ThreadPoolExecutor(in_flight) if in_flight > 1 else nullcontext() as pool:
        one_pass(windows[:1], pool)
        started = time.perf_counter()
        tally = one_pass(windows, pool)
        return tally.rows / (time.perf_counter() - started), tally


def measure(setting: Setting, graphs: dict, manifest, windows: list[Encoded], provider: str) -> dict:
    """One setting's model stage: sentences/s, tokens/s, batches and padding, and what it ran with."""
    binding = default_io_binding(provider, "fp16", manifest) if setting.io_binding is None else setting.io_binding
    kernels = KERNELS.get(setting.kernels)
    options = chosen_options(provider, manifest) if kernels is None else kernels.cuda_options
    graph = graphs[setting.graph + (f" {setting.kernels}" if kernels and kernels.rewrite else "")]
    runner = batch_runner(bench_session(graph, provider, options, setting.threads, setting.spinning), provider,
                          binding)
    in_flight = setting.in_flight or DEFAULT_INFER_THREADS[provider]
    overhead = default_batch_overhead(provider, "fp16", manifest) if setting.overhead is None else setting.overhead
    rate, tally = stage_rate(runner, windows, setting, overhead, in_flight)
    return {"sentences_per_s": rate, "real_tokens_per_s": rate * tally.tokens / tally.rows, "batches": tally.batches,
            "padded_over_real_tokens": tally.padded_over_real, "in_flight": in_flight,
            "overhead": overhead, "io_binding": binding, "cuda_options": options}


def chosen_options(provider: str, manifest) -> dict:
    """The provider options scorer runs the export's fp16 graph with (on CUDA, export's kernel choice; none on a
    CPU)."""
    return default_provider_options(provider, "fp16", manifest) or {}


def fixed_shape(path: Path, provider: str, rows: int, width: int, graph: bool, options: dict,
                host_inputs: bool = False, repeats: int = 30) -> float:
    """Median seconds of one run at a fixed shape, output bound on the device (CUDA graph or not); the inputs
    already there, or (`host_inputs`) bound from host arrays each run, so copied in as `scorer run` copies them."""
    ort = onnxruntime()
    sess = bench_session(path, provider, {**options, "enable_cuda_graph": "1"} if graph else options)
    device = "cuda" if provider == "cuda" else "cpu"
    types = {i.name: np.int32 if i.type == "tensor(int32)" else np.int64 for i in sess.get_inputs()}
    rng = np.random.default_rng(0)
    feeds = {name: np.ascontiguousarray(array, types[name]) for name, array in
             (("input_ids", rng.integers(1000, 20000, (rows, width))), ("attention_mask", np.ones((rows, width))))}
    # a CUDA graph replays into the same output buffer, so it is allocated once here
    logits = ort.OrtValue.ortvalue_from_shape_and_type([rows, 2], np.float32, device, 0)
    return bound_median(sess, feeds, device, repeats, logits, host_inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--random", default="bert-base", help="Random-weight shape (bench/scoring.py).")
    parser.add_argument("--random-dir", type=Path)
    parser.add_argument("--rows", type=int, default=200000)
    parser.add_argument("--fixed-shapes", default="1024x16,4096x16,256x128",
                        help="Batch shapes, rows x width, at which the chosen graph is timed alone.")
    parser.add_argument("--out", type=Path, default=Path("bench/out/model-stage.json"))
    args = parser.parse_args()
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.fixed_shapes.split(",")]
    provider = "cuda" if args.device == "cuda" else "cpu"
    texts = workload("cola", args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.random_dir or Path(tmp)
        _, export = random_checkpoint(directory, args.random, 128, "cola", texts)
        graphs = fp16_graphs(export, directory)
        encoder, manifest = TextEncoder.from_dir(export, 128), load_manifest(export)
        encoded: dict[int, list[Encoded]] = {}  # windows of each size, tokenised once
        results = {"machine": machine(args.device), "rows": len(texts), "attention_chosen": graphs["chosen_attention"],
                   "settings": {}, "fixed_shape": {}}
        for name, setting in SETTINGS.items():
            rows = setting.window_rows or DEFAULT_WINDOW_ROWS[provider]
            if rows not in encoded:
                encoded[rows] = [encoder.encode(texts[s : s + rows]) for s in range(0, len(texts), rows)]
            try:
                results["settings"][name] = {**measure(setting, graphs, manifest, encoded[rows], provider),
                                             "window_rows": rows}
            except Exception as exc:  # one setting that cannot run here (a graph's kernel, say) must not stop the rest
                results["settings"][name] = {"error": str(exc).splitlines()[0][:300]}
                print(f"{name:50} failed: {results['settings'][name]['error']}", flush=True)
                continue
            row = results["settings"][name]
            print(f"{name:50} {row['sentences_per_s']:>9,.0f} sentences/s in {row['batches']} batches, padded/real "
                  f"{row['padded_over_real_tokens']:.3f}", flush=True)
        # The graph's ceiling at fixed shapes; with a captured CUDA graph (launches); with the inputs copied in from
        # pageable host arrays each run (the most that pinned host buffers could save).
        for rows, width in shapes:
            for graph, host in ((False, False), (True, False), (False, True)):
                key = f"{rows}x{width}" + (" cuda graph" if graph else "") + (" host inputs" if host else "")
                try:
                    seconds = fixed_shape(graphs["chosen"], provider, rows, width, graph,
                                          chosen_options(provider, manifest), host)
                except Exception as exc:  # a CUDA graph capture can fail on some graphs: record why
                    results["fixed_shape"][key] = {"error": str(exc).splitlines()[0][:300]}
                    print(f"{key:28} failed: {results['fixed_shape'][key]['error']}", flush=True)
                    continue
                results["fixed_shape"][key] = {"ms": seconds * 1e3, "tokens_per_s": rows * width / seconds}
                print(f"{key:28} {seconds * 1e3:8.2f} ms  {rows * width / seconds:>12,.0f} tokens/s", flush=True)
    write_json(args.out, results)


def fp16_graphs(export: Path, directory: Path) -> dict:
    """The export's fp16 graph ("chosen") and one with each attention (fused, mha, unfused), built as export builds
    them, the fused ones also rewritten for each KERNELS setting that rewrites the graph ("fused efficient", "mha
    packed"); the export's own file for the attention it chose."""
    from export.optimize import graph_file, optimize_each

    fp16 = json.loads((export / "manifest.json").read_text())["extra"]["fp16"]
    chosen = fp16["attention"] if not KERNELS[fp16.get("kernels") or "default"].rewrite else None
    shape = json.loads((directory / "checkpoint" / "config.json").read_text())
    graphs = {"chosen": export / VARIANT_FILES["fp16"], "chosen_attention": fp16["attention"]}
    built = directory / "fp16"  # each attention's graph, kept for the next run
    built.mkdir(exist_ok=True)
    missing = [a for a in FP16_ATTENTIONS if a != chosen and not graph_file(built, a).is_file()]
    failed = {a: why for a, why in optimize_each(export / VARIANT_FILES["fp32"], built, shape["num_attention_heads"],
                                                 shape["hidden_size"], missing).items() if isinstance(why, Exception)}
    if failed:
        raise RuntimeError(f"could not build the fp16 graphs: {failed}")
    for attention in FP16_ATTENTIONS:
        graphs[attention] = graphs["chosen"] if attention == chosen else graph_file(built, attention)
        for name, kernels in KERNELS.items():
            if attention != "unfused" and kernels.rewrite:
                graphs[f"{attention} {name}"] = directory / f"fp16-{attention}-{name}.onnx"
                kernels.rewrite(graphs[attention], graphs[f"{attention} {name}"])
    return graphs


if __name__ == "__main__":
    main()
