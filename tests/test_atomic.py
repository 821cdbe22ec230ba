"""Atomic outputs on a real file system: complete or absent, never half-written, never over someone else's."""

from __future__ import annotations

import pytest

from scorer import atomic
from scorer.errors import OutputError


def test_a_directory_appears_whole_when_the_block_succeeds_and_not_at_all_when_it_fails(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic.atomic_dir(target, overwrite=False) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("stopped midway")
    assert list(tmp_path.iterdir()) == []
    with atomic.atomic_dir(target, overwrite=False) as staging:
        (staging / "whole.txt").write_text("whole")
        assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "whole.txt").read_text() == "whole"


def test_a_directory_another_run_wrote_meanwhile_is_kept_unless_overwrite(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(OutputError, match="was written by another run while this one worked"), \
            atomic.atomic_dir(target, overwrite=False) as staging:
        (staging / "mine.txt").write_text("mine")
        target.mkdir()
        (target / "theirs.txt").write_text("theirs")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in target.iterdir()] == ["theirs.txt"]
    with atomic.atomic_dir(target, overwrite=True) as staging:
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
        with atomic.atomic_dir(tmp_path / "out", overwrite=False) as staging:
            os.close(os.open(staging / "weights.safetensors", os.O_CREAT | os.O_WRONLY, 0o600))
            (staging / "sub").mkdir()
            (staging / "sub" / "config.json").write_text("{}")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert modes == {"weights.safetensors": 0o666 & ~umask, "config.json": 0o666 & ~umask}
