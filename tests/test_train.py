"""`scorer train` on a tiny random BERT: checkpoint contents, reproducibility, and refused inputs."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from scorer.cli import main
from scorer.errors import ConfigError, InputError
from scorer.packaged import example_file
from scorer.pytorch.model import SentenceClassifier
from tests.conftest import TINY_POSITIONS, TOKENIZER_FILES


def train_args(encoder, output, *extra):
    return ["train", "--model", str(encoder), "--output", str(output), "--epochs", "2", "--max-length", "32",
            "--lr", "1e-3", "--quiet", *extra]


def test_checkpoint_has_model_tokenizer_metrics_settings_and_plot(tiny_checkpoint):
    names = {p.name for p in tiny_checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "scorer_head.json", "scorer_head.safetensors", "tokenizer.json",
            "metrics.json", "train_config.json", "training_loss.png"} <= names
    metrics = json.loads((tiny_checkpoint / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["best_epoch"] in (1, 2) and metrics["selected_by"] == "mcc"
    best = metrics["epochs"][metrics["best_epoch"] - 1]
    assert best["val_mcc"] == max(e["val_mcc"] for e in metrics["epochs"])
    assert (tiny_checkpoint / "training_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    settings = json.loads((tiny_checkpoint / "train_config.json").read_text())
    assert settings["max_length"] == 48 and settings["epochs"] == 2
    model = SentenceClassifier.load(tiny_checkpoint)
    assert model.head_config.labels == [0, 1]
    # how the kept epoch would have labelled its validation rows at each threshold on the score (export --threshold)
    thresholds = metrics["thresholds"]
    sweep = {row["threshold"]: row for row in thresholds["sweep"]}
    assert thresholds["positive_label"] == 1 and list(sweep) == [round(0.05 * i, 2) for i in range(1, 20)]
    assert sweep[0.5]["mcc"] == pytest.approx(best["val_mcc"]) and sweep[0.5]["accuracy"] == best["val_accuracy"]
    assert thresholds["best_mcc"] == max(row["mcc"] for row in sweep.values())
    assert sweep[thresholds["best_mcc_threshold"]]["mcc"] == thresholds["best_mcc"]


def test_training_says_which_threshold_gave_the_best_validation_mcc():
    """A two-label model's best validation MCC may come at another threshold than the more probable label's: the
    run says which, and how to label by it; where it is 0.5 (a tie included), nothing is said."""
    from scorer.pytorch.model import HeadConfig
    from scorer.training.train import _thresholds, threshold_advice

    head = HeadConfig(labels=["no", "yes"], pooling="mean", max_length=32)
    targets = np.arange(200) % 2  # label 1 ("yes") on odd rows
    # "yes" scores 0.75 on the true ones and 0.62 on the others: only a threshold above 0.62 separates them
    probability = np.where(targets == 1, 0.75, 0.62)
    logits = np.stack([np.zeros(200), np.log(probability / (1 - probability))], axis=1).astype(np.float32)
    thresholds = _thresholds(head, logits, targets)
    assert thresholds["positive_label"] == "yes" and thresholds["best_mcc_threshold"] == 0.65
    assert threshold_advice(thresholds) == (
        "validation MCC is highest at threshold 0.65 on the score (1.0000, 0.0000 by the more probable label); to "
        "label by it, export with --threshold 0.65 (chosen on the rows that chose the epoch: confirm it on other "
        "labelled rows)")
    probability = np.where(targets == 1, 0.75, 0.3)  # (0.5 among the best: nothing to say)
    logits = np.stack([np.zeros(200), np.log(probability / (1 - probability))], axis=1).astype(np.float32)
    assert threshold_advice(_thresholds(head, logits, targets)) is None
    assert _thresholds(HeadConfig(["a", "b", "c"], "mean", 32), np.zeros((3, 3)), np.arange(3)) is None


def test_same_seed_same_result(tiny_encoder, tmp_path):
    runner = CliRunner()
    for name in ("a", "b"):
        result = runner.invoke(main, train_args(tiny_encoder, tmp_path / name, "--seed", "7"))
        assert result.exit_code == 0, result.output
    first, second = (json.loads((tmp_path / n / "metrics.json").read_text())["epochs"] for n in "ab")
    for a, b in zip(first, second, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["val_mcc"] == b["val_mcc"]


def test_patience_stops_fine_tuning_after_that_many_epochs_without_a_better_validation_figure(tiny_encoder, tmp_path):
    from scorer.config import TrainConfig
    from scorer.training.train import train

    full = train(TrainConfig(model=tiny_encoder, output=tmp_path / "full", epochs=8, rtd_epochs=0, max_length=32,
                             learning_rate=1e-3), progress=False)
    mcc = [epoch.val_mcc for epoch in full.epochs]
    best, stop = 1, None  # where --patience 2 stops: 2 epochs after the best so far, none better
    for epoch in range(2, 8):
        best = epoch if mcc[epoch - 1] > mcc[best - 1] else best
        if epoch - best >= 2:
            stop = epoch
            break
    assert stop is not None  # (these settings stop early)
    result = CliRunner().invoke(main, ["train", "--model", str(tiny_encoder), "--output", str(tmp_path / "early"),
                                       "--epochs", "8", "--rtd-epochs", "0", "--max-length", "32", "--lr", "1e-3",
                                       "--patience", "2"])
    assert result.exit_code == 0, result.output
    assert f"no better validation MCC in the 2 epoch(s) since epoch {best}: stopping early, after epoch {stop} of 8 " \
        "(--patience 2)" in result.output
    assert f"trained {stop} epochs (stopped early: --patience 2) on cpu" in result.output
    metrics = json.loads((tmp_path / "early" / "metrics.json").read_text())
    assert metrics["stopped_early"] is True and metrics["best_epoch"] == best
    assert [epoch["val_mcc"] for epoch in metrics["epochs"]] == mcc[:stop]  # the same epochs, up to the stop
    assert json.loads((tmp_path / "full" / "metrics.json").read_text())["stopped_early"] is False


@pytest.mark.parametrize(("extra", "said"), [
    (["--patience", "-1"], "--patience must be 0 (off) or more epochs, not -1"),
    (["--patience", "2", "--select", "last"], "with --select last every epoch is kept: choose --select mcc or "
                                               "accuracy, or drop --patience")])
def test_patience_needs_a_figure_to_wait_for(tiny_encoder, tmp_path, extra, said):
    result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "c", *extra))
    assert result.exit_code == 2 and said in result.output


def test_training_data_from_a_directory_or_glob_is_its_files_one_after_another(tiny_encoder, tmp_path):
    """Labelled data written in parts (a Spark job's output: part files, empty ones among them, _SUCCESS, a
    _temporary attempt) trains as the parts joined in order would: the same checkpoint, bit for bit; a glob names
    them too."""
    import pyarrow.csv as pacsv

    rows = pacsv.read_csv(example_file("train.csv"))
    parts = tmp_path / "parts"
    (parts / "_temporary" / "0").mkdir(parents=True)
    pq.write_table(rows.slice(0, 150), parts / "part-00000.parquet")
    pacsv.write_csv(rows.slice(150), parts / "part-00001.csv")
    (parts / "_SUCCESS").write_text("")
    pq.write_table(rows.slice(0, 0), parts / "part-00002.parquet")  # empty partitions: no rows, or no bytes at all
    (parts / "part-00003.csv").write_text("")
    pq.write_table(pa.table({"sentence": ["half written"], "label": ["junk"]}),
                   parts / "_temporary" / "0" / "x.parquet")
    pacsv.write_csv(rows, tmp_path / "joined.csv")
    runner = CliRunner()
    common = ["--rtd-epochs", "1", "--epochs", "1", "--seed", "3"]
    result = runner.invoke(main, [a for a in train_args(tiny_encoder, tmp_path / "from-parts", "--data", str(parts),
                                                        *common) if a != "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"{parts}: {rows.num_rows} rows from 3 files" in result.output
    assert f"{parts}: left out 1 empty file(s), of no bytes, so no rows (part-00003.csv)" in result.output
    assert f"{parts}: left out 1 data file(s) named with or under a leading '_' (_temporary/0/x.parquet)" \
        in result.output
    result = runner.invoke(main, train_args(tiny_encoder, tmp_path / "from-one", "--data", str(tmp_path / "joined.csv"),
                                            *common))
    assert result.exit_code == 0, result.output
    for name in ("model.safetensors", "scorer_head.safetensors"):
        assert (tmp_path / "from-parts" / name).read_bytes() == (tmp_path / "from-one" / name).read_bytes()
    result = runner.invoke(main, train_args(tiny_encoder, tmp_path / "globbed", "--data", f"{parts}/part-*",
                                            "--val-data", f"{parts}/*.csv", "--rtd-epochs", "0"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "globbed" / "metrics.json").read_text())
    assert metrics["train_rows"] == rows.num_rows and metrics["val_rows"] == rows.num_rows - 150
    assert metrics["val_source"] == f"{parts}/*.csv"


def test_parts_of_one_labelled_set_must_agree_and_a_bad_row_is_named_by_its_file(tiny_encoder, tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "a.csv").write_text("sentence,label\n" + "".join(f"sentence {i},{i % 2}\n" for i in range(20)))
    (parts / "b.csv").write_text("sentence,label\n" + "".join(f"more {i},{'yes' if i % 2 else 'no'}\n"
                                                               for i in range(20)))
    result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "c", "--data", str(parts)))
    assert result.exit_code == 3 and result.output.count("\n") == 1
    assert f"{parts / 'b.csv'}: column 'label' holds names ('no', ...) where {parts / 'a.csv'} holds whole numbers " \
        "(0, ...); labels must be all whole numbers or all names: make the files agree" in result.output
    (parts / "b.csv").write_text("sentence,label\nmore,1\n,0\n")
    result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "c", "--data", str(parts)))
    assert result.exit_code == 3
    assert f"{parts / 'b.csv'} row 2: column 'sentence' is empty or not text" in result.output
    result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "c", "--data", f"{parts}/*.tsv"))
    assert result.exit_code == 3 and f"no .parquet, .csv or .tsv file matches {parts}/*.tsv" in result.output
    (parts / "a.csv").write_text("")
    (parts / "b.csv").write_text("")
    result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "c", "--data", str(parts)))
    assert result.exit_code == 3 and f"{parts}: every data file is empty; nothing to read" in result.output
    assert not (tmp_path / "c").exists()


def test_val_data_from_parquet_and_string_labels(tiny_encoder, tmp_path):
    rows = {"text": [f"sentence number {i} is {'good' if i % 2 else 'bad'}" for i in range(40)],
            "verdict": ["yes" if i % 2 else "no" for i in range(40)]}
    pq.write_table(pa.table(rows), tmp_path / "train.parquet")
    pq.write_table(pa.table(rows).slice(0, 10), tmp_path / "val.parquet")
    result = CliRunner().invoke(main, train_args(
        tiny_encoder, tmp_path / "ckpt", "--data", str(tmp_path / "train.parquet"), "--val-data",
        str(tmp_path / "val.parquet"), "--text-column", "text", "--label-column", "verdict"))
    assert result.exit_code == 0, result.output
    assert "10 of 10 validation sentences in" in result.output  # the validation rows are training rows too
    metrics = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    assert metrics["labels"] == ["no", "yes"] and metrics["val_rows"] == 10


def test_the_validation_split_takes_each_labels_share_so_a_rare_label_is_validated(tmp_path):
    from scorer.config import TrainConfig
    from scorer.training.dataset import load_training_data

    data = tmp_path / "train.csv"
    data.write_text("sentence,label\n" + "".join(f"sentence {i},{int(i % 40 == 0)}\n" for i in range(400)))
    split = load_training_data(TrainConfig(data=data, seed=3))
    assert np.bincount(split.val_targets).tolist() == [39, 1] and np.bincount(split.train_targets).tolist() == [351, 9]
    assert sorted(split.train_texts + split.val_texts) == sorted(f"sentence {i}" for i in range(400))
    again, other = (load_training_data(TrainConfig(data=data, seed=seed)) for seed in (3, 4))
    assert again.val_texts == split.val_texts and other.val_texts != split.val_texts
    data.write_text("sentence,label\na,0\nb,1\nc,2\nd,3\n")
    with pytest.raises(InputError, match="no label has two rows"):
        load_training_data(TrainConfig(data=data))


def test_max_length_above_the_position_limit_is_refused(tiny_encoder, tmp_path):
    result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "c", "--max-length", "200"))
    assert result.exit_code == 2
    assert f"position limit {TINY_POSITIONS}" in result.output
    result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "c", "--max-length", "513"))
    assert result.exit_code == 2 and "between 3 and 512" in result.output
    assert not (tmp_path / "c").exists()


def test_bad_training_inputs_exit_3_with_one_line(tiny_encoder, tmp_path):
    data = tmp_path / "train.csv"
    data.write_text("sentence,label\n" + "".join(f"s {i},{i % 2}\n" for i in range(20)))
    val = tmp_path / "val.csv"
    val.write_text("sentence,label\nx,0\ny,7\n")
    runner = CliRunner()
    result = runner.invoke(main, train_args(tiny_encoder, tmp_path / "c", "--data", str(data), "--val-data", str(val)))
    assert result.exit_code == 3
    assert "label(s) 7 in column 'label' do not occur in" in result.output
    val.write_text("sentence,label\nx,0.0\ny,maybe\nz,1\n")  # a name among numbers: its row
    result = runner.invoke(main, train_args(tiny_encoder, tmp_path / "c", "--data", str(data), "--val-data", str(val)))
    assert result.exit_code == 3 and "val.csv row 2: column 'label' holds the label 'maybe'" in result.output
    val.write_text("sentence,label\nx,no\ny,maybe\n")
    result = runner.invoke(main, train_args(tiny_encoder, tmp_path / "c", "--data", str(data), "--val-data", str(val)))
    assert result.exit_code == 3 and "label(s) maybe, no in column 'label' do not occur in" in result.output
    data.write_text("sentence,label\n" + "".join(f"s {i},{i % 2}\n" for i in range(20)) + "s x,yes\n")
    result = runner.invoke(main, train_args(tiny_encoder, tmp_path / "c", "--data", str(data)))
    assert result.exit_code == 3 and "train.csv row 21: column 'label' holds the label 'yes'" in result.output
    data.write_text("sentence,label\n" + "".join(f"s {i},{i % 2}\n" for i in range(20)))
    result = runner.invoke(main, train_args(tiny_encoder, tmp_path / "c", "--data", str(data), "--text-column", "body"))
    assert result.exit_code == 3 and "columns are sentence, label" in result.output
    data.write_text("sentence,label\n" + "".join(f"s {i},1\n" for i in range(20)))
    result = runner.invoke(main, train_args(tiny_encoder, tmp_path / "c", "--data", str(data)))
    assert result.exit_code == 3 and "only the label 1" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_files_joined_with_their_headers_are_refused_naming_the_repeated_header_rows(tiny_encoder, tmp_path):
    """`cat a.csv b.csv > train.csv`: b's header line became a row whose label, 'label', was learnt as a third
    class (warned of only as a rare label, "is it a typo?")."""
    part = "sentence,label\n" + "".join(f"the {i} thing,{'pos' if i % 2 else 'neg'}\n" for i in range(30))
    data = tmp_path / "train.csv"
    data.write_text(part * 3)
    result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "c", "--data", str(data)))
    assert result.exit_code == 3 and result.output.strip().splitlines() == [
        f"error: {data}: data row(s) 31, 62 repeat the header line (sentence,label): files joined with their headers "
        "(cat a.csv b.csv)? remove those lines (join such files keeping the first one's header alone: tail -n +2 on "
        "the others)"], result.output
    assert not (tmp_path / "c").exists()


def test_sentences_the_tokenizer_reads_no_token_in_are_refused_as_scoring_leaves_them_unscored(tiny_encoder,
                                                                                                 tmp_path):
    """A zero-width space or a byte-order mark alone is not blank to Python, so not refused as empty: it trained as
    [CLS] [SEP] with a label, where `scorer run` leaves such a row unscored (status empty)."""
    data = tmp_path / "train.csv"
    data.write_text("sentence,label\n" + "".join(f"s {i},{i % 2}\n" for i in range(20)) + "\u200b,1\n\x07,0\n")
    result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "c", "--data", str(data)))
    assert result.exit_code == 3 and result.output.strip().splitlines() == [
        f"error: {data}: 2 sentence(s) hold no token the tokenizer reads ('\\u200b', '\\x07': zero-width or "
        "control characters only); fix or remove those rows"], result.output
    assert not (tmp_path / "c").exists()


def test_text_the_vocabulary_cannot_read_is_refused_and_text_it_reads_poorly_warned(tiny_encoder, tmp_path):
    """Uncased English WordPiece reads 'ⴰⵣⵓⵍ' (Tifinagh) as [UNK] only: nothing would be learnt from such text."""
    data = tmp_path / "train.csv"
    data.write_text("sentence,label\n" + "".join(f"ⴰⵣⵓⵍ ⵜⴰⵏⵎⵉⵔⵜ,{i % 2}\n" for i in range(20)))
    result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "c", "--data", str(data)))
    assert result.exit_code == 3 and "train.csv: no sentence has a token that the vocabulary" in result.output
    assert "(36 [UNK])" in result.output and not (tmp_path / "c").exists()  # 18 rows after the validation split
    data.write_text("sentence,label\n" + "".join(f"the ⴰⵣⵓⵍ cat ⵜⴰⵏⵎⵉⵔⵜ,{i % 2}\n" for i in range(20)))
    result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "c", "--data", str(data)))
    assert result.exit_code == 0 and "50% of the training tokens are [UNK]" in result.output


def test_each_epochs_header_comes_before_its_batch_lines_and_its_results(tiny_encoder, tmp_path):
    """The notebook's log: '======== Epoch 1 / 2 ========', then that epoch's 'Batch 40 of N' lines, then its
    losses, accuracy and MCC."""
    args = [a for a in train_args(tiny_encoder, tmp_path / "c", "--batch-size", "4", "--rtd-epochs", "0")
            if a != "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    first, second = lines.index("======== Epoch 1 / 2 ========"), lines.index("======== Epoch 2 / 2 ========")
    for start, end in ((first, second), (second, len(lines))):
        epoch = lines[start:end]
        assert epoch[1].startswith("Batch    40  of ") and epoch[2].startswith("Average training loss: ")
        assert any(line.startswith("Validation MCC: ") for line in epoch)


@pytest.mark.parametrize("extra,said", [
    (["--lr", "1e6", "--rtd-epochs", "0"], "epoch 1's loss is nan; nothing was written; lower --lr (now 1e+06)"),
    (["--rtd-epochs", "1", "--rtd-lr", "1e6"], "the replaced-token epochs' loss is nan; nothing was written; lower "
                                               "--rtd-lr"),
])
def test_a_diverged_training_exits_2_and_writes_no_checkpoint(tiny_encoder, tmp_path, extra, said):
    """A NaN loss made NaN weights, a checkpoint that scores nothing, and metrics.json with NaN in it."""
    result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "c", *extra))
    assert result.exit_code == 2 and f"training diverged: {said}" in result.output
    assert not (tmp_path / "c").exists()


def test_a_gpu_out_of_memory_exits_6_saying_what_to_lower_and_writes_no_checkpoint(tiny_encoder, tmp_path,
                                                                                     monkeypatch):
    # (no GPU here: a training step raises what PyTorch raises when the GPU's memory runs out)
    import torch

    from scorer.pytorch.loop import Trainer

    def full(self, *args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                          "of 79.19 GiB of which 1.02 GiB is free. Of the allocated memory ...")

    monkeypatch.setattr(Trainer, "_step", full)
    result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "c", "--rtd-epochs", "0"))
    assert result.exit_code == 6, result.output
    assert "training ran out of memory on cpu (CUDA out of memory. Tried to allocate 2.00 GiB); lower --batch-size " \
           "(now 32) or --max-length (now 32), or free the GPU (is another process using it?); nothing was written" \
        in result.output
    assert not (tmp_path / "c").exists()


def test_a_second_run_into_the_same_output_is_refused_before_any_work_while_the_first_runs(tiny_encoder, tmp_path):
    from scorer.data.lock import OutputLock

    output = tmp_path / "checkpoint"
    with OutputLock(output, temporaries=[]):  # (as the first run holds it)
        result = CliRunner().invoke(main, train_args(tiny_encoder, output))
    assert result.exit_code == 5 and result.output.count("\n") == 1, result.output
    assert f"another scorer train is writing {output}; wait for it to finish, or choose another --output" in \
        result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # (nothing trained, no state, no lock file left)
    result = CliRunner().invoke(main, train_args(tiny_encoder, output, "--rtd-epochs", "0"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_filesystem_without_locks_is_warned_of_and_training_goes_on(tiny_encoder, tmp_path, monkeypatch):
    import errno
    import fcntl

    def unsupported(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", unsupported)  # (an NFS mount without its lock service)
    result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "checkpoint", "--rtd-epochs", "0"))
    assert result.exit_code == 0, result.output
    assert "its filesystem does not support file locks" in result.output and "the run goes on without the lock" \
        in result.output
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()


def test_existing_checkpoint_needs_overwrite(tiny_encoder, tmp_path):
    (tmp_path / "c").mkdir()
    result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "c"))
    assert result.exit_code == 5 and "--overwrite" in result.output


@pytest.mark.parametrize("extra", [[], ["--mlm-epochs", "1"]])
def test_missing_model_directory_is_a_model_error(tmp_path, extra):
    """(With --mlm-epochs it was transformers' message, of a download from huggingface.co that cannot be made.)"""
    result = CliRunner().invoke(main, ["train", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "c"),
                                       *extra])
    assert result.exit_code == 4 and result.output.strip() == (
        f"error: {tmp_path / 'nope'} is not a directory; pass a local Hugging Face model directory with --model")


