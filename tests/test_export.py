"""`scorer export` on the tiny model: graph shape, variants, manifest, parity report and its gate."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from export.fp16_choice import kernel_settings
from export.parity import batching, parity_batches
from scorer.cli import main
from scorer.config import FP16_ATTENTIONS
from scorer.manifest import load_manifest, sha256_file
from scorer.pytorch.model import SentenceClassifier
from scorer.text.tokens import TextEncoder
from tests.conftest import fp32_parity_and_run_evaluation, rewritten_fp16


def test_export_writes_variants_tokenizer_report_and_manifest(tiny_export):
    names = {p.name for p in tiny_export.iterdir()}
    assert {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "tokenizer.json", "manifest.json", "parity.json",
            "export_config.json"} <= names
    manifest = load_manifest(tiny_export)
    assert manifest.labels == [0, 1] and manifest.positive_label == 1 and manifest.max_length == 48
    assert manifest.input_names == ["input_ids", "attention_mask"] and manifest.opset >= 17
    for variant in manifest.variants.values():
        assert variant.sha256 == sha256_file(tiny_export / variant.file)
    assert {"torch", "onnx", "onnxruntime", "transformers"} <= set(manifest.versions)
    assert manifest.versions["onnxruntime"] == ort.__version__  # from either wheel, onnxruntime or onnxruntime-gpu
    report = json.loads((tiny_export / "parity.json").read_text())
    assert {v["variant"] for v in report["variants"]} == {"pytorch", "fp32", "fp16", "int8"}
    fp32 = next(v for v in report["variants"] if v["variant"] == "fp32")
    assert fp32["passed"] and fp32["agreement"] == 1.0 and fp32["max_abs_diff"] < 1e-4
    # the self-check batch: rows of mixed lengths, padded, with the fp32 and int8 graphs' logits on this CPU
    entry = manifest.extra["self_check"]
    assert entry["sha256"] == sha256_file(tiny_export / entry["file"])
    with np.load(tiny_export / entry["file"]) as saved:
        lengths = saved["attention_mask"].sum(axis=1)
        assert len(lengths) == entry["rows"] == 32 and lengths.min() < lengths.max() == saved["input_ids"].shape[1]
        assert saved["fp32"].shape == saved["int8"].shape == (32, 2) and "fp16" not in saved
    assert fp32["accuracy"] is not None  # the packaged examples carry labels



def test_an_export_at_a_newer_opset_builds_every_variant_and_passes_parity(tiny_checkpoint, tmp_path):
    """`--opset 18` (or newer, up to what torch exports) failed building int8: its per-token graph gave ReduceMax
    its axes as an attribute, which opset 18 made an input ("Unrecognized attribute: axes for operator ReduceMax")."""
    out = tmp_path / "onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(out), "--opset",
                                       "18", "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out)
    assert manifest.opset == 18 and set(manifest.variants) == {"fp32", "fp16", "int8"}
    for variant in manifest.variants.values():
        graph = onnx.load(str(out / variant.file))
        onnx.checker.check_model(graph)
        assert next(o.version for o in graph.opset_import if o.domain == "") == 18
    assert json.loads((out / "parity.json").read_text())["passed"]


def test_a_checkpoint_and_its_export_are_readable_as_the_umask_allows(tiny_checkpoint, tiny_export):
    # safetensors writes 0600 whatever the umask: a checkpoint another account (export's, the nightly job's for
    # --check) could not read although every other file of it is readable
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for d in (tiny_checkpoint, tiny_export) for p in d.iterdir()
             if p.is_file()}
    assert {"model.safetensors", "scorer_head.safetensors", "model.onnx"} <= set(modes)
    assert set(modes.values()) == {0o666 & ~umask}


def test_graph_has_symbolic_batch_and_sequence_axes(tiny_export):
    graph = onnx.load(str(tiny_export / "model.onnx")).graph
    onnx.checker.check_model(str(tiny_export / "model.onnx"))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    output = graph.output[0].type.tensor_type.shape.dim
    assert output[0].dim_param == "batch" and output[1].dim_value == 2


def test_every_variant_matches_pytorch_at_odd_shapes(tiny_checkpoint, tiny_export):
    model = SentenceClassifier.load(tiny_checkpoint)
    encoder = TextEncoder.from_dir(tiny_export, 48)
    texts = ["a", "The cat sat on the mat while the dog barked at the moon outside.", "Hi there, you.",
             "word " * 60, "Five words in this one."]
    encoded = encoder.encode(texts)
    with torch.no_grad():
        for rows, pad in [([0], None), ([1, 2, 3, 4, 0], None), ([2, 4, 1], 48)]:
            input_ids, mask = encoded.pad(np.array(rows), pad)
            expected = model(torch.from_numpy(input_ids), torch.from_numpy(mask)).numpy()
            for name, tolerance in [("model.onnx", 1e-4), ("model.fp16.onnx", 2e-2)]:
                session = ort.InferenceSession(str(tiny_export / name), providers=["CPUExecutionProvider"])
                ints = np.int32 if name == "model.fp16.onnx" else np.int64  # the fp16 graph takes int32 ids
                got = session.run(None, {"input_ids": input_ids.astype(ints), "attention_mask": mask.astype(ints)})[0]
                assert np.abs(got - expected).max() < tolerance, name


def test_parity_batches_include_batch_one_odd_sizes_and_max_length():
    batches = parity_batches(20, 48)
    assert any(len(b.rows) == 1 for b in batches)
    assert any(len(b.rows) % 2 == 1 and len(b.rows) > 1 for b in batches)
    assert any(b.pad == 48 for b in batches)
    covering = np.concatenate([b.rows for b in batches if b.covering])
    assert covering.tolist() == list(range(20))
    assert batching(20, 48) == "each in a batch of 7, the first 8 also alone and 3 padded to 48 (31 runs)"


def test_parity_counts_rows_once_and_runs_as_run(tiny_export):
    """The report says how many rows were compared and how many row results (a row runs in more than one batch)."""
    report = json.loads((tiny_export / "parity.json").read_text())
    rows = report["variants"][0]["rows"]
    assert rows > 8 and all(v["rows"] == rows and v["runs"] == rows + 8 + 3 for v in report["variants"])


def test_failed_gate_exits_7_and_keeps_the_report(tiny_checkpoint, tmp_path):
    out = tmp_path / "onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "--output", str(out),
                                       "--variants", "fp32", "--tolerance", "1e-12", "--quiet"])
    assert result.exit_code == 7, result.output
    assert "parity gate failed for fp32" in result.output
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] is False
    run = CliRunner().invoke(main, ["run", str(tmp_path / "x.csv"), "--model", str(out)])
    assert run.exit_code in (3, 4)


def operators(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_export_prints_the_parity_table_and_unfused_fp16_attention_on_request(tiny_checkpoint, tmp_path):
    data = tmp_path / "parity.csv"
    data.write_text("sentence,label\n" + "".join(f"sentence {i} here,{i % 2}\n" for i in range(30)))
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "--output",
                                       str(tmp_path / "onnx"), "--variants", "fp32,fp16", "--data", str(data),
                                       "--fp16-attention", "unfused", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "variant" in result.output and "fp16" in result.output and "pass" in result.output
    assert "fp16 graph: unfused attention (not timed: asked for with --fp16-attention)" in result.output
    report = json.loads((tmp_path / "onnx" / "parity.json").read_text())
    assert report["source"] == str(data) and report["passed"]
    ops = operators(tmp_path / "onnx" / "model.fp16.onnx")
    assert "Attention" not in ops and {"SkipLayerNormalization", "MatMul", "Softmax"} <= ops
    fp16 = load_manifest(tmp_path / "onnx").extra["fp16"]
    assert fp16["attention"] == "unfused" and fp16["seconds"] is None


def test_cuda_listed_but_not_starting_builds_and_checks_fp16_on_the_cpu_saying_so_once(tiny_checkpoint, tmp_path,
                                                                                       monkeypatch):
    """onnxruntime-gpu on a machine where CUDA cannot start (no GPU, or CUDA's libraries missing) lists the CUDA
    provider: export failed at the fp16 parity check with exit 6. Only the listing is made up here; every session is
    real, and the one asked for on CUDA lands on the CPU as it does there."""
    import scorer.inference.session

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is really listed here")
    monkeypatch.setattr(scorer.inference.session, "available",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(scorer.inference.session, "_CUDA_STARTS", [])
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "--output",
                                       str(tmp_path / "onnx"), "--variants", "fp32,fp16", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.count("CUDA is listed but does not start") == 1
    assert "fp16 graph: fused attention (not timed: no working CUDA here" in result.output
    report = json.loads((tmp_path / "onnx" / "parity.json").read_text())
    assert {v["variant"]: v["provider"] for v in report["variants"]}["fp16"] == "cpu" and report["passed"]
    # A run in the same process (as `scorer demo` runs one after export) does not say it again, and runs on the CPU
    source = tmp_path / "in.csv"
    source.write_text("sentence\nA cat sat.\n")
    result = CliRunner().invoke(main, ["run", str(source), "--model", str(tmp_path / "onnx"), "--quiet"])
    assert result.exit_code == 0 and "on cpu" in result.output, result.output
    assert "CUDA is" not in result.output


# Each fp16 graph timed plainly and with IO binding (export.fp16_choice.choose_attention), the fused ones also with
# the mask as row lengths and starts ("efficient"; on CUDA also with cuDNN's attention asked for).
MODES = tuple(f"{attention}{'' if kernels == 'default' else ' ' + kernels}{mode}" for attention in FP16_ATTENTIONS
              for kernels in kernel_settings(attention, "cpu") for mode in ("", " io_binding"))


def test_fp16_attention_is_chosen_by_cuda_timing_or_fused_without_cuda(tiny_export):
    from scorer.inference.session import cuda_starts

    fp16 = load_manifest(tiny_export).extra["fp16"]
    if cuda_starts(tiny_export / "model.onnx"):  # (onnxruntime-gpu lists CUDA on machines where it cannot start)
        seconds = fp16["seconds"]
        assert set(MODES) <= set(seconds) and fp16["attention"] == min(seconds, key=seconds.get).split()[0]
    else:
        assert fp16["attention"] == "fused" and fp16["seconds"] is None and fp16["measured_on"] is None
        assert fp16["cuda_options"] is None
    assert ("Attention" in operators(tiny_export / "model.fp16.onnx")) == (fp16["attention"] == "fused")
    assert fp16["fused"]["SkipLayerNormalization"] >= 1
    inputs = onnx.load(str(tiny_export / "model.fp16.onnx")).graph.input
    assert [i.type.tensor_type.elem_type for i in inputs] == [onnx.TensorProto.INT32] * 2


@pytest.fixture
def brief_timing(monkeypatch):
    """choose_attention's timing cut to one full batch's worth of tokens a pass, best of 2 (export times 8, best of
    3): these tests are about which graphs are timed, left out and kept, not how precisely; a third of the time."""
    import export.fp16_choice

    monkeypatch.setattr(export.fp16_choice, "_FULL_BATCHES", 1)
    monkeypatch.setattr(export.fp16_choice, "_PASSES", 2)


def test_attention_choice_keeps_the_graph_it_timed_faster(tiny_export, tmp_path, brief_timing):
    from export.fp16_choice import choose_attention

    encoded = TextEncoder.from_dir(tiny_export, 48).encode(["The cat sat.", "A longer sentence than that."] * 40)
    target = tmp_path / "model.fp16.onnx"
    report = choose_attention(tiny_export / "model.onnx", target, 2, 32, encoded, "cpu")  # the CUDA path, on a CPU
    assert set(report.seconds) == set(MODES) and all(s > 0 for s in report.seconds.values())
    fastest = min(report.seconds, key=report.seconds.get)
    assert report.attention == fastest.split()[0] and report.io_binding == fastest.endswith("io_binding")
    assert report.measured_on == "cpu" and (report.batch_overhead is None or 0 <= report.batch_overhead <= 32768)
    assert report.gpu is None  # (timed on no GPU)
    assert report.cuda_options == {} and report.failed is None  # cuDNN's kernels are tried on CUDA only
    assert report.summary().startswith(f"fp16 graph: {report.attention} attention, {report.kernels} kernels, ")
    assert "the fastest of 10 ways timed on cpu" in report.summary()
    assert report.kernels == ("efficient" if " efficient" in fastest else "default")
    assert ("Attention" in operators(target)) == (report.attention == "fused")
    assert ("Range" in operators(target)) == (report.kernels == "efficient")  # the row starts are computed in-graph
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp16.onnx"]  # the other graphs are gone


@pytest.mark.parametrize("fault", ["unloadable", "not fused", "wrong logits"])
def test_an_attention_graph_that_does_not_run_or_runs_wrong_is_left_out_and_said(tiny_export, tmp_path, monkeypatch,
                                                                                   brief_timing, fault):
    import export.fp16_choice as choice
    import export.optimize

    real = export.optimize.optimize_fp16

    def mha_broken(source, target, num_heads, hidden_size, attention="fused"):
        if attention == "mha" and fault == "not fused":  # an optimizer that cannot fuse it builds another
            return real(source, target, num_heads, hidden_size, "fused")
        fused = real(source, target, num_heads, hidden_size, attention)
        if attention == "mha" and fault == "unloadable":  # what a missing kernel would look like
            target.write_bytes(target.read_bytes()[:1000])
        if attention == "mha" and fault == "wrong logits":  # a kernel that computes something else
            model = onnx.load(str(target))
            head = next(i for i in model.graph.initializer if tuple(i.dims) == (2,))  # the classifier's bias
            bias = onnx.numpy_helper.to_array(head)
            head.CopyFrom(onnx.numpy_helper.from_array((bias + 0.1).astype(bias.dtype), head.name))
            onnx.save(model, str(target))
        return fused

    monkeypatch.setattr(export.optimize, "optimize_fp16", mha_broken)  # the tiny graphs are built in this process
    encoded = TextEncoder.from_dir(tiny_export, 48).encode(["The cat sat.", "A longer sentence than that."] * 40)
    report = choice.choose_attention(tiny_export / "model.onnx", tmp_path / "fp16.onnx", 2, 32, encoded, "cpu")
    # the graph not built: nothing of it is tried; a graph that does not load or computes wrong: each kernel setting
    mha = {"mha"} if fault == "not fused" else {"mha", "mha efficient"}
    assert set(report.failed) == mha and all(report.failed.values())
    if fault == "wrong logits":
        assert all("differ from the fp32 graph's by 0.1" in why for why in report.failed.values())
    assert set(report.seconds) == {mode for mode in MODES if not mode.startswith("mha")}
    assert report.attention != "mha" and (tmp_path / "fp16.onnx").is_file()


def _trial_inputs(export, graph):
    """The fused fp16 graph of `export` at `graph`, check rows of mixed lengths, the fp32 graph's logits for them,
    and two batches to time (one 40 tokens wide)."""
    from export.optimize import optimize_fp16

    optimize_fp16(export / "model.onnx", graph, 2, 32, "fused")
    encoded = TextEncoder.from_dir(export, 48).encode(["Yes.", "The cat sat on the mat, said the man."] * 4)
    ids, mask = encoded.pad(np.arange(len(encoded)))
    expected = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids, "attention_mask": mask})[0]
    return (ids, mask), expected, [encoded.pad(np.arange(2)), encoded.pad(np.arange(len(encoded)), 40)]


def test_a_kernel_trial_in_a_child_process_passes_a_sound_graph_and_reports_why_others_fail(tiny_export, tmp_path):
    from export.fp16_probe import trial_in_child
    from scorer.errors import ModelError

    graph = tmp_path / "fused.onnx"
    (ids, mask), expected, shapes = _trial_inputs(tiny_export, graph)  # shapes: the batches export will time
    trial_in_child(graph, "cpu", "efficient", (ids, mask), expected, shapes)  # what export runs first on CUDA
    with pytest.raises(ModelError, match=r"child process failed \(its logits differ .* by 0\.5"):
        trial_in_child(graph, "cpu", "default", (ids, mask), expected + 0.5, shapes)
    beyond = (np.full_like(shapes[1][0], 10**6), shapes[1][1])  # a batch the graph cannot run: ids beyond the vocab
    with pytest.raises(ModelError, match=r"child process failed .*EmbedLayerNormalization.*out of range"):
        trial_in_child(graph, "cpu", "default", (ids, mask), expected, [shapes[0], beyond])
    _nan_at_width(graph, 40)  # right on the check rows, NaN on 40-token batches: what fp16 overflow would look like
    with pytest.raises(ModelError, match=r"child process failed .*non-finite logits on a batch of 8 rows x 40 tokens"):
        trial_in_child(graph, "cpu", "default", (ids, mask), expected, shapes)
    graph.write_bytes(graph.read_bytes()[:1000])  # a graph that cannot load: the child says so, the parent lives on
    with pytest.raises(ModelError, match=r"child process failed .*could not start"):
        trial_in_child(graph, "cpu", "default", (ids, mask), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fused.onnx"]  # the check rows' file is gone


def test_kernel_trials_run_side_by_side_and_each_failure_is_its_own(tiny_export, tmp_path):
    from export.fp16_probe import trials_in_children

    sound = tmp_path / "sound.onnx"
    check, expected, shapes = _trial_inputs(tiny_export, sound)
    nan, broken = shutil.copy(sound, tmp_path / "nan.onnx"), tmp_path / "broken.onnx"
    _nan_at_width(nan, 40)
    broken.write_bytes(sound.read_bytes()[:1000])
    trials = {"sound": (sound, "efficient"), "nan": (nan, "default"), "broken": (broken, "default"),
              "sound again": (sound, "default")}
    failed = trials_in_children(trials, "cpu", check, expected, shapes)  # four trials, three at a time
    assert set(failed) == {"nan", "broken"}
    assert "non-finite logits on a batch of 8 rows x 40 tokens" in failed["nan"]
    assert "could not start" in failed["broken"]


def test_the_fp16_check_allows_fp16_noise_at_every_logit_scale_and_nothing_more():
    from export.fp16_choice import check_logits
    from scorer.errors import ModelError

    small, large = np.array([[0.5, -0.2]], np.float32), np.array([[10.0, -4.0]], np.float32)
    check_logits(small + 0.04, small)  # 0.05 at least
    check_logits(large + 0.15, large)  # or 2% of the largest logit
    for logits, expected in ((small + 0.06, small), (large + 0.25, large), (small * np.nan, small)):
        with pytest.raises(ModelError, match="differ from the fp32 graph's"):
            check_logits(logits, expected)


def _nan_at_width(path, width: int) -> None:
    """Rewrite the graph at `path` so that its logits are multiplied by 1 + 0 / (padded width - `width`): unchanged,
    except NaN for batches exactly `width` tokens wide."""
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    out = graph.output[0].name
    last = next(node for node in graph.node if out in node.output)
    last.output[:] = [f"{out}_raw" if name == out else name for name in last.output]
    graph.initializer.extend([helper.make_tensor("w_one", TensorProto.INT64, [], [1]),
                              helper.make_tensor("w_at", TensorProto.FLOAT, [], [float(width)]),
                              helper.make_tensor("w_zero", TensorProto.FLOAT, [], [0.0]),
                              helper.make_tensor("w_unit", TensorProto.FLOAT, [], [1.0])])
    graph.node.extend([helper.make_node("Shape", [graph.input[0].name], ["w_shape"]),
                       helper.make_node("Gather", ["w_shape", "w_one"], ["w_width"], axis=0),
                       helper.make_node("Cast", ["w_width"], ["w_float"], to=TensorProto.FLOAT),
                       helper.make_node("Sub", ["w_float", "w_at"], ["w_gap"]),
                       helper.make_node("Div", ["w_zero", "w_gap"], ["w_nan"]),
                       helper.make_node("Add", ["w_unit", "w_nan"], ["w_factor"]),
                       helper.make_node("Mul", [f"{out}_raw", "w_factor"], [out])])
    onnx.save(model, str(path))


def test_the_cost_of_a_run_is_fitted_from_two_passes():
    from export.timing import fitted_run_cost

    def seconds(runs, tokens, per_run=2e-3, per_token=1e-6):
        return runs * per_run + tokens * per_token

    passes = [(7, 27_000, seconds(7, 27_000)), (55, 27_500, seconds(55, 27_500))]
    assert fitted_run_cost(passes, 4096) == pytest.approx(2000)  # 2 ms / 1 us
    assert fitted_run_cost([(7, 27_000, seconds(7, 27_000, 0)), (55, 27_500, seconds(55, 27_500, 0))], 4096) \
        == pytest.approx(0, abs=1e-6)
    runs_only = [(7, 27_000, seconds(7, 27_000, 5e-3, 0)), (55, 27_500, seconds(55, 27_500, 5e-3, 0))]
    assert fitted_run_cost(runs_only, 4096) is None  # tokens cost nothing: no ratio
    assert fitted_run_cost([(7, 27_000, 0.04), (14, 54_000, 0.08)], 4096) is None  # proportional: cannot tell
    dear_runs = [(7, 27_000, seconds(7, 27_000, 2e-2)), (55, 27_500, seconds(55, 27_500, 2e-2))]
    assert fitted_run_cost(dear_runs, 4096) == 4096  # 20,000 tokens' worth, held to the budget


def test_the_cost_of_a_run_is_measured_on_a_model_of_known_costs(tiny_export):
    import time

    from export.timing import run_cost

    encoded = TextEncoder.from_dir(tiny_export, 48).encode(["word " * (i % 9 + 2) for i in range(3000)])

    def stand_in(feed):  # a model whose costs are known: 2 ms a run, 1 us a token
        time.sleep(2e-3 + feed["input_ids"].size * 1e-6)
        return np.zeros((len(feed["input_ids"]), 2), np.float32)

    # About 7 runs of 4,096 tokens against 55 of 512: timing noise of a few ms moves the fit by tens of tokens.
    fitted = run_cost(stand_in, encoded, np.arange(len(encoded)), budget=4096, max_rows=4096, passes=3)
    assert fitted is not None and 1000 <= fitted <= 3000


@pytest.mark.parametrize("attention", FP16_ATTENTIONS)
def test_each_fp16_attention_scores_as_the_fp32_graph_does_padding_included(tiny_export, tmp_path, attention):
    from export.optimize import attention_of, optimize_fp16

    target = tmp_path / f"{attention}.onnx"
    assert attention_of(optimize_fp16(tiny_export / "model.onnx", target, 2, 32, attention)) == attention
    graph = onnx.load(str(target)).graph
    ops = {node.op_type for node in graph.node}
    assert ("Attention" in ops) == (attention == "fused") and ("MultiHeadAttention" in ops) == (attention == "mha")
    # The fused ops take the mask as sequence lengths (what CUDA's fused kernels need): EmbedLayerNormalization's
    # mask index, not the 0/1 mask itself.
    masks = {node.input[3 if node.op_type == "Attention" else 4] for node in graph.node
             if node.op_type in ("Attention", "MultiHeadAttention")}
    assert masks == (set() if attention == "unfused" else
                     {next(n.output[1] for n in graph.node if n.op_type == "EmbedLayerNormalization")})
    encoded = TextEncoder.from_dir(tiny_export, 48).encode(
        ["Yes.", "The cat sat on the mat.", "Colourless green ideas sleep furiously in the old stone house."] * 3)
    ids, mask = encoded.pad(np.arange(len(encoded)))  # padded to the longest: short rows are mostly padding
    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                for path in (tiny_export / "model.onnx", target)]
    fp32, fp16 = (session.run(None, {"input_ids": ids.astype(dtype), "attention_mask": mask.astype(dtype)})[0]
                  for session, dtype in zip(sessions, (np.int64, np.int32), strict=True))
    np.testing.assert_allclose(fp16, fp32, atol=2e-2)
    alone = sessions[1].run(None, {"input_ids": ids[:1, :encoded.lengths[0]].astype(np.int32),
                                   "attention_mask": mask[:1, :encoded.lengths[0]].astype(np.int32)})[0]
    np.testing.assert_allclose(alone[0], fp16[0], atol=2e-3)  # padding changes nothing


def test_the_fp16_graphs_built_in_processes_of_their_own_are_the_graphs_built_here(tiny_export, tmp_path):
    from export.optimize import optimize_each

    here, apart = tmp_path / "here", tmp_path / "apart"
    here.mkdir(), apart.mkdir()
    serial = optimize_each(tiny_export / "model.onnx", here, 2, 32, list(FP16_ATTENTIONS))  # tiny: in this process
    parallel = optimize_each(tiny_export / "model.onnx", apart, 2, 32, list(FP16_ATTENTIONS), workers=3)
    assert serial == parallel and serial["fused"]["Attention"] == 2
    for attention in FP16_ATTENTIONS:
        assert (apart / f"{attention}.onnx").read_bytes() == (here / f"{attention}.onnx").read_bytes()
    failed = optimize_each(tmp_path / "missing.onnx", apart, 2, 32, ["fused", "mha"], workers=2)
    assert set(failed) == {"fused", "mha"} and all("missing.onnx" in str(why) for why in failed.values())


def test_fp16_graphs_are_built_in_parallel_only_when_large_with_a_core_and_memory_for_each(monkeypatch):
    import export.optimize as optimize

    gib = 1 << 30
    monkeypatch.setattr(optimize, "usable_cores", lambda: 16)
    monkeypatch.setattr(optimize, "usable_memory", lambda: 128 * gib)
    assert optimize.build_workers(415 << 20, 3) == 3  # bert-base on the GPU machine: 16 cores, 128 GiB
    assert optimize.build_workers(1 << 20, 3) == 1  # a small model: a process costs more than it saves
    monkeypatch.setattr(optimize, "usable_memory", lambda: 18 * gib)
    assert optimize.build_workers(415 << 20, 3) == 2  # memory for two at about 8 GB each
    monkeypatch.setattr(optimize, "usable_memory", lambda: None)
    assert optimize.build_workers(415 << 20, 3) == 1  # (memory unknown: one at a time)
    monkeypatch.setattr(optimize, "usable_memory", lambda: 128 * gib)
    monkeypatch.setattr(optimize, "usable_cores", lambda: 2)
    assert optimize.build_workers(415 << 20, 3) == 1  # these 2-core machines: no reliable gain measured


@pytest.mark.parametrize("attention", ["fused", "mha"])
def test_the_row_starts_mask_holds_each_rows_length_and_offset_and_scores_alike(tiny_export, tmp_path, attention):
    lengths_graph, starts_graph = rewritten_fp16(tiny_export, tmp_path, attention, "efficient")
    model = onnx.load(str(starts_graph))
    readers = [node for node in model.graph.node if "row_starts_mask" in node.input]
    assert readers and {node.op_type for node in readers} == {"Attention" if attention == "fused" else
                                                              "MultiHeadAttention"}
    model.graph.output.append(onnx.helper.make_tensor_value_info("row_starts_mask", onnx.TensorProto.INT32, None))
    encoded = TextEncoder.from_dir(tiny_export, 48).encode(
        ["Yes.", "The cat sat on the mat.", "Colourless green ideas sleep furiously in the old stone house."] * 3)
    ids, mask = encoded.pad(np.arange(len(encoded)))
    feed = {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32)}
    logits, row_mask = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feed)
    starts = np.arange(len(ids) + 1) * ids.shape[1]  # where each padded row begins, and the end
    np.testing.assert_array_equal(row_mask, np.concatenate([encoded.lengths, starts, starts]))
    lengths_only = ort.InferenceSession(str(lengths_graph), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(logits, lengths_only, atol=1e-6)  # ORT's CPU kernels read both forms alike


def test_onnx_runtime_reads_the_row_starts_mask_as_the_lengths():
    """What makes the row-starts graphs' CPU check meaningful: one Attention op with a padded batch scores the same
    with the 3B+2 mask as with the lengths, and far from unmasked (the tiny model barely notices padding)."""
    rng = np.random.default_rng(0)
    rows, width, hidden = 3, 6, 8
    weights = [onnx.numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
               for name, shape in (("w", (hidden, 3 * hidden)), ("b", (3 * hidden,)))]

    def attention(mask: np.ndarray | None) -> np.ndarray:
        inputs = [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [rows, width, hidden])]
        if mask is not None:
            inputs.append(onnx.helper.make_tensor_value_info("m", onnx.TensorProto.INT32, list(mask.shape)))
        node = onnx.helper.make_node("Attention", ["x", "w", "b"] + (["m"] if mask is not None else []), ["y"],
                                     domain="com.microsoft", num_heads=2)
        graph = onnx.helper.make_graph([node], "attention", inputs, [onnx.helper.make_tensor_value_info(
            "y", onnx.TensorProto.FLOAT, [rows, width, hidden])], weights)
        model = onnx.helper.make_model(graph, ir_version=8, opset_imports=[  # opset 17's IR, for any ONNX Runtime
            onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("com.microsoft", 1)])
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x} | ({} if mask is None else {"m": mask}))[0]

    x = rng.normal(size=(rows, width, hidden)).astype(np.float32)
    lengths, starts = np.array([2, 6, 4], np.int32), np.arange(rows + 1, dtype=np.int32) * width
    by_lengths = attention(lengths)
    np.testing.assert_allclose(attention(np.concatenate([lengths, starts, starts])), by_lengths, atol=1e-6)
    assert np.abs(attention(None) - by_lengths).max() > 1


@pytest.mark.parametrize(("kernels", "message"), [("efficient", "no fused attention op"),
                                                  ("packed", "packing mode needs a fused attention op")])
def test_the_graph_rewrites_need_a_fused_attention(tiny_export, tmp_path, kernels, message):
    from scorer.errors import ModelError

    with pytest.raises(ModelError, match=message):
        rewritten_fp16(tiny_export, tmp_path, "unfused", kernels)
    assert not (tmp_path / f"{kernels}.onnx").exists()


@pytest.mark.parametrize("attention", ["fused", "mha"])
def test_the_packed_graph_runs_every_layer_on_the_real_tokens_only(tiny_export, tmp_path, attention):
    lengths_graph, packed_graph = rewritten_fp16(tiny_export, tmp_path, attention, "packed")
    model = onnx.load(str(packed_graph))
    onnx.checker.check_model(model)
    nodes = model.graph.node
    (embed,), (remove,), (restore,) = ([n for n in nodes if n.op_type == op] for op in
                                       ("EmbedLayerNormalization", "RemovePadding", "RestorePadding"))
    assert list(remove.input) == list(embed.output[:2])  # the embeddings, packed by each row's length
    between, frontier = [], {remove.output[0]}
    for node in nodes:  # topological order: every node that reads the packed tokens, up to RestorePadding
        if node is not restore and frontier & set(node.input):
            between.append(node.op_type)
            frontier |= set(node.output)
    fused_op = "PackedAttention" if attention == "fused" else "PackedMultiHeadAttention"
    # attention is the only op that mixes tokens, and finds each row's tokens by their offsets; the rest is per token
    assert between.count(fused_op) == 2 and set(between) <= {fused_op, "MatMul", "SkipLayerNormalization", "BiasGelu"}
    assert {n.op_type for n in nodes if remove.output[2] in n.input} == {fused_op}  # the cumulative lengths
    assert not {"Attention", "MultiHeadAttention"} & {n.op_type for n in nodes}
    # the classifier head reads the last layer's output padded back, as before
    before = onnx.load(str(lengths_graph)).graph.node
    head = [n.name for n in before if restore.output[0] in n.input]
    assert head and head == [n.name for n in nodes if restore.output[0] in n.input]
    with pytest.raises(Exception, match="RemovePadding"):  # CUDA only: what export's CPU candidates leave out
        ort.InferenceSession(str(packed_graph), providers=["CPUExecutionProvider"])


def test_scoring_a_packed_fp16_graph_on_a_cpu_says_to_use_cuda_and_writes_nothing(export_copy, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # what an export whose CUDA timing chose the packed graph holds
    fp16 = export_copy / "model.fp16.onnx"
    rewritten_fp16(export_copy, tmp_path, "fused", "packed")[1].replace(fp16)
    manifest = load_manifest(export_copy)
    manifest.variants["fp16"].sha256 = sha256_file(fp16)
    manifest.extra["fp16"].update(kernels="packed", measured_on="cuda", attention="fused")
    manifest.save(export_copy)
    source, output = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({"sentence": ["The cat sat.", "Sat cat the."]}), source)
    result = CliRunner().invoke(main, ["run", str(source), "--model", str(export_copy), "--provider", "cpu",
                                       "--variant", "fp16", "-o", str(output)])
    assert result.exit_code == 6, result.output
    assert "only CUDA has" in result.output and "--provider cuda, or with --variant fp32 or int8" in result.output
    assert not output.exists()
    result = CliRunner().invoke(main, ["run", str(source), "--model", str(export_copy), "--provider", "cpu",
                                       "-o", str(output), "--quiet"])
    assert result.exit_code == 0, result.output  # the CPU's own variants are untouched


def test_a_kernel_setting_the_provider_cannot_run_is_left_out_and_said(tiny_export, tmp_path, monkeypatch,
                                                                     brief_timing):
    import export.fp16_choice as choice

    # the CPU has no kernels for the packed graph's ops: as on a CUDA build without them, export carries on; and the
    # new kernels go through their trials in child processes first, as on CUDA
    monkeypatch.setattr(choice, "kernel_settings", lambda attention, provider: ["default"] + (
        ["efficient", "packed"] if attention != "unfused" else []))
    monkeypatch.setattr(choice, "needs_trial", lambda kernels, provider: kernels != "default")
    encoded = TextEncoder.from_dir(tiny_export, 48).encode(["The cat sat.", "A longer sentence than that."] * 40)
    report = choice.choose_attention(tiny_export / "model.onnx", tmp_path / "fp16.onnx", 2, 32, encoded, "cpu")
    assert set(report.failed) == {"fused packed", "mha packed"}
    assert all("trial in a child process failed" in why and "RemovePadding" in why for why in report.failed.values())
    assert set(report.seconds) == {f"{a}{kernels}{mode}" for a in FP16_ATTENTIONS for mode in ("", " io_binding")
                                   for kernels in ("", " efficient") if a != "unfused" or not kernels}
    assert report.kernels in ("default", "efficient") and "RemovePadding" not in operators(tmp_path / "fp16.onnx")


def test_export_refuses_a_missing_checkpoint_and_unknown_parity_labels(tiny_checkpoint, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["export", "--checkpoint", str(tmp_path / "none"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 4 and "none does not exist; run `scorer train` first" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(main, ["export", "--checkpoint", str(tmp_path / "empty"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 4 and "not a scorer checkpoint" in result.output
    data = tmp_path / "parity.csv"
    data.write_text("sentence,label\nfine,1\nodd,maybe\n")
    result = runner.invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "o"),
                                  "--data", str(data)])
    assert result.exit_code == 3 and "maybe" in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name,damage,message", [
    ("model.safetensors", b"", "cannot load a Hugging Face encoder"),
    ("scorer_head.safetensors", b"", "scorer_head.safetensors is damaged or not this head's"),
    ("scorer_head.json", b'{"labels": [0, 1], "pool', "scorer_head.json is damaged"),
])
def test_a_damaged_checkpoint_is_a_model_error_and_no_export(tiny_checkpoint, tmp_path, name, damage, message):
    checkpoint = Path(shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint"))
    path = checkpoint / name
    path.write_bytes(damage or path.read_bytes()[:100])
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "-o", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 4 and message in result.output and not (tmp_path / "o").exists()


def test_an_export_directory_that_holds_the_checkpoint_is_refused_even_with_overwrite(tiny_checkpoint, tmp_path):
    checkpoint = Path(shutil.copytree(tiny_checkpoint, tmp_path / "work" / "checkpoint"))
    for output in (checkpoint, checkpoint.parent):
        result = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "-o", str(output),
                                           "--overwrite", "-q"])
        assert result.exit_code == 5 and f"holds --checkpoint {checkpoint}" in result.output
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(p.name for p in tiny_checkpoint.iterdir())
    # --overwrite replaces an export, or an empty directory: not a directory of other files, nor a file (which
    # failed after all the work with an internal error, exit 1)
    (tmp_path / "documents").mkdir()
    (tmp_path / "documents" / "notes.txt").write_text("keep")
    (tmp_path / "notes.txt").write_text("keep")
    for output, said in ((tmp_path / "documents", "is a directory that scorer did not write (it has no manifest.json)"),
                         (tmp_path / "notes.txt", "is a file, and scorer writes a directory there")):
        result = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "-o", str(output),
                                           "--overwrite", "-q"])
        assert result.exit_code == 5 and said in result.output, result.output
    assert (tmp_path / "documents" / "notes.txt").read_text() == (tmp_path / "notes.txt").read_text() == "keep"


def test_a_second_export_into_the_same_output_is_refused_while_the_first_runs(tiny_checkpoint, tmp_path):
    from scorer.data.lock import OutputLock

    output = tmp_path / "onnx"
    with OutputLock(output, temporaries=[]):  # (as the first export holds it)
        result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(output), "-q"])
    assert result.exit_code == 5 and result.output.count("\n") == 1, result.output
    assert f"another scorer export is writing {output}; wait for it to finish, or choose another --output" in \
        result.output
    assert list(tmp_path.iterdir()) == []


def test_export_options_and_parity_data_it_cannot_use_are_refused_before_any_output(tiny_checkpoint, tmp_path):
    data = tmp_path / "parity.csv"
    data.write_text("sentence,label\nfine,1\n")
    for extra, code, message in (
        (["--variants", "fp64"], 2, "--variants must be one of fp32, fp16, int8, not 'fp64'"),
        (["--opset", "99"], 2, "--opset 99 is newer than torch"),
        (["--variants", "fp32,int8", "--fp16-attention", "mha"], 2, "--fp16-attention mha is for the fp16 variant, "
         "which --variants fp32,int8 leaves out; add fp16 to --variants, or drop --fp16-attention"),
        (["--data", str(data), "--label-column", "gold"], 3, f"column 'gold' not found in {data}"),
    ):
        result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path / "o"),
                                           "-q", *extra])
        assert result.exit_code == code and message in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parity.csv"]


def test_an_opset_newer_than_the_installed_onnx_checks_is_refused_before_any_work(tiny_checkpoint, tmp_path,
                                                                                monkeypatch):
    """onnx 1.16 (the `train` extra's oldest) knows opsets up to 21, and its checker refused torch 2.13's opset-23
    graph after the whole export: "the exported graph fails onnx.checker (Your model ir_version 11 is higher than the
    checker's (10).)", exit 4, naming a staging file. Here onnx's limit is lowered to 1.16's."""
    import onnx
    import torch

    opset = min(torch.onnx._constants.ONNX_MAX_OPSET, 23)
    monkeypatch.setattr(onnx.defs, "onnx_opset_version", lambda: opset - 2)
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path / "o"),
                                       "--opset", str(opset)])
    assert result.exit_code == 2 and result.output == (
        f"error: --opset {opset} is newer than onnx {onnx.__version__} can check (at most {opset - 2}): use --opset "
        f"{opset - 2} or older, or upgrade onnx\n"), result.output
    assert list(tmp_path.iterdir()) == []


