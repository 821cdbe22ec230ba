"""Does `scorer run` keep the model busy while it tokenises? A CPU-only check of the pipeline's overlap.

    python bench/overlap.py --rows 100000 --model-speed 1.2 [--workload long128]
    python bench/overlap.py --rows 200000 --model-speed inf     # a model that takes no time: the pipeline's ceiling
    python bench/overlap.py --rows 200000 --model-speed 0.2 --infer-threads 2 --window-rows 65536 \
        --max-tokens 32768 --batch-overhead 2048             # batched as on CUDA, a model 5x slower than tokenising

On a GPU the model uses almost no CPU, so end to end should run at the slower of two stages: tokenising and the
model. Here the model is a stand-in that takes no CPU and holds no GIL: for each batch it sleeps as long as a
model `--model-speed` times faster than this machine's tokenising would take for that many tokens, and returns
zero logits. Everything else is scorer's own code: the Parquet reader, the tokenize threads, padding, the part
writer and the final assembly. The script times tokenising alone, the stand-in alone and `scorer run` end to end
(with 1, 2 and 4 tokenize threads), and writes JSON: the end-to-end rate over the slower stage is the overlap, and
where the stand-in sat idle end to end (before its first batch, between batches, after its last) says why.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import machine, write_json
from scoring import random_checkpoint, workload

import scorer.inference.classify
import scorer.scoring.single
from scorer.config import RunConfig
from scorer.inference import defaults
from scorer.scoring.score import score_file


def stand_in(seconds_per_token: float, busy: list[tuple[float, float]]):
    """A batch runner that sleeps (GIL released, no CPU) rows x width x seconds_per_token and returns zeros; one
    batch at a time, like one GPU: with several batches in flight, the others wait (having been padded). Each
    batch's start and end go into `busy`."""
    device = threading.Lock()

    def make(session, provider, io_binding):
        def run(feed: dict[str, np.ndarray]) -> np.ndarray:
            ids = next(iter(feed.values()))
            with device:
                started = time.perf_counter()
                time.sleep(ids.size * seconds_per_token)
                busy.append((started, time.perf_counter()))
            return np.zeros((len(ids), 2), dtype=np.float32)

        return run

    return make


def timed_stream(starts: list[float]):
    """scorer.scoring.single's `stream`, noting when each input's pipeline starts (its unit time starts just before)."""
    original = scorer.scoring.single.stream

    def stream(*args, **kwargs):
        starts.append(time.perf_counter())
        return original(*args, **kwargs)

    return stream


