"""The line contract: N lines in, N out, same order; empty in gives empty out; long lines are split."""

import logging

import pytest

from nmt_cli import translate as translate_module
from nmt_cli.checkpoint import load_model
from nmt_cli.config import DecodeConfig
from nmt_cli.decode import decode_ids
from nmt_cli.errors import ConfigError
from nmt_cli.shortlist import build_table
from nmt_cli.textio import read_lines
from nmt_cli.translate import (
    decode_signature,
    for_decoding,
    force_decode,
    score_lines,
    split_long,
    translate_lines,
)

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


# --- shortlists, int8 and scoring on the trained tiny model ------------------------------------------


def with_table(loaded, corpus, k: int, frequent: int):
    """The loaded model with a lexical table built from the training corpus, as `nmt shortlist` adds."""
    sub = loaded.subword
    src = sub.encode_batch(read_lines(corpus.train_src))
    tgt = sub.encode_batch(read_lines(corpus.train_tgt))
    lex = build_table(src, tgt, loaded.config.vocab_size, k, frequent)
    return loaded._replace(extras=lex.to_tensors())


def dev_lines(corpus, n: int = 24) -> list[str]:
    return read_lines(corpus.dev_src)[:n]


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("beam", [1, 3])
def test_a_shortlist_of_the_whole_vocabulary_equals_full_search(trained, corpus, int8, beam):
    loaded = for_decoding(load_model(trained), int8)
    V = loaded.config.vocab_size
    listed = with_table(loaded, corpus, k=V, frequent=V)  # every sentence's list is every piece
    lines = dev_lines(corpus)
    full = list(translate_lines([lines], loaded, DecodeConfig(beam_size=beam)))
    cut = list(translate_lines([lines], listed, DecodeConfig(beam_size=beam, shortlist=V)))
    assert [t.hyp for t in cut] == [t.hyp for t in full]
    # a list's own normaliser (logsumexp of its columns) may differ from log_softmax in the last bits
    assert [t.score for t in cut] == pytest.approx([t.score for t in full], abs=1e-6)


@pytest.mark.parametrize("beam", [1, 3])
def test_a_shortlist_keeps_batch_invariance(trained, corpus, beam):
    loaded = with_table(load_model(trained), corpus, k=3, frequent=10)
    cfg = DecodeConfig(beam_size=beam, shortlist=3)
    lines = dev_lines(corpus)
    one = list(translate_lines([lines], loaded, cfg, batch_size=1))
    many = list(translate_lines([lines], loaded, cfg, batch_size=7))
    assert [t.hyp for t in one] == [t.hyp for t in many]
    assert [t.score for t in one] == pytest.approx([t.score for t in many], abs=1e-5)
    full = list(translate_lines([lines], loaded, DecodeConfig(beam_size=beam)))
    assert [t.hyp for t in one] != [t.hyp for t in full]  # so small a list does change translations


def test_shortlist_needs_a_table(trained):
    with pytest.raises(ConfigError, match="no shortlist table"):
        list(translate_lines([["the dog ."]], load_model(trained), DecodeConfig(shortlist=5)))


def test_forced_decoding_equals_the_log_probs_of_search(trained, corpus):
    loaded = load_model(trained)
    src = [ids for ids in loaded.subword.encode_batch(dev_lines(corpus)) if ids]
    hyps = [nbest[0] for nbest in decode_ids(loaded.model, src, DecodeConfig(beam_size=1))]
    assert any(h.finished for h in hyps)
    forced = force_decode(loaded.model, src, [h.tokens for h in hyps], batch_size=5)
    for hyp, token_log_probs in zip(hyps, forced, strict=True):
        n = len(hyp.token_log_probs)  # an unfinished hypothesis has no EOS step: compare its tokens
        assert token_log_probs[:n] == pytest.approx(hyp.token_log_probs, abs=1e-4)
        assert len(token_log_probs) == len(hyp.tokens) + 1


def test_score_lines_sums_token_log_probs(trained):
    loaded = load_model(trained)
    scores = score_lines(loaded, ["the dog sleeps .", "", "the cat ."], ["der Hund schläft .", "x", ""])
    assert [s.line for s in scores] == [1, 2, 3]
    assert scores[1].log_prob is None and scores[1].token_log_probs == []  # empty source: no score
    assert scores[2].token_log_probs and len(scores[2].token_log_probs) == 1  # empty target: only EOS
    for s in (scores[0], scores[2]):
        assert s.log_prob == pytest.approx(sum(s.token_log_probs)) and s.log_prob < 0
        assert len(s.token_log_probs) == len(s.tgt_pieces) + 1


