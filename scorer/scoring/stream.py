"""One input's scoring pipeline: read → tokenise → infer → write, each stage on its own threads, in windows."""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from scorer.config import RunConfig
from scorer.data.read import TableReader
from scorer.data.strings import plain_text
from scorer.data.write import OutputSink
from scorer.inference.classify import OnnxClassifier
from scorer.inference.results import Scored
from scorer.scoring.parts import PartStore
from scorer.scoring.progress import UNDERWAY, Progress
from scorer.scoring.tally import Columns
from scorer.text.tokens import is_text

log = logging.getLogger("scorer")


def stream(reader: TableReader, classifier: OnnxClassifier, columns: Columns, store: PartStore, sink: OutputSink,
           first: int, config: RunConfig, progress: bool) -> dict[str, float]:
    """Read → tokenise → infer → write. Windows are read in order on one thread; each window's text is cut into
    pieces (`pieces`), tokenised on config.tokenize_threads threads (Rust tokenisation frees the GIL) with up to
    that many windows queued ahead of the model; the model takes each piece as soon as it is ready, so a window of
    long texts starts on the GPU before all of it is tokenised; the previous window is written meanwhile, as a part
    (for resuming) and into the output (so that no assembly is left for the end).

    Returns the seconds the main thread (which feeds the model) spent waiting for each other stage: where a run
    loses time when the model is not the slowest stage."""
    waits = Waits()
    skip = store.rows([store.part(index) for index in range(first)])  # (windows of an earlier size, maybe)
    windows = checked_windows(reader, classifier, columns, config, skip)

    def read_and_queue():
        """The next window, read, with its pieces queued for tokenising; None after the last window."""
        window = next(windows, None)
        if window is None:
            return None
        text = window.column(columns.text)
        return window, [tokenizing.submit(classifier.prepare, piece) for piece in pieces(text, config.piece_chars)]

    total = None if reader.num_rows is None else max(0, reader.num_rows - skip)
    done = Progress(reader.path, reader.rows_expected, skip, progress and not sys.stderr.isatty())
    with UNDERWAY.tracking(done), \
            tqdm(total=total, unit="rows", disable=None if progress else True, file=sys.stderr,
                 desc=reader.path.name, leave=False) as bar, \
            ThreadPoolExecutor(1, "scorer-read") as reading, \
            ThreadPoolExecutor(config.tokenize_threads, "scorer-tokenize") as tokenizing, \
            ThreadPoolExecutor(1, "scorer-write") as writing:
        # Windows are read (and their pieces queued) on one thread, in order, config.tokenize_threads ahead.
        ahead = deque(reading.submit(read_and_queue) for _ in range(config.tokenize_threads))
        writes = _Writes(writing, store, sink, waits, first)

        def finish(index: int, window: pa.RecordBatch, begun) -> None:
            scored = classifier.finish(begun)
            writes.add(index, with_results(window, classifier, columns, scored), int(scored.rescued.sum()))
            if total is None:  # (a CSV file's rows, estimated as it is read)
                bar.total = max(0, (reader.rows_expected()[0] or skip) - skip) or None
            bar.update(window.num_rows)
            done.update(window.num_rows)

        # With batches in flight on inference threads (CUDA), a window's batches are queued on the model before the
        # previous window's results are gathered and written, so the model does not wait between windows. Where
        # batches run on this thread, a window is done when begun, and finished at once.
        begun, depth, index = deque(), 1 if classifier.in_background else 0, first
        while (item := waits("reading", ahead.popleft())) is not None:
            ahead.append(reading.submit(read_and_queue))
            window, prepared = item
            begun.append((index, window, classifier.begin(waits("tokenising", piece) for piece in prepared)))
            index += 1
            while len(begun) > depth:
                finish(*begun.popleft())
        while begun:
            finish(*begun.popleft())
        writes.drain()
    return dict(waits)


class Waits(dict):
    """Seconds the thread that feeds the model waited on each other stage's futures."""

    def __init__(self) -> None:
        super().__init__(reading=0.0, tokenising=0.0, writing=0.0)

    def __call__(self, stage: str, future: Future):
        started = time.perf_counter()
        try:
            return future.result()
        finally:
            self[stage] += time.perf_counter() - started