@pytest.mark.parametrize("damage,message", [
    ("cut weights", "cannot load a Hugging Face encoder (Error while deserializing header"),
    ("renamed weights", "its weights lack the encoder's embeddings.LayerNorm.bias, embeddings.LayerNorm.weight, "
                        "embeddings.position_embeddings.weight and 34 more, which would start random"),
    ("no tokenizer", "no tokenizer files (tokenizer.json, or vocab.txt for WordPiece)"),
])
def test_a_damaged_model_directory_is_a_model_error(tiny_encoder, tmp_path, damage, message):
    """Renamed weights (as a sentence-transformers directory can hold them) would leave the encoder random, and
    transformers only warns: training from noise would look like a poor model, not like an error."""
    from safetensors.torch import load_file, save_file

    model = Path(shutil.copytree(tiny_encoder, tmp_path / "model"))
    weights = model / "model.safetensors"
    if damage == "cut weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "renamed weights":
        save_file({f"0.auto_model.{name}": tensor for name, tensor in load_file(weights).items()}, weights)
    else:
        for name in TOKENIZER_FILES:
            (model / name).unlink()
    result = CliRunner().invoke(main, train_args(model, tmp_path / "c"))
    assert result.exit_code == 4 and message in result.output and not (tmp_path / "c").exists()


