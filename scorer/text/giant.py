"""A giant word's first tokens, known from a long row's head alone (for scorer.text.cut): base64, CJK text without a
space, for SentencePiece-style pre-tokenisers any row without one.

The words before a word tokenise alike whatever follows it, but a word's own first tokens may depend on its end.
How far back an end reaches depends on the model:

- BPE merges lowest rank first, leftmost first among equals, so a merge near the end can change the one before it,
  and so on: in every BPE and text tried that reached back a few characters (tests/test_cut.py, bench/RESULTS.md
  section 5), so a head whose first tokens come out the same from its first half is taken as settled.
- A unigram model takes the most probable path through the word, and "ababab...ab" and "ababab...abc" share no
  token. But the best path to a position depends only on the text before it, and no token is longer than the
  vocabulary's longest piece: so the whole row's path passes through one of any `longest` consecutive positions,
  and up to there it is the best path to that position, which is what tokenising the text up to it gives (the
  dynamic programme runs left to right, so ties are broken alike in both). Where the paths to every position of
  such a window share their first max-length tokens, so does the whole row (a proof, not a trial: `UnigramPaths`).
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer

# Normalised characters between the compared window and a head's end, where the head may normalise otherwise than
# the whole row (a Replace pattern cut short, a run of spaces stripped).
MARGIN = 64
# Tokens past those max_length keeps where the window starts (the paths to its positions may hold a few less).
SLACK = 4


def bpe_settled(tokenizer: Tokenizer, head: str, ids: list[int], budget: int) -> bool:
    """Whether `head`, tokenised to `ids`, gives the first `budget` of them from its first half already."""
    half = tokenizer.encode(head[: len(head) // 2], add_special_tokens=False).ids
    return len(half) > budget and half[:budget] == ids[:budget]


class UnigramPaths:
    """The best paths of a unigram model to the positions of a window of a row's normalised head."""

    def __init__(self, tokenizer: Tokenizer, budget: int, added: list[str]) -> None:
        """`tokenizer`: a unigram tokenizer without truncation; `added`: its added tokens' contents (a head holding
        one is not judged)."""
        self.tokenizer, self.normalizer, self.budget, self.added = tokenizer, tokenizer.normalizer, budget, added
        self.longest = max(map(len, tokenizer.get_vocab(with_added_tokens=False)))

    @functools.cached_property
    def bare(self) -> Tokenizer:
        """The tokenizer without its normaliser (the window's texts are normalised already); made at the first giant
        word: a 250,000-piece vocabulary takes a second."""
        bare = Tokenizer.from_str(self.tokenizer.to_str())
        bare.normalizer = None
        return bare

    def settled(self, head: str, ids: list[int]) -> bool:
        """Whether every best path to a position of a window past the first max-length tokens of `head` (tokenised
        whole to `ids`) begins with the same `budget` tokens, those of `ids`: then so does every row that begins
        with `head` and normalises to the same text up to the window's end."""
        text = self.normalizer.normalize_str(head) if self.normalizer is not None else head
        if self.budget < 1 or any(token in head or token in text for token in self.added):
            return False  # (added tokens are matched in the raw text, before normalisation)
        offsets = self.bare.encode(text, add_special_tokens=False).offsets
        if len(offsets) <= self.budget + SLACK:
            return False
        start = offsets[self.budget + SLACK][0]
        end = start + self.longest + 1
        if end + MARGIN > len(text):
            return False
        paths = self.bare.encode_batch([text[:position] for position in range(start, end)], add_special_tokens=False)
        first = ids[: self.budget]
        return all(path.ids[: self.budget] == first for path in paths)
