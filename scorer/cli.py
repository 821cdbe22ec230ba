"""The `scorer` command line: each command builds a config, calls one library function, prints a summary."""

from __future__ import annotations

from pathlib import Path

import click

from scorer import __version__
from scorer.command import build, command, shown, shown_by_provider
from scorer.config import CUDA_GRAPHS, OUTPUT_FORMATS, POOLINGS, RTD_DRAWS, ExportConfig, RunConfig, TrainConfig
from scorer.errors import EXIT_CODES, one_line
from scorer.extras import require_training_stack
from scorer.inference.defaults import DEFAULT_INFER_THREADS, DEFAULT_MAX_TOKENS, DEFAULT_WINDOW_ROWS, MIN_INT8_SPEEDUP

PATH = click.Path(exists=False, dir_okay=True, path_type=Path)

HELP = """Fine-tune a BERT sentence classifier, export it to ONNX, and score big Parquet/CSV files.

\b
The main job, on the packaged all-MiniLM-L6-v2 and the packaged example sentences:
  scorer train && scorer export && scorer run input.parquet

\b
Exit codes:
""" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())


@click.group(help=HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="scorer")
def main() -> None:
    pass


@main.command()
@click.option("--data", type=PATH, help="Labelled CSV/TSV/Parquet file, or a directory or glob of them "
              "[default: the packaged examples].")
@click.option("--val-data", type=PATH, help="Validation file, directory or glob [default: a seeded split of "
              "--data].")
@click.option("--model", type=PATH, help="Local Hugging Face encoder directory [default: packaged MiniLM].")
@click.option("--output", "-o", type=PATH, help=f"Checkpoint directory {shown(TrainConfig, 'output')}.")
@click.option("--text-column", help=f"Column with the sentences {shown(TrainConfig, 'text_column')}.")
@click.option("--label-column", help=f"Column with the labels {shown(TrainConfig, 'label_column')}.")
@click.option("--max-length", type=int,
              help=f"Tokens per sentence incl. [CLS]/[SEP], ≤ 512 {shown(TrainConfig, 'max_length')}.")
@click.option("--epochs", type=int, help=f"Fine-tuning epochs {shown(TrainConfig, 'epochs')}.")
@click.option("--batch-size", type=int, help=f"Sentences per step {shown(TrainConfig, 'batch_size')}.")
@click.option("--learning-rate", "--lr", type=float,
              help=f"Peak AdamW learning rate {shown(TrainConfig, 'learning_rate')}.")
@click.option("--warmup-ratio", type=float,
              help=f"Share of steps with a linear warm-up {shown(TrainConfig, 'warmup_ratio')}.")
@click.option("--weight-decay", type=float,
              help=f"AdamW weight decay (not on biases/LayerNorm) {shown(TrainConfig, 'weight_decay')}.")
@click.option("--layer-decay", type=float,
              help=f"Layer-wise learning-rate decay (1: none) {shown(TrainConfig, 'layer_decay')}.")
@click.option("--reinit-layers", type=int,
              help=f"Re-initialise the top N encoder layers before training {shown(TrainConfig, 'reinit_layers')}.")
@click.option("--keep-layers", type=int,
              help=f"Keep only the lowest N encoder layers (0: all) {shown(TrainConfig, 'keep_layers')}.")
@click.option("--ema-epochs", type=float,
              help=f"Keep a moving average of the weights over ~N epochs (0: off) {shown(TrainConfig, 'ema_epochs')}.")
@click.option("--mlm-epochs", type=int,
              help="Masked-LM epochs on the training sentences before fine-tuning (task-adaptive pretraining; 0: off) "
                   f"{shown(TrainConfig, 'mlm_epochs')}.")
@click.option("--mlm-lr", type=float,
              help=f"Peak learning rate of the masked-LM epochs {shown(TrainConfig, 'mlm_lr')}.")
@click.option("--rtd-epochs", type=int,
              help="Replaced-token-detection epochs on the training sentences before fine-tuning, after any "
                   f"--mlm-epochs (0: off) {shown(TrainConfig, 'rtd_epochs')}.")
@click.option("--rtd-lr", type=float,
              help=f"Peak learning rate of the replaced-token epochs {shown(TrainConfig, 'rtd_lr')}.")
@click.option("--rtd-draw", type=click.Choice(RTD_DRAWS),
              help="Replaced and inserted tokens of the replaced-token epochs: drawn by the training text's token "
                   "frequencies, or among the tokens that follow their left neighbour there "
                   f"{shown(TrainConfig, 'rtd_draw')}.")