def test_an_output_that_holds_the_model_or_data_is_refused_even_with_overwrite(tiny_encoder, tmp_path):
    """--overwrite replaces the whole output directory: one holding the model or the data would lose them."""
    work = tmp_path / "work"
    model = Path(shutil.copytree(tiny_encoder, work / "model"))
    data = Path(shutil.copy(example_file("train.csv"), work / "train.csv"))
    for output, named in ((model, f"holds --model {model}"), (work, f"holds --model {model}")):
        result = CliRunner().invoke(main, train_args(model, output, "--overwrite"))
        assert result.exit_code == 5 and named in result.output
    result = CliRunner().invoke(main, train_args(tiny_encoder, work, "--data", str(data), "--overwrite"))
    assert result.exit_code == 5 and f"holds --data {data}" in result.output
    assert sorted(p.name for p in work.iterdir()) == ["model", "train.csv"]
    assert sorted(p.name for p in model.iterdir()) == sorted(p.name for p in tiny_encoder.iterdir())


def test_cuda_device_without_a_gpu_exits_6(tiny_encoder, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "c", "--device", "cuda"))
    assert result.exit_code == 6 and "no CUDA GPU" in result.output


def test_bf16_autocast_changes_the_steps_not_the_saved_fp32_weights(tiny_encoder, tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        output = tmp_path / precision
        result = CliRunner().invoke(main, train_args(tiny_encoder, output, "--precision", precision, "--seed", "3"))
        assert result.exit_code == 0, result.output
        metrics = json.loads((output / "metrics.json").read_text())
        assert metrics["precision"] == precision
        assert all(p.dtype == torch.float32 for p in SentenceClassifier.load(output).parameters())
        losses[precision] = [e["train_loss"] for e in metrics["epochs"]]
    # Same seed, same batches: bf16 rounding makes the losses differ, but only a little.
    assert losses["fp32"] != losses["bf16"]
    assert losses["fp32"] == pytest.approx(losses["bf16"], rel=0.05)


def test_compiled_steps_train_the_same_model_as_eager_steps(tmp_path, monkeypatch):
    import torch._inductor.config
    from torch._dynamo.utils import counters

    from tests.conftest import build_tiny_encoder

    # Inductor's C++ kernels without SIMD: a third less compile time on 2 cores (their vectorisation is torch's to
    # test; what is ours is that the steps run compiled, train the same model and save the plain model's weights)
    monkeypatch.setattr(torch._inductor.config.cpp, "vec_isa_ok", False)

    # No dropout anywhere (encoder and head), so a compiled step must compute what an eager one does.
    encoder = build_tiny_encoder(tmp_path / "no-dropout-bert", hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0)
    counters.clear()
    runs = {}
    for mode, extra in (("eager", ()), ("compiled", ("--compile",))):
        output = tmp_path / mode
        result = CliRunner().invoke(main, train_args(encoder, output, "--dropout", "0", "--rtd-epochs", "0",
                                                     "--precision", "fp32", "--seed", "5", *extra))
        assert result.exit_code == 0, result.output
        assert json.loads((output / "train_config.json").read_text())["compile"] == (mode == "compiled")
        assert (counters["stats"]["unique_graphs"] > 0) == (mode == "compiled")  # dynamo compiled only then
        runs[mode] = (json.loads((output / "metrics.json").read_text()), SentenceClassifier.load(output).state_dict())
    (eager, eager_weights), (compiled, compiled_weights) = runs["eager"], runs["compiled"]
    assert [e["train_loss"] for e in compiled["epochs"]] == pytest.approx([e["train_loss"] for e in eager["epochs"]],
                                                                           rel=1e-4)
    # The checkpoint is the plain model's (no compiled wrapper's names) and holds the same trained weights.
    assert compiled_weights.keys() == eager_weights.keys()
    for name, weight in eager_weights.items():
        assert torch.allclose(compiled_weights[name], weight, atol=1e-4), name


def test_auto_precision_is_fp32_on_cuda_and_follows_the_cpu_otherwise():
    from scorer.training.device import cpu_has_bf16, resolve_precision

    assert resolve_precision("auto", "cuda") == "fp32"
    assert resolve_precision("bf16", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_bf16() else "fp32")
    assert resolve_precision("fp32", "cuda") == "fp32"


def test_rdrop_adds_the_symmetric_kl_of_two_dropout_passes(tiny_encoder):
    import numpy as np

    from scorer.config import TrainConfig
    from scorer.pytorch.loop import Trainer
    from scorer.pytorch.model import HeadConfig, load_encoder
    from scorer.text.tokens import TextEncoder

    model = SentenceClassifier(load_encoder(tiny_encoder), HeadConfig([0, 1], "mean", 32))
    encoded = TextEncoder.from_dir(tiny_encoder, 32).encode(["a b c", "the cat sat on it", "no"] * 4)
    targets = np.array([0, 1, 1] * 4)
    inputs = [torch.from_numpy(a) for a in encoded.pad(np.arange(len(targets)))] + [torch.from_numpy(targets)]

    def loss(alpha: float, seed: int = 0) -> float:
        trainer = Trainer(model, TrainConfig(model=tiny_encoder, rdrop=alpha), "cpu", "fp32", encoded, targets)
        torch.manual_seed(seed)
        return trainer._loss(*inputs).item()

    model.eval()  # no dropout: both passes are the same, the KL term is zero, R-Drop is plain cross-entropy
    assert loss(1.0) == pytest.approx(loss(0.0), rel=1e-6)
    model.train()  # dropout: same seed, same masks; the loss grows linearly in alpha by half the symmetric KL
    one, two, three = loss(1.0), loss(2.0), loss(3.0)
    assert two - one > 1e-6
    # (the losses are float32 near 0.7, so each difference is good to about an ulp there, 6e-8: 1.6e-4 of it)
    assert three - two == pytest.approx(two - one, rel=1e-4, abs=4 * float(np.spacing(np.float32(three))))


def test_rtd_aux_trains_a_replaced_token_detector_beside_the_classifier(tiny_encoder):
    import numpy as np
    from transformers import AutoTokenizer

    from scorer.config import TrainConfig
    from scorer.pytorch.loop import Trainer
    from scorer.pytorch.model import HeadConfig, load_encoder
    from scorer.text.tokens import TextEncoder
    from scorer.training.adapt import ReplacedTokens

    torch.manual_seed(0)
    model = SentenceClassifier(load_encoder(tiny_encoder), HeadConfig([0, 1], "mean", 32))
    texts = ["the cat sat on the mat", "a dog ran to the park today", "she reads the old book", "it is late"] * 4
    encoded = TextEncoder.from_dir(tiny_encoder, 32).encode(texts)
    targets = np.array([1, 1, 0, 0] * 4)
    inputs = [torch.from_numpy(a) for a in encoded.pad(np.arange(len(targets)))] + [torch.from_numpy(targets)]
    special = AutoTokenizer.from_pretrained(str(tiny_encoder)).all_special_ids
    auxiliary = ReplacedTokens.build(model.encoder, encoded, special, "cpu")
    config = TrainConfig(model=tiny_encoder, rtd_aux=1.0, learning_rate=3e-3, warmup_ratio=0.0, epochs=40)
    trainer = Trainer(model, config, "cpu", "fp32", encoded, targets, auxiliary=auxiliary)

    def detection_loss() -> float:  # the same corruptions each time, no dropout
        model.eval()
        with torch.no_grad():
            return auxiliary.loss(model.encoder, *inputs[:2], torch.Generator().manual_seed(7), "fp32").item()

    head_before = auxiliary.head[0].weight.detach().clone()
    before = detection_loss()
    model.train()
    step_losses = [trainer._step(*inputs).item() for _ in range(30)]
    assert detection_loss() < before - 0.05  # the detector head and the encoder learned to spot the changes
    assert not torch.allclose(auxiliary.head[0].weight, head_before)
    assert step_losses[-1] < step_losses[0]  # what a step reports is the classification loss, and it fell too
    assert trainer.optimizer.param_groups[-1]["params"][-1] is auxiliary.head[2].bias


def test_rtd_aux_is_a_train_option_recorded_in_the_checkpoint(tiny_encoder, tmp_path):
    output = tmp_path / "aux"
    result = CliRunner().invoke(main, train_args(tiny_encoder, output, "--rtd-aux", "0.5", "--epochs", "1"))
    assert result.exit_code == 0, result.output
    assert json.loads((output / "train_config.json").read_text())["rtd_aux"] == 0.5
    assert SentenceClassifier.load(output).classifier.out_features == 2  # the detector head is not kept
    refused = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "no", "--rtd-aux", "-1"))
    assert refused.exit_code != 0 and "--rtd-aux must be 0 (off) or more" in refused.output


