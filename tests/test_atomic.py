"""Atomic outputs on a real file system: complete or absent, never half-written, never over someone else's."""

from __future__ import annotations

import pytest

from scorer.data import atomic
from scorer.errors import OutputError
from tests.conftest import make_changeable, make_unchangeable_or_skip


def test_a_directory_appears_whole_when_the_block_succeeds_and_not_at_all_when_it_fails(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic.atomic_dir(target, overwrite=False, marker="manifest.json") as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("stopped midway")
    assert list(tmp_path.iterdir()) == []
    with atomic.atomic_dir(target, overwrite=False, marker="manifest.json") as staging:
        (staging / "whole.txt").write_text("whole")
        assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "whole.txt").read_text() == "whole"


def test_a_directory_another_run_wrote_meanwhile_is_kept_unless_overwrite(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(OutputError, match="was written by another run while this one worked"), \
            atomic.atomic_dir(target, overwrite=False, marker="manifest.json") as staging:
        (staging / "mine.txt").write_text("mine")
        target.mkdir()
        (target / "theirs.txt").write_text("theirs")
        (target / "manifest.json").write_text("{}")  # (another scorer run's: it has the marker)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "theirs.txt"]
    with atomic.atomic_dir(target, overwrite=True, marker="manifest.json") as staging:
        (staging / "mine.txt").write_text("mine")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in target.iterdir()] == ["mine.txt"]


def test_an_output_is_refused_where_replacing_it_would_delete_an_input(tmp_path):
    (tmp_path / "work" / "model").mkdir(parents=True)
    for output in (tmp_path / "work", tmp_path / "work" / "model"):
        with pytest.raises(OutputError, match="holds --model"):
            atomic.check_keeps(output, {"--model": tmp_path / "work" / "model", "--data": None})
    atomic.check_keeps(tmp_path / "work" / "model" / "out", {"--model": tmp_path / "work" / "model"})
    atomic.check_keeps(tmp_path / "elsewhere", {"--model": tmp_path / "work" / "model"})


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_directory_s_files_get_the_permissions_the_umask_gives_whoever_wrote_them(tmp_path, umask):
    # safetensors and onnx's external data write 0600 whatever the umask: a checkpoint or export another account
    # (the nightly job's) could not read although the rest of it is readable
    import os
    import stat

    old = os.umask(umask)
    try:
        with atomic.atomic_dir(tmp_path / "out", overwrite=False, marker="manifest.json") as staging:
            os.close(os.open(staging / "weights.safetensors", os.O_CREAT | os.O_WRONLY, 0o600))
            (staging / "sub").mkdir()
            (staging / "sub" / "config.json").write_text("{}")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert modes == {"weights.safetensors": 0o666 & ~umask, "config.json": 0o666 & ~umask}


def test_overwrite_replaces_only_what_scorer_wrote_and_a_file_never_replaces_a_directory(tmp_path):
    """--overwrite replaces an export or checkpoint (its marker file) or an empty directory, never a directory scorer
    did not write (`--output .` would delete the project); a file (a summary, a report, an output) is never written
    over a directory, which the old replace() moved aside and deleted: `--summary DIR` deleted DIR."""
    mine, theirs, empty = tmp_path / "export", tmp_path / "documents", tmp_path / "empty"
    for directory in (mine, theirs, empty):
        directory.mkdir()
    (mine / "manifest.json").write_text("{}")
    (theirs / "precious.txt").write_text("keep me")
    for target in (mine, empty):
        with atomic.atomic_dir(target, overwrite=True, marker="manifest.json") as staging:
            (staging / "manifest.json").write_text('{"new": 1}')
        assert (target / "manifest.json").read_text() == '{"new": 1}'
    with pytest.raises(OutputError, match=r"documents is a directory that scorer did not write \(it has no "
                                          r"manifest.json\).*choose another --output, or empty it first"):
        atomic.check_writable(theirs, overwrite=True, marker="manifest.json")
    with pytest.raises(OutputError, match="did not write"), \
            atomic.atomic_dir(theirs, overwrite=True, marker="manifest.json"):
        pass
    with pytest.raises(OutputError, match=r"--summary .*documents is a directory, and scorer writes a file there"):
        atomic.check_writable(theirs, overwrite=True, option="--summary")
    with pytest.raises(OutputError, match="is a directory"):
        atomic.write_text(theirs, "{}")
    staging = tmp_path / "staging.txt"
    staging.write_text("x")
    with pytest.raises(OutputError, match="is a directory"):  # (one made while the file was written)
        atomic.replace(staging, theirs)
    assert (theirs / "precious.txt").read_text() == "keep me" and not staging.exists()
    notes = tmp_path / "notes.txt"  # (and a directory output is never written over a file)
    notes.write_text("keep me too")
    for overwrite in (True, False):  # (not "pass --overwrite", which would not help)
        with pytest.raises(OutputError, match=r"--output .*notes.txt is a file, and scorer writes a directory there"):
            atomic.check_writable(notes, overwrite=overwrite, marker="manifest.json")
    assert notes.read_text() == "keep me too"
    notes.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["documents", "empty", "export"]