def test_each_command_given_the_directory_of_another_step_says_which_step_it_needs(tiny_encoder, tiny_export,
                                                                                  tmp_path):
    """export --checkpoint <pretrained encoder>, train --model <export>: the slips between the three steps."""
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_encoder), "-o", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 4 and "is a pretrained encoder, not a scorer checkpoint; train it first" in result.output
    result = CliRunner().invoke(main, ["train", "--model", str(tiny_export), "-o", str(tmp_path / "c"), "-q"])
    assert result.exit_code == 4 and "is a `scorer export` directory (ONNX graphs)" in result.output
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_export), "-o", str(tmp_path / "o"), "-q"])
    exported_from = json.loads((tiny_export / "manifest.json").read_text())["checkpoint"]
    assert result.exit_code == 4 and result.output == f"error: {tiny_export} is a `scorer export` directory (ONNX " \
        f"graphs), not a PyTorch checkpoint; pass the checkpoint it was exported from, {exported_from}\n"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_export / "manifest.json"), "-o",
                                       str(tmp_path / "o"), "-q"])
    assert result.exit_code == 4 and "manifest.json is a file, not a checkpoint directory" in result.output
    assert list(tmp_path.iterdir()) == []


def test_tensorrt_asked_for_where_it_is_missing_is_refused_before_any_output(tiny_checkpoint, tmp_path):
    from export import tensorrt

    if tensorrt.available():
        pytest.skip("TensorRT is here (tests/test_gpu.py builds the engine)")
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path / "o"),
                                       "--tensorrt", "-q"])
    assert result.exit_code == 6 and "--tensorrt: ONNX Runtime's TensorRT provider" in result.output
    assert list(tmp_path.iterdir()) == []


