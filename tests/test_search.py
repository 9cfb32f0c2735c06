"""Search tests: a scripted toy decoder with answers worked out by hand, then equivalences on a tiny model."""

from __future__ import annotations

import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from nmt_cli.config import DecodeConfig, ModelConfig
from nmt_cli.model import DecoderState, EncoderOutput, StepOutput, build_model
from nmt_cli.search import (
    Group,
    Hypothesis,
    Shortlist,
    _cat_shortlists,
    _log_probs,
    _top_k,
    beam_search,
    greedy,
    greedy_refilled,
    length_penalty,
    search,
)

PAD, UNK, BOS, EOS, A, B = 0, 1, 2, 3, 4, 5
V = 6
MAX_PREFIX = 16  # longer than any cap used with the toy decoder


def decode_cfg(beam: int = 1, alpha: float = 0.0, **kw: object) -> DecodeConfig:
    return DecodeConfig(beam_size=beam, length_penalty=alpha, **kw)  # type: ignore[arg-type]


class ScriptedDecoder:
    """Next-token probabilities looked up by the prefix output so far; other prefixes give EOS 1.0.

    The prefix lives in the state's h (1, N, MAX_PREFIX), -1 padded, so `DecoderState.select` reorders it
    exactly as it reorders a real decoder's state.
    """

    def __init__(self, script: dict[tuple[int, ...], dict[int, float]]):
        self.script = script
        self.steps = 0

    def decode_step(self, prev_tokens: Tensor, state: DecoderState, enc: EncoderOutput) -> StepOutput:
        self.steps += 1
        h = state.h.clone()
        probs = torch.zeros(len(prev_tokens), V)
        for row, token in enumerate(prev_tokens.tolist()):
            prefix = [int(x) for x in h[0, row] if x >= 0]
            if token != BOS and len(prefix) < MAX_PREFIX:
                h[0, row, len(prefix)] = token
                prefix.append(token)
            for next_token, p in self.script.get(tuple(prefix), {EOS: 1.0}).items():
                probs[row, next_token] = p
        attention = enc.mask.float() / enc.mask.sum(1, keepdim=True)  # uniform over real source tokens
        attention = attention.repeat_interleave(len(prev_tokens) // len(enc.mask), 0)  # k rows share a source
        return StepOutput(probs.log(), DecoderState(h, state.c, state.feed), attention)


def toy_encoding(src_lengths: list[int]) -> tuple[EncoderOutput, Tensor]:
    lengths = torch.tensor(src_lengths)
    n, S = len(src_lengths), max(src_lengths)
    state = DecoderState(torch.full((1, n, MAX_PREFIX), -1.0), torch.zeros(1, n, 1), torch.zeros(n, 0))
    mask = torch.arange(S).unsqueeze(0) < lengths.unsqueeze(1)
    return EncoderOutput(torch.zeros(n, S, 1), torch.zeros(n, S, 1), mask, state), lengths


def run_toy(script: dict, cfg: DecodeConfig, src_lengths: tuple[int, ...] = (3,)) -> list[list[Hypothesis]]:
    enc, lengths = toy_encoding(list(src_lengths))
    return search(ScriptedDecoder(script), enc, lengths, cfg)


def assert_hyp(hyp: Hypothesis, tokens: list[int], prob: float, score: float, finished: bool = True) -> None:
    assert hyp.tokens == tokens
    assert hyp.log_prob == pytest.approx(math.log(prob), abs=1e-5)
    assert hyp.score == pytest.approx(score, abs=1e-5)
    assert hyp.finished is finished


def same(x: Hypothesis, y: Hypothesis) -> bool:
    """Equal in every field (a NamedTuple holding a tensor cannot use ==)."""
    return x._replace(attention=None) == y._replace(attention=None) and torch.equal(x.attention, y.attention)


# STYLE.md §10's example
SCRIPT = {
    (): {A: 0.6, B: 0.4},
    (A,): {EOS: 0.4, A: 0.3, B: 0.3},
    (B,): {EOS: 0.9, A: 0.05, B: 0.05},
}


def test_greedy_takes_the_likeliest_token_each_step() -> None:
    # a (0.6), then eos (0.4) -> "a", 0.24; with alpha 1 the score is log 0.24 / 2 (a and eos)
    [[hyp]] = run_toy(SCRIPT, decode_cfg(alpha=1.0))
    assert_hyp(hyp, [A], 0.24, math.log(0.24) / 2)
    assert hyp.token_log_probs == pytest.approx([math.log(0.6), math.log(0.4)])
    assert hyp.attention.shape == (2, 3)


def test_beam_2_finds_the_likelier_sentence() -> None:
    # step 0: a 0.6, b 0.4. step 1: "b eos" 0.36 and "a eos" 0.24 beat "a a" = "a b" = 0.18; both finished
    [nbest] = run_toy(SCRIPT, decode_cfg(beam=2, n_best=2))
    assert_hyp(nbest[0], [B], 0.36, math.log(0.36))
    assert_hyp(nbest[1], [A], 0.24, math.log(0.24))
    [[top]] = run_toy(SCRIPT, decode_cfg(beam=2, n_best=1))
    assert same(top, nbest[0])  # asking for more must not change the top-1


# raw log-prob prefers the short "a" (0.5 * 0.6 = 0.3) to "b b" (0.4 * 0.8 * 0.8 = 0.256)
SHORT_OR_LONG = {
    (): {A: 0.5, B: 0.4, UNK: 0.1},
    (A,): {EOS: 0.6, A: 0.2, B: 0.2},
    (B,): {B: 0.8, EOS: 0.2},
    (B, B): {EOS: 0.8, A: 0.1, B: 0.1},
}
# beam 2. step 0: a 0.5, b 0.4.
#   step 1: "b b" 0.32 (live) and "a eos" 0.3 (finished) beat "a a" 0.1 and "b eos" 0.08.
#   step 2: "a eos" stays at 0.3 and "b b eos" is 0.256: both finished, done. Then:
#   alpha 0:         a = log 0.3 = -1.204              bb = log 0.256 = -1.363            -> "a"
#   average alpha 1: a = -1.204 / 2 = -0.602           bb = -1.363 / 3 = -0.454           -> "b b"
#   gnmt alpha 1:    a = -1.204 / (7/6) = -1.032       bb = -1.363 / (8/6) = -1.022       -> "b b"


@pytest.mark.parametrize(
    ("kind", "alpha", "best", "prob", "divisor"),
    [
        ("average", 0.0, [A], 0.3, 1.0),
        ("average", 1.0, [B, B], 0.256, 3.0),
        ("gnmt", 1.0, [B, B], 0.256, 8 / 6),
        ("average", 0.5, [B, B], 0.256, math.sqrt(3)),  # a: -0.851, bb: -0.787
    ],
)
def test_length_normalisation_can_change_the_winner(
    kind: str, alpha: float, best: list[int], prob: float, divisor: float
) -> None:
    cfg = decode_cfg(beam=2, alpha=alpha, length_penalty_type=kind, n_best=2)
    [nbest] = run_toy(SHORT_OR_LONG, cfg)
    assert_hyp(nbest[0], best, prob, math.log(prob) / divisor)
    assert nbest[0].score > nbest[1].score
    assert {tuple(h.tokens) for h in nbest} == {(A,), (B, B)}


def test_length_penalty_values() -> None:
    lengths = torch.tensor([1, 2, 4])
    assert length_penalty(lengths, decode_cfg(alpha=0.0)).tolist() == [1.0, 1.0, 1.0]
    assert length_penalty(lengths, decode_cfg(alpha=1.0)).tolist() == [1.0, 2.0, 4.0]
    assert length_penalty(lengths, decode_cfg(alpha=0.5)).tolist() == pytest.approx([1.0, 2**0.5, 2.0])
    gnmt = decode_cfg(alpha=1.0, length_penalty_type="gnmt")  # (5 + len) / 6, Wu et al. 2016
    assert length_penalty(lengths, gnmt).tolist() == pytest.approx([1.0, 7 / 6, 9 / 6])
    gnmt_half = decode_cfg(alpha=0.5, length_penalty_type="gnmt")
    assert length_penalty(lengths, gnmt_half).tolist() == pytest.approx([1.0, (7 / 6) ** 0.5, 1.5**0.5])


# "a eos" (0.25 * 0.8 = 0.2) finishes at step 1, then two likelier live prefixes push it out of the beam
DISPLACED = {
    (): {A: 0.25, B: 0.75},
    (A,): {EOS: 0.8, A: 0.2},
    (B,): {B: 1.0},
    (B, B): {A: 0.42, B: 0.33, EOS: 0.25},
    (B, B, A): {EOS: 0.6, A: 0.4},
    (B, B, B): {B: 0.65, EOS: 0.35},
}
# beam 2, alpha 0 (scores are raw log-probs).
#   step 1: "b b" 0.75 (live), "a eos" 0.2 (finished, kept).
#   step 2: "b b a" 0.315 and "b b b" 0.2475 beat "a eos" 0.2, which leaves the beam (but stays kept).
#   step 3: "b b a eos" 0.189 (finished, kept) and "b b b b" 0.1609 (live) beat 0.126 and 0.0866.
# Kept now: "a" 0.2 and "b b a" 0.189. The live "b b b b" can at best finish at 0.1609 < 0.189, so the
# search stops after 4 steps instead of 5. The final beam's best is "b b a"; the answer is "a".
#
# Same beam with alpha 1 (average): kept after step 3 are "b b a" log 0.189 / 4 = -0.417 and "a"
# log 0.2 / 2 = -0.805. "b b b b" is at log 0.1609 = -1.827, below both, but it may still grow: its bound
# is -1.827 / cap = -1.827 / 14 = -0.131 (cap = floor(1.5 * 3 + 10)), so the search goes on, and at step 4
# "b b b b eos" = log 0.1609 / 5 = -0.365 wins. Bounding by the raw log-prob would have stopped too early.


@pytest.mark.parametrize(
    ("alpha", "first", "second", "steps"),
    [
        (0.0, ([A], 0.2, 1), ([B, B, A], 0.189, 1), 4),
        (1.0, ([B, B, B, B], 0.75 * 0.33 * 0.65, 5), ([B, B, A], 0.189, 4), 5),
    ],
)
def test_a_finished_hypothesis_pushed_out_of_the_beam_is_still_returned(
    alpha: float, first: tuple, second: tuple, steps: int
) -> None:
    decoder = ScriptedDecoder(DISPLACED)
    enc, lengths = toy_encoding([3])
    [nbest] = beam_search(decoder, enc, lengths, decode_cfg(beam=2, alpha=alpha, n_best=2))
    for hyp, (tokens, prob, length) in zip(nbest, (first, second), strict=True):
        assert_hyp(hyp, tokens, prob, math.log(prob) / length**alpha)
    assert decoder.steps == steps  # stopped as soon as no live hypothesis could enter the 2 best


# A finished row keeps its place in the beam, extending with PAD for free (as in Sockeye).
SLOT = {
    (): {A: 0.3, B: 0.7},
    (A,): {EOS: 1.0},
    (B,): {A: 0.6, B: 0.4},
    (B, A): {A: 0.5, B: 0.45, EOS: 0.05},
    (B, A, A): {EOS: 0.4, A: 0.6},
}
# beam 2, alpha 0. step 1: "b a" 0.42 (live), "a eos" 0.3 (finished) beat "b b" 0.28.
#   step 2: "a eos" keeps 0.3 and its slot: "b a a" 0.21 is the only live row; "b a b" 0.189 drops out.
#   step 3: "a eos" 0.3, "b a a a" 0.126 beat "b a a eos" 0.084. step 4: "b a a a eos" 0.126.
# Had PAD cost anything, "a eos" would have lost its slot at step 2 and "b a b eos" (0.189) come second.


def test_a_finished_row_keeps_its_beam_slot() -> None:
    [nbest] = run_toy(SLOT, decode_cfg(beam=2, n_best=2))
    assert_hyp(nbest[0], [A], 0.3, math.log(0.3))
    assert_hyp(nbest[1], [B, A, A, A], 0.126, math.log(0.126))


def test_fewer_possible_hypotheses_than_the_beam() -> None:
    # only "a eos" has non-zero probability: beam 2 stops once it is found, and returns just that one
    decoder = ScriptedDecoder({(): {A: 1.0}})
    enc, lengths = toy_encoding([3])
    [nbest] = beam_search(decoder, enc, lengths, decode_cfg(beam=2, n_best=2))
    assert [h.tokens for h in nbest] == [[A]]
    assert decoder.steps == 2


EOS_FIRST = {(): {EOS: 0.6, A: 0.3, B: 0.1}, (A,): {EOS: 1.0}, (B,): {EOS: 1.0}}


def test_eos_is_blocked_at_step_0() -> None:
    # eos (0.6) would give an empty translation; the best non-empty one is "a eos" = 0.3 * 1.0
    [[hyp]] = run_toy(EOS_FIRST, decode_cfg())
    assert_hyp(hyp, [A], 0.3, math.log(0.3))
    [nbest] = run_toy(EOS_FIRST, decode_cfg(beam=2, n_best=2))
    assert [h.tokens for h in nbest] == [[A], [B]]
    assert [h.log_prob for h in nbest] == pytest.approx([math.log(0.3), math.log(0.1)])


UNK_FIRST = {(): {UNK: 0.5, A: 0.3, B: 0.2}, (UNK,): {EOS: 1.0}, (A,): {EOS: 1.0}, (B,): {EOS: 1.0}}


def test_ban_unk() -> None:
    # without the ban "<unk>" (0.5) wins; with it "a" (0.3), then "b" (0.2), not renormalised
    assert run_toy(UNK_FIRST, decode_cfg())[0][0].tokens == [UNK]
    assert run_toy(UNK_FIRST, decode_cfg(beam=2))[0][0].tokens == [UNK]
    [[hyp]] = run_toy(UNK_FIRST, decode_cfg(ban_unk=True))
    assert_hyp(hyp, [A], 0.3, math.log(0.3))
    [nbest] = run_toy(UNK_FIRST, decode_cfg(beam=2, n_best=2, ban_unk=True))
    assert [h.tokens for h in nbest] == [[A], [B]]


CAPPED = {(): {A: 0.6, B: 0.4}, (A,): {A: 0.7, EOS: 0.3}, (B,): {B: 0.4, EOS: 0.3, A: 0.3}}


def test_cap_returns_the_best_unfinished_hypotheses() -> None:
    # cap = floor(0 * src_len + 1) = 1 step, and eos is blocked at step 0: nothing can finish
    cap_1 = {"max_len_a": 0.0, "max_len_b": 1}
    [[hyp]] = run_toy(CAPPED, decode_cfg(**cap_1))
    assert_hyp(hyp, [A], 0.6, math.log(0.6), finished=False)
    assert hyp.token_log_probs == pytest.approx([math.log(0.6)])
    assert hyp.attention.shape == (1, 3)
    [nbest] = run_toy(CAPPED, decode_cfg(beam=2, n_best=2, alpha=1.0, **cap_1))
    assert_hyp(nbest[0], [A], 0.6, math.log(0.6), finished=False)
    assert_hyp(nbest[1], [B], 0.4, math.log(0.4), finished=False)


def test_at_the_cap_finished_hypotheses_come_first() -> None:
    # cap 2. greedy: a (0.6), a (0.7) -> "a a" 0.42, unfinished.
    # beam 2, step 1: "a a" 0.42 (live) and "a eos" 0.18 (finished) beat "b b" 0.16, "b eos" = "b a" = 0.12
    cap_2 = {"max_len_a": 0.0, "max_len_b": 2}
    [[hyp]] = run_toy(CAPPED, decode_cfg(**cap_2))
    assert_hyp(hyp, [A, A], 0.42, math.log(0.42), finished=False)
    [nbest] = run_toy(CAPPED, decode_cfg(beam=2, n_best=2, **cap_2))
    assert_hyp(nbest[0], [A], 0.18, math.log(0.18), finished=True)
    assert_hyp(nbest[1], [A, A], 0.42, math.log(0.42), finished=False)
    [[top]] = run_toy(CAPPED, decode_cfg(beam=2, n_best=1, **cap_2))
    assert same(top, nbest[0])


def test_caps_are_per_sentence() -> None:
    # "a" then "a a ..." until the cap: floor(1.0 * src_len + 1) tokens for each sentence, whatever its batch
    always_a = {(A,) * n: {A: 1.0} for n in range(MAX_PREFIX)}
    for beam in (1, 2):
        cfg = decode_cfg(beam=beam, max_len_a=1.0, max_len_b=1)
        out = run_toy(always_a, cfg, src_lengths=(2, 6, 4))
        assert [len(nbest[0].tokens) for nbest in out] == [3, 7, 5]
        assert [nbest[0].attention.shape for nbest in out] == [(3, 2), (7, 6), (5, 4)]
        assert not any(nbest[0].finished for nbest in out)


def test_toy_batch_keeps_input_order() -> None:
    out = run_toy(SCRIPT, decode_cfg(beam=2), src_lengths=(2, 5, 1))
    assert [nbest[0].attention.shape[1] for nbest in out] == [2, 5, 1]


class ColumnsDecoder:
    """A step model scoring only the columns `vocab`, as a cut output layer does."""

    def __init__(self, decoder: ScriptedDecoder, vocab: list[int]):
        self.decoder, self.vocab = decoder, torch.tensor(vocab)

    def decode_step(self, prev_tokens: Tensor, state: DecoderState, enc: EncoderOutput) -> StepOutput:
        out = self.decoder.decode_step(prev_tokens, state, enc)
        return out._replace(logits=out.logits[:, self.vocab])


def shortlisted(vocab: list[int], allowed: list[list[int]]) -> Shortlist:
    """A Shortlist over `vocab` columns where sentence b may use the target ids allowed[b]."""
    mask = torch.tensor([[v in ids for v in vocab] for ids in allowed])
    return Shortlist(torch.tensor(vocab), mask)


SPECIALS = [PAD, UNK, BOS, EOS]
ONLY_A, ONLY_B = SPECIALS + [A], SPECIALS + [B]
# SCRIPT with sentence 0 restricted to a, sentence 1 to b (each conditioned on its own list):
#   0: step 0 a (0.6 / 0.6 = 1), step 1 eos 0.4 / (0.4 + 0.3) = 4/7, a 3/7  -> greedy "a" 4/7
#   1: step 0 b (0.4 / 0.4 = 1), step 1 eos 0.9 / (0.9 + 0.05) = 18/19      -> greedy "b" 18/19
# beam 2 for sentence 0: only "a" at step 0; then "a eos" 4/7 and "a a" 3/7, which ends "a a eos" 3/7


@pytest.mark.parametrize("beam", [1, 2])
def test_each_sentence_is_conditioned_on_its_own_shortlist(beam: int) -> None:
    enc, lengths = toy_encoding([3, 3])
    cfg = decode_cfg(beam=beam)
    both = search(ScriptedDecoder(SCRIPT), enc, lengths, cfg, shortlisted(list(range(V)), [ONLY_A, ONLY_B]))
    assert_hyp(both[0][0], [A], 4 / 7, math.log(4 / 7))
    assert_hyp(both[1][0], [B], 18 / 19, math.log(18 / 19))
    # alone, each batch's union is the sentence's own list: column 4 is a in one and b in the other
    for b, ids in enumerate((ONLY_A, ONLY_B)):
        enc, lengths = toy_encoding([3])
        [alone] = search(
            ColumnsDecoder(ScriptedDecoder(SCRIPT), ids), enc, lengths, cfg, shortlisted(ids, [ids])
        )
        assert alone[0].tokens == both[b][0].tokens
        assert alone[0].log_prob == pytest.approx(both[b][0].log_prob, abs=1e-6)


def test_beam_with_a_shortlist() -> None:
    enc, lengths = toy_encoding([3])
    cfg = decode_cfg(beam=2, n_best=2)
    [nbest] = search(
        ColumnsDecoder(ScriptedDecoder(SCRIPT), ONLY_A), enc, lengths, cfg, shortlisted(ONLY_A, [ONLY_A])
    )
    assert_hyp(nbest[0], [A], 4 / 7, math.log(4 / 7))
    assert_hyp(nbest[1], [A, A], 3 / 7, math.log(3 / 7))


def test_a_full_shortlist_changes_nothing() -> None:
    # every column allowed: the same hypotheses as without a shortlist (normalised over a row's own
    # columns, the scores may differ from log_softmax's in the last bits)
    for beam in (1, 2):
        cfg = decode_cfg(beam=beam, n_best=beam)
        enc, lengths = toy_encoding([3, 2])
        plain = search(ScriptedDecoder(SCRIPT), enc, lengths, cfg)
        full = search(
            ScriptedDecoder(SCRIPT), enc, lengths, cfg, shortlisted(list(range(V)), [list(range(V))] * 2)
        )
        for p, f in zip(plain, full, strict=True):
            assert [h.tokens for h in p] == [h.tokens for h in f]
            assert [h.score for h in p] == pytest.approx([h.score for h in f], abs=1e-6)
            assert [h.token_log_probs for h in p] == [pytest.approx(h.token_log_probs, abs=1e-6) for h in f]


# --- a tiny real model: equivalences ---------------------------------------------------------------

LENGTHS = [6, 2, 9, 4, 11, 1, 7]


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=30, emb_size=8, encoder_hidden=8, decoder_hidden=16, dropout=0.0)
    model = build_model(cfg).eval()
    model.reset_parameters(scale=1.0)  # sharper than the usual 0.1, so outputs differ between sentences
    with torch.no_grad():
        model.generator.bias[EOS] += 3.0  # most sentences finish before their cap, at different steps
    return model