class _Writes:
    """Scored windows handed to the writer thread in order, each written as a part (for resuming) and into the
    output, with at most one in flight (memory stays bounded); a resumed run's output first gets the windows its
    parts already hold."""

    def __init__(self, writing: ThreadPoolExecutor, store: PartStore, sink: OutputSink, waits: Waits,
                 first: int) -> None:
        self.writing, self.store, self.sink, self.waits = writing, store, sink, waits
        self.pending: list[Future] = [writing.submit(_replay, store, sink, first)]

    def add(self, index: int, table: pa.Table, rescued: int) -> None:
        self.pending.append(self.writing.submit(self._save, index, table, rescued))
        while len(self.pending) > 1:
            self.waits("writing", self.pending.pop(0))

    def drain(self) -> None:
        for write in self.pending:
            self.waits("writing", write)

    def _save(self, index: int, table: pa.Table, rescued: int) -> None:
        self.store.write(index, table, rescued)
        self.sink.write(table)


def checked_windows(reader: TableReader, classifier: OnnxClassifier, columns: Columns, config: RunConfig,
                    skip: int) -> Iterator[pa.RecordBatch]:
    """The input's windows from row `skip` on, each refused before it is scored when it holds a label the model
    does not know (the error names the row). An input without rows is one window without rows: its output is the
    input's columns and the result columns, without rows, as a nightly job's empty day should give."""
    labels = classifier.label_index() if columns.label else None
    number = -1
    for number, window in enumerate(reader.batches(config.window_rows, skip_rows=skip)):
        if labels is not None:
            labels.indices(window.column(columns.label).to_pylist(), reader.path, columns.label,
                           skip + number * config.window_rows + 1)
        yield window
    if number < 0 and skip == 0:
        yield reader.empty()


def with_results(window: pa.RecordBatch, classifier: OnnxClassifier, columns: Columns, scored: Scored) -> pa.Table:
    """The window with its predicted label, score and status columns (and each label's probability, where asked)."""
    arrays = [*classifier.result_arrays(scored)]
    if columns.probabilities:
        arrays += [pa.array(p.astype(np.float32), mask=~scored.scored) for p in scored.probabilities.T]
    for name, array in zip(columns.results(), arrays, strict=True):
        window = window.append_column(name, array)
    return window


def _replay(store: PartStore, sink: OutputSink, count: int) -> None:
    for index in range(count):
        sink.write(store.read(index))


def joined_pieces(columns: list[pa.ChunkedArray], chars: int) -> list[pa.Array]:
    """The `pieces` of several columns in turn (small inputs scored together), with consecutive text chunks joined
    while their bytes stay under `chars`: a thousand inputs of a sentence each are tokenised in a few calls, not a
    thousand (0.7 s against 0.01 s for 3,000 such inputs on a 2-core CPU). A chunk of another type goes alone."""
    cut: list[pa.Array] = []
    joined: list[pa.Array] = []

    def close() -> None:
        if joined:
            cut.extend(pieces(pa.concat_arrays(joined) if len(joined) > 1 else joined[0], chars))
            joined.clear()

    size = 0
    for chunk in (chunk for column in columns for chunk in column.chunks if len(chunk)):
        joinable = pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)
        if not joinable or (joined and (chunk.type != joined[0].type or size + chunk.nbytes > chars)):
            close()
            size = 0
        if joinable:
            joined.append(chunk)
            size += chunk.nbytes
        else:
            cut.extend(pieces(chunk, chars))
    close()
    return cut or [pa.array([], pa.string())]


def pieces(column: pa.ChunkedArray | pa.Array, chars: int) -> list[pa.Array]:
    """`column` cut into consecutive slices, each ending at the row that brings it to `chars` characters. The slices
    keep the column's own type (each is read as text when it is tokenised: a row of bytes that are not UTF-8 must
    still be seen to be one). A slice never spans two chunks: a window holding over 2 GiB of text arrives in several
    (Arrow's string offsets are 32-bit), which could not be joined into one array."""
    if isinstance(column, pa.ChunkedArray):
        chunks = [chunk for chunk in column.chunks if len(chunk)]
        if not chunks:
            return [column.combine_chunks()]
        return [piece for chunk in chunks for piece in pieces(chunk, chars)]
    text = plain_text(column)
    if not is_text(text) or len(column) == 0:
        return [column]
    ends = np.cumsum(pc.fill_null(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False))
    cut, start = [], 0
    while start < len(column):
        before = int(ends[start - 1]) if start else 0
        stop = min(int(np.searchsorted(ends, before + chars, side="left")) + 1, len(column))
        cut.append(column.slice(start, stop - start))
        start = stop
    return cut
