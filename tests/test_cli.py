"""The command line itself: every command has help, is in the README, and errors are one line."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from scorer.cli import main
from scorer.config import ExportConfig, RunConfig, TrainConfig
from scorer.errors import EXIT_CODES
from scorer.inference.defaults import DEFAULT_INFER_THREADS, DEFAULT_MAX_TOKENS, DEFAULT_WINDOW_ROWS
from scorer.packaged import example_file
from tests.conftest import make_changeable, make_unchangeable

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help_and_is_documented(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output
    assert f"scorer {command}" in README.read_text()


def test_every_option_is_in_the_readme():
    readme = README.read_text()
    missing = [f"{name} {option}" for name, command in main.commands.items() for param in command.params
               for option in (*param.opts, *param.secondary_opts)
               if option.startswith("--") and option != "--help" and option not in readme]
    assert not missing, f"options not in the README: {', '.join(missing)}"


@pytest.mark.parametrize(("command", "config"), [("train", TrainConfig), ("export", ExportConfig), ("run", RunConfig)])
def test_every_default_in_the_help_is_the_config_default(command, config):
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    by_provider = {"max_tokens": DEFAULT_MAX_TOKENS, "window_rows": DEFAULT_WINDOW_ROWS,
                   "infer_threads": DEFAULT_INFER_THREADS}
    checked = 0
    for param in main.commands[command].params:
        value = defaults.get(param.name, dataclasses.MISSING)
        if param.name in by_provider:
            table = by_provider[param.name]
            assert f"{table['cuda']} on CUDA, {table['cpu']} on a CPU" in param.help, param.name
        elif value is dataclasses.MISSING or value is None or isinstance(value, (bool, tuple)):
            continue  # no option, a factory (the packaged model), "decided at run time", a flag, a list
        else:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            assert f"[default: {shown}]" in " ".join(param.help.split()), (param.name, param.help)
        checked += 1
    assert checked >= {"train": 25, "export": 9, "run": 8}[command]


def test_exit_codes_are_in_the_help_and_the_readme():
    help_text = CliRunner().invoke(main, ["--help"]).output
    readme = README.read_text()
    for code, meaning in EXIT_CODES.items():
        assert f"{code:>3}  {meaning}" in help_text
        assert f"| {code} |" in readme


def test_bad_option_values_are_config_errors(tmp_path):
    result = CliRunner().invoke(main, ["train", "--epochs", "0", "--output", str(tmp_path / "c")])
    assert result.exit_code == 2 and result.output.strip() == "error: --epochs must be at least 1, not 0"
    result = CliRunner().invoke(main, ["train", "--seed", "-1", "--output", str(tmp_path / "c")])  # (was exit 1)
    assert result.exit_code == 2 and result.output.strip() == "error: --seed must be between 0 and 4294967295, not -1"
    result = CliRunner().invoke(main, ["export", "--variants", "fp32,bf16", "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--variants must be one of fp32, fp16, int8, not 'bf16'" in result.output
    result = CliRunner().invoke(main, ["run", str(tmp_path / "in.csv"), "--max-tokens", "0"])
    assert result.exit_code == 2 and result.output.strip() == "error: --max-tokens must be at least 1, not 0"


@pytest.mark.parametrize("args", [
    ["train", "--text-column", "label"], ["train", "--text-column", "x", "--label-column", "x"],
    ["export", "--text-column", "s", "--label-column", "s"],
    ["run", "in.csv", "--label-column", "s", "--text-column", "s"],
])
def test_one_column_as_both_text_and_labels_is_refused_before_any_work(tmp_path, monkeypatch, args):
    """Training on the label column as text learns the answer (it trained, silently)."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    column = args[args.index("--text-column") + 1]
    assert result.exit_code == 2 and result.output == f"error: --text-column '{column}' is the label column too " \
        "(--label-column); the labels must be a column of their own: pass --label-column with it\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [
    ["run", "-"], ["run", "in.parquet", "--output", "-"], ["run", "in.parquet", "--summary", "-"],
    ["run", "in.parquet", "--report", "-"], ["train", "--data", "-"], ["train", "--output", "-"],
    ["export", "--data", "-"], ["export", "--output", "-"],
])
def test_a_dash_for_standard_input_or_output_is_refused_before_any_work(tmp_path, monkeypatch, args):
    """Many tools read "-" as standard input or output; scorer reads and writes files (outputs renamed into place
    when complete), so "-" is refused, not made a file or directory named "-"."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    option = args[args.index("-") - 1] if args.index("-") > 1 else "INPUT"
    stream = "input" if option in ("INPUT", "--data") else "output"
    assert result.output.startswith(f"error: {option} -: scorer ") and f"not standard {stream}" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [
    [b"run", b"caf\xe9.csv"], [b"run", b"in.csv", b"--output", b"d\xe9j\xe0/out.parquet"],
    [b"run", b"in.csv", b"--model", b"mod\xe8le"], [b"run", b"in.csv", b"--summary", b"r\xe9sum\xe9.json"],
    [b"train", b"--data", b"caf\xe9.csv"], [b"train", b"--output", b"ck\xe9"], [b"train", b"--model", b"m\xe9"],
    [b"export", b"--checkpoint", b"ck\xe9"], [b"export", b"--output", b"onnx\xe9"],
])
def test_a_path_that_is_not_utf8_is_refused_before_any_work(tmp_path, args):
    """A name in another encoding (an old archive's, a Windows share's: bytes Python holds as lone surrogates) made
    pyarrow, ONNX Runtime or torch fail deep inside with an unexpected UnicodeEncodeError (exit 1), and export with a
    TypeError whose message held the whole traced graph. It is a configuration error naming the option and the path
    (its odd bytes shown as \\x..)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable.encode(), b"-m", b"scorer.cli", *args], cwd=tmp_path, capture_output=True)
    said = result.stderr.decode()
    option = next((a.decode() for a in args[1:] if a.startswith(b"--")), "INPUT")
    shown = next(a for a in args if any(c > 127 for c in a)).decode("utf-8", "backslashreplace")
    assert result.returncode == 2 and said.count("\n") == 1, said
    assert said.startswith(f"error: {option} {shown}: the path is not UTF-8 (bytes of another encoding, shown as "
                           "\\x..)"), said
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["train", "--max-length", "900"], ["export", "--opset", "3"]])
def test_a_bad_option_of_train_or_export_is_refused_before_pytorch_is_imported(args):
    """Options are checked first, so a nightly job's typo costs a fifth of a second, not PyTorch's imports."""
    import subprocess
    import sys

    code = (f"import sys\nfrom scorer.cli import main\ntry:\n    main({args!r})\nexcept SystemExit as exc:\n"
            "    print(exc.code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"] and done.stderr.startswith(f"error: {args[1]} "), done
    assert done.stderr.count("\n") == 1, done.stderr