def test_the_first_batch_goes_out_on_its_own(trained, monkeypatch):
    sizes = []
    real = translate_module.decode_ids

    def counting(model, ids, *args):
        sizes.append(len(ids))
        return real(model, ids, *args)

    monkeypatch.setattr(translate_module, "decode_ids", counting)
    lines = [f"the dog sees {n} cats ." for n in range(10)]
    loaded, cfg = load_model(trained), DecodeConfig(beam_size=1)
    out = list(translate_lines([lines, lines[:3]], loaded, cfg, batch_size=4))
    assert sizes == [4, 6, 3]  # the first chunk's first batch, the rest of it, the next chunk
    assert [t.line for t in out] == list(range(1, 14))


@pytest.mark.parametrize("beam", [1, 3])
def test_a_lone_batch_is_shared_by_the_workers_and_one_sentence_stays_on_the_calling_thread(
    trained, corpus, monkeypatch, beam
):
    """A batch smaller than batch_size still goes to the workers (kernels compiled for one thread count
    only); a single sentence cannot be shared and runs where it was asked for."""
    import threading

    import torch

    from nmt_cli import decode as decode_module

    loaded, cfg = load_model(trained), DecodeConfig(beam_size=beam)
    src = [ids for ids in loaded.subword.encode_batch(dev_lines(corpus)) if ids][:5]
    threads, ran_on = torch.get_num_threads(), []
    real = decode_module._greedy if beam == 1 else decode_module._beam

    def recording(model, ids, *args, **kwargs):
        ran_on.append((threading.current_thread().name, len(ids)))
        return real(model, ids, *args, **kwargs)

    monkeypatch.setattr(decode_module, "_greedy" if beam == 1 else "_beam", recording)
    try:
        torch.set_num_threads(2)
        shared = decode_ids(loaded.model, src, cfg, batch_size=64)
        assert sorted(n for _, n in ran_on) == [2, 3]
        assert all(name.startswith("nmt-decode") for name, _ in ran_on)
        ran_on.clear()
        one = decode_ids(loaded.model, src[:1], cfg, batch_size=64)
        assert ran_on == [(threading.current_thread().name, 1)]
        torch.set_num_threads(1)
        alone = decode_ids(loaded.model, src, cfg, batch_size=64)
    finally:
        torch.set_num_threads(threads)
    assert [[h.tokens for h in nbest] for nbest in shared] == [[h.tokens for h in nbest] for nbest in alone]
    assert [h.tokens for h in one[0]] == [h.tokens for h in alone[0]]


@pytest.mark.parametrize("beam", [1, 3])
def test_worker_threads_change_nothing(trained, corpus, monkeypatch, beam):
    """Batches dealt out to two worker threads give what one thread gives, in input order."""
    import threading

    import torch

    from nmt_cli import decode as decode_module

    loaded, cfg = load_model(trained), DecodeConfig(beam_size=beam)
    src = [ids for ids in loaded.subword.encode_batch(dev_lines(corpus)) if ids]
    threads, ran_on = torch.get_num_threads(), set()
    real = decode_module._greedy if beam == 1 else decode_module._beam

    def recording(model, ids, *args, **kwargs):
        ran_on.add(threading.current_thread().name)
        return real(model, ids, *args, **kwargs)

    monkeypatch.setattr(decode_module, "_greedy" if beam == 1 else "_beam", recording)
    try:
        torch.set_num_threads(1)
        alone = decode_ids(loaded.model, src, cfg, batch_size=4)
        assert ran_on == {threading.current_thread().name}
        torch.set_num_threads(2)
        ran_on.clear()
        shared = decode_ids(loaded.model, src, cfg, batch_size=4)
        assert len(ran_on) == 2 and all(name.startswith("nmt-decode") for name in ran_on)
        assert torch.get_num_threads() == 2  # the caller's setting is back
    finally:
        torch.set_num_threads(threads)
    assert len(src) > 8  # several batches per worker
    # the same tokens; scores as batch invariance has them (a product's last bit may follow its row count)
    assert [[h.tokens for h in nbest] for nbest in shared] == [[h.tokens for h in nbest] for nbest in alone]
    scores = [h.score for nbest in shared for h in nbest]
    assert scores == pytest.approx([h.score for nbest in alone for h in nbest], abs=1e-5)