@click.option("--rtd-aux", type=float,
              help="Weight of replaced-token detection as a second loss in every fine-tuning step, with a fresh "
                   f"detector head (0: off) {shown(TrainConfig, 'rtd_aux')}.")
@click.option("--rdrop", type=float,
              help="R-Drop: weight of the symmetric KL between two dropout passes of each batch (0: off) "
                   f"{shown(TrainConfig, 'rdrop')}.")
@click.option("--class-weight", type=click.Choice(["none", "balanced"]),
              help=f"Loss weights per class {shown(TrainConfig, 'class_weight')}.")
@click.option("--pooling", type=click.Choice(POOLINGS),
              help="Sentence vector: mean of last-layer tokens, [CLS], mean of a learned mix of all layers, the "
                   "largest value of each feature over the tokens, or mean and max side by side "
                   f"{shown(TrainConfig, 'pooling')}.")
@click.option("--dropout", type=float, help=f"Dropout before the classification head {shown(TrainConfig, 'dropout')}.")
@click.option("--select", type=click.Choice(["mcc", "accuracy", "last"]),
              help="Which epoch to keep: best validation MCC, best accuracy, or the last "
                   f"{shown(TrainConfig, 'select')}.")
@click.option("--patience", type=int,
              help="Stop fine-tuning after this many epochs without a better validation figure (--select's) than "
                   f"the kept epoch's (0: run every epoch) {shown(TrainConfig, 'patience')}.")
@click.option("--seed", type=int,
              help=f"Seed for the split, the batches and the initial head {shown(TrainConfig, 'seed')}.")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]),
              help=f"Where to train {shown(TrainConfig, 'device')}.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]),
              help="bf16 autocast for training steps; auto: on bf16-capable CPUs, fp32 on CUDA "
                   f"{shown(TrainConfig, 'precision')}.")
@click.option("--compile", is_flag=True, default=None,
              help="torch.compile the fine-tuning steps (fewer, fused kernels; the first steps spend a minute "
                   "compiling; needs a C++ compiler and Python's headers) [default: off].")
@click.option("--cuda-graphs", type=click.Choice(CUDA_GRAPHS),
              help="On CUDA: replay the fine-tuning steps as CUDA graphs, one per batch shape (widths rounded up to a "
                   "multiple of 8), so the GPU does not wait on Python between kernels; compiled: torch.compile "
                   "first (a minute or so), captured: the eager kernels, no compile "
                   f"{shown(TrainConfig, 'cuda_graphs')}.")
@click.option("--save-state-every", type=float, metavar="SECONDS",
              help="Save the run's state after the first training step or epoch where this many seconds have "
                   "passed since the last save, so that a stopped run resumes from there when run again (0: after "
                   "every epoch, never within one) "
                   f"{shown(TrainConfig, 'save_state_every')}.")
@click.option("--overwrite", is_flag=True, default=None, help="Replace an existing checkpoint directory.")
@command
def train(progress: bool, **options) -> None:
    """Fine-tune the encoder with a classification head and write a checkpoint directory.

    A run that is stopped resumes from its last saved state (--save-state-every) when the same command is run
    again.
    """
    require_training_stack("scorer train")
    config = build(TrainConfig, **options)  # (a bad option is refused before PyTorch's 2 s of importing)
    from scorer.training.train import train as run_training

    result = run_training(config, progress=progress)
    best = result.best
    epochs = f"{len(result.epochs)} epoch{'s' if len(result.epochs) != 1 else ''}"
    if result.stopped_early:
        epochs += f" (stopped early: --patience {result.stopped_early})"
    click.echo(f"trained {epochs} on {result.device} ({result.precision}); kept epoch {result.best_epoch}: "
               f"validation accuracy {best.val_accuracy:.4f}, MCC {best.val_mcc:.4f} -> {result.checkpoint}")


@main.command("export")
@click.option("--checkpoint", type=PATH, help="Directory from `scorer train`, or a Hugging Face "
              f"sequence-classification model's {shown(ExportConfig, 'checkpoint')}.")
@click.option("--output", "-o", type=PATH, help=f"Export directory {shown(ExportConfig, 'output')}.")
@click.option("--data", type=PATH, help="Sentences for the parity report (a file, directory or glob) [default: the "
              "checkpoint's validation rows, where 200 or more; else the packaged examples].")
@click.option("--text-column", help="Text column of --data [default: the training one].")
@click.option("--label-column", help="Label column of --data ('': none) [default: the training one].")
@click.option("--variants", help="Comma-separated: fp32,fp16,int8 [default: all three where the memory to build "
              "them is there, else fp32].")
