"""Tokenise each distinct word once: the fast path of scorer.text.tokens for tokenizers that never join across a space.

With a BERT-style pipeline (per-character normaliser, whitespace-splitting pre-tokenizer) a text's ids are the
concatenation of the ids of its space-separated chunks. So the chunks of a whole column are found and deduplicated
by Arrow, each chunk never seen before is tokenised once by the Hugging Face tokenizer and cached, and every row is
assembled from the cache with array operations: no Python object per row or per token. Whether a tokenizer
qualifies is read from its tokenizer.json and then checked against the tokenizer itself on awkward texts.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer

log = logging.getLogger("scorer")

# Pre-tokenizers that split on whitespace, so no token spans a space; normalisers that act on single characters.
SPLITTING = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
PER_CHARACTER = {"BertNormalizer", "Lowercase", "NFD", "NFKD", "NFC", "NFKC", "StripAccents"}
# Texts on which the cached path must give the tokenizer's own ids before it is used (controls, accents, CJK,
# unusual spaces, special tokens written in the text, over-long words, runs of spaces, tabs and newlines).
PROBES = [
    "", " ", "  leading and trailing  ", "Hello, World!", "a\tb\nc\rd \x0be\x0cf", "don't  stop--now...",
    "Ünïcödé naïve café", "e\u0301 combining \u0301accent", "中文字符 and 日本語", "nbsp\u00a0here\u3000there\u2003",
    "zero\u200bwidth \x00nul \ufffd repl \x1fctl", "[CLS] [SEP][MASK] ##ing", "x" * 150 + " " + "yz" * 60,
    "emoji 🙂🙃 ok", "Σίσυφος ΣΊΣΥΦΟΣ", "ﬁ ligature ＦＵＬＬ width",
]
MAX_WORDS = 1 << 18  # the cache starts afresh past this many distinct chunks or MAX_IDS ids (memory stays bounded)
MAX_IDS = 1 << 22
# Above this share of chunk occurrences being new words, a call goes to the tokenizer itself (measured: texts of
# random unique strings tokenise at 0.65x the tokenizer's speed through the cache, first-seen CoLA at 3.4x).
NEW_SHARE = 0.5


def kinds(node: dict | None) -> list[str]:
    """The types in a tokenizer.json normaliser or pre-tokeniser entry, a Sequence's members in order."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [kind for child in node.get("normalizers") or node.get("pretokenizers") or [] for kind in kinds(child)]
    return [node.get("type", "")]


