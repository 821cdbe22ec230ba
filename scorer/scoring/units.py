"""Units of work: INPUT (a file, a directory or a glob) expanded into independent input → output pairs.

A unit is one input file scored into one output file. Units share nothing but the model, so a scheduler
(a process pool, Ray Data) can hand them to different workers; each one is resumable on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from scorer.data.atomic import check_writable, in_the_way, not_a_file, through_link
from scorer.data.inputs import expand_parts
from scorer.data.read import data_stem, data_suffix
from scorer.data.write import default_output
from scorer.errors import ConfigError, InputError, OutputError


@dataclass(frozen=True)
class WorkUnit:
    """Score `source` into `output`."""

    source: Path
    output: Path


def plan_run(spec: str, output: Path | None, output_format: str | None = None
             ) -> tuple[list[WorkUnit], dict[str, str]]:
    """One unit per input file (an empty one among several left out: it has nothing to score); a directory or glob
    needs --output DIR and is mirrored under it. And the data files left out, under INPUT, each with why."""
    files, base, left_out = expand_parts(spec)
    if base is None:
        source = files[0]
        target = output if output is not None and not _is_dir_like(output) else None
        if target is not None:
            if output_format:
                _refuse_another_format(target, output_format)
        else:
            target = default_output(source) if output is None else output / default_output(source).name
            target = _with_format(target, output_format) if output_format else target
        return [WorkUnit(source, through_link(target))], left_out
    if output is None:
        raise OutputError(f"{spec} names {len(files)} files; pass --output DIR to mirror their scores under it")
    if output.exists() and not output.is_dir():
        raise OutputError(f"--output {output} is a file; several inputs need a directory")
    # An --output inside the input directory holds last night's scores: they are outputs, not new inputs.
    outputs = output.resolve()
    files = [f for f in files if outputs not in f.resolve().parents]
    if not files:
        raise InputError(f"{spec} names no file outside --output {output}; nothing to score")
    suffix = "." + (output_format or "parquet")
    units = [WorkUnit(f, through_link(output / f.relative_to(base).parent / (data_stem(f) + suffix))) for f in files]
    _refuse_shared_outputs(units)
    return units, left_out


def _refuse_shared_outputs(units: list[WorkUnit]) -> None:
    """Two inputs that differ only in format (a.csv, a.parquet) would be scored into one output, one over the other."""
    seen: dict[Path, Path] = {}
    for unit in units:
        if unit.output in seen:
            raise OutputError(f"{seen[unit.output]} and {unit.source} would both be scored into {unit.output}; "
                              "move or rename one of them")
        seen[unit.output] = unit.source


def refuse_overwriting(units: list[WorkUnit], written: dict[str, Path | None], kept: dict[str, Path | None]) -> None:
    """Refuse an output at the path of an input, and a file the run writes beside its outputs (--summary, --report)
    at the path of one of its inputs or outputs, of another such file, or of a file in a directory it reads (the
    export, the checkpoint), or where it could not be written (atomic.check_writable: so not after the work).
    `written`: those files by the option that names them ("--report's JSON": written for --report)."""
    taken = {u.source.resolve(): f"the input {u.source}" for u in units}
    outputs = [u.output.resolve() for u in units]
    for unit, output in zip(units, outputs, strict=True):
        if output in taken:
            raise OutputError(f"--output {unit.output} is the input file; choose another output path")
        special = not_a_file(unit.output, "--output")
        if special is not None:
            raise special
    taken.update({output: f"the output {u.output}" for u, output in zip(units, outputs, strict=True)})
    for option, path in written.items():
        if path is None:
            continue
        target = path.resolve()
        if target.is_dir():
            raise in_the_way(path, option)
        what = taken.get(target) or next((f"a file of {name} {directory}" for name, directory in kept.items()
                                          if directory is not None and target.is_file()
                                          and Path(directory).resolve() in target.parents), None)
        if what is not None:
            raise OutputError(f"{option} {path} would replace {what}; choose another path for it")
        check_writable(path, overwrite=True, option=option.split("'")[0])
        taken[target] = f"{option} {path}"


def _refuse_another_format(target: Path, output_format: str) -> None:
    """Refuse a --format other than the one the --output file's name says (`-o day.csv --format parquet`): the file
    named would not be the one written."""
    named = (data_suffix(target) or target.suffix).lower()
    if (".parquet" if named == ".pq" else named) != "." + output_format:
        raise ConfigError(f"--format {output_format} disagrees with --output {target}, which names a "
                          f"{named.lstrip('.')} file; drop --format, or name the output "
                          f"{data_stem(target)}.{output_format}")


def _with_format(path: Path, output_format: str) -> Path:
    return path.with_suffix("." + output_format)


def _is_dir_like(path: Path) -> bool:
    return path.is_dir() or str(path).endswith(os.sep) or not path.suffix
