"""The accuracy-aware int8 quantiser on the tiny model: smoothing is exact, the target is met for real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from export.quantize import _batchings, gap_shift, groups_of, quantize_int8, smooth, weight_matmuls
from export.timing import logits_of
from scorer.defaults import default_variant
from scorer.manifest import load_manifest
from scorer.session import create_session
from scorer.tokens import TextEncoder

SENTENCES = [f"Sentence {i} is about a cat that sat on mat number {i % 9}." for i in range(60)] + [
    "Short.", "A much longer sentence with many more words than the others have in it, by far."]


def test_smoothing_changes_nothing_in_fp32(tiny_export):
    encoded = TextEncoder.from_dir(tiny_export, 48).encode(SENTENCES)
    model = onnx.load(str(tiny_export / "model.onnx"))
    smoothed = smooth(model, encoded)
    batches = _batchings(encoded, 48)[0]
    before = logits_of(create_session(tiny_export / "model.onnx", "cpu"), encoded, batches)
    after = logits_of(create_session(smoothed.SerializeToString(), "cpu"), encoded, batches)
    np.testing.assert_allclose(after, before, atol=1e-4)
    assert sum(node.op_type == "Mul" and node.name.endswith("/smooth") for node in smoothed.graph.node) == len(
        weight_matmuls(model))


def test_groups_put_the_same_role_of_every_layer_together():
    names = [f"/encoder/layer.{i}/attention/self/{part}/MatMul" for i in range(3) for part in ("query", "value")]
    groups = groups_of(names)
    assert len(groups) == 2 and all(len(members) == 3 for members in groups.values())


def test_gap_shift_is_how_far_the_top_two_logits_moved_apart():
    reference = np.array([[0.0, 1.0], [2.0, 0.0]])
    assert np.allclose(gap_shift(reference, np.array([[0.0, 0.5], [2.0, 1.0]])), [0.5, 1.0])
    three = np.array([[0.0, 3.0, 1.0]])  # top class 1, runner-up class 2: gap 2
    assert np.allclose(gap_shift(three, np.array([[5.0, 3.0, 2.5]])), [1.5])  # class 0 does not enter the gap


@pytest.mark.parametrize(("target", "tolerance"), [(1.0, 0.1), (0.5, float("inf"))])
def test_int8_meets_its_calibration_targets_under_every_batching(tiny_export, tmp_path, target, tolerance):
    encoded = TextEncoder.from_dir(tiny_export, 48).encode(SENTENCES)
    # min_speedup 0: on the tiny model int8 need not be faster; the accuracy search itself is what is tested here
    report = quantize_int8(tiny_export / "model.onnx", tmp_path / "int8.onnx", encoded, target, 48, tolerance, 0)
    assert report.calibration_agreement >= target and report.calibration_rows == len(SENTENCES)
    assert report.calibration_gap_p99 <= tolerance
    reference = create_session(tiny_export / "model.onnx", "cpu")
    quantized = create_session(tmp_path / "int8.onnx", "cpu")
    for batches in _batchings(encoded, 48):
        expected = logits_of(reference, encoded, batches)
        logits = logits_of(quantized, encoded, batches)
        assert (logits.argmax(1) == expected.argmax(1)).mean() >= target
        assert np.quantile(gap_shift(expected, logits), 0.99) <= tolerance
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    integer_ops = sum(node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for node in graph.node)
    assert integer_ops == report.quantized
    if target == 0.5:  # a loose target quantises every weight MatMul: the int8 path itself is exercised
        assert report.quantized == len(weight_matmuls(onnx.load(str(tiny_export / "model.onnx")))) > 0
        assert report.speedup > 0  # measured against fp32, not assumed


@pytest.mark.parametrize(("tolerance", "min_speedup"), [(1e-9, 0), (float("inf"), 1e9)])
def test_int8_is_the_fp32_graph_when_it_is_not_close_enough_or_not_faster(tiny_export, tmp_path, tolerance,
                                                                         min_speedup):
    encoded = TextEncoder.from_dir(tiny_export, 48).encode(SENTENCES)
    report = quantize_int8(tiny_export / "model.onnx", tmp_path / "int8.onnx", encoded, 0.5, 48, tolerance,
                           min_speedup)
    assert report.quantized == 0 and report.speedup == 1.0
    assert (tmp_path / "int8.onnx").read_bytes() == (tiny_export / "model.onnx").read_bytes()


@pytest.mark.parametrize(("speedup", "expected"), [(2.0, "int8"), (1.0, "fp32"), (None, "int8")])
def test_cpu_default_is_int8_only_when_export_measured_it_faster(tiny_export, speedup, expected):
    manifest = load_manifest(tiny_export)
    manifest.extra["int8"] = {} if speedup is None else {"speedup": speedup}  # None: a manifest from before
    assert default_variant("cpu", manifest) == expected
    assert default_variant("cuda", manifest) == "fp16"


def test_the_benchs_per_token_int8_is_close_to_fp32_and_gives_a_row_the_same_scores_in_any_batch(
        tiny_export, tmp_path, monkeypatch):
    """bench/int8_tradeoff.py's per-token int8 (activations scaled per row at run time): every weight MatMul
    becomes int8, the logits stay near fp32's, and a row's logits do not depend on its batch neighbours (dynamic
    int8 scales each batch as a whole, so there they do)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    from int8_tradeoff import per_token_int8

    encoded = TextEncoder.from_dir(tiny_export, 48).encode(SENTENCES)
    source, target = tiny_export / "model.onnx", tmp_path / "per-token.onnx"
    per_token_int8(source, target, exclude=[])
    ops = [node.op_type for node in onnx.load(str(target)).graph.node]
    assert ops.count("MatMulIntegerToFloat") == len(weight_matmuls(onnx.load(str(source)))) > 0
    fp32, int8 = create_session(source, "cpu"), create_session(target, "cpu")
    budget, single, padded = _batchings(encoded, 48)
    reference = logits_of(fp32, encoded, budget)
    logits = {name: logits_of(int8, encoded, cut) for name, cut in (("budget", budget), ("single", single),
                                                                    ("padded", padded))}
    np.testing.assert_allclose(logits["single"], logits["budget"], atol=1e-5)
    np.testing.assert_allclose(logits["padded"], logits["budget"], atol=1e-5)
    scale = np.abs(reference).max()
    moved = np.abs(logits["budget"] - reference).max()
    assert 0 < moved < 0.05 * scale, (moved, scale)
    assert (logits["budget"].argmax(1) == reference.argmax(1)).mean() >= 0.95