def fixed_specials(tokenizer: Tokenizer) -> tuple[list[int], list[int]] | None:
    """The ids the post-processor puts before and after a single text, if it only adds fixed ids around it."""
    plain = tokenizer.encode("a b", add_special_tokens=False).ids
    full = tokenizer.encode("a b", add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            prefix, suffix = full[:start], full[start + len(plain) :]
            return (prefix, suffix) if tokenizer.encode("", add_special_tokens=True).ids == prefix + suffix else None
    return None


def untruncated(spec: str) -> Tokenizer:
    """A copy of the tokenizer `spec` (Tokenizer.to_str()) that neither truncates nor pads."""
    tokenizer = Tokenizer.from_str(spec)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def text_budget(max_length: int, prefix, suffix) -> int:
    """How many of a text's own tokens truncation to max_length keeps (the special tokens take the rest)."""
    return max(max_length - len(prefix) - len(suffix), 0)


class WordCache:
    """Token ids of every space-separated chunk seen so far, stored flat; thread-safe."""

    def __init__(self, spec: str, prefix: list[int], suffix: list[int]) -> None:
        """`spec`: the tokenizer's JSON (Tokenizer.to_str()); the cache tokenises with its own copy of it."""
        self.tokenizer = untruncated(spec)
        self._encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        self.prefix, self.suffix = np.asarray(prefix, np.int64), np.asarray(suffix, np.int64)
        self._lock = threading.Lock()
        self._clear()

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer) -> WordCache | None:
        """A cache for `tokenizer` when chunk-by-chunk tokenisation is exactly what it does; None otherwise."""
        text = tokenizer.to_str()
        spec = json.loads(text)
        spaced = any(" " in token["content"] for token in spec.get("added_tokens") or [])
        splits = kinds(spec.get("pre_tokenizer"))
        per_character = set(kinds(spec.get("normalizer"))) <= PER_CHARACTER
        if spaced or not splits or not set(splits) <= SPLITTING or not per_character:
            return None
        specials = fixed_specials(tokenizer)
        if specials is None:
            return None
        cache = cls(text, *specials)
        reference = Tokenizer.from_str(text)
        reference.no_padding()
        for max_length in (8, 512):
            reference.enable_truncation(max_length)
            ids, offsets, _ = cache.encode(pa.array(PROBES), max_length, always=True)
            if [ids[a:b].tolist() for a, b in itertools.pairwise(offsets)] != \
                    [encoding.ids for encoding in reference.encode_batch(PROBES)]:
                log.debug("the tokenizer does not split on spaces as expected; the word cache is not used")
                return None
        return cache

    def _clear(self) -> None:
        self._index: dict[str, int] = {}
        self._starts = np.zeros(1 << 12, np.int64)
        self._lengths = np.zeros(1 << 12, np.int64)
        self._ids = np.zeros(1 << 15, np.int32)
        self._words = self._used = 0

    def _add(self, ids: list[int]) -> int:
        if self._words == len(self._starts):
            self._starts = np.concatenate([self._starts, np.zeros_like(self._starts)])
            self._lengths = np.concatenate([self._lengths, np.zeros_like(self._lengths)])
        while self._used + len(ids) > len(self._ids):
            self._ids = np.concatenate([self._ids, np.zeros_like(self._ids)])
        self._ids[self._used : self._used + len(ids)] = ids
        self._starts[self._words], self._lengths[self._words] = self._used, len(ids)
        self._used += len(ids)
        self._words += 1
        return self._words - 1

    def lookup(self, words: list[str], most_new: int | None = None) -> tuple[np.ndarray, ...] | None:
        """Each word's (start, length) in the returned flat ids, tokenising the words not seen before; None when
        more than `most_new` words are new (the tokenizer is faster on whole texts than on many single words)."""
        with self._lock:  # one lookup at a time: the cache's arrays stay consistent with the indices handed out
            if self._words > MAX_WORDS or self._used > MAX_IDS:
                self._clear()
            index = np.fromiter((self._index.get(word, -1) for word in words), np.int64, count=len(words))
            missing = np.flatnonzero(index < 0).tolist()
            if most_new is not None and len(missing) > most_new:
                return None
            if missing:
                encodings = self._encode([words[i] for i in missing], add_special_tokens=False)
                for i, encoding in zip(missing, encodings, strict=True):
                    index[i] = self._index[words[i]] = self._add(encoding.ids)
            return self._starts[index], self._lengths[index], self._ids

    def budget(self, max_length: int) -> int:
        return text_budget(max_length, self.prefix, self.suffix)

    def encode(self, texts: pa.Array, max_length: int, always: bool = False) -> tuple[np.ndarray, ...] | None:
        """ids, offsets and truncated flags of `texts` (no nulls), as the tokenizer with truncation would give;
        None, unless `always`, when most chunks are new (ids, hashes): then the tokenizer itself is faster."""
        chunks = pc.split_pattern(texts, " ")
        per_row = pc.list_value_length(chunks).to_numpy(zero_copy_only=False).astype(np.int64)
        distinct = pc.dictionary_encode(chunks.flatten())
        found = self.lookup(distinct.dictionary.to_pylist(), None if always else int(per_row.sum() * NEW_SHARE))
        if found is None:
            return None
        starts, lengths, ids = found
        occurrence = distinct.indices.to_numpy(zero_copy_only=False)
        starts, lengths = starts[occurrence], lengths[occurrence]
        # Token ids of every chunk of every row, in order: the flat cache gathered chunk by chunk.
        ends = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=ends[1:])
        tokens = ids[np.repeat(starts - ends[:-1], lengths) + np.arange(int(ends[-1]))]
        row_ends = np.cumsum(per_row)
        row_first = ends[row_ends - per_row]
        row_tokens = ends[row_ends] - row_first
        # Truncation keeps each row's first (max_length - special tokens) ids, as the tokenizer does.
        budget = self.budget(max_length)
        kept = np.minimum(row_tokens, budget)
        position = np.arange(len(tokens)) - np.repeat(row_first, row_tokens)
        tokens = tokens[position < np.repeat(kept, row_tokens)]
        return (*_frame(tokens, kept, self.prefix, self.suffix), row_tokens > budget)


def _frame(tokens: np.ndarray, kept: np.ndarray, prefix: np.ndarray, suffix: np.ndarray) -> tuple[np.ndarray, ...]:
    """Flat ids with `prefix` before and `suffix` after each row's `kept` tokens, and the rows' offsets."""
    offsets = np.zeros(len(kept) + 1, np.int64)
    np.cumsum(kept + len(prefix) + len(suffix), out=offsets[1:])
    out = np.empty(int(offsets[-1]), np.int64)
    body = np.ones(len(out), bool)
    for k, token in enumerate(prefix):
        out[offsets[:-1] + k], body[offsets[:-1] + k] = token, False
    for k, token in enumerate(suffix):
        out[offsets[1:] - len(suffix) + k], body[offsets[1:] - len(suffix) + k] = token, False
    out[body] = tokens
    return out, offsets

