"""The figures of one bench/gpu_check.sh run, as a short table (the device tool returns only the output's tail).

    python bench/gpu_summary.py bench/results/gpu
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(directory: Path) -> None:
    _seeds(directory)
    _scoring(directory)
    _tokenize_speed(directory)
    _model_stage(directory)
    _op_probe(directory)
    _ort_options(directory)
    _small_files(directory)
    _share_runs(directory)
    _train_speed(directory)


def _result(directory: Path, name: str) -> dict | None:
    """`name`.json of `directory`, or None (said) where the step wrote none."""
    path = directory / f"{name}.json"
    if not path.is_file():
        print(f"{name}: no result")
        return None
    return json.loads(path.read_text())


def _small_files(directory: Path) -> None:
    """Small inputs scored together, each alone, and as one file (bench/small_files.py)."""
    data = _result(directory, "small-files")
    if data is None:
        return
    print(f"small-files: {data['files']} inputs, {data['rows']} rows")
    for way, row in data["results"].items():
        print(f"  {way:11} {row['rows_per_s']:>9,.0f} rows/s ({row['x_each_alone']:.2f}x each alone), "
              f"{row['batches']} batches, model busy {row['model_busy_share']:.0%}, waits {row['waits']}")


def _share_runs(directory: Path) -> None:
    """Several `scorer run --share` processes on one inbox against one (bench/share_runs.py)."""
    data = _result(directory, "share-runs")
    if data is None:
        return
    print(f"share-runs: {data['files']} inputs, {data['rows']} rows")
    for row in data["results"]:
        print(f"  {row['runs']} run(s) {row['seconds']:6.2f} s, {row['inputs_per_s']:,.0f} inputs/s "
              f"({row['x_one_run']:.2f}x one run), scored by each {row['inputs_scored_by_each_run']}, each input "
              f"once: {row['each_input_scored_once']}, max |diff| {row['max_score_diff_from_one_run']:.2g}")


def _seeds(directory: Path) -> None:
    """Each seed of the training-seed steps (default-seeds, default-seeds-meanmax, recipe-seeds, ...)."""
    for path in sorted(directory.glob("*-seeds*.json")):
        name = path.stem
        seeds = json.loads(path.read_text())
        for run in seeds["runs"]:
            print(f"{name}{''.join(' ' + o for o in seeds['extra_options'])}, seed {run['seed']} ({run['device']} "
                  f"{run['precision']}): dev MCC {run['best_mcc']:.4f} at epoch {run['best_epoch']}, "
                  f"{run['seconds']:.0f}s, epochs {[round(s, 1) for s in run['epoch_seconds']]} s")
        print(f"  {seeds['summary']}, {seeds['wall_seconds']:.0f}s in all")


def _scoring(directory: Path) -> None:
    """`scorer run` end to end and GPU memory, per workload."""
    for name in ("scoring-cola", "scoring-cola-rayon12", "scoring-long128", "gpu-memory-1m"):
        data = _result(directory, name)
        if data is None:
            continue
        for workload, result in data["workloads"].items():
            fp16 = result["export"].get("fp16", {})
            print(f"{name} {workload}: {result['texts']} texts, {result['mean_tokens']:.1f} tokens; fp16 attention "
                  f"{fp16.get('attention')}, kernels {fp16.get('kernels')} {fp16.get('cuda_options')}, IO binding "
                  f"{fp16.get('io_binding')} (seconds {fp16.get('seconds')}; left out {fp16.get('failed')}); "
                  f"export took {result.get('export_seconds')} s; stages {result.get('stages')}")
            for key, row in result["results"].items():
                print(f"  {key:58} {row['sentences_per_s']:>9,.0f}/s {row['real_tokens_per_s']:>11,.0f} tok/s "
                      f"{row.get('percent_of_physical_limit', 0):5.1f}% of limit, labels agree "
                      f"{row['label_agreement_with_pytorch_fp32']}, padded/real {row.get('padded_over_real_tokens')}"
                      + (f", model busy {row['batching'].get('model_busy_share')}, waits {row['batching'].get('waits')}"
                         if "batching" in row else ""))
            for key, samples in result["gpu_memory_used_mib"].items():
                used = [mib for _, mib in samples]
                print(f"  GPU memory {key}: {len(used)} samples, first {used[0]} MiB, max {max(used)} MiB, "
                      f"last {used[-1]} MiB")


def _tokenize_speed(directory: Path) -> None:
    """The word cache against the tokenizer alone."""
    path = directory / "tokenize-speed.json"
    if path.is_file():
        for workload, result in json.loads(path.read_text())["workloads"].items():
            for key, row in result["results"].items():
                print(f"tokenize {workload} {key:22} {row['sentences_per_s']:>11,.0f}/s {row['tokens_per_s']:>12,.0f} "
                      f"tok/s x{row['x_tokenizer']:.2f}")


def _model_stage(directory: Path) -> None:
    """The model stage under each setting."""
    path = directory / "model-stage.json"
    if path.is_file():
        stage = json.loads(path.read_text())
        print(f"model stage ({stage['attention_chosen']} attention chosen):")
        for name, row in {**stage["settings"], **stage["fixed_shape"]}.items():
            print(f"  {name:50} {row}")


def _op_probe(directory: Path) -> None:
    """Each op of a bert-base fp16 layer against the whole graph."""
    path = directory / "op-probe.json"
    if path.is_file():
        for shape in json.loads(path.read_text())["shapes"]:
            for name, row in shape["ops"].items():
                print(f"op {shape['rows']}x{shape['width']} {name:38} {row['ms']:8.3f} ms {row['tflop_per_s']:6.1f} "
                      f"TFLOP/s {row['gb_per_s']:7.1f} GB/s" + (f", torch.matmul {row['torch_ms']:.3f} ms"
                                                                  if "torch_ms" in row else ""))
            whole = shape.get("whole_graph") or {}
            print(f"op {shape['rows']}x{shape['width']} 12 layers {shape['layers_ms']:.2f} ms; whole graph "
                  f"{whole.get('ms')} ms, {whole.get('tokens_per_s')} tokens/s, ops' share {whole.get('ops_share')}")


def _ort_options(directory: Path) -> None:
    """ONNX Runtime's optimisation levels."""
    path = directory / "ort-options.json"
    if path.is_file():
        for variant, result in json.loads(path.read_text())["variants"].items():
            for level, row in result["levels"].items():
                print(f"ort level {variant} {level:9} {row['sentences_per_s']:>10,.0f}/s start "
                      f"{row['session_start_s']:.2f}s max|diff| {row['max_abs_diff_vs_all']:.2e} labels "
                      f"{row['labels_agree_with_all']:.4f}")


def _train_speed(directory: Path) -> None:
    """Training epochs against the notebook's."""
    path = directory / "train-speed.json"
    if path.is_file():
        for run in json.loads(path.read_text())["runs"]:
            mode = f"{run['precision']}, {run.get('mode', 'compiled' if run.get('compiled') else 'eager')}"
            print(f"train {run['model']} ({mode}): epochs {[round(s, 2) for s in run['epoch_seconds']]} s, "
                  f"total {run['total_seconds']:.1f}s, notebook {run['notebook_epoch_seconds']:.1f}s/epoch")
    else:
        print("train-speed: no result")

if __name__ == "__main__":
    main(Path(sys.argv[1]))
