"""Rows whose logits come out NaN or infinite (an fp16 or int8 graph overflowing on them): scored again on the
export's fp32 graph, so that a row is never given the label a NaN happens to argmax to."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from scorer.errors import ModelError
from scorer.inference.defaults import default_provider_options
from scorer.inference.session import batch_runner, create_session
from scorer.manifest import Manifest
from scorer.text.batches import budget_batches
from scorer.text.tokens import Encoded

log = logging.getLogger("scorer")


def finite_rows(logits: np.ndarray) -> np.ndarray:
    """Which rows of `logits` hold only finite values."""
    return np.isfinite(logits).all(axis=1)


class Rescue:
    """The fp32 graph, opened on first need, for rows another variant (or TensorRT's fp16 engine) could not score.

    Where the run already uses the fp32 graph there is nothing to fall back on: such rows stay non-finite and the
    caller leaves them unscored."""

    def __init__(self, directory: Path, manifest: Manifest, provider: str, variant: str, input_names: list[str],
                 max_tokens: int, threads: int | None = None) -> None:
        self.directory, self.manifest, self.input_names, self.max_tokens = directory, manifest, input_names, max_tokens
        self.threads = threads  # (ONNX Runtime's CPU threads: the run's --cpu-threads)
        # TensorRT runs the fp32 graph as an fp16 engine: its rows are rescued by the fp32 graph on CUDA.
        self.provider = "cuda" if provider == "tensorrt" else provider
        self.possible = variant != "fp32" or provider == "tensorrt"
        self._run = None

    def logits(self, encoded: Encoded, rows: np.ndarray) -> np.ndarray:
        """Logits of `rows` of `encoded` from the fp32 graph (all NaN where it is not a fallback)."""
        out = np.full((len(rows), len(self.manifest.labels)), np.nan, dtype=np.float32)
        if not self.possible or not len(rows):
            return out
        if self._run is None:
            try:
                path = self.manifest.variant("fp32", self.directory)
            except ModelError as exc:  # (checked as the run started: the directory changed since)
                raise ModelError(f"{self.directory} changed while this run ran (exported again?): its fp32 graph, "
                                 f"needed now for {len(rows)} row(s) whose logits are not finite, is not the model "
                                 f"this run started with ({exc}); run again once the export is complete") from exc
            log.info("opening %s for the rows whose logits are not finite", path)
            session = create_session(path, self.provider,
                                     default_provider_options(self.provider, "fp32", self.manifest), self.threads)
            self._run = batch_runner(session, self.provider, io_binding=False)
        for batch in budget_batches(encoded.lengths[rows], self.max_tokens, len(rows)):
            out[batch] = self._run(dict(zip(self.input_names, encoded.pad(rows[batch]), strict=True)))
        return out