@pytest.fixture(scope="module")
def sentences() -> list[Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(4, 30, (n,), generator=gen) for n in LENGTHS]


def encoded(model: torch.nn.Module, sents: list[Tensor]) -> tuple[EncoderOutput, Tensor]:
    src = torch.nn.utils.rnn.pad_sequence(sents, batch_first=True, padding_value=PAD)
    lengths = torch.tensor([len(s) for s in sents])
    with torch.inference_mode():
        return model.encode(src, lengths), lengths


def decode(
    model: torch.nn.Module, sents: list[Tensor], cfg: DecodeConfig, batch_size: int
) -> list[list[Hypothesis]]:
    """Search batch by batch, outside inference mode: search must set it itself."""
    results = []
    for i in range(0, len(sents), batch_size):
        results += search(model, *encoded(model, sents[i : i + batch_size]), cfg)
    return results


def test_beam_1_equals_greedy(tiny: torch.nn.Module, sentences: list[Tensor]) -> None:
    enc, lengths = encoded(tiny, sentences)
    with_greedy = greedy(tiny, enc, lengths, decode_cfg(alpha=1.0))
    with_beam = beam_search(tiny, enc, lengths, decode_cfg(alpha=1.0))
    for g, b in zip(with_greedy, with_beam, strict=True):
        assert g[0].tokens == b[0].tokens
        assert g[0].score == pytest.approx(b[0].score, abs=1e-6)


