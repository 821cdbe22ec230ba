"""Token-budget batches keep every row once, within budget; padding is traded against runs; pieces of a window
are batched together, and the logits land on the right rows."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from scorer.inference.classify import OnnxClassifier
from scorer.text.batches import BatchTally, WindowBatcher, budget_batches


def padding(lengths: np.ndarray, batches: list[np.ndarray]) -> int:
    return sum(len(b) * int(lengths[b].max()) - int(lengths[b].sum()) for b in batches)


@pytest.mark.parametrize("overhead", [math.inf, 0, 40])
@pytest.mark.parametrize("max_tokens,max_rows", [(64, 1000), (1000, 7), (5, 3)])
def test_budget_batches_cover_every_row_once_within_budget(max_tokens, max_rows, overhead):
    lengths = np.random.default_rng(1).integers(2, 60, size=503)
    batches = budget_batches(lengths, max_tokens, max_rows, overhead)
    covered = np.concatenate(batches)
    assert sorted(covered.tolist()) == list(range(503))
    for batch in batches:
        assert len(batch) <= max_rows
        # A single row longer than the budget still gets a batch of its own.
        assert len(batch) * lengths[batch].max() <= max_tokens or len(batch) == 1


def test_a_batch_ends_where_padding_its_rows_would_cost_more_than_a_run():
    lengths = np.array([10] * 1000 + [11] * 1000)
    # Budget alone: one batch, the first 1,000 rows padded by a token each.
    assert [len(b) for b in budget_batches(lengths, 10**6, 4096)] == [2000]
    assert padding(lengths, budget_batches(lengths, 10**6, 4096)) == 1000
    # A run worth less than that padding: two batches, no padding; worth more: one batch.
    cheap = budget_batches(lengths, 10**6, 4096, overhead=999)
    assert [len(b) for b in cheap] == [1000, 1000] and padding(lengths, cheap) == 0
    assert len(budget_batches(lengths, 10**6, 4096, overhead=1000)) == 1
    # Never a batch of one width per row: within a width, the budget alone cuts.
    assert len(budget_batches(np.full(100, 7), 70, 4096, overhead=0)) == 10


def test_padding_inside_every_batch_stays_under_the_overhead_on_random_lengths():
    lengths = np.random.default_rng(2).integers(3, 40, size=5000)
    loose, tight = budget_batches(lengths, 32768, 4096), budget_batches(lengths, 32768, 4096, overhead=200)
    for batch in tight:
        widths = np.sort(lengths[batch])
        steps = np.flatnonzero(np.diff(widths)) + 1
        assert np.all(steps * np.diff(widths)[steps - 1] <= 200)
    assert padding(lengths, tight) < padding(lengths, loose)


def run_window(batcher: WindowBatcher, pieces: list[np.ndarray]) -> tuple[list, list]:
    early, late = [], []
    for lengths in pieces:
        early.extend(batcher.add(lengths))
    late.extend(batcher.flush())
    return early, late


def test_window_batcher_covers_every_row_of_every_piece_once():
    rng = np.random.default_rng(3)
    pieces = [rng.integers(1, 30, size=n) for n in (400, 0, 1, 250, 333)]
    batcher = WindowBatcher(max_tokens=600, max_rows=50, overhead=30)
    early, late = run_window(batcher, pieces)
    seen = [set() for _ in pieces]
    for batch in early + late:
        rows = [int(pieces[p][r]) for p, chunk in batch.parts for r in chunk]
        assert batch.width == max(rows) and batch.tokens == sum(rows)
        assert len(batch) <= 50 and (len(batch) * batch.width <= 600 or len(batch) == 1)
        for piece, chunk in batch.parts:
            assert not seen[piece] & set(chunk.tolist())
            seen[piece] |= set(chunk.tolist())
    assert [len(s) for s in seen] == [len(p) for p in pieces]
    # What came early is full and of one width: no padding, the whole budget (or the row cap).
    assert early and all(len(b) == batcher.capacity(b.width) and b.tokens == len(b) * b.width for b in early)
    assert batcher.flush() == []


def test_pieces_of_a_window_fill_batches_that_no_single_piece_fills():
    # Three pieces of 4 rows of width 10; a batch holds 6 rows of it. Per piece: 3 batches of 4 rows.
    pieces = [np.full(4, 10)] * 3
    early, late = run_window(WindowBatcher(max_tokens=60, max_rows=100), pieces)
    assert [len(b) for b in early] == [6, 6] and late == []
    assert [p for p, _ in early[0].parts] == [0, 1] and [p for p, _ in early[1].parts] == [1, 2]
    assert sum(len(budget_batches(p, 60, 100)) for p in pieces) == 3


@pytest.mark.parametrize("infer_threads", [1, 2])
def test_pieces_scored_together_give_each_row_its_own_logits(tiny_export, infer_threads):
    texts = [("word " * (i % 13 + 1) + f"case {i}").strip() for i in range(90)]
    classifier = OnnxClassifier(tiny_export, "cpu", "fp32", max_tokens=96, infer_threads=infer_threads)
    alone = [classifier.logits([text])[0][0] for text in texts]
    chunks = [texts[:7], texts[7:8], texts[8:60], texts[60:]]
    classifier.tally = BatchTally()
    together = classifier.run_pieces(classifier.encoder.encode(pa.array(c)) for c in chunks)
    assert [len(t) for t in together] == [len(c) for c in chunks]
    np.testing.assert_allclose(np.concatenate(together), np.stack(alone), atol=1e-5)
    tally = classifier.tally
    assert tally.rows == len(texts) and tally.padded_tokens >= tally.tokens > 0 and tally.batches >= 2
    classifier.close()
