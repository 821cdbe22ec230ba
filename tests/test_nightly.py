"""Unattended runs: many files, skip what is done, resume after kill -9, refuse bad input cleanly."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scorer.cli import main
from scorer.manifest import sha256_file
from tests.conftest import poison

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(main, ["run", *map(str, args), "--quiet"])


def sentences(n: int, offset: int = 0) -> list[str]:
    return [f"Sentence number {offset + i} says the cat sat on mat {i % 7}." for i in range(n)]


def _many_lines() -> bytes:
    return ("sentence\n" + "".join(f"{s} {i * 7919 % 1000}\n" for i, s in enumerate(sentences(5000)))).encode()


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


@pytest.fixture
def inbox(tmp_path) -> Path:
    root = tmp_path / "inbox"
    (root / "2026-11-25").mkdir(parents=True)
    pq.write_table(pa.table({"sentence": sentences(30)}), root / "2026-11-25" / "a.parquet")
    pacsv.write_csv(pa.table({"id": list(range(12)), "sentence": sentences(12, 100)}), root / "b.csv")
    (root / "notes.txt").write_text("not data")
    return root


def test_directory_is_mirrored_and_a_rerun_skips_finished_outputs(tiny_export, inbox, tmp_path):
    out = tmp_path / "out"
    result = run(inbox, "--model", tiny_export, "--output", out)
    assert result.exit_code == 0, result.output
    assert files_under(out) == ["2026-11-25/a.parquet", "b.parquet", "scorer-summary.json"]
    assert pq.read_table(out / "b.parquet").column("id").to_pylist() == [str(i) for i in range(12)]
    summary = json.loads((out / "scorer-summary.json").read_text())
    assert summary["rows"] == 42 and [u["state"] for u in summary["inputs"]] == ["scored", "scored"]
    before = (out / "b.parquet").stat().st_mtime_ns
    (out / "2026-11-25" / "a.parquet").unlink()
    again = run(inbox, "--model", tiny_export, "--output", out)
    assert again.exit_code == 0, again.output
    rerun = json.loads((out / "scorer-summary.json").read_text())
    assert [u["state"] for u in rerun["inputs"]] == ["scored", "skipped"]
    assert (out / "b.parquet").stat().st_mtime_ns == before
    # The skipped output's entry says what it holds, as the run that wrote it counted it; the run's own counts are
    # of its work alone (a's 30 rows)
    first, skipped = summary["inputs"][1], rerun["inputs"][1]
    assert skipped["status_counts"] == first["status_counts"] and sum(first["status_counts"].values()) == 12
    assert skipped["predicted_counts"] == first["predicted_counts"] and sum(first["predicted_counts"].values()) == 12
    assert sum(rerun["status_counts"].values()) == sum(rerun["predicted_counts"].values()) == 30
    for format in ("csv", "tsv.gz"):  # (a CSV/TSV output's record, beside it, says so too)
        texts = tmp_path / f"out-{format}"
        counts = []
        for _ in range(2):
            assert run(inbox, "--model", tiny_export, "--output", texts, "--format", format).exit_code == 0
            counts.append([(u["state"], u["status_counts"], u["predicted_counts"])
                           for u in json.loads((texts / "scorer-summary.json").read_text())["inputs"]])
        assert [state for state, *_ in counts[1]] == ["skipped", "skipped"]
        assert [figures for _, *figures in counts[1]] == [figures for _, *figures in counts[0]]
    forced = run(inbox, "--model", tiny_export, "--output", out, "--overwrite")
    assert forced.exit_code == 0 and (out / "b.parquet").stat().st_mtime_ns != before


@pytest.mark.parametrize("as_glob", [False, True])
def test_an_output_directory_inside_the_input_directory_is_not_read_as_new_input(tiny_export, inbox, as_glob):
    """`scorer run inbox -o inbox/scored` every night: last night's scores must not become tonight's inputs."""
    spec = f"{inbox}/**/*.parquet" if as_glob else inbox
    out = inbox / "scored"
    for night in range(2):
        result = run(spec, "--model", tiny_export, "--output", out)
        assert result.exit_code == 0, (night, result.output)
        inputs = [u["input"] for u in json.loads((out / "scorer-summary.json").read_text())["inputs"]]
        assert all(not Path(i).is_relative_to(out) for i in inputs) and len(inputs) == (1 if as_glob else 2)
    assert not (out / "scored").exists()


def test_a_spark_job_s_output_directory_is_scored_without_its_work_in_progress_and_markers(tiny_export, tmp_path):
    """A Spark job writes part files, a _SUCCESS marker, .crc files and, while it runs or where an attempt failed,
    _temporary/ with partial part files: those were scored as inputs of their own (pyarrow and Spark leave names
    with a leading '_' or '.' out of a directory). Named alone, or by a glob, such a file is still scored."""
    spark = tmp_path / "day.parquet"
    (spark / "_temporary" / "0").mkdir(parents=True)
    for part in range(2):
        pq.write_table(pa.table({"sentence": sentences(5, 10 * part)}), spark / f"part-0000{part}-x.snappy.parquet")
        (spark / f".part-0000{part}-x.snappy.parquet.crc").write_bytes(b"crc")
    (spark / "_SUCCESS").write_bytes(b"")
    pq.write_table(pa.table({"sentence": sentences(3)}), spark / "_temporary" / "0" / "part-00009-x.snappy.parquet")
    pq.write_table(pa.table({"sentence": sentences(3)}), spark / "_metadata.parquet")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(spark), "--model", str(tiny_export), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert files_under(out) == ["part-00000-x.snappy.parquet", "part-00001-x.snappy.parquet", "scorer-summary.json"]
    assert f"{spark}: left out 2 data file(s) named with or under a leading '_' (_metadata.parquet, " \
        "_temporary/0/part-00009-x.snappy.parquet)" in result.output
    left_out = json.loads((out / "scorer-summary.json").read_text())["left_out"]  # (what a monitor reads)
    assert left_out == {"_metadata.parquet": "named with or under a leading '_'",
                        "_temporary/0/part-00009-x.snappy.parquet": "named with or under a leading '_'"}
    # a directory holding such files alone is refused, saying why; a glob names them
    (spark / "part-00000-x.snappy.parquet").unlink()
    (spark / "part-00001-x.snappy.parquet").unlink()
    result = run(spark, "--model", tiny_export, "-o", tmp_path / "out2")
    assert result.exit_code == 3 and f"{spark}'s only data files are named with or under a leading '_'" \
        in result.output, result.output
    assert run(f"{spark}/_temporary/*/*.parquet", "--model", tiny_export, "-o", tmp_path / "out3").exit_code == 0
    assert files_under(tmp_path / "out3") == ["0/part-00009-x.snappy.parquet", "scorer-summary.json"]


def test_an_empty_part_among_several_is_left_out_of_the_run_and_an_empty_file_alone_refused(tiny_export, tmp_path):
    """A writer's empty partition can be a file of no bytes (an empty CSV part: no header, no rows): among several
    it is left out, said, as training and export leave it out, instead of failing the night's run; named alone it is
    refused, saying so."""
    spark = tmp_path / "day"
    (spark / "date=2026-12-01").mkdir(parents=True)
    (spark / "date=2026-12-01" / "part-00000.csv").write_text("sentence\n" + "".join(f"{s}\n" for s in sentences(4)))
    (spark / "date=2026-12-01" / "part-00001.csv").write_bytes(b"")
    (spark / "part-00002.csv").write_bytes(b"")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(spark), "--model", str(tiny_export), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{spark}: left out 2 empty file(s), of no bytes, so no rows (date=2026-12-01/part-00001.csv, " \
        "part-00002.csv)" in result.output
    assert files_under(out) == ["date=2026-12-01/part-00000.parquet", "scorer-summary.json"]
    summary = json.loads((out / "scorer-summary.json").read_text())
    assert summary["planned_inputs"] == 1 and summary["rows"] == 4
    assert summary["left_out"] == {"date=2026-12-01/part-00001.csv": "no bytes", "part-00002.csv": "no bytes"}
    assert summary["left_out_counts"] == {"no bytes": 2}
    result = run(spark / "part-00002.csv", "--model", tiny_export)
    assert result.exit_code == 3 and "part-00002.csv is empty (no header line)" in result.output, result.output
    (spark / "date=2026-12-01" / "part-00000.csv").write_bytes(b"")
    result = run(spark, "--model", tiny_export, "-o", tmp_path / "out2")
    assert result.exit_code == 3 and f"{spark}: every data file is empty; nothing to read" in result.output


def test_the_summary_names_the_first_hundred_files_left_out_and_counts_them_all(tiny_export, tmp_path):
    """A failed Spark job can leave thousands of attempts' files under _temporary/: the summary, written every beat,
    names the first 100 in sorted order and counts every one by why, where it listed them all."""
    inbox = tmp_path / "inbox"
    (inbox / "_temporary" / "0").mkdir(parents=True)
    pq.write_table(pa.table({"sentence": sentences(3)}), inbox / "part-00000.parquet")
    for part in range(1, 4):
        (inbox / f"part-0000{part}.csv").write_bytes(b"")
    attempts = [f"_temporary/0/part-{n:05d}.parquet" for n in range(150)]
    for name in attempts:
        (inbox / name).write_bytes(b"PAR1")
    out = tmp_path / "out"
    assert run(inbox, "--model", tiny_export, "-o", out).exit_code == 0
    summary = json.loads((out / "scorer-summary.json").read_text())
    everything = {**dict.fromkeys(attempts, "named with or under a leading '_'"),
                  **{f"part-0000{part}.csv": "no bytes" for part in range(1, 4)}}
    assert summary["left_out"] == dict(sorted(everything.items())[:100])
    assert summary["left_out_counts"] == {"named with or under a leading '_'": 150, "no bytes": 3}
    assert summary["rows"] == 3


def test_two_inputs_that_would_share_an_output_are_refused_before_any_work(tiny_export, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.csv").write_text("sentence\nfrom csv\n")
    (inbox / "a.csv.gz").write_bytes(gzip.compress(b"sentence\nfrom gzip\n"))
    result = run(inbox, "--model", tiny_export, "--output", tmp_path / "out", "--overwrite")
    assert result.exit_code == 5 and result.output.count("\n") == 1, result.output
    assert f"{inbox / 'a.csv'} and {inbox / 'a.csv.gz'} would both be scored into {tmp_path / 'out' / 'a.parquet'}" \
        in result.output
    assert not (tmp_path / "out").exists()


def test_a_file_whose_name_looks_like_a_glob_is_read_as_named(tiny_export, tmp_path):
    (tmp_path / "day[1].csv").write_text("sentence\nfine\n")
    (tmp_path / "day1.csv").write_text("sentence\nother\nrows\n")  # what the name matches as a pattern
    assert run(tmp_path / "day[1].csv", "--model", tiny_export).exit_code == 0
    assert pq.read_table(tmp_path / "day[1].scored.parquet").column("sentence").to_pylist() == ["fine"]


def test_glob_input_with_csv_outputs(tiny_export, inbox, tmp_path):
    out = tmp_path / "out"
    result = run(f"{inbox}/**/*.parquet", "--model", tiny_export, "--output", out, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert files_under(out) == ["2026-11-25/.a.csv.scorer.json", "2026-11-25/a.csv", "scorer-summary.json"]
    assert run(f"{inbox}/**/*.parquet", "--model", tiny_export, "--output", out, "--format", "csv").exit_code == 0
    states = [u["state"] for u in json.loads((out / "scorer-summary.json").read_text())["inputs"]]
    assert states == ["skipped"]


def test_changed_input_is_not_silently_skipped(tiny_export, tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": sentences(10)}), source)
    assert run(source, "--model", tiny_export).exit_code == 0
    pq.write_table(pa.table({"sentence": sentences(11)}), source)
    result = run(source, "--model", tiny_export)
    assert result.exit_code == 5 and "(written from another version of the input)" in result.output
    result = run(source, "--model", tiny_export, "--variant", "fp16")  # and by another variant, as it says
    # (the CPU default, int8 or fp32, depends on what export measured)
    assert result.exit_code == 5
    assert "variant, and this run uses fp16, from another version of the input)" in result.output


def test_update_scores_again_what_scorer_wrote_from_an_older_input_or_another_model_and_skips_the_rest(
        tiny_export, tmp_path):
    """A feed replaced in place every night (`inbox/latest.csv`) failed every night with exit 5, or needed
    --overwrite, which scored the unchanged inputs again too: --update scores again the outputs scorer wrote from
    another version of their input or another model, skips those up to date, and still refuses a file scorer did not
    write."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    for name, n in (("latest.parquet", 10), ("fixed.parquet", 7)):
        pq.write_table(pa.table({"sentence": sentences(n)}), inbox / name)
    options = ["--model", tiny_export, "-o", out, "--variant", "fp32"]
    assert run(inbox, *options).exit_code == 0
    fixed = (out / "fixed.parquet").stat().st_mtime_ns
    pq.write_table(pa.table({"sentence": sentences(12, offset=100)}), inbox / "latest.parquet")  # tonight's feed
    refused = run(inbox, *options)
    assert refused.exit_code == 5 and "pass --overwrite to replace it, or --update to score again" in refused.output
    result = run(inbox, *options, "--update")
    assert result.exit_code == 0 and "(1 scored, 1 skipped)" in result.output, result.output
    assert pq.read_table(out / "latest.parquet").column("sentence").to_pylist() == sentences(12, offset=100)
    assert (out / "fixed.parquet").stat().st_mtime_ns == fixed  # (up to date: not written again)
    result = run(inbox, "--model", tiny_export, "-o", out, "--variant", "fp16", "--update")  # another model
    assert result.exit_code == 0 and "(2 scored)" in result.output, result.output
    (out / "fixed.parquet").write_bytes(b"not scorer's")  # a file scorer did not write: never replaced
    result = run(inbox, *options, "--update")
    assert result.exit_code == 5 and "(written not by scorer); pass --overwrite to replace it\n" in result.output
    assert (out / "fixed.parquet").read_bytes() == b"not scorer's"