def idle(busy: list[tuple[float, float]], started: float, unit_start: float, unit_seconds: float) -> dict:
    """Where the stand-in sat idle during one `scorer run`: before its first batch (from the start of the input's
    pipeline, model loading excluded), between batches, and after its last one (to the end of the input's unit
    time: the last window's write, the tally, the output's fsync and rename)."""
    return {"before_first_batch_s": busy[0][0] - unit_start, "loading_s": unit_start - started,
            "between_batches_s": sum(b[0] - a[1] for a, b in itertools.pairwise(busy)), "batches": len(busy),
            "after_last_batch_s": unit_start + unit_seconds - busy[-1][1],
            "busy_s": sum(end - start for start, end in busy)}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100000)
    parser.add_argument("--model-speed", type=float, default=1.2,
                        help="Stand-in model speed / tokenising speed ('inf': the stand-in takes no time).")
    parser.add_argument("--workload", choices=["cola", "long128"], default="cola",
                        help="CoLA sentences, or texts of 100 words (see bench/scoring.py)")
    parser.add_argument("--random-dir", type=Path, help="Keep the tiny random export here and reuse it.")
    parser.add_argument("--infer-threads", type=int, default=1,
                        help="Batches in flight on the stand-in (2: as scorer runs on CUDA).")
    parser.add_argument("--max-tokens", type=int, default=defaults.DEFAULT_MAX_TOKENS["cpu"],
                        help=f"Token budget per batch ({defaults.DEFAULT_MAX_TOKENS['cuda']}: as on CUDA).")
    parser.add_argument("--batch-overhead", type=int, default=defaults.DEFAULT_BATCH_OVERHEAD["cpu"],
                        help="Tokens' worth of work one more batch costs (scorer.text.batches; "
                             f"{defaults.DEFAULT_BATCH_OVERHEAD['cuda']}: as scorer runs on CUDA).")
    parser.add_argument("--window-rows", type=int, default=defaults.DEFAULT_WINDOW_ROWS["cpu"],
                        help="Rows a window (65536: as scorer runs on CUDA).")
    parser.add_argument("--out", type=Path, default=Path("bench/out/overlap.json"))
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    texts = workload(args.workload, args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        _, export = random_checkpoint(args.random_dir or Path(tmp), "tiny", 128, args.workload, texts)
        source = Path(tmp) / "input.parquet"
        pq.write_table(pa.table({"sentence": texts}), source)
        classifier = scorer.inference.classify.OnnxClassifier(export, "cpu", "fp32")
        column = pa.array(texts)
        window = args.window_rows
        started = time.perf_counter()
        prepared = [classifier.prepare(column.slice(s, window)) for s in range(0, len(texts), window)]
        tokenise = len(texts) / (time.perf_counter() - started)
        tokens = sum(int(p.encoded.lengths.sum()) for p in prepared)
        busy: list[tuple[float, float]] = []
        scorer.inference.classify.batch_runner = stand_in(1 / (tokenise * args.model_speed * tokens / len(texts)), busy)
        # The stand-in's logits are not the graph's: `scorer run`'s self-check would (rightly) refuse it.
        scorer.inference.classify.OnnxClassifier.self_check = lambda self: None
        unit_starts: list[float] = []
        scorer.scoring.single.stream = timed_stream(unit_starts)
        classifier = scorer.inference.classify.OnnxClassifier(export, "cpu", "fp32", infer_threads=args.infer_threads,
                                                    max_tokens=args.max_tokens, batch_overhead=args.batch_overhead)
        started = time.perf_counter()
        for item in prepared:
            classifier.infer([item])
        seconds = time.perf_counter() - started
        model, alone_busy = len(texts) / seconds, sum(end - start for start, end in busy) / seconds
        results = {"machine": machine(), "workload": args.workload, "rows": len(texts),
                   "model_speed": str(args.model_speed), "tokenise_sentences_per_s": tokenise,
                   "stand_in_model_sentences_per_s": model, "stand_in_alone_busy_share": alone_busy, "end_to_end": {}}
        print(f"tokenise alone {tokenise:,.0f}/s, stand-in model alone {model:,.0f}/s (busy {alone_busy:.0%} of "
              "the time: the rest is padding and handing batches over)", flush=True)
        for threads in (1, 2, 4):
            config = RunConfig(input=str(source), output=Path(tmp) / "out.parquet", model=export, provider="cpu",
                               variant="fp32", overwrite=True, tokenize_threads=threads,
                               infer_threads=args.infer_threads, window_rows=window,
                               max_tokens=args.max_tokens, batch_overhead=args.batch_overhead)
            busy.clear()
            started = time.perf_counter()
            seconds = score_file(config, progress=False).seconds
            spent = idle(busy, started, unit_starts[-1], seconds)
            rate = len(texts) / seconds
            results["end_to_end"][f"tokenize_threads={threads}"] = {
                "sentences_per_s": rate, "over_slower_stage": rate / min(tokenise, model), "stand_in": spent}
            print(f"end to end, {threads} tokenize threads: {rate:,.0f}/s = {rate / min(tokenise, model):.0%} "
                  f"of the slower stage; of {seconds:.2f}s the stand-in was busy {spent['busy_s']:.2f}s, idle "
                  f"{spent['before_first_batch_s']:.3f}s before its first batch, {spent['between_batches_s']:.3f}s "
                  f"between its {spent['batches']} batches, {spent['after_last_batch_s']:.3f}s after its last",
                  flush=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
