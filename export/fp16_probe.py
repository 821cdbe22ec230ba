"""fp16 candidates' trials, each in a process of its own: the parent's side (trials_in_children, trial_in_child) and
the child's (`python -m export.fp16_probe GRAPH PROVIDER KERNELS CHECK`).

Export (export.fp16_choice) tries each candidate whose CUDA kernels no earlier run has used in a child first: a
kernel that crashes the process, or leaves the CUDA context unusable, then fails that child, not the export.
CHECK is an .npz of the check rows' input_ids and attention_mask and the fp32 graph's logits for them (expected),
and of the batches export will time (ids_0, mask_0, ...). The child exits 0 when both run modes score the check
rows within tolerance and every batch gets finite logits; otherwise it says why on stderr's last line.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from scorer.errors import ModelError, first_line

# How long one trial may take: a session start and two runs.
_TRIAL_SECONDS = 300
# How many trials run at once: each holds a CUDA context and a session (a few GB for bert-base at 32k-token batches).
_TRIALS_AT_ONCE = 3


def trials_in_children(trials: dict[str, tuple[Path, str]], provider: str, check: tuple[np.ndarray, np.ndarray],
                       expected: np.ndarray, batches: list[tuple[np.ndarray, np.ndarray]] = ()) -> dict[str, str]:
    """trial_in_child for each candidate (name -> its graph and kernel setting), _TRIALS_AT_ONCE at a time (each
    child starts CUDA and a session: seconds apiece); which failed, and why. A trial that failed beside others is
    run once more alone, in case the others held GPU memory it needed."""
    def outcome(name: str) -> str | None:
        try:
            graph, kernels = trials[name]
            trial_in_child(graph, provider, kernels, check, expected, batches)
        except ModelError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(_TRIALS_AT_ONCE) as pool:
        failed = {name: why for name, why in zip(trials, pool.map(outcome, trials), strict=True) if why}
    if len(trials) > 1:
        failed = {name: why for name in failed if (why := outcome(name))}
    return failed


def trial_in_child(graph: Path, provider: str, kernels: str, check: tuple[np.ndarray, np.ndarray],
                   expected: np.ndarray, batches: list[tuple[np.ndarray, np.ndarray]] = ()) -> None:
    """Check a candidate graph with `kernels` in a process of its own first (this module's main): the `check`
    batch's logits against the fp32 graph's `expected`, then each of `batches` (the shapes export will time) for
    finite logits. A kernel that crashes, or makes an illegal memory access, which poisons the CUDA context for the
    rest of the process, then costs only itself. Raises with what the child said where it failed."""
    with tempfile.TemporaryDirectory(dir=graph.parent) as tmp:
        data = Path(tmp) / "check.npz"
        shapes = {f"{key}_{i}": array for i, (ids, mask) in enumerate(batches)
                  for key, array in (("ids", ids), ("mask", mask))}
        np.savez(data, input_ids=check[0], attention_mask=check[1], expected=expected, **shapes)
        command = [sys.executable, "-m", "export.fp16_probe", str(graph), provider, kernels, str(data)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=_TRIAL_SECONDS)
        except subprocess.TimeoutExpired as exc:
            raise ModelError(f"its trial in a child process took over {_TRIAL_SECONDS} s") from exc
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise ModelError(f"its trial in a child process failed ({said})")


def main(argv: list[str]) -> int:
    from export.fp16_choice import KERNELS, check_logits  # here: fp16_choice imports this module
    from scorer.inference.session import batch_runner, create_session

    graph, provider, kernels, check = argv
    try:
        data = np.load(check)
        session = create_session(Path(graph), provider, KERNELS[kernels].cuda_options)
        feed = {"input_ids": data["input_ids"], "attention_mask": data["attention_mask"]}
        for bound in (False, True):
            check_logits(batch_runner(session, provider, bound)(feed), data["expected"])
        run = batch_runner(session, provider, False)
        for i in range(sum(name.startswith("ids_") for name in data.files)):
            ids = data[f"ids_{i}"]
            if not np.isfinite(run({"input_ids": ids, "attention_mask": data[f"mask_{i}"]})).all():
                raise ValueError(f"non-finite logits on a batch of {ids.shape[0]} rows x {ids.shape[1]} tokens")
    except Exception as exc:  # whatever went wrong, one line for the parent to report
        print(first_line(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