@pytest.mark.parametrize("beam", [1, 5])
def test_batched_equals_one_sentence_at_a_time(
    tiny: torch.nn.Module, sentences: list[Tensor], beam: int
) -> None:
    cfg = decode_cfg(beam=beam, alpha=1.0, n_best=beam)
    alone = decode(tiny, sentences, cfg, batch_size=1)
    lengths = {len(nbest[0].tokens) for nbest in alone}
    assert len(lengths) > 2  # sentences end at different steps, so rows leave the batch at different times
    for batch_size in (3, 7):
        batched = decode(tiny, sentences, cfg, batch_size)
        for one, many in zip(alone, batched, strict=True):
            assert [h.tokens for h in one] == [h.tokens for h in many]
            assert [h.finished for h in one] == [h.finished for h in many]
            assert [h.score for h in one] == pytest.approx([h.score for h in many], abs=1e-5)


def test_outputs_come_back_in_input_order(tiny: torch.nn.Module, sentences: list[Tensor]) -> None:
    cfg = decode_cfg(beam=5, alpha=1.0)
    forward = decode(tiny, sentences, cfg, batch_size=7)
    backward = decode(tiny, sentences[::-1], cfg, batch_size=7)
    assert [n[0].tokens for n in forward] == [n[0].tokens for n in backward[::-1]]
    assert len({tuple(n[0].tokens) for n in forward}) > 3  # distinct outputs, so a shuffle would show


