"""Models over ONNX's 2 GB for one file (XLM-R large, say): their tensors lie beside the graph, which export gathers
into one file and the manifest hashes; their fp16 graph is built with the word embeddings held out of the optimiser,
their int8 graph from a one-file copy with the word embeddings in fp16. The tiny model stands in: its graph is
written as torch writes a large one, and the size limit is lowered."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import onnx
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

import export.pipeline
from export.onnx_graph import gather_external_data
from scorer.cli import main

TEXTS = ["The dog barked.", "Dog the barked at.", "A much longer sentence " * 10]


def _as_torch_writes_a_large_graph(real_export):
    """export_onnx, then the graph's tensors moved to one file each beside it, as torch writes a graph over 2 GB."""

    def exported(model, path: Path, opset: int) -> None:
        real_export(model, path, opset)
        onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True, all_tensors_to_one_file=False,
                        size_threshold=0)
        assert len(list(path.parent.iterdir())) > 10  # (one file per tensor)
        gather_external_data(path)

    return exported


def _umask_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _scores(export_dir: Path, tmp_path: Path, name: str, variant: str = "fp32") -> tuple[int, list]:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": TEXTS}), source)
    output = tmp_path / f"{name}.parquet"
    result = CliRunner().invoke(main, ["run", str(source), "--model", str(export_dir), "--variant", variant,
                                       "-o", str(output), "--overwrite", "-q"])
    return result.exit_code, pq.read_table(output).column("score").to_pylist() if output.exists() else result.output


def test_a_graph_whose_tensors_lie_beside_it_is_gathered_hashed_and_checked(tiny_checkpoint, tiny_export, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr(export.pipeline, "export_onnx", _as_torch_writes_a_large_graph(export.pipeline.export_onnx))
    out = tmp_path / "onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(out),
                                       "--variants", "fp32", "-q"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "model.onnx.data"}
    assert not [p for p in out.iterdir() if p.name.startswith(("onnx__", "encoder.", "classifier."))]  # gathered
    fp32 = json.loads((out / "manifest.json").read_text())["variants"]["fp32"]
    assert list(fp32["data"]) == ["model.onnx.data"]
    assert stat.S_IMODE((out / "model.onnx.data").stat().st_mode) == _umask_mode()  # (onnx writes it 0600)
    code, scores = _scores(out, tmp_path, "beside")
    assert code == 0 and scores == _scores(tiny_export, tmp_path, "whole")[1]  # the same graph, stored otherwise
    # Weights changed after export (another fine-tuning over the same graph file, a damaged copy) are caught.
    data = out / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\1")
    code, said = _scores(out, tmp_path, "tampered")
    assert code == 4 and "model.onnx.data does not match the sha256 in manifest.json" in said