def test_help_is_fast_because_torch_is_not_imported():
    import subprocess
    import sys

    code = "import sys; sys.modules['torch'] = None; sys.modules['onnxruntime'] = None\n" \
           "from scorer.cli import main\nmain(['--help'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and "Usage: " in done.stdout, done.stderr


def test_onnxruntime_telemetry_is_off_unless_its_owner_turns_it_on(tmp_path):
    """ONNX Runtime (1.29 on, Linux) sends telemetry unless ORT_DISABLE_TELEMETRY (or CI) is set: scorer sets it
    where it is not set, before onnxruntime is imported. Where HOME cannot be written (chattr +i, where root can
    set it), ONNX Runtime's telemetry would also print a warning at import, in a cron job's log: none here."""
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items()
           if key not in ("CI", "ORT_DISABLE_TELEMETRY", "ORT_RUNNING_UNIT_TESTS")}
    code = "import os, scorer.cli, onnxruntime; print(os.environ['ORT_DISABLE_TELEMETRY'])"
    home = tmp_path / "home"
    home.mkdir()
    unwritable = make_unchangeable(home)
    try:
        off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**env, "HOME": str(home)})
        on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**env, "ORT_DISABLE_TELEMETRY": "0"})
    finally:
        if unwritable:
            make_changeable(home)
    assert off.returncode == 0 and off.stdout.strip() == "1" and "telemetry" not in off.stderr, off.stderr
    assert on.returncode == 0 and on.stdout.strip() == "0", on.stderr


