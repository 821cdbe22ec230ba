"""Runs beside other runs: several runs over one inbox (--share, one per GPU) score each input once, and what an
earlier run of another account left in an output directory (files this account cannot change) is said, not a crash."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scorer.cli import main
from scorer.config import RunConfig
from scorer.data.lock import OutputLock
from scorer.errors import ConfigError
from scorer.scoring.score import open_classifier, score_file
from scorer.scoring.single import open_unit, score_unit
from scorer.scoring.units import plan_run
from tests.conftest import make_changeable, make_unchangeable_or_skip
from tests.test_nightly import files_under, run, sentences


def _inbox(root: Path, sizes: list[int]) -> list[Path]:
    root.mkdir(parents=True)
    paths = []
    for i, size in enumerate(sizes):
        paths.append(root / f"f{i:02d}.parquet")
        pq.write_table(pa.table({"sentence": sentences(size, 1000 * i)}), paths[-1])
    return paths


def test_an_input_another_run_is_writing_is_left_to_it_with_share_and_failed_without(tiny_export, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    _inbox(inbox, [3, 400, 2, 5])  # (f01: over a quarter of --window-rows 200, scored on its own)
    common = ("--model", tiny_export, "-o", out, "--window-rows", 200)
    with OutputLock(out / "f01.parquet"), OutputLock(out / "f02.parquet"):  # another run writing these two
        shared = run(inbox, *common, "--share", "--summary", tmp_path / "a.json")
        alone = run(inbox, *common, "--summary", tmp_path / "b.json")
    assert shared.exit_code == 0, shared.output
    assert "2 scored, 2 left to other runs" in shared.output
    summary = json.loads((tmp_path / "a.json").read_text())
    assert [u["state"] for u in summary["inputs"]] == ["scored", "taken", "taken", "scored"]
    assert summary["exit_code"] == 0 and files_under(out) == ["f00.parquet", "f03.parquet"]
    assert alone.exit_code == 5 and "another scorer run is writing" in alone.output and "--share" in alone.output
    # The other run is gone without writing them (killed, say): the next shared run scores them
    assert run(inbox, *common, "--share", "--summary", tmp_path / "a.json").exit_code == 0
    assert [u["state"] for u in json.loads((tmp_path / "a.json").read_text())["inputs"]] == \
        ["skipped", "scored", "scored", "skipped"]


def test_an_input_left_to_a_run_that_stopped_without_finishing_it_is_scored_at_the_end(tiny_export, tmp_path,
                                                                                       monkeypatch):
    """The other run held f01 and f02 as this one passed them, then stopped without writing them (killed, say): at
    the end this run tries the two once more, and scores them."""
    from scorer.scoring import score

    inbox, out = tmp_path / "inbox", tmp_path / "out"
    _inbox(inbox, [3, 400, 2, 5])
    other = [OutputLock(out / f"f0{i}.parquet").__enter__() for i in (1, 2)]
    real, passes = score.outcomes, []

    def other_run_stops_after_the_first_pass(units, *args):
        passes.append([u.source.name for u in units])
        yield from real(units, *args)
        if len(passes) == 1:
            for lock in other:
                lock.__exit__(None, None, None)

    monkeypatch.setattr(score, "outcomes", other_run_stops_after_the_first_pass)
    result = run(inbox, "--model", tiny_export, "-o", out, "--window-rows", 200, "--share", "--summary",
                 tmp_path / "a.json")
    assert result.exit_code == 0, result.output
    assert passes == [["f00.parquet", "f01.parquet", "f02.parquet", "f03.parquet"], ["f01.parquet", "f02.parquet"]]
    assert [u["state"] for u in json.loads((tmp_path / "a.json").read_text())["inputs"]] == ["scored"] * 4
    assert [pq.read_metadata(out / f"f0{i}.parquet").num_rows for i in range(4)] == [3, 400, 2, 5]


def test_a_sharing_run_given_the_summary_another_is_writing_is_refused_before_any_work(tiny_export, tmp_path):
    inbox, summary = tmp_path / "inbox", tmp_path / "summary.json"
    _inbox(inbox, [3, 2])
    with OutputLock(summary):  # (the other sharing run, given the same --summary)
        result = run(inbox, "--model", tiny_export, "-o", tmp_path / "out", "--share", "--summary", summary)
    assert result.exit_code == 2 and "is another sharing run's, which is running; give each run its own" in \
        result.output
    assert not (tmp_path / "out").exists() and not summary.exists()


def test_share_refuses_a_shared_default_summary_and_overwrite(tmp_path):
    with pytest.raises(ConfigError, match="--share needs --summary"):
        RunConfig(input="inbox", output=tmp_path, share=True)
    with pytest.raises(ConfigError, match="--share with --overwrite"):
        RunConfig(input="inbox", output=tmp_path, share=True, summary=tmp_path / "s.json", overwrite=True)


@pytest.mark.parametrize("rows", [3, 400], ids=["in-a-bundle", "on-its-own"])
def test_an_output_completed_by_another_run_once_opened_is_skipped_not_scored_again(tiny_export, tmp_path,
                                                                                   monkeypatch, rows):
    """Two runs open one input; the other takes its lock first and completes it: this one, locking it next, finds
    it done (scored again, it would be written twice and the two runs' summaries would both claim it)."""
    from scorer.scoring import bundle

    inbox, out = tmp_path / "inbox", tmp_path / "out"
    _inbox(inbox, [2, rows, 4])
    config = RunConfig(input=str(inbox), output=out, model=tiny_export, provider="cpu", window_rows=200,
                       share=True, summary=tmp_path / "mine.json")
    real_open = bundle.open_unit
    written = {}

    def other_run_finishes_f01(unit, *args):
        opened = real_open(unit, *args)
        if unit.source.name == "f01.parquet":  # (opened here, then completed by the other run)
            score_file(RunConfig(input=str(unit.source), output=unit.output, model=tiny_export, provider="cpu",
                                 summary=tmp_path / "other.json"), progress=False)
            written["mtime"] = unit.output.stat().st_mtime_ns
        return opened

    monkeypatch.setattr(bundle, "open_unit", other_run_finishes_f01)
    summary = score_file(config, progress=False)
    assert [u.state for u in summary.inputs] == ["scored", "skipped", "scored"]
    assert (out / "f01.parquet").stat().st_mtime_ns == written["mtime"]  # (not written again)
    assert pq.read_metadata(out / "f01.parquet").num_rows == rows


def test_a_lone_input_opened_before_another_run_completed_it_is_skipped(tiny_export, tmp_path):
    source = _inbox(tmp_path / "inbox", [6])[0]
    config = RunConfig(input=str(source), model=tiny_export, provider="cpu")
    classifier, config = open_classifier(config)
    unit = plan_run(config.input, None)[0][0]
    try:
        opened = open_unit(unit, classifier, config)
        assert run(source, "--model", tiny_export).exit_code == 0  # (the other run)
        mtime = unit.output.stat().st_mtime_ns
        assert score_unit(unit, classifier, config, False, opened).state == "skipped"
    finally:
        classifier.close()
    assert unit.output.stat().st_mtime_ns == mtime


def test_two_runs_sharing_one_inbox_score_each_input_once(tiny_export, tmp_path):
    """Two processes started together on one inbox of small and larger inputs: both succeed, every output is
    there and whole, and each input was scored by exactly one of them."""
    sizes = [5, 1500, 3, 1200, 7, 2, 1800, 4, 6, 1000, 8, 1]
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    _inbox(inbox, sizes)
    runs = [subprocess.Popen([sys.executable, "-m", "scorer.cli", "run", str(inbox), "-o", str(out), "--model",
                              str(tiny_export), "--provider", "cpu", "--window-rows", "400", "--share", "--summary",
                              str(tmp_path / f"run{n}.json"), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(2)]
    for process in runs:
        _, errors = process.communicate(timeout=300)
        assert process.returncode == 0, errors
    states = [[u["state"] for u in json.loads((tmp_path / f"run{n}.json").read_text())["inputs"]] for n in range(2)]
    for number, pair in enumerate(zip(*states, strict=True)):
        assert sorted(pair) in (["scored", "skipped"], ["scored", "taken"]), (number, pair)
    assert [pq.read_metadata(out / f"f{i:02d}.parquet").num_rows for i in range(len(sizes))] == sizes
    assert sorted(p.name for p in out.iterdir()) == [f"f{i:02d}.parquet" for i in range(len(sizes))]


@contextlib.contextmanager
def _unchangeable(path: Path) -> Iterator[None]:
    make_unchangeable_or_skip(path)
    try:
        yield
    finally:
        make_changeable(path)


def test_a_lock_file_and_a_temporary_another_account_left_do_not_stop_the_run(tiny_export, tmp_path):
    source = _inbox(tmp_path / "inbox", [6])[0]
    output = tmp_path / "out" / "f00.parquet"
    output.parent.mkdir()
    lock, stale = output.parent / ".f00.parquet.scorer-lock", output.parent / ".f00.parquet.tmp-99999999"
    lock.touch()
    stale.write_bytes(b"half an output")
    with _unchangeable(lock), _unchangeable(stale):
        result = CliRunner().invoke(main, ["run", str(source), "--model", str(tiny_export), "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert pq.read_metadata(output).num_rows == 6
    assert "a temporary output left by a killed run, which this account cannot remove" in result.output


def test_finished_windows_another_account_left_are_refused_saying_whose_and_what_to_do(tiny_export, tmp_path):
    source = _inbox(tmp_path / "inbox", [6])[0]
    output = tmp_path / "out" / "f00.parquet"
    parts = output.parent / ".f00.parquet.scorer-parts"
    parts.mkdir(parents=True)
    (parts / "state.json").write_text("{}")
    with _unchangeable(parts):
        result = run(source, "--model", tiny_export, "-o", output)
    assert result.exit_code == 5
    assert f"{parts} holds the finished windows of an earlier run by root" in result.output
    assert "or remove the directory" in result.output and not output.exists()
    assert run(source, "--model", tiny_export, "-o", output).exit_code == 0  # (changeable again)


def test_a_lock_file_its_holder_removes_as_another_run_locks_it_locks_nothing(tmp_path, monkeypatch):
    """A holder removes its lock file as it lets go. A run that opened that file just before and locks it just after
    must not count that lock (on a file no longer there) while a third run creates and locks a new file: it locks the
    file at the path, so the third finds the output taken (two runs would otherwise write one output and its parts)."""
    import fcntl
    import os

    from scorer.errors import OutputTaken

    output = tmp_path / "out.parquet"
    holder = OutputLock(output).__enter__()
    real, let_go = fcntl.flock, []

    def flock(descriptor, operation):  # the holder lets go between this run's open of the file and its flock
        if operation & fcntl.LOCK_EX and not let_go:
            let_go.append(descriptor)
            holder.__exit__(None, None, None)
        return real(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    with OutputLock(output) as late:
        assert let_go and os.fstat(late._handle).st_ino == os.stat(late.path).st_ino
        with pytest.raises(OutputTaken), OutputLock(output):
            pass
    with OutputLock(output):  # (let go: free again)
        pass


@pytest.mark.parametrize("sizes", [[40], [3, 4]], ids=["one input", "small inputs together"])
def test_an_output_filesystem_without_file_locks_is_named_in_one_line_and_nothing_is_written(tiny_export, tmp_path,
                                                                                           monkeypatch, sizes):
    """flock fails with ENOLCK on an NFS mount without its lock service (EOPNOTSUPP or ENOSYS on some FUSE ones): said
    as such (it was 'unexpected OSError', exit 1), since without the lock two runs could write one output."""
    import errno
    import fcntl

    _inbox(tmp_path / "inbox", sizes)

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    result = run(tmp_path / "inbox", "--model", tiny_export, "-o", tmp_path / "out", "--window-rows", "16")
    assert result.exit_code == 5, result.output
    lock = tmp_path / "out" / ".f00.parquet.scorer-lock"
    assert f"cannot lock {lock} (No locks available): its filesystem does not support file locks, which keep two " \
           "runs from writing one output at once; write the outputs to a filesystem that does" in result.output
    assert not [p for p in files_under(tmp_path / "out") if not p.endswith((".scorer-lock", "scorer-summary.json"))]


@pytest.mark.parametrize("command", ["run", "export", "train"])
def test_a_model_file_this_account_cannot_read_is_named_with_its_owner(tiny_export, tiny_checkpoint, tiny_encoder,
                                                                       tmp_path, monkeypatch, command):
    """An export, checkpoint or encoder written by another account under a umask of 077: `scorer run` said
    'unexpected PermissionError' (exit 1), `scorer train` 'No such file or directory' (seen as `nobody`). The tests
    run as root, whom no permission stops, so the check's answer for one file is made here."""
    import os

    model = {"run": tiny_export, "export": tiny_checkpoint, "train": tiny_encoder}[command]
    locked = model / ("model.onnx" if command == "run" else "model.safetensors")
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and access(path, mode))
    source = _inbox(tmp_path / "inbox", [6])[0]
    args = {"run": ["run", str(source), "--model", str(model), "-o", str(tmp_path / "out.parquet")],
            "export": ["export", "--checkpoint", str(model), "--output", str(tmp_path / "onnx")],
            "train": ["train", "--model", str(model), "--output", str(tmp_path / "ck")]}  # (the packaged examples)
    result = CliRunner().invoke(main, [*args[command], "--quiet"])
    assert result.exit_code == 4 and result.output == f"error: {locked} cannot be read by this account (it is " \
        f"root's); make {model} readable (chmod -R a+rX {model}), or run as root\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inbox"]
