"""align: pieces to words, argmax links, Pharaoh lines and AER, all checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from nmt_cli.align import (
    Link,
    alignment_error_rate,
    alignment_from_attention,
    check_links,
    format_pharaoh,
    merge_subwords,
    parse_pharaoh,
    word_count_mismatch,
    word_groups,
)
from nmt_cli.errors import InputError


@pytest.mark.parametrize(
    ("pieces", "groups"),
    [
        (["▁the", "▁do", "g", "▁sleeps"], [[0], [1, 2], [3]]),
        (["▁", "Hund", "▁schl", "äft", "."], [[0, 1], [2, 3, 4]]),  # lone "▁" opens the next piece's word
        (["▁", "▁x"], [[0, 1]]),
        (["ab", "▁c"], [[0], [1]]),  # the first piece starts a word even without "▁"
        (["▁a", "▁"], [[0, 1]]),  # a trailing lone "▁" stays with the word before
        ([], []),
    ],
)
def test_word_groups(pieces, groups):
    assert word_groups(pieces) == groups


def test_merge_subwords_sums_source_pieces_and_averages_target_pieces():
    src = ["▁the", "▁do", "g", "▁sleeps"]
    tgt = ["▁der", "▁Hund", "▁schl", "äft"]
    attention = [
        [0.7, 0.1, 0.1, 0.1],  # der
        [0.1, 0.5, 0.3, 0.1],  # Hund
        [0.0, 0.2, 0.2, 0.6],  # schl
        [0.2, 0.0, 0.0, 0.8],  # äft
    ]
    merged = merge_subwords(attention, src, tgt)
    assert merged.src_words == ["the", "dog", "sleeps"]
    assert merged.tgt_words == ["der", "Hund", "schläft"]
    expected = [
        [0.7, 0.1 + 0.1, 0.1],
        [0.1, 0.5 + 0.3, 0.1],
        [(0.0 + 0.2) / 2, ((0.2 + 0.2) + (0.0 + 0.0)) / 2, (0.6 + 0.8) / 2],  # mean of schl, äft
    ]
    np.testing.assert_allclose(merged.weights, expected)
    np.testing.assert_allclose(merged.weights.sum(axis=1), 1.0)  # rows stay distributions


def test_merge_subwords_checks_the_shape():
    with pytest.raises(InputError, match="3 target and 2 source pieces"):
        merge_subwords(np.zeros((2, 3)), ["▁a", "▁b"], ["▁x", "▁y", "▁z"])


def test_alignment_from_attention_takes_each_rows_argmax():
    attention = [
        [0.1, 0.8, 0.1],  # target 0 -> source 1
        [0.6, 0.3, 0.1],  # target 1 -> source 0
        [0.2, 0.2, 0.6],  # target 2 -> source 2
    ]
    links = alignment_from_attention(attention)
    assert links == [(0, 1), (1, 0), (2, 2)]
    assert links[0] == Link(src=0, tgt=1)
    assert format_pharaoh(links) == "0-1 1-0 2-2"


def test_alignment_ties_and_min_weight():
    attention = [[0.5, 0.5], [0.3, 0.2]]
    assert alignment_from_attention(attention) == [(0, 0), (0, 1)]  # ties go to the first source word
    assert alignment_from_attention(attention, min_weight=0.4) == [(0, 0)]  # 0.3 < 0.4: target 1 unaligned
    assert alignment_from_attention(np.zeros((2, 0))) == []


def test_pharaoh_round_trip():
    links = parse_pharaoh("2-1 0-0  1-2\n")
    assert links == {(0, 0), (1, 2), (2, 1)}
    assert format_pharaoh(links) == "0-0 1-2 2-1"
    assert format_pharaoh([(1, 0), (0, 3), (1, 0)]) == "0-3 1-0"  # sorted, each link once
    assert parse_pharaoh("") == set()
    assert format_pharaoh([]) == ""


@pytest.mark.parametrize("token", ["0-x", "1_2", "-1-2", "3-", "0-0-1", "１-2"])
def test_pharaoh_errors_name_path_and_line(token):
    with pytest.raises(InputError) as err:
        parse_pharaoh(f"0-0 {token}", "gold.align", 3)
    assert str(err.value).startswith(f"gold.align:3: bad alignment link {token!r}")


def test_aer_by_hand():
    predicted = [{(0, 0), (1, 1), (2, 1)}, {(0, 0)}]
    sure = [{(0, 0), (1, 2)}, {(0, 0)}]
    possible = [{(1, 1)}, set()]  # sure links count as possible even when left out here
    # sentence 1: A∩S = {0-0} -> 1; A∩P with P = {0-0, 1-2, 1-1} -> 2; |A| = 3, |S| = 2
    # sentence 2: A∩S = 1, A∩P = 1, |A| = 1, |S| = 1
    # corpus: 1 - (2 + 3) / (4 + 3) = 2/7 (a mean of sentence AERs would give (0.2 + 0) / 2)
    assert alignment_error_rate(predicted, sure, possible) == pytest.approx(2 / 7)
    # without possible links P = S: A∩P = A∩S = 2, so 1 - (2 + 2) / 7 = 3/7
    assert alignment_error_rate(predicted, sure) == pytest.approx(3 / 7)


def test_aer_limits():
    sure = [{(0, 0), (1, 1)}]
    assert alignment_error_rate(sure, sure) == 0.0
    assert alignment_error_rate([{(0, 1)}], sure) == 1.0
    assert alignment_error_rate([set()], [set()]) == 0.0
    with pytest.raises(InputError, match="2 sentences, but 1 sure"):
        alignment_error_rate([set(), set()], sure)


def test_word_count_mismatch():
    assert word_count_mismatch(["▁the", "▁do", "g"], "the  dog") is None  # any run of whitespace splits
    assert word_count_mismatch([], "") is None
    # NFKC drops a lone zero-width space: SentencePiece sees one word where str.split() sees two
    expected = "its subword pieces form 1 words but it has 2 whitespace tokens"
    assert word_count_mismatch(["▁x"], "\u200b x") == expected


def test_check_links_names_the_line():
    check_links({(0, 0), (2, 1)}, n_src=3, n_tgt=2)  # the last words on both sides: fine
    with pytest.raises(InputError) as err:
        check_links({(0, 0), (3, 1)}, n_src=3, n_tgt=2, path="gold.align", line=7)
    assert str(err.value) == (
        "gold.align:7: alignment link 3-1 is outside the sentence pair (3 source, 2 target words)"
    )
    with pytest.raises(InputError, match="link 0-2 is outside"):
        check_links({(0, 2)}, n_src=1, n_tgt=2)
