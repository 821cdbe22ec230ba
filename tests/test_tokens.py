"""Tokenisation matches the transformers tokenizer; padding keeps every row's ids."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from scorer.config import packaged_model
from scorer.tokens import TextEncoder

SENTENCES = [
    "The children played in the garden.",
    "Colourless green ideas sleep furiously!",
    "a",
    "Ünïcödé text, with accents — and dashes.",
    "word " * 100,
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder.from_dir(packaged_model(), max_length=32)


def test_ids_match_transformers_with_cls_sep_and_truncation(encoder):
    reference = AutoTokenizer.from_pretrained(str(packaged_model()))
    expected = reference(SENTENCES, truncation=True, max_length=32)["input_ids"]
    encoded = encoder.encode(SENTENCES)
    for row, ids in enumerate(expected):
        assert encoded.ids[encoded.offsets[row] : encoded.offsets[row + 1]].tolist() == ids
        assert ids[0] == reference.cls_token_id and ids[-1] == reference.sep_token_id
    assert encoded.truncated.tolist() == [False, False, False, False, True]
    assert encoded.lengths[-1] == 32


def test_a_sentence_exactly_at_max_length_is_not_flagged_truncated(encoder):
    reference = AutoTokenizer.from_pretrained(str(packaged_model()))
    text = "word " * 30  # 30 word pieces + [CLS] + [SEP] = 32
    assert len(reference(text)["input_ids"]) == 32
    encoded = encoder.encode([text])
    assert encoded.lengths.tolist() == [32] and encoded.truncated.tolist() == [False]


def test_pad_gathers_each_rows_ids_and_masks_the_rest(encoder):
    encoded = encoder.encode(SENTENCES)
    rows = np.array([4, 0, 2])
    input_ids, mask = encoded.pad(rows, length=40)
    assert input_ids.shape == mask.shape == (3, 40) and input_ids.dtype == np.int64
    for out_row, row in enumerate(rows):
        length = encoded.lengths[row]
        expected = encoded.ids[encoded.offsets[row] : encoded.offsets[row + 1]]
        assert input_ids[out_row, :length].tolist() == expected.tolist()
        assert mask[out_row].tolist() == [1] * length + [0] * (40 - length)
        assert not input_ids[out_row, length:].any()
    natural, _ = encoded.pad(np.array([0, 2]))
    assert natural.shape[1] == max(encoded.lengths[0], encoded.lengths[2])


@pytest.mark.parametrize("added", [None, "normalized"])
def test_rows_far_longer_than_max_length_are_cut_before_tokenising_and_give_the_same_ids(added):
    import pyarrow as pa
    from tokenizers import AddedToken, Tokenizer

    from scorer.tokens import CUT_MIN_CHARS, TOKENIZER_FILE

    def encoder(word_cache: bool) -> TextEncoder:
        tokenizer = Tokenizer.from_file(str(packaged_model() / TOKENIZER_FILE))
        if added:  # an added token matched after normalisation: rows are cut at their last space only
            tokenizer.add_tokens([AddedToken("grammarian", normalized=True)])
        return TextEncoder(tokenizer, max_length=32, word_cache=word_cache)

    fast_encoder, whole = encoder(True), encoder(False)  # whole: the tokenizer itself, nothing cut
    rng = np.random.default_rng(3)
    words = np.array(["grammar", "is", "hard,", "isn't", "it?", "Ünïcödé", "中文", "", "x" * 150, "well-known"])
    texts = [
        " ".join(rng.choice(words, 6000)),  # natural-ish text far past the limit: cut
        ("\u200b" * 9 + " ") * (CUT_MIN_CHARS // 8) + "then words at last",  # no token before the limit
        "y" * (CUT_MIN_CHARS * 3),  # no space before the limit and one word: not cut
        "short one",
        " " * (CUT_MIN_CHARS + 5) + "late",  # only spaces before the limit
    ]
    _, shorter, cut = fast_encoder._cut_long_rows(pa.array(texts, pa.large_string()))
    # The space-only rule cuts rows 1 and 4 too, which then come out untruncated: encode tokenises them whole.
    assert cut.tolist() == ([0, 1, 4] if added else [0]) and len(shorter[0].as_py()) <= CUT_MIN_CHARS
    # One giant word: [UNK] at any length past 100 characters, so cut to 101 (not where an added token could begin
    # with a letter: "grammarian" might be matched inside it).
    assert shorter[3].as_py() == "short one" and shorter[2].as_py() == (texts[2] if added else "y" * 101)
    fast, slow = fast_encoder.encode(texts), whole.encode(texts)
    assert fast.offsets.tolist() == slow.offsets.tolist() and fast.ids.tolist() == slow.ids.tolist()
    assert fast.truncated.tolist() == slow.truncated.tolist() == [True, False, False, False, False]


def test_long_rows_without_a_space_are_cut_between_words_and_never_inside_an_added_token(encoder):
    import pyarrow as pa

    from scorer.tokens import CUT_MIN_CHARS

    whole = TextEncoder.from_dir(packaged_model(), max_length=32, word_cache=False)
    rng = np.random.default_rng(5)
    blob = "".join(rng.choice(list("abcXYZ019+/="), CUT_MIN_CHARS * 3))  # base64-like: words split at + / =
    cjk = "".join(rng.choice(list("中文字符日本語的是不了人我在有他这为之大来以个"), CUT_MIN_CHARS * 2))
    before_sep = "a," * ((CUT_MIN_CHARS - 3) // 2) + "b" * ((CUT_MIN_CHARS - 3) % 2)
    straddling = before_sep + "[SEP]" + "c," * 3000  # the limit falls inside [SEP]
    assert straddling[CUT_MIN_CHARS - 3 : CUT_MIN_CHARS + 2] == "[SEP]"
    texts = [blob, cjk, straddling, "z" * (CUT_MIN_CHARS * 2), "an early space, then " + blob]
    _, shorter, cut = encoder._cut_long_rows(pa.array(texts, pa.large_string()))
    assert cut.tolist() == [0, 1, 2, 4]  # the fourth is one word: [UNK] however long, so it is cut to 101 letters
    assert shorter[3].as_py() == "z" * 101
    assert all(len(shorter[row].as_py()) <= CUT_MIN_CHARS for row in cut)
    assert shorter[2].as_py() == before_sep  # stepped back out of [SEP]
    fast, slow = encoder.encode(texts), whole.encode(texts)
    assert fast.offsets.tolist() == slow.offsets.tolist() and fast.ids.tolist() == slow.ids.tolist()
    assert fast.truncated.tolist() == slow.truncated.tolist() == [True, True, True, False, True]


@pytest.mark.parametrize("longest", [100, 50])
def test_runs_of_letters_and_digits_past_a_words_limit_are_shortened_and_give_the_same_ids(longest):
    """A WordPiece word longer than max_input_chars_per_word is one [UNK]: in a long row, runs of ASCII letters and
    digits are cut to one more character than that, wherever they stand, with the ids of the whole row."""
    import pyarrow as pa
    from tokenizers import Tokenizer

    from scorer.tokens import CUT_MIN_CHARS, TOKENIZER_FILE

    def encoder(word_cache: bool) -> TextEncoder:
        tokenizer = Tokenizer.from_file(str(packaged_model() / TOKENIZER_FILE))
        tokenizer.model.max_input_chars_per_word = longest
        return TextEncoder(tokenizer, max_length=32, word_cache=word_cache)

    fast_encoder, whole = encoder(True), encoder(False)
    texts = [
        "prefix words " + "a1B2" * 5000 + " then the words after it",  # the words after it are kept
        "é" + "a" * 10_000 + ", more",  # the run ends a word that began with a letter outside ASCII
        "[SEP]" + "a" * 5000 + "[SEP] tail",  # added tokens on both sides
        "a" * longest + " " + "b" * (longest + 1) + " " + "c" * (longest + 2) + " " + "d" * 5000 + " end",
        (" " + "q" * 300) * 100 + " last",  # many runs: cut to 101 each, then the row is cut as any other
        "1234567890" * 1000,
        "short, " + "z" * 200,  # under the limit: left as it is
    ]
    column, _, _ = fast_encoder._cut_long_rows(pa.array(texts, pa.large_string()))
    assert column[0].as_py() == "prefix words " + ("a1B2" * 100)[: longest + 1] + " then the words after it"
    assert column[3].as_py().split() == ["a" * longest, "b" * (longest + 1), "c" * (longest + 1),
                                         "d" * (longest + 1), "end"]
    assert column[6].as_py() == texts[6] and max(len(t) for t in column.to_pylist()) < CUT_MIN_CHARS * 4
    fast, slow = fast_encoder.encode(texts), whole.encode(texts)
    assert fast.offsets.tolist() == slow.offsets.tolist() and fast.ids.tolist() == slow.ids.tolist()
    assert fast.truncated.tolist() == slow.truncated.tolist()


def test_runs_are_left_whole_where_an_added_token_could_be_matched_inside_them():
    from tokenizers import Tokenizer

    from scorer.tokens import TOKENIZER_FILE, _unknown_run

    tokenizer = Tokenizer.from_file(str(packaged_model() / TOKENIZER_FILE))
    assert _unknown_run(tokenizer) == 101
    tokenizer.add_tokens(["zzz]"])  # begins with a letter: a run's last letters could be its start
    assert _unknown_run(tokenizer) is None