def test_a_pipe_or_socket_at_an_output_s_path_is_never_renamed_over(tmp_path):
    """Renaming a finished file into place replaces whatever the path holds: `--summary /dev/null` run as root
    replaced the system's /dev/null with a JSON file. A pipe, socket or device (a link to one too) is refused, by
    every way an output is written, and kept."""
    import os
    import socket
    import stat

    fifo, link = tmp_path / "fifo.json", tmp_path / "link.json"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock.json"))
    try:
        for path, what in ((fifo, "a pipe"), (link, "a pipe"), (tmp_path / "sock.json", "a socket")):
            said = f"{path} is {what}, and scorer writes under a temporary name and renames the finished output into " \
                   "place, which would replace it; give another path"
            for overwrite in (False, True):
                with pytest.raises(OutputError, match="^--output " + said):
                    atomic.check_writable(path, overwrite)
                with pytest.raises(OutputError, match="^--output " + said):
                    atomic.check_writable(path, overwrite, marker="manifest.json")
            with pytest.raises(OutputError, match=said.replace(str(link), str(fifo))):  # (written through a link)
                atomic.write_text(path, "{}")
            staging = tmp_path / ".staging"
            staging.write_text("{}")
            with pytest.raises(OutputError, match="^" + said):
                atomic.replace(staging, path)
            assert not staging.exists()
        assert stat.S_ISFIFO(fifo.stat().st_mode) and link.is_symlink() and stat.S_ISSOCK(
            (tmp_path / "sock.json").stat().st_mode)
    finally:
        server.close()


