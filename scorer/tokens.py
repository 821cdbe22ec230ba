"""The one tokenisation path shared by train, export and run: texts to token ids, and padded id arrays."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from scorer.errors import ModelError
from scorer.words import WordCache

TOKENIZER_FILE = "tokenizer.json"
# Where the word cache qualifies (ids of a text = ids of its space-separated chunks, one after another), a row longer
# than this many characters per token kept (and at least CUT_MIN_CHARS) is cut before its last word within that
# many characters (TextEncoder._cut) before it is tokenised: what max_length keeps of it is the same, and a 20 MB cell
# no longer costs hundreds of MB (or, as base64, gigabytes) in the tokenizer and token arrays. A cut row must still
# come out truncated (more tokens than max_length keeps); one that does not is tokenised whole. Before the cut, runs
# of letters and digits that WordPiece reads as one [UNK] at any length are shortened (`_unknown_run`).
CUT_CHARS_PER_TOKEN = 40
CUT_MIN_CHARS = 4096
# Normalisers and pre-tokenisers that keep a run of ASCII letters and digits as it is, in one word (TextEncoder._run).
_RUN_KEEPING = ((type(None), normalizers.BertNormalizer, normalizers.Lowercase),
                (type(None), pre_tokenizers.BertPreTokenizer, pre_tokenizers.Whitespace,
                 pre_tokenizers.WhitespaceSplit))


def is_text(column: pa.Array) -> bool:
    """Whether `column` holds strings (the only values scorer tokenises)."""
    return pa.types.is_string(column.type) or pa.types.is_large_string(column.type)


@dataclass(frozen=True)
class Encoded:
    """Token ids of many texts, stored flat: row i is ids[offsets[i]:offsets[i + 1]]."""

    ids: np.ndarray
    offsets: np.ndarray
    truncated: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def coverage(self, unknown_id: int | None, special_ids: list[int]) -> tuple[int, int]:
        """Tokens of the texts themselves (no [CLS]/[SEP]/padding) the vocabulary knows, and those it does not."""
        unknown = 0 if unknown_id is None else int((self.ids == unknown_id).sum())
        return int((~np.isin(self.ids, special_ids)).sum()), unknown

    def pad(self, rows: np.ndarray | Sequence[int], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """input_ids and attention_mask (int64) for `rows`, padded with 0 to `length` or the longest row."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        width = int(lengths.max(initial=0)) if length is None else length
        columns = np.arange(width)
        mask = columns[None, :] < lengths[:, None]
        if not self.ids.size:
            return np.zeros(mask.shape, np.int64), mask.astype(np.int64)
        # Each cell reads its row's id at that position (clipped at the end of ids), then padding is zeroed.
        index = np.minimum(starts[:, None] + columns[None, :], self.ids.size - 1)
        return np.where(mask, self.ids[index], 0), mask.astype(np.int64)


