"""`run --check N`: score a sample with the PyTorch checkpoint too, and compare with what ONNX said."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from scorer.classify import OnnxClassifier, softmax

log = logging.getLogger("scorer")
# Largest allowed |score difference| per variant: fp32 covers TF32 on GPUs, fp16 and int8 their rounding.
TOLERANCE = {"fp32": 2e-3, "fp16": 2e-2, "int8": 5e-2}


def cross_check(checkpoint: Path, classifier: OnnxClassifier, sample: list[tuple[str, np.ndarray]]) -> dict:
    """Compare ONNX and PyTorch on the sampled texts: label agreement and max score difference."""
    import torch

    from scorer.loop import logits_of
    from scorer.model import SentenceClassifier

    if not sample:
        return {"rows": 0, "agreement": 1.0, "max_score_diff": 0.0, "max_logit_diff": 0.0,
                "tolerance": TOLERANCE[classifier.variant], "passed": True, "checkpoint": str(checkpoint)}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceClassifier.load(checkpoint).to(device)
    texts = [text for text, _ in sample]
    onnx_logits = np.stack([logits for _, logits in sample])
    torch_logits = logits_of(model, classifier.encoder.encode(texts), device)
    onnx_probs, torch_probs = softmax(onnx_logits), softmax(torch_logits)
    agreement = float((onnx_logits.argmax(1) == torch_logits.argmax(1)).mean())
    score_diff = float(np.abs(onnx_probs - torch_probs).max())
    tolerance = TOLERANCE[classifier.variant]
    result = {
        "rows": len(texts),
        "agreement": agreement,
        "max_score_diff": score_diff,
        "max_logit_diff": float(np.abs(onnx_logits - torch_logits).max()),
        "tolerance": tolerance,
        "passed": score_diff <= tolerance,
        "checkpoint": str(checkpoint),
        "torch_device": device,
    }
    log.info("check: %d rows, labels agree %.1f%%, max |Δscore| %.3g (tolerance %g)",
             len(texts), 100 * agreement, score_diff, tolerance)
    return result
