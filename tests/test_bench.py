"""The benchmarks a GPU session runs (bench/gpu_check.sh) still run: each here on the CPU, with the tiny random model
and a few hundred rows. Not timed (speed is measured by the scripts themselves, on the machine that matters): a GPU
session has 15 minutes of device time, and a script broken by a change elsewhere would waste them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.cola  # the benchmarks' workloads are CoLA's sentences


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    """One random tiny model and export for every script (built by the first, reused by the rest)."""
    return tmp_path_factory.mktemp("bench")


def bench(script: str, *args: str | Path) -> str:
    """Run bench/`script` as bench/gpu_check.sh does (the repository and bench/ on the path); its output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench")])}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def scoring(bench_dir) -> dict:
    out = bench_dir / "out" / "scoring-cola.json"
    bench("scoring.py", "--device", "cpu", "--random", "tiny", "--random-dir", bench_dir / "random",
          "--workloads", "cola", "--rows", "400", "--baseline-rows", "40",
          "--variants", "fp32,fp32:plain,fp32:infer_threads=1,fp32:window_rows=128:batch_overhead=1000000000",
          "--stages", "fp32", "--out", out)
    return json.loads(out.read_text())


def test_scoring_runs_the_baselines_and_scorer_on_the_same_sentences(scoring):
    cola = scoring["workloads"]["cola"]
    assert cola["texts"] == 400 and cola["baseline_texts"] == 40
    results = cola["results"]
    assert {"pytorch-notebook", "pytorch-sorted-b64"} <= set(results)
    runs = [name for name in results if name.startswith("scorer-run-")]
    assert len(runs) == 4
    for name in runs:  # the random model's labels are PyTorch fp32's, through the whole of `scorer run`
        assert results[name]["label_agreement_with_pytorch_fp32"] >= 0.995, name
        assert results[name]["sentences_per_s"] > 0
    stage = cola["stages"][0]
    assert stage["tokenise_sentences_per_s"] > 0 and stage["model_sentences_per_s"] > 0
    assert stage["padded_over_real_tokens"] >= 1


def test_model_stage_measures_every_setting_that_can_run_on_a_cpu(scoring, bench_dir):
    out = bench_dir / "out" / "model-stage.json"
    bench("model_stage.py", "--device", "cpu", "--random", "tiny", "--random-dir", bench_dir / "random",
          "--rows", "300", "--fixed-shapes", "8x16", "--out", out)
    stage = json.loads(out.read_text())
    failed = {name for name, row in stage["settings"].items() if "error" in row}
    # ORT's packing ops (RemovePadding, PackedAttention) exist on CUDA only; everything else runs here
    assert failed == {name for name in stage["settings"] if "padding removed" in name} and len(failed) == 2
    assert all(row["sentences_per_s"] > 0 for name, row in stage["settings"].items() if name not in failed)
    assert set(stage["fixed_shape"]) == {"8x16", "8x16 cuda graph", "8x16 host inputs"}


def test_ort_options_compares_every_level_against_all(scoring, bench_dir):
    out = bench_dir / "out" / "ort-options.json"
    bench("ort_options.py", "--random", "tiny", "--random-dir", bench_dir / "random", "--device", "cpu",
          "--variants", "fp32,fp16", "--rows", "300", "--out", out)
    levels = {variant: row["levels"] for variant, row in json.loads(out.read_text())["variants"].items()}
    for variant, by_level in levels.items():
        assert set(by_level) == {"disabled", "basic", "extended", "all"}, variant
        assert all(level["labels_agree_with_all"] >= 0.995 for level in by_level.values()), variant