def test_a_report_asked_of_an_up_to_date_output_is_said_not_written(tiny_export, tmp_path):
    source, report = tmp_path / "in.csv", tmp_path / "report.md"
    source.write_text("sentence,label\n" + "".join(f"{s},{i % 2}\n" for i, s in enumerate(sentences(10))))
    assert run(source, "--model", tiny_export).exit_code == 0
    result = run(source, "--model", tiny_export, "--report", report)
    assert result.exit_code == 0 and "(1 skipped)" in result.output
    assert f"is up to date, so it was not scored again and --report {report} was not written; pass --overwrite" \
        in result.output and not report.exists()
    assert run(source, "--model", tiny_export, "--report", report, "--overwrite").exit_code == 0 and report.exists()


def test_an_output_of_another_text_column_is_not_skipped_as_up_to_date(tiny_export, tmp_path):
    """Scoring another column of the same file into the same output is refused, saying so, not skipped: the output
    holds the other column's scores."""
    source, output = tmp_path / "in.parquet", tmp_path / "in.scored.parquet"
    pq.write_table(pa.table({"title": sentences(10), "body": sentences(10, offset=50)}), source)
    common = ["--model", tiny_export, "--variant", "fp32"]
    assert run(source, *common, "--text-column", "title").exit_code == 0
    assert run(source, *common, "--text-column", "title").exit_code == 0  # the same column: up to date
    result = run(source, *common, "--text-column", "body")
    assert result.exit_code == 5
    assert "(written scoring column 'title', and this run scores 'body'); pass --overwrite" in result.output
    assert run(source, *common, "--text-column", "body", "--overwrite").exit_code == 0
    body = pq.read_table(output)
    reference = tmp_path / "reference.parquet"
    assert run(source, *common, "--text-column", "body", "-o", reference).exit_code == 0
    assert body.column("score").equals(pq.read_table(reference).column("score"))


def test_an_output_of_another_model_or_not_of_scorer_is_refused_saying_so(tiny_export, tmp_path):
    source, output = tmp_path / "in.parquet", tmp_path / "in.scored.parquet"
    pq.write_table(pa.table({"sentence": sentences(10)}), source)
    assert run(source, "--model", tiny_export, "--variant", "fp32").exit_code == 0
    table = pq.read_table(output)
    record = json.loads(table.schema.metadata[b"scorer"])
    record["model_sha256"] = "0" * 64  # as another fp32 graph would have written it
    pq.write_table(table.replace_schema_metadata({b"scorer": json.dumps(record).encode()}), output)
    result = run(source, "--model", tiny_export, "--variant", "fp32")
    assert result.exit_code == 5 and "(written by another model)" in result.output
    result = run(source, "--model", tiny_export, "--variant", "fp16")
    assert result.exit_code == 5 and "(written by the fp32 variant, and this run uses fp16: --variant fp32 keeps it)" \
        in result.output
    pq.write_table(pa.table({"x": [1]}), output)
    result = run(source, "--model", tiny_export, "--variant", "fp32")
    assert result.exit_code == 5 and "(written not by scorer)" in result.output


def test_one_bad_file_fails_the_run_but_not_the_others(tiny_export, inbox, tmp_path):
    (inbox / "c.parquet").write_bytes(b"PAR1 broken")
    out = tmp_path / "out"
    result = run(inbox, "--model", tiny_export, "--output", out)
    assert result.exit_code == 3
    assert "1 of 3 inputs failed" in result.output and "c.parquet" in result.output
    assert files_under(out) == ["2026-11-25/a.parquet", "b.parquet", "scorer-summary.json"]
    summary = json.loads((out / "scorer-summary.json").read_text())
    assert [u["state"] for u in summary["inputs"]] == ["scored", "scored", "failed"]
    assert summary["inputs"][2]["exit_code"] == 3
    assert summary["exit_code"] == 3 and summary["error"].startswith("1 of 3 inputs failed")  # (what a monitor reads)
    fast = run(inbox, "--model", tiny_export, "--output", tmp_path / "fast", "--fail-fast", "--overwrite")
    assert fast.exit_code == 3


def test_a_run_stopped_before_any_input_says_so_in_the_summary_not_the_last_success(tiny_export, tmp_path):
    # a monitor reading --summary must not go on seeing last night's success when tonight's run could not start
    source, last = tmp_path / "in.parquet", tmp_path / "last-run.json"
    pq.write_table(pa.table({"sentence": sentences(5)}), source)
    assert run(source, "--model", tiny_export, "--summary", last).exit_code == 0
    success = json.loads(last.read_text())
    assert success["exit_code"] == 0 and success["error"] is None and success["inputs"][0]["state"] == "scored"
    for options, code, said in (
            (["--model", tmp_path / "nowhere"], 4, "does not exist; run `scorer export` first"),  # the model
            (["--model", tiny_export, "--check", "2", "--checkpoint", tmp_path / "gone"], 4,
             "--check needs the PyTorch checkpoint"),  # --check's checkpoint
    ):
        assert run(source, *options, "--summary", last).exit_code == code
        failed = json.loads(last.read_text())
        assert failed["exit_code"] == code and said in failed["error"] and failed["inputs"] == []
        assert failed["finished_at"] >= success["finished_at"] and failed["host"] == success["host"]
    assert run(tmp_path / "inbox", "--model", tiny_export, "--summary", last).exit_code == 3  # an inbox not there
    assert json.loads(last.read_text())["exit_code"] == 3
    # several inputs, without --summary: the summary an earlier run left in the output directory says so too
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    (inbox / "_temporary").mkdir()
    for name in ("a.parquet", "b.parquet", "_temporary/c.parquet"):
        pq.write_table(pa.table({"sentence": sentences(3)}), inbox / name)
    assert run(inbox, "--model", tiny_export, "--output", out).exit_code == 0
    assert run(inbox, "--model", tmp_path / "nowhere", "--output", out, "--overwrite").exit_code == 4
    failed = json.loads((out / "scorer-summary.json").read_text())  # (with what INPUT left out, as a run's)
    assert failed["exit_code"] == 4
    assert failed["left_out"] == {"_temporary/c.parquet": "named with or under a leading '_'"}
    assert run(inbox, "--model", tmp_path / "nowhere", "--output", tmp_path / "new").exit_code == 4
    assert not (tmp_path / "new").exists()  # (no earlier summary there: nothing is created)
    # one input, without --summary: the summary beside its output, where an earlier run left one
    beside = source.with_name("in.scored.parquet.summary.json")
    assert run(source, "--model", tiny_export).exit_code == 0 and json.loads(beside.read_text())["exit_code"] == 0
    assert run(source, "--model", tmp_path / "nowhere", "--overwrite").exit_code == 4
    assert json.loads(beside.read_text())["exit_code"] == 4
    source.write_bytes(b"PAR1 damaged")  # and an input that fails once started
    assert run(source, "--model", tiny_export, "--overwrite").exit_code == 3
    failed = json.loads(beside.read_text())
    assert failed["exit_code"] == 3 and failed["inputs"][0]["state"] == "failed"
    # never written over what the run refused to replace (an input named as the summary)
    before = source.read_bytes()
    assert run(source, "--model", tmp_path / "nowhere", "--summary", source).exit_code == 5
    assert source.read_bytes() == before



def test_a_run_stopped_by_a_bug_says_so_in_the_summary_too(tiny_export, tmp_path, monkeypatch):
    import scorer.scoring.single

    def broken(*args, **kwargs):  # (a fault injected where the run counts its rows: a bug of ours, for the test)
        raise ZeroDivisionError("division by zero")

    source, last = tmp_path / "in.parquet", tmp_path / "last-run.json"
    pq.write_table(pa.table({"sentence": sentences(5)}), source)
    monkeypatch.setattr(scorer.scoring.single, "tally", broken)
    result = run(source, "--model", tiny_export, "--summary", last)
    assert result.exit_code == 1 and "unexpected ZeroDivisionError: division by zero" in result.output
    summary = json.loads(last.read_text())
    assert summary["exit_code"] == 1 and summary["error"] == "unexpected ZeroDivisionError: division by zero"
    assert summary["inputs"][0]["state"] == "failed" and summary["inputs"][0]["exit_code"] == 1
    # A bug's message is cut short, in the one line said and in the summary (torch's TypeError for a path it could
    # not take held the whole traced graph: 600 KB on one line of a nightly log)
    def verbose(*args, **kwargs):
        raise TypeError("graph(" + "%x : Float(384)\n" * 50_000 + ")")

    monkeypatch.setattr(scorer.scoring.single, "tally", verbose)
    result = run(source, "--model", tiny_export, "--summary", last)
    assert result.exit_code == 1 and "unexpected TypeError: graph(%x : Float(384)\\n%x" in result.output
    assert result.output.count("\n") == 1 and len(result.output) < 1_200, result.output[:300]
    assert "... (850,007 characters in all) (rerun with --debug and report it)" in result.output
    assert json.loads(last.read_text())["error"] == result.output.split("error: ")[1].split(" (rerun")[0]


