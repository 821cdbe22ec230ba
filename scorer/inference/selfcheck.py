"""A small batch and the logits the export machine's graphs gave it, kept in the export, so that `scorer run` can see
before it scores anything that the machine it runs on computes the chosen graph as export did (another GPU, driver,
kernel choice or CPU instruction set can compute a graph differently, and nothing else would notice).

Rows of mixed lengths, padded to the longest, so that the mask's handling is exercised. The fp32 and int8 graphs'
logits are recorded on the export machine's CPU; a run's fp32, fp16 or TensorRT session is held to the fp32 logits,
an int8 session to the int8 ones (dynamic int8 on the same batch is deterministic where the integer kernels agree).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from scorer.errors import ParityError
from scorer.inference.session import batch_runner, create_session
from scorer.manifest import Manifest, sha256_file, verify_file
from scorer.text.tokens import Encoded

log = logging.getLogger("scorer")
FILE = "selfcheck.npz"
ROWS, TOKENS = 32, 1024
# How far a run's logits may be from the recorded ones. fp16 (and TensorRT's fp16 engines) as export's fp16 gate
# allows: 0.05 or 2% of the largest logit, whichever is more (fp16 moved random bert-base's logits, up to 0.66, by
# up to 9e-3 on an H200, the trained CoLA MiniLM's, up to 3.4, by 8.5e-3 on the CPU box; a graph that ignored the
# padding moved random bert-base's by 0.27: bench/RESULTS.md 7.13). fp32: 0.01 or 0.5% of the largest logit, for
# TF32, which ONNX Runtime's CUDA provider uses for fp32 matrix products by default (10-bit mantissas); int8: rounding.
TOLERANCE = {"fp32": (0.01, 0.005), "fp16": (0.05, 0.02), "int8": (0.05, 0.0)}


def allowed(expected: np.ndarray, tolerance: float, relative: float) -> float:
    return max(tolerance, relative * float(np.abs(expected).max(initial=0.0)))


def record(directory: Path, variants: dict[str, Path], encoded: Encoded, input_names: list[str]) -> dict:
    """Write FILE into the export `directory`: up to ROWS rows of `encoded` spread over its lengths (as many of the
    shorter ones as fit TOKENS padded), and the fp32 (and int8) graphs' logits for them on this CPU; returns the
    manifest's entry for it."""
    by_length = np.argsort(encoded.lengths, kind="stable")
    rows = by_length[np.unique(np.linspace(0, len(by_length) - 1, min(ROWS, len(by_length))).round().astype(int))]
    # Shortest first, as many as fit TOKENS padded (a run pays for this batch at every start, on a CPU too).
    fits = np.arange(1, len(rows) + 1) * encoded.lengths[rows] <= TOKENS
    rows = rows[: max(2, int(fits.sum()))]
    input_ids, attention_mask = encoded.pad(rows)
    feed = dict(zip(input_names, (input_ids, attention_mask), strict=True))
    logits = {name: batch_runner(create_session(variants[name], "cpu"), "cpu", io_binding=False)(feed)
              for name in ("fp32", "int8") if name in variants}
    path = directory / FILE
    with open(path, "wb") as handle:
        np.savez(handle, input_ids=input_ids, attention_mask=attention_mask, **logits)
    return {"file": FILE, "sha256": sha256_file(path), "rows": len(rows)}


def verify(directory: Path, manifest: Manifest, run, variant: str, provider: str) -> dict | None:
    """Run the recorded batch through `run` (the session a run scores with) and compare with what export recorded;
    raise ParityError when it is further than the variant allows. None for an export made without the file."""
    entry = manifest.extra.get("self_check")
    if not entry:
        log.info("%s has no self-check batch (exported by an older scorer): not checked", directory)
        return None
    path = directory / entry["file"]
    verify_file(path, entry["sha256"], directory)
    with np.load(path) as saved:
        feed = dict(zip(manifest.input_names, (saved["input_ids"], saved["attention_mask"]), strict=True))
        reference = "int8" if variant == "int8" else "fp32"
        expected = saved[reference]
    kind = "fp16" if variant == "fp16" or provider == "tensorrt" else variant
    limit = allowed(expected, *TOLERANCE[kind])
    logits = run(feed)
    worst = float(np.abs(logits - expected).max())
    result = {"rows": int(expected.shape[0]), "reference": reference, "max_abs_diff": worst, "allowed": limit}
    if not worst <= limit:  # NaN fails too
        instead = "--variant fp32" if variant != "fp32" else "--provider cpu" if provider != "cpu" else None
        raise ParityError(
            f"{directory}: the {variant} graph on {provider} gives logits {worst:.3g} away from the {reference} "
            f"graph's recorded at export on {result['rows']} rows (at most {limit:.3g} allowed): this machine "
            f"computes it differently from the one export ran on; nothing was scored. "
            + (f"Run with {instead}, or export again on this machine" if instead else "Export again on this machine"))
    log.info("self-check: %d rows %s the %s logits recorded at export (allowed %.3g)", result["rows"],
             f"within {worst:.3g} of" if worst else "equal to", reference, limit)
    return result
