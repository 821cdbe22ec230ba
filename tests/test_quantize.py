"""The accuracy-aware int8 quantiser on the tiny model: per-token int8, its prediction, the targets met for real."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from export.int8_prediction import predicted_agreement, predicted_score_shift, top_two_gap
from export.per_token import per_token_int8
from export.quantize import Quantiser, Targets, groups_of, quantize_int8, weight_matmuls
from export.timing import logits_of
from scorer.cli import main
from scorer.inference.defaults import chosen_variant, fp16_timing_caution
from scorer.inference.session import create_session
from scorer.machine import cpu_identity, cpu_said
from scorer.manifest import load_manifest
from scorer.text.batches import budget_batches
from scorer.text.tokens import TextEncoder

SENTENCES = [f"Sentence {i} is about a cat that sat on mat number {i % 9}." for i in range(60)] + [
    "Short.", "A much longer sentence with many more words than the others have in it, by far."]
HELD_OUT = ["The dog barked at the mailman.", "Colourless green ideas sleep furiously.", "Is it raining?",
            "She gave him the book that he had asked for last week.", "Them is going."]


@pytest.fixture
def schemes(monkeypatch):
    """bench/int8_schemes.py: the int8 schemes the quantiser is compared with, and the batchings they are cut by."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    import int8_schemes

    return int8_schemes


def test_the_benchs_smoothing_changes_nothing_in_fp32(tiny_export, schemes):
    encoded = TextEncoder.from_dir(tiny_export, 48).encode(SENTENCES)
    model = onnx.load(str(tiny_export / "model.onnx"))
    smoothed = schemes.smooth(model, encoded)
    batches = schemes.batchings(encoded, 48)[0]
    before = logits_of(create_session(tiny_export / "model.onnx", "cpu"), encoded, batches)
    after = logits_of(create_session(smoothed.SerializeToString(), "cpu"), encoded, batches)
    np.testing.assert_allclose(after, before, atol=1e-4)
    assert sum(node.op_type == "Mul" and node.name.endswith("/smooth") for node in smoothed.graph.node) == len(
        weight_matmuls(model))


def test_groups_put_the_same_role_of_every_layer_together():
    names = [f"/encoder/layer.{i}/attention/self/{part}/MatMul" for i in range(3) for part in ("query", "value")]
    groups = groups_of(names)
    assert len(groups) == 2 and all(len(members) == 3 for members in groups.values())


def test_the_top_two_gap_is_read_between_the_references_two_highest_logits():
    reference = np.array([[0.0, 1.0], [2.0, 0.0]])
    assert np.allclose(top_two_gap(reference), [1.0, 2.0])
    assert np.allclose(top_two_gap(reference, np.array([[0.0, 0.5], [2.0, 1.0]])), [0.5, 1.0])
    three = np.array([[0.0, 3.0, 1.0]])  # top class 1, runner-up class 2: gap 2
    assert np.allclose(top_two_gap(three, np.array([[5.0, 3.0, 2.5]])), [0.5])  # class 0 does not enter the gap
    assert np.allclose(top_two_gap(three, np.array([[5.0, 1.0, 2.5]])), [-1.5])  # below 0: the label flipped