def _start(args: list[str], hangup=signal.SIG_DFL) -> subprocess.Popen:
    """`scorer run` in a subprocess; `hangup`: how it starts with SIGHUP (SIG_IGN: as `nohup` starts it). SIGINT
    as a terminal's job gets it, where pytest itself runs as a background job (which starts with SIGINT ignored)."""
    def signals() -> None:
        signal.signal(signal.SIGHUP, hangup)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "tests.paced", "run", *args, "--quiet"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=signals)


def _midway(args: list[str], parts: Path, count: int, hangup=signal.SIG_DFL) -> subprocess.Popen:
    """A run started in a subprocess (its windows paced: tests/paced.py), still running once it has finished
    `count` windows."""
    process = _start(args, hangup)
    deadline = time.time() + 120
    while len(list(parts.glob("part-*.parquet"))) < count and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    assert process.poll() is None, "the run finished before it could be stopped; make the input bigger"
    return process


def test_killed_run_resumes_to_the_identical_output(tiny_export, tmp_path):
    """kill -9 in the middle of a run; the rerun finishes from the last finished window, no gaps, no repeats."""
    source = tmp_path / "big.parquet"
    pq.write_table(pa.table({"id": list(range(12_000)), "sentence": [s * 3 for s in sentences(12_000)]}), source)
    common = ["--model", str(tiny_export), "--window-rows", "1000", "--variant", "fp32"]
    reference = tmp_path / "reference.parquet"
    assert subprocess.run([sys.executable, "-m", "scorer.cli", "run", str(source), "-o", str(reference), *common,
                           "--quiet"]).returncode == 0
    output = tmp_path / "resumed.parquet"
    parts = tmp_path / ".resumed.parquet.scorer-parts"
    last = tmp_path / "last-run.json"
    process = _midway([str(source), "-o", str(output), *common, "--summary", str(last)], parts, 5)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list(parts.glob("part-*.parquet")))
    assert not output.exists() and 5 <= finished < 12
    # Its summary says it never finished (written as it started), not a success a monitor would take it for.
    killed = json.loads(last.read_text())
    assert killed["state"] == "running" and killed["exit_code"] is None and killed["pid"] == process.pid
    # A crash of the machine can leave the last part renamed into place but empty (its data never synced).
    (parts / f"part-{finished - 1:06d}.parquet").write_bytes(b"")
    done = subprocess.run([sys.executable, "-m", "scorer.cli", "run", str(source), "-o", str(output), *common,
                           "--summary", str(last), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(last.read_text())["state"] == "finished" and json.loads(last.read_text())["exit_code"] == 0
    summary = json.loads(last.read_text())["inputs"][0]
    assert summary["state"] == "resumed" and summary["resumed_from_row"] == (finished - 1) * 1000
    assert summary["rows"] == 12_000 and summary["rows_this_run"] == 12_000 - summary["resumed_from_row"]
    assert pq.read_table(output).equals(pq.read_table(reference))
    assert sha256_file(output) == sha256_file(reference)
    assert not parts.exists()
    # The killed run's half-written output (it grows window by window under a temporary name) is gone too.
    assert not list(tmp_path.glob(".resumed.parquet.tmp-*"))


def test_a_run_resumed_with_smaller_windows_keeps_the_windows_finished(tiny_export, tmp_path):
    """A run killed by the kernel for memory is rerun, as the README advises, with a smaller --window-rows: that
    discarded every finished window ("for another input, model or settings") and scored the input from its start.
    The finished windows are kept and the rest scored in windows of the new size: every row once, in order."""
    source = tmp_path / "big.parquet"
    pq.write_table(pa.table({"id": list(range(10_000)), "sentence": [s * 3 for s in sentences(10_000)]}), source)
    common = ["--model", str(tiny_export), "--variant", "fp32"]
    reference, output = tmp_path / "reference.parquet", tmp_path / "out.parquet"
    assert run(source, "-o", reference, *common).exit_code == 0
    parts = tmp_path / ".out.parquet.scorer-parts"
    process = _midway([str(source), "-o", str(output), *common, "--window-rows", "1000"], parts, 4)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list(parts.glob("part-*.parquet")))
    result = run(source, "-o", output, *common, "--window-rows", "300")
    assert result.exit_code == 0 and "1 resumed" in result.output, result.output
    summary = json.loads(output.with_name(output.name + ".summary.json").read_text())["inputs"][0]
    assert summary["resumed_from_row"] == finished * 1000 and summary["rows"] == 10_000
    scored, expected = pq.read_table(output), pq.read_table(reference)
    assert scored.column("id").to_pylist() == list(range(10_000)) and scored.column_names == expected.column_names
    np.testing.assert_allclose(scored.column("score").to_numpy(), expected.column("score").to_numpy(), atol=1e-5)
    assert not parts.exists()


def _killed_once(args: list[str], summary: Path, ready) -> tuple[subprocess.Popen, dict]:
    """`scorer run` in a subprocess whose running summary is brought up to date every 0.05 s (not every minute),
    killed (-9) once `ready(summary)` or it ended; the process and the last summary read before the kill."""
    code = ("import sys, scorer.scoring.heartbeat as h; h.HEARTBEAT_SECONDS = 0.05; from scorer.cli import main; "
            f"sys.argv = ['scorer', 'run', *{args!r}]; main()")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, seen = time.time() + 120, {}
    while time.time() < deadline and process.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            seen = json.loads(summary.read_text())
        if ready(seen):
            break
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return process, seen


def test_a_running_run_keeps_its_summary_up_to_date_and_a_killed_one_is_not_taken_for_a_success(tiny_export,
                                                                                                  tmp_path):
    """The summary says "running" from the run's start, and is brought up to date while it runs (every minute; here
    every 0.05 s): the inputs finished so far and the rows through the model; a run killed without cleaning up
    leaves it so, with its pid and the time of its last write, where it would have gone on showing the last run's
    success."""
    inbox, out, last = tmp_path / "inbox", tmp_path / "out", tmp_path / "last-run.json"
    inbox.mkdir()
    for day in range(4):
        pq.write_table(pa.table({"sentence": [s * 3 for s in sentences(8_000, offset=day * 8_000)]}),
                       inbox / f"day{day}.parquet")
    args = [str(inbox), "-o", str(out), "--model", str(tiny_export), "--window-rows", "1000", "--variant", "fp32",
            "--summary", str(last), "--quiet"]
    process, seen = _killed_once(args, last, lambda seen: seen.get("inputs"))
    killed = json.loads(last.read_text())
    assert seen.get("inputs") and killed["state"] == "running", "the run finished before it could be killed"
    assert killed["exit_code"] is None and killed["error"] is None and killed["pid"] == process.pid
    assert killed["planned_inputs"] == 4 and 1 <= len(killed["inputs"]) < 4
    assert killed["started_at"] <= killed["updated_at"] and killed["finished_at"] == ""
    assert killed["batching"]["rows"] >= 8_000 * len(killed["inputs"])
    for unit in killed["inputs"]:  # (what it lists as done is done)
        assert unit["state"] == "scored" and pq.read_table(unit["output"]).num_rows == 8_000
    # how far the whole run got: by the inputs' bytes, those finished and the one underway's rows done
    sizes = {str(path): path.stat().st_size for path in inbox.iterdir()}
    headway, finished = killed["progress"], sum(sizes[unit["input"]] for unit in killed["inputs"])
    assert headway["bytes_planned"] == sum(sizes.values())
    assert finished <= headway["bytes_finished"] < headway["bytes_planned"]
    assert headway["fraction"] == round(headway["bytes_finished"] / headway["bytes_planned"], 4)
    assert headway["seconds_left"] > 0
    result = run(inbox, "-o", out, "--model", tiny_export, "--window-rows", "1000", "--variant", "fp32",
                 "--summary", last)
    assert result.exit_code == 0, result.output
    done = json.loads(last.read_text())
    assert done["state"] == "finished" and done["exit_code"] == 0 and done["pid"] == os.getpid()
    assert [u["state"] for u in done["inputs"]].count("skipped") == len(killed["inputs"])
    finished = {unit["input"]: unit for unit in killed["inputs"]}
    for unit in done["inputs"]:  # (the outputs the killed run finished report what it counted in them)
        if unit["state"] == "skipped":
            assert unit["status_counts"] == finished[unit["input"]]["status_counts"]
            assert unit["status_counts"]["ok"] == 8_000
            assert unit["predicted_counts"] == finished[unit["input"]]["predicted_counts"]
    assert done["progress"] == {"bytes_planned": sum(sizes.values()), "bytes_finished": sum(sizes.values()),
                                "fraction": 1.0, "seconds_left": 0.0}


def test_a_run_of_several_inputs_logs_how_far_the_whole_run_got_every_minute(tiny_export, tmp_path, monkeypatch):
    """A night's inbox of many inputs said how far each big input got, and nothing of the whole run: how many
    inputs are left, and when it ends. Every minute after its start (here every 0.05 s) a line says so; --quiet keeps
    the log to the result."""
    import scorer.scoring.heartbeat

    monkeypatch.setattr(scorer.scoring.heartbeat, "HEARTBEAT_SECONDS", 0.05)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for day in range(4):
        pq.write_table(pa.table({"sentence": [s * 3 for s in sentences(6_000, offset=day * 6_000)]}),
                       inbox / f"day{day}.parquet")
    options = ["run", str(inbox), "-o", str(tmp_path / "out"), "--model", str(tiny_export), "--window-rows", "1000",
               "--variant", "fp32", "--overwrite"]
    result = CliRunner().invoke(main, options)
    assert result.exit_code == 0, result.output
    said = [re.fullmatch(r"run: (\d) of 4 inputs finished, (\d+)% of their bytes(, about \d+ s left)?", line)
            for line in result.output.splitlines() if line.startswith("run: ")]
    assert len(said) >= 2 and all(said), result.output
    finished, shares = [int(m[1]) for m in said], [int(m[2]) for m in said]
    assert finished == sorted(finished) and shares == sorted(shares) and shares[0] < 100, result.output
    quiet = CliRunner().invoke(main, [*options, "--quiet"])
    assert quiet.exit_code == 0 and "run: " not in quiet.output


def test_the_run_s_progress_counts_bytes_finished_and_its_rate_only_what_this_run_read(tmp_path):
    """The whole run's share done is by its inputs' bytes (one underway counted by its rows done); the time left is
    at the rate of what this run read: an input skipped as up to date, or the rows a resumed one had before, took
    none of the run's time, and counted at its rate they made the time left far too short."""
    from scorer.scoring.progress import RunProgress
    from scorer.scoring.summary import UnitSummary

    paths = [tmp_path / name for name in ("skipped", "resumed", "underway", "waiting")]
    for path, size in zip(paths, (1_000, 2_000, 4_000, 3_000), strict=True):
        path.write_bytes(b"x" * size)
    run_progress = RunProgress(paths)
    run_progress.started -= 10.0  # (ten seconds into the run)
    finished = [UnitSummary(str(paths[0]), "a", "skipped", rows=100),
                UnitSummary(str(paths[1]), "b", "resumed", rows=200, rows_this_run=50)]
    underway = [{"input": str(paths[2]), "rows_done": 300, "rows_this_run": 100, "rows_total": 400}]
    figures = run_progress.as_dict(finished, underway)
    # done: 1,000 + 2,000 + 4,000 × 300/400; read now: 2,000 × 50/200 + 4,000 × 100/400, in ten seconds
    assert figures["bytes_planned"] == 10_000 and figures["bytes_finished"] == 6_000 and figures["fraction"] == 0.6
    assert figures["seconds_left"] == pytest.approx(4_000 / (1_500 / 10.0), abs=0.5)
    assert run_progress.line(figures, 2) == "run: 2 of 4 inputs finished, 60% of their bytes, about 27 s left"
    # the underway input's rows all done, it leaves the list before its summary is among the finished: no step back
    assert run_progress.as_dict(finished, [])["fraction"] == 0.6
    assert RunProgress(paths).as_dict([], [])["seconds_left"] is None  # (nothing read yet: no rate)


def test_an_input_that_changes_while_it_is_scored_gives_no_output_and_the_rerun_scores_it_whole(tiny_export, tmp_path):
    """A nightly feed still being written: what was read is not what the file holds, so nothing is kept."""
    source = tmp_path / "feed.csv"
    source.write_text("sentence\n" + "".join(f"{s}\n" for s in sentences(10_000)))
    output = tmp_path / "feed.parquet"
    common = ["--model", str(tiny_export), "--window-rows", "1000", "--variant", "fp32"]
    process = _midway([str(source), "-o", str(output), *common], tmp_path / ".feed.parquet.scorer-parts", 2)
    with source.open("a") as feed:
        feed.write("".join(f"{s}\n" for s in sentences(10, offset=10_000)))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3 and "feed.csv changed while it was scored" in stderr.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feed.csv"]
    assert run(source, "-o", output, *common).exit_code == 0
    assert pq.read_table(output).num_rows == 10_010


def test_an_input_removed_while_it_is_scored_is_said_so_in_one_line(tiny_export, tmp_path):
    """An inbox file moved away by another job mid-run: the run's end check failed with "unexpected
    FileNotFoundError" (exit 1); it is bad input now (exit 3), and nothing is left behind."""
    source = tmp_path / "feed.csv"
    source.write_text("sentence\n" + "".join(f"{s}\n" for s in sentences(10_000)))
    output = tmp_path / "feed.parquet"
    process = _midway([str(source), "-o", str(output), "--model", str(tiny_export), "--window-rows", "1000",
                       "--variant", "fp32"], tmp_path / ".feed.parquet.scorer-parts", 2)
    source.unlink()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr.decode()
    assert stderr.decode() == f"error: {source} was removed while it was scored (moved away by another job?); no " \
        "output was written\n"
    assert list(tmp_path.iterdir()) == []


def test_a_file_output_named_by_a_link_is_written_through_and_the_link_kept(tiny_export, tmp_path):
    """`-o latest.parquet`, a link to the file a dashboard reads: the finished output was renamed over the link,
    which became a file of its own and left its target as it was (a directory `--output` was written through). An
    output, `--summary` or `--report` named by a link now replaces the file it points to (or creates it)."""
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": sentences(5), "label": [0, 1, 0, 1, 0]}), source)
    shared, latest = tmp_path / "shared", tmp_path / "latest.parquet"
    shared.mkdir()
    (shared / "scores.parquet").write_text("yesterday's")
    latest.symlink_to(shared / "scores.parquet")
    last, report = tmp_path / "last.json", tmp_path / "report.md"
    last.symlink_to(shared / "last-run.json")  # (dangling: created through the link)
    report.symlink_to(shared / "report.md")
    result = run(source, "-o", latest, "--model", tiny_export, "--overwrite", "--summary", last, "--report", report)
    assert result.exit_code == 0, result.output
    assert latest.is_symlink() and last.is_symlink() and report.is_symlink()
    assert pq.read_table(shared / "scores.parquet").num_rows == 5
    assert json.loads((shared / "last-run.json").read_text())["exit_code"] == 0
    assert (shared / "report.md").read_text().startswith("# Evaluation") and (shared / "report.json").is_file()
    again = run(source, "-o", latest, "--model", tiny_export)
    assert again.exit_code == 0 and "1 skipped" in again.output, again.output
    assert (shared / "scores.parquet.summary.json").is_file()  # (the default summary beside what was written)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "last.json", "latest.parquet", "report.md",
                                                         "shared"]


