"""The line contract: N lines in, N out, same order; empty in gives empty out; long lines are split."""

import logging

from nmt_cli.checkpoint import load_model
from nmt_cli.config import DecodeConfig
from nmt_cli.translate import decode_signature, split_long, translate_lines

LINES = ["the dog sleeps .", "", "the cat sees the dog .", "   ", "a man reads the letter ."]


def test_n_lines_in_n_lines_out_in_order(trained):
    loaded = load_model(trained)
    out = list(translate_lines([LINES], loaded, DecodeConfig(beam_size=1)))
    assert [t.line for t in out] == [1, 2, 3, 4, 5]
    assert [t.src for t in out] == LINES
    assert out[1].hyp == "" and out[1].score is None  # empty in, empty out, model skipped
    assert all(t.hyp_pieces and t.score is not None for t in (out[0], out[2], out[4]))  # model ran


def test_chunking_and_batch_size_do_not_change_output(trained):
    loaded = load_model(trained)
    cfg = DecodeConfig(beam_size=3)
    whole = [t.hyp for t in translate_lines([LINES], loaded, cfg, batch_size=64)]
    pieces = [t.hyp for t in translate_lines([[line] for line in LINES], loaded, cfg, batch_size=1)]
    assert whole == pieces


def test_long_line_is_split_with_a_warning(trained, caplog):
    loaded = load_model(trained)
    long_line = " ".join(["the dog sleeps ."] * 10)
    n_ids = len(loaded.subword.encode(long_line))
    with caplog.at_level(logging.WARNING, logger="nmt_cli"):
        out = list(
            translate_lines(
                [["the cat .", long_line]], loaded, DecodeConfig(beam_size=1), max_input_tokens=n_ids // 3
            )
        )
    assert len(out) == 2 and out[1].hyp
    assert "line 2" in caplog.text and "pieces" in caplog.text


def test_split_long_keeps_every_id():
    assert split_long([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


def test_signature_names_model_and_search(trained):
    loaded = load_model(trained)
    sig = decode_signature(loaded, DecodeConfig(beam_size=5, length_penalty=0.6))
    assert sig.startswith(f"decode|model:{loaded.digest}|search:beam|beam:5|lp:0.6|maxlen:1.5x+10|int8:no")
