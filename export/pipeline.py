"""`scorer export`: checkpoint → ONNX variants + tokenizer + parity report + manifest, in one atomic directory."""

from __future__ import annotations

import functools
import json
import logging
import platform
import shutil
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path

from torch import nn

from export import parity
from export.fp16_choice import Fp16Report, build_fp16
from export.large import weights_beside
from export.onnx_graph import INPUT_NAMES, OUTPUT_NAMES, check_opset, export_onnx, external_files
from export.quantize import Quantiser, QuantizeReport, Targets
from export.rows import calibration_texts, parity_rows, recorded_data, warn_if_few, without_hollow
from scorer.config import VARIANTS, ExportConfig, RunConfig, to_json
from scorer.data import atomic, snapshot
from scorer.data.lock import sole_writer
from scorer.errors import ConfigError, ParityError, ProviderError
from scorer.inference import selfcheck
from scorer.inference.session import onnxruntime
from scorer.machine import fit_torch_threads, usable_memory
from scorer.manifest import MANIFEST, VARIANT_FILES, Manifest, Variant, sha256_file, weight_files
from scorer.pytorch.checkpoints import checkpoint_tokenizer, load_classifier
from scorer.pytorch.model import HeadConfig
from scorer.scoring.check import TOLERANCE
from scorer.text.tokens import TOKENIZER_FILE, Encoded, TextEncoder

log = logging.getLogger("scorer")
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
_PACKAGES = ("scorer", "torch", "transformers", "tokenizers", "onnx", "onnxruntime", "onnxruntime-gpu")
# Weights over ONNX's 2 GB for one file lie beside the graph. Such a model's fp16 graph is built with its word
# embeddings held out of ONNX Runtime's optimiser, which holds a graph many times over in memory (a 2.5 GB BERT's fp16
# build was killed at 24 GB before, bench/RESULTS.md 2), and its int8 graph from a one-file copy with the word
# embeddings in fp16 (export.large). Building the fp16 and int8 graphs peaks at
# about BUILD_MEMORY times the weights the optimiser holds (bert-base's fp16 build 18×, bert-large's whole export
# 15×), and HELD_MEMORY times a word table held out or halved (a 2.3 GiB BERT whose weights are nearly all its word
# table, 2.46 GB: 9.9 GB with fp16, 10.6 GB with int8, 12.3 GB with both): where the memory available is less, they
# are built only when asked for by name.
LARGE_WEIGHTS, BUILD_MEMORY, HELD_MEMORY = 2**31, 18, 5


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and how its variants did against PyTorch."""

    output: Path
    parity: list[parity.VariantParity]
    source: str
    fp16: Fp16Report | None = None  # how the fp16 graph was built, where it was

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.parity)

    def shown(self) -> str:
        """What export shows its user: the parity table, and how the fp16 graph was chosen."""
        return parity.table(self.parity) + (f"\n{self.fp16.summary()}" if self.fp16 is not None else "")


def export_model(config: ExportConfig) -> ExportResult:
    """Export, optimise, check parity, write the manifest; raise ParityError (report kept) if the gate fails."""
    atomic.check_keeps(config.output, {"--checkpoint": config.checkpoint, "--data": config.data,
                                       "--calibration": config.calibration})
    atomic.check_writable(config.output, config.overwrite, marker=MANIFEST)
    with sole_writer(config.output, "export"):
        fit_torch_threads()
        return _export(config)


def _export(config: ExportConfig) -> ExportResult:
    """export_model's work, under the export directory's lock."""
    if config.tensorrt:
        _check_tensorrt()
    check_opset(config.opset)  # (before the model is read: export_onnx checks again)
    snapshot.await_swap(config.checkpoint)  # (a training run may be replacing it now,
    read_from = snapshot.identity(config.checkpoint)  # or while it is read)
    model = load_classifier(config.checkpoint, attn_implementation="eager", max_length=config.max_length)
    head = model.head_config
    _check_threshold(config, head)
    config = replace(config, variants=_buildable(config, model))
    trained = _train_settings(config.checkpoint)
    text_column = config.text_column or trained.get("text_column", "sentence")
    label_column = config.label_column or trained.get("label_column", "label")  # (what run evaluates by default)
    tokenizer = checkpoint_tokenizer(config.checkpoint, model.encoder.config.vocab_size)
    tokenizer_json = tokenizer.to_str()  # (before TextEncoder sets its truncation)
    encoder = TextEncoder(tokenizer, head.max_length)
    recorded = recorded_data(trained, head) if config.data is None or config.calibration is None else None
    checked = parity_rows(config, head, recorded, text_column, "" if config.label_column == "" else label_column)
    checked, encoded = without_hollow(checked, encoder.encode(checked.texts), encoder.bare_length)
    warn_if_few(checked, config)
    calibration = None
    if "int8" in config.variants or "fp16" in config.variants:
        calibration = encoder.encode(calibration_texts(config, trained, recorded, text_column))
    with atomic.atomic_dir(config.output, config.overwrite, MANIFEST) as staging:
        variants, reports, quantiser = _write_variants(model, staging, config, calibration, encoded)
        _copy_tokenizer(config.checkpoint, staging, tokenizer_json)
        log.info("parity against PyTorch on %d rows of %s: %s", len(checked.texts), checked.source,
                 parity.batching(len(checked.texts), head.max_length))
        fp16_options = reports["fp16"].cuda_options if "fp16" in reports else None
        check = parity.Parity(model, encoded, checked.targets, head.labels, config, head.max_length,
                              head.labels.index(head.positive_label))
        results = check.every(variants, fp16_options)
        while _int8_refused(results, reports):  # export chose to quantise, so it can choose to quantise less
            reports["int8"] = _step_down(quantiser, results, reports["int8"], variants["int8"])
            results = [check.of("int8", variants["int8"]) if r.variant == "int8" else r for r in results]
        (staging / "parity.json").write_text(json.dumps(parity.report(results, checked.source, config.threshold),
                                                        indent=2) + "\n")
        (staging / "export_config.json").write_text(to_json(replace(config, overwrite=False)))
        manifest = _manifest(model, head, config, variants, results, text_column, label_column)
        manifest.extra.update({name: asdict(report) for name, report in reports.items()})
        manifest.extra["self_check"] = selfcheck.record(staging, variants, encoded, list(INPUT_NAMES))
        manifest.save(staging)
        snapshot.unchanged(config.checkpoint, read_from, "export")  # (else its weights' record may not be its graphs')
    result = ExportResult(config.output, results, checked.source, reports.get("fp16"))
    if config.tensorrt:
        _build_tensorrt(config.output, head.max_length)
    if not result.passed:
        failed = ", ".join(r.variant for r in results if not r.passed)
        log.warning("%s", parity.table(results))  # (the error itself is one line)
        raise ParityError(f"parity gate failed for {failed} (the table above; report kept in "
                          f"{config.output / 'parity.json'})")
    return result


def _check_threshold(config: ExportConfig, head: HeadConfig) -> None:
    """A decision threshold is a two-label model's (the positive label where its probability reaches it)."""
    if config.threshold is not None and len(head.labels) != 2:
        raise ConfigError(f"--threshold needs a model of two labels, and {config.checkpoint} has {len(head.labels)} "
                          f"({', '.join(map(str, head.labels))}); drop --threshold")


