"""One pass of an ONNX Runtime session over batches of encoded rows: its logits, and how long it took.

Export uses these to measure its variants where they will run (int8 against fp32 on the CPU, fused against
unfused fp16 attention on CUDA) and keeps what is faster; bench/ uses the same timer.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from scorer.inference.session import batch_runner
from scorer.text.batches import budget_batches
from scorer.text.tokens import Encoded

# (rows, pad): rows run together, padded to `pad` tokens (None: the longest of them).
Batches = list[tuple[np.ndarray, int | None]]
Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


def _runner(session_or_runner) -> Runner:
    return session_or_runner if callable(session_or_runner) else batch_runner(session_or_runner, "cpu", False)


def logits_of(session_or_runner, encoded: Encoded, batches: Batches) -> np.ndarray:
    """Logits of every row that `batches` cover, in row order (a session runs plainly; a runner as it runs)."""
    run = _runner(session_or_runner)
    out = None
    for rows, pad in batches:
        input_ids, attention_mask = encoded.pad(rows, pad)
        logits = run({"input_ids": input_ids, "attention_mask": attention_mask})
        if out is None:
            out = np.empty((len(encoded), logits.shape[1]), dtype=np.float32)
        out[rows] = logits
    return out


def pass_seconds(session_or_runner, encoded: Encoded, batches: Batches) -> float:
    """Wall seconds for one pass over `batches`."""
    started = time.perf_counter()
    logits_of(session_or_runner, encoded, batches)
    return time.perf_counter() - started


def best_seconds(runners: list, encoded: Encoded, batches: Batches, passes: int) -> list[float]:
    """The best of `passes` interleaved passes for each runner, after a short warm-up of each."""
    runners = [_runner(r) for r in runners]
    for run in runners:
        logits_of(run, encoded, batches[:2])
    best = [float("inf")] * len(runners)
    for _ in range(passes):
        for i, run in enumerate(runners):
            best[i] = min(best[i], pass_seconds(run, encoded, batches))
    return best


def run_cost(runner: Runner, encoded: Encoded, rows: np.ndarray, budget: int, max_rows: int, passes: int
             ) -> float | None:
    """What one more run of the model costs, in tokens' worth of work (scorer.text.batches' per-run cost).

    The same rows are timed cut into batches of `budget` tokens and of an eighth of that, and the two passes fitted
    to seconds = runs x a + padded tokens x b; the cost is a / b, within [0, budget]. None when the fit is
    meaningless (timing noise larger than the difference)."""
    figures = []
    for cut_budget in (budget, max(budget // 8, 1)):
        batches = [(rows[cut], None) for cut in budget_batches(encoded.lengths[rows], cut_budget, max_rows)]
        padded = sum(len(chosen) * int(encoded.lengths[chosen].max()) for chosen, _ in batches)
        figures.append((len(batches), padded, best_seconds([runner], encoded, batches, passes)[0]))
    return fitted_run_cost(figures, budget)


def fitted_run_cost(figures: list[tuple[int, int, float]], budget: int) -> float | None:
    """a / b from two passes' (runs, padded tokens, seconds) under seconds = runs x a + tokens x b, within
    [0, budget]; None when the two passes cannot tell a from b or the fit gives tokens no cost."""
    (runs_1, tokens_1, seconds_1), (runs_2, tokens_2, seconds_2) = figures
    determinant = runs_1 * tokens_2 - runs_2 * tokens_1
    if determinant == 0:
        return None
    per_run = (seconds_1 * tokens_2 - seconds_2 * tokens_1) / determinant
    per_token = (runs_1 * seconds_2 - runs_2 * seconds_1) / determinant
    if per_token <= 0:
        return None
    return min(max(per_run / per_token, 0.0), float(budget))