def test_masked_lm_epochs_adapt_the_encoder_before_fine_tuning(tiny_encoder, tmp_path):
    output = tmp_path / "adapted"
    result = CliRunner().invoke(main, train_args(tiny_encoder, output, "--mlm-epochs", "3", "--mlm-lr", "3e-3",
                                                 "--epochs", "1"))
    assert result.exit_code == 0, result.output
    losses = json.loads((output / "metrics.json").read_text())["mlm_losses"]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.1  # it learned to fill in masked tokens
    assert json.loads((output / "train_config.json").read_text())["mlm_epochs"] == 3
    plain = tmp_path / "plain"  # same seed and fine-tuning, no masked-LM stage: a different encoder comes out
    assert CliRunner().invoke(main, train_args(tiny_encoder, plain, "--epochs", "1")).exit_code == 0
    word = "embeddings.word_embeddings.weight"
    adapted, fine_tuned = (SentenceClassifier.load(p).encoder.state_dict()[word] for p in (output, plain))
    assert not torch.allclose(adapted, fine_tuned, atol=1e-4)
    assert json.loads((plain / "metrics.json").read_text())["mlm_losses"] == []


@pytest.mark.parametrize("draw", ["frequency", "context"])
def test_replaced_token_epochs_run_before_fine_tuning_and_are_recorded(tiny_encoder, tmp_path, draw):
    output = tmp_path / "adapted"
    result = CliRunner().invoke(main, train_args(tiny_encoder, output, "--rtd-epochs", "2", "--epochs", "1",
                                                 "--rtd-draw", draw))
    assert result.exit_code == 0, result.output
    metrics = json.loads((output / "metrics.json").read_text())
    assert len(metrics["rtd_losses"]) == 2 and all(0 < loss < 1 for loss in metrics["rtd_losses"])
    config = json.loads((output / "train_config.json").read_text())
    assert metrics["mlm_losses"] == [] and (config["rtd_epochs"], config["rtd_draw"]) == (2, draw)


