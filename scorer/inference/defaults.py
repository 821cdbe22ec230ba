"""What `scorer run` does where it is not told: each provider's batch, window and thread defaults, and the variant,
run mode and kernel options that export measured for a graph and recorded in its manifest."""

from __future__ import annotations

from collections.abc import Callable

from scorer.machine import cpu_identity, cpu_said, gpu_identity, int8_kernels_differ
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


def chosen_variant(provider: str, manifest: Manifest, here: dict | None = None) -> tuple[str, str, str | None]:
    """The variant `scorer run` takes where it is not told, why in words, and a caution where the why was measured
    on a CPU whose int8 kernels differ from those of CPU `here` (default: this machine's, scorer.machine).

    fp16 on CUDA, int8 on a CPU, when that variant exists and passed parity; fp32 otherwise. int8 is the CPU default
    only when export timed it faster than fp32 (partly quantised graphs may not be), on the export machine's CPU.
    TensorRT takes the plain fp32 graph and builds its own fp16 engine (it cannot run ORT's fused ops).
    """
    if provider == "tensorrt":
        return "fp32", "TensorRT builds its own fp16 engine from the fp32 graph", None
    preferred = "fp16" if provider == "cuda" else "int8"
    entry = manifest.variants.get(preferred)
    if entry is None or entry.parity_passed is False:
        return "fp32", f"the export has no {preferred} graph that passed its parity gate", None
    if preferred == "fp16":
        return "fp16", "fp16 on CUDA", None
    int8 = manifest.extra.get("int8") or {}
    timed = int8.get("timed") or {}
    if "speedup" not in timed:
        if int8.get("quantized") == 0:
            return "fp32", "no int8 graph met export's accuracy targets: its int8 file is the fp32 graph", None
        if int8.get("speedup", MIN_INT8_SPEEDUP) < MIN_INT8_SPEEDUP:
            return "fp32", f"export timed int8 at {int8['speedup']:.2f}x fp32's speed (needs {MIN_INT8_SPEEDUP}x)", None
        return "int8", "int8 on a CPU (export recorded no timing)", None
    on = f" on {cpu_said(timed['cpu'])}" if timed.get("cpu") else ""
    variant = "int8" if int8.get("speedup", 1.0) >= MIN_INT8_SPEEDUP else "fp32"
    why = f"export timed int8 at {timed['speedup']:.2f}x fp32's speed{on}" + \
        ("" if variant == "int8" else f" (needs {MIN_INT8_SPEEDUP}x; its int8 file is the fp32 graph)")
    here = cpu_identity() if here is None else here
    if not timed.get("cpu") or not int8_kernels_differ(timed["cpu"], here):
        return variant, why, None
    caution = f"this machine's CPU, {cpu_said(here)}, has other int8 kernels than the one export timed int8 on, " + \
        ("so int8 may not be the faster here: `--variant fp32` scores with fp32; time both on a few thousand "
         "rows (`scorer run SAMPLE --overwrite --variant int8`, then `--variant fp32`: each summary's "
         "rows_per_second)" if
         variant == "int8" else "so int8 may be the faster here: export on a machine like this one to time it here")
    return variant, why, caution


def _measured(provider: str, variant: str, manifest: Manifest) -> dict:
    """What export measured for this graph on this provider: the fp16 graph on CUDA (export.fp16_choice), else {}."""
    fp16 = manifest.extra.get("fp16") or {}
    return fp16 if variant == "fp16" and provider == "cuda" == fp16.get("measured_on") else {}


def fp16_timing_caution(provider: str, variant: str, manifest: Manifest,
                        gpu: Callable[[], str | None] = gpu_identity) -> str | None:
    """Where a run takes what export timed for the fp16 graph on CUDA (the graph's attention, its kernels, run mode
    and batch cost) and export timed it on another GPU model than this machine's (`gpu()`, asked only then:
    scorer.machine.gpu_of), a caution saying so; None otherwise."""
    timed_on = _measured(provider, variant, manifest).get("gpu")
    here = gpu() if timed_on else None
    if here is None or timed_on == here:
        return None
    return (f"export timed the fp16 graph's attention, kernels and run mode on {timed_on}, and this machine's GPU is "
            f"{here}: they may not be the fastest here; export on a machine like this one to time them here")


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