def _buildable(config: ExportConfig, model: nn.Module) -> tuple[str, ...]:
    """The variants to build: --variants, or all three; but, unless asked for by name, only fp32 where the others'
    build would not fit in the memory available (said why either way)."""
    wanted = config.variants or VARIANTS
    size = sum(tensor.numel() * 4 for tensor in model.parameters())  # as fp32
    held = 0  # the word embeddings, held out of the optimiser (fp16) or halved (int8) for a model over 2 GB
    if size > LARGE_WEIGHTS:
        held = model.encoder.get_input_embeddings().weight.numel() * 4
    others = [variant for variant in wanted if variant != "fp32"]
    graphs = f"{' and '.join(others)} graph" + ("s" if len(others) > 1 else "")
    available = usable_memory()
    if others and available is not None and (size - held) * BUILD_MEMORY + HELD_MEMORY * held > available:
        why = (f"building the {graphs} of {config.checkpoint} takes about {BUILD_MEMORY} times its "
               f"{(size - held) / 2**30:.1f} GiB of weights{' besides its word embeddings' if held else ''} in "
               f"memory, and {available / 2**30:.1f} GiB is available here")
        if config.variants:
            log.warning("%s; building them as --variants asks", why)
            return wanted
        log.warning("%s: exporting its fp32 graph only (export on a machine with more memory, or ask for them with "
                    f"--variants {','.join(wanted)})", why)
        return ("fp32",)
    return wanted


def _copy_tokenizer(checkpoint: Path, staging: Path, tokenizer_json: str) -> None:
    """The checkpoint's tokenizer files; for one with a slow tokenizer's files only, the converted tokenizer.json."""
    for name in TOKENIZER_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, staging / name)
    if not (staging / TOKENIZER_FILE).is_file():
        (staging / TOKENIZER_FILE).write_text(tokenizer_json)


def _check_tensorrt() -> None:
    """Refuse --tensorrt before any work where the engine cannot be built."""
    from export import tensorrt

    if not tensorrt.available():
        raise ProviderError("--tensorrt: ONNX Runtime's TensorRT provider or the TensorRT 10 libraries "
                            "(libnvinfer.so.10) are not available here; see README, 'TensorRT'")


def _build_tensorrt(output: Path, max_length: int) -> None:
    """Build the TensorRT engine beside the committed export (its cache is keyed by the model's final path)."""
    from export import tensorrt

    tensorrt.build_engine(output / VARIANT_FILES["fp32"], output / tensorrt.CACHE_DIR, max_length,
                          RunConfig.max_batch_rows)