def test_a_model_over_2_gb_exports_fp16_with_its_word_table_held_out_and_int8_with_it_in_fp16(
        tiny_checkpoint, tiny_export, tmp_path, monkeypatch):
    """Its fp16 graph is built with the word embeddings held out of ONNX Runtime's optimiser (which could not
    serialise the whole graph) and put back after: the same graph as the tiny model's ordinary fp16 build, in one
    file. Its int8 graph is quantised from a one-file copy whose word table is stored in fp16."""
    import export.quantize

    monkeypatch.setattr(export.pipeline, "LARGE_WEIGHTS", 1000)
    # (int8 is kept only where it runs faster than fp32, which the tiny model's need not: here it is said to)
    monkeypatch.setattr(export.quantize, "measure_speedup", lambda *args: 2.0)
    monkeypatch.setattr(export.pipeline, "export_onnx", _as_torch_writes_a_large_graph(export.pipeline.export_onnx))
    out = tmp_path / "onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(out)])
    assert result.exit_code == 0, result.output
    variants = json.loads((out / "manifest.json").read_text())["variants"]
    assert list(variants) == ["fp32", "fp16", "int8"]
    # each built as one graph, then its weights moved beside it as the fp32 graph's lie (ORT maps them: fast to open)
    assert [list(variants[name]["data"]) for name in ("fp16", "int8")] == [["model.fp16.onnx.data"],
                                                                        ["model.int8.onnx.data"]]
    assert all(stat.S_IMODE((out / f"model.{name}.onnx.data").stat().st_mode) == _umask_mode()
               for name in ("fp16", "int8"))
    fp16 = onnx.load(str(out / "model.fp16.onnx"))
    word = next(t for t in fp16.graph.initializer if t.name.endswith("word_embeddings.weight"))
    assert list(word.dims) == [30522, 32] and word.data_type == onnx.TensorProto.FLOAT16  # put back, as fp16
    code, scores = _scores(out, tmp_path, "large", "fp16")
    assert code == 0 and scores == _scores(tiny_export, tmp_path, "ordinary", "fp16")[1]
    int8 = onnx.load(str(out / "model.int8.onnx"))
    word = next(t for t in int8.graph.initializer if "word_embeddings" in t.name)
    assert list(word.dims) == [30522, 32] and word.data_type == onnx.TensorProto.FLOAT16
    assert "MatMulIntegerToFloat" in {node.op_type for node in int8.graph.node}  # quantised, not the fp32 copy
    code, scores = _scores(out, tmp_path, "large-int8", "int8")
    fp32 = _scores(out, tmp_path, "large-fp32")[1]
    assert code == 0 and max(abs(a - b) for a, b in zip(scores, fp32, strict=True)) < 0.05  # run's int8 tolerance


def test_an_int8_graph_of_a_model_over_2_gb_that_is_the_fp32_one_has_its_weights_file_hashed(
        tiny_checkpoint, tmp_path, monkeypatch):
    """Where int8 does not pay, the int8 file is the fp32 graph, whose weights lie in model.onnx.data: the manifest
    hashes that file for the int8 variant too, so weights changed after export are caught whichever variant runs."""
    import export.quantize

    monkeypatch.setattr(export.pipeline, "LARGE_WEIGHTS", 1000)
    monkeypatch.setattr(export.pipeline, "export_onnx", _as_torch_writes_a_large_graph(export.pipeline.export_onnx))
    monkeypatch.setattr(export.quantize, "measure_speedup", lambda *args: 0.5)  # int8 slower than fp32 here
    out = tmp_path / "onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(out),
                                       "--variants", "fp32,int8"])
    assert result.exit_code == 0, result.output
    variants = json.loads((out / "manifest.json").read_text())["variants"]
    assert list(variants["int8"]["data"]) == ["model.onnx.data"]
    assert variants["int8"]["data"] == variants["fp32"]["data"]
    code, scores = _scores(out, tmp_path, "int8", "int8")
    assert code == 0 and scores == _scores(out, tmp_path, "fp32")[1]
    data = out / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\1")
    code, said = _scores(out, tmp_path, "tampered", "int8")
    assert code == 4 and "model.onnx.data does not match the sha256 in manifest.json" in said


def test_without_the_memory_to_build_them_the_fp16_and_int8_graphs_are_built_only_when_asked_for(
        tiny_checkpoint, tmp_path, monkeypatch):
    """Their build peaks at about 18 times the weights (a process killed for memory says nothing): without that
    much available, the default builds fp32 alone, and says how to ask for the others."""
    monkeypatch.setattr(export.pipeline, "usable_memory", lambda: 1000)  # (the real reading: tests/test_machine.py)
    runner = CliRunner()
    result = runner.invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    assert "building the fp16 and int8 graphs of" in result.output and "0.0 GiB is available here" in result.output
    assert "ask for them with --variants fp32,fp16,int8" in result.output
    assert list(json.loads((tmp_path / "onnx" / "manifest.json").read_text())["variants"]) == ["fp32"]
    result = runner.invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path / "asked"),
                                  "--variants", "fp32,int8"])
    assert result.exit_code == 0 and "building them as --variants asks" in result.output
    assert list(json.loads((tmp_path / "asked" / "manifest.json").read_text())["variants"]) == ["fp32", "int8"]
