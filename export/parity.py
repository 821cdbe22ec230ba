"""Parity of every ONNX variant against the PyTorch model, at shapes unlike the export's, with a pass/fail gate."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from export.onnx_graph import fixed_shape
from scorer.config import ExportConfig
from scorer.inference.rescue import finite_rows
from scorer.inference.results import decided, softmax
from scorer.inference.session import batch_runner, create_session, cuda_starts
from scorer.metrics import confusion_of
from scorer.scoring.check import TOLERANCE
from scorer.text.tokens import Encoded

_SINGLE_ROWS = 8
_ODD_BATCH = 7
_FULL_LENGTH_ROWS = 3


@dataclass(frozen=True)
class VariantParity:
    """How one variant compares with PyTorch fp32 on the same padded batches."""

    variant: str
    provider: str
    rows: int  # distinct rows compared
    runs: int  # row results compared: each row once in a batch of 7, some also alone and padded (parity_batches)
    max_abs_diff: float
    agreement: float
    # Rows whose label flipped where PyTorch's top two logits are within `tie_margin`: rounding, not a fault.
    near_tie_flips: int
    accuracy: float | None
    mcc: float | None
    passed: bool
    requirement: str
    # Row results with a NaN or infinite logit (an fp16 or int8 graph overflowing): never agreeing, and failing.
    non_finite: int = 0
    max_score_diff: float = 0.0  # the largest |Δprobability| of any label, what `scorer run --check` bounds


@dataclass(frozen=True)
class ParityBatch:
    """Rows to run together, padded to `pad` (None: the longest row); `covering` batches hold each row once."""

    rows: np.ndarray
    pad: int | None
    covering: bool


def parity_batches(n: int, max_length: int) -> list[ParityBatch]:
    """Batch 1 rows, every row in batches of 7 (odd lengths), and a few rows padded to the max length."""
    batches = [ParityBatch(np.array([i]), None, False) for i in range(min(n, _SINGLE_ROWS))]
    batches += [ParityBatch(np.arange(s, min(s + _ODD_BATCH, n)), None, True) for s in range(0, n, _ODD_BATCH)]
    batches.append(ParityBatch(np.arange(min(n, _FULL_LENGTH_ROWS)), max_length, False))
    return batches


def batching(n: int, max_length: int) -> str:
    """How parity_batches runs n rows, as the export's log says it."""
    runs = sum(len(b.rows) for b in parity_batches(n, max_length))
    return (f"each in a batch of {_ODD_BATCH}, the first {min(n, _SINGLE_ROWS)} also alone and "
            f"{min(n, _FULL_LENGTH_ROWS)} padded to {max_length} ({runs} runs)")


@dataclass(frozen=True)
class Decision:
    """How labels are read from logits: the most probable, or (two labels) the positive one where its probability
    reaches `threshold` (export --threshold); a row is a near-tie where its logits are within `tie_margin` of the
    point where the label changes."""

    tie_margin: float
    threshold: float | None = None
    positive: int = 1

    def labels(self, logits: np.ndarray) -> np.ndarray:
        if self.threshold is None:
            return logits.argmax(axis=1)
        return decided(softmax(logits), self.threshold, self.positive)  # (a non-finite row: judged apart)

    def margins(self, logits: np.ndarray) -> np.ndarray:
        """Each row's distance from the change of label: the gap between its two highest logits, or, with a
        threshold, between the positive label's logit lead and the lead the threshold stands for."""
        if self.threshold is None:
            top = np.sort(logits, axis=1)
            return top[:, -1] - top[:, -2]
        lead = logits[:, self.positive] - logits[:, 1 - self.positive]
        return np.abs(lead - np.log(self.threshold / (1 - self.threshold)))


class Parity:
    """PyTorch's logits on the parity batches, computed once, against which each variant is then judged."""

    def __init__(self, model: torch.nn.Module, encoded: Encoded, targets: np.ndarray | None, labels: list,
                 config: ExportConfig, max_length: int, positive: int = 1) -> None:
        self.encoded, self.targets, self.labels, self.config = encoded, targets, labels, config
        self.decision = Decision(config.tie_margin, config.threshold, positive)
        self.batches = parity_batches(len(encoded), max_length)
        self.architecture = type(model.encoder).__name__
        self.reference = _torch_logits(model, encoded, self.batches)
        self.torch_row = _judge("pytorch", "torch-cpu", self.reference, self.reference, self.batches, targets, labels,
                                config, None, self.decision)

    def of(self, name: str, path: Path, cuda_options: dict | None = None) -> VariantParity:
        """One variant compared with PyTorch and judged against the gate; the fp16 graph on CUDA where it works,
        with the `cuda_options` (its attention kernels) that `scorer run` will use there."""
        provider = "cuda" if name == "fp16" and cuda_starts(path) else "cpu"
        options = cuda_options if provider == "cuda" else None
        run = batch_runner(create_session(path, provider, options), provider, io_binding=False)
        logits = []
        for batch in self.batches:  # (fp32 runs first, on the CPU, where a graph that keeps a traced shape fails)
            feed = _feed(self.encoded, batch.rows, batch.pad)
            with fixed_shape(self.architecture, feed["input_ids"].shape) if provider == "cpu" else nullcontext():
                logits.append(run(feed))
        return _judge(name, provider, self.reference, logits, self.batches, self.targets, self.labels, self.config,
                      self.torch_row, self.decision)

    def every(self, variants: dict[str, Path], cuda_options: dict | None = None) -> list[VariantParity]:
        """PyTorch's own row, then every variant's."""
        return [self.torch_row] + [self.of(name, path, cuda_options) for name, path in variants.items()]


