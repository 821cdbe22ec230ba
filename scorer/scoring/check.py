"""`run --check N`: score sampled rows with the PyTorch checkpoint too, and compare with what was written.

The PyTorch side tokenises as a notebook would: the checkpoint's own tokenizer, each text whole, truncated to the
max length; so the check covers what `scorer run` does on its way to the ONNX graph (the word cache, the long-row
cut) as well as the graph. Texts longer than WHOLE_CHARS, which could cost gigabytes so, are tokenised as the run
did (the check says how many)."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import numpy as np

from scorer.data.snapshot import file_listing, read_whole
from scorer.errors import ModelError
from scorer.inference.classify import OnnxClassifier
from scorer.inference.results import softmax
from scorer.manifest import verify_checkpoint
from scorer.text.tokens import TextEncoder

log = logging.getLogger("scorer")
# Largest allowed |score difference| per variant: fp32 covers TF32 on GPUs, fp16 and int8 their rounding.
TOLERANCE = {"fp32": 2e-3, "fp16": 2e-2, "int8": 5e-2}
WHOLE_CHARS = 1_000_000


def cross_check(checkpoint: Path, classifier: OnnxClassifier, texts: list[str], scores: np.ndarray,
                predicted: list) -> dict:
    """Label agreement and max |score difference| between the written output and PyTorch on the same texts."""
    tolerance = TOLERANCE[classifier.variant]
    result = {"rows": len(texts), "agreement": None, "max_score_diff": None, "tolerance": tolerance,
              "checkpoint": str(checkpoint), "variant": classifier.variant, "passed": None}
    if not texts:  # no row had text to score: nothing was checked, which is neither a pass nor a failure
        log.warning("check: no scored row to check")
        return result
    started = time.perf_counter()
    torch_scores, torch_labels, device, as_run = _pytorch_scores(checkpoint, classifier, texts)
    result.update(
        seconds=time.perf_counter() - started,  # loading PyTorch and the checkpoint mostly: not scoring time
        rows_tokenised_as_run=as_run,
        agreement=float(np.mean([a == b for a, b in zip(torch_labels, predicted, strict=True)])),
        max_score_diff=float(np.abs(torch_scores - scores).max()),
        torch_device=device,
    )
    result["passed"] = result["max_score_diff"] <= tolerance
    log.info("check: %d rows, labels agree %.1f%%, max |Δscore| %.3g (tolerance %g), in %.1fs",
             len(texts), 100 * result["agreement"], result["max_score_diff"], tolerance, result["seconds"])
    return result


def _pytorch_scores(checkpoint: Path, classifier: OnnxClassifier,
                    texts: list[str]) -> tuple[np.ndarray, list, str, int]:
    """PyTorch's scores and labels for `texts`, the device, and how many texts were tokenised as the run did."""
    import torch

    from scorer.machine import fit_torch_threads
    from scorer.pytorch.loop import logits_of

    fit_torch_threads()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = read_whole(checkpoint, lambda: _loaded(checkpoint, classifier, device))
    if model.head_config.labels != classifier.labels:
        raise ModelError(f"{checkpoint} has labels {model.head_config.labels}, the export {classifier.labels}; "
                         "pass the --checkpoint this model was exported from")
    whole = [row for row, text in enumerate(texts) if len(text) <= WHOLE_CHARS]
    as_run = [row for row, text in enumerate(texts) if len(text) > WHOLE_CHARS]
    logits = np.zeros((len(texts), len(classifier.labels)), np.float32)
    if whole:
        logits[whole] = logits_of(model, tokenizer.encode([texts[row] for row in whole]), device)
    if as_run:
        logits[as_run] = logits_of(model, classifier.encoder.encode([texts[row] for row in as_run]), device)
    probabilities = softmax(logits)
    return (classifier.scores(probabilities), [classifier.labels[i] for i in classifier.decide(probabilities)], device,
            len(as_run))


def exported_from(checkpoint: Path, classifier: OnnxClassifier) -> None:
    """Refuse a checkpoint that is not the one `classifier`'s export was made from (manifest.verify_checkpoint),
    its weights hashed once for each listing of its files: a run of many inputs checks each, and one retrained since
    the run started is found as it is loaded again, where its scores were taken for the export's disagreeing."""
    _exported_from(checkpoint, classifier, _listing(checkpoint))


def _listing(checkpoint: Path) -> tuple | None:
    """The checkpoint's files (data.snapshot.file_listing); None where it is not there (refused, saying so)."""
    return file_listing(checkpoint) if checkpoint.is_dir() else None


def _exported_from(checkpoint: Path, classifier: OnnxClassifier, listing: tuple | None) -> None:
    key = (str(checkpoint), listing, str(classifier.directory))
    if key not in _EXPORTED_FROM:
        verify_checkpoint(checkpoint, classifier.manifest, classifier.directory)
        _EXPORTED_FROM.clear()
        _EXPORTED_FROM.add(key)


_EXPORTED_FROM: set[tuple] = set()


def _loaded(checkpoint: Path, classifier: OnnxClassifier, device: str) -> tuple:
    """The checkpoint's model and its own tokenizer (as transformers converts a slow tokenizer's files, where it
    kept only those, truncating to the run's max length), where it is still the one the export was made from; its
    files listed once for the check and both loads."""
    files = _listing(checkpoint)
    _exported_from(checkpoint, classifier, files)
    return (_model(str(checkpoint), device, files),
            _tokenizer(str(checkpoint), classifier.manifest.vocab_size, classifier.encoder.max_length, files))


@functools.lru_cache(maxsize=1)
def _model(checkpoint: str, device: str, files: tuple):
    """The checkpoint loaded once, not once an input: a run checks one checkpoint in each of its inputs (a load took
    0.06 s for the packaged MiniLM); `files` (data.snapshot.file_listing) make one written again in place a new key."""
    from scorer.pytorch.checkpoints import load_classifier

    return load_classifier(Path(checkpoint)).to(device)


@functools.lru_cache(maxsize=1)
def _tokenizer(checkpoint: str, vocab_size: int, max_length: int, files: tuple) -> TextEncoder:
    from scorer.pytorch.checkpoints import checkpoint_tokenizer

    return TextEncoder(checkpoint_tokenizer(Path(checkpoint), vocab_size), max_length, cut=False)
