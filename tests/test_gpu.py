"""GPU paths: CUDA scoring, GPU training, TensorRT. Each test skips itself where its hardware is missing."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scorer.cli import main
from scorer.machine import gpu_identity
from scorer.manifest import load_manifest

TEXTS = ["The cat sat on the mat.", "Cat the mat on sat.", "A much longer sentence about nothing at all " * 3,
         "Short one."] * 50


def run(*args):
    result = CliRunner().invoke(main, ["run", *map(str, args), "--quiet"])
    assert result.exit_code == 0, result.output
    return result


def scores(path):
    return pq.read_table(path).column("score").to_numpy(zero_copy_only=False)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": TEXTS}), path)
    return path


@pytest.mark.gpu
def test_cuda_scores_match_cpu_and_auto_picks_cuda(tiny_export, source, tmp_path):
    run(source, "--model", tiny_export, "--provider", "cpu", "--variant", "fp32", "-o", tmp_path / "cpu.parquet")
    for variant, tolerance in (("fp32", 5e-3), ("fp16", 2e-2)):
        for binding in ("--io-binding", "--no-io-binding"):
            out = tmp_path / f"cuda-{variant}{binding}.parquet"
            run(source, "--model", tiny_export, "--provider", "cuda", "--variant", variant, "-o", out, "--check", "50",
                binding)
            np.testing.assert_allclose(scores(out), scores(tmp_path / "cpu.parquet"), atol=tolerance)
            summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
            assert summary["provider"] == "cuda" and summary["inputs"][0]["check"]["passed"]
            assert summary["io_binding"] == (binding == "--io-binding")
    run(source, "--model", tiny_export, "-o", tmp_path / "auto.parquet")
    summary = json.loads((tmp_path / "auto.parquet.summary.json").read_text())
    measured = load_manifest(tiny_export).extra["fp16"]["io_binding"]  # the run mode export timed faster
    assert summary["provider"] == "cuda" and summary["io_binding"] == measured and summary["variant"] == "fp16"
    # ... with the attention kernels it timed fastest (cuDNN's asked for, or ORT's own choice)
    assert summary["provider_options"] == (load_manifest(tiny_export).extra["fp16"]["cuda_options"] or {})
    assert summary["infer_threads"] == 2  # the CUDA default


@pytest.mark.gpu
def test_small_inputs_scored_together_on_cuda_match_cpu(tiny_export, tmp_path):
    """Batches in flight on CUDA's two inference threads, shared by many small inputs (scorer.scoring.bundle)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(40):
        pq.write_table(pa.table({"sentence": TEXTS[i : i + 1 + i % 7]}), inbox / f"f{i:02d}.parquet")
    run(inbox, "--model", tiny_export, "--provider", "cpu", "--variant", "fp32", "-o", tmp_path / "cpu")
    run(inbox, "--model", tiny_export, "--provider", "cuda", "--variant", "fp16", "-o", tmp_path / "cuda")
    summary = json.loads((tmp_path / "cuda" / "scorer-summary.json").read_text())
    assert summary["provider"] == "cuda" and {u["bundled_with"] for u in summary["inputs"]} == {39}
    for i in range(40):
        np.testing.assert_allclose(scores(tmp_path / "cuda" / f"f{i:02d}.parquet"),
                                   scores(tmp_path / "cpu" / f"f{i:02d}.parquet"), atol=2e-2)


@pytest.mark.gpu
def test_rows_the_fp16_graph_gives_nan_are_scored_by_the_fp32_graph_on_cuda(export_copy, source, tmp_path):
    from tests.conftest import poison

    run(source, "--model", export_copy, "--provider", "cuda", "--variant", "fp32", "-o", tmp_path / "fp32.parquet")
    poison(export_copy, "fp16", "mat")  # "The cat sat on the mat." and "Cat the mat on sat."
    result = run(source, "--model", export_copy, "--provider", "cuda", "--variant", "fp16", "-o",
                 tmp_path / "o.parquet")
    assert "100 row(s) got NaN or infinite logits from the fp16 graph on cuda" in result.output
    out, fp32 = pq.read_table(tmp_path / "o.parquet").to_pydict(), pq.read_table(tmp_path / "fp32.parquet").to_pydict()
    hit = [i for i, text in enumerate(TEXTS) if " mat" in text]
    assert [out["label"][i] for i in hit] == [fp32["label"][i] for i in hit]
    np.testing.assert_allclose([out["score"][i] for i in hit], [fp32["score"][i] for i in hit], atol=5e-3)


