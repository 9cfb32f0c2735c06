"""analysis: alignments from hand-made attention, and the model's attention checked against its decoding."""

from __future__ import annotations

import numpy as np
import pytest

from nmt_cli.align import word_count_mismatch
from nmt_cli.analysis import (
    PairAttention,
    align,
    attention_table,
    forced_attention,
    sweep,
    translation_attention,
)
from nmt_cli.checkpoint import load_model
from nmt_cli.config import DecodeConfig
from nmt_cli.metrics import corpus_scores
from nmt_cli.translate import translate_lines
from tests.conftest import DATA

SRC_PIECES = ["▁the", "▁do", "g", "▁sleeps"]
TGT_PIECES = ["▁der", "▁Hund", "▁schl", "äft"]
ATTENTION = np.array(
    [
        [0.7, 0.1, 0.1, 0.1],  # der
        [0.3, 0.2, 0.2, 0.3],  # Hund: piece-wise a tie of ▁the and ▁sleeps, but ▁do + g = 0.4
        [0.0, 0.4, 0.1, 0.5],  # schl
        [0.1, 0.0, 0.0, 0.9],  # äft
    ]
)
EOS_ROW = np.array([0.1, 0.2, 0.3, 0.4])
PAIR = PairAttention(1, "the dog sleeps", "der Hund schläft", SRC_PIECES, TGT_PIECES, ATTENTION, EOS_ROW)
TEST_LINES = 8


@pytest.fixture(scope="module")
def loaded(trained):
    return load_model(trained)


def test_word_links_by_hand():
    # words: der -> the .7 dog .2 sleeps .1; Hund -> .3 .4 .3; schläft = mean(schl, äft) -> .05 .25 .7
    assert align(PAIR, "word").links == [(0, 0), (1, 1), (2, 2)]
    # pieces: der -> ▁the; Hund -> ▁the (tie, first wins); schl and äft -> ▁sleeps
    assert align(PAIR, "subword").links == [(0, 0), (0, 1), (3, 2), (3, 3)]


def test_a_three_by_three_matrix():
    words = ["a", "b", "c"]
    weights = np.array([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    pair = PairAttention(1, "a b c", "x y z", ["▁" + w for w in words], ["▁x", "▁y", "▁z"], weights, None)
    assert align(pair).links == [(0, 1), (1, 0), (2, 2)]  # x->b, y->a, z->c


def test_a_line_whose_pieces_do_not_match_its_words_gets_no_links():
    pair = PAIR._replace(src="\u200b the dog sleeps")  # four whitespace tokens, three piece words
    result = align(pair)
    assert result.links == []
    assert result.problem == "source: its subword pieces form 3 words but it has 4 whitespace tokens"
    assert align(PAIR._replace(tgt="")).links == [] and align(PAIR._replace(tgt="")).problem is None


def test_attention_tables_keep_the_eos_step_as_a_last_row():
    pieces = attention_table(PAIR, "subword")
    assert pieces.tgt_words == [*TGT_PIECES, "</s>"] and pieces.src_words == SRC_PIECES
    np.testing.assert_allclose(pieces.weights[-1], EOS_ROW)
    words = attention_table(PAIR, "word")
    assert words.src_words == ["the", "dog", "sleeps"]
    assert words.tgt_words == ["der", "Hund", "schläft", "</s>"]
    np.testing.assert_allclose(words.weights[-1], [0.1, 0.2 + 0.3, 0.4])  # eos row summed over do + g
    assert attention_table(PAIR._replace(eos=None)).tgt_words == TGT_PIECES  # stopped at the cap: no eos


def test_toy_corpus_pieces_merge_to_its_whitespace_tokens(subword):
    for name in ("test.en", "test.de", "dev.en", "dev.de"):
        lines = (DATA / name).read_text(encoding="utf-8").splitlines()
        pieces = [subword.id_to_piece(ids) for ids in subword.encode_batch(lines)]
        bad = [
            n
            for n, (p, line) in enumerate(zip(pieces, lines, strict=True), 1)
            if word_count_mismatch(p, line)
        ]
        assert bad == [], name


def test_forced_attention_is_a_distribution_and_batch_invariant(loaded):
    src = (DATA / "test.en").read_text(encoding="utf-8").splitlines()[:TEST_LINES] + ["", "the dog ."]
    tgt = (DATA / "test.de").read_text(encoding="utf-8").splitlines()[:TEST_LINES] + ["der Hund .", ""]
    pairs = forced_attention(loaded, src, tgt, batch_size=3)
    for pair in pairs[:TEST_LINES]:
        assert pair.attention.shape == (len(pair.tgt_pieces), len(pair.src_pieces))
        np.testing.assert_allclose(np.vstack([pair.attention, pair.eos]).sum(axis=1), 1.0, rtol=1e-5)
    assert pairs[TEST_LINES].attention.shape == (len(pairs[TEST_LINES].tgt_pieces), 0)  # empty source
    assert pairs[-1].eos is None and align(pairs[-1]).links == []  # empty target: no model run
    for one, batched in zip(forced_attention(loaded, src, tgt, batch_size=1), pairs, strict=True):
        np.testing.assert_allclose(one.attention, batched.attention, atol=1e-5)


@pytest.mark.parametrize("beam_size", [1, 2])
def test_translation_attention_follows_translate_and_equals_forced_attention(loaded, beam_size):
    lines = (DATA / "test.en").read_text(encoding="utf-8").splitlines()[:TEST_LINES] + [""]
    cfg = DecodeConfig(beam_size=beam_size)
    pairs = translation_attention(loaded, lines, cfg)
    assert [p.tgt for p in pairs] == [t.hyp for t in translate_lines([lines], loaded, cfg)]
    # teacher forcing the model's own output goes through the same decoder states
    forced = forced_attention(loaded, lines, [p.tgt for p in pairs])
    compared = 0
    for mine, again in zip(pairs, forced, strict=True):
        if mine.eos is not None and again.tgt_pieces == mine.tgt_pieces:  # the text re-encodes the same
            np.testing.assert_allclose(again.attention, mine.attention, atol=1e-4)
            compared += 1
    assert compared >= TEST_LINES // 2


def test_sweep_scores_each_setting(loaded):
    src = (DATA / "dev.en").read_text(encoding="utf-8").splitlines()[:6]
    ref = (DATA / "dev.de").read_text(encoding="utf-8").splitlines()[:6]
    settings = [DecodeConfig(beam_size=1), DecodeConfig(beam_size=2, length_penalty=0.6)]
    rows = sweep(loaded, src, ref, settings)
    assert [(r.beam_size, r.length_penalty) for r in rows] == [(1, None), (2, 0.6)]
    for row, cfg in zip(rows, settings, strict=True):
        hyps = [t.hyp for t in translate_lines([src], loaded, cfg)]
        [bleu] = corpus_scores(hyps, [ref], ["bleu"])
        assert (row.bleu, row.ratio, row.signature) == (bleu.score, bleu.ratio, bleu.signature)
        assert row.empty == 0 and row.seconds > 0