@pytest.mark.parametrize("removed", ["directory", "parts"])
def test_finished_windows_removed_while_the_run_writes_them_fail_the_input_not_its_figures(tiny_export, tmp_path,
                                                                                          removed):
    """Another job removed the output's directory (or its parts) mid-run: the run recreated the directory for the
    next part, found none of the first parts at the end, and failed with "unexpected ArrowInvalid: Must pass at
    least one table" (exit 1); with some parts left its figures would have been counted from those alone."""
    import shutil

    source, out = tmp_path / "feed.parquet", tmp_path / "out"
    pq.write_table(pa.table({"sentence": [s * 3 for s in sentences(10_000)]}), source)
    parts = out / ".feed.parquet.scorer-parts"
    process = _midway([str(source), "-o", str(out / "feed.parquet"), "--model", str(tiny_export), "--window-rows",
                       "1000", "--variant", "fp32"], parts, 2)
    shutil.rmtree(out if removed == "directory" else parts)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 5, stderr.decode()
    assert stderr.decode().startswith(f"error: {parts}: finished windows were removed while this run wrote them (the "
                                      "first 0 of ")
    assert not (out / "feed.parquet").exists() and not parts.exists()


@pytest.mark.parametrize("sig,code,said,infer_threads", [(signal.SIGTERM, 143, "terminated", "1"),
                                                         (signal.SIGINT, 130, "interrupted", "1"),
                                                         (signal.SIGHUP, 129, "hung up", "1"),
                                                         (signal.SIGTERM, 143, "terminated", "2")])
def test_a_terminated_run_cleans_up_and_resumes(tiny_export, tmp_path, sig, code, said, infer_threads):
    """SIGTERM (a scheduler's timeout), Ctrl-C and SIGHUP (an SSH session dropped: it killed the run where it
    stood): the run stops its threads, removes its temporary output and lock, says so in one line, keeps its
    finished windows, and the rerun resumes to the uninterrupted file. With batches in flight on threads (as on
    CUDA), the next window's batches are queued before a window is written."""
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": [s * 3 for s in sentences(10_000)]}), source)
    common = ["--model", str(tiny_export), "--window-rows", "1000", "--variant", "fp32", "--infer-threads",
              infer_threads]
    reference, output = tmp_path / "reference.parquet", tmp_path / "out.parquet"
    assert run(source, "-o", reference, *common).exit_code == 0
    parts = tmp_path / ".out.parquet.scorer-parts"
    process = _midway([str(source), "-o", str(output), "--summary", str(tmp_path / "last-run.json"), *common],
                      parts, 3)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code and stderr.decode() == f"{said}\n"
    last = json.loads((tmp_path / "last-run.json").read_text())
    stopped = last["inputs"][0]
    assert stopped["state"] == said and stopped["exit_code"] == code and stopped["output"] == str(output)
    assert last["progress"]["fraction"] < 1.0 and last["progress"]["seconds_left"] != 0.0  # (it did not finish)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == [parts.name]
    assert not output.exists() and list(parts.glob("part-*.parquet"))
    assert run(source, "-o", output, *common).exit_code == 0
    summary = json.loads(output.with_name(output.name + ".summary.json").read_text())["inputs"][0]
    assert summary["state"] == "resumed" and summary["resumed_from_row"] >= 3000
    assert output.read_bytes() == reference.read_bytes()


def test_a_run_started_with_nohup_runs_on_when_it_is_sent_sighup(tiny_export, tmp_path):
    source, output = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({"sentence": sentences(12_000)}), source)
    process = _midway([str(source), "-o", str(output), "--model", str(tiny_export), "--window-rows", "1000"],
                      tmp_path / ".out.parquet.scorer-parts", 2, hangup=signal.SIG_IGN)
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr.decode()
    assert pq.read_metadata(output).num_rows == 12_000


@pytest.mark.parametrize("suffix", ["csv", "tsv", "parquet"])
def test_a_run_that_crashed_resumes_into_the_same_output_in_either_format(tiny_export, tmp_path, monkeypatch, suffix):
    """A crash (not bad input) after two windows keeps their parts; the rerun copies them into its new output
    first and scores the rest, giving the uninterrupted run's file."""
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(50)), "sentence": sentences(50)}), source)
    common = ["--model", tiny_export, "--window-rows", "10", "--variant", "fp32"]
    assert run(source, "-o", tmp_path / f"reference.{suffix}", *common).exit_code == 0
    output = tmp_path / f"out.{suffix}"
    _crash_on_the_third_window(monkeypatch, source, output, *common)
    assert not output.exists() and len(list(tmp_path.glob(f".out.{suffix}.scorer-parts/part-*"))) == 2
    assert run(source, "-o", output, *common).exit_code == 0
    summary = json.loads(output.with_name(output.name + ".summary.json").read_text())["inputs"][0]
    assert summary["state"] == "resumed" and summary["resumed_from_row"] == 20 and summary["rows"] == 50
    assert output.read_bytes() == (tmp_path / f"reference.{suffix}").read_bytes()
    assert not list(tmp_path.glob(f".out.{suffix}.scorer-parts")) and not list(tmp_path.glob(f".out.{suffix}.tmp-*"))


def test_a_run_that_crashed_after_its_last_short_window_counts_the_rows_it_resumed_from(tiny_export, tmp_path,
                                                                                          monkeypatch):
    """Every window finished (the last one short) and the run crashed while finishing: the rerun writes nothing new,
    and its summary says so (it said 'resumed at row 45, -5 written now': windows times their size)."""
    from scorer.scoring import single

    source, output = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({"sentence": sentences(40)}), source)
    common = ["--model", tiny_export, "--window-rows", "15", "--variant", "fp32"]

    def crash(*args, **kwargs):
        raise MemoryError("stand-in for a crash that is not the input's fault")

    with monkeypatch.context() as patched:
        patched.setattr(single, "tally", crash)
        assert run(source, "-o", output, *common).exit_code != 0
    assert len(list(tmp_path.glob(".out.parquet.scorer-parts/part-*"))) == 3
    result = run(source, "-o", output, *common)
    assert result.exit_code == 0 and "0 written now" in result.output, result.output
    summary = json.loads(output.with_name(output.name + ".summary.json").read_text())["inputs"][0]
    assert summary["resumed_from_row"] == 40 and summary["rows_this_run"] == 0 and summary["rows"] == 40


