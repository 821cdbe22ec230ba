"""One huge cell among ordinary rows: scorer's tokenising (long rows cut first, scorer.cut) against the tokenizer
itself, for three kinds of tokenizer, in fresh processes so that each has its own peak memory.

    python bench/long_rows.py [--rows 20000] [--cell-mib 20] [--out bench/out/long-rows.json]

Tokenizers: the packaged MiniLM's WordPiece (word cache), and a byte-level BPE (RoBERTa's kind) and a
SentencePiece-style BPE (Metaspace, NFKC) trained here on CoLA sentences (tokenizers without the word cache). Cells:
"words" (CoLA sentences run together), "base64" (random bytes: no space), "hex" (random bytes' hex digits: one word),
"cjk" (Chinese characters without a space).
For each, --rows CoLA sentences (generated text where CoLA is absent) and the cell, encoded at max length 64 by
`TextEncoder.encode` (scorer) and by `TextEncoder._tokenize` (the tokenizer itself, truncating). Records seconds and
the child's peak RSS (/proc VmHWM) and fails unless both give identical ids, offsets and truncation flags.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import time
from pathlib import Path

from common import machine, write_json
from memory import huge_text, sentences

KINDS = ("wordpiece", "bytelevel", "metaspace")
CELLS = ("words", "base64", "hex", "cjk")


def tokenizer_of(kind: str, pool: list[str]):
    from tokenizers import ByteLevelBPETokenizer, SentencePieceBPETokenizer, Tokenizer, processors

    from scorer.config import packaged_model

    if kind == "wordpiece":
        return Tokenizer.from_file(str(packaged_model() / "tokenizer.json"))
    trainer = ByteLevelBPETokenizer() if kind == "bytelevel" else SentencePieceBPETokenizer()
    trainer.train_from_iterator(pool, vocab_size=8000, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                show_progress=False)
    tokenizer = Tokenizer.from_str(trainer._tokenizer.to_str())
    ids = {token: tokenizer.token_to_id(token) for token in ("<s>", "</s>")}
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", ids["</s>"]), ("<s>", ids["<s>"]))
    return tokenizer


def measure(spec: str, texts: list[str], way: str, results) -> None:
    """In a child: encode `texts` one way; put seconds, peak RSS and a digest of the ids on `results`."""
    from tokenizers import Tokenizer

    from scorer.tokens import TextEncoder

    encoder = TextEncoder(Tokenizer.from_str(spec), max_length=64)
    started = time.perf_counter()
    encoded = encoder.encode(texts) if way == "scorer" else encoder._tokenize(texts)
    seconds = time.perf_counter() - started
    digest = hashlib.sha256(encoded.ids.tobytes() + encoded.offsets.tobytes() + encoded.truncated.tobytes())
    peak = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM"))
    results.put({"seconds": seconds, "peak_rss_mib": peak / 1024, "ids": digest.hexdigest(),
                 "word_cache": encoder.words is not None, "cut": encoder.cutter is not None})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--cell-mib", type=float, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/out/long-rows.json"))
    args = parser.parse_args()
    pool = sentences()
    report = {"machine": machine(), "rows": args.rows, "cell_mib": args.cell_mib, "results": []}
    context = multiprocessing.get_context("spawn")
    for kind in KINDS:
        spec = tokenizer_of(kind, pool).to_str()
        for cell in CELLS:
            texts = [pool[i % len(pool)] for i in range(args.rows)]
            texts[len(texts) // 2] = huge_text(pool, args.cell_mib, cell)
            found = {}
            for way in ("tokenizer_alone", "scorer"):
                results = context.Queue()
                child = context.Process(target=measure, args=(spec, texts, way, results))
                child.start()
                found[way] = results.get()
                child.join()
            if found["tokenizer_alone"]["ids"] != found["scorer"]["ids"]:
                raise SystemExit(f"{kind}, {cell}: scorer's ids differ from the tokenizer's")
            row = {"tokenizer": kind, "cell": cell, **{way: found[way] for way in found}}
            report["results"].append(row)
            print(f"{kind:9} {cell:6}  tokenizer {found['tokenizer_alone']['seconds']:6.2f} s "
                  f"{found['tokenizer_alone']['peak_rss_mib']:6.0f} MiB   scorer {found['scorer']['seconds']:6.2f} s "
                  f"{found['scorer']['peak_rss_mib']:6.0f} MiB   same ids")
    write_json(args.out, report)
    print(json.dumps({"out": str(args.out)}))


if __name__ == "__main__":
    main()