def test_parity_leaves_out_rows_without_text_and_keeps_the_labels_of_the_others(tiny_checkpoint, tmp_path):
    """Blank rows, and rows of zero-width or control characters only (no token: what `scorer run` leaves unscored),
    are not parity rows, so parity's accuracy is that of the rows a run scores."""
    data = tmp_path / "parity.csv"
    data.write_text("sentence,label\n" + "".join(f"sentence {i} is here,{i % 2}\n" if i % 3 else f",{i % 2}\n"
                                                   for i in range(30))
                    + "".join(f"{text},{label}\n" for text, label in (("\u200b", 1), ("\ufeff\u200d", 0), ("\x07", 1))),
                    encoding="utf-8")
    printed, fp32, run = fp32_parity_and_run_evaluation(tiny_checkpoint, data, tmp_path / "o")
    assert "10 row(s) of" in printed and "on 20 rows" in printed
    assert f"parity: 3 row(s) of {data} without a token the tokenizer reads left out" in printed
    assert run["rows"] == 20 and fp32["accuracy"] == pytest.approx(run["accuracy"])


def test_parity_and_calibration_data_may_be_a_directory_or_glob_of_files(tiny_checkpoint, tmp_path, monkeypatch):
    """--data and --calibration name a file, or files in parts as `scorer run` and `scorer train` read them: parity on
    the parts is parity on the parts joined; a label column named by the user that one part lacks is refused."""
    import functools

    import export.pipeline
    from export.quantize import Quantiser

    # Every int8 graph kept however fast it ran: whether the tiny model's int8 beat fp32 by 1.2x is timing noise,
    # which chose the int8 graph for one export and the fp32 graph for the next on a loaded CI machine; with it kept,
    # the three exports' int8 graphs show the calibration parts read as the file joined
    monkeypatch.setattr(export.pipeline, "Quantiser", functools.partial(Quantiser, min_speedup=0.0))
    rows = [f"sentence {i} is here,{i % 2}\n" for i in range(40)]
    (tmp_path / "joined.csv").write_text("sentence,label\n" + "".join(rows))
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "a.csv").write_text("sentence,label\n" + "".join(rows[:25]))
    (parts / "b.csv").write_text("sentence,label\n" + "".join(rows[25:]))
    runner, reports = CliRunner(), {}
    for name, data in (("joined", tmp_path / "joined.csv"), ("parts", parts), ("glob", f"{parts}/*.csv")):
        result = runner.invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path / f"o-{name}"),
                                      "--data", str(data), "--calibration", str(data), "--variants", "fp32,int8",
                                      "--min-agreement", "0.9", "-q"])
        assert result.exit_code == 0, result.output
        reports[name] = json.loads((tmp_path / f"o-{name}" / "parity.json").read_text())["variants"]
    assert reports["parts"] == reports["joined"] == reports["glob"]
    assert load_manifest(tmp_path / "o-parts").extra["int8"]["quantized"] > 0  # (an int8 graph, not fp32's copy)
    assert reports["parts"][0]["rows"] == 40 and reports["parts"][0]["accuracy"] is not None
    (parts / "b.csv").write_text("sentence\n" + "".join(row.split(",")[0] + "\n" for row in rows[25:]))
    result = runner.invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path / "c"), "--data",
                                  str(parts), "--label-column", "label", "--variants", "fp32", "-q"])
    assert result.exit_code == 3 and f"column 'label' not found in {parts / 'b.csv'}" in result.output, result.output
    assert not (tmp_path / "c").exists()


