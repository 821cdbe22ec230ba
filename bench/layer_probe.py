"""How much grammaticality signal each layer of the frozen packaged encoder holds: a linear probe per layer.

    python bench/layer_probe.py [--out bench/out/layer-probe.json]

Mean-pooled and [CLS] hidden states of every layer of all-MiniLM-L6-v2 (no fine-tuning) for CoLA train and dev;
a class-balanced logistic regression per layer fitted on train; dev MCC reported. Needs scikit-learn (installed
with sentence-transformers, which the packaged model pulls in).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import COLA, machine, write_json
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import matthews_corrcoef

from scorer.data.labels import read_labelled
from scorer.packaged import packaged_model
from scorer.pytorch.model import load_encoder
from scorer.text.batches import budget_batches
from scorer.text.tokens import TextEncoder


def features(encoder: torch.nn.Module, text_encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    """[rows, layers + 1, 2 × hidden]: mean-pooled and [CLS] states of the embeddings and of every layer."""
    encoded = text_encoder.encode(texts)
    out = None
    with torch.inference_mode():
        for rows in budget_batches(encoded.lengths, 4096, 256):
            input_ids, mask = (torch.from_numpy(a) for a in encoded.pad(rows))
            states = encoder(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
            weights = mask.unsqueeze(-1).float()
            pooled = torch.stack([torch.cat([(h * weights).sum(1) / weights.sum(1), h[:, 0]], -1) for h in states], 1)
            if out is None:
                out = np.zeros((len(texts), *pooled.shape[1:]), dtype=np.float32)
            out[rows] = pooled.numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/layer-probe.json"))
    args = parser.parse_args()
    encoder = load_encoder(packaged_model()).eval()
    text_encoder = TextEncoder.from_dir(packaged_model(), 64)
    train = read_labelled(COLA / "train.tsv", "sentence", "label")
    dev = read_labelled(COLA / "dev.tsv", "sentence", "label")
    x_train, x_dev = features(encoder, text_encoder, train.texts), features(encoder, text_encoder, dev.texts)
    hidden = x_train.shape[2] // 2
    results = {"machine": machine(), "layers": []}
    for layer in range(x_train.shape[1]):
        row = {"layer": layer}
        for name, part in (("mean", slice(0, hidden)), ("cls", slice(hidden, 2 * hidden))):
            probe = LogisticRegression(max_iter=2000, class_weight="balanced").fit(x_train[:, layer, part],
                                                                                   train.labels)
            row[f"{name}_dev_mcc"] = float(matthews_corrcoef(dev.labels, probe.predict(x_dev[:, layer, part])))
        results["layers"].append(row)
        print(f"layer {layer} ({'embeddings' if layer == 0 else 'transformer'}): mean-pooled MCC "
              f"{row['mean_dev_mcc']:.3f}, [CLS] MCC {row['cls_dev_mcc']:.3f}", flush=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