@click.option("--opset", type=int,
              help="ONNX opset, 17 to the newest the installed torch exports and onnx checks "
                   f"{shown(ExportConfig, 'opset')}.")
@click.option("--tolerance", type=float,
              help=f"Largest fp32 |Δlogit| the gate allows {shown(ExportConfig, 'tolerance')}.")
@click.option("--min-agreement", type=float,
              help=f"Label agreement fp16/int8 must reach {shown(ExportConfig, 'min_agreement')}.")
@click.option("--tie-margin", type=float,
              help="Rows whose top two PyTorch logits are this close are near-ties; a flip there does not count "
                   f"against agreement {shown(ExportConfig, 'tie_margin')}.")
@click.option("--max-rows", type=int, help=f"Rows of --data used for parity {shown(ExportConfig, 'max_rows')}.")
@click.option("--calibration", type=PATH,
              help="Sentences for int8 calibration (a file, directory or glob) [default: the checkpoint's "
                   "training rows].")
@click.option("--int8-agreement", type=float,
              help="Label agreement int8 must be predicted to reach on the parity rows, predicted from how far it "
                   f"moves the calibration rows {shown(ExportConfig, 'int8_agreement')}.")
@click.option("--int8-tolerance", type=float,
              help="Also bound how far int8 may move the gap between a calibration row's two highest logits, on 99% "
                   "of them [default: no bound].")
@click.option("--fp16-attention", type=click.Choice(["auto", "fused", "mha", "unfused"]),
              help="The fp16 graph's attention: ORT's Attention op (fused), its MultiHeadAttention op (mha) or plain "
                   "MatMul/Softmax (unfused); auto: the fastest on CUDA, measured here "
                   f"{shown(ExportConfig, 'fp16_attention')}.")
@click.option("--max-length", type=int, help="Tokens per text when scoring, at most the position limit [default: what "
              "the checkpoint was trained at; a Hugging Face model's tokenizer's model_max_length, at most 512].")
@click.option("--threshold", type=float,
              help="Two-label models: record this decision threshold (a row's label is the positive one where its "
                   "score is at least this), which the parity gate judges labels by and `scorer run` labels by "
                   "unless given its own [default: none, the more probable label].")
@click.option("--tensorrt", is_flag=True, default=None, help="Also build and cache a TensorRT fp16 engine.")
@click.option("--overwrite", is_flag=True, default=None, help="Replace an existing export directory.")
@command
def export_command(progress: bool, variants: str | None, **options) -> None:
    """Export the checkpoint to ONNX (fp32, fp16, int8), check parity with PyTorch, write a manifest."""
    require_training_stack("scorer export")
    if variants is not None:
        options["variants"] = tuple(v.strip() for v in variants.split(",") if v.strip())
    config = build(ExportConfig, **options)  # (a bad option is refused before PyTorch's 2 s of importing)
    from export import parity
    from export.pipeline import export_model

    result = export_model(config)
    click.echo(result.shown())
    labelled = "" if config.threshold is None else \
        f" (labels at score >= {config.threshold:g}, recorded: `scorer run` labels by it)"
    click.echo(f"exported {', '.join(r.variant for r in parity.gated(result.parity))} to {result.output}; "
               f"parity passed{labelled}")


@main.command("run")
@click.argument("input")
@click.option("--output", "-o", type=PATH, help="Output file, or directory for several inputs "
              "[default: INPUT.scored.parquet].")
@click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS),
              help="Output format when --output is a directory or left out (an --output file's name says its "
                   "own); CSV and TSV compressed where named so (csv.gz, tsv.zst, ...) [default: parquet].")
@click.option("--model", type=PATH, help=f"Export directory {shown(RunConfig, 'model')}.")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]),
              help=f"Where the model runs; auto: CUDA where ONNX Runtime can {shown(RunConfig, 'provider')}.")
@click.option("--variant", type=click.Choice(["fp32", "fp16", "int8"]),
              help=f"The ONNX graph to run [default: fp16 on CUDA; on a CPU int8 where export measured it "
                   f"{MIN_INT8_SPEEDUP:g}× as fast as fp32 (on its CPU: another is warned of), else fp32; fp32 for "
                   "TensorRT].")
@click.option("--text-column", help="Column to score [default: the training text column].")
@click.option("--label-column",
              help="True labels, for accuracy/MCC ('': none) [default: the training one, if present].")
@click.option("--keep-columns", metavar="NAMES",
              help="Input columns the output carries beside the results, comma-separated, in this order ('': the "
                   "results alone; a name holding a comma or spaces at its ends in double quotes) [default: every "
                   "column].")
@click.option("--probabilities", is_flag=True, default=None,
              help="Also write each label's probability, as a column prob_<label> per label.")