def test_parity_on_too_few_rows_for_the_gate_to_judge_is_warned_of_saying_what_to_pass(tiny_checkpoint, tmp_path):
    """20 parity rows: one flipped label is 5% of them, past what --min-agreement (99.5%) allows, and none proves
    little; the gate passed or failed on that without a word."""
    data = tmp_path / "parity.csv"
    data.write_text("sentence,label\n" + "".join(f"sentence {i} is here,{i % 2}\n" for i in range(20)))
    runner = CliRunner()
    common = ["export", "--checkpoint", str(tiny_checkpoint), "--variants", "fp32"]
    result = runner.invoke(main, [*common, "-o", str(tmp_path / "a"), "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert f"parity on 20 row(s) of {data}: too few to judge a label agreement of 99.5% (--min-agreement); one " \
        "flipped label is 5.0% of them, and none proves little; pass --data with 200 or more rows" in result.output
    result = runner.invoke(main, [*common, "-o", str(tmp_path / "b"), "--max-rows", "50", "--min-agreement", "0.9"])
    assert result.exit_code == 0 and "too few" not in result.output, result.output  # (10 rows suffice at 90%)
    result = runner.invoke(main, [*common, "-o", str(tmp_path / "c"), "--max-rows", "50"])
    assert result.exit_code == 0 and "too few to judge" in result.output and "pass --max-rows 200 or more" \
        in result.output, result.output


def test_the_self_check_batch_stays_small_however_long_the_rows(tiny_export, tmp_path):
    from scorer.inference import selfcheck
    from scorer.text.tokens import Encoded

    lengths = np.linspace(5, 128, 40).astype(np.int64)  # up to the tiny model's position limit
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.random.default_rng(0).integers(1000, 2000, offsets[-1])
    entry = selfcheck.record(tmp_path, {"fp32": tiny_export / "model.onnx"}, Encoded(ids, offsets, lengths > 100),
                             ["input_ids", "attention_mask"])
    with np.load(tmp_path / entry["file"]) as saved:
        rows, width = saved["input_ids"].shape
        assert 2 <= rows == entry["rows"] < 32 and rows * width <= selfcheck.TOKENS and "int8" not in saved
        assert len(set(saved["attention_mask"].sum(axis=1))) == rows  # each row a different length


def test_gate_judges_agreement_and_accuracy_against_pytorch():
    from export.parity import _judge
    from scorer.config import ExportConfig

    n = 1000
    targets = np.arange(n) % 2
    # PyTorch: all right, each row's two logits 0.08 apart (past the near-tie margin, 0.05)
    reference = 0.08 * np.stack([targets == 0, targets == 1], axis=1).astype(np.float32)
    batches = parity_batches(n, 8)
    by_batch = [reference[b.rows] for b in batches]
    config = ExportConfig()
    torch_row = _judge("pytorch", "cpu", by_batch, by_batch, batches, targets, [0, 1], config, None)
    assert torch_row.accuracy == 1.0
    flipped = reference.copy()
    flipped[-4:] = reference[-4:, ::-1]  # 4 of 1000 rows flip: agreement 99.6%, accuracy drops 0.4 points
    # (a flip here moves a probability by 0.04, within what `run --check` allows int8)
    ok = _judge("int8", "cpu", by_batch, [flipped[b.rows] for b in batches], batches, targets, [0, 1], config,
                torch_row)
    assert ok.passed and ok.agreement < 1.0
    flipped[-8:] = reference[-8:, ::-1]  # 8 rows: agreement 99.2% (allowed below) but accuracy 0.8 points lower
    lenient = ExportConfig(min_agreement=0.99)
    bad = _judge("int8", "cpu", by_batch, [flipped[b.rows] for b in batches], batches, targets, [0, 1], lenient,
                 torch_row)
    assert bad.agreement >= 0.99 and not bad.passed and "accuracy within 0.5 points" in bad.requirement


def test_with_a_threshold_the_gate_judges_the_labels_at_it_and_near_ties_around_it():
    """export --threshold 0.8: a row whose probability moves from 0.82 to 0.78 keeps its most probable label but
    changes its label at the threshold (a flip); one that moves across it from within the tie margin is a
    near-tie."""
    from export.parity import _judge
    from scorer.config import ExportConfig

    def logits_of(p: np.ndarray) -> np.ndarray:  # (label 1's probability p, label 0's logit 0)
        return np.stack([np.zeros_like(p), np.log(p / (1 - p))], axis=1).astype(np.float32)

    n = 200
    reference_p = np.full(n, 0.82)
    reference_p[::2] = 0.3
    targets = (reference_p >= 0.8).astype(np.int64)
    batches = parity_batches(n, 8)
    config = ExportConfig(threshold=0.8, min_agreement=0.99)
    reference = logits_of(reference_p)
    by_batch = [reference[b.rows] for b in batches]
    torch_row = _judge("pytorch", "cpu", by_batch, by_batch, batches, targets, [0, 1], config, None)
    assert torch_row.accuracy == 1.0
    moved_p = reference_p.copy()
    moved_p[[1, 3, 5]] = 0.78  # 0.82 -> 0.78: logit lead 1.52 -> 1.27, 0.13 from the threshold's 1.39 (decisive)
    moved = logits_of(moved_p)
    row = _judge("int8", "cpu", by_batch, [moved[b.rows] for b in batches], batches, targets, [0, 1], config,
                 torch_row)
    plain = _judge("int8", "cpu", by_batch, [moved[b.rows] for b in batches], batches, targets, [0, 1],
                   ExportConfig(min_agreement=0.99), torch_row)
    assert plain.agreement == 1.0 and row.agreement < 1.0 and row.near_tie_flips == 0
    assert not row.passed and "from the threshold 0.8" in row.requirement and row.accuracy < 1.0
    near = reference_p.copy()
    near[[1, 3, 5]] = 0.805  # (logit lead 1.42, within 0.05 of 1.39) moved to 0.795: flips at a near-tie
    near_reference = logits_of(near)
    near_moved = near.copy()
    near_moved[[1, 3, 5]] = 0.795
    tied = _judge("int8", "cpu", [near_reference[b.rows] for b in batches],
                  [logits_of(near_moved)[b.rows] for b in batches], batches, None, [0, 1], config, torch_row)
    assert tied.near_tie_flips > 0 and tied.passed, tied


@pytest.mark.parametrize(("moved", "variant", "passes"), [(0.04, "int8", True), (0.06, "int8", False),
                                                          (0.015, "fp16", True), (0.03, "fp16", False)])
def test_the_gate_holds_a_variant_to_the_probabilities_run_check_allows_it(moved, variant, passes):
    """Every label kept, one row's probability moved: a variant passes only within `scorer run --check`'s tolerance
    for it (int8 0.05, fp16 0.02), so that an export which passes does not fail a check of the same rows."""
    from export.parity import _judge
    from scorer.config import ExportConfig
    from scorer.scoring.check import TOLERANCE

    n = 200
    targets = np.zeros(n, dtype=np.int64)
    reference = np.zeros((n, 2), dtype=np.float32)  # PyTorch: label 0 on every row, its logit 2 above the other
    reference[:, 0] = 2.0
    logits = reference.copy()
    p = 1 / (1 + np.exp(-2.0))  # label 0's probability, moved down by `moved` on the last row
    logits[-1, 0] = float(np.log((p - moved) / (1 - p + moved)))
    batches = parity_batches(n, 8)
    config = ExportConfig()
    torch_row = _judge("pytorch", "cpu", [reference[b.rows] for b in batches], [reference[b.rows] for b in batches],
                       batches, targets, [0, 1], config, None)
    row = _judge(variant, "cpu", [reference[b.rows] for b in batches], [logits[b.rows] for b in batches], batches,
                 targets, [0, 1], config, torch_row)
    assert row.agreement == 1.0 and row.max_score_diff == pytest.approx(moved, abs=1e-5)
    assert row.passed == passes and TOLERANCE["int8"] == 0.05 and TOLERANCE["fp16"] == 0.02
    assert f"every probability within {TOLERANCE[variant]:g} of PyTorch's" in row.requirement


@pytest.mark.filterwarnings("error::RuntimeWarning")  # (numpy's "invalid value" on stderr, in an export's output)
@pytest.mark.parametrize("threshold", [None, 0.7])
def test_gate_fails_a_variant_with_non_finite_logits_even_where_their_argmax_would_agree(threshold):
    import json

    from export.parity import _judge, report, table
    from scorer.config import ExportConfig

    n = 400
    targets = np.zeros(n, dtype=np.int64)  # every row label 0: a NaN row's argmax (0) "agrees"
    reference = np.stack([np.ones(n), np.zeros(n)], axis=1).astype(np.float32)
    batches = parity_batches(n, 8)
    by_batch = [reference[b.rows] for b in batches]
    config = ExportConfig(threshold=threshold)
    torch_row = _judge("pytorch", "cpu", by_batch, by_batch, batches, targets, [0, 1], config, None)
    broken = reference.copy()
    broken[5] = np.nan  # one row in 400 (0.25%): within --min-agreement were it counted as agreeing
    broken[7] = [np.inf, -np.inf]
    for name in ("fp16", "int8", "fp32"):
        row = _judge(name, "cpu", by_batch, [broken[b.rows] for b in batches], batches, targets, [0, 1], config,
                     torch_row)
        assert not row.passed and row.non_finite >= 2 and "finite logits on every row" in row.requirement, row
        assert row.max_abs_diff == 0.0 and row.agreement < 1.0  # the finite rows agree exactly
        assert "FAIL (finite logits on every row" in table([row])
        json.loads(json.dumps(report([row], "x")), parse_constant=lambda c: pytest.fail(f"{c} in parity.json"))


def test_gate_forgives_flips_only_at_near_ties():
    from export.parity import _judge, table
    from scorer.config import ExportConfig

    n = 200
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(n, 2)).astype(np.float32)
    reference[:10, 1] = reference[:10, 0] + 4e-5  # ten rows PyTorch can hardly decide
    reference[10:, 1] = reference[10:, 0] + np.where(np.arange(10, n) % 2, 1.0, -1.0)  # the rest: margin 1
    batches = parity_batches(n, 8)
    by_batch = [reference[b.rows] for b in batches]
    config = ExportConfig()
    torch_row = _judge("pytorch", "cpu", by_batch, by_batch, batches, None, [0, 1], config, None)
    tied = reference.copy()
    tied[:10, 1] -= 8e-5  # rounding within fp32's tolerance flips every near-tie: 90% of the rows agree
    for name in ("fp32", "fp16"):
        ok = _judge(name, "cpu", by_batch, [tied[b.rows] for b in batches], batches, None, [0, 1], config, torch_row)
        assert ok.passed and ok.agreement < 0.96 and ok.near_tie_flips > 0, ok
        assert "flipped at near-ties" in table([ok])
    strict = ExportConfig(tie_margin=0)
    assert not _judge("fp16", "cpu", by_batch, [tied[b.rows] for b in batches], batches, None, [0, 1], strict,
                      torch_row).passed
    decisive = reference.copy()
    decisive[10:14] = decisive[10:14, ::-1]  # four decided rows flip: 97.9% of the decided rows agree
    bad = _judge("fp16", "cpu", by_batch, [decisive[b.rows] for b in batches], batches, None, [0, 1], config,
                 torch_row)
    assert not bad.passed and bad.near_tie_flips == 0 and "over 0.05 apart" in bad.requirement


@pytest.mark.parametrize("pooling", ["cls", "mix", "max", "mean-max"])
def test_every_pooling_survives_export(tiny_encoder, tmp_path, pooling):
    from export.pipeline import export_model
    from scorer.config import ExportConfig, TrainConfig
    from scorer.training.train import train

    checkpoint = tmp_path / "checkpoint"
    train(TrainConfig(model=tiny_encoder, output=checkpoint, epochs=1, max_length=48, learning_rate=1e-3,
                      pooling=pooling), progress=False)
    model = SentenceClassifier.load(checkpoint)
    assert model.head_config.pooling == pooling
    if pooling == "mix":  # the layer weights were trained, saved and loaded with the head
        assert model.classifier.layer_weights.shape == (3,)
        assert model.classifier.layer_weights.abs().max() > 0
    export_model(ExportConfig(checkpoint=checkpoint, output=tmp_path / "onnx"))
    report = json.loads((tmp_path / "onnx" / "parity.json").read_text())
    fp32 = next(v for v in report["variants"] if v["variant"] == "fp32")
    assert report["passed"] and fp32["agreement"] == 1.0 and fp32["max_abs_diff"] < 1e-4


def test_export_without_data_reads_the_packaged_examples_by_their_own_columns(tiny_checkpoint, tmp_path):
    """A checkpoint trained on other columns (and data no longer there) still exports with the defaults."""
    from export.pipeline import export_model
    from scorer.config import ExportConfig

    checkpoint = Path(shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint"))
    settings = json.loads((checkpoint / "train_config.json").read_text())
    settings.update(text_column="body", label_column="verdict", data=str(tmp_path / "gone.csv"))
    (checkpoint / "train_config.json").write_text(json.dumps(settings))
    result = export_model(ExportConfig(checkpoint=checkpoint, output=tmp_path / "onnx", variants=("fp32", "int8")))
    assert result.passed and result.source.endswith("train.csv")
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["text_column"] == "body"  # what `scorer run` reads by default is still the trained column


def _labelled_csv(path: Path, rows: int, verb: str = "saw") -> Path:
    words = ["the cat", "a dog", "my aunt", "our team", "the river"]
    path.write_text("sentence,label\n" + "".join(f"{words[i % 5]} {verb} sentence number {i},{i % 2}\n"
                                                 for i in range(rows)))
    return path


@pytest.mark.parametrize("split", [True, False])
def test_export_without_data_checks_parity_on_the_checkpoints_validation_rows(tiny_checkpoint, tmp_path, split):
    """Trained with a held-out split (or a --val-data file) of at least MIN_HELD_OUT rows: parity runs on those rows
    with their labels, and int8 calibrates on training rows only, none of them a parity row."""
    from export.pipeline import export_model
    from export.rows import MIN_HELD_OUT, calibration_texts, parity_rows, recorded_data
    from scorer.config import ExportConfig
    from scorer.pytorch.model import HeadConfig

    checkpoint = Path(shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint"))
    settings = json.loads((checkpoint / "train_config.json").read_text())
    data = _labelled_csv(tmp_path / "data.csv", 2_200)
    val = _labelled_csv(tmp_path / "val.csv", 250, verb="read") if not split else None
    settings.update(data=str(data), val_data=str(val) if val else None, seed=7)
    (checkpoint / "train_config.json").write_text(json.dumps(settings))

    config = ExportConfig(checkpoint=checkpoint, output=tmp_path / "onnx", variants=("fp32", "int8"))
    head = HeadConfig(**json.loads((checkpoint / "scorer_head.json").read_text()))
    recorded = recorded_data(settings, head)
    checked = parity_rows(config, head, recorded, "sentence", "label")
    expected = ("10% of each label of data.csv, seed 7" if split else str(val)) + " (the checkpoint's validation data)"
    assert checked.source == expected and len(checked.texts) == (220 if split else 250) >= MIN_HELD_OUT
    assert checked.targets is not None and set(checked.targets.tolist()) == {0, 1}
    calibration = calibration_texts(config, settings, recorded, "sentence")
    assert len(calibration) == config.calibration_rows and not set(calibration) & set(checked.texts)

    result = export_model(config)
    report = json.loads((tmp_path / "onnx" / "parity.json").read_text())
    assert result.passed and result.source == expected and report["source"] == expected
    fp32 = next(v for v in report["variants"] if v["variant"] == "fp32")
    assert fp32["rows"] >= len(checked.texts) and fp32["accuracy"] is not None


def test_export_without_data_keeps_the_packaged_examples_for_a_small_or_changed_validation_set(tiny_checkpoint,
                                                                                              tmp_path):
    from export.rows import parity_rows, recorded_data
    from scorer.config import ExportConfig
    from scorer.pytorch.model import HeadConfig

    head = HeadConfig(**json.loads((tiny_checkpoint / "scorer_head.json").read_text()))
    config = ExportConfig(checkpoint=tiny_checkpoint)
    small = {"data": str(_labelled_csv(tmp_path / "small.csv", 300)), "seed": 1}
    assert parity_rows(config, head, recorded_data(small, head), "sentence", "label").source.endswith("train.csv")
    relabelled = tmp_path / "relabelled.csv"
    relabelled.write_text(_labelled_csv(tmp_path / "x.csv", 3_000).read_text().replace(",1\n", ",yes\n"))
    assert recorded_data({"data": str(relabelled)}, head) is None  # its labels are no longer the model's
    assert recorded_data({"data": str(tmp_path / "x.csv"), "val_data": str(tmp_path / "gone.csv")}, head) is None


def test_reading_the_checkpoints_data_again_for_parity_repeats_none_of_trainings_warnings(tiny_checkpoint, tmp_path,
                                                                                          caplog):
    """Export reads the training data again to find the validation rows; it repeated training's warnings about that
    data (a sentence with two labels, validation sentences seen in training), which say nothing about parity."""
    import logging

    from export.rows import recorded_data
    from scorer.config import TrainConfig
    from scorer.pytorch.model import HeadConfig
    from scorer.training.dataset import load_training_data

    data = _labelled_csv(tmp_path / "data.csv", 2_200)
    data.write_text(data.read_text() + "the cat saw sentence number 0,1\n")  # (labelled 0 above as well)
    head = HeadConfig(**json.loads((tiny_checkpoint / "scorer_head.json").read_text()))
    with caplog.at_level(logging.WARNING, logger="scorer"):
        load_training_data(TrainConfig(data=data, val_data=data))
    said = [record.getMessage() for record in caplog.records]
    assert any("more than one label" in s for s in said) and any("also occur in" in s for s in said), said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scorer"):
        recorded = recorded_data({"data": str(data), "val_data": str(data)}, head)
    assert recorded is not None and len(recorded.val_texts) == 2_201
    assert caplog.records == []