def _write_variants(model: nn.Module, staging: Path, config: ExportConfig, calibration: Encoded | None,
                    parity_rows: Encoded) -> tuple[dict[str, Path], dict[str, Fp16Report | QuantizeReport],
                                                   Quantiser | None]:
    """The fp32 graph, then the fp16 and int8 variants built from it, with what each build measured, and the int8
    quantiser (whose targets are predicted for the `parity_rows`, from their fp32 logits alone)."""
    variants = {"fp32": staging / VARIANT_FILES["fp32"]}
    reports: dict[str, Fp16Report | QuantizeReport] = {}
    quantiser = None
    log.info("exporting %s to ONNX (opset %d)", config.checkpoint, config.opset)
    export_onnx(model, variants["fp32"], config.opset)
    encoder_config = model.encoder.config
    if "fp16" in config.variants:
        variants["fp16"] = staging / VARIANT_FILES["fp16"]
        reports["fp16"] = build_fp16(variants["fp32"], variants["fp16"], encoder_config.num_attention_heads,
                                     encoder_config.hidden_size, config.fp16_attention, calibration)
    if "int8" in config.variants:
        variants["int8"] = staging / VARIANT_FILES["int8"]
        # Predicted probability moves are kept to half what `scorer run --check` allows: predicted from training
        # rows, they ran up to 2.3 times as far on unseen ones (bench/RESULTS.md section 4).
        targets = Targets(config.int8_agreement, config.tie_margin, TOLERANCE["int8"] / 2, config.int8_tolerance)
        quantiser = Quantiser(variants["fp32"], calibration, parity_rows, targets)
        reports["int8"] = quantiser.first(variants["int8"])
    if external_files(variants["fp32"]):  # a model over 2 GB: the other graphs' weights beside them too
        for path in list(variants.values())[1:]:
            weights_beside(path)
    return variants, reports, quantiser


def _int8_refused(results: list[parity.VariantParity], reports: dict) -> bool:
    """Whether the parity gate refused a quantised int8 graph (where fp32 itself passed; else the export fails)."""
    int8 = next((r for r in results if r.variant == "int8"), None)
    if int8 is None or int8.passed or not reports["int8"].quantized:
        return False
    return next(r for r in results if r.variant == "fp32").passed


def _step_down(quantiser: Quantiser, results: list[parity.VariantParity], report: QuantizeReport,
               path: Path) -> QuantizeReport:
    """The int8 graph that keeps one more group of MatMuls in fp32 (or the fp32 graph), said so."""
    int8 = next(r for r in results if r.variant == "int8")
    found = f"labels agree {100 * int8.agreement:.2f}%, max |Δscore| {int8.max_score_diff:.3g}"
    log.info("int8 variant: with %d weight MatMuls quantised it failed the parity gate (%s); keeping one more group "
             "of them in fp32", report.quantized, found)
    gate = {"quantized": report.quantized, "agreement": int8.agreement, "max_abs_diff": int8.max_abs_diff,
            "max_score_diff": int8.max_score_diff}
    stepped = quantiser.step_down(path, report, gate)
    if stepped.quantized and external_files(quantiser.source):  # (over 2 GB: its weights beside it, as before)
        weights_beside(path)
    if not stepped.quantized:
        log.warning("int8 variant: quantised on %d calibration rows, it failed the parity gate on the parity rows "
                    "(last %s) at every level that ran faster than fp32, so its file is the fp32 graph; for an int8 "
                    "graph that passes, pass --calibration with more sentences like those it will score",
                    report.calibration_rows, found)
    return stepped


def _train_settings(checkpoint: Path) -> dict:
    path = checkpoint / "train_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _manifest(model, head: HeadConfig, config: ExportConfig, variants: dict[str, Path],
              results: list[parity.VariantParity], text_column: str, label_column: str) -> Manifest:
    passed = {r.variant: r.passed for r in results}
    staging = variants["fp32"].parent
    digest = functools.cache(sha256_file)  # (an int8 graph that is the fp32 one reads the fp32 graph's weights file)
    return Manifest(
        labels=head.labels,
        positive_label=head.positive_label,
        max_length=head.max_length,
        pooling=head.pooling,
        text_column=text_column,
        label_column=label_column,
        vocab_size=int(model.encoder.config.vocab_size),
        opset=config.opset,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        variants={
            name: Variant(file=path.name, sha256=sha256_file(path), parity_passed=passed.get(name),
                          device="gpu" if name == "fp16" else "cpu" if name == "int8" else "any",
                          data={name: digest(staging / name) for name in external_files(path)})
            for name, path in variants.items()
        },
        tokenizer_files={p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.name in TOKENIZER_FILES},
        versions=_versions(),
        checkpoint=str(config.checkpoint.resolve()),
        parity_passed=all(passed.values()),
        label_ids=head.label_ids,
        checkpoint_weights={path.name: sha256_file(path) for path in weight_files(config.checkpoint)},
        threshold=config.threshold,
    )


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    # The ONNX Runtime that ran the checks, from either wheel (onnxruntime-gpu's is recorded under its own name too).
    found.setdefault("onnxruntime", onnxruntime().__version__)
    return found