def test_a_directory_output_named_by_a_link_replaces_what_it_points_to_and_keeps_the_link(tmp_path, monkeypatch):
    """`--output models/current`, a link to the last export: it failed after all the work with 'unexpected
    NotADirectoryError' (a directory cannot be renamed over a link), leaving the new directory behind."""
    real, link, dangling = tmp_path / "2026-12-05", tmp_path / "current", tmp_path / "next"
    real.mkdir()
    (real / "manifest.json").write_text("old")
    link.symlink_to(real.name)
    with atomic.atomic_dir(link, overwrite=True, marker="manifest.json") as staging:
        (staging / "manifest.json").write_text("new")
    assert link.is_symlink() and (real / "manifest.json").read_text() == "new"
    dangling.symlink_to("later/export")  # (a link to where the export is to be: made there)
    with atomic.atomic_dir(dangling, overwrite=False, marker="manifest.json") as staging:
        (staging / "manifest.json").write_text("made")
    assert (tmp_path / "later" / "export" / "manifest.json").read_text() == "made"

    def broken(directory):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic, "open_modes", broken)  # (a failure as the finished directory is moved into place)
    with pytest.raises(OSError), atomic.atomic_dir(link, overwrite=True, marker="manifest.json") as staging:
        (staging / "manifest.json").write_text("newer")
    assert (real / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-12-05", "current", "later", "next"]


def test_old_contents_that_cannot_be_removed_are_said_with_where_they_lie(tmp_path, caplog):
    """`export --overwrite` by an account that cannot delete the old export's files (another account's) left them in
    a hidden directory beside it without a word: a whole export's bytes. (chattr +i: files root cannot delete.)"""
    target = tmp_path / "onnx"
    target.mkdir()
    (target / "manifest.json").write_text("old")
    stuck = target / "model.onnx"
    stuck.write_text("old weights")
    make_unchangeable_or_skip(stuck)
    try:
        with atomic.atomic_dir(target, overwrite=True, marker="manifest.json") as staging:
            (staging / "manifest.json").write_text("new")
        old = [p for p in tmp_path.iterdir() if p.name.startswith(".onnx.old-")]
        assert (target / "manifest.json").read_text() == "new" and len(old) == 1
        assert f"{target} was replaced, but its old contents, moved aside to {old[0]}, could not all be removed " \
               "(files of another account?); remove that directory to free its space" in caplog.text
    finally:
        make_changeable(next(tmp_path.glob(".onnx.old-*/model.onnx")))


def test_another_account_s_file_in_a_sticky_directory_is_refused_before_the_work(tmp_path, monkeypatch):
    """In a directory with the sticky bit (/tmp, a shared output directory) only a file's owner may replace it: a run
    as nobody over root's summary failed after all the work with 'unexpected PermissionError' (exit 1), leaving its
    temporary file. The tests run as root, so the account is made another one here (os.geteuid)."""
    import os

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    theirs = shared / "out.parquet.summary.json"
    theirs.write_text("{}")
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    said = f"--summary {theirs} is root's, in {shared}, a directory with the sticky bit (as /tmp), where only its " \
           "owner may replace it; remove it as root, or choose another --summary"
    with pytest.raises(OutputError, match="^" + said.replace("(", r"\(").replace(")", r"\)") + "$"):
        atomic.check_writable(theirs, overwrite=True, option="--summary")
    atomic.check_writable(shared / "new.json", overwrite=False)  # (a new name there is anyone's to write)
    shared.chmod(0o777)
    atomic.check_writable(theirs, overwrite=True)  # (no sticky bit: the directory's writers may replace it)


def test_a_file_that_cannot_be_renamed_into_place_leaves_no_temporary_file(tmp_path, monkeypatch):
    import os

    def refused(source, target):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(PermissionError):
        atomic.write_text(tmp_path / "summary.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_what_a_killed_export_left_beside_its_output_is_removed_by_the_next(tiny_checkpoint, tmp_path):
    """An export writes its graphs into `.NAME.tmp-PID` and renames it into place; killed (-9, a scheduler's timeout)
    before that, it left the directory behind, and every later export wrote beside it: up to a whole export's bytes
    a night. The next export or training run into that output removes it, and a directory a killed replace moved
    aside (`.NAME.old-PID`), under the output's lock (so never a live run's); other names are left alone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from click.testing import CliRunner

    from scorer.cli import main

    output = tmp_path / "onnx"
    process = subprocess.Popen([sys.executable, "-m", "scorer.cli", "export", "--checkpoint", str(tiny_checkpoint),
                                "-o", str(output), "--variants", "fp32,int8"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not any(tmp_path.glob(".onnx.tmp-*/*.onnx")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    assert process.poll() is None, "the export finished before it could be stopped"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    left = tmp_path / f".onnx.tmp-{process.pid}"
    assert left.is_dir() and not output.exists()
    export = ["export", "--checkpoint", str(tiny_checkpoint), "-o", str(output), "--variants", "fp32", "--overwrite"]
    assert CliRunner().invoke(main, export).exit_code == 0
    assert not left.exists() and (output / "manifest.json").is_file()
    # A directory a replace moved aside, killed before removing it, is removed once the output is in place again;
    # names that are not scorer's (no PID after the tag) are not touched
    aside, other = tmp_path / ".onnx.old-4194000", tmp_path / ".onnx.tmp-mine"
    for directory in (aside, other):
        directory.mkdir()
        (directory / "model.onnx").write_text("graph")
    result = CliRunner().invoke(main, export)
    assert result.exit_code == 0, result.output
    assert f"removed {aside}, left by a run killed while it wrote {output}" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [".onnx.tmp-mine", "onnx"]