def _feed(encoded: Encoded, rows: np.ndarray, pad: int | None) -> dict[str, np.ndarray]:
    input_ids, attention_mask = encoded.pad(rows, pad)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.no_grad()
def _torch_logits(model: torch.nn.Module, encoded: Encoded, batches) -> list[np.ndarray]:
    model.eval()
    out = []
    for batch in batches:
        feed = _feed(encoded, batch.rows, batch.pad)
        out.append(model(torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])).numpy())
    return out


def _judge(name, provider, reference, logits, batches, targets, labels, config: ExportConfig,
           torch_row: VariantParity | None, decision: Decision | None = None) -> VariantParity:
    decision = decision or Decision(config.tie_margin, config.threshold)
    finite = [finite_rows(b) for b in logits]
    diff = max((float(np.abs(a - b)[f].max(initial=0.0)) for a, b, f in zip(reference, logits, finite, strict=True)),
               default=0.0)
    agree = np.concatenate([(decision.labels(a) == decision.labels(b)) & f
                            for a, b, f in zip(reference, logits, finite, strict=True)])
    score_diff = max((float(np.abs(softmax(a) - softmax(b))[f].max(initial=0.0))
                      for a, b, f in zip(reference, logits, finite, strict=True)), default=0.0)
    non_finite = int(sum((~f).sum() for f in finite))
    agreement = float(agree.mean())
    decisive = np.concatenate([decision.margins(a) > config.tie_margin for a in reference])
    decisive_agreement = float(agree[decisive].mean()) if decisive.any() else 1.0
    near_tie_flips = int((~agree & ~decisive).sum())
    rows = f"where PyTorch's top two logits are over {config.tie_margin:g} apart" if config.threshold is None else \
        f"where PyTorch's logits are over {config.tie_margin:g} from the threshold {config.threshold:g}"
    accuracy = mcc = None
    if targets is not None:
        predicted = np.concatenate([decision.labels(out) for out, b in zip(logits, batches, strict=True)
                                    if b.covering])
        labelled = targets >= 0  # rows without a label count for agreement, not for accuracy
        confusion = confusion_of(labels, targets[labelled], predicted[labelled])
        accuracy, mcc = confusion.accuracy(), confusion.mcc()
    if torch_row is None:
        passed, requirement = True, "the reference"
    elif name == "fp32":
        passed = decisive_agreement == 1.0 and diff <= config.tolerance
        requirement = f"labels agree 100% {rows} and max |Δlogit| ≤ {config.tolerance:g}"
    else:
        passed = decisive_agreement >= config.min_agreement
        requirement = f"labels agree ≥ {config.min_agreement:.1%} {rows}"
        if accuracy is not None:
            passed = passed and abs(accuracy - torch_row.accuracy) <= config.max_accuracy_drop
            requirement += f" and accuracy within {100 * config.max_accuracy_drop:g} points of PyTorch"
        # held to what `scorer run --check` will hold it to, so that an export which passes passes a check
        passed = passed and score_diff <= TOLERANCE[name]
        requirement += f" and every probability within {TOLERANCE[name]:g} of PyTorch's"
    if non_finite and torch_row is not None:
        passed, requirement = False, f"finite logits on every row ({non_finite} NaN or infinite)"
    distinct = sum(len(b.rows) for b in batches if b.covering)
    return VariantParity(name, provider, distinct, int(agree.size), diff, agreement, near_tie_flips, accuracy, mcc,
                         passed, requirement, non_finite, score_diff)


def report(results: list[VariantParity], source: str, threshold: float | None = None) -> dict:
    return {"source": source, "passed": all(r.passed for r in results), "threshold": threshold,
            "variants": [asdict(r) for r in results]}


def gated(results: list[VariantParity]) -> list[VariantParity]:
    """The ONNX variants (the PyTorch reference row is not judged)."""
    return [r for r in results if r.variant != "pytorch"]


def table(results: list[VariantParity]) -> str:
    """The parity report as a fixed-width text table."""
    head = f"{'variant':8} {'provider':9} {'runs':>6} {'max|Δlogit|':>12} {'agree':>8} {'accuracy':>9} {'MCC':>7}  gate"
    lines = [head, "-" * len(head)]
    for r in results:
        acc = f"{r.accuracy:.4f}" if r.accuracy is not None else "-"
        mcc = f"{r.mcc:.4f}" if r.mcc is not None else "-"
        verdict = "pass" if r.passed else f"FAIL ({r.requirement})"
        if r.near_tie_flips:
            verdict += f"; {r.near_tie_flips} flipped at near-ties"
        lines.append(f"{r.variant:8} {r.provider:9} {r.runs:>6} {r.max_abs_diff:>12.3g} {r.agreement:>8.2%} "
                     f"{acc:>9} {mcc:>7}  {verdict}")
    return "\n".join(lines)