def test_a_held_out_row_is_predicted_to_do_what_the_calibration_rows_of_nearest_gap_did():
    # Calibration rows near the boundary (gap 1) were moved down by 2 half the time; sure rows (gap 10) by 0.1.
    gaps = np.array([1.0, 1.0, 1.0, 1.0, 10.0, 10.0, 10.0, 10.0])
    shifts = np.array([-2.0, 0.5, -2.0, 0.5, -0.1, -0.1, -0.1, -0.1])
    assert predicted_agreement(gaps, shifts, np.array([1.2]), 0.05, neighbours=4) == 0.5  # like the unsure rows
    assert predicted_agreement(gaps, shifts, np.array([9.0]), 0.05, neighbours=4) == 1.0  # like the sure ones
    assert predicted_agreement(gaps, shifts, np.array([1.2, 9.0]), 0.05, neighbours=4) == 0.75
    # a near-tie is left out, as the parity gate leaves it out; with nothing left, nothing is predicted to flip
    assert predicted_agreement(gaps, shifts, np.array([0.01, 9.0]), 0.05, neighbours=4) == 1.0
    assert predicted_agreement(gaps, shifts, np.array([0.01]), 0.05, neighbours=4) == 1.0
    # a probability moves as far as the worst of its neighbours' shifts moves it: σ(1.2) to σ(-0.8) for the unsure
    logistic = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    assert np.isclose(predicted_score_shift(gaps, shifts, np.array([1.2]), neighbours=4),
                      logistic(1.2) - logistic(-0.8))
    assert np.isclose(predicted_score_shift(gaps, shifts, np.array([9.0]), neighbours=4),
                      logistic(9.0) - logistic(8.9))
    # the window of nearest rows matches a search of every row, at any calibration size
    rng = np.random.default_rng(1)
    for size in (3, 50, 99, 100, 500):
        many, moved, held = rng.gamma(2, 2, size), rng.normal(0, 1, size), rng.gamma(1.5, 2, 300)
        nearest = np.argsort(np.abs(many[None, :] - held[:, None]), axis=1, kind="stable")[:, :50]
        expected = 1 - (moved[nearest] < -held[:, None]).mean()
        assert np.isclose(predicted_agreement(many, moved, held, 0.0), expected)


