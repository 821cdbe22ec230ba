"""What saving a training run's state costs, and whether a stopped run resumes to the unstopped one, on CoLA.

In one process, on the same data and settings: a run that never saves (the baseline), a run that saves after every
epoch (`--save-state-every 0`, each save timed and sized), and a run stopped right after its `--stop-after`-th save
and then resumed, whose checkpoint is compared byte for byte with the every-epoch run's (equal on a CPU; on a GPU
two unstopped runs may already differ in the last bits). With `--within SECONDS`, the stopped run saves every SECONDS
instead of after every epoch, so that it stops within an epoch and resumes from a step. Writes JSON.

    python bench/train_resume.py --out bench/results/train-resume-cpu.json     # about 9 minutes on the 2-core box
    python bench/train_resume.py --rtd-epochs 1 --epochs 1 --within 10 --stop-after 1 \
        --out bench/results/train-resume-within-cpu.json                       # about 4 minutes
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import COLA, machine, random_bert, tokenizer_dir, write_json

from scorer.config import TrainConfig
from scorer.training import resume
from scorer.training.train import train

WEIGHTS = ("model.safetensors", "scorer_head.safetensors")


class TimedSaves:
    """Wraps RunState.save to time and size each save (and to stop the run after the `stop_after`-th, as Ctrl-C
    would), the run itself unchanged."""

    def __init__(self, stop_after: int = 0) -> None:
        self.saves: list[dict] = []
        self.stop_after = stop_after
        self.original = resume.RunState.save

    def __enter__(self) -> TimedSaves:
        timed = self

        def save(state, *args, **kwargs):
            before, started = state.last_save, time.perf_counter()
            timed.original(state, *args, **kwargs)
            if state.last_save != before:  # (it wrote one: --save-state-every seconds had passed)
                timed.saves.append({"after": state.saved, "seconds": time.perf_counter() - started,
                                    "megabytes": state.file.stat().st_size / 1e6})
            if timed.stop_after and len(timed.saves) == timed.stop_after:
                raise KeyboardInterrupt

        resume.RunState.save = save
        return self

    def __exit__(self, *exc) -> None:
        resume.RunState.save = self.original


def timed_run(config: TrainConfig, stop_after: int = 0) -> dict:
    started = time.perf_counter()
    with TimedSaves(stop_after) as saves:
        try:
            result = train(config, progress=False)
        except KeyboardInterrupt:
            return {"stopped_after": saves.saves[-1]["after"], "seconds": time.perf_counter() - started,
                    "saves": saves.saves}
    return {"seconds": time.perf_counter() - started, "epoch_seconds": [e.seconds for e in result.epochs],
            "best_val_mcc": result.best.val_mcc, "saves": saves.saves}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", choices=["minilm", "bert-base"], default="minilm",
                        help="the packaged MiniLM, or random weights of the bert-base shape")
    parser.add_argument("--rtd-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--stop-after", type=int, default=2, help="stop the resumed run after this many saves")
    parser.add_argument("--within", type=float, default=0.0, metavar="SECONDS",
                        help="the stopped run saves every SECONDS, within epochs (0: after every epoch)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/train-resume.json"))
    args = parser.parse_args()
    results: dict = {"machine": machine(args.device), "model": args.model, "rtd_epochs": args.rtd_epochs,
                     "epochs": args.epochs, "stopped_run_saves_every": args.within}
    with tempfile.TemporaryDirectory() as tmp:
        model = random_bert(Path(tmp) / "bert-base") if args.model == "bert-base" else tokenizer_dir()
        settings = dict(data=COLA / "train.tsv", val_data=COLA / "dev.tsv", model=model, epochs=args.epochs,
                        rtd_epochs=args.rtd_epochs, device=args.device, seed=1)
        for name, every in (("never_saved", 1e9), ("saved_every_epoch", 0.0)):
            results[name] = timed_run(TrainConfig(output=Path(tmp) / name, save_state_every=every, **settings))
            print(f"{name}: {results[name]['seconds']:.1f}s, saves {results[name]['saves']}", flush=True)
            write_json(args.out, results)
        stopped = TrainConfig(output=Path(tmp) / "resumed", save_state_every=args.within, **settings)
        results["stopped"] = timed_run(stopped, stop_after=args.stop_after)
        results["resumed"] = timed_run(stopped)
        same = {name: (Path(tmp) / "resumed" / name).read_bytes()
                == (Path(tmp) / "saved_every_epoch" / name).read_bytes() for name in WEIGHTS}
        results["resumed_weights_equal_unstopped"] = same
        saves = results["saved_every_epoch"]["saves"]
        results["save_seconds_total"] = sum(s["seconds"] for s in saves)
        results["overhead_vs_never_saved"] = (results["saved_every_epoch"]["seconds"]
                                              / results["never_saved"]["seconds"] - 1)
        print(f"stopped after {results['stopped']['stopped_after']}, resumed in {results['resumed']['seconds']:.1f}s; "
              f"weights equal to the unstopped run's: {same}; saving every epoch: {len(saves)} saves, "
              f"{results['save_seconds_total']:.1f}s in all, run {results['overhead_vs_never_saved']:+.1%} against "
              "never saving", flush=True)
        write_json(args.out, results)


if __name__ == "__main__":
    main()