def test_a_part_cut_short_by_a_machine_crash_is_scored_again_and_leftovers_are_cleared(tiny_export, tmp_path,
                                                                                         monkeypatch):
    """A machine that crashed before a part's data reached the disk leaves it cut short: the rerun keeps the parts
    before it, scores the rest again, and clears the temporary files the crash left (a half-written output, a part
    being written)."""
    source, output, reference = tmp_path / "in.parquet", tmp_path / "out.parquet", tmp_path / "reference.parquet"
    pq.write_table(pa.table({"sentence": sentences(50)}), source)
    common = ["--model", tiny_export, "--window-rows", "10", "--variant", "fp32"]
    assert run(source, "-o", reference, *common).exit_code == 0
    _crash_on_the_third_window(monkeypatch, source, output, *common)
    parts = tmp_path / ".out.parquet.scorer-parts"
    second = parts / "part-000001.parquet"
    second.write_bytes(second.read_bytes()[:100])
    (parts / ".part-000002.parquet.tmp-1").write_bytes(b"PAR1")  # a part being written when the machine died
    (tmp_path / ".out.parquet.tmp-1").write_bytes(b"PAR1")  # the output being written
    result = run(source, "-o", output, *common)
    assert result.exit_code == 0, result.output
    summary = json.loads(output.with_name(output.name + ".summary.json").read_text())["inputs"][0]
    assert summary["state"] == "resumed" and summary["resumed_from_row"] == 10 and summary["rows_this_run"] == 40
    assert output.read_bytes() == reference.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_rows_rescued_before_a_crash_are_counted_by_the_run_that_resumes(export_copy, tmp_path, monkeypatch):
    """Rows the fp32 graph scored in windows an interrupted run finished are in the resumed run's `rescued_rows`
    (and warning), as in an uninterrupted run's: the count is kept with each part."""
    from tokenizers import Tokenizer

    source, output, reference = tmp_path / "in.parquet", tmp_path / "out.parquet", tmp_path / "reference.parquet"
    texts = sentences(50)
    pq.write_table(pa.table({"sentence": texts}), source)
    token = poison(export_copy, "int8", "3")  # "... on mat 3." and "Sentence number 3 ..."
    tokenizer = Tokenizer.from_file(str(export_copy / "tokenizer.json"))
    hit = [i for i, text in enumerate(texts) if token in tokenizer.encode(text).ids]
    assert len(hit) > 3 and min(hit) < 20 < max(hit)  # in the windows before the crash and after it
    common = ["--model", export_copy, "--window-rows", "10", "--variant", "int8"]
    assert run(source, "-o", reference, *common).exit_code == 0
    _crash_on_the_third_window(monkeypatch, source, output, *common)
    result = run(source, "-o", output, *common)
    assert result.exit_code == 0, result.output
    assert f"{len(hit)} row(s) got NaN or infinite logits from the int8 graph" in result.output
    for path, state in ((reference, "scored"), (output, "resumed")):
        summary = json.loads(path.with_name(path.name + ".summary.json").read_text())
        assert summary["inputs"][0]["state"] == state and summary["rescued_rows"] == len(hit)
    assert output.read_bytes() == reference.read_bytes()


def test_parts_left_by_a_crash_are_never_spliced_into_another_inputs_or_models_output(tiny_export, tmp_path,
                                                                                    monkeypatch):
    """Yesterday's run crashed after two windows; today's file under the same name, or the same file with another
    variant, is scored whole: the parts of the other work are discarded, never resumed from."""
    source, output = tmp_path / "feed.parquet", tmp_path / "out.parquet"
    parts = tmp_path / ".out.parquet.scorer-parts"
    common = ["--model", tiny_export, "--window-rows", "10"]
    for today, variant in ((sentences(50, offset=1000), "fp32"), (None, "int8")):
        pq.write_table(pa.table({"sentence": sentences(50)}), source)
        _crash_on_the_third_window(monkeypatch, source, output, *common, "--variant", "fp32")
        assert len(list(parts.glob("part-*"))) == 2 and not output.exists()
        if today is not None:  # a new day's file; else the same file, scored by another graph
            pq.write_table(pa.table({"sentence": today}), source)
        today = today or sentences(50)
        reference = tmp_path / f"reference-{variant}.parquet"
        assert run(source, "-o", reference, *common, "--variant", variant).exit_code == 0
        assert run(source, "-o", output, *common, "--variant", variant).exit_code == 0
        summary = json.loads(output.with_name(output.name + ".summary.json").read_text())["inputs"][0]
        assert summary["state"] == "scored" and summary["resumed_from_row"] == 0 and summary["rows_this_run"] == 50
        assert pq.read_table(output).equals(pq.read_table(reference))
        assert pq.read_table(output).column("sentence").to_pylist() == today and not parts.exists()
        output.unlink()


def _crash_on_the_third_window(monkeypatch, source: Path, output: Path, *options) -> None:
    """Run `scorer run` into `output` and crash it (not the input's fault) as its third window is finished."""
    from scorer.inference.classify import OnnxClassifier

    real, calls = OnnxClassifier.result_arrays, []

    def crash(self, scored):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("stand-in for a crash that is not the input's fault")
        return real(self, scored)

    monkeypatch.setattr(OnnxClassifier, "result_arrays", crash)
    assert run(source, "-o", output, *options).exit_code != 0
    monkeypatch.setattr(OnnxClassifier, "result_arrays", real)


def _file_size_limit(limit: int):
    def apply():  # in the child: writes past `limit` bytes fail with EFBIG, as on a full disk, instead of a signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_disk_that_fills_up_stops_the_run_with_exit_5_and_the_rerun_resumes(tiny_export, tmp_path):
    """A real write failure (a file-size limit on the process): one line, exit 5, no output at the final path,
    the finished windows kept; the rerun with room resumes and gives the uninterrupted run's file."""
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(6000)), "sentence": sentences(6000)}), source)
    common = ["--model", str(tiny_export), "--window-rows", "500", "--variant", "fp32", "--quiet"]
    reference, output = tmp_path / "reference.parquet", tmp_path / "out.parquet"
    assert run(source, "-o", reference, *common).exit_code == 0
    assert reference.stat().st_size > 60_000, "make the input bigger: the limit must stop the run halfway"
    command = [sys.executable, "-m", "scorer.cli", "run", str(source), "-o", str(output), *common]
    full = subprocess.run(command, capture_output=True, text=True, preexec_fn=_file_size_limit(60_000))
    assert full.returncode == 5 and full.stdout == "", full.stderr
    assert full.stderr.startswith(f"error: cannot write {output} (") and full.stderr.count("\n") == 1
    assert "resumes from its last finished window" in full.stderr
    assert not output.exists() and list(tmp_path.glob(".out.parquet.scorer-parts/part-*"))
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(output.with_name(output.name + ".summary.json").read_text())["inputs"][0]
    assert summary["state"] == "resumed" and summary["resumed_from_row"] > 0
    assert output.read_bytes() == reference.read_bytes()


def test_an_export_that_runs_out_of_room_exits_5_and_leaves_nothing(tiny_checkpoint, tmp_path):
    output = tmp_path / "onnx"
    command = [sys.executable, "-m", "scorer.cli", "export", "--checkpoint", str(tiny_checkpoint), "--output",
               str(output), "--variants", "fp32", "--quiet"]
    full = subprocess.run(command, capture_output=True, text=True, preexec_fn=_file_size_limit(20_000))
    assert full.returncode == 5 and full.stderr.startswith(f"error: cannot write {output} ("), full.stderr
    assert full.stderr.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_an_output_directory_that_cannot_be_written_is_refused_before_any_work(tiny_export, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("sentence\nfine\n")
    result = run(source, "--model", tiny_export, "-o", "/proc/out.parquet")  # root may write anywhere but here
    assert result.exit_code == 5 and "/proc is not writable" in result.output and result.output.count("\n") == 1


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(tiny_export, tmp_path):
    from scorer.data.lock import OutputLock
    from scorer.errors import OutputError

    output = tmp_path / "out.parquet"
    with OutputLock(output), pytest.raises(OutputError, match="another scorer run is writing"), OutputLock(output):
        pass
    with OutputLock(output):  # released: can be taken again
        pass


@pytest.mark.parametrize(
    "setup,code,message",
    [
        (lambda d: None, 3, "does not exist"),
        (lambda d: (d / "in.parquet").write_bytes(b"PAR1 garbage"), 3, "not a readable Parquet file"),
        (lambda d: (d / "in.csv").write_bytes(b"sentence\nfine\n\xff\xfe bad\n"), 3,
         "in.csv line 3: bytes that are not UTF-8 (a file saved in another encoding, as Excel saves Windows-1252); "
         "re-encode the file as UTF-8 (iconv -f cp1252 -t utf-8 in.csv > utf8-in.csv)"),
        (lambda d: (d / "in.csv").write_text("sentence,x\nfine,1\nragged,1,2\n"), 3, "line 3 (expected 2 fields"),
        (lambda d: (d / "in.csv").write_text("text\nfine\n"), 3,
         "column 'sentence' not found in {dir}/in.csv; columns are"),
        (lambda d: (d / "in.csv").write_text("sentence,label\nfine,1\nodd,7\n"), 3, "row 2: label '7'"),
        (lambda d: (d / "in.csv").write_text(""), 3, "is empty"),
        (lambda d: (d / "in.csv").write_text("sentence,sentence\na,b\n"), 3,
         "in.csv: column name(s) sentence appear more than once; rename them"),
        (lambda d: pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], ["sentence", "sentence"]),
                                  d / "in.parquet"), 3, "column name(s) sentence appear more than once"),
        (lambda d: (d / "in.csv").write_text("sentence,score,pred_score\nfine,1,2\n"), 3,
         "in.csv already has column(s) pred_score, the names scorer writes its results under; rename them"),
        (lambda d: (d / "in.csv.gz").write_bytes(gzip.compress(_many_lines())[:-2000]), 3,
         "in.csv.gz: cannot be decompressed (Truncated compressed stream); check that the file was copied whole"),
        (lambda d: (d / "in.csv.gz").write_bytes(b"sentence\nnot gzip\n"), 3,
         "in.csv.gz is plain text, not gzip-compressed; name it in.csv"),
        (lambda d: (d / "in.csv").write_bytes(gzip.compress(b"sentence\nfine\n")), 3,
         "in.csv is gzip-compressed; name it in.csv.gz (scorer decompresses"),
        (lambda d: (d / "in.tsv.bz2").write_bytes(bz2.compress(b"sentence\nfine\n\xff bad\n")), 3,
         "line 3: bytes that are not UTF-8"),
        (lambda d: (d / "in.csv.xz").write_bytes(b""), 3, "unknown file type '.xz'"),
    ],
)
def test_bad_inputs_get_one_line_an_exit_code_and_leave_nothing(tiny_export, tmp_path, setup, code, message):
    setup(tmp_path)
    name = next((p.name for p in tmp_path.iterdir()), "in.parquet")
    before = files_under(tmp_path)
    result = run(tmp_path / name, "--model", tiny_export)
    assert result.exit_code == code, result.output
    assert message.replace("{dir}", str(tmp_path)) in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("name", ["in.parquet", "in.csv", "in.tsv.gz"])