def test_op_probe_times_each_op_of_a_layer_and_the_whole_graph(scoring, bench_dir):
    out = bench_dir / "out" / "op-probe.json"
    bench("op_probe.py", "--device", "cpu", "--shapes", "4x16", "--repeat", "1",
          "--graph", bench_dir / "random" / "onnx-cola" / "model.fp16.onnx", "--out", out)
    shape = json.loads(out.read_text())["shapes"][0]
    assert (shape["rows"], shape["width"]) == (4, 16)
    assert {"Attention (with its QKV projection)", "BiasGelu", "SkipLayerNormalization"} <= set(shape["ops"])
    assert all(op["ms"] > 0 for op in shape["ops"].values())


def test_small_files_scores_small_inputs_together_and_each_alone_to_the_same_scores(scoring, bench_dir):
    out = bench_dir / "out" / "small-files.json"
    bench("small_files.py", "--device", "cpu", "--random", "tiny", "--random-dir", bench_dir / "random",
          "--files", "30", "--mean-rows", "4", "--out", out)
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"each-alone", "bundled", "one-file"}
    assert results["bundled"]["batches"] < results["each-alone"]["batches"]
    assert all(results[way]["max_score_diff_from_one_file"] < 1e-5 for way in ("each-alone", "bundled"))


def test_share_runs_split_one_inbox_and_score_each_input_once(scoring, bench_dir):
    out = bench_dir / "out" / "share-runs.json"
    bench("share_runs.py", "--device", "cpu", "--random", "tiny", "--random-dir", bench_dir / "random",
          "--files", "40", "--mean-rows", "3", "--runs", "2", "--out", out)
    results = json.loads(out.read_text())["results"]
    assert [row["runs"] for row in results] == [1, 2]
    assert all(row["each_input_scored_once"] and row["max_score_diff_from_one_run"] < 1e-6 for row in results)
    assert sum(results[1]["inputs_scored_by_each_run"]) == 40


def test_gpu_summary_reads_what_the_scripts_wrote(scoring, bench_dir):
    summary = bench("gpu_summary.py", bench_dir / "out")
    assert "scorer-run-fp32" in summary and "fused attention" in summary and "bundled" in summary
    assert "share-runs: 40 inputs" in summary


def test_tokenize_speed_times_both_ways_on_both_workloads(bench_dir):
    out = bench_dir / "out" / "tokenize-speed.json"
    # the script itself exits non-zero where the word cache's ids differ from the tokenizer's
    bench("tokenize_speed.py", "--rows", "300", "--threads", "1,2", "--repeat", "1", "--workloads", "cola,long128",
          "--out", out)
    workloads = json.loads(out.read_text())["workloads"]
    for name in ("cola", "long128"):
        assert {f"{way}-T{threads}" for way in ("tokenizer", "word-cache-cold", "word-cache-warm")
                for threads in (1, 2)} == set(workloads[name]["results"]), name


def test_overlap_times_the_pipeline_around_a_stand_in_model(bench_dir):
    out = bench_dir / "out" / "overlap.json"
    bench("overlap.py", "--rows", "600", "--model-speed", "1", "--infer-threads", "2", "--window-rows", "256",
          "--max-tokens", "32768", "--batch-overhead", "2048", "--random-dir", bench_dir / "random", "--out", out)
    overlap = json.loads(out.read_text())
    assert set(overlap["end_to_end"]) == {f"tokenize_threads={n}" for n in (1, 2, 4)}
    for run in overlap["end_to_end"].values():
        idle = run["stand_in"]
        assert run["sentences_per_s"] > 0 and idle["busy_s"] > 0 and idle["batches"] >= 3  # three windows at least
        assert min(idle["before_first_batch_s"], idle["between_batches_s"], idle["after_last_batch_s"]) >= 0


def test_padding_counts_each_way_of_batching_without_a_model(bench_dir):
    out = bench_dir / "out" / "padding.json"
    bench("padding.py", "--rows", "cola=3000,long128=300", "--out", out)
    workloads = json.loads(out.read_text())["workloads"]
    for workload in ("cola", "long128"):
        for provider in ("cuda", "cpu"):
            ways = workloads[workload][provider]
            assert "default" in ways and "budget alone" in ways
            assert all(way["batches"] >= 1 and way["padded_over_real"] >= 1 for way in ways.values())