@pytest.mark.gpu
def test_export_on_cuda_times_every_fp16_attention_both_ways_and_keeps_the_fastest(tiny_export):
    from export.fp16_choice import KERNELS

    fp16 = load_manifest(tiny_export).extra["fp16"]
    # fused and mha with ORT's kernels, cuDNN's, memory-efficient attention's and with the padding removed; unfused;
    # each plain and IO-bound; less what did not run
    candidates = {f"{attention}{kernels}" for attention in ("fused", "mha")
                  for kernels in ("", " cudnn", " efficient", " packed")}
    candidates = (candidates | {"unfused"}) - set(fp16["failed"] or ())
    assert fp16["measured_on"] == "cuda" and {"fused", "unfused"} <= candidates
    # and on which GPU, as the driver lists it (scorer run compares its own with it)
    assert fp16["gpu"] == gpu_identity() and fp16["gpu"].startswith("NVIDIA ")
    assert set(fp16["seconds"]) == {name + mode for name in candidates for mode in ("", " io_binding")}
    fastest = min(fp16["seconds"], key=fp16["seconds"].get)
    assert fp16["attention"] == fastest.split()[0] and fp16["io_binding"] == fastest.endswith("io_binding")
    assert fp16["cuda_options"] == KERNELS[fp16["kernels"]].cuda_options
    assert fp16["kernels"] == next((k for k in ("cudnn", "efficient", "packed") if f" {k}" in fastest), "default")


@pytest.mark.gpu
def test_training_on_cuda_with_bf16(tiny_encoder, tmp_path):
    result = CliRunner().invoke(main, ["train", "--model", str(tiny_encoder), "--output", str(tmp_path / "c"),
                                       "--epochs", "1", "--device", "cuda", "--max-length", "32", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["device"] == "cuda"


@pytest.mark.gpu
@pytest.mark.parametrize("graphs", ["compiled", "captured"])
def test_cuda_graph_steps_train_the_same_model_as_eager_steps_on_cuda(tmp_path, graphs):
    from scorer.pytorch.model import SentenceClassifier
    from tests.conftest import build_tiny_encoder

    # No dropout, so graph replays must compute what eager steps do; 3 epochs replay each shape's graph many times,
    # which is where stale gradients or overwritten outputs would show.
    encoder = build_tiny_encoder(tmp_path / "no-dropout-bert", hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0)
    runs = {}
    for mode, extra in (("eager", ()), ("graphs", ("--cuda-graphs", graphs))):
        output = tmp_path / mode
        result = CliRunner().invoke(main, ["train", "--model", str(encoder), "--output", str(output), "--epochs", "3",
                                           "--max-length", "32", "--lr", "1e-3", "--dropout", "0", "--rtd-epochs",
                                           "0", "--precision", "fp32", "--device", "cuda", "--seed", "5", "--quiet",
                                           *extra])
        assert result.exit_code == 0, result.output
        assert json.loads((output / "train_config.json").read_text())["cuda_graphs"] == (graphs if extra else "off")
        runs[mode] = (json.loads((output / "metrics.json").read_text()), SentenceClassifier.load(output).state_dict())
    (eager, eager_weights), (graphed, graph_weights) = runs["eager"], runs["graphs"]
    assert [e["train_loss"] for e in graphed["epochs"]] == pytest.approx([e["train_loss"] for e in eager["epochs"]],
                                                                         rel=1e-3)
    for name, weight in eager_weights.items():
        assert np.allclose(graph_weights[name].numpy(), weight.numpy(), atol=1e-3), name


@pytest.mark.tensorrt
def test_tensorrt_engine_is_built_once_and_matches_cpu(tiny_checkpoint, source, tmp_path):
    export = tmp_path / "onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "--output", str(export),
                                       "--tensorrt", "--quiet"])
    assert result.exit_code == 0, result.output
    engines = sorted((export / "tensorrt-cache").iterdir())
    assert engines
    run(source, "--model", export, "--provider", "cpu", "--variant", "fp32", "-o", tmp_path / "cpu.parquet")
    run(source, "--model", export, "--provider", "tensorrt", "-o", tmp_path / "trt.parquet")
    np.testing.assert_allclose(scores(tmp_path / "trt.parquet"), scores(tmp_path / "cpu.parquet"), atol=2e-2)
    assert sorted((export / "tensorrt-cache").iterdir()) == engines