def test_an_input_without_rows_gives_an_output_without_rows(tiny_export, tmp_path, name):
    """A nightly feed's empty day (a header, or a Parquet schema, and no rows) is not an error: its output exists,
    with the input's columns and the result columns, and the run says so in a warning."""
    source = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(pa.table({"id": pa.array([], pa.int32()), "sentence": pa.array([], pa.string()),
                                 "label": pa.array([], pa.int64())}), source)
    else:
        text = "id\tsentence\tlabel\n" if ".tsv" in name else "id,sentence,label\n"
        source.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    result = run(source, "--model", tiny_export, "--check", "5", "--output", tmp_path / "out.parquet")
    assert result.exit_code == 0, result.output
    assert f"{source} has no data rows; its output has the columns and no rows" in result.output
    assert "nothing to evaluate" not in result.output  # said once, as above
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.num_rows == 0 and table.column_names == ["id", "sentence", "label", "pred_label", "pred_score",
                                                          "pred_status"]
    assert table.schema.field("id").type == (pa.int32() if name.endswith(".parquet") else pa.string())
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert summary["rows"] == 0 and summary["inputs"][0]["state"] == "scored"
    assert summary["inputs"][0]["evaluation"] is None
    assert summary["inputs"][0]["check"]["rows"] == 0
    again = run(source, "--model", tiny_export, "--output", tmp_path / "out.parquet")
    assert again.exit_code == 0 and "(1 skipped)" in again.output


def test_compressed_csv_and_tsv_are_read_as_they_are_decompressed(tiny_export, tmp_path):
    """A nightly feed's .csv.gz, .tsv.bz2, .csv.zst, and a Windows machine's EXPORT.CSV.GZ (read as text before:
    pyarrow knows lowercase names only): the same rows and scores as the plain file; outputs named without the
    compression suffix, in a directory and alone."""
    plain = tmp_path / "plain.csv"
    plain.write_bytes(_many_lines())
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.csv.gz").write_bytes(gzip.compress(plain.read_bytes()))
    (inbox / "b.tsv.bz2").write_bytes(bz2.compress(plain.read_bytes()))
    with pa.output_stream(str(inbox / "c.csv.zst"), compression="zstd") as stream:
        stream.write(plain.read_bytes())
    (inbox / "EXPORT.CSV.GZ").write_bytes(gzip.compress(plain.read_bytes()))
    common = ["--model", tiny_export, "--window-rows", "2000", "--variant", "fp32"]
    assert run(plain, *common).exit_code == 0
    reference = pq.read_table(tmp_path / "plain.scored.parquet")
    result = run(inbox, "--output", tmp_path / "out", *common)
    assert result.exit_code == 0, result.output
    assert files_under(tmp_path / "out") == ["EXPORT.parquet", "a.parquet", "b.parquet", "c.parquet",
                                             "scorer-summary.json"]
    for name in ("a", "b", "c", "EXPORT"):
        assert pq.read_table(tmp_path / "out" / f"{name}.parquet").equals(reference)
    assert run(inbox / "a.csv.gz", *common).exit_code == 0
    assert pq.read_table(inbox / "a.scored.parquet").equals(reference)


def test_model_problems_exit_4(export_copy, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("sentence\nfine\n")
    (export_copy / "manifest.json").rename(tmp_path / "manifest.json")
    result = run(source, "--model", export_copy)
    assert result.exit_code == 4 and "has no manifest.json" in result.output
    (tmp_path / "manifest.json").rename(export_copy / "manifest.json")
    # A tokenizer from another model (more tokens than the embedding has), even with its hash updated.
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(export_copy / "tokenizer.json"))
    tokenizer.add_tokens([f"extra{i}" for i in range(10)])
    tokenizer.save(str(export_copy / "tokenizer.json"))
    manifest = json.loads((export_copy / "manifest.json").read_text())
    manifest["tokenizer_files"]["tokenizer.json"] = sha256_file(export_copy / "tokenizer.json")
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    result = run(source, "--model", export_copy)
    assert result.exit_code == 4 and "tokenizer.json has 30532 tokens but the model only 30522" in result.output
    assert not list(tmp_path.glob("in.scored*")) and not list(tmp_path.glob(".in.*"))