@pytest.mark.parametrize("beam", [1, 5])
def test_hypotheses_are_consistent(tiny: torch.nn.Module, sentences: list[Tensor], beam: int) -> None:
    cfg = decode_cfg(beam=beam, alpha=1.0, n_best=beam)
    for sent, nbest in zip(sentences, decode(tiny, sentences, cfg, batch_size=7), strict=True):
        assert len(nbest) == beam
        for hyp in nbest:
            steps = len(hyp.tokens) + hyp.finished
            assert hyp.attention.shape == (steps, len(sent))  # the real source length, not the padded one
            assert torch.allclose(hyp.attention.sum(1), torch.ones(steps), atol=1e-5)
            assert len(hyp.token_log_probs) == steps
            assert sum(hyp.token_log_probs) == pytest.approx(hyp.log_prob, abs=1e-4)
            assert hyp.score == pytest.approx(hyp.log_prob / steps, abs=1e-5)  # average, alpha 1
            assert 0 < steps <= math.floor(1.5 * len(sent) + 10)
            assert not {PAD, BOS, EOS} & set(hyp.tokens)


def test_n_best_keeps_the_top_1_and_is_ordered(tiny: torch.nn.Module, sentences: list[Tensor]) -> None:
    top = [decode(tiny, sentences, decode_cfg(beam=5, alpha=1.0, n_best=n), 7) for n in (1, 3, 5)]
    for one, three, five in zip(*top, strict=True):
        assert one[0].tokens == three[0].tokens == five[0].tokens
        assert [h.tokens for h in three] == [h.tokens for h in five[:3]]
        for group in (True, False):  # finished ones first, each group best first
            scores = [h.score for h in five if h.finished is group]
            assert scores == sorted(scores, reverse=True)
        assert [h.finished for h in five] == sorted((h.finished for h in five), reverse=True)


