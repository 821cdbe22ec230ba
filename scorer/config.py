"""Settings of each stage as frozen dataclasses, validated where they are built and saved beside their artefacts."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from scorer.errors import ConfigError, not_utf8
from scorer.packaged import example_file, packaged_model

# How pytorch.model.SentenceClassifier makes one vector of a sentence. mean: mean of the last layer's token states;
# cls: the last layer's [CLS] state; mix: mean of a learned softmax-weighted sum of every layer's token states
# (embeddings included), as in ELMo's scalar mix; max: the largest value of each feature over the tokens (one odd
# token can decide); mean-max: both, side by side.
POOLINGS = ("mean", "cls", "mix", "max", "mean-max")
# Where the replaced-token epochs draw replaced and inserted tokens from (scorer.training.adapt.Draws).
RTD_DRAWS = ("frequency", "context")

ARTIFACTS = Path("scorer-artifacts")
CHECKPOINT_DIR = "checkpoint"
ONNX_DIR = "onnx"
MAX_LENGTH_LIMIT = 512
DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "fp32", "bf16")
CUDA_GRAPHS = ("off", "compiled", "captured")  # the ways of scorer.pytorch.graphs
PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
VARIANTS = ("fp32", "fp16", "int8")
SELECTIONS = ("mcc", "accuracy", "last")


# CSV and TSV files may be compressed, inputs (scorer.data.csvlint) and outputs (scorer.data.write) alike.
COMPRESSIONS = (".gz", ".bz2", ".zst", ".lz4")
OUTPUT_FORMATS = ("parquet", *(f"{fmt}{ending}" for fmt in ("csv", "tsv") for ending in ("", *COMPRESSIONS)))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_choice(value: str, choices: tuple[str, ...], option: str) -> None:
    _check(value in choices, f"{option} must be one of {', '.join(choices)}, not '{value}'")


def _check_files(reads: dict[str, object], writes: dict[str, object], models: dict[str, object]) -> None:
    """Refuse "-" (standard input or output, as many tools take it) where a data file is read or a file written, and
    a path (`models` too) whose names are not all UTF-8, which pyarrow, ONNX Runtime and torch cannot open."""
    for option, value in {**reads, **writes, **models}.items():
        shown = None if value is None else not_utf8(str(value))
        _check(shown is None, f"{option} {shown}: the path is not UTF-8 (bytes of another encoding, shown as \\x..), "
                              "and pyarrow, ONNX Runtime and torch open UTF-8 paths only; rename what is shown so, or "
                              "pass another path")
    for option, value in reads.items():
        _check(str(value) != "-", f"{option} -: scorer reads files, not standard input; save the rows as a .parquet, "
                                  ".csv or .tsv file and pass its path")
    for option, value in writes.items():
        _check(str(value) != "-", f"{option} -: scorer writes files (each renamed into place when complete, so no "
                                  "reader sees a partial one), not standard output; pass a path")


def _check_max_length(value: int) -> None:
    _check(
        2 < value <= MAX_LENGTH_LIMIT,  # [CLS], a token of the sentence, [SEP]
        f"--max-length must be between 3 and {MAX_LENGTH_LIMIT}, not {value}",
    )


# The fp16 graph's attention: ORT's fused Attention op, its MultiHeadAttention op, or the exported MatMul/Softmax
# nodes (export.optimize; which CUDA kernels the fused ones reach is chosen with them: export.fp16_choice).
FP16_ATTENTIONS = ("fused", "mha", "unfused")


@dataclass(frozen=True)
class TrainConfig:
    """Everything `scorer train` needs; the defaults are the recipe recorded in bench/RESULTS.md."""

    data: Path = dataclasses.field(default_factory=lambda: example_file("train.csv"))
    val_data: Path | None = None
    model: Path = dataclasses.field(default_factory=packaged_model)
    output: Path = ARTIFACTS / CHECKPOINT_DIR
    text_column: str = "sentence"
    label_column: str = "label"
    max_length: int = 64
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 0.1
    warmup_ratio: float = 0.1
    layer_decay: float = 1.0
    reinit_layers: int = 0
    keep_layers: int = 0
    ema_epochs: float = 0.0
    rdrop: float = 0.0
    mlm_epochs: int = 0
    mlm_lr: float = 1e-4
    rtd_epochs: int = 10
    rtd_lr: float = 1e-4
    rtd_draw: str = "frequency"
    rtd_aux: float = 0.0
    class_weight: str = "balanced"
    pooling: str = "mean"
    dropout: float = 0.1
    val_fraction: float = 0.1
    select: str = "mcc"
    patience: int = 0
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    cuda_graphs: str = "off"
    save_state_every: float = 300.0
    overwrite: bool = False

    def __post_init__(self) -> None:
        _check_files({"--data": self.data, "--val-data": self.val_data},
                     {"--output": self.output}, {"--model": self.model})
        _check_max_length(self.max_length)
        _check_columns(self.text_column, self.label_column)
        _check(self.label_column != "", "--label-column '' (no labels) is for run and export; training needs labels: "
               "name their column")
        _check(self.epochs >= 1, f"--epochs must be at least 1, not {self.epochs}")
        _check(self.batch_size >= 1, f"--batch-size must be at least 1, not {self.batch_size}")
        _check(0 <= self.seed < 1 << 32, f"--seed must be between 0 and {(1 << 32) - 1}, not {self.seed}")
        _check(self.learning_rate > 0, f"--learning-rate must be positive, not {self.learning_rate}")
        _check(self.weight_decay >= 0, f"--weight-decay must be 0 or more, not {self.weight_decay}")
        _check(0 <= self.warmup_ratio < 1, f"--warmup-ratio must be in [0, 1), not {self.warmup_ratio}")
        _check(0 < self.layer_decay <= 1, f"--layer-decay must be in (0, 1], not {self.layer_decay}")
        _check(self.reinit_layers >= 0, f"--reinit-layers must be 0 or more, not {self.reinit_layers}")
        _check(self.ema_epochs >= 0, f"--ema-epochs must be 0 (off) or more, not {self.ema_epochs}")
        _check(self.mlm_epochs >= 0, f"--mlm-epochs must be 0 (off) or more, not {self.mlm_epochs}")
        _check(self.mlm_lr > 0, f"--mlm-lr must be positive, not {self.mlm_lr}")
        _check(self.rtd_epochs >= 0, f"--rtd-epochs must be 0 (off) or more, not {self.rtd_epochs}")
        _check(self.rtd_lr > 0, f"--rtd-lr must be positive, not {self.rtd_lr}")
        _check_choice(self.rtd_draw, RTD_DRAWS, "--rtd-draw")
        _check(self.rtd_aux >= 0, f"--rtd-aux must be 0 (off) or more, not {self.rtd_aux}")
        _check(self.rdrop >= 0, f"--rdrop must be 0 (off) or more, not {self.rdrop}")
        _check(self.keep_layers >= 0, f"--keep-layers must be 0 (all) or more, not {self.keep_layers}")
        _check(self.save_state_every >= 0, f"--save-state-every must be 0 (every epoch) or more seconds, not "
               f"{self.save_state_every:g}")
        _check_choice(self.class_weight, ("none", "balanced"), "--class-weight")
        _check(0 <= self.dropout < 1, f"--dropout must be in [0, 1), not {self.dropout}")
        _check(0 < self.val_fraction < 1, f"--val-fraction must be in (0, 1), not {self.val_fraction}")
        _check_choice(self.pooling, POOLINGS, "--pooling")
        _check_choice(self.select, SELECTIONS, "--select")
        _check(self.patience >= 0, f"--patience must be 0 (off) or more epochs, not {self.patience}")
        _check(not (self.patience and self.select == "last"), "--patience stops when the --select figure stops "
               "improving; with --select last every epoch is kept: choose --select mcc or accuracy, or drop --patience")
        _check_choice(self.device, DEVICES, "--device")
        _check_choice(self.precision, PRECISIONS, "--precision")
        _check_choice(self.cuda_graphs, CUDA_GRAPHS, "--cuda-graphs")


@dataclass(frozen=True)
class ExportConfig:
    """Everything `scorer export` needs: where the checkpoint is, which variants, and the parity gate."""

    checkpoint: Path = ARTIFACTS / CHECKPOINT_DIR
    output: Path = ARTIFACTS / ONNX_DIR
    data: Path | None = None
    text_column: str | None = None
    label_column: str | None = None
    variants: tuple[str, ...] | None = None  # None: all three, as far as the model's size and the memory here allow
    opset: int = 17
    tolerance: float = 1e-4
    min_agreement: float = 0.995
    max_accuracy_drop: float = 0.005
    # Rows whose top two PyTorch logits are this close are near-ties: a label flip there is rounding, and does not
    # count against a variant's agreement (fp16 moves bert-base's logits by up to about 1e-2).
    tie_margin: float = 0.05
    max_rows: int = 2000
    calibration: Path | None = None
    calibration_rows: int = 500
    # The label agreement int8 must be predicted to reach on the parity rows (near-ties left out): half the gate's
    # allowance, so that the gate, which then counts it, seldom finds less.
    int8_agreement: float = 0.9975
    # Where set, how far int8 may move the gap between a calibration row's two highest logits, on 99% of the rows.
    int8_tolerance: float | None = None
    fp16_attention: str = "auto"  # auto, or one of FP16_ATTENTIONS
    max_length: int | None = None  # None: the checkpoint's (what it was trained at, or its tokenizer's)
    # Two labels: the positive one where its probability is at least this, recorded for `scorer run` and judged by
    # the parity gate; None: the more probable label.
    threshold: float | None = None
    tensorrt: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        _check_files({"--data": self.data, "--calibration": self.calibration},
                     {"--output": self.output}, {"--checkpoint": self.checkpoint})
        _check_columns(self.text_column, self.label_column)
        _check(self.opset >= 17, f"--opset must be 17 or newer, not {self.opset}")
        for variant in self.variants or ():
            _check_choice(variant, VARIANTS, "--variants")
        _check("fp32" in (self.variants or VARIANTS), "the fp32 variant is always exported; keep it in --variants")
        _check(self.tolerance > 0, f"--tolerance must be positive, not {self.tolerance}")
        _check(0 < self.min_agreement <= 1, f"--min-agreement must be in (0, 1], not {self.min_agreement}")
        _check(self.tie_margin >= 0, f"--tie-margin must not be negative, not {self.tie_margin}")
        _check(0 <= self.max_accuracy_drop <= 1, f"--max-accuracy-drop must be in [0, 1], not {self.max_accuracy_drop}")
        _check(self.max_rows >= 1, f"--max-rows must be at least 1, not {self.max_rows}")
        _check(self.calibration_rows >= 1, f"--calibration-rows must be at least 1, not {self.calibration_rows}")
        _check(0 < self.int8_agreement <= 1, f"--int8-agreement must be in (0, 1], not {self.int8_agreement}")
        _check(self.int8_tolerance is None or self.int8_tolerance > 0,
               f"--int8-tolerance must be positive, not {self.int8_tolerance}")
        _check_choice(self.fp16_attention, ("auto", *FP16_ATTENTIONS), "--fp16-attention")
        _check(self.fp16_attention == "auto" or self.variants is None or "fp16" in self.variants,
               f"--fp16-attention {self.fp16_attention} is for the fp16 variant, which --variants "
               f"{','.join(self.variants or ())} leaves out; add fp16 to --variants, or drop --fp16-attention")
        _check_threshold(self.threshold)
        if self.max_length is not None:
            _check_max_length(self.max_length)


@dataclass(frozen=True)
class RunConfig:
    """Everything `scorer run` needs: input, output, model, provider, batching and checks."""

    input: str
    output: Path | None = None
    output_format: str | None = None
    model: Path = ARTIFACTS / ONNX_DIR
    provider: str = "auto"
    variant: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    # The input columns an output carries beside the results, in this order; None: every one; (): the results alone.
    keep_columns: tuple[str, ...] | None = None
    probabilities: bool = False  # a column of each label's probability (prob_<label>) beside label, score and status
    # Two labels: the positive one where score >= this; None: the export's (export --threshold), else the more probable
    threshold: float | None = None
    max_tokens: int | None = None
    max_batch_rows: int = 4096
    io_binding: bool | None = None  # None: what export measured faster for the fp16 graph on CUDA, else off
    # Rows read, sorted, batched, scored and written together; None: 65,536 on a GPU (a wider sort leaves short
    # texts less padding: on CoLA-like text 12% more tokens than real ones at 16,384, 2.9% at 65,536;
    # bench/padding.py), 16,384 on a CPU (small batches pad little anyway; a window is tens of seconds of work).
    window_rows: int | None = None
    # Tokens' worth of work one more batch costs (scorer.text.batches); None: the provider's (classify.py).
    batch_overhead: int | None = None
    # Each window is tokenised in pieces of about this many characters, so that the model starts on a window's
    # first piece while the rest is tokenised: one piece per window of CoLA-like sentences, about nine of texts
    # of 100 words.
    piece_chars: int = 1 << 20
    tokenize_threads: int = 2
    # Inputs of at most this many rows are small: consecutive ones are scored together (scorer.scoring.bundle); None: a
    # quarter window; 0: every input on its own, for benchmarks that compare the two.
    small_rows: int | None = None
    infer_threads: int | None = None  # None: 2 on CUDA (measured +8% on an H200, twice), 1 elsewhere
    # ONNX Runtime's intra-op threads; None: on a CPU the cores this process may use (scorer.machine), on a GPU 1.
    cpu_threads: int | None = None
    # Tokenise through scorer.text.words.WordCache where the tokenizer qualifies (same ids, measured faster); False
    # is the tokenizer alone, for benchmarks that compare the two.
    word_cache: bool = True
    check: int = 0
    samples: int = 0
    report: Path | None = None
    summary: Path | None = None
    checkpoint: Path | None = None
    overwrite: bool = False
    # Score again an output scorer wrote from another version of its input, another model or text column (one up to
    # date is still skipped, a file scorer did not write still refused): a nightly feed replaced in place.
    update: bool = False
    fail_fast: bool = False
    # Other runs (one per GPU, say) score the same inputs at once: an input whose output another run is writing is
    # left to it ("taken"), not failed.
    share: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        _check_files({"INPUT": self.input},
                     {"--output": self.output, "--summary": self.summary, "--report": self.report},
                     {"--model": self.model, "--checkpoint": self.checkpoint})
        _check_choice(self.provider, PROVIDERS, "--provider")
        if self.output_format is not None:
            _check_choice(self.output_format, OUTPUT_FORMATS, "--format")
        if self.variant is not None:
            _check_choice(self.variant, VARIANTS, "--variant")
        _check_kept(self.keep_columns)
        _check_threshold(self.threshold)
        _check_columns(self.text_column, self.label_column)
        _check(self.max_tokens is None or self.max_tokens >= 1,
               f"--max-tokens must be at least 1, not {self.max_tokens}")
        _check(self.max_batch_rows >= 1, f"--max-batch-rows must be at least 1, not {self.max_batch_rows}")
        _check(self.window_rows is None or self.window_rows >= 1,
               f"--window-rows must be at least 1, not {self.window_rows}")
        _check(self.batch_overhead is None or self.batch_overhead >= 0,
               f"batch_overhead must be 0 or more, not {self.batch_overhead}")
        _check(self.piece_chars >= 1, f"piece_chars must be at least 1, not {self.piece_chars}")
        _check(self.infer_threads is None or self.infer_threads >= 1,
               f"--infer-threads must be at least 1, not {self.infer_threads}")
        _check(self.cpu_threads is None or self.cpu_threads >= 1,
               f"--cpu-threads must be at least 1, not {self.cpu_threads}")
        _check(self.small_rows is None or self.small_rows >= 0, f"small_rows must be 0 or more, not {self.small_rows}")
        _check(self.tokenize_threads >= 1, f"--tokenize-threads must be at least 1, not {self.tokenize_threads}")
        _check(self.check >= 0, f"--check must be 0 or more, not {self.check}")
        _check(self.samples >= 0, f"--samples must be 0 or more, not {self.samples}")
        _check(not (self.report and self.label_column == ""),
               "--report needs labels, and --label-column '' says to use none; drop one of them")
        _check(not (self.share and self.summary is None),
               "--share needs --summary: each of the runs that share their inputs writes its own summary")
        _check(not (self.share and self.overwrite),
               "--share with --overwrite would have each run score again every input the others finished; run one "
               "--overwrite run, or remove the old outputs first")


def _check_columns(text: str | None, label: str | None) -> None:
    """The text and the labels from one column would train on the answer (or score labels as sentences)."""
    _check(text is None or text != label, f"--text-column '{text}' is the label column too (--label-column); the "
           "labels must be a column of their own: pass --label-column with it")


def _check_threshold(threshold: float | None) -> None:
    _check(threshold is None or 0 < threshold < 1, f"--threshold must be between 0 and 1 (a probability), not "
           f"{threshold}")


def _check_kept(names: tuple[str, ...] | None) -> None:
    if names is None:
        return
    _check(all(names), f"--keep-columns {','.join(names)!r} has an empty name; separate the names by single commas")
    twice = sorted({name for name in names if names.count(name) > 1})
    _check(not twice, f"--keep-columns names {', '.join(repr(n) for n in twice)} more than once; name each column once")


def to_json(config: object) -> str:
    """The settings as JSON, paths as absolute strings (so they still resolve from another directory)."""
    values = {
        key: (str(value.resolve()) if isinstance(value, Path) else value)
        for key, value in dataclasses.asdict(config).items()
    }
    return json.dumps(values, indent=2, default=str) + "\n"