def test_replaced_token_detection_learns_which_tokens_changed(tiny_encoder):
    from transformers import AutoModel

    from scorer.text.tokens import TextEncoder
    from scorer.training.adapt import replaced_token_detection

    # One sentence over and over: a changed word stands where that word never stands, so a tiny encoder can learn
    # to find it. About 30% of the tokens are labelled: a constant guess scores about 0.6.
    encoded = TextEncoder.from_dir(tiny_encoder, 32).encode(["one two three four five six seven eight nine ten"] * 128)
    torch.manual_seed(0)
    encoder = AutoModel.from_pretrained(str(tiny_encoder))
    before = encoder.embeddings.word_embeddings.weight.detach().clone()
    encoder, losses = replaced_token_detection(encoder, encoded, [0, 100, 101, 102, 103], 12, 1e-2, 32, "cpu",
                                               "fp32", 0)
    assert losses[-1] < 0.45 and losses[0] > 0.55
    assert not torch.allclose(before, encoder.embeddings.word_embeddings.weight)
    assert not encoder.training


def _corrupted_rows(monkeypatch, **rates):
    """_corrupt on 400 rows of distinct tokens (5-40 long, padded to 41), with the given rates and the rest 0;
    every drawn token is 7, which the inputs never hold. Yields (input row, output row, output labels)."""
    from scorer.training import adapt

    for name in ("SWAP_RATE", "REPLACE_RATE", "DELETE_RATE", "INSERT_RATE"):
        monkeypatch.setattr(adapt, name, rates.get(name.lower(), 0.0))
    torch.manual_seed(0)
    length = torch.randint(5, 40, (400,))
    attention_mask = (torch.arange(41)[None, :] <= length[:, None]).long()
    input_ids = torch.stack([torch.randperm(29000)[:41] + 1000 for _ in range(400)])
    input_ids[:, 0], input_ids[torch.arange(400), length] = 101, 102
    input_ids[attention_mask == 0] = 0
    frequencies = torch.zeros(30522)
    frequencies[7] = 1.0
    corrupted, mask, ordinary, changed = adapt._corrupt(input_ids, attention_mask, torch.tensor([0, 101, 102, 103]),
                                                        adapt.Draws(frequencies), torch.Generator().manual_seed(1))
    assert torch.equal(ordinary, mask.bool() & (corrupted != 101) & (corrupted != 102))
    assert corrupted[mask == 0].eq(0).all() and not changed[~ordinary].any()
    for row in range(400):
        keep = mask[row].bool()
        before = input_ids[row][attention_mask[row].bool()].tolist()
        after, labels = corrupted[row][keep].tolist(), changed[row][keep].tolist()
        assert (after[0], after[-1]) == (101, 102)
        yield before, after, labels


