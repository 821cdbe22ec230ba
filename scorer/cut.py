"""Rows far longer than max_length, cut before they are tokenised: what truncation keeps of each is the same, and a
20 MB cell no longer costs gigabytes in the tokenizer and token arrays.

A row longer than CUT_CHARS_PER_TOKEN characters per token kept (and at least CUT_MIN_CHARS) is cut before its last
word within that many characters, when the words before it already give more tokens than max_length keeps: those
words tokenise as in the whole row whatever follows (spaces or not: CJK text, base64), since the tokenizers this is
done for split words locally and normalise character by character. A cut row must still come out truncated; the
caller tokenises the rows whole where one does not. Before the cut, runs of letters and digits that WordPiece reads
as one [UNK] at any length are shortened (`unknown_run`).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from scorer.words import PER_CHARACTER, SPLITTING, WordCache, fixed_specials, kinds, text_budget, untruncated

CUT_CHARS_PER_TOKEN = 40
CUT_MIN_CHARS = 4096
# Pre-tokenisers whose splits before a text's last pre-token do not depend on what follows it (whitespace and regex
# splits, byte-level BPE's and SentencePiece's included).
LOCAL_SPLITS = SPLITTING | {"ByteLevel", "Metaspace", "Punctuation", "Digits", "UnicodeScripts", "CharDelimiterSplit"}
# Normalisers and pre-tokenisers that keep a run of ASCII letters and digits as it is, in one word (`unknown_run`).
_RUN_KEEPING = ((type(None), normalizers.BertNormalizer, normalizers.Lowercase),
                (type(None), pre_tokenizers.BertPreTokenizer, pre_tokenizers.Whitespace,
                 pre_tokenizers.WhitespaceSplit))


class RowCutter:
    """Cuts a column's long rows for one tokenizer and max_length (`for_tokenizer` says whether it can)."""

    def __init__(self, tokenizer: Tokenizer, budget: int, max_length: int, added: list[str] | None,
                 run: int | None) -> None:
        """`tokenizer`: a copy without truncation; `budget`: the text's own tokens max_length keeps; `added`: the
        added tokens a cut steps around, or None to cut at spaces only (the word cache's own rule)."""
        self.tokenizer, self.budget, self.added, self.run = tokenizer, budget, added, run
        self.settles = isinstance(tokenizer.model, models.BPE)  # see `_settled`
        self.limit = max(CUT_MIN_CHARS, CUT_CHARS_PER_TOKEN * max_length)

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, max_length: int, words: WordCache | None) -> RowCutter | None:
        """A cutter where cutting is safe: the word cache qualifies (its chunks are tokenised alone), or the
        tokenizer splits words locally, normalises per character, adds fixed special tokens and has no added token
        matched after normalisation or only as a whole word; else None (rows are tokenised whole)."""
        added = tokenizer.get_added_tokens_decoder().values()
        # Added tokens ([SEP] written in a text) a cut steps around; None: some are matched after normalisation or
        # only as whole words, which a cut within words could change, so the word cache's rows are cut at spaces.
        contents = None if any(t.normalized or t.single_word for t in added) else [t.content for t in added]
        if words is not None:
            return cls(words.tokenizer, words.budget(max_length), max_length, contents, unknown_run(tokenizer))
        text = tokenizer.to_str()
        spec = json.loads(text)
        specials = fixed_specials(tokenizer)
        splits = kinds(spec.get("pre_tokenizer"))
        if contents is None or specials is None or not splits or not set(splits) <= LOCAL_SPLITS \
                or not set(kinds(spec.get("normalizer"))) <= PER_CHARACTER:
            return None
        return cls(untruncated(text), text_budget(max_length, *specials), max_length, contents, unknown_run(tokenizer))

    def cut_long_rows(self, column: pa.Array) -> tuple[pa.Array, pa.Array, np.ndarray]:
        """`column` with the runs of letters and digits in its rows over the limit shortened where that gives the
        same ids; that column with every row still over the limit cut within it; and the rows that were cut."""
        none = np.zeros(0, np.int64)
        long = np.flatnonzero(pc.greater(pc.utf8_length(column), self.limit).to_numpy(zero_copy_only=False))
        if not long.size:
            return column, column, none
        rows = column.take(pa.array(long))
        if self.run is not None:
            rows = pc.replace_substring_regex(rows, f"([A-Za-z0-9]{{{self.run}}})[A-Za-z0-9]+", r"\1")
            column = _replace_rows(column, long, rows)
            still = pc.greater(pc.utf8_length(rows), self.limit).to_numpy(zero_copy_only=False)
            long, rows = long[still], rows.filter(pa.array(still))
        cuts = {}
        heads = pc.utf8_slice_codeunits(rows, 0, self.limit).to_pylist()
        for row, head in zip(long.tolist(), heads, strict=True):  # only each long row's start becomes a str
            cut = self.cut(head)
            if cut is not None:
                cuts[row] = cut
        if not cuts:
            return column, column, none
        cut_rows = np.fromiter(cuts, np.int64, count=len(cuts))
        return column, _replace_rows(column, cut_rows, pa.array(list(cuts.values()), column.type)), cut_rows

    def cut(self, head: str) -> str | None:
        """`head`, a long row's first characters, kept whole (or up to an added token written across its end), when
        the words before its last, possibly cut, word already give more tokens than max_length keeps, or that word's
        first tokens are settled within `head` (`_settled`); None where neither holds. Cut at the last space where
        `added` is None (the caller checks that the cut row still comes out truncated)."""
        if self.added is None:
            space = head.rfind(" ")
            return head[:space] if space > 0 else None
        end = len(head)
        while end and any(head[:end].endswith(token[:k]) for token in self.added for k in range(1, len(token))):
            end -= 1  # never cut inside an added token written in the text
        encoding = self.tokenizer.encode(head[:end], add_special_tokens=False)
        word_ids = encoding.word_ids
        before = sum(1 for word in word_ids if word != word_ids[-1]) if word_ids else 0
        return head[:end] if before > self.budget or self._settled(head[:end], encoding.ids) else None

    def _settled(self, head: str, ids: list[int]) -> bool:
        """Whether `head`, whose last word (one giant word: base64, CJK text without spaces) holds the tokens
        max_length keeps, gives them already from its first half. Unlike the words before a word, a word's first
        tokens are not provably independent of its end: BPE merges compete for shared characters, so a merge near
        the end can change the one before it, and so on; in every BPE and text tried (`tests/test_cut.py`, RESULTS
        section 5) that reached back a few characters, not half a head. A unigram model's path is chosen over the
        whole word, and periodic text ("thethe...") was segmented otherwise at other lengths: its giant words, and
        those of other models, are tokenised whole."""
        if not self.settles:
            return False
        half = self.tokenizer.encode(head[: len(head) // 2], add_special_tokens=False).ids
        return len(half) > self.budget and half[: self.budget] == ids[: self.budget]


def unknown_run(tokenizer: Tokenizer) -> int | None:
    """A length past which a run of ASCII letters and digits gives the same ids however much longer it is, or None.

    A WordPiece model reads a word of more than max_input_chars_per_word characters as one [UNK]. Where the normaliser
    and pre-tokeniser keep such a run as it is within one word, and no added token begins or ends with a letter or
    digit (so none is matched across the run's ends or inside it), a run cut to one character more than that is
    still one [UNK] in a word of the same start and end: a 20 MB hex string costs 101 characters, not gigabytes.
    """
    added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
    if not isinstance(tokenizer.model, models.WordPiece) or not isinstance(tokenizer.normalizer, _RUN_KEEPING[0]) \
            or not isinstance(tokenizer.pre_tokenizer, _RUN_KEEPING[1]) \
            or any(_letter_or_digit(t[:1]) or _letter_or_digit(t[-1:]) for t in added):
        return None
    longest = tokenizer.model.max_input_chars_per_word
    return longest + 1 if longest < 900 else None  # RE2 repeats a group at most 1,000 times


def _replace_rows(column: pa.Array, rows: np.ndarray, values: pa.Array) -> pa.Array:
    mask = np.zeros(len(column), bool)
    mask[rows] = True
    return pc.replace_with_mask(column, pa.array(mask), values)


def _letter_or_digit(char: str) -> bool:
    return char.isascii() and char.isalnum()
