"""The word cache gives exactly the tokenizer's own ids, or is not used: fuzzed texts, tokenizer variants, threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest
from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers

from scorer.data.labels import read_labelled
from scorer.packaged import packaged_model
from scorer.text import words
from scorer.text.tokens import TOKENIZER_FILE, Encoded, TextEncoder
from tests.conftest import COLA

# Pieces that stress the places where splitting on spaces could differ from the tokenizer: every kind of
# whitespace and control character, combining accents, CJK, emoji, special tokens written in the text, words
# longer than WordPiece's 100-character limit, mixed case and the Greek final sigma.
PIECES = [
    "the", "Cat", "sat", "UNUSUAL", "don't", "well-known", "e.g.", "naïve", "café", "Straße", "ΣΊΣΥΦΟΣ", "σ",
    "中", "文字", "日本語", "🙂", "ﬁ", "ＦＵＬＬ", "[SEP]", "[MASK]", "[cls]", "##ing", ",", ".", "--", "...", "'",
    " ", " ", " ", "  ", "   ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x00", "\x1f", "\x85", "\u00a0", "\u2003",
    "\u3000", "\u200b", "\ufffd", "\u0301", "e\u0301", "x" * 101, "ab" * 70,
]


def fuzzed(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(PIECES, size=rng.integers(0, 40))) for _ in range(count)]


def tokenizer(**changes) -> Tokenizer:
    tok = Tokenizer.from_file(str(packaged_model() / TOKENIZER_FILE))
    for name, value in changes.items():
        setattr(tok, name, value)
    return tok


def cached(encoder: TextEncoder, texts: list[str]) -> Encoded:
    """`texts` through the word cache even where most chunks are new (TextEncoder would ask the tokenizer)."""
    return Encoded(*encoder.words.encode(pa.array(texts), encoder.max_length, always=True))


def assert_same(fast: Encoded, slow: Encoded) -> None:
    assert fast.offsets.tolist() == slow.offsets.tolist()
    assert fast.ids.tolist() == slow.ids.tolist()
    assert fast.truncated.tolist() == slow.truncated.tolist()


VARIANTS = {
    "packaged (uncased BERT)": {},
    "cased, accents stripped": {"normalizer": normalizers.BertNormalizer(lowercase=False, strip_accents=True)},
    "NFKC then lowercase": {"normalizer": normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])},
    "Whitespace pre-tokenizer": {"pre_tokenizer": pre_tokenizers.Whitespace()},
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("max_length", [5, 16, 512])
def test_cached_ids_equal_the_tokenizers_own_on_fuzzed_text(variant, max_length):
    texts = fuzzed(1500, seed=max_length)
    fast = TextEncoder(tokenizer(**VARIANTS[variant]), max_length)
    slow = TextEncoder(tokenizer(**VARIANTS[variant]), max_length, word_cache=False)
    assert fast.words is not None and slow.words is None
    expected = slow.encode(texts)
    assert_same(cached(fast, texts), expected)
    # Second pass: every chunk now comes from the cache, which TextEncoder uses for a list or an Arrow column.
    assert fast.words.encode(pa.array(texts), max_length) is not None
    assert_same(fast.encode(texts), expected)
    assert_same(fast.encode(pa.chunked_array([texts[:700], texts[700:]])), expected)


def test_texts_of_mostly_new_words_go_to_the_tokenizer_itself():
    rng = np.random.default_rng(3)
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    hashes = [" ".join("".join(rng.choice(letters, 12)) for _ in range(8)) for _ in range(500)]
    fast, slow = TextEncoder(tokenizer(), 32), TextEncoder(tokenizer(), 32, word_cache=False)
    known = fast.words._words
    assert fast.words.encode(pa.array(hashes), 32) is None
    assert fast.words._words == known  # nothing was cached for them
    assert_same(fast.encode(hashes), slow.encode(hashes))
    words_only = [" ".join(["the", "cat", "sat", "on", "a", "mat"][: 1 + i % 6]) for i in range(500)]
    assert fast.words.encode(pa.array(words_only), 32) is not None


@pytest.mark.parametrize("change", [
    {"pre_tokenizer": pre_tokenizers.Metaspace()},
    {"pre_tokenizer": pre_tokenizers.ByteLevel()},
    {"normalizer": normalizers.Replace(" ", "")},
])
def test_tokenizers_that_may_join_across_spaces_use_no_cache(change):
    assert words.WordCache.for_tokenizer(tokenizer(**change)) is None


def test_an_added_token_containing_a_space_turns_the_cache_off():
    tok = tokenizer()
    tok.add_tokens([AddedToken("new york", normalized=False)])
    assert words.WordCache.for_tokenizer(tok) is None
    encoded = TextEncoder(tok, 32).encode(["I love new york"])
    assert tok.token_to_id("new york") in encoded.ids.tolist()


def test_cache_starting_afresh_when_full_changes_nothing(monkeypatch):
    monkeypatch.setattr(words, "MAX_WORDS", 20)
    texts = fuzzed(400, seed=7)
    fast, slow = TextEncoder(tokenizer(), 24), TextEncoder(tokenizer(), 24, word_cache=False)
    for start in range(0, 400, 50):
        assert_same(cached(fast, texts[start : start + 50]), slow.encode(texts[start : start + 50]))
    distinct = {chunk for text in texts for chunk in text.split(" ")}
    assert fast.words._words < len(distinct)  # it did start afresh


def test_threads_sharing_one_cache_get_the_tokenizers_ids():
    fast, slow = TextEncoder(tokenizer(), 64), TextEncoder(tokenizer(), 64, word_cache=False)
    batches = [fuzzed(300, seed) for seed in range(12)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda texts: cached(fast, texts), batches))
    for texts, result in zip(batches, results, strict=True):
        assert_same(result, slow.encode(texts))


def test_empty_input_and_non_strings():
    fast = TextEncoder(tokenizer(), 16)
    assert len(fast.encode([])) == 0 and fast.encode([]).ids.size == 0
    with pytest.raises(TypeError):
        fast.encode(pa.array(["a", None]))
    with pytest.raises(TypeError):
        fast.encode(pa.array([1, 2]))


@pytest.mark.cola
def test_cola_train_and_dev_encode_identically():
    texts = [text for name in ("train.tsv", "dev.tsv")
             for text in read_labelled(COLA / name, "sentence", "label").texts]
    fast, slow = TextEncoder(tokenizer(), 64), TextEncoder(tokenizer(), 64, word_cache=False)
    assert fast.words.encode(pa.array(texts), 64) is not None
    assert_same(fast.encode(texts), slow.encode(texts))