def test_corruption_swaps_neighbours_and_labels_both(monkeypatch):
    swaps = 0
    for before, after, labels in _corrupted_rows(monkeypatch, swap_rate=0.2):
        assert len(after) == len(before) and labels == [a != b for a, b in zip(after, before, strict=True)]
        for place in (p for p, label in enumerate(labels) if label):
            other = place + 1 if after[place] == before[place + 1] else place - 1
            assert after[place] == before[other] and after[other] == before[place]
            swaps += 1
    assert swaps > 1000


def test_corruption_replaces_tokens_with_drawn_ones(monkeypatch):
    for before, after, labels in _corrupted_rows(monkeypatch, replace_rate=0.2):
        assert labels == [token == 7 for token in after]
        assert [b for a, b in zip(after, before, strict=True) if a != 7] == [a for a in after if a != 7]


def test_corruption_deletes_tokens_and_labels_the_one_after(monkeypatch):
    deleted = 0
    for before, after, labels in _corrupted_rows(monkeypatch, delete_rate=0.2):
        assert set(after) <= set(before) and sorted(after, key=before.index) == after  # a subsequence
        expected = [0 < place < len(after) - 1 and before.index(token) != before.index(after[place - 1]) + 1
                    for place, token in enumerate(after)]  # never [CLS] or [SEP]
        assert labels == expected
        deleted += len(before) - len(after)
    assert deleted > 500


def test_corruption_inserts_drawn_tokens_and_labels_them(monkeypatch):
    inserted = 0
    for before, after, labels in _corrupted_rows(monkeypatch, insert_rate=0.2):
        assert [token for token in after if token != 7] == before and labels == [token == 7 for token in after]
        inserted += len(after) - len(before)
    assert inserted > 500