def test_sentences_that_join_midway_get_what_they_get_alone(tiny, sentences) -> None:
    cfg = decode_cfg(alpha=1.0)
    alone = decode(tiny, sentences, cfg, batch_size=1)
    waiting, rooms = list(range(len(sentences))), []

    def next_group(room: int) -> Group | None:
        rooms.append(room)
        ids, waiting[:] = waiting[:room], waiting[room:]
        if not ids:
            return None
        enc, lengths = encoded(tiny, [sentences[i] for i in ids])
        return Group(enc, lengths, torch.tensor(ids), None)

    joined = greedy_refilled(lambda _: tiny, next_group, len(sentences), cfg, capacity=4, refill=1)
    assert any(0 < room < 4 for room in rooms)  # sentences joined others that were mid-way
    for one, refilled in zip(alone, joined, strict=True):
        assert one[0].tokens == refilled[0].tokens and one[0].finished == refilled[0].finished
        assert one[0].score == pytest.approx(refilled[0].score, abs=1e-5)
        assert torch.allclose(one[0].attention, refilled[0].attention, atol=1e-5)


def test_a_group_splits_into_views_of_its_rows(tiny, sentences) -> None:
    enc, lengths = encoded(tiny, sentences)
    group = Group(enc, lengths, torch.arange(len(sentences)), None)
    first, rest = group.split(2)
    index = torch.arange(2, len(sentences))
    for part, whole in ((first.enc, enc.select(torch.arange(2))), (rest.enc, enc.select(index))):
        for x, y in zip((*part[:3], *part.state), (*whole[:3], *whole.state), strict=True):
            assert torch.equal(x, y)
    for x, y in zip((*rest.enc[:3], *rest.enc.state), (*enc[:3], *enc.state), strict=True):
        assert x.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()  # nothing copied
    assert rest.ids.tolist() == index.tolist() and torch.equal(rest.src_lengths, lengths[2:])