@click.option("--threshold", type=float,
              help="Two-label models: a row's label is the positive one (whose probability `score` is) where its "
                   "score is at least this, else the other (0.5: the more probable) [default: the one export "
                   "recorded (export --threshold), else the more probable label].")
@click.option("--max-tokens", type=int,
              help=f"Token budget per batch (rows × padded length) {shown_by_provider(DEFAULT_MAX_TOKENS)}.")
@click.option("--max-batch-rows", type=int, help=f"Most rows in one batch {shown(RunConfig, 'max_batch_rows')}.")
@click.option("--io-binding/--no-io-binding", default=None,
              help="Bind inputs/outputs to the device (ORT IO binding) [default: what export measured faster for "
              "fp16 on CUDA; off elsewhere].")
@click.option("--window-rows", type=int,
              help=f"Rows read, sorted, scored and checkpointed together {shown_by_provider(DEFAULT_WINDOW_ROWS)}.")
@click.option("--tokenize-threads", type=int,
              help=f"Windows tokenised at once, ahead of the model {shown(RunConfig, 'tokenize_threads')}.")
@click.option("--infer-threads", type=int,
              help=f"Batches in flight on the model at once {shown_by_provider(DEFAULT_INFER_THREADS)}.")
@click.option("--cpu-threads", type=int,
              help="ONNX Runtime's threads for the model's CPU work [default: on a CPU, the cores this process may "
                   "use (its CPU affinity and cgroup quota, not the machine's count); on a GPU, 1].")
@click.option("--check", type=int,
              help="Cross-check N sampled rows against the PyTorch checkpoint (needs PyTorch: the train extra; 0: off) "
                   f"{shown(RunConfig, 'check')}.")
@click.option("--checkpoint", type=PATH, help="PyTorch checkpoint for --check [default: the exported one].")
@click.option("--samples", type=int,
              help="Rows in the sample table (sentence, true and predicted label, score; an unlabelled input's "
                   "without the true label) "
                   f"{shown(RunConfig, 'samples')}.")
@click.option("--report", type=PATH, help="Write the evaluation as Markdown here, and as JSON beside it.")
@click.option("--summary", type=PATH, help="JSON summary path [default: OUTPUT.summary.json].")
@click.option("--overwrite", is_flag=True, default=None, help="Replace outputs even when they are up to date.")
@click.option("--update", is_flag=True, default=None,
              help="Score again outputs scorer wrote from an older input, another model, text column or output "
                   "columns; skip those up to date.")
@click.option("--fail-fast", is_flag=True, default=None, help="Stop at the first input that fails.")
@click.option("--share", is_flag=True, default=None,
              help="Other runs score the same inputs at once (one run per GPU): an input another run is writing is "
                   "left to it, not failed. Each run needs its own --summary.")
@command
def run_command(progress: bool, input: str, keep_columns: str | None, **options) -> None:
    """Score INPUT (a Parquet/CSV/TSV file, a directory or a glob); every row is kept, in order.

    Outputs are written under a temporary name and renamed when complete. A run that is stopped resumes
    from its last finished window; outputs already scored by the same model from the same input are skipped.
    Small inputs (at most a quarter of --window-rows each) are scored together, each into its own output.
    """
    from scorer.data.names import parse_names
    from scorer.scoring.evaluate import markdown, sample_table
    from scorer.scoring.score import score_file

    if keep_columns is not None:
        options["keep_columns"] = parse_names(keep_columns, "--keep-columns")
    summary = score_file(build(RunConfig, input=input, **options), progress=progress)
    if summary.evaluation and progress:  # --quiet: the one summary line only (it carries accuracy and MCC)
        click.echo(markdown(summary.evaluation).rstrip())
    elif len(summary.inputs) == 1 and summary.inputs[0].samples and progress:  # (unlabelled: the rows alone)
        click.echo(sample_table(summary.inputs[0].samples))
    click.echo(one_line(summary.line()))


@main.command()
@click.option("--workdir", type=PATH, default=Path("scorer-demo"), show_default=True,
              help="Where the demo writes its checkpoint, export and scores (replaced on each run; a directory "
                   "with other files is refused).")
@click.option("--epochs", type=int, help="Training epochs for the demo model.")
@command
def demo(progress: bool, workdir: Path, epochs: int | None) -> None:
    """The whole main job on the packaged model and examples: train, export, run on a shipped file."""
    require_training_stack("scorer demo")
    from scorer.demo import run_demo

    summary = run_demo(workdir, epochs=epochs, progress=progress)
    click.echo(one_line(summary.line()))


if __name__ == "__main__":
    main()
