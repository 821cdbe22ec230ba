"""The training target as the product runs it, with each seed's self-supervised stage made once and reused.

    python bench/staged_seeds.py --seeds 1,2,3 --out bench/out/staged-default.json            # makes the stages
    python bench/staged_seeds.py --seeds 1,2,3 --out bench/out/staged-lr5e-5.json -- --lr 5e-5 # reuses them

Each run is `scorer train --data train.tsv --val-data dev.tsv --seed N [OPTIONS]` through the real command line,
in this process. The only difference from bench/default_seeds.py: `scorer.training.train._adapt` (the masked-LM and
replaced-token stages, seeded by --seed) is wrapped so that its result — the adapted encoder's weights and the
random number generators' states after it — is saved under --stages the first time and restored on later runs with
the same stage options. Fine-tuning then starts from exactly where the product's own run would be, so a run is
bit-identical to `scorer train` with the same options while costing only its fine-tuning (check it: the default's
per-epoch MCCs must repeat across calls and match bench/default_seeds.py's). Options that change the stage
(--rtd-*, --mlm-*, --batch-size, --max-length, --precision, --model) get their own cached stage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import COLA, machine, write_json
from default_seeds import record, summary

import scorer.training.train
from scorer.cli import main as cli
from scorer.data import atomic

OUT = Path(__file__).resolve().parent / "out"
STAGE_FIELDS = ("model", "data", "max_length", "batch_size", "precision", "device", "seed", "mlm_epochs", "mlm_lr",
                "rtd_epochs", "rtd_lr", "rtd_draw")


class StageCache:
    """Wraps scorer.training.train._adapt: the first call per stage key runs it and saves the encoder and RNG states,
    later calls restore both."""

    def __init__(self, root: Path) -> None:
        self.root, self.real, self.events = root, scorer.training.train._adapt, []
        scorer.training.train._adapt = self

    def __call__(self, encoder_model, config, hf_tokenizer, train_set, device, precision):
        key = {name: str(getattr(config, name)) for name in STAGE_FIELDS} | {"resolved_precision": precision}
        if not config.mlm_epochs and not config.rtd_epochs:
            return self.real(encoder_model, config, hf_tokenizer, train_set, device, precision)
        folder = self.root / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        if (folder / "stage.pt").exists():
            saved = torch.load(folder / "stage.pt", weights_only=False)
            encoder_model.load_state_dict(saved["encoder"])
            torch.set_rng_state(saved["torch_rng"])
            np.random.set_state(saved["numpy_rng"])
            random.setstate(saved["python_rng"])
            self.events.append({"stage": str(folder), "reused": True, "seconds": saved["seconds"]})
            return encoder_model.to(device).eval(), saved["losses"]
        started = time.perf_counter()
        encoder_model, losses = self.real(encoder_model, config, hf_tokenizer, train_set, device, precision)
        seconds = time.perf_counter() - started
        weights = {name: value.detach().to("cpu", copy=True) for name, value in encoder_model.state_dict().items()}
        with atomic.atomic_file(folder / "stage.pt", overwrite=True) as staging:
            torch.save({"encoder": weights, "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                        "python_rng": random.getstate(), "losses": losses, "seconds": seconds}, staging)
        (folder / "stage.json").write_text(json.dumps(key, indent=2) + "\n")
        self.events.append({"stage": str(folder), "reused": False, "seconds": seconds})
        return encoder_model, losses


def run_seed(seed: int, output: Path, extra: list[str], cache: StageCache) -> dict:
    args = ["train", "--data", str(COLA / "train.tsv"), "--val-data", str(COLA / "dev.tsv"), "--output",
            str(output), "--seed", str(seed), "--quiet", *extra]
    events, started = len(cache.events), time.perf_counter()
    cli.main(args=args, standalone_mode=False)
    seconds = time.perf_counter() - started
    stage = cache.events[-1] if len(cache.events) > events else {"reused": False, "seconds": 0.0}
    return {**record(seed, seconds, output), "stage_reused": stage["reused"], "stage_seconds": stage["seconds"],
            "product_seconds": seconds + (stage["seconds"] if stage["reused"] else 0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--out", type=Path, default=OUT / "staged-seeds.json")
    parser.add_argument("--stages", type=Path, default=OUT / "stages",
                        help="where the stages are kept [default: bench/out/stages, wherever this runs from]")
    parser.add_argument("extra", nargs="*", help="`scorer train` options after --, e.g. -- --lr 5e-5")
    args = parser.parse_args()
    cache = StageCache(args.stages)
    facts, started = machine("cuda" if torch.cuda.is_available() else "cpu"), time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, seed in enumerate(map(int, args.seeds.split(","))):
            runs.append(run_seed(seed, Path(tmp) / f"run-{index}-seed-{seed}", args.extra, cache))
            run = runs[-1]
            print(f"seed {seed}: dev MCC {run['best_mcc']:.4f} (epoch {run['best_epoch']}), {run['seconds']:.0f}s"
                  f"{' (stage reused)' if run['stage_reused'] else ''}, per epoch "
                  f"{[round(m, 4) for m in run['mcc_per_epoch']]}", flush=True)
            # Written after every seed, so that a stopped comparison keeps the seeds it finished.
            result = {"machine": facts, "extra_options": args.extra, "wall_seconds": time.perf_counter() - started,
                      "runs": runs, "summary": summary(runs)}
            write_json(args.out, result)
    s = result["summary"]
    print(f"mean {s['mean_mcc']:.4f}, min {s['min_mcc']:.4f}: target {'met' if s['target_met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
