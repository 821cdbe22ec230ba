"""Small inputs scored together (scorer.scoring.bundle): shared batches, and each input still its own output, summary
and failure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from scorer.data.lock import OutputLock
from scorer.inference.classify import OnnxClassifier
from tests.test_nightly import files_under, run, sentences


def _inbox(root: Path, sizes: list[int], labelled: bool = False) -> list[Path]:
    """Small inputs named f00.., alternately Parquet and CSV, of `sizes` rows each."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, size in enumerate(sizes):
        columns = {"id": [f"{i}-{j}" for j in range(size)], "sentence": sentences(size, 100 * i)}
        if labelled:
            columns["label"] = [j % 2 for j in range(size)]
        table, path = pa.table(columns), root / f"f{i:02d}.{'parquet' if i % 2 == 0 else 'csv'}"
        pq.write_table(table, path) if i % 2 == 0 else pacsv.write_csv(table, path)
        paths.append(path)
    return paths


def _summary(out: Path) -> dict:
    return json.loads((out / "scorer-summary.json").read_text())


def test_small_inputs_share_batches_and_score_as_each_would_alone(tiny_export, tmp_path, monkeypatch):
    paths = _inbox(tmp_path / "inbox", [3, 1, 7, 0, 5, 2, 9, 4], labelled=True)
    out = tmp_path / "out"
    tokenised, prepare = [], OnnxClassifier.prepare
    monkeypatch.setattr(OnnxClassifier, "prepare", lambda self, column: tokenised.append(len(column)) or
                        prepare(self, column))
    result = run(tmp_path / "inbox", "--model", tiny_export, "-o", out, "--variant", "fp32", "--check", "2")
    assert result.exit_code == 0, result.output
    assert tokenised == [31]  # (the inputs' rows joined: tokenised in one call, not one an input)
    summary = _summary(out)
    assert [u["bundled_with"] for u in summary["inputs"]] == [7] * 8
    assert summary["batching"]["batches"] < 8 - 1  # (one input without rows: 7 scored alone took 7 batches at least)
    assert all(u["check"]["passed"] for u in summary["inputs"] if u["rows"])
    assert [u["evaluation"]["rows"] if u["evaluation"] else 0 for u in summary["inputs"]] == \
        [3, 1, 7, 0, 5, 2, 9, 4]
    _each_as_alone(paths, summary, out, tiny_export, tmp_path / "alone")
    assert run(tmp_path / "inbox", "--model", tiny_export, "-o", out, "--variant", "fp32").exit_code == 0
    assert [u["state"] for u in _summary(out)["inputs"]] == ["skipped"] * 8  # (each one's output is up to date)


def _each_as_alone(paths: list[Path], summary: dict, out: Path, export: Path, alone_dir: Path) -> None:
    """Each input's output from the bundled run is the one it gets scored alone (scores within 1e-5)."""
    for path, unit in zip(paths, summary["inputs"], strict=True):
        alone = alone_dir / (path.stem + ".parquet")
        assert run(path, "--model", export, "-o", alone, "--variant", "fp32").exit_code == 0
        together, reference = pq.read_table(out / alone.name), pq.read_table(alone)
        assert together.column_names == reference.column_names and together.num_rows == unit["rows"]
        for name in together.column_names:
            if name == "score":
                np.testing.assert_allclose(together.column(name).to_numpy(), reference.column(name).to_numpy(),
                                           atol=1e-5)
            else:
                assert together.column(name).equals(reference.column(name)), name
        assert json.loads(together.schema.metadata[b"scorer"]) == json.loads(reference.schema.metadata[b"scorer"])
        labels = together.column(unit["columns"]["label"]).to_pylist()
        assert unit["predicted_counts"] == {"0": labels.count(0), "1": labels.count(1)}