def test_a_demo_workdir_that_cannot_be_made_is_said_in_one_line_before_any_work(tmp_path):
    """`scorer demo` in a directory this account cannot write (a cron job started in /) said 'unexpected
    PermissionError' (exit 1). Root may write anywhere, so here the work directory lies under a file."""
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "file" / "demo"), "--quiet"])
    assert result.exit_code == 5 and result.output == f"error: cannot write to --workdir {tmp_path / 'file' / 'demo'}" \
        " (Not a directory); choose a directory this account can write (--workdir DIR)\n"


def test_a_reader_of_standard_output_that_went_away_ends_the_run_as_sigpipe_would(tiny_export, tmp_path):
    """`scorer run ... | head -1` whose reader left before the last line: exit 1, 'unexpected BrokenPipeError',
    though every output was written. Now exit 141, silent, as a tool that SIGPIPE kills."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "scorer", "run", str(example_file("demo.csv")), "--model",
                               str(tiny_export), "-o", str(tmp_path / "out.parquet"), "--quiet"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == ""
    assert (tmp_path / "out.parquet").is_file()


def test_a_run_started_with_its_standard_streams_closed_scores_and_exits_as_it_would(tiny_export, tmp_path):
    """`scorer run … 2>&-` (a daemon's job with its descriptors closed) failed with exit 1, writing nothing and,
    with no stderr, saying nothing: Python starts without sys.stderr then. Closed streams get /dev/null now."""
    import os
    import subprocess
    import sys

    def closed():
        for descriptor in (0, 1, 2):
            os.close(descriptor)

    command = [sys.executable, "-m", "scorer", "run", str(example_file("demo.csv")), "--model", str(tiny_export)]
    done = subprocess.run([*command, "-o", str(tmp_path / "out.parquet")], preexec_fn=closed, timeout=120)
    assert done.returncode == 0 and (tmp_path / "out.parquet").is_file()
    done = subprocess.run([*command, "--text-column", "nope", "-o", str(tmp_path / "no.parquet")], preexec_fn=closed,
                          timeout=120)
    assert done.returncode == 3 and not (tmp_path / "no.parquet").exists()


def test_a_name_with_a_line_break_leaves_the_error_and_the_result_one_line_each(tiny_export, tmp_path):
    """A file named with a line break (or an escape sequence) split the one-line error in two, and a log reader took
    the second half for another line; such characters are written as escapes."""
    bad, good = tmp_path / "bad\nday.csv", tmp_path / "good\x1b[2Jday.csv"
    bad.write_text("text\nA cat sat.\n")
    good.write_text("sentence\nA cat sat.\n")
    refused = CliRunner().invoke(main, ["run", str(bad), "--model", str(tiny_export), "-q"])
    assert refused.exit_code == 3 and refused.output.count("\n") == 1
    assert refused.output.startswith(f"error: column 'sentence' not found in {tmp_path}/bad\\nday.csv; columns are "
                                     "text")
    scored = CliRunner().invoke(main, ["run", str(good), "--model", str(tiny_export), "-q"])
    assert scored.exit_code == 0 and scored.output.count("\n") == 1, scored.output
    assert scored.output.rstrip().endswith("-> " + str(tmp_path / "good\\x1b[2Jday.scored.parquet"))
    assert (tmp_path / "good\x1b[2Jday.scored.parquet").is_file()


def test_a_report_named_json_is_refused_saying_what_to_name_it(tiny_export, tmp_path):
    """--report r.json: its JSON goes beside it under the name ending in .json, the report's own; the refusal said
    "--report's JSON r.json would replace --report r.json"."""
    source = example_file("demo.csv")
    result = CliRunner().invoke(main, ["run", str(source), "--model", str(tiny_export), "-o",
                                       str(tmp_path / "out.parquet"), "--report", str(tmp_path / "r.json"), "-q"])
    assert result.exit_code == 2 and result.output.endswith("which would be the report itself; name the report r.md\n")
    assert list(tmp_path.iterdir()) == []


def test_a_command_raises_its_open_file_limit_to_the_hard_one():
    """macOS starts processes with 256 open files and some containers with fewer, where the hard limit allows more:
    a command raises its own (many small inputs scored together hold files open)."""
    import resource

    from scorer.command import _more_open_files

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"this process's hard open-file limit is {hard}")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        _more_open_files()
        raised, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert raised == (65536 if hard == resource.RLIM_INFINITY else min(hard, 65536))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
