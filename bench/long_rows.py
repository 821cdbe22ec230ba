"""One huge cell among ordinary rows: scorer's tokenising (long rows cut first, scorer.text.cut) against the tokenizer
itself, for three kinds of tokenizer, in fresh processes so that each has its own peak memory.

    python bench/long_rows.py [--rows 20000] [--cell-mib 20] [--kinds wordpiece,...] [--out bench/out/long-rows.json]
    python bench/long_rows.py --documents 200 [--kinds ...]      # many long rows: what cutting costs or saves

Tokenizers: the packaged MiniLM's WordPiece (word cache), and, trained here on CoLA sentences (tokenizers without
the word cache), a byte-level BPE (RoBERTa's kind), a SentencePiece-style BPE (Metaspace, NFKC), a unigram model
(tokenizers' SentencePiece-style one: Nmt, NFKC) and XLM-R's kind as its checkpoints ship it (a SentencePiece
unigram model with SentencePiece's precompiled normaliser, converted by transformers); the unigram ones also on
lines of the "cjk" cell's ideographs. Cells:
"words" (CoLA sentences run together), "base64" (random bytes: no space), "hex" (random bytes' hex digits: one word),
"cjk" (Chinese characters without a space).
For each, --rows CoLA sentences (generated text where CoLA is absent) and the cell, encoded at max length 64 by
`TextEncoder.encode` (scorer) and by `TextEncoder.tokenize_whole` (the tokenizer itself, truncating). Records seconds
and the child's peak RSS (/proc VmHWM) and fails unless both give identical ids, offsets and truncation flags.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
from common import machine, write_json
from memory import huge_text, sentences

KINDS = ("wordpiece", "bytelevel", "metaspace", "unigram", "xlm-r")
CELLS = ("words", "base64", "hex", "cjk")
DOCUMENT_CHARS = (25_000, 60_000, 200_000)


def tokenizer_of(kind: str, pool: list[str]):
    from tokenizers import Tokenizer

    from scorer.packaged import packaged_model

    if kind == "wordpiece":
        return Tokenizer.from_file(str(packaged_model() / "tokenizer.json"))
    if kind in ("unigram", "xlm-r"):  # and Chinese, as multilingual models have: the "cjk" cell is not one unknown
        rng = np.random.default_rng(2)
        pool = pool + ["".join(map(chr, rng.integers(0x4E00, 0x6300, 40))) for _ in range(4000)]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' tokenizer trainers
    from tests.conftest import trained_tokenizer

    return trained_tokenizer("precompiled" if kind == "xlm-r" else kind, pool, vocab_size=8000)


def measure(spec: str, texts: list[str], way: str, results) -> None:
    """In a child: encode `texts` one way; put seconds, peak RSS and a digest of the ids on `results`."""
    from tokenizers import Tokenizer

    from scorer.text.tokens import TextEncoder

    encoder = TextEncoder(Tokenizer.from_str(spec), max_length=64)
    started = time.perf_counter()
    encoded = encoder.encode(texts) if way == "scorer" else encoder.tokenize_whole(texts)
    seconds = time.perf_counter() - started
    digest = hashlib.sha256(encoded.ids.tobytes() + encoded.offsets.tobytes() + encoded.truncated.tobytes())
    peak = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM"))
    results.put({"seconds": seconds, "peak_rss_mib": peak / 1024, "ids": digest.hexdigest(),
                 "word_cache": encoder.words is not None, "cut": encoder.cutter is not None})


def documents(kinds: list[str], pool: list[str], rows: int) -> list[dict]:
    """`rows` long documents (CoLA sentences run together) of each size at max lengths 128 and 512, in this process:
    the tokenizer alone, scorer cutting where 40 characters per token are kept (its only try before 2026-12-05), and
    scorer now (first where 8 are). Fails unless all three give the same ids."""
    from tokenizers import Tokenizer

    from scorer.text.tokens import TextEncoder

    rng, found = np.random.default_rng(0), []
    for kind in kinds:
        spec = tokenizer_of(kind, pool).to_str()
        for chars in DOCUMENT_CHARS:
            texts = [" ".join(rng.choice(pool, chars // 40))[:chars] for _ in range(rows)]
            for max_length in (128, 512):
                seconds, digests = {}, set()
                for way in ("tokenizer_alone", "cut_at_limit", "scorer"):
                    encoder = TextEncoder(Tokenizer.from_str(spec), max_length)  # a cold word cache each time
                    if way == "cut_at_limit":
                        encoder.cutter.first = encoder.cutter.limit
                    started = time.perf_counter()
                    encoded = encoder.tokenize_whole(texts) if way == "tokenizer_alone" else encoder.encode(texts)
                    seconds[way] = time.perf_counter() - started
                    digests.add(hashlib.sha256(encoded.ids.tobytes() + encoded.offsets.tobytes()).hexdigest())
                if len(digests) != 1:
                    raise SystemExit(f"{kind}, {chars} characters, max length {max_length}: the ids differ")
                found.append({"tokenizer": kind, "chars": chars, "rows": rows, "max_length": max_length, **seconds})
                print(f"{kind:9} {rows} x {chars:7,} chars, max length {max_length}: " + "   ".join(
                    f"{way} {value:5.2f} s" for way, value in seconds.items()) + "   same ids")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--cell-mib", type=float, default=20)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"tokenizers, of {', '.join(KINDS)}")
    parser.add_argument("--documents", type=int, default=0,
                        help="instead: this many long documents of each size (DOCUMENT_CHARS)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/long-rows.json"))
    args = parser.parse_args()
    pool = sentences()
    if args.documents:
        report = {"machine": machine(), "documents": documents(args.kinds.split(","), pool, args.documents)}
        write_json(args.out, report)
        print(json.dumps({"out": str(args.out)}))
        return
    report = {"machine": machine(), "rows": args.rows, "cell_mib": args.cell_mib, "results": []}
    context = multiprocessing.get_context("spawn")
    for kind in args.kinds.split(","):
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
