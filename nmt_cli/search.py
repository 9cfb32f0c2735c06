"""Greedy and beam search over the model's step contract: pure functions, no I/O.

Beam search keeps fixed shapes, as Sockeye does: B*k rows, and a finished row stays in the beam and can
only extend with PAD at zero cost. The beam therefore ranks prefixes by raw log-probability, which makes
k = 1 exactly greedy. Each sentence also keeps its k best finished hypotheses by length-normalised score,
so one pushed out of the beam by likelier (but still unfinished) prefixes is not lost.

Stopping. A live row with raw log-prob R <= 0 finishes, if ever, with R' <= R at some length L <= cap.
Both length penalties lp(L) grow with L, so its final score is R' / lp(L) <= R / lp(L) <= R / lp(cap).
A sentence is therefore done when it holds k finished hypotheses and no live row's bound R / lp(cap)
beats the k-th of them (nothing can still enter its k best), or when it reaches its length cap.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from nmt_cli.config import DecodeConfig
from nmt_cli.model import DecoderState, EncoderOutput, StepOutput

PAD, UNK, BOS, EOS = 0, 1, 2, 3  # fixed by the subword module, which this layer may not import
NEG_INF = float("-inf")


class Hypothesis(NamedTuple):
    tokens: list[int]  # output ids, without BOS and EOS
    score: float  # log_prob / length penalty: what hypotheses are ranked by
    log_prob: float  # sum of token_log_probs
    token_log_probs: list[float]  # one per output token, plus one for EOS when finished
    attention: Tensor  # (len(token_log_probs), S_b) over the sentence's real source tokens
    finished: bool  # ended with EOS; False when stopped by the length cap


class StepModel(Protocol):
    """All search needs from a model (Seq2Seq has it): one decoder step."""

    def decode_step(self, prev_tokens: Tensor, state: DecoderState, enc: EncoderOutput) -> StepOutput: ...


def length_penalty(lengths: Tensor, cfg: DecodeConfig) -> Tensor:
    """Divisor of a log-prob: len**alpha ("average") or ((5 + len) / 6)**alpha ("gnmt", Wu et al. 2016, §7).

    lengths (N,) output tokens including EOS -> (N,) float
    """
    lengths = lengths.float()
    base = lengths if cfg.length_penalty_type == "average" else (5.0 + lengths) / 6.0
    return base.pow(cfg.length_penalty)


def _max_lengths(src_lengths: Tensor, cfg: DecodeConfig) -> Tensor:
    """Per-sentence cap on output tokens, EOS included: floor(a * src_len + b). (B,) -> (B,)."""
    # float64, so that e.g. 0.7 * 10 floors to 7 as it does in Python, not to 6
    return torch.floor(cfg.max_len_a * src_lengths.double() + cfg.max_len_b).long()


def _mask_log_probs(log_probs: Tensor, step: int, cfg: DecodeConfig) -> Tensor:
    """Tokens that may not come next get -inf, in place: PAD, BOS, UNK with ban_unk, EOS at step 0. (N, V)."""
    banned = [PAD, BOS] + ([UNK] if cfg.ban_unk else []) + ([EOS] if step == 0 else [])
    log_probs[:, banned] = NEG_INF  # an empty translation is never the answer
    return log_probs


class _History(NamedTuple):
    """What each row has output so far: tokens (N, t), their log-probs (N, t), attention (N, t, S)."""

    tokens: Tensor
    token_log_probs: Tensor
    attention: Tensor

    @staticmethod
    def empty(rows: int, enc: EncoderOutput) -> _History:
        device, S = enc.mask.device, enc.mask.size(1)
        return _History(
            torch.empty(rows, 0, dtype=torch.long, device=device),
            torch.empty(rows, 0, device=device),
            enc.memory.new_empty(rows, 0, S),
        )

    def select(self, index: Tensor) -> _History:
        return _History(self.tokens[index], self.token_log_probs[index], self.attention[index])

    def append(self, tokens: Tensor, token_log_probs: Tensor, attention: Tensor) -> _History:
        """tokens (N,), token_log_probs (N,), attention (N, S) become step t."""
        return _History(
            torch.cat([self.tokens, tokens.unsqueeze(1)], 1),
            torch.cat([self.token_log_probs, token_log_probs.unsqueeze(1)], 1),
            torch.cat([self.attention, attention.unsqueeze(1)], 1),
        )

    def hypothesis(self, row: int, log_prob: Tensor, src_len: int, cfg: DecodeConfig) -> Hypothesis:
        """Row `row` as a Hypothesis, its attention cut to the real source length src_len."""
        tokens = self.tokens[row]
        length = int((tokens != PAD).sum())  # PAD only ever follows EOS: this counts up to EOS, inclusive
        finished = length > 0 and int(tokens[length - 1]) == EOS
        score = log_prob / length_penalty(torch.tensor(length), cfg).to(log_prob.device)
        attention = self.attention[row, :length, :src_len].clone()  # a copy, so the history can be freed
        token_log_probs = self.token_log_probs[row, :length].tolist()
        return Hypothesis(
            tokens[: length - finished].tolist(),
            float(score),
            float(log_prob),
            token_log_probs,
            attention,
            finished,
        )


class _Sentences(NamedTuple):
    """The sentences still being searched: input row ids, source lengths, caps, all (B',)."""

    ids: Tensor
    src_lengths: Tensor
    caps: Tensor

    @staticmethod
    def start(src_lengths: Tensor, cfg: DecodeConfig, device: torch.device) -> _Sentences:
        src_lengths = src_lengths.to(device)
        ids = torch.arange(src_lengths.size(0), device=device)
        return _Sentences(ids, src_lengths, _max_lengths(src_lengths, cfg))

    def select(self, index: Tensor) -> _Sentences:
        return _Sentences(self.ids[index], self.src_lengths[index], self.caps[index])


@torch.inference_mode()
def greedy(
    model: StepModel, enc: EncoderOutput, src_lengths: Tensor, cfg: DecodeConfig
) -> list[list[Hypothesis]]:
    """The most likely token at each step, up to each sentence's own cap.

    enc with B rows, src_lengths (B,) -> B one-hypothesis lists, in input order
    """
    sents = _Sentences.start(src_lengths, cfg, enc.mask.device)
    results: list[list[Hypothesis]] = [[] for _ in range(len(sents.ids))]
    history, log_prob = _History.empty(len(sents.ids), enc), enc.memory.new_zeros(len(sents.ids))
    prev, state = torch.full_like(sents.ids, BOS), enc.state
    for t in range(int(sents.caps.max()) if len(sents.ids) else 0):
        out = model.decode_step(prev, state, enc)
        step_log_prob, prev = _mask_log_probs(out.log_probs, t, cfg).max(dim=1)
        log_prob = log_prob + step_log_prob
        history = history.append(prev, step_log_prob, out.attention)
        state, done = out.state, (prev == EOS) | (sents.caps <= t + 1)
        for row in done.nonzero().flatten().tolist():
            src_len = int(sents.src_lengths[row])
            results[int(sents.ids[row])] = [history.hypothesis(row, log_prob[row], src_len, cfg)]
        if done.all():
            break
        if done.any():  # finished sentences leave the batch: nothing is computed for them any more
            keep = (~done).nonzero().flatten()
            history, log_prob, prev, sents = (
                history.select(keep),
                log_prob[keep],
                prev[keep],
                sents.select(keep),
            )
            state, enc = state.select(keep), enc.select(keep)
    return results


class _Beam(NamedTuple):
    """k rows per sentence (N = B' * k): history, raw log-prob (N,), finished (N,)."""

    history: _History
    log_prob: Tensor
    finished: Tensor

    @staticmethod
    def start(sentences: int, k: int, enc: EncoderOutput) -> _Beam:
        """Only row 0 of each sentence is live (log-prob 0): step 0 must not fill the beam with k copies."""
        log_prob = enc.memory.new_full((sentences, k), NEG_INF)
        log_prob[:, 0] = 0.0
        finished = torch.zeros(sentences * k, dtype=torch.bool, device=log_prob.device)
        return _Beam(_History.empty(sentences * k, enc), log_prob.view(-1), finished)

    def select(self, index: Tensor) -> _Beam:
        return _Beam(self.history.select(index), self.log_prob[index], self.finished[index])


def _candidate_log_probs(log_probs: Tensor, finished: Tensor, step: int, cfg: DecodeConfig) -> Tensor:
    """What each row may extend with, in place: log_probs (N, V), finished (N,) -> (N, V)."""
    log_probs = _mask_log_probs(log_probs, step, cfg)
    log_probs[finished] = NEG_INF  # a finished row stays in the beam ...
    log_probs[finished, PAD] = 0.0  # ... and can only extend with PAD, for free
    return log_probs


def _top_k(scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Best k continuations per sentence, over all its rows at once.

    scores (B'*k, V) raw log-probs -> parent rows (B'*k,), tokens (B'*k,), raw log-probs (B'*k,)
    """
    V = scores.size(1)
    best, flat = scores.view(-1, k * V).topk(k, dim=1)  # per sentence: never depends on batch-mates
    first_row = torch.arange(best.size(0), device=scores.device).unsqueeze(1) * k
    return (first_row + flat // V).flatten(), (flat % V).flatten(), best.flatten()


def _advance(
    beam: _Beam, parents: Tensor, tokens: Tensor, log_prob: Tensor, candidates: Tensor, attention: Tensor
) -> _Beam:
    """Row i continues row parents[i] with tokens[i]; candidates (N, V), attention (N, S)."""
    history = beam.history.select(parents).append(tokens, candidates[parents, tokens], attention[parents])
    return _Beam(history, log_prob, beam.finished[parents] | (tokens == EOS))


def _keep_finished(
    beam: _Beam, new: Tensor, sents: _Sentences, kept: list[list[Hypothesis]], k: int, cfg: DecodeConfig
) -> None:
    """Add rows that just emitted EOS (new (N,)) to their sentence's k best finished hypotheses, in kept."""
    for row in (new & beam.log_prob.isfinite()).nonzero().flatten().tolist():
        b = row // k
        best = kept[int(sents.ids[b])]
        hyp = beam.history.hypothesis(row, beam.log_prob[row], int(sents.src_lengths[b]), cfg)
        if len(best) < k or hyp.score > best[-1].score:
            best.append(hyp)
            best.sort(key=lambda h: h.score, reverse=True)  # stable: earlier finds win ties
            del best[k:]


def _sentences_done(
    beam: _Beam, sents: _Sentences, kept: list[list[Hypothesis]], step: int, k: int, cfg: DecodeConfig
) -> Tensor:
    """(B',) True at the cap, or where no live row's bound R / lp(cap) beats the k-th kept hypothesis."""
    live = ~beam.finished & beam.log_prob.isfinite()
    bound = beam.log_prob / length_penalty(sents.caps.repeat_interleave(k), cfg)
    best_live = torch.where(live, bound, NEG_INF).view(-1, k).amax(dim=1)
    kth = [kept[i][-1].score if len(kept[i]) >= k else NEG_INF for i in sents.ids.tolist()]
    return (best_live <= best_live.new_tensor(kth)) | (sents.caps <= step + 1)


def _n_best(
    beam: _Beam, b: int, sents: _Sentences, kept: list[list[Hypothesis]], k: int, cfg: DecodeConfig
) -> list[Hypothesis]:
    """Sentence b's cfg.n_best best finished hypotheses, filled up with its best unfinished rows."""
    best = kept[int(sents.ids[b])][: cfg.n_best]
    if len(best) < cfg.n_best:
        rows = [
            r for r in range(b * k, b * k + k) if not beam.finished[r] and math.isfinite(beam.log_prob[r])
        ]
        src_len = int(sents.src_lengths[b])
        unfinished = [beam.history.hypothesis(r, beam.log_prob[r], src_len, cfg) for r in rows]
        best = best + sorted(unfinished, key=lambda h: h.score, reverse=True)[: cfg.n_best - len(best)]
    return best


@torch.inference_mode()
def beam_search(
    model: StepModel, enc: EncoderOutput, src_lengths: Tensor, cfg: DecodeConfig
) -> list[list[Hypothesis]]:
    """Fixed-shape beam search with length normalisation and per-sentence caps.

    enc with B rows, src_lengths (B,) -> B lists of cfg.n_best hypotheses, best first, in input order
    """
    k = cfg.beam_size
    sents = _Sentences.start(src_lengths, cfg, enc.mask.device)
    kept: list[list[Hypothesis]] = [[] for _ in range(len(sents.ids))]  # k best finished, by score
    results: list[list[Hypothesis]] = [[] for _ in range(len(sents.ids))]
    enc = enc.repeat_interleave(k)  # once: the k rows of a sentence share it, select only reorders state
    beam, state = _Beam.start(len(sents.ids), k, enc), enc.state
    prev = torch.full_like(beam.finished, BOS, dtype=torch.long)
    for t in range(int(sents.caps.max()) if len(sents.ids) else 0):
        out = model.decode_step(prev, state, enc)
        candidates = _candidate_log_probs(out.log_probs, beam.finished, t, cfg)
        parents, prev, log_prob = _top_k(beam.log_prob.unsqueeze(1) + candidates, k)
        beam = _advance(beam, parents, prev, log_prob, candidates, out.attention)
        state = out.state.select(parents)
        _keep_finished(beam, prev == EOS, sents, kept, k, cfg)
        done = _sentences_done(beam, sents, kept, t, k, cfg)
        for b in done.nonzero().flatten().tolist():
            results[int(sents.ids[b])] = _n_best(beam, b, sents, kept, k, cfg)
        if done.all():
            break
        if done.any():  # finished sentences leave the batch: nothing is computed for them any more
            live = (~done).nonzero().flatten()
            rows = (live.unsqueeze(1) * k + torch.arange(k, device=live.device)).flatten()
            beam, state, enc, prev, sents = (
                beam.select(rows),
                state.select(rows),
                enc.select(rows),
                prev[rows],
                sents.select(live),
            )
    return results


def search(
    model: StepModel, enc: EncoderOutput, src_lengths: Tensor, cfg: DecodeConfig
) -> list[list[Hypothesis]]:
    """Greedy for beam_size 1, beam search otherwise; enc with B rows -> B n-best lists in input order."""
    return (
        greedy(model, enc, src_lengths, cfg)
        if cfg.beam_size == 1
        else beam_search(model, enc, src_lengths, cfg)
    )
