"""Classify texts with an exported model: verified manifest, checked provider, token-budget batches."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scorer.data.labels import LabelIndex
from scorer.data.strings import plain_text
from scorer.errors import ConfigError, ModelError, ProviderError
from scorer.inference import selfcheck
from scorer.inference.defaults import (
    DEFAULT_INFER_THREADS,
    DEFAULT_MAX_TOKENS,
    chosen_variant,
    default_batch_overhead,
    default_io_binding,
    default_provider_options,
    fp16_timing_caution,
)
from scorer.inference.rescue import Rescue
from scorer.inference.results import (
    CODE,
    EMPTY,
    NOT_TEXT,
    NULL,
    OK,
    STATUS_NAMES,
    TRUNCATED,
    Prepared,
    Scored,
    decided,
    scored,
)
from scorer.inference.session import batch_runner, create_session, resolve_provider
from scorer.manifest import load_manifest
from scorer.text.batches import Batch, BatchTally, WindowBatcher
from scorer.text.tokens import Encoded, TextEncoder, is_text

log = logging.getLogger("scorer")

@dataclass
class Started:
    """One window's batches on the model (OnnxClassifier.start): its pieces' ids, each batch with its future (or its
    logits, where batches run on the calling thread), and the logits arrays `collect` fills."""

    encoded: list[Encoded] = field(default_factory=list)
    running: list[tuple[Batch, Future | np.ndarray]] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)


class OnnxClassifier:
    """An export directory opened for scoring on one provider and one variant."""

    def __init__(self, directory: Path, provider: str = "auto", variant: str | None = None,
                 max_tokens: int | None = None, max_batch_rows: int = 4096, provider_options: dict | None = None,
                 io_binding: bool | None = None, infer_threads: int | None = None, word_cache: bool = True,
                 batch_overhead: int | None = None, threshold: float | None = None,
                 cpu_threads: int | None = None) -> None:
        """`threshold`: a two-label model labels a row positive where its score is at least this (None: the one
        recorded at export, else the more probable label)."""
        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        if threshold is not None and len(self.manifest.labels) != 2:
            raise ConfigError(f"--threshold needs a model of two labels, and {self.directory} has "
                              f"{len(self.manifest.labels)} ({', '.join(map(str, self.manifest.labels))}); drop "
                              "--threshold (each row gets its most probable label)")
        # (where from, for the run's result line: the one --threshold gives, or the one export recorded)
        self.threshold_from = "--threshold" if threshold is not None else \
            "export" if self.manifest.threshold is not None else None
        self.threshold = threshold if threshold is not None else self.manifest.threshold
        self.manifest.verify_tokenizer(self.directory)
        self.encoder = TextEncoder.from_dir(self.directory, self.manifest.max_length, word_cache)
        if self.encoder.vocab_size > self.manifest.vocab_size:
            raise ModelError(f"{self.directory}: tokenizer.json has {self.encoder.vocab_size} tokens but the "
                                f"model only {self.manifest.vocab_size}; export again")
        self.provider = resolve_provider(provider)
        if self.provider == "tensorrt" and provider_options is None:
            from export import tensorrt

            provider_options = tensorrt.provider_options(self.directory / tensorrt.CACHE_DIR,
                                                         self.manifest.max_length, max_batch_rows)
        try:
            self._start(variant, provider_options, cpu_threads)
        except ProviderError as exc:
            if provider != "auto" or self.provider == "cpu":
                raise
            log.warning("CUDA is not usable here (%s); --provider auto continues on the CPU", exc)
            self.provider = "cpu"
            self._start(variant, None, cpu_threads)
        self.max_tokens = max_tokens or DEFAULT_MAX_TOKENS[self.provider]
        self.max_batch_rows = max_batch_rows
        self.batch_overhead = default_batch_overhead(self.provider, self.variant, self.manifest) \
            if batch_overhead is None else batch_overhead
        self.tally = BatchTally()
        self._on_model, self._on_model_since, self._on_model_lock = 0, 0.0, threading.Lock()
        self.labels = self.manifest.labels
        self.positive = self.labels.index(self.manifest.positive_label)
        self.io_binding = default_io_binding(self.provider, self.variant, self.manifest) if io_binding is None \
            else io_binding
        self._run_batch = batch_runner(self.session, self.provider, self.io_binding)
        # With several threads, one batch is padded and copied while another runs (ORT's run is thread-safe).
        self.infer_threads = infer_threads or DEFAULT_INFER_THREADS[self.provider]
        self._pool = ThreadPoolExecutor(self.infer_threads, "scorer-infer") if self.infer_threads > 1 else None
        self.rescue = Rescue(self.directory, self.manifest, self.provider, self.variant, self.manifest.input_names,
                             self.max_tokens, cpu_threads)

    def _start(self, variant: str | None, provider_options: dict | None, cpu_threads: int | None) -> None:
        self.variant, self.variant_from, caution = (variant, "--variant", None) if variant else \
            chosen_variant(self.provider, self.manifest)
        self.model_path = self.manifest.variant(self.variant, self.directory)
        self.model_sha256 = self.manifest.variants[self.variant].identity  # (the files were just checked against it)
        fp16 = self.manifest.extra.get("fp16") or {}
        if self.variant == "fp16" and self.provider == "cpu" and fp16.get("kernels") == "packed":
            raise ProviderError(f"{self.model_path}: this fp16 graph removes padding with ONNX Runtime ops that only "
                                f"CUDA has (export chose it on {fp16.get('gpu') or fp16.get('measured_on')}); score "
                                "it with --provider cuda, or with --variant fp32 or int8 on a CPU")
        if provider_options is None:
            provider_options = default_provider_options(self.provider, self.variant, self.manifest)
        self.provider_options = provider_options or {}
        self.session = create_session(self.model_path, self.provider, provider_options, cpu_threads)
        self.cpu_threads = self.session.get_session_options().intra_op_num_threads
        # What this machine makes doubtful of export's timings (made on another CPU or GPU): warned of, summarised.
        self.cautions = [said for said in (caution and f"{self.variant_from}, and {caution}",
                                           fp16_timing_caution(self.provider, self.variant, self.manifest))
                         if said]
        for said in self.cautions:
            log.warning("%s: %s", self.directory, said)

    def self_check(self) -> dict | None:
        """The recorded batch through this run's session, against the logits export recorded (selfcheck);
        raises ParityError where this machine computes the graph differently."""
        return selfcheck.verify(self.directory, self.manifest, self._run_batch, self.variant, self.provider)

    def close(self) -> None:
        """Stop the inference threads (with --infer-threads above 1); the session itself stays usable."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def logits(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Logits of every text (all must be non-empty str) and which were truncated at max_length."""
        encoded = self.encoder.encode(texts)
        return self.run(encoded), encoded.truncated

    def run(self, encoded: Encoded) -> np.ndarray:
        """Logits of every encoded row, in token-budget batches of length-sorted rows."""
        return self.run_pieces([encoded])[0]

    @property
    def in_background(self) -> bool:
        """Whether batches run on inference threads, so that `start` returns before they are done."""
        return self._pool is not None

    def run_pieces(self, pieces: Iterable[Encoded]) -> list[np.ndarray]:
        """Logits of the rows of each piece (one window, tokenised in pieces), batched across pieces."""
        return self.collect(self.start(pieces))

    def start(self, pieces: Iterable[Encoded]) -> Started:
        """Send one window's batches to the model, batched across its pieces; `collect` gathers their logits.

        Each piece is taken as soon as the iterable yields it: its full batches go to the model at once (on the
        inference threads), so the model works while later pieces are tokenised; the rest wait for the last piece.
        With batches in flight on threads, this returns once they are all queued: the next window's can be queued
        behind them before this one's results are gathered, so the model does not wait between windows.
        """
        batcher = WindowBatcher(self.max_tokens, self.max_batch_rows, self.batch_overhead)
        started = Started()

        def submit(batches: list[Batch]) -> None:
            pool, encoded = self._pool, started.encoded
            for batch in batches:
                self.tally.add(batch)
                started.running.append((batch, pool.submit(self._logits, encoded, batch) if pool
                                        else self._logits(encoded, batch)))

        for piece in pieces:
            started.encoded.append(piece)
            started.outputs.append(np.empty((len(piece), len(self.labels)), dtype=np.float32))
            submit(batcher.add(piece.lengths))
        submit(batcher.flush())
        return started

    def collect(self, started: Started) -> list[np.ndarray]:
        """The logits of every row of each piece of a `start`ed window, waiting for its batches."""
        for batch, run in started.running:
            logits, offset = (run.result() if isinstance(run, Future) else run), 0
            for piece, rows in batch.parts:
                started.outputs[piece][rows] = logits[offset : offset + len(rows)]
                offset += len(rows)
        return started.outputs

    def _logits(self, encoded: list[Encoded], batch: Batch) -> np.ndarray:
        padded = [encoded[piece].pad(rows, batch.width) for piece, rows in batch.parts]
        arrays = padded[0] if len(padded) == 1 else [np.concatenate(column) for column in zip(*padded, strict=True)]
        with self._model_busy():
            return self._run_batch(dict(zip(self.manifest.input_names, arrays, strict=True)))

    @contextmanager
    def _model_busy(self):
        """Count the time during which at least one batch is on the model into tally.model_seconds."""
        with self._on_model_lock:
            if not self._on_model:
                self._on_model_since = time.perf_counter()
            self._on_model += 1
        try:
            yield
        finally:
            with self._on_model_lock:
                self._on_model -= 1
                if not self._on_model:
                    self.tally.model_seconds += time.perf_counter() - self._on_model_since

    def label_index(self) -> LabelIndex:
        """How input files' label values map to the model's labels."""
        return LabelIndex(self.labels, ids=self.manifest.label_ids)

    @property
    def score_means(self) -> str:
        """What the `score` column holds, for the summary and the output's record."""
        if len(self.labels) == 2:
            return f"the probability of label {self.manifest.positive_label!r}"
        return f"the probability of the predicted label (of {len(self.labels)})"

    def scores(self, probabilities: np.ndarray) -> np.ndarray:
        """The `score` of each row: the positive class's probability (two labels), else the top probability."""
        if len(self.labels) == 2:
            return probabilities[:, self.positive]
        return probabilities.max(axis=1)

    def decide(self, probabilities: np.ndarray, predicted: np.ndarray | None = None) -> np.ndarray:
        """Each row's label index: the positive label where its score reaches the threshold, else the other one;
        without a threshold the most probable label (`predicted`, where the logits' argmax is known already)."""
        if self.threshold is None and predicted is not None:
            return predicted
        return decided(probabilities, self.threshold, self.positive)

    def result_arrays(self, scored: Scored) -> tuple[pa.Array, pa.Array, pa.Array]:
        """The label, score and status columns written for `scored` (nulls where a row was not scored)."""
        label_type = pa.int64() if all(isinstance(v, int) for v in self.labels) else pa.string()
        indices = pa.array(self.decide(scored.probabilities, scored.predicted), mask=~scored.scored)
        predicted = pa.array(self.labels, type=label_type).take(indices)
        score = self.scores(scored.probabilities).astype(np.float32)
        return predicted, pa.array(score, mask=~scored.scored), STATUS_NAMES.take(pa.array(scored.status))

    def prepare(self, column: pa.Array | pa.ChunkedArray) -> Prepared:
        """The CPU half of classify: find the rows to score and tokenise them (thread-safe, GIL mostly free)."""
        given, column = column, plain_text(column)
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        status = np.full(len(column), CODE[OK], dtype=np.int8)
        if is_text(column):
            blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0)
            status[pc.fill_null(blank, False).to_numpy(zero_copy_only=False)] = CODE[EMPTY]
        else:
            status[:] = CODE[NOT_TEXT]
        status[column.is_null().to_numpy(zero_copy_only=False)] = CODE[NULL]
        if given.type != column.type:  # bytes that are not UTF-8 became nulls in plain_text
            undecodable = pc.and_(given.is_valid(), column.is_null())
            status[undecodable.to_numpy(zero_copy_only=False)] = CODE[NOT_TEXT]
        valid = np.flatnonzero(status == CODE[OK])
        texts = column if len(valid) == len(column) else column.take(pa.array(valid, pa.int64()))
        encoded = self.encoder.encode(texts if is_text(texts) else [])
        hollow = encoded.lengths <= self.encoder.bare_length  # (text the tokenizer reads no token in: empty too)
        if hollow.any():
            status[valid[hollow]] = CODE[EMPTY]
            valid, encoded = valid[~hollow], encoded.take(np.flatnonzero(~hollow))
        status[valid[encoded.truncated]] = CODE[TRUNCATED]
        return Prepared(status=status, valid=valid, encoded=encoded)

    def infer(self, pieces: Iterable[Prepared]) -> Scored:
        """The model half of classify, for the pieces of one window (taken as they come): logits, probabilities
        and predicted labels for every row, in the pieces' order."""
        return self.finish(self.begin(pieces))

    def begin(self, pieces: Iterable[Prepared]) -> tuple[list[Prepared], Started]:
        """`infer`'s first half: the window's batches sent to the model (`start`); `finish` gathers them."""
        taken: list[Prepared] = []

        def encoded():
            for prepared in pieces:
                taken.append(prepared)
                yield prepared.encoded

        return taken, self.start(encoded())

    def finish(self, begun: tuple[list[Prepared], Started]) -> Scored:
        """`infer`'s second half: every row's results, once the window's batches are done."""
        return Scored.concat(self.finish_pieces(begun))

    def finish_pieces(self, begun: tuple[list[Prepared], Started]) -> list[Scored]:
        """`finish`, piece by piece."""
        taken, started = begun
        logits = self.collect(started)
        return [scored(p, rows, self.rescue) for p, rows in zip(taken, logits, strict=True)]

    def classify(self, column: pa.Array | pa.ChunkedArray) -> Scored:
        """Score a column of texts; null, empty and non-text values are kept, flagged and left unscored."""
        return self.infer([self.prepare(column)])