def test_corruption_rates_together_change_about_their_sum(monkeypatch):
    from scorer.training import adapt

    rates = {name: getattr(adapt, name.upper()) for name in ("swap_rate", "replace_rate", "delete_rate",
                                                              "insert_rate")}
    changed = ordinary = 0
    for _, after, labels in _corrupted_rows(monkeypatch, **rates):
        changed, ordinary = changed + sum(labels), ordinary + len(after) - 2
    assert 0.8 * sum(rates.values()) < changed / ordinary < 1.4 * sum(rates.values())  # a swap changes two


def _flat(rows: list[list[int]]):
    from scorer.text.tokens import Encoded

    offsets = np.cumsum([0] + [len(row) for row in rows])
    return Encoded(np.concatenate([np.asarray(row, np.int64) for row in rows]), offsets, np.zeros(len(rows), bool))


def test_context_draws_follow_the_left_neighbour_as_often_as_in_the_text():
    from scorer.training.adapt import Draws

    # 5 is followed by 6 twice and by 8 once; 7 and 8 only by [SEP]; 9 ends a sentence without [SEP] and the next
    # sentence's first word must not count as its follower.
    rows = [[101, 5, 6, 7, 102], [101, 5, 8, 102], [101, 5, 6, 102], [101, 9], [4, 6, 102]]
    draws = Draws.from_encoded(_flat(rows), [0, 101, 102], "cpu", context=True)
    generator = torch.Generator().manual_seed(0)

    def drawn(previous: int) -> list[int]:
        return draws.draw(torch.full((3000,), previous), generator).tolist()

    after_5 = drawn(5)
    assert set(after_5) == {6, 8} and abs(after_5.count(6) / 3000 - 2 / 3) < 0.03
    assert set(drawn(6)) == {7} and set(drawn(4)) == {6} and set(drawn(101)) == {5, 9}
    by_frequency = {4, 5, 6, 7, 8, 9}  # no follower, or a token the text never holds: the frequency draw
    for previous in (7, 9, 30000):
        assert set(drawn(previous)) == by_frequency
    assert draws.draw(torch.zeros(0, dtype=torch.long), generator).shape == (0,)


@pytest.mark.parametrize("rate", ["replace_rate", "insert_rate"])
def test_context_corruption_puts_tokens_where_the_text_has_them_after_their_left_neighbour(monkeypatch, rate):
    from scorer.training import adapt

    monkeypatch.setattr(adapt, "SWAP_RATE", 0.0)
    monkeypatch.setattr(adapt, "DELETE_RATE", 0.0)
    monkeypatch.setattr(adapt, "REPLACE_RATE", 0.2 if rate == "replace_rate" else 0.0)
    monkeypatch.setattr(adapt, "INSERT_RATE", 0.2 if rate == "insert_rate" else 0.0)
    rng = np.random.default_rng(0)  # 300 sentences of 3-30 words over a 40-word vocabulary
    rows = [[101, *rng.integers(1000, 1040, rng.integers(3, 30)).tolist(), 102] for _ in range(300)]
    pairs = {pair for row in rows for pair in itertools.pairwise(row)}
    encoded = _flat(rows)
    draws = adapt.Draws.from_encoded(encoded, [0, 101, 102], "cpu", context=True)
    input_ids, attention_mask = (torch.from_numpy(a) for a in encoded.pad(np.arange(len(rows))))
    corrupted, mask, _, changed = adapt._corrupt(input_ids, attention_mask, torch.tensor([0, 101, 102]), draws,
                                                 torch.Generator().manual_seed(1))
    new = 0
    for row in range(len(rows)):
        after, labels = corrupted[row][mask[row].bool()].tolist(), changed[row][mask[row].bool()].tolist()
        assert len(after) == len(rows[row]) if rate == "replace_rate" else len(after) >= len(rows[row])
        # A replaced token follows its left neighbour as that stood before the replacements (which may change it too)
        left = rows[row] if rate == "replace_rate" else after
        for place in (p for p, label in enumerate(labels) if label):
            assert (left[place - 1], after[place]) in pairs
            new += 1
    assert new > 400


def test_masking_leaves_special_and_padding_tokens_and_follows_80_10_10():
    from scorer.training.adapt import MASK_RATE, _mask

    torch.manual_seed(0)
    input_ids = torch.randint(1000, 30000, (400, 50))
    input_ids[:, 0], input_ids[:, 40] = 101, 102
    attention_mask = torch.ones_like(input_ids)
    attention_mask[:, 41:] = 0
    special = torch.tensor([0, 101, 102, 103])
    masked, chosen, targets = _mask(input_ids, attention_mask, special, 103, 30522, torch.Generator().manual_seed(1))
    assert not chosen[:, 0].any() and not chosen[:, 40:].any()
    assert torch.equal(targets, input_ids[chosen]) and torch.equal(masked[~chosen], input_ids[~chosen])
    assert abs(chosen[:, 1:40].float().mean().item() - MASK_RATE) < 0.01
    became_mask = (masked[chosen] == 103).float().mean().item()
    kept = (masked[chosen] == input_ids[chosen]).float().mean().item()
    assert abs(became_mask - 0.8) < 0.03 and abs(kept - 0.1) < 0.03


def test_device_rows_cut_the_same_batches_as_host_padding(tiny_encoder):
    from scorer.pytorch.epochs import DeviceRows, bucketed_batches
    from scorer.text.tokens import TextEncoder

    texts = ["a b c", "the cat sat on the mat and then it slept", "no", "", "one two three four five six"] * 7
    encoded = TextEncoder.from_dir(tiny_encoder, 8).encode(texts)  # some rows cut at 8 tokens, one of only 2
    targets = np.arange(len(texts)) % 2
    batches = bucketed_batches(encoded.lengths, 4, np.random.default_rng(0))
    seen = 0
    for rows, (ids, mask, labels) in zip(batches, DeviceRows(encoded, "cpu", targets).batches(batches), strict=True):
        host_ids, host_mask = encoded.pad(rows)
        assert torch.equal(ids, torch.from_numpy(host_ids)) and torch.equal(mask, torch.from_numpy(host_mask))
        assert torch.equal(labels, torch.from_numpy(targets[rows]))
        seen += len(rows)
    assert seen == len(texts)


