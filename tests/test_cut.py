"""Long rows cut before tokenising give the tokenizer's own ids for what max_length keeps."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from scorer.packaged import packaged_model
from scorer.text.cut import CUT_MIN_CHARS, unknown_run
from scorer.text.giant import bpe_settled
from scorer.text.tokens import TextEncoder
from tests.conftest import trained_tokenizer


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder.from_dir(packaged_model(), max_length=32)


@pytest.mark.parametrize("added", [None, "normalized"])
def test_rows_far_longer_than_max_length_are_cut_before_tokenising_and_give_the_same_ids(added):
    from tokenizers import AddedToken, Tokenizer

    from scorer.text.tokens import TOKENIZER_FILE

    def encoder(word_cache: bool) -> TextEncoder:
        tokenizer = Tokenizer.from_file(str(packaged_model() / TOKENIZER_FILE))
        if added:  # an added token matched after normalisation: rows are cut at their last space only
            tokenizer.add_tokens([AddedToken("grammarian", normalized=True)])
        return TextEncoder(tokenizer, max_length=32, word_cache=word_cache)

    fast_encoder, words_off = encoder(True), encoder(False)
    rng = np.random.default_rng(3)
    words = np.array(["grammar", "is", "hard,", "isn't", "it?", "Ünïcödé", "中文", "", "x" * 150, "well-known"])
    texts = [
        " ".join(rng.choice(words, 6000)),  # natural-ish text far past the limit: cut
        ("\u200b" * 9 + " ") * (CUT_MIN_CHARS // 8) + "then words at last",  # no token before the limit
        "y" * (CUT_MIN_CHARS * 3),  # no space before the limit and one word: not cut
        "short one",
        " " * (CUT_MIN_CHARS + 5) + "late",  # only spaces before the limit
    ]
    _, shorter, cut = fast_encoder.cutter.cut_long_rows(pa.array(texts, pa.large_string()))
    # The space-only rule cuts rows 1 and 4 too, which then come out untruncated: encode tokenises them whole.
    assert cut.tolist() == ([0, 1, 4] if added else [0]) and len(shorter[0].as_py()) <= CUT_MIN_CHARS
    # One giant word: [UNK] at any length past 100 characters, so cut to 101 (not where an added token could begin
    # with a letter: "grammarian" might be matched inside it).
    assert shorter[3].as_py() == "short one" and shorter[2].as_py() == (texts[2] if added else "y" * 101)
    # Against the tokenizer itself, nothing cut; without the word cache, rows are cut by the general rule.
    slow = fast_encoder.tokenize_whole(texts)
    for fast in (fast_encoder.encode(texts), words_off.encode(texts)):
        assert fast.offsets.tolist() == slow.offsets.tolist() and fast.ids.tolist() == slow.ids.tolist()
        assert fast.truncated.tolist() == slow.truncated.tolist() == [True, False, False, False, False]


def test_long_rows_without_a_space_are_cut_between_words_and_never_inside_an_added_token(encoder):

    rng = np.random.default_rng(5)
    blob = "".join(rng.choice(list("abcXYZ019+/="), CUT_MIN_CHARS * 3))  # base64-like: words split at + / =
    cjk = "".join(rng.choice(list("中文字符日本語的是不了人我在有他这为之大来以个"), CUT_MIN_CHARS * 2))
    before_sep = "a," * ((CUT_MIN_CHARS - 3) // 2) + "b" * ((CUT_MIN_CHARS - 3) % 2)
    straddling = before_sep + "[SEP]" + "c," * 3000  # the limit falls inside [SEP]
    assert straddling[CUT_MIN_CHARS - 3 : CUT_MIN_CHARS + 2] == "[SEP]"
    texts = [blob, cjk, straddling, "z" * (CUT_MIN_CHARS * 2), "an early space, then " + blob]
    _, shorter, cut = encoder.cutter.cut_long_rows(pa.array(texts, pa.large_string()))
    assert cut.tolist() == [0, 1, 2, 4]  # the fourth is one word: [UNK] however long, so it is cut to 101 letters
    assert shorter[3].as_py() == "z" * 101
    assert all(len(shorter[row].as_py()) <= CUT_MIN_CHARS for row in cut)
    assert shorter[2].as_py() == before_sep  # stepped back out of [SEP]
    fast, slow = encoder.encode(texts), encoder.tokenize_whole(texts)  # slow: the tokenizer itself, nothing cut
    assert fast.offsets.tolist() == slow.offsets.tolist() and fast.ids.tolist() == slow.ids.tolist()
    assert fast.truncated.tolist() == slow.truncated.tolist() == [True, True, True, False, True]


@pytest.mark.parametrize("longest", [100, 50])
def test_runs_of_letters_and_digits_past_a_words_limit_are_shortened_and_give_the_same_ids(longest):
    """A WordPiece word longer than max_input_chars_per_word is one [UNK]: in a long row, runs of ASCII letters and
    digits are cut to one more character than that, wherever they stand, with the ids of the whole row."""
    from tokenizers import Tokenizer

    from scorer.text.tokens import TOKENIZER_FILE

    def encoder(word_cache: bool) -> TextEncoder:
        tokenizer = Tokenizer.from_file(str(packaged_model() / TOKENIZER_FILE))
        tokenizer.model.max_input_chars_per_word = longest
        return TextEncoder(tokenizer, max_length=32, word_cache=word_cache)

    fast_encoder = encoder(True)
    texts = [
        "prefix words " + "a1B2" * 5000 + " then the words after it",  # the words after it are kept
        "é" + "a" * 10_000 + ", more",  # the run ends a word that began with a letter outside ASCII
        "[SEP]" + "a" * 5000 + "[SEP] tail",  # added tokens on both sides
        "a" * longest + " " + "b" * (longest + 1) + " " + "c" * (longest + 2) + " " + "d" * 5000 + " end",
        (" " + "q" * 300) * 100 + " last",  # many runs: cut to 101 each, then the row is cut as any other
        "1234567890" * 1000,
        "short, " + "z" * 200,  # under the limit: left as it is
    ]
    column, _, _ = fast_encoder.cutter.cut_long_rows(pa.array(texts, pa.large_string()))
    assert column[0].as_py() == "prefix words " + ("a1B2" * 100)[: longest + 1] + " then the words after it"
    assert column[3].as_py().split() == ["a" * longest, "b" * (longest + 1), "c" * (longest + 1),
                                         "d" * (longest + 1), "end"]
    assert column[6].as_py() == texts[6] and max(len(t) for t in column.to_pylist()) < CUT_MIN_CHARS * 4
    fast, slow = fast_encoder.encode(texts), fast_encoder.tokenize_whole(texts)  # slow: the tokenizer itself
    assert fast.offsets.tolist() == slow.offsets.tolist() and fast.ids.tolist() == slow.ids.tolist()
    assert fast.truncated.tolist() == slow.truncated.tolist()


def test_runs_are_left_whole_where_an_added_token_could_be_matched_inside_them():
    from tokenizers import Tokenizer

    from scorer.text.tokens import TOKENIZER_FILE

    tokenizer = Tokenizer.from_file(str(packaged_model() / TOKENIZER_FILE))
    assert unknown_run(tokenizer) == 101
    tokenizer.add_tokens(["zzz]"])  # begins with a letter: a run's last letters could be its start
    assert unknown_run(tokenizer) is None


def _trained(kind: str):
    """A small tokenizer without the word cache (`trained_tokenizer`'s kinds), trained here on written sentences."""
    words = ["the", "grammar", "is", "hard,", "isn't", "it?", "Ünïcödé", "中文", "well-known", "42", "cats"]
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(words, rng.integers(3, 15))) for _ in range(2000)]
    return trained_tokenizer(kind, sentences, vocab_size=40 if kind == "precompiled" else 300)


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace", "unigram", "precompiled"])
def test_tokenizers_without_the_word_cache_have_long_rows_cut_with_the_same_ids(kind):
    """RoBERTa-style byte-level BPE, SentencePiece-style BPE and unigram tokenizers (XLM-R's with SentencePiece's
    precompiled normaliser too) split words locally too: their long rows are cut where words before the limit give
    enough tokens (byte-level BPE splits letters from digits and punctuation, Metaspace only at spaces), or where
    one giant word (base64 or CJK text without a space, for Metaspace any row without one) gives its first tokens
    whatever follows (scorer.text.giant); what max_length keeps is what the tokenizer gives for the whole row."""
    encoder = TextEncoder(_trained(kind), max_length=32)
    assert encoder.words is None and encoder.cutter is not None
    rng = np.random.default_rng(7)
    words = np.array(["grammar", "is", "hard,", "isn't", "it?", "Ünïcödé", "中文", "", "x" * 150, "well-known", "</s>"])
    before_end = "a," * ((CUT_MIN_CHARS - 3) // 2) + "b" * ((CUT_MIN_CHARS - 3) % 2)
    texts = [
        " ".join(rng.choice(words, 6000)),
        "".join(rng.choice(list("abcXYZ019+/="), CUT_MIN_CHARS * 3)),  # base64-like, no space
        "".join(rng.choice(list("中文字符日本語的是不了人我在有他这为之大来以个"), CUT_MIN_CHARS * 2)),
        before_end + "</s>" + "c," * 3000,  # the limit falls inside </s>
        " " * (CUT_MIN_CHARS + 5) + "late words",  # only spaces before the limit
        "short one",
    ]
    _, shorter, cut = encoder.cutter.cut_long_rows(pa.array(texts, pa.large_string()))
    # (A unigram model's row of spaces normalises to almost nothing: no window to compare, not cut.)
    unigram = kind in ("unigram", "precompiled")
    assert cut.tolist() == [0, 1, 2, 3, *([] if unigram else [4])]
    assert all(len(shorter[row].as_py()) <= CUT_MIN_CHARS for row in cut)
    if kind == "bytelevel":
        assert shorter[3].as_py() == before_end  # stepped back out of </s>
    fast, whole = encoder.encode(texts), encoder.tokenize_whole(texts)
    assert fast.offsets.tolist() == whole.offsets.tolist() and fast.ids.tolist() == whole.ids.tolist()
    assert fast.truncated.tolist() == whole.truncated.tolist() == [True, True, True, True, not unigram, False]


def test_a_unigram_models_giant_word_is_cut_only_where_the_paths_to_a_window_agree():
    """A unigram model chooses its path over the whole word: "abab...ab" is "ab ab ...", and a "c" at its end makes
    it "a ba ba ... bc". The best paths to even positions begin "ab ab", to odd ones "a ba" (ties broken the same
    way as in the whole row): they disagree, so such rows are tokenised whole. BPE's rule (the first half gives the
    same first tokens) holds here and would cut them wrongly."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    pieces = [("<unk>", 0.0), ("▁", -1.0), ("a", -5.0), ("b", -5.0), ("c", -20.0), ("ab", -1.0), ("ba", -1.0),
              ("bc", -0.1)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=0))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizers.NFKC(), pre_tokenizers.Metaspace()
    encoder = TextEncoder(tokenizer, max_length=16)
    texts = ["ab" * 5000 + "c", "ab" * 5000]
    assert encoder.cutter is not None and encoder.cutter.unigram is not None
    assert not encoder.cutter.cut_long_rows(pa.array(texts))[2].size
    whole = encoder.tokenize_whole(texts)
    assert encoder.encode(texts).ids.tolist() == whole.ids.tolist()
    assert [tokenizer.id_to_token(i) for i in whole.ids[:3]] == ["▁", "a", "ba"]
    assert [tokenizer.id_to_token(i) for i in whole.ids[16:19]] == ["▁", "ab", "ab"]
    head = texts[0][: encoder.cutter.limit]
    ids = encoder.cutter.tokenizer.encode(head, add_special_tokens=False).ids
    assert bpe_settled(encoder.cutter.tokenizer, head, ids, encoder.cutter.budget)
    assert not encoder.cutter.unigram.settled(head, ids)
    # Where one piece covers every path ("abc" far likelier than anything else), the word is cut: same ids.
    pieces += [("abc", -0.01)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=0))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizers.NFKC(), pre_tokenizers.Metaspace()
    encoder = TextEncoder(tokenizer, max_length=16)
    texts = ["abc" * 5000 + "ab", "abc" * 5000 + "c"]
    assert encoder.cutter.cut_long_rows(pa.array(texts))[2].tolist() == [0, 1]
    assert encoder.encode(texts).ids.tolist() == encoder.tokenize_whole(texts).ids.tolist()


def test_no_cut_where_a_tokenizer_may_not_split_words_locally():
    from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers

    tokenizer = _trained("bytelevel")
    tokenizer.add_tokens([AddedToken("grammar", normalized=True)])  # matched after normalisation
    assert TextEncoder(tokenizer, max_length=32).cutter is None
    tokenizer = _trained("bytelevel")
    tokenizer.pre_tokenizer = pre_tokenizers.Split("ab", "merged_with_next")  # a split rule not known to be local
    assert TextEncoder(tokenizer, max_length=32).cutter is None
    # A Replace that may match across words (any regex but runs of spaces) is not known to be local; ALBERT's
    # fixed-string replacements and XLM-R's runs of spaces are.
    tokenizer = _trained("unigram")
    tokenizer.normalizer = normalizers.Sequence([normalizers.Replace(Regex("a.*z"), "x"), normalizers.NFKC()])
    assert TextEncoder(tokenizer, max_length=32).cutter is None
    tokenizer.normalizer = normalizers.Sequence([normalizers.Replace("``", '"'), normalizers.Replace("''", '"'),
                                                 normalizers.NFKD(), normalizers.StripAccents(),
                                                 normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()])
    assert TextEncoder(tokenizer, max_length=32).cutter.unigram is not None


def test_a_cut_never_splits_a_grapheme_or_an_added_token():
    """Where the limit falls inside a grapheme (a letter and its accents, CR LF, a flag, an emoji sequence, Hangul
    jamo), the cut steps back before it: a normaliser composes across those characters (NFC, SentencePiece's maps
    take a grapheme whole)."""
    encoder = TextEncoder(_trained("precompiled"), max_length=32)
    cutter = encoder.cutter
    for grapheme in ["e\u0301\u0302", "\r\n", "🇫🇷", "👩\u200d👩\u200d👧", "👍🏽", "\u1100\u1161\u11a8", "</s>"]:
        for inside in range(1, len(grapheme)):
            ahead = "a" * (cutter.limit - inside) + grapheme + "b" * 10
            assert cutter._boundary(ahead, cutter.limit) == cutter.limit - inside, (grapheme, inside)
    assert cutter._boundary("a" * cutter.limit + "b", cutter.limit) == cutter.limit
    assert cutter._boundary("\u0301" * (cutter.limit + 1), cutter.limit) is None  # a grapheme past BACK_OFF