class TextEncoder:
    """A Hugging Face fast tokenizer with [CLS]/[SEP] added, truncation to max_length and no padding.

    Where the tokenizer qualifies (BERT's does), texts go through scorer.words.WordCache, which gives the same ids
    an order of magnitude faster; `word_cache=False` always uses the tokenizer itself.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int, word_cache: bool = True) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length)
        self._encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        self.words = WordCache.for_tokenizer(tokenizer) if word_cache else None
        added = tokenizer.get_added_tokens_decoder().values()
        # Added tokens ([SEP] written in a text) the within-words cut can step around; None: some are matched after
        # normalisation or only as whole words, which a cut could change, so rows are cut at spaces only.
        self._added = None if any(t.normalized or t.single_word for t in added) else [t.content for t in added]
        self._run = _unknown_run(tokenizer)

    @classmethod
    def from_dir(cls, directory: Path, max_length: int, word_cache: bool = True) -> TextEncoder:
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise ModelError(f"{directory}: no {TOKENIZER_FILE}; export the model again with `scorer export`")
        try:
            return cls(Tokenizer.from_file(str(path)), max_length, word_cache)
        except Exception as exc:
            raise ModelError(f"{path}: not a readable tokenizer ({exc}); export the model again") from exc

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> Encoded:
        """Encode texts (all must be str); rows cut at max_length are flagged in `truncated`."""
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        if self.words is None:
            return self._tokenize(texts)
        column = texts if isinstance(texts, pa.Array) else pa.array(texts, pa.large_string())
        if column.null_count or not is_text(column):
            raise TypeError("TextEncoder.encode takes strings only")
        column, shorter, cut = self._cut_long_rows(column)
        encoded = self._encode_words(shorter)
        if cut.size and not encoded.truncated[cut].all():  # a cut row kept too few tokens: tokenise the rows whole
            encoded = self._encode_words(column)
        return encoded

    def _encode_words(self, column: pa.Array) -> Encoded:
        """Through the word cache, or the tokenizer itself where most chunks are new."""
        found = self.words.encode(column, self.max_length)
        return Encoded(*found) if found is not None else self._tokenize(column)

    def _cut_long_rows(self, column: pa.Array) -> tuple[pa.Array, pa.Array, np.ndarray]:
        """`column` with the runs of letters and digits in its rows longer than the cut limit (CUT_CHARS_PER_TOKEN)
        shortened where that gives the same ids (`_run`); that column with every row still over the limit cut within
        it (`_cut`); and the rows that were cut."""
        limit, none = max(CUT_MIN_CHARS, CUT_CHARS_PER_TOKEN * self.max_length), np.zeros(0, np.int64)
        long = np.flatnonzero(pc.greater(pc.utf8_length(column), limit).to_numpy(zero_copy_only=False))
        if not long.size:
            return column, column, none
        rows = column.take(pa.array(long))
        if self._run is not None:
            rows = pc.replace_substring_regex(rows, f"([A-Za-z0-9]{{{self._run}}})[A-Za-z0-9]+", r"\1")
            column = _replace_rows(column, long, rows)
            still = pc.greater(pc.utf8_length(rows), limit).to_numpy(zero_copy_only=False)
            long, rows = long[still], rows.filter(pa.array(still))
        cuts = {}
        heads = pc.utf8_slice_codeunits(rows, 0, limit).to_pylist()
        for row, head in zip(long.tolist(), heads, strict=True):  # only each long row's start becomes a str
            cut = self._cut(head)
            if cut is not None:
                cuts[row] = cut
        if not cuts:
            return column, column, none
        cut_rows = np.fromiter(cuts, np.int64, count=len(cuts))
        return column, _replace_rows(column, cut_rows, pa.array(list(cuts.values()), column.type)), cut_rows

    def _cut(self, head: str) -> str | None:
        """`head`, a long row's first characters, kept whole (or up to an added token written across its end), when
        the words before its last, possibly cut, word already give more tokens than max_length keeps: those words are
        tokenised as in the whole row, whatever follows (spaces or not: CJK text, a base64 blob), and the cut word's
        tokens fall past what is kept. None where they do not (one giant word). Where added tokens match after
        normalisation or as whole words only: cut at the last space (the word cache's own rule; the caller checks
        that the cut row still comes out truncated)."""
        if self._added is None:
            space = head.rfind(" ")
            return head[:space] if space > 0 else None
        end = len(head)
        while end and any(head[:end].endswith(token[:k]) for token in self._added for k in range(1, len(token))):
            end -= 1  # never cut inside an added token written in the text
        word_ids = self.words.tokenizer.encode(head[:end], add_special_tokens=False).word_ids
        before = sum(1 for word in word_ids if word != word_ids[-1]) if word_ids else 0
        return head[:end] if before > self.words.budget(self.max_length) else None

    def _tokenize(self, texts: Sequence[str] | pa.Array) -> Encoded:
        """The tokenizer itself, with truncation."""
        if isinstance(texts, pa.Array):
            texts = texts.to_pylist()
        encodings = self._encode(list(texts), add_special_tokens=True)
        id_lists = [encoding.ids for encoding in encodings]
        lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        offsets = np.zeros(len(id_lists) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter(itertools.chain.from_iterable(id_lists), dtype=np.int64, count=int(offsets[-1]))
        truncated = np.zeros(len(id_lists), dtype=bool)
        for row in np.flatnonzero(lengths >= self.max_length):
            truncated[row] = bool(encodings[row].overflowing)
        return Encoded(ids=ids, offsets=offsets, truncated=truncated)


def _replace_rows(column: pa.Array, rows: np.ndarray, values: pa.Array) -> pa.Array:
    mask = np.zeros(len(column), bool)
    mask[rows] = True
    return pc.replace_with_mask(column, pa.array(mask), values)


def _unknown_run(tokenizer: Tokenizer) -> int | None:
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


def _letter_or_digit(char: str) -> bool:
    return char.isascii() and char.isalnum()