def test_parameters_sharing_a_rate_and_decay_share_one_optimizer_group(tiny_encoder):
    from scorer.pytorch.loop import _parameter_groups
    from scorer.pytorch.model import HeadConfig, load_encoder

    model = SentenceClassifier(load_encoder(tiny_encoder), HeadConfig([0, 1], "mean", 32))
    names = {id(p): n for n, p in model.named_parameters()}
    flat = _parameter_groups(model, 1e-4, 0.01, 1.0)
    assert len(flat) == 2 and {g["lr"] for g in flat} == {1e-4}  # two groups: fewer fused-optimizer launches
    layered = _parameter_groups(model, 1e-4, 0.01, 0.5)
    # Embeddings, 2 layers, the head: four rates, each with and without decay.
    assert sorted({g["lr"] for g in layered}) == pytest.approx([1e-4 * 0.5 ** k for k in (3, 2, 1, 0)])
    for groups in (flat, layered):
        params = [names[id(p)] for g in groups for p in g["params"]]
        assert sorted(params) == sorted(names.values())  # every parameter once
        for group in groups:
            decayed = {names[id(p)].endswith("weight") and "LayerNorm" not in names[id(p)] for p in group["params"]}
            assert decayed == {group["weight_decay"] > 0}  # matrices decay; biases and LayerNorm do not


def test_device_rows_round_widths_up_for_cuda_graphs_and_pad_with_zeros(tiny_encoder):
    from scorer.pytorch.epochs import DeviceRows, bucketed_batches
    from scorer.text.tokens import TextEncoder

    texts = ["a b c", "the cat sat on the mat and then it slept", "no", "one two three four five six seven"] * 5
    encoded = TextEncoder.from_dir(tiny_encoder, 12).encode(texts)
    batches = bucketed_batches(encoded.lengths, 3, np.random.default_rng(1))
    widths = set()
    for rows, (ids, mask, _) in zip(batches, DeviceRows(encoded, "cpu").batches(batches, multiple=8, cap=12),
                                    strict=True):
        host_ids, host_mask = encoded.pad(rows)
        longest = host_ids.shape[1]
        assert ids.shape[1] == (8 if longest <= 8 else 12)  # rounded up to 8, or to the cap (12), never cut
        assert torch.equal(ids[:, :longest], torch.from_numpy(host_ids))
        assert torch.equal(mask[:, :longest], torch.from_numpy(host_mask))
        assert not ids[:, longest:].any() and not mask[:, longest:].any()
        widths.add(ids.shape[1])
    assert widths == {8, 12}


def test_cuda_graphs_are_refused_without_a_gpu(tiny_encoder, tmp_path):
    for mode in ("compiled", "captured"):
        result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "c", "--cuda-graphs", mode, "--device",
                                                     "cpu"))
        assert result.exit_code != 0 and "--cuda-graphs needs a CUDA device" in result.output
        if not torch.cuda.is_available():
            result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "d", "--cuda-graphs", mode))
            assert result.exit_code != 0 and "--cuda-graphs needs a CUDA device" in result.output
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_compiled_steps_without_a_compiler_or_pythons_headers_are_refused_before_any_work(tiny_encoder, tmp_path,
                                                                                            monkeypatch):
    """torch.compile builds its kernels with the machine's compiler and Python's headers. In a container with
    neither (Debian's python3 alone), `scorer train --compile` read and tokenised the data, then failed at the first
    step: "unexpected InductorError: InvalidCxxCompiler: No working C++ compiler found..." (exit 1); with g++ and no
    headers, a page of C++ errors. Here inductor is told of a compiler that is not there (its own setting), PATH
    loses gcc and clang (Triton's search), and Python's include directory is one without Python.h."""
    import sysconfig

    import torch._inductor.config

    from scorer.pytorch.graphs import check_compiler

    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", (None, str(tmp_path / "no-such-g++")))
    result = CliRunner().invoke(main, train_args(tiny_encoder, tmp_path / "c", "--compile"))
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "--compile needs what torch.compile builds its kernels with, and this machine lacks a C++ compiler (g++ " \
           "on PATH, or CXX): install them (Debian or Ubuntu: apt install g++ python3-dev), or train without " \
           "--compile" in result.output
    assert not (tmp_path / "c").exists()
    check_compiler(False, "off", "cpu")  # (nothing asked to compile: nothing needed)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(ConfigError, match=r"--cuda-graphs compiled needs .* lacks a C compiler \(gcc or clang on "
                                          r"PATH, or CC\): install them \(Debian or Ubuntu: apt install gcc "):
        check_compiler(False, "compiled", "cuda")
    monkeypatch.setenv("CC", "gcc")
    check_compiler(False, "compiled", "cuda")  # (Python's headers are here)
    paths = sysconfig.get_paths
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {**paths(*a, **k), "include": str(tmp_path)})
    monkeypatch.setattr(sysconfig, "get_path", lambda name, *a, **k: str(tmp_path))
    with pytest.raises(ConfigError, match=rf"lacks a C\+\+ compiler \(g\+\+ on PATH, or CXX\) and Python's headers "
                                          rf"\({re.escape(str(tmp_path / 'Python.h'))}\)"):
        check_compiler(True, "off", "cpu")


@pytest.mark.parametrize("pooling", ["mean", "cls", "mix", "max", "mean-max"])
def test_every_pooling_ignores_padding(tiny_encoder, pooling):
    from scorer.pytorch.model import HeadConfig, load_encoder
    from scorer.text.tokens import TextEncoder

    torch.manual_seed(0)
    model = SentenceClassifier(load_encoder(tiny_encoder), HeadConfig([0, 1], pooling, 32)).eval()
    encoded = TextEncoder.from_dir(tiny_encoder, 32).encode(["a short one", "a much longer sentence " * 4])
    alone = model(*(torch.from_numpy(a) for a in encoded.pad([0])))
    padded = model(*(torch.from_numpy(a) for a in encoded.pad([0, 1])))[:1]
    assert encoded.lengths[1] > encoded.lengths[0] + 5
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)
    assert model.classifier.in_features == model.encoder.config.hidden_size * (2 if pooling == "mean-max" else 1)


def test_a_home_that_cannot_be_written_adds_no_matplotlib_lines_to_a_quiet_run(tiny_encoder, tmp_path):
    """A cron job's account often has no writable home; matplotlib then warned, on import, of its temporary font
    cache, in two lines that --quiet let through on every training run. (HOME is a file here: root can make any
    directory, not one inside a file.)"""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.write_text("not a directory")
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    done = subprocess.run([sys.executable, "-m", "scorer", "train", "--model", str(tiny_encoder), "--output",
                           str(tmp_path / "ck"), "--epochs", "1", "--rtd-epochs", "0", "--max-length", "16", "--quiet"],
                          env={**env, "HOME": str(home)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "matplotlib" not in done.stderr.lower(), done.stderr
    assert (tmp_path / "ck" / "training_loss.png").is_file()
