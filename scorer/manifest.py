"""The export manifest: what `scorer export` produced, with hashes that `scorer run` checks before scoring."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scorer.errors import ModelError, owner_of

MANIFEST = "manifest.json"
FORMAT = "scorer-onnx/1"
VARIANT_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Variant:
    """One ONNX file of the export and how it did against PyTorch."""

    file: str
    sha256: str
    parity_passed: bool | None = None
    device: str = "any"
    data: dict[str, str] = field(default_factory=dict)  # the files beside it holding its tensors (over 2 GB): sha256

    @property
    def identity(self) -> str:
        """The sha256 that names this graph's content: its file's, or, where its tensors lie beside it (two
        fine-tunings of one architecture then share the file), a sha256 of its file's and its tensors'."""
        if not self.data:
            return self.sha256
        return hashlib.sha256(json.dumps([self.sha256, self.data], sort_keys=True).encode()).hexdigest()


@dataclass
class Manifest:
    """Everything needed to score with an export, and to know it is the export that was checked."""

    labels: list[int | str]
    positive_label: int | str
    max_length: int
    pooling: str
    text_column: str
    label_column: str
    vocab_size: int
    opset: int
    input_names: list[str]
    output_names: list[str]
    variants: dict[str, Variant]
    tokenizer_files: dict[str, str]
    versions: dict[str, str]
    checkpoint: str
    format: str = FORMAT
    parity_passed: bool | None = None
    label_ids: bool = False  # whether files may write a label as its index (scorer.data.labels.LabelIndex)
    checkpoint_weights: dict[str, str] = field(default_factory=dict)  # its weight files at export: sha256
    # Two labels: the positive one where its probability is at least this (export --threshold; run labels by it
    # unless given its own); None: the more probable label.
    threshold: float | None = None
    extra: dict = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n")

    def variant(self, name: str, directory: Path) -> Path:
        """The verified path of a variant: present, unmodified, and not refused by the parity gate."""
        if name not in self.variants:
            raise ModelError(
                f"{directory}: export has no {name} variant (it has {', '.join(self.variants)}); "
                f"pass --variant with one of those or export again with it"
            )
        entry = self.variants[name]
        if entry.parity_passed is False:
            raise ModelError(
                f"{directory}: the {name} variant failed its parity check (see parity.json); "
                "choose another --variant or fix the export"
            )
        path = directory / entry.file
        verify_file(path, entry.sha256, directory)
        for name, digest in entry.data.items():
            verify_file(directory / name, digest, directory)
        return path

    def verify_tokenizer(self, directory: Path) -> None:
        for name, digest in self.tokenizer_files.items():
            verify_file(directory / name, digest, directory)


def weight_files(checkpoint: Path) -> list[Path]:
    """The files of a PyTorch checkpoint that hold its weights (a Hugging Face model's, sharded or not, and scorer's
    head): what `run --check` must find unchanged to compare an export with the model it was exported from."""
    return sorted(path for path in Path(checkpoint).iterdir()
                  if path.is_file() and path.suffix in (".safetensors", ".bin"))


def verify_checkpoint(checkpoint: Path, manifest: Manifest, directory: Path) -> None:
    """Refuse, before any work, a --check against a checkpoint that is missing or is not the one `directory` was
    exported from (retrained in place since, say): its scores would differ from the export's for that reason alone."""
    if not Path(checkpoint).is_dir():
        raise ModelError(f"--check needs the PyTorch checkpoint, and {checkpoint} does not exist; "
                         "pass --checkpoint DIR (the directory `scorer train` wrote, or the Hugging Face model's)")
    if not manifest.checkpoint_weights:  # (an export from before scorer recorded them)
        return
    found = {path.name: path for path in weight_files(checkpoint)}
    for name, digest in manifest.checkpoint_weights.items():
        if name not in found or sha256_file(found[name]) != digest:
            what = "has no " + name if name not in found else f"has another {name}"
            raise ModelError(f"--check: {checkpoint} is not the checkpoint {directory} was exported from (it {what}: "
                             "retrained or replaced since the export); pass --checkpoint with that one, or export "
                             "this one again")


def verify_file(path: Path, digest: str, directory: Path) -> None:
    if not path.is_file():
        raise ModelError(f"{directory}: {path.name} is missing; export again with `scorer export`")
    if sha256_file(path) != digest:
        raise ModelError(
            f"{directory}: {path.name} does not match the sha256 in {MANIFEST} (changed after export); "
            "export again with `scorer export`"
        )


def check_readable(directory: Path) -> None:
    """Refuse a model directory with a file this account cannot read (an export or checkpoint another account wrote
    under a umask of 077, say), naming the file and its owner, before anything reads it."""
    try:
        entries = [path for path in Path(directory).rglob("*") if path.is_file()]
    except PermissionError as exc:
        entries = [Path(exc.filename or directory)]
    unreadable = next((path for path in entries if not os.access(path, os.R_OK)), None)
    if unreadable is None and not os.access(directory, os.R_OK | os.X_OK):
        unreadable = Path(directory)
    if unreadable is not None:
        owner = owner_of(unreadable)
        raise ModelError(f"{unreadable} cannot be read by this account (it is {owner}'s); make {directory} readable "
                         f"(chmod -R a+rX {directory}), or run as {owner}")


def load_manifest(directory: Path) -> Manifest:
    """Read and sanity-check manifest.json of an export directory (hashes are checked per file on use)."""
    directory = Path(directory)
    path = directory / MANIFEST
    if directory.is_file():
        raise ModelError(_file_not_directory(directory))
    if not directory.is_dir():
        raise ModelError(f"{directory} does not exist; run `scorer export` first or pass --model")
    check_readable(directory)
    if not path.is_file():
        trained = (directory / "scorer_head.json").is_file()
        if trained or (directory / "config.json").is_file():  # a step before the export
            what = "a training checkpoint" if trained else "a Hugging Face model"
            raise ModelError(f"{directory} is {what}, not an export; export it first (scorer export --checkpoint "
                             f"{directory}) and pass the export directory as --model")
        raise ModelError(f"{directory} has no {MANIFEST}; pass a directory written by `scorer export`")
    try:
        raw = json.loads(path.read_text())
        raw["variants"] = {name: Variant(**entry) for name, entry in raw["variants"].items()}
        manifest = Manifest(**raw)
    except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
        raise ModelError(f"{path} is not a valid scorer manifest ({exc}); export again") from exc
    if manifest.format != FORMAT:
        raise ModelError(f"{path} has format {manifest.format!r}; this scorer reads {FORMAT!r}")
    fp32 = manifest.variants.get("fp32")
    if fp32 is None or fp32.parity_passed is False:
        raise ModelError(f"{directory}: the fp32 export failed its parity gate (see parity.json); export again")
    return manifest


def _file_not_directory(path: Path) -> str:
    """What to pass instead of one file of an export (its model.fp16.onnx, say)."""
    try:
        variants = json.loads((path.parent / MANIFEST).read_text())["variants"]
        name = next(name for name, entry in variants.items() if entry["file"] == path.name)
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return f"{path} is a file; pass the directory written by `scorer export` as --model"
    return f"{path} is a file of an export; pass its directory as --model and --variant {name} for that file"
