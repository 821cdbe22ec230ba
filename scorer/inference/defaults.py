"""What `scorer run` does where it is not told: each provider's batch, window and thread defaults, and the variant,
run mode and kernel options that export measured for a graph and recorded in its manifest."""

from __future__ import annotations

from scorer.manifest import Manifest

# Tokens per batch (rows x padded length): large enough to fill a GPU, small enough for CPU caches.
DEFAULT_MAX_TOKENS = {"cpu": 4096, "cuda": 32768, "tensorrt": 32768}
# What one more batch costs, in tokens' worth of work (scorer.text.batches), where export did not measure it for the
# graph (it does for fp16 on CUDA): on this project's 2-core CPU box a run of the packaged MiniLM costs about 10
# tokens more than its tokens (1.7 ms against 0.18 ms a token); on an H200 the anchor's budgets (137k sentences/s
# at 8k tokens, 153k at 32k) put it near 1,300, an H100 run with IO binding near 5,500 (bench/RESULTS.md 7.12).
DEFAULT_BATCH_OVERHEAD = {"cpu": 16, "cuda": 2048, "tensorrt": 2048}
# Rows sorted and batched together (RunConfig.window_rows): see its comment.
DEFAULT_WINDOW_ROWS = {"cpu": 16384, "cuda": 65536, "tensorrt": 65536}
# Batches in flight at once: on CUDA one is padded and copied while another runs (H200, runs 3 and 4: +8% end to
# end both times, though measured after the one-batch run, which as the first run in its process also paid one-off
# costs: bench/RESULTS.md 7.12); on a CPU the session already uses every core. TensorRT is unmeasured: one.
DEFAULT_INFER_THREADS = {"cpu": 1, "cuda": 2, "tensorrt": 1}


# int8 must have been at least this much faster than fp32 at export to be kept (else its file is the fp32 graph)
# and the CPU default: it costs labels and moves probabilities, and on this project's 2-core boxes one run differs
# from the next by up to 10%, and a half-int8 graph measured 1.05-1.10x fp32 ran slower end to end (bench/RESULTS.md 3).
MIN_INT8_SPEEDUP = 1.2


def default_variant(provider: str, manifest: Manifest) -> str:
    """fp16 on CUDA, int8 on a CPU, when that variant exists and passed parity; fp32 otherwise.

    int8 is the CPU default only when export measured it faster than fp32 (partly quantised graphs may not be).
    TensorRT takes the plain fp32 graph and builds its own fp16 engine (it cannot run ORT's fused ops).
    """
    if provider == "tensorrt":
        return "fp32"
    preferred = "fp16" if provider == "cuda" else "int8"
    entry = manifest.variants.get(preferred)
    if entry is None or entry.parity_passed is False:
        return "fp32"
    if preferred == "int8" and manifest.extra.get("int8", {}).get("speedup", MIN_INT8_SPEEDUP) < MIN_INT8_SPEEDUP:
        return "fp32"
    return preferred


def _measured(provider: str, variant: str, manifest: Manifest) -> dict:
    """What export measured for this graph on this provider: the fp16 graph on CUDA (export.fp16_choice), else {}."""
    fp16 = manifest.extra.get("fp16") or {}
    return fp16 if variant == "fp16" and provider == "cuda" == fp16.get("measured_on") else {}


def default_io_binding(provider: str, variant: str, manifest: Manifest) -> bool:
    """IO binding where export timed it faster for this graph on this provider; plain runs everywhere else."""
    return bool(_measured(provider, variant, manifest).get("io_binding"))


def default_provider_options(provider: str, variant: str, manifest: Manifest) -> dict | None:
    """The CUDA options that export measured this graph fastest with (its attention kernels), else None."""
    return _measured(provider, variant, manifest).get("cuda_options") or None


def default_batch_overhead(provider: str, variant: str, manifest: Manifest) -> int:
    """The per-run cost that export measured for this graph on this provider, else the provider's default."""
    measured = _measured(provider, variant, manifest).get("batch_overhead")
    return DEFAULT_BATCH_OVERHEAD[provider] if measured is None else int(measured)