@pytest.mark.gpu
@pytest.mark.parametrize("kernels", ["default", "cudnn", "efficient", "packed"])
@pytest.mark.parametrize("attention", ["fused", "mha"])
def test_each_fp16_kernel_setting_scores_padded_rows_as_the_fp32_graph_on_cuda(tiny_export, tmp_path, attention,
                                                                              kernels):
    """Last in this file: a kernel that reads out of bounds would leave CUDA unusable for the tests after it (export
    itself tries these kernels in child processes first)."""
    import onnxruntime as ort

    from export.fp16_choice import KERNELS
    from scorer.inference.session import create_session
    from scorer.text.tokens import TextEncoder
    from tests.conftest import rewritten_fp16

    graph = rewritten_fp16(tiny_export, tmp_path, attention, kernels)[1]
    encoded = TextEncoder.from_dir(tiny_export, 48).encode(["Yes.", *TEXTS[:7]])
    ids, mask = encoded.pad(np.arange(len(encoded)), 48)  # every row padded, the first by 45 tokens
    fp32 = ort.InferenceSession(str(tiny_export / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids, "attention_mask": mask})[0]
    ids, mask = ids.astype(np.int32), mask.astype(np.int32)  # the fp16 graph's inputs
    session = create_session(graph, "cuda", KERNELS[kernels].cuda_options)
    logits = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    np.testing.assert_allclose(logits, fp32, atol=2e-2)
    width = int(encoded.lengths[1])
    alone = session.run(None, {"input_ids": ids[1:2, :width], "attention_mask": mask[1:2, :width]})[0]
    np.testing.assert_allclose(alone[0], logits[1], atol=2e-3)  # padding changes nothing


@pytest.mark.gpu
@pytest.mark.parametrize("graphs", ["off", "captured"])
@pytest.mark.parametrize(("every", "stop"), [(0.0, "fine-tuning epoch 1 of 3"),
                                             (1e-9, "step 3 of 8 of fine-tuning epoch 2 of 3")])
def test_a_stopped_run_on_cuda_resumes_to_the_model_of_a_run_never_stopped(tmp_path, monkeypatch, graphs, every,
                                                                           stop):
    """The state saved on CUDA (its generators, the fused optimizer's step counts on the device, an epoch's losses
    so far) resumes there, after an epoch or within one. No dropout: captured graphs warm each new shape up eagerly,
    which draws dropout masks an unstopped run does not."""
    from scorer.config import TrainConfig
    from scorer.pytorch.model import SentenceClassifier
    from scorer.training import resume
    from scorer.training.train import train
    from tests.conftest import build_tiny_encoder

    encoder = build_tiny_encoder(tmp_path / "no-dropout-bert", hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0)
    settings = dict(model=encoder, epochs=3, rtd_epochs=1, max_length=32, learning_rate=1e-3, dropout=0.0,
                    precision="fp32", device="cuda", cuda_graphs=graphs, save_state_every=0.0)
    unstopped = train(TrainConfig(output=tmp_path / "unstopped", **settings), progress=False)
    save = resume.RunState.save

    def stop_there(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if self.saved == stop:
            raise KeyboardInterrupt

    monkeypatch.setattr(resume.RunState, "save", stop_there)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(output=tmp_path / "resumed", **{**settings, "save_state_every": every}), progress=False)
    monkeypatch.undo()
    resumed = train(TrainConfig(output=tmp_path / "resumed", **settings), progress=False)
    assert [e.train_loss for e in resumed.epochs] == pytest.approx([e.train_loss for e in unstopped.epochs], rel=1e-3)
    weights = SentenceClassifier.load(tmp_path / "resumed").state_dict()
    for name, weight in SentenceClassifier.load(tmp_path / "unstopped").state_dict().items():
        assert np.allclose(weights[name].numpy(), weight.numpy(), atol=1e-3), name
