"""One fp16 candidate's check, in a process of its own: `python -m export.fp16_probe GRAPH PROVIDER KERNELS CHECK`.

Export (export.fp16_choice) runs this before it loads a candidate whose CUDA kernels no earlier run has used: a
kernel that crashes the process, or leaves the CUDA context unusable, then fails this process, not the export.
CHECK is an .npz of the check rows' input_ids and attention_mask and the fp32 graph's logits for them (expected),
and of the batches export will time (ids_0, mask_0, ...). Exits 0 when both run modes score the check rows within
tolerance and every batch gets finite logits; otherwise says why on stderr's last line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> int:
    from export.fp16_choice import KERNELS, check_logits
    from scorer.errors import first_line
    from scorer.session import batch_runner, create_session

    graph, provider, kernels, check = argv
    try:
        data = np.load(check)
        session = create_session(Path(graph), provider, KERNELS[kernels].cuda_options)
        feed = {"input_ids": data["input_ids"], "attention_mask": data["attention_mask"]}
        for bound in (False, True):
            check_logits(batch_runner(session, provider, bound)(feed), data["expected"])
        run = batch_runner(session, provider, False)
        for i in range(sum(name.startswith("ids_") for name in data.files)):
            ids = data[f"ids_{i}"]
            if not np.isfinite(run({"input_ids": ids, "attention_mask": data[f"mask_{i}"]})).all():
                raise ValueError(f"non-finite logits on a batch of {ids.shape[0]} rows x {ids.shape[1]} tokens")
    except Exception as exc:  # whatever went wrong, one line for the parent to report
        print(first_line(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
