"""Rows far longer than max_length, cut before they are tokenised: what truncation keeps of each is the same, and a
20 MB cell no longer costs gigabytes in the tokenizer and token arrays.

A row longer than CUT_CHARS_PER_TOKEN characters per token kept (and at least CUT_MIN_CHARS) is cut before its last
word within FIRST_CHARS_PER_TOKEN, else that many, characters per token kept, when the words before it already give
more tokens than max_length keeps: those words tokenise as in the whole row whatever follows (spaces or not: CJK
text, base64), since the tokenizers this is done for split words locally and normalise character by character,
grapheme by grapheme (SentencePiece's precompiled maps) or only at the text's ends and in runs of spaces; the cut
never splits a grapheme. Where the words before give too few tokens (one giant word), the cut is made where its
first tokens are known anyway (`_settled`). A cut row must still come out truncated; the caller tokenises the rows
whole where one does not. Before the cut, runs of letters and digits that WordPiece reads as one [UNK] at any length
are shortened (`unknown_run`).
"""

from __future__ import annotations

import json
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from scorer.text.giant import UnigramPaths, bpe_settled
from scorer.text.words import PER_CHARACTER, SPLITTING, WordCache, fixed_specials, kinds, text_budget, untruncated

CUT_CHARS_PER_TOKEN = 40
CUT_MIN_CHARS = 4096
# Where a cut is tried first: most text gives the tokens max_length keeps well within this many characters per token
# (English about 5), and a row of 25,000 characters cut at 40 per token would cost more than it saves (RESULTS 5).
FIRST_CHARS_PER_TOKEN = 8
BACK_OFF = 1024  # characters a cut steps back at most, out of an added token or a grapheme (else the row is whole)
# Pre-tokenisers whose splits before a text's last pre-token do not depend on what follows it (whitespace and regex
# splits, byte-level BPE's and SentencePiece's included).
LOCAL_SPLITS = SPLITTING | {"ByteLevel", "Metaspace", "Punctuation", "Digits", "UnicodeScripts", "CharDelimiterSplit"}
# Normalisers that change a text's start alike whatever follows a grapheme boundary: per character, per grapheme
# (SentencePiece's precompiled maps: XLM-R, ALBERT, T5), or at its ends; and Replace of a fixed string or of runs of
# spaces (`_local_normaliser`).
LOCAL_NORMALISERS = PER_CHARACTER | {"Precompiled", "Nmt", "Strip", "Prepend"}
SPACE_RUNS = {" {2,}", " +", "\\s+", "\\s{2,}"}
# Characters a grapheme cluster, or a normaliser's composition, may join to the character before or after them.
_JOINING = {"Mn", "Mc", "Me", "Cf", "Sk", "Cs", "Co", "Cn"}
_VOWEL_OR_TRAILING_JAMO = ((0x1160, 0x11FF), (0xD7B0, 0xD7FF))
_LEADING_JAMO = ((0x1100, 0x115F), (0xA960, 0xA97F))
_FLAG_LETTERS = ((0x1F1E6, 0x1F1FF),)
_PREPENDED = {0x0D4E, 0x111C2, 0x111C3, 0x1193F, 0x11941, 0x11A3A, *range(0x11A84, 0x11A8A), 0x11D46, 0x11F02}
# Normalisers and pre-tokenisers that keep a run of ASCII letters and digits as it is, in one word (`unknown_run`).
_RUN_KEEPING = ((type(None), normalizers.BertNormalizer, normalizers.Lowercase),
                (type(None), pre_tokenizers.BertPreTokenizer, pre_tokenizers.Whitespace,
                 pre_tokenizers.WhitespaceSplit))