def test_output_codecs_writes_every_codec_and_the_baseline(bench_dir):
    out = bench_dir / "out" / "output-codecs.json"
    bench("output_codecs.py", "--rows", "3000", "--window-rows", "1000", "--repeats", "1", "--out", out)
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"pyarrow-gzip-9 (baseline)", "csv", "csv.gz", "csv.zst", "csv.bz2", "csv.lz4", "tsv",
                            "tsv.gz"}
    assert all(row["rows_per_second"] > 0 for row in results.values())
    assert results["csv.gz"]["bytes"] < results["csv"]["bytes"] / 2  # (compressed, and CoLA's text compresses)


def test_memory_keeps_every_row_of_a_file_with_a_huge_base64_cell(scoring, bench_dir):
    out = bench_dir / "out" / "memory.json"
    bench("memory.py", "--rows", "500", "--huge-cell-mib", "0.2", "--huge-cell-kind", "base64",
          "--export", bench_dir / "random" / "onnx-cola", "--out", out)
    run = json.loads(out.read_text())["runs"][0]
    assert run["rows"] == run["output_rows"] == 500 and run["peak_rss_mib"] > 0


def test_long_rows_gives_the_tokenizers_own_ids_for_each_tokenizer_and_huge_cell(bench_dir):
    out = bench_dir / "out" / "long-rows.json"
    # it fails where ids differ; the two kinds with most between them (the word cache; XLM-R's precompiled
    # normaliser): tests/test_cut.py checks every kind's cut ids
    bench("long_rows.py", "--rows", "300", "--cell-mib", "0.05", "--kinds", "wordpiece,xlm-r", "--out", out)
    results = json.loads(out.read_text())["results"]
    kinds = ("wordpiece", "xlm-r")
    assert {(r["tokenizer"], r["cell"]) for r in results} == {(t, c) for t in kinds
                                                              for c in ("words", "base64", "hex", "cjk")}
    assert all(r["scorer"]["ids"] == r["tokenizer_alone"]["ids"] and r["scorer"]["cut"] for r in results)
    assert [r["scorer"]["word_cache"] for r in results if r["cell"] == "words"] == [True, False]
    bench("long_rows.py", "--documents", "3", "--kinds", "wordpiece,xlm-r", "--out", out)
    documents = json.loads(out.read_text())["documents"]
    assert [(d["tokenizer"], d["chars"], d["max_length"]) for d in documents] == [
        (kind, chars, length) for kind in ("wordpiece", "xlm-r") for chars in (25_000, 60_000, 200_000)
        for length in (128, 512)]


def test_cpu_limits_scores_and_trains_under_each_limit_both_ways(tiny_export, tiny_encoder, bench_dir):
    out = bench_dir / "out" / "cpu-limits.json"
    bench("cpu_limits.py", "--export", tiny_export, "--rows", "200", "--repeats", "1", "--steps", "1",
          "--model", tiny_encoder, "--out", out)
    result = json.loads(out.read_text())
    assert result["model"] == str(tiny_encoder)
    limits = result["limits"]
    assert [limit["limit"] for limit in limits] == ["affinity: 1 core", "cgroup quota: 1 CPU"]
    for limit in limits:
        if "skipped" in limit:  # (no writable cgroup here: said why)
            assert limit["limit"].startswith("cgroup") and limit["skipped"]
            continue
        assert [run["cpu_threads"] for run in limit["scoring"]["machine-count"]] == [os.cpu_count()]
        assert [run["cpu_threads"] for run in limit["scoring"]["usable-cores"]] == [1]
        assert [run["torch_threads"] for run in limit["training"]["usable-cores"]] == [1]
        assert limit["scoring_speedup"] > 0 and limit["training_speedup"] > 0