def test_small_inputs_of_every_text_type_are_joined_only_where_they_can_be(tiny_export, tmp_path):
    """Inputs whose text columns differ in type (large strings, dictionary-encoded, bytes that are not UTF-8,
    numbers, several chunks) share a bundle, and each row keeps the status and score it gets alone."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    texts = sentences(12)
    columns = [pa.array(texts[:3], pa.large_string()), pa.array([*texts[3:6], None, " "]).dictionary_encode(),
               pa.array([b"\xff\xfe not text", texts[6].encode(), None], pa.binary()), pa.array([1, 2], pa.int64()),
               pa.array([*texts[7:9], ""]), pa.chunked_array([texts[9:10], texts[10:12]]), pa.array([], pa.string())]
    paths = []
    for i, column in enumerate(columns):
        paths.append(inbox / f"f{i:02d}.parquet")
        pq.write_table(pa.table({"sentence": column}), paths[-1], row_group_size=2)
    result = run(inbox, "--model", tiny_export, "-o", out, "--variant", "fp32")
    assert result.exit_code == 0, result.output
    summary = _summary(out)
    assert [u["bundled_with"] for u in summary["inputs"]] == [len(columns) - 1] * len(columns)
    statuses = [pq.read_table(out / p.name).column("status").to_pylist() for p in paths]
    assert statuses[1][3:] == ["null", "empty"] and statuses[2] == ["not_text", "ok", "null"]
    assert statuses[3] == ["not_text"] * 2 and statuses[4][2] == "empty"
    _each_as_alone(paths, summary, out, tiny_export, tmp_path / "alone")


def test_joined_pieces_join_text_chunks_of_one_type_up_to_the_budget_and_keep_every_row_in_order():
    from scorer.scoring.stream import joined_pieces

    columns = [pa.chunked_array([["ab", "cd"]]), pa.chunked_array([["ef"], ["gh", None]]),
               pa.chunked_array([pa.array(["ij"], pa.large_string())]), pa.chunked_array([[1, 2]]),
               pa.chunked_array([], pa.string()), pa.chunked_array([["kl" * 20, "m"]])]
    cut = joined_pieces(columns, chars=40)
    assert [p.to_pylist() for p in cut] == [["ab", "cd", "ef", "gh", None], ["ij"], [1, 2], ["kl" * 20], ["m"]]
    assert [p.to_pylist() for p in joined_pieces(columns, chars=1 << 20)] == \
        [["ab", "cd", "ef", "gh", None], ["ij"], [1, 2], ["kl" * 20, "m"]]
    assert len(joined_pieces([pa.chunked_array([], pa.string())], 10)[0]) == 0  # (no rows: one empty piece)


def test_a_bad_small_input_fails_alone_and_the_summary_keeps_the_inputs_order(tiny_export, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    _inbox(inbox, [0, 0, 0, 0, 4])
    assert run(inbox / "f04.parquet", "--model", tiny_export, "-o", out / "f04.parquet",  # done by an earlier run
               "--summary", tmp_path / "earlier.json").exit_code == 0
    pq.write_table(pa.table({"sentence": sentences(3)}), inbox / "f00.parquet")
    (inbox / "f01.csv").write_text("sentence,label\nfine,1\nodd,7\n")  # a label the model does not know
    (inbox / "f02.parquet").write_bytes(b"PAR1 broken")
    pacsv.write_csv(pa.table({"sentence": sentences(2)}), inbox / "f03.csv")
    with OutputLock(out / "f03.parquet"):  # another run writing this one
        result = run(inbox, "--model", tiny_export, "-o", out)
    assert result.exit_code == 3 and "3 of 5 inputs failed" in result.output
    summary = _summary(out)
    assert [u["state"] for u in summary["inputs"]] == ["scored", "failed", "failed", "failed", "skipped"]
    errors = [u["error"] for u in summary["inputs"]]
    assert "row 2: label '7'" in errors[1] and "not a readable Parquet file" in errors[2]
    assert "another scorer run is writing" in errors[3]
    assert files_under(out) == ["f00.parquet", "f04.parquet", "scorer-summary.json"]
    assert run(inbox, "--model", tiny_export, "-o", out).exit_code == 3  # f03 is free now: scored
    assert [u["state"] for u in _summary(out)["inputs"]] == ["skipped", "failed", "failed", "scored", "skipped"]
    # --fail-fast stops at the first input that fails: the ones before it are scored, the ones after it not read
    fast = tmp_path / "fast"
    assert run(inbox, "--model", tiny_export, "-o", fast, "--fail-fast").exit_code == 3
    assert [u["state"] for u in _summary(fast)["inputs"]] == ["scored", "failed"]
    assert files_under(fast) == ["f00.parquet", "scorer-summary.json"]


def test_with_fail_fast_an_input_failing_as_its_bundle_is_finished_stops_the_run_there(tiny_export, tmp_path,
                                                                                        monkeypatch):
    from scorer.errors import InputError
    from scorer.scoring import bundle

    inbox, out = tmp_path / "inbox", tmp_path / "out"
    _inbox(inbox, [3, 2, 4, 1])
    check_unchanged = bundle.check_unchanged

    def changed(opened):  # f01 written to while it was scored (a feed still arriving)
        if opened.unit.source.name == "f01.csv":
            raise InputError(f"{opened.unit.source} changed while it was scored")
        check_unchanged(opened)

    monkeypatch.setattr(bundle, "check_unchanged", changed)
    assert run(inbox, "--model", tiny_export, "-o", out, "--fail-fast").exit_code == 3
    assert [u["state"] for u in _summary(out)["inputs"]] == ["scored", "failed"]
    assert files_under(out) == ["f00.parquet", "scorer-summary.json"]  # (f02, f03: scored, never written)
    assert run(inbox, "--model", tiny_export, "-o", out).exit_code == 3  # without it: every other input written
    assert [u["state"] for u in _summary(out)["inputs"]] == ["skipped", "failed", "scored", "scored"]


def test_an_input_over_a_quarter_window_is_scored_on_its_own_between_bundles(tiny_export, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    _inbox(inbox, [2, 1, 9, 2, 2, 3])  # a window of 8 rows: inputs of 2 rows or fewer are small (f02: CSV too)
    result = run(inbox, "--model", tiny_export, "-o", out, "--window-rows", "8")
    assert result.exit_code == 0, result.output
    summary = _summary(out)
    assert [u["bundled_with"] for u in summary["inputs"]] == [1, 1, 0, 1, 1, 0]
    assert [u["rows"] for u in summary["inputs"]] == [2, 1, 9, 2, 2, 3]
    assert pq.read_table(out / "f02.parquet").column("id").to_pylist() == [f"2-{j}" for j in range(9)]


def test_a_bundle_stopped_midway_writes_nothing_and_the_rerun_scores_it(tiny_export, tmp_path, monkeypatch):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    _inbox(inbox, [3, 2, 4])

    def stop(self, begun):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(OnnxClassifier, "finish_pieces", stop)
        result = run(inbox, "--model", tiny_export, "-o", out)
    assert result.exit_code == 130 and "interrupted" in result.output
    summary = _summary(out)
    assert [u["state"] for u in summary["inputs"]] == ["interrupted"] * 3 and summary["exit_code"] == 130
    assert [p.name for p in out.iterdir()] == ["scorer-summary.json"]  # no output, part, lock or temporary file
    (out / ".f01.csv.tmp-1").write_bytes(b"PAR1")  # an output being written when the machine died (kept: not ours)
    (out / ".f01.parquet.tmp-1").write_bytes(b"PAR1")  # (removed once the run holds f01.parquet's lock)
    assert run(inbox, "--model", tiny_export, "-o", out).exit_code == 0
    assert [u["state"] for u in _summary(out)["inputs"]] == ["scored"] * 3
    assert files_under(out) == [".f01.csv.tmp-1", "f00.parquet", "f01.parquet", "f02.parquet", "scorer-summary.json"]


def test_a_small_input_with_an_earlier_run_s_parts_resumes_from_them_on_its_own(tiny_export, tmp_path, monkeypatch):
    from scorer.scoring import single

    inbox, out = tmp_path / "inbox", tmp_path / "out"
    paths = _inbox(inbox, [3, 2, 4])

    def crash(*args, **kwargs):
        raise RuntimeError("stand-in for a crash that is not the input's fault")

    with monkeypatch.context() as patched:  # one input alone: its window's part is kept
        patched.setattr(single, "tally", crash)
        assert run(paths[1], "--model", tiny_export, "-o", out / "f01.parquet").exit_code == 1
    assert len(list(out.glob(".f01.parquet.scorer-parts/part-*"))) == 1
    result = run(inbox, "--model", tiny_export, "-o", out)
    assert result.exit_code == 0, result.output
    summary = _summary(out)
    assert [(u["state"], u["bundled_with"]) for u in summary["inputs"]] == \
        [("scored", 0), ("resumed", 0), ("scored", 0)]
    assert files_under(out) == ["f00.parquet", "f01.parquet", "f02.parquet", "scorer-summary.json"]


@pytest.mark.parametrize("failing", ["model", "open", "write"])
def test_a_bundle_whose_model_or_output_fails_says_what_to_do_for_each_input(tiny_export, tmp_path, monkeypatch,
                                                                            failing):
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    from scorer.data import write

    inbox, out = tmp_path / "inbox", tmp_path / "out"
    _inbox(inbox, [3, 2])
    if failing == "model":
        def fail(self, begun):
            raise RuntimeException("Failed to allocate memory for requested buffer of size 1048576")

        monkeypatch.setattr(OnnxClassifier, "finish_pieces", fail)
    else:
        def fail(self, *args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(write.OutputSink, "__init__" if failing == "open" else "write", fail)
    result = run(inbox, "--model", tiny_export, "-o", out)
    summary = _summary(out)
    assert result.exit_code == (6 if failing == "model" else 5), result.output
    errors = [u["error"] for u in summary["inputs"]]
    assert len(errors) == 2 and all(error.endswith("then run again") for error in errors), errors
    assert [p.name for p in out.iterdir()] == ["scorer-summary.json"]


def test_a_bug_outside_any_input_s_scoring_still_ends_in_the_summary(tiny_export, tmp_path, monkeypatch):
    from scorer.scoring import bundle

    def broken(*args, **kwargs):  # (a fault injected where a bundle logs its inputs: a bug of ours, for the test)
        raise ZeroDivisionError("division by zero")

    inbox, out = tmp_path / "inbox", tmp_path / "out"
    _inbox(inbox, [3, 2])
    monkeypatch.setattr(bundle, "said_done", broken)
    result = run(inbox, "--model", tiny_export, "-o", out)
    assert result.exit_code == 1 and "unexpected ZeroDivisionError: division by zero" in result.output
    summary = _summary(out)
    assert summary["exit_code"] == 1 and summary["error"] == "unexpected ZeroDivisionError: division by zero"
    assert not list(out.glob(".*scorer-lock"))  # (the bundle's locks released)


def test_small_inputs_are_bundled_no_more_than_the_open_file_limit_allows(tiny_export, tmp_path):
    """Under `ulimit -n 64` (a container's; macOS starts processes with 256), small inputs were gathered into one
    bundle, each holding its files open, until the files of the rest could not be opened: all after the first 59 (of
    300, seen by hand) failed, reported as damaged files ("cannot be decompressed ... copied whole", exit 3). Bundles
    now hold what the limit allows."""
    import resource
    import subprocess
    import sys

    inbox, out = tmp_path / "inbox", tmp_path / "out"
    paths = _inbox(inbox, [1] * 150)
    limit = (64, 64)
    done = subprocess.run([sys.executable, "-m", "scorer", "run", str(inbox), "-o", str(out), "--model",
                           str(tiny_export), "--variant", "fp32", "--quiet"], capture_output=True, text=True,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limit))
    assert done.returncode == 0, done.stderr
    summary = _summary(out)
    assert [u["state"] for u in summary["inputs"]] == ["scored"] * 150
    assert 1 <= max(u["bundled_with"] for u in summary["inputs"]) < 149  # (in several bundles)
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".parquet") == sorted(
        p.with_suffix(".parquet").name for p in paths)
    # and a file that cannot be opened for want of descriptors is not called damaged
    code = ("import resource, sys; from scorer.data.read import TableReader; from scorer.errors import ScorerError\n"
            "held = []\n"
            "try:\n"
            "    while True: held.append(open(sys.argv[1]))\n"
            "except OSError: pass\n"
            "try: list(TableReader(sys.argv[2]).batches(10))\n"
            "except ScorerError as exc: print(exc.exit_code, exc)\n")
    told = subprocess.run([sys.executable, "-c", code, str(paths[1]), str(paths[0])], capture_output=True, text=True,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limit))
    assert told.stdout.startswith(f"2 {paths[0]}: not opened, this process having as many files open as it may "
                                  "(ulimit -n: 64); raise the limit"), (told.stdout, told.stderr)