def test_unwritable_output_exits_5(tiny_export, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("sentence\nfine\n")
    (tmp_path / "file").write_text("a file, not a directory")
    result = run(source, "--model", tiny_export, "-o", tmp_path / "file" / "out.parquet")
    assert result.exit_code == 5 and "file, not a directory" in result.output


def test_quiet_success_prints_only_the_summary_line(tiny_export, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("sentence\nfine\n")
    done = subprocess.run([sys.executable, "-m", "scorer.cli", "run", str(source), "--model", str(tiny_export),
                           "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.count("\n") == 1 and "1 rows in 1 file(s)" in done.stdout


_ARENA_LIMITED = """
import sys
import onnxruntime as ort
memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
ort.create_and_register_allocator(memory, ort.OrtArenaCfg(int(sys.argv[1]), 1, -1, -1))
real = ort.InferenceSession
def limited(path, sess_options=None, **kwargs):
    sess_options.add_session_config_entry("session.use_env_allocators", "1")
    return real(path, sess_options=sess_options, **kwargs)
ort.InferenceSession = limited
from scorer.cli import main
main(sys.argv[2:])
"""


def test_a_model_out_of_memory_stops_with_exit_6_and_the_rerun_resumes(tiny_export, tmp_path):
    """ONNX Runtime's arena limited to 16 MB (a GPU another process fills, say): the first window's small batch runs,
    the second's batch of 2,000 rows at the max length cannot: a real allocation failure of ORT's."""
    source, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    long = " ".join(["the committee postponed the decision"] * 20)  # past the tiny model's max length
    # the first window: 10 sentences to score (the rest have no text); the second: 2,000 rows at the max length
    pq.write_table(pa.table({"sentence": sentences(10) + [None] * 1990 + [long] * 2000}), source)
    options = [str(source), "--model", str(tiny_export), "-o", str(out), "--window-rows", "2000", "--max-tokens",
               "200000"]
    done = subprocess.run([sys.executable, "-c", _ARENA_LIMITED, str(16 << 20), "run", *options, "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 6, done.stderr
    assert done.stderr.startswith(f"error: {source}: the model ran out of memory on cpu (Available memory of ")
    assert "GiB of memory available to this process)" in done.stderr  # (what a container's limit leaves, say)
    assert done.stderr.endswith("lower --max-tokens (now 200,000), then run again: it resumes from its last "
                                "finished window\n")
    # with batches in flight (CUDA's default), each holding its own memory: that is said too
    done = subprocess.run([sys.executable, "-c", _ARENA_LIMITED, str(16 << 20), "run", *options, "--quiet",
                           "--infer-threads", "2", "-o", str(tmp_path / "two.parquet")], capture_output=True, text=True)
    assert done.returncode == 6 and "lower --max-tokens (now 200,000) or --infer-threads (now 2), then run" in \
        done.stderr
    assert not out.exists() and [p.name for p in (tmp_path / ".out.parquet.scorer-parts").glob("part-*")] == \
        ["part-000000.parquet"]
    assert run(*options).exit_code == 0
    whole = tmp_path / "whole.parquet"
    assert run(*options[:3], "-o", whole, *options[5:]).exit_code == 0
    assert pq.read_table(out).equals(pq.read_table(whole))


def test_a_device_too_full_for_the_self_check_stops_before_any_output_with_exit_6(tiny_export, tmp_path):
    # an arena of 128 KB (in a process of its own: ORT keeps one per process): not even the self-check's batch fits
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": sentences(10)}), source)
    done = subprocess.run([sys.executable, "-c", _ARENA_LIMITED, str(128 << 10), "run", str(source), "--model",
                           str(tiny_export), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 6, done.stderr
    assert done.stderr.startswith(f"error: {tiny_export}: the self-check's small batch ran out of memory on cpu "
                                  "(Available memory of ")
    assert done.stderr.endswith("GiB of memory available to this process); free memory there (is another process "
                                "using it?), then run again\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


@pytest.mark.parametrize("message, said", [
    ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running MatMul node. "
     "Name:'/encoder/MatMul' Status Message: /onnxruntime_src/onnxruntime/core/providers/cuda/cuda_call.cc:129 "
     "std::conditional_t<THRW, void, onnxruntime::common::Status> onnxruntime::CudaCall(ERRTYPE, const char*, "
     "const char*, SUCCTYPE, const char*, const char*, int) [with ERRTYPE = cudaError; bool THRW = true; SUCCTYPE = "
     "cudaError; std::conditional_t<THRW, void, onnxruntime::common::Status> = void] CUDA failure 2: out of memory ; "
     "GPU=0 ; hostname=gpu-7 ; file=cuda_allocator.cc ; line=47 ; expr=cudaMalloc((void**)&p, size);",
     "CUDA failure 2: out of memory"),
    ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Attention node. Name:'Attention_0' "
     "Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:376 void* onnxruntime::BFCArena::"
     "AllocateRawInternal(size_t, bool, onnxruntime::Stream*, bool, onnxruntime::WaitNotificationFn) Failed to "
     "allocate memory for requested buffer of size 1610612736",
     "Failed to allocate memory for requested buffer of size 1610612736"),
    ("[ONNXRuntimeError] : 1 : FAIL : CUBLAS failure 3: CUBLAS_STATUS_ALLOC_FAILED ; GPU=0 ; hostname=gpu-7",
     "[ONNXRuntimeError] : 1 : FAIL : CUBLAS failure 3: CUBLAS_STATUS_ALLOC_FAILED"),
    ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Gather node. Name:'Gather_3' "
     "Status Message: invalid index 40000", None),
])
def test_onnx_runtime_s_ways_of_saying_it_is_out_of_memory_are_told_apart(message, said):
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    from scorer.inference.session import memory_failure

    assert memory_failure(Fail(message)) == said
    assert memory_failure(MemoryError("out of memory")) is None  # (not ONNX Runtime's: a bug of ours, said as one)


def test_a_heartbeat_that_cannot_write_warns_once_and_the_run_goes_on(monkeypatch, caplog):
    """A running summary that cannot be written (a full disk, say) is warned of once, and tried again each beat:
    what the run itself does then decides what happens, as without the heartbeat."""
    import scorer.scoring.heartbeat

    monkeypatch.setattr(scorer.scoring.heartbeat, "HEARTBEAT_SECONDS", 0.01)
    calls = []

    def write():
        calls.append(time.perf_counter())
        raise OSError(28, "No space left on device")

    with scorer.scoring.heartbeat.Heartbeat(write) as beat:
        assert len(calls) == 1  # (as the block starts)
        # Each beat waits 20 times the last write's time at least: a loaded machine's first write (its warning
        # logged) can take 10 ms, so the beats are waited for, not counted after a fixed sleep.
        deadline = time.perf_counter() + 30
        while len(calls) < 5 and time.perf_counter() < deadline:
            time.sleep(0.01)
    said = [r.getMessage() for r in caplog.records if "running summary" in r.getMessage()]
    assert len(calls) >= 5 and not beat.thread.is_alive()
    assert said == ["the running summary could not be brought up to date ([Errno 28] No space left on device); "
                    "the run goes on"]
    count = len(calls)
    time.sleep(0.05)
    assert len(calls) == count  # (stopped with the block)
    with scorer.scoring.heartbeat.Heartbeat(write, enabled=False):
        time.sleep(0.05)
    assert len(calls) == count


def test_windows_left_beside_a_complete_output_are_removed_by_the_run_that_skips_it(tiny_export, tmp_path,
                                                                                       monkeypatch):
    """A run stopped after its output was renamed into place but before its finished windows were removed leaves
    a copy of the output's rows that nothing would resume from: the next run, which skips the output as up to date,
    removes them under the output's lock; windows of another making (another model's run stopped midway, which
    would resume from them) and windows whose output another run holds are kept."""
    from scorer.data.lock import OutputLock
    from scorer.scoring.parts import PartStore, work_dir

    source, output = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({"sentence": sentences(3_000)}), source)
    options = ["-o", output, "--model", tiny_export, "--window-rows", "1000", "--variant", "fp32"]
    real = PartStore.discard

    def stopped_first(self):  # (SIGTERM landing between the rename and the removal)
        raise KeyboardInterrupt

    monkeypatch.setattr(PartStore, "discard", stopped_first)
    assert run(source, *options).exit_code != 0
    monkeypatch.setattr(PartStore, "discard", real)
    parts = work_dir(output)
    assert pq.read_table(output).num_rows == 3_000 and len(list(parts.glob("part-*.parquet"))) == 3
    state = (parts / "state.json").read_text()
    with OutputLock(output):  # (another run holds the output: kept)
        assert run(source, *options).exit_code == 0
    assert parts.is_dir()
    (parts / "state.json").write_text(state.replace('"model_sha256": "', '"model_sha256": "another-'))
    result = run(source, *options)
    assert result.exit_code == 0 and "1 skipped" in result.output and parts.is_dir()  # (another making's: kept)
    (parts / "state.json").write_text(state)
    result = run(source, *options)
    assert result.exit_code == 0 and "1 skipped" in result.output
    assert not parts.exists() and pq.read_table(output).num_rows == 3_000


def test_windows_another_scorer_version_left_are_scored_again_not_resumed(tiny_export, tmp_path, monkeypatch):
    """A run stopped midway, then scorer upgraded (0.1.0 read a one-column CSV's blank lines as no row, 0.2.0 as
    rows): resuming skipped as many rows as the old parts held, counted the new way, and spliced the two readings
    into one output, rows lost and repeated. Windows another version left are discarded and the input scored whole."""
    from scorer import __version__
    from scorer.data.write import OutputSink
    from scorer.scoring.parts import work_dir

    assert __version__ != "0.1.0"  # (else the state below would be this version's own)
    source, output = tmp_path / "in.csv", tmp_path / "out.parquet"
    lines = [f"{s}\n" if i % 5 else "\n" for i, s in enumerate(sentences(3_000))]  # (every fifth a blank line)
    source.write_text("sentence\n" + "".join(lines))
    options = ["-o", output, "--model", tiny_export, "--window-rows", "1000", "--variant", "fp32"]

    def stopped(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(OutputSink, "finish", stopped)
    assert run(source, *options).exit_code != 0
    monkeypatch.undo()
    state = work_dir(output) / "state.json"
    assert len(list(work_dir(output).glob("part-*.parquet"))) == 3
    state.write_text(state.read_text().replace(f'"scorer": "{__version__}"', '"scorer": "0.1.0"'))
    for part in sorted(work_dir(output).glob("part-*.parquet"))[1:]:
        part.unlink()  # (the old version's one window: 1,000 rows of its reading, which has no blank rows)
    result = CliRunner().invoke(main, ["run", *map(str, [source, *options])])
    assert result.exit_code == 0 and "discarding unfinished work" in result.output, result.output
    scored = pq.read_table(output)
    assert scored.num_rows == 3_000 and scored.column("status").to_pylist().count("empty") == 600


def test_windows_of_an_input_that_is_gone_are_removed_and_those_that_can_resume_kept(tiny_export, tmp_path,
                                                                                      monkeypatch):
    """An inbox whose files expire: a run stopped midway through b.parquet left its finished windows under --output,
    then b.parquet was removed; nothing can resume them, so the next run over the inbox removes them (they stayed
    forever). Windows of an input still there, though not in this run, and windows whose output another run holds,
    are kept."""
    from scorer.data.lock import OutputLock
    from scorer.scoring.parts import work_dir

    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    for name in ("a", "b", "c"):
        pq.write_table(pa.table({"sentence": sentences(30)}), inbox / f"{name}.parquet")
    options = ["--model", tiny_export, "--window-rows", "10", "--variant", "fp32"]
    for name in ("b", "c"):
        _crash_on_the_third_window(monkeypatch, inbox / f"{name}.parquet", out / f"{name}.parquet", *options)
    b_parts, c_parts = work_dir(out / "b.parquet"), work_dir(out / "c.parquet")
    assert len(list(b_parts.glob("part-*"))) == 2 and len(list(c_parts.glob("part-*"))) == 2
    (inbox / "b.parquet").unlink()
    with OutputLock(out / "b.parquet"):  # (another run holds b's output: kept)
        assert run(f"{inbox}/a*", "-o", out, *options).exit_code == 0
    assert b_parts.is_dir()
    result = CliRunner().invoke(main, ["run", f"{inbox}/a*", "-o", str(out), *map(str, options)])
    assert result.exit_code == 0 and "1 skipped" in result.output, result.output
    assert not b_parts.exists() and c_parts.is_dir()  # (c is still there, though not in this run: kept)
    assert f"removed the finished windows of {(inbox / 'b.parquet').resolve()}, which is gone" in result.output
    result = run(inbox, "-o", out, *options)
    assert result.exit_code == 0 and "1 resumed" in result.output, result.output
    assert files_under(out) == ["a.parquet", "c.parquet", "scorer-summary.json"]


@pytest.mark.parametrize("option", ["-o", "--summary", "--report"])
def test_a_pipe_at_an_output_s_path_is_refused_before_any_work_and_kept(tiny_export, tmp_path, option):
    source, fifo = tmp_path / "in.parquet", tmp_path / "fifo.parquet"
    pq.write_table(pa.table({"sentence": sentences(5), "label": [0, 1, 0, 1, 0]}), source)
    os.mkfifo(fifo)
    given = {"-o": fifo, "--summary": fifo, "--report": fifo}
    other = [] if option == "-o" else ["-o", tmp_path / "out.parquet"]
    result = run(source, "--model", tiny_export, option, given[option], *other, "--overwrite")
    assert result.exit_code == 5 and result.output.count("\n") == 1, result.output
    assert f"{'--output' if option == '-o' else option} {fifo} is a pipe, and scorer writes under a temporary " \
           "name" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.parquet", "in.parquet"] and fifo.is_fifo()


def test_an_output_name_with_no_room_for_scorer_s_names_beside_it_is_refused_before_any_work(tiny_export, tmp_path):
    """An input named with 235 bytes gave 'unexpected OSError: File name too long' (exit 1): its output's name fits
    the file system's 255 bytes, the temporary name beside it does not. The longest name scorer makes from an
    output's, a CSV output's record under its temporary name, is 26 bytes longer. In an inbox, that input alone
    fails."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": sentences(5)}), source)
    fits = tmp_path / ("f" * (limit - 26 - len(".csv")) + ".csv")
    result = CliRunner().invoke(main, ["run", str(source), "--model", str(tiny_export), "-o", str(fits), "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(os.fsencode(fits.name)) == limit - 26 and (tmp_path / f".{fits.name}.scorer.json").is_file()
    assert fits.with_name(fits.name + ".summary.json").is_file()
    too_long = tmp_path / ("g" * (limit - 25 - len(".csv")) + ".csv")
    result = CliRunner().invoke(main, ["run", str(source), "--model", str(tiny_export), "-o", str(too_long), "-q"])
    assert result.exit_code == 5 and result.output == \
        f"error: --output {too_long}: its name is {limit - 25} bytes, and the names scorer makes from it for the " \
        f"files it keeps beside it add up to 26 to that, past this file system's {limit}; give --output a name of at " \
        f"most {limit - 26} bytes\n"
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(pa.table({"sentence": sentences(5)}), inbox / "ok.parquet")
    pq.write_table(pa.table({"sentence": sentences(5)}), inbox / ("h" * (limit - 25 - len(".csv")) + ".parquet"))
    result = run(inbox, "--model", tiny_export, "-o", tmp_path / "out", "--format", "csv")
    assert result.exit_code == 5 and "1 of 2 inputs failed" in result.output, result.output
    assert files_under(tmp_path / "out") == [".ok.csv.scorer.json", "ok.csv", "scorer-summary.json"]
    checkpoint = tmp_path / ("c" * (limit - 12))
    result = CliRunner().invoke(main, ["train", "--data", str(source), "--output", str(checkpoint), "--quiet"])
    assert result.exit_code == 5 and "add up to 13 to that" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.lstrip(".").startswith("f")) == [
        "in.parquet", "inbox", "out"]  # (no checkpoint)


def test_a_directory_under_the_input_that_cannot_be_read_fails_the_run_rather_than_hide_its_inputs(tiny_export,
                                                                                                  tmp_path,
                                                                                                  monkeypatch):
    """A directory this account cannot list (an upstream job's, written 0700) was skipped by the search, its files
    left unscored and the run ending with exit 0 (seen with a run as `nobody`). The tests run as root, whom no
    permission stops, so the listing's refusal is made here where the search meets it: os.scandir for a directory
    search, os.access for a glob's directories."""
    import os as real_os

    inbox = tmp_path / "inbox"
    (inbox / "day2").mkdir(parents=True)
    (inbox / ".cache").mkdir()
    for path in (inbox / "a.parquet", inbox / "day2" / "b.parquet"):
        pq.write_table(pa.table({"sentence": sentences(3)}), path)
    scandir, access = real_os.scandir, real_os.access

    def denied(path="."):
        if Path(path).name in ("day2", ".cache"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(real_os, "scandir", denied)
    for spec, searched in ((inbox, inbox), (f"{inbox}/*/*.parquet", f"{inbox}/*/*.parquet")):
        if not isinstance(spec, Path):
            monkeypatch.setattr(real_os, "scandir", scandir)
            monkeypatch.setattr(real_os, "access", lambda p, mode: Path(p).name != "day2" and access(p, mode))
        result = run(spec, "--model", tiny_export, "-o", tmp_path / "out")
        assert result.exit_code == 3 and result.output == f"error: {inbox / 'day2'} cannot be read (Permission " \
            f"denied), so the inputs in it cannot be found; make it readable by this account, or move it out of " \
            f"{searched}\n"
        assert not (tmp_path / "out").exists()
    monkeypatch.setattr(real_os, "access", access)
    monkeypatch.setattr(real_os, "scandir", lambda path=".": denied(path) if Path(path).name == ".cache"
                        else scandir(path))
    assert run(inbox, "--model", tiny_export, "-o", tmp_path / "out").exit_code == 0  # (a hidden one is not searched)


def test_links_under_the_input_are_followed_once_and_a_link_to_nothing_is_not_passed_over(tiny_export, tmp_path):
    """An inbox of links (`today -> /mnt/feed/2026-12-07`, `ln -s /data/feed/*.csv inbox/`): the search passed over a
    link to a directory, its files unscored and unlisted, and over a link whose target was gone (a mount that is
    down), and the run ended with exit 0. A linked directory is searched now, once (a link to a directory inside the
    input, or back up to it, is not searched again); a link to nothing named as a data file is an input that
    fails, naming its target, after the others are scored (exit 3); any other link to nothing is listed as left
    out, so that a monitor sees it."""
    inbox, feed = tmp_path / "inbox", tmp_path / "feed"
    (inbox / "real").mkdir(parents=True)
    feed.mkdir()
    pq.write_table(pa.table({"sentence": sentences(3)}), inbox / "a.parquet")
    pq.write_table(pa.table({"sentence": sentences(2)}), inbox / "real" / "c.parquet")
    pq.write_table(pa.table({"sentence": sentences(4)}), feed / "b.parquet")
    (inbox / "today").symlink_to(feed)  # a directory outside the input
    (inbox / "alias").symlink_to(inbox / "real")  # inside it: searched as real/ already
    (inbox / "real" / "up").symlink_to(inbox)  # a loop
    (inbox / "gone.parquet").symlink_to(tmp_path / "mnt" / "gone.parquet")
    (inbox / "yesterday").symlink_to(tmp_path / "mnt" / "2026-12-06")
    out = tmp_path / "out"
    result = run(inbox, "--model", tiny_export, "-o", out)
    assert result.exit_code == 3, result.output
    assert files_under(out) == ["a.parquet", "real/c.parquet", "scorer-summary.json", "today/b.parquet"]
    summary = json.loads((out / "scorer-summary.json").read_text())
    assert summary["rows"] == 9 and summary["planned_inputs"] == 4
    failed = [unit for unit in summary["inputs"] if unit["state"] == "failed"]
    assert [unit["input"] for unit in failed] == [str(inbox / "gone.parquet")]
    assert failed[0]["error"] == f"{inbox / 'gone.parquet'} is a link to {tmp_path / 'mnt' / 'gone.parquet'}, " \
        "which does not exist (a mount that is down, a file moved away?); restore its target, or remove the link"
    assert summary["left_out"] == {"yesterday": "a link to nothing (a mount that is down, a directory moved away?)"}
    # glob's ** follows links round the loop (real/up/real/up/...): with alias/ beside it, paths without end, each an
    # input, in a run that never started; refused now, naming the loop. Without one, a glob lists what it matches.
    result = run(f"{inbox}/**/*.parquet", "--model", tiny_export, "-o", tmp_path / "globbed")
    assert result.exit_code == 3 and result.output == f"error: {inbox}/**/*.parquet: its ** would follow links round " \
        f"a loop, at {inbox / 'alias' / 'up'} (back to {inbox}); name the directory as INPUT instead (its search " \
        "follows each directory once), or remove the link\n", result.output
    (inbox / "real" / "up").unlink()
    (inbox / "gone.parquet").unlink()
    assert run(f"{inbox}/**/*.parquet", "--model", tiny_export, "-o", tmp_path / "globbed").exit_code == 0
    assert files_under(tmp_path / "globbed") == ["a.parquet", "alias/c.parquet", "real/c.parquet",
                                                 "scorer-summary.json", "today/b.parquet"]


@pytest.mark.parametrize("option", ["--summary", "--report"])
def test_a_summary_or_report_that_cannot_be_written_is_refused_before_any_output_naming_its_option(tiny_export,
                                                                                                    tmp_path, option):
    """--report in a directory this account cannot write failed the run after its output was written, saying
    'choose another --output' (seen as nobody; root can write anywhere, so here it lies under a file)."""
    source, blocking = tmp_path / "in.parquet", tmp_path / "file"
    pq.write_table(pa.table({"sentence": sentences(5), "label": [0, 1, 0, 1, 0]}), source)
    blocking.write_text("")
    result = run(source, "--model", tiny_export, "-o", tmp_path / "out.parquet", option, blocking / "r.md")
    assert result.exit_code == 5 and result.output == f"error: {blocking} is a file, not a directory; choose " \
        f"another {option}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "in.parquet"]


def test_a_killed_run_resumes_a_compressed_csv_output_to_the_same_text(tiny_export, tmp_path):
    """A .csv.gz output grows, compressed, under its temporary name: after kill -9 the rerun resumes from the
    finished windows and writes the text an uninterrupted run writes."""
    source = tmp_path / "big.parquet"
    pq.write_table(pa.table({"id": list(range(10_000)), "sentence": [s * 3 for s in sentences(10_000)]}), source)
    common = ["--model", str(tiny_export), "--window-rows", "1000", "--variant", "fp32"]
    reference, output = tmp_path / "reference.csv.gz", tmp_path / "out.csv.gz"
    assert run(source, "-o", reference, *common).exit_code == 0
    process = _midway([str(source), "-o", str(output), *common], tmp_path / ".out.csv.gz.scorer-parts", 3)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not output.exists()
    result = run(source, "-o", output, *common)
    assert result.exit_code == 0 and "resumed" in result.output, result.output
    assert gzip.decompress(output.read_bytes()) == gzip.decompress(reference.read_bytes())
    assert not list(tmp_path.glob(".out.csv.gz.tmp-*"))


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_the_running_summary_says_how_far_the_input_being_scored_got(tiny_export, tmp_path, fmt):
    """A run of one big input (the usual nightly job) listed no input in its running summary until it had finished
    it: a monitor saw "running", 0 rows, for hours. The input underway is listed with its rows done of how many (a
    CSV file's estimated from what was read: here one block holds it all), its rate and the time left; a finished run
    lists none."""
    source, last = tmp_path / f"big.{fmt}", tmp_path / "last-run.json"
    table = pa.table({"sentence": [s * 3 for s in sentences(20_000)]})
    pq.write_table(table, source) if fmt == "parquet" else pacsv.write_csv(table, source)
    args = [str(source), "-o", str(tmp_path / "out.parquet"), "--model", str(tiny_export), "--window-rows", "1000",
            "--variant", "fp32", "--summary", str(last), "--quiet"]
    process, seen = _killed_once(args, last, lambda seen: seen.get("underway") and
                                 seen["underway"][0]["rows_done"] >= 2_000)
    assert seen.get("underway"), "the run finished before its running summary listed the input"
    assert seen["state"] == "running" and seen["inputs"] == [] and seen["pid"] == process.pid
    [underway] = seen["underway"]
    assert underway["input"] == str(source) and underway["rows_total"] == 20_000
    assert underway["rows_total_exact"] or fmt == "csv"
    assert underway["rows_done"] % 1_000 == 0 and 2_000 <= underway["rows_done"] < 20_000
    assert underway["rows_per_second"] > 0 and underway["seconds_left"] > 0
    result = run(source, "-o", tmp_path / "out.parquet", "--model", tiny_export, "--window-rows", "1000",
                 "--variant", "fp32", "--summary", last)
    assert result.exit_code == 0, result.output
    done = json.loads(last.read_text())
    assert done["state"] == "finished" and done["underway"] == [] and done["inputs"][0]["rows"] == 20_000


def test_a_log_gets_a_progress_line_every_minute_where_no_terminal_shows_the_bar(tiny_export, tmp_path, monkeypatch):
    """A cron job's log has no terminal, so the progress bar is off: a line every minute says how far the input got
    (here every window: the interval set to 0), with its rate and the time left; --quiet keeps the log to the result."""
    import scorer.scoring.progress

    monkeypatch.setattr(scorer.scoring.progress, "LOG_SECONDS", 0.0)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"sentence": sentences(1_000)}), source)
    options = ["run", str(source), "--model", str(tiny_export), "--window-rows", "250", "--variant", "fp32",
               "--overwrite"]
    result = CliRunner().invoke(main, options)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("in.parquet: ")]
    assert [line.split(" rows/s")[0].rsplit(", ", 1)[0] for line in lines] == [
        f"in.parquet: {done:,} rows of 1,000 ({done // 10}%)" for done in (250, 500, 750, 1_000)]
    assert all(re.search(r", [\d,]+ rows/s, about \d+ s left$", line) for line in lines[:-1])
    assert lines[-1].endswith(" rows/s")  # (nothing left)
    quiet = CliRunner().invoke(main, [*options, "--quiet"])
    assert quiet.exit_code == 0 and "in.parquet: " not in quiet.output


def test_a_csv_inputs_progress_lines_give_its_rows_as_an_estimate_until_it_has_been_read(tiny_export, tmp_path,
                                                                                         monkeypatch):
    """A CSV file does not say how many rows it holds: its progress lines said none, and so no time left. Its rows
    are estimated from the blocks read so far (here blocks of 4 KiB: the file is read in many) and said as such."""
    import scorer.data.csvrows
    import scorer.scoring.progress

    monkeypatch.setattr(scorer.scoring.progress, "LOG_SECONDS", 0.0)
    monkeypatch.setattr(scorer.data.csvrows, "BLOCK", 1 << 12)
    source = tmp_path / "in.csv"
    pacsv.write_csv(pa.table({"sentence": sentences(1_000)}), source)
    result = CliRunner().invoke(main, ["run", str(source), "--model", str(tiny_export), "--window-rows", "250",
                                       "--variant", "fp32", "--tokenize-threads", "1"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("in.csv: ")]
    assert len(lines) == 4 and all(re.match(r"in.csv: [\d,]+ rows of (about )?[\d,]+ \(\d+%\)", s) for s in lines)
    assert " of about " in lines[0] and lines[-1].startswith("in.csv: 1,000 rows of 1,000 (100%)"), lines


@pytest.mark.parametrize("option", ["--summary", "--report"])
def test_a_summary_or_report_path_that_is_a_directory_is_refused_before_any_work_and_kept(tiny_export, tmp_path,
                                                                                           option):
    """`--summary DIR` moved DIR aside and deleted it, with what it held, to put the summary file in its place."""
    source, folder = tmp_path / "in.parquet", tmp_path / "runs"
    pq.write_table(pa.table({"sentence": sentences(5), "label": [0, 1, 0, 1, 0]}), source)
    folder.mkdir()
    (folder / "yesterday.json").write_text("{}")
    result = run(source, "--model", tiny_export, "-o", tmp_path / "out.parquet", option, folder)
    assert result.exit_code == 5, result.output
    assert f"{option} {folder} is a directory, and scorer writes a file there" in result.output
    assert [p.name for p in folder.iterdir()] == ["yesterday.json"] and not (tmp_path / "out.parquet").exists()


def test_a_file_whose_name_is_not_utf8_fails_alone_and_the_others_are_scored(tiny_export, tmp_path):
    """A file named in another encoding under the input (`caf\\xe9.csv`, from a Windows share) stopped the whole run
    with an unexpected UnicodeEncodeError from pyarrow (exit 1), nothing scored; it is now an input that fails,
    saying to rename it, and the others are scored (exit 3)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    odd = os.fsdecode(bytes(inbox) + b"/caf\xe9.csv")
    for path in (odd, inbox / "ok.csv"):
        with open(path, "w") as handle:
            handle.write("sentence\n" + "".join(f"{s}\n" for s in sentences(5)))
    out = tmp_path / "out"
    result = run(inbox, "-o", out, "--model", tiny_export)
    assert result.exit_code == 3, result.output
    summary = json.loads((out / "scorer-summary.json").read_text())
    failed, scored = summary["inputs"]
    assert (scored["state"], scored["rows"], failed["state"]) == ("scored", 5, "failed")
    assert failed["error"] == f"{inbox}/caf\\xe9.csv: the file's name is not UTF-8 (bytes of another encoding, shown " \
        "as \\x..), and pyarrow, which reads it, opens UTF-8 names only; rename it (convmv -f cp1252 -t utf-8 " \
        "--notest FILE, or mv)"
    assert sorted(os.listdir(out)) == ["ok.parquet", "scorer-summary.json"]
