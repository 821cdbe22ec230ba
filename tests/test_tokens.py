"""Tokenisation matches the transformers tokenizer; padding keeps every row's ids."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from scorer.packaged import packaged_model
from scorer.text.tokens import TextEncoder

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


def test_some_rows_taken_keep_their_ids_and_truncation_and_a_text_of_no_token_is_bare(encoder):
    encoded = encoder.encode(SENTENCES)
    rows = np.array([4, 0, 2])
    taken = encoded.take(rows)
    assert [taken.pad([i])[0].tolist() for i in range(3)] == [encoded.pad([r])[0].tolist() for r in rows]
    assert taken.truncated.tolist() == [True, False, False] and len(encoded.take(np.array([], np.int64))) == 0
    # zero-width and control characters: the normaliser drops them, leaving [CLS] [SEP], as "" does
    bare = encoder.encode(["\u200b", "\ufeff\u00ad", "\x07", "a"]).lengths
    assert encoder.bare_length == 2 and bare.tolist() == [2, 2, 2, 3]


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