class RowCutter:
    """Cuts a column's long rows for one tokenizer and max_length (`for_tokenizer` says whether it can)."""

    def __init__(self, tokenizer: Tokenizer, budget: int, max_length: int, added: list[str] | None,
                 run: int | None, unigram: UnigramPaths | None = None) -> None:
        """`tokenizer`: a copy without truncation; `budget`: the text's own tokens max_length keeps; `added`: the
        added tokens a cut steps around, or None to cut at spaces only (the word cache's own rule); `unigram`: where
        the model is a unigram one whose giant words may be cut (scorer.text.giant)."""
        self.tokenizer, self.budget, self.added, self.run, self.unigram = tokenizer, budget, added, run, unigram
        self.limit = max(CUT_MIN_CHARS, CUT_CHARS_PER_TOKEN * max_length)
        self.first = max(CUT_MIN_CHARS, FIRST_CHARS_PER_TOKEN * max_length)

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, max_length: int, words: WordCache | None) -> RowCutter | None:
        """A cutter where cutting is safe: the word cache qualifies (its chunks are tokenised alone), or the
        tokenizer splits words locally, normalises locally (`_local_normaliser`), adds fixed special tokens and has
        no added token matched after normalisation or only as a whole word; else None (rows are tokenised whole)."""
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
                or not _local_normaliser(spec.get("normalizer")):
            return None
        budget = text_budget(max_length, *specials)
        # A unigram model's paths are compared on prefixes of a head: its words must split as the head's prefixes
        # (byte-level's whitespace rule looks ahead).
        copy = untruncated(text)
        unigram = UnigramPaths(copy, budget, contents) \
            if isinstance(tokenizer.model, models.Unigram) and "ByteLevel" not in splits else None
        return cls(copy, budget, max_length, contents, unknown_run(tokenizer), unigram)

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
        # Each long row's start becomes a str (and the character after it, which the cut must not join).
        heads = pc.utf8_slice_codeunits(rows, 0, self.limit + 1).to_pylist()
        for row, head in zip(long.tolist(), heads, strict=True):
            cut = self.cut(head)
            if cut is not None:
                cuts[row] = cut
        if not cuts:
            return column, column, none
        cut_rows = np.fromiter(cuts, np.int64, count=len(cuts))
        return column, _replace_rows(column, cut_rows, pa.array(list(cuts.values()), column.type)), cut_rows

    def cut(self, ahead: str) -> str | None:
        """A long row's first characters (`ahead`: at least `limit` and one more), up to a grapheme boundary or an
        added token written across their end, when the words before the last, possibly cut, word already give more
        tokens than max_length keeps, or that word's first tokens are settled within them (scorer.text.giant): the first
        FIRST_CHARS_PER_TOKEN characters per token kept where they do (a cheap cut for most text), else `limit`;
        None where neither does. Cut at the last space within `limit` where `added` is None (the caller checks that
        the cut row still comes out truncated)."""
        if self.added is None:
            space = ahead.rfind(" ", 0, self.limit)
            return ahead[:space] if space > 0 else None
        for size in dict.fromkeys((self.first, self.limit)):  # (one size where they are equal)
            end = self._boundary(ahead, size)
            if end is None:
                continue
            head = ahead[:end]
            encoding = self.tokenizer.encode(head, add_special_tokens=False)
            word_ids = encoding.word_ids
            before = sum(1 for word in word_ids if word != word_ids[-1]) if word_ids else 0
            if before > self.budget or self._settled(head, encoding.ids):
                return head
        return None

    def _boundary(self, ahead: str, size: int) -> int | None:
        """The last position at most `size` (and at most BACK_OFF before it) that is inside neither an added token
        written in the text nor a grapheme, or None."""
        for end in range(size, max(size - BACK_OFF, 0), -1):
            if not _joined(ahead, end) and not any(ahead.endswith(token[:k], 0, end) for token in self.added
                                                   for k in range(1, len(token))):
                return end
        return None

    def _settled(self, head: str, ids: list[int]) -> bool:
        """Whether the first tokens of `head`'s last word (a giant one holding those max_length keeps) are those of
        every row it begins (scorer.text.giant): for BPE where its first half gives them too, for a unigram model where
        the paths to every position of a window past them agree; never for other models."""
        if isinstance(self.tokenizer.model, models.BPE):
            return bpe_settled(self.tokenizer, head, ids, self.budget)
        return self.unigram is not None and self.unigram.settled(head, ids)


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


def _local_normaliser(node: dict | None) -> bool:
    """Whether a tokenizer.json normaliser changes a head as the whole row it begins, but for the last grapheme
    (`LOCAL_NORMALISERS`) and a Replace match cut short: one of a fixed string or of a run of spaces."""
    if not node:
        return True
    if node.get("type") == "Sequence":
        return all(_local_normaliser(child) for child in node.get("normalizers") or [])
    if node.get("type") == "Replace":
        pattern = node.get("pattern") or {}
        return bool(pattern.get("String")) or pattern.get("Regex") in SPACE_RUNS
    return node.get("type") in LOCAL_NORMALISERS


def _joined(text: str, position: int) -> bool:
    """Whether the characters either side of `position` in `text` may be one grapheme, or composed by a
    normaliser: a mark, format, modifier or unassigned character after it, a format or prepended character before
    it, CR LF, Hangul jamo, two flag letters."""
    if position >= len(text) or position == 0:
        return False
    before, after = text[position - 1], text[position]
    return unicodedata.category(after) in _JOINING or unicodedata.category(before) == "Cf" \
        or ord(before) in _PREPENDED or (before, after) == ("\r", "\n") \
        or _within(after, _VOWEL_OR_TRAILING_JAMO) or _within(before, _LEADING_JAMO) \
        or (_within(before, _FLAG_LETTERS) and _within(after, _FLAG_LETTERS))


def _within(char: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(low <= ord(char) <= high for low, high in ranges)


def _replace_rows(column: pa.Array, rows: np.ndarray, values: pa.Array) -> pa.Array:
    mask = np.zeros(len(column), bool)
    mask[rows] = True
    return pc.replace_with_mask(column, pa.array(mask), values)


def _letter_or_digit(char: str) -> bool:
    return char.isascii() and char.isalnum()