def _quantized_ops(path: Path) -> int:
    return sum(node.op_type == "MatMulIntegerToFloat" for node in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize(("agreement", "tolerance"), [(1.0, 0.01), (0.5, None)])
def test_int8_meets_its_targets(tiny_export, tmp_path, agreement, tolerance):
    encoder = TextEncoder.from_dir(tiny_export, 48)
    encoded, held_out = encoder.encode(SENTENCES), encoder.encode(HELD_OUT)
    # min_speedup 0: on the tiny model int8 need not be faster; the accuracy search itself is what is tested here
    report = quantize_int8(tiny_export / "model.onnx", tmp_path / "int8.onnx", encoded, held_out,
                           Targets(agreement, 0.05, 1.0, tolerance), 0)
    assert report.predicted_agreement >= agreement and report.calibration_rows == len(SENTENCES)
    assert report.scheme == "per-token" and _quantized_ops(tmp_path / "int8.onnx") == report.quantized
    reference = create_session(tiny_export / "model.onnx", "cpu")
    quantized = create_session(tmp_path / "int8.onnx", "cpu")
    batches = [(rows, None) for rows in budget_batches(encoded.lengths, 4096, 256)]
    expected, logits = logits_of(reference, encoded, batches), logits_of(quantized, encoded, batches)
    shifts = top_two_gap(expected, logits) - top_two_gap(expected)
    assert np.isclose(report.calibration_gap_p99, np.quantile(np.abs(shifts), 0.99), atol=1e-6)
    held_out_gaps = top_two_gap(logits_of(reference, held_out, [(np.arange(len(held_out)), None)]))
    assert report.predicted_agreement == predicted_agreement(top_two_gap(expected), shifts, held_out_gaps, 0.05)
    if tolerance is not None:
        assert report.calibration_gap_p99 <= tolerance
    else:  # a loose target quantises every weight MatMul: the int8 path itself is exercised
        assert report.quantized == len(weight_matmuls(onnx.load(str(tiny_export / "model.onnx")))) > 0
        assert report.speedup > 0  # measured against fp32, not assumed
        # and on which CPU: another CPU's int8 kernels may run it otherwise
        assert report.timed == {"speedup": round(report.speedup, 3), "cpu": cpu_identity()}


@pytest.mark.parametrize(("tolerance", "min_speedup"), [(1e-9, 0), (None, 1e9)])
def test_int8_is_the_fp32_graph_when_it_is_not_close_enough_or_not_faster(tiny_export, tmp_path, tolerance,
                                                                         min_speedup):
    encoder = TextEncoder.from_dir(tiny_export, 48)
    report = quantize_int8(tiny_export / "model.onnx", tmp_path / "int8.onnx", encoder.encode(SENTENCES),
                           encoder.encode(HELD_OUT), Targets(0.5, 0.05, 1.0, tolerance), min_speedup)
    assert report.quantized == 0 and report.speedup == 1.0
    assert (tmp_path / "int8.onnx").read_bytes() == (tiny_export / "model.onnx").read_bytes()
    if tolerance is None:  # timed, too slow: what it measured, and where, is kept
        assert 0 < report.timed["speedup"] < min_speedup and report.timed["cpu"] == cpu_identity()
    else:  # no graph met the targets: none was timed
        assert report.timed is None


def test_where_the_gate_refuses_an_int8_graph_the_next_keeps_one_more_group_in_fp32_down_to_fp32(tiny_export,
                                                                                                   tmp_path):
    encoder = TextEncoder.from_dir(tiny_export, 48)
    quantiser = Quantiser(tiny_export / "model.onnx", encoder.encode(SENTENCES), encoder.encode(HELD_OUT),
                          Targets(0.5, 0.05, 1.0), 0)
    target = tmp_path / "int8.onnx"
    report = quantiser.first(target)
    every = len(weight_matmuls(onnx.load(str(tiny_export / "model.onnx"))))
    assert report.quantized == every and not report.failed_parity
    gates = []
    while report.quantized:
        gates.append({"quantized": report.quantized, "agreement": 0.9})  # what a refusing gate found
        stepped = quantiser.step_down(target, report, gates[-1])
        assert stepped.quantized < report.quantized and _quantized_ops(target) == stepped.quantized
        assert stepped.failed_parity == gates[0] and stepped.stepped_down == gates[1:]
        assert not (tmp_path / ".int8.onnx.trial").exists()
        report = stepped
    assert len(gates) == len(groups_of(weight_matmuls(onnx.load(str(tiny_export / "model.onnx")))))
    assert target.read_bytes() == (tiny_export / "model.onnx").read_bytes()  # at last, the fp32 graph itself


@pytest.mark.parametrize(("speedup", "expected"), [(2.0, "int8"), (1.0, "fp32"), (None, "int8")])
def test_cpu_default_is_int8_only_when_export_measured_it_faster(tiny_export, speedup, expected):
    manifest = load_manifest(tiny_export)
    manifest.extra["int8"] = {} if speedup is None else {"speedup": speedup}  # None: a manifest from before
    assert chosen_variant("cpu", manifest)[0] == expected
    assert chosen_variant("cuda", manifest)[0] == "fp16"


ARM = {"machine": "aarch64", "name": "ARM Neoverse-N1", "int8": ["asimddp"]}
X86 = {"machine": "x86_64", "name": "AMD EPYC", "int8": ["avx2", "avx512bw", "avx512_vnni"]}


@pytest.mark.parametrize(("int8", "here", "expected", "why", "caution"), [
    ({"quantized": 36, "speedup": 1.43, "timed": {"speedup": 1.43, "cpu": X86}}, X86, "int8",
     "export timed int8 at 1.43x fp32's speed on AMD EPYC (x86_64: avx2 avx512bw avx512_vnni)", None),
    ({"quantized": 36, "speedup": 1.43, "timed": {"speedup": 1.43, "cpu": X86}}, ARM, "int8",
     "export timed int8 at 1.43x fp32's speed on AMD EPYC", "this machine's CPU, ARM Neoverse-N1 (aarch64: "
     "asimddp), has other int8 kernels than the one export timed int8 on, so int8 may not be the faster "
     "here: `--variant fp32` scores with fp32"),
    ({"quantized": 0, "speedup": 1.0, "timed": {"speedup": 1.05, "cpu": X86}}, X86, "fp32",
     "export timed int8 at 1.05x fp32's speed on AMD EPYC (x86_64: avx2 avx512bw avx512_vnni) (needs 1.2x; its int8 "
     "file is the fp32 graph)", None),
    ({"quantized": 0, "speedup": 1.0, "timed": {"speedup": 1.05, "cpu": X86}}, ARM, "fp32", "(needs 1.2x",
     "so int8 may be the faster here: export on a machine like this one to time it here"),
    ({"quantized": 0, "speedup": 1.0, "timed": None}, ARM, "fp32",
     "no int8 graph met export's accuracy targets: its int8 file is the fp32 graph", None),
    ({"quantized": 30, "speedup": 1.1}, X86, "fp32", "export timed int8 at 1.10x fp32's speed (needs 1.2x)", None),
    ({}, ARM, "int8", "int8 on a CPU (export recorded no timing)", None),  # (an export from before any of them)
])
def test_the_cpu_variant_is_chosen_by_exports_timing_and_said_with_a_caution_where_this_cpu_differs(
        tiny_export, int8, here, expected, why, caution):
    manifest = load_manifest(tiny_export)
    manifest.extra["int8"] = int8
    variant, said, cautioned = chosen_variant("cpu", manifest, here)
    assert variant == expected and why in said
    assert cautioned == caution if caution is None else caution in cautioned
    assert chosen_variant("cuda", manifest, here) == ("fp16", "fp16 on CUDA", None)
    assert chosen_variant("tensorrt", manifest, here)[0] == "fp32"
    manifest.variants["int8"].parity_passed = False
    assert chosen_variant("cpu", manifest, here) == ("fp32", "the export has no int8 graph that passed its parity "
                                                             "gate", None)


def test_scorer_run_says_where_the_int8_choice_was_timed_and_warns_where_this_cpu_differs(export_copy, tmp_path):
    manifest = json.loads((export_copy / "manifest.json").read_text())
    timed = {"speedup": 1.6, "cpu": ARM if cpu_identity()["machine"] != "aarch64" else X86}
    manifest["extra"]["int8"].update({"quantized": 4, "speedup": 1.6, "timed": timed})
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    source = tmp_path / "in.csv"
    source.write_text("sentence\nthe cat sat on the mat\nsat the on cat mat\n")

    def run(*options: str) -> tuple[str, dict]:
        result = CliRunner().invoke(main, ["run", str(source), "--model", str(export_copy), "--provider", "cpu",
                                           "--overwrite", *options])
        assert result.exit_code == 0, result.output
        return result.output, json.loads((tmp_path / "in.scored.parquet.summary.json").read_text())

    said, summary = run()
    why = f"export timed int8 at 1.60x fp32's speed on {cpu_said(timed['cpu'])}"
    assert summary["variant"] == "int8" and summary["variant_from"] == why
    [caution] = summary["cautions"]
    assert caution.startswith(f"{why}, and this machine's CPU, {cpu_said(cpu_identity())}, has other int8 kernels")
    assert f"{export_copy}: {caution}" in said and "`--variant fp32` scores with fp32" in said
    # What it says to do, as this test does it: the same input scored with each variant, their speeds summarised.
    assert "(`scorer run SAMPLE --overwrite --variant int8`, then `--variant fp32`: each summary's rows_per_second)" \
        in caution and summary["rows_per_second"] > 0
    said, summary = run("--variant", "fp32")  # told: no caution
    assert summary["variant"] == "fp32" and summary["variant_from"] == "--variant" and summary["cautions"] == []
    assert summary["rows_per_second"] > 0
    assert "int8 kernels" not in said
    timed["cpu"] = cpu_identity()  # timed on a CPU like this one: said, no caution
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    said, summary = run()
    assert summary["variant_from"] == f"export timed int8 at 1.60x fp32's speed on {cpu_said(cpu_identity())}"
    assert summary["cautions"] == [] and "int8 kernels" not in said


def test_a_run_on_another_gpu_than_exports_fp16_timing_was_made_on_is_cautioned(tiny_export):
    manifest = load_manifest(tiny_export)
    manifest.extra["fp16"] = {"measured_on": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "io_binding": True,
                              "cuda_options": {"sdpa_kernel": "24"}, "kernels": "cudnn"}
    caution = fp16_timing_caution("cuda", "fp16", manifest, lambda: "NVIDIA A10G")
    assert caution == ("export timed the fp16 graph's attention, kernels and run mode on NVIDIA H100 80GB HBM3, and "
                       "this machine's GPU is NVIDIA A10G: they may not be the fastest here; export on a machine like "
                       "this one to time them here")
    assert fp16_timing_caution("cuda", "fp16", manifest, lambda: "NVIDIA H100 80GB HBM3") is None  # the same GPU
    assert fp16_timing_caution("cuda", "fp16", manifest, lambda: None) is None  # this GPU unknown: nothing to say
    assert fp16_timing_caution("cuda", "fp32", manifest, lambda: "NVIDIA A10G") is None  # (fp32 takes nothing timed)
    assert fp16_timing_caution("tensorrt", "fp32", manifest, lambda: "NVIDIA A10G") is None
    del manifest.extra["fp16"]["gpu"]  # an export from before the GPU was recorded
    assert fp16_timing_caution("cuda", "fp16", manifest, lambda: "NVIDIA A10G") is None


@pytest.mark.parametrize("opset", [None, 18, "newest"])
def test_per_token_int8_is_close_to_fp32_and_gives_a_row_the_same_scores_in_any_batch(tiny_export, tiny_checkpoint,
                                                                                      tmp_path, schemes, opset):
    """Every weight MatMul becomes per-token int8, the logits stay near fp32's, and a row's logits do not depend on
    its batch neighbours (dynamic int8 scales each batch as a whole, so there they do). For a graph exported with
    `--opset` 18 or newer too, where ReduceMax takes its axes as an input: the int8 graph was invalid there, and
    `scorer export --opset 18` failed ("Unrecognized attribute: axes for operator ReduceMax")."""
    from export.onnx_graph import export_onnx, newest_opset
    from scorer.pytorch.checkpoints import load_classifier

    encoded = TextEncoder.from_dir(tiny_export, 48).encode(SENTENCES)
    source, target = tiny_export / "model.onnx", tmp_path / "per-token.onnx"
    if opset is not None:  # (the graph as exported, before optimisation, at that opset)
        source = tmp_path / "model.onnx"
        export_onnx(load_classifier(tiny_checkpoint), source, newest_opset() if opset == "newest" else opset)
        assert next(o.version for o in onnx.load(str(source)).opset_import if o.domain == "") >= 18
    per_token_int8(source, target, exclude=[])
    assert _quantized_ops(target) == len(weight_matmuls(onnx.load(str(source)))) > 0
    # the fp32 weights it replaced are gone from the file: what is left of fp32 is the rest (embeddings, norms...)
    fp32_weights = {t.name for t in onnx.load(str(source)).graph.initializer}
    left = {t.name for t in onnx.load(str(target)).graph.initializer} & fp32_weights
    replaced = {node.input[1] for node in onnx.load(str(source)).graph.node if node.op_type == "MatMul"
                and node.input[1] in fp32_weights}
    assert replaced and not replaced & left and left == fp32_weights - replaced
    fp32, int8 = create_session(source, "cpu"), create_session(target, "cpu")
    budget, single, padded = schemes.batchings(encoded, 48)
    reference = logits_of(fp32, encoded, budget)
    logits = {name: logits_of(int8, encoded, cut) for name, cut in (("budget", budget), ("single", single),
                                                                    ("padded", padded))}
    np.testing.assert_allclose(logits["single"], logits["budget"], atol=1e-5)
    np.testing.assert_allclose(logits["padded"], logits["budget"], atol=1e-5)
    scale = np.abs(reference).max()
    moved = np.abs(logits["budget"] - reference).max()
    assert 0 < moved < 0.05 * scale, (moved, scale)
    assert (logits["budget"].argmax(1) == reference.argmax(1)).mean() >= 0.95