def test_greedy_frees_a_groups_encoder_output_once_its_rows_are_compacted(tiny, sentences) -> None:
    """A sentence that finishes leaves the batch; the batch's first encoder output must go with it, or
    every compaction holds one more copy of the largest tensors of decoding."""
    groups, first_memory, alive = [list(range(len(sentences)))], [], []

    def next_group(room: int) -> Group | None:
        if not groups:
            return None
        ids = groups.pop()
        enc, lengths = encoded(tiny, [sentences[i] for i in ids])
        first_memory.append(weakref.ref(enc.memory))
        return Group(enc, lengths, torch.tensor(ids), None)

    class Watched:
        def decode_step(self, prev, state, enc):
            alive.append((len(prev), first_memory[0]() is not None))
            return tiny.decode_step(prev, state, enc)

    n = len(sentences)
    greedy_refilled(lambda _: Watched(), next_group, n, decode_cfg(), capacity=n, refill=n)
    assert alive[0] == (n, True)  # the rows start on the group's own tensors
    assert any(rows < n for rows, _ in alive)  # sentences left mid-way
    assert all(not kept for rows, kept in alive if rows < n)


def test_joined_shortlists_keep_each_rows_columns() -> None:
    a = Shortlist(torch.tensor([0, 1, 2, 3, 10, 11]), torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool))
    inside = Shortlist(torch.tensor([0, 1, 2, 3, 10]), torch.tensor([[1, 1, 1, 1, 1]], dtype=torch.bool))
    kept = _cat_shortlists(a, inside)
    assert kept.vocab is a.vocab  # the same columns: no new output layer
    assert kept.allowed.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]]
    other = Shortlist(torch.tensor([0, 1, 2, 3, 12]), torch.tensor([[1, 1, 1, 1, 1]], dtype=torch.bool))
    union = _cat_shortlists(a, other)
    assert union.vocab.tolist() == [0, 1, 2, 3, 10, 12]  # 11, which no row of a allows, is dropped
    assert union.allowed.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 1]]


