"""The one tokenisation path shared by train, export and run: texts to token ids, and padded id arrays."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tokenizers import Tokenizer

from scorer.errors import ModelError
from scorer.text.cut import RowCutter
from scorer.text.words import WordCache

TOKENIZER_FILE = "tokenizer.json"


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

    def take(self, rows: np.ndarray) -> Encoded:
        """These rows' ids (indices in order), as an Encoded of their own."""
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # (each new position's id: its row's start in the old ids, plus how far into the row it lies)
        index = np.arange(offsets[-1]) + np.repeat(starts - offsets[:-1], lengths)
        return Encoded(ids=self.ids[index], offsets=offsets, truncated=self.truncated[rows])

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

    Where the tokenizer qualifies (BERT's does), texts go through scorer.text.words.WordCache, which gives the same ids
    an order of magnitude faster; `word_cache=False` always uses the tokenizer itself. Either way, rows far longer
    than max_length are first cut where that keeps the ids (text.cut), unless `cut=False` (the tokenizer alone, as
    `run --check` tokenises).
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int, word_cache: bool = True, cut: bool = True) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length)
        self._encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        self.words = WordCache.for_tokenizer(tokenizer) if word_cache and cut else None
        self.cutter = RowCutter.for_tokenizer(tokenizer, max_length, self.words) if cut else None
        # The ids of a text of no tokens ([CLS] [SEP]): a text that gives no more (zero-width or control characters
        # only, which the tokenizer's normaliser drops) holds nothing to score.
        self.bare_length = len(tokenizer.encode("", add_special_tokens=True).ids)

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
        """Encode texts (all must be str); rows cut at max_length are flagged in `truncated`. Rows far longer than
        max_length are cut first where that keeps the ids (text.cut)."""
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        if self.cutter is None:  # (there is always one where the word cache is)
            return self.tokenize_whole(texts)
        column = texts if isinstance(texts, pa.Array) else pa.array(texts, pa.large_string())
        if column.null_count or not is_text(column):
            raise TypeError("TextEncoder.encode takes strings only")
        column, shorter, cut = self.cutter.cut_long_rows(column)
        encoded = self._encode_words(shorter)
        if cut.size and not encoded.truncated[cut].all():
            encoded = self._encode_words(column)  # a cut row kept too few tokens: tokenise the rows whole
        return encoded

    def _encode_words(self, column: pa.Array) -> Encoded:
        """Through the word cache, or the tokenizer itself where there is none or most chunks are new."""
        found = self.words.encode(column, self.max_length) if self.words is not None else None
        return Encoded(*found) if found is not None else self.tokenize_whole(column)

    def tokenize_whole(self, texts: Sequence[str] | pa.Array) -> Encoded:
        """The tokenizer itself on every text whole, with truncation: no word cache, no cut (the reference that
        `encode`'s faster ways must equal, and the way for a tokenizer that allows neither)."""
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