def test_greedy_rows_leave_in_place_and_the_callers_encoder_output_stays_as_it_was(tiny, sentences) -> None:
    enc, lengths = encoded(tiny, sentences)
    before = [x.clone() for x in (*enc[:3], *enc.state)]
    seen = []  # (rows, storage of the memory) at each step

    class Watched:
        def decode_step(self, prev, state, enc):
            seen.append((len(prev), enc.memory.untyped_storage().data_ptr()))
            return tiny.decode_step(prev, state, enc)

    n = len(sentences)
    groups = iter([Group(enc, lengths, torch.arange(n), None)])
    results = greedy_refilled(lambda _: Watched(), lambda _: next(groups, None), n, decode_cfg(), n, n)
    assert all(torch.equal(x, y) for x, y in zip(before, (*enc[:3], *enc.state), strict=True))
    storages = [storage for rows, storage in seen if rows < n]
    assert len({rows for rows, _ in seen}) > 2  # sentences left at several steps
    assert storages[0] != enc.memory.untyped_storage().data_ptr()  # copied once, at the first leaving
    assert len(set(storages)) == 1  # and moved in place ever after
    assert [r[0].tokens for r in results] == [r[0].tokens for r in greedy(tiny, enc, lengths, decode_cfg())]


@pytest.mark.parametrize("input_feeding", [True, False])
def test_a_two_layer_decoder_gives_each_sentence_the_same_output_in_any_batch(
    sentences: list[Tensor], input_feeding: bool
) -> None:
    """Rows leave a two-layer state (L, B, H) in place too, and stepping goes on from views of it."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=30, emb_size=8, encoder_hidden=8, decoder_hidden=16, decoder_layers=2,
        input_feeding=input_feeding, dropout=0.0,
    )  # fmt: skip
    model = build_model(cfg).eval()
    model.reset_parameters(scale=1.0)
    with torch.no_grad():
        model.generator.bias[EOS] += 2.0  # some sentences end early, others at their caps
    search_cfg = decode_cfg(alpha=1.0)
    alone = decode(model, sentences, search_cfg, batch_size=1)
    assert len({len(nbest[0].tokens) for nbest in alone}) > 2  # rows leave at different steps
    batched = decode(model, sentences, search_cfg, batch_size=len(sentences))
    for one, many in zip(alone, batched, strict=True):
        assert one[0].tokens == many[0].tokens
        assert one[0].score == pytest.approx(many[0].score, abs=1e-5)


def test_log_probs_over_all_columns_are_written_over_the_logits_with_log_softmax_bits():
    torch.manual_seed(0)
    logits = torch.randn(7, 300) * 6
    expected = F.log_softmax(logits, dim=-1)
    mine = logits.clone()
    log_probs = _log_probs(mine, None)
    assert log_probs.data_ptr() == mine.data_ptr()  # no second (N, V) tensor
    assert torch.equal(log_probs, expected)


@pytest.mark.parametrize("columns", [40, 3])  # fewer columns than k: a short shortlist
def test_top_k_ranks_each_rows_best_k_as_the_whole_sums_would(columns):
    torch.manual_seed(0)
    sentences, k = 6, 5
    log_prob = torch.randn(sentences * k) * 3
    log_prob[1:k] = float("-inf")  # a first step: one live row
    log_prob[2 * k] = 50.0  # all of sentence 2's best k continue its first row
    candidates = torch.randn(sentences * k, columns).log_softmax(dim=1)
    choice = _top_k(log_prob, candidates, k)
    sums = (log_prob.unsqueeze(1) + candidates).view(sentences, k * columns)  # what it avoids making
    best, flat = sums.topk(k, dim=1)
    assert torch.equal(choice.log_prob, best.flatten())
    live = best.flatten().isfinite()  # which -inf sum fills an empty place is of no consequence
    parents = (torch.arange(sentences).unsqueeze(1) * k + flat // columns).flatten()
    assert torch.equal(choice.parents[live], parents[live])
    assert torch.equal(choice.positions[live], (flat % columns).flatten()[live])
