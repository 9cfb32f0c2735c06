"""Greedy and beam search over the model's step contract: pure functions, no I/O.

Beam search keeps fixed shapes, as Sockeye does: B*k rows, and a finished row stays in the beam and can
only extend with PAD at zero cost. The beam therefore ranks prefixes by raw log-probability, which makes
k = 1 exactly greedy. Each sentence also keeps its k best finished hypotheses by length-normalised score,
so one pushed out of the beam by likelier (but still unfinished) prefixes is not lost.

Shortlists. A step model may score only some target pieces (the batch's union of per-sentence shortlists,
Shortlist.vocab); search then conditions each row on its own sentence's list, log p(y | y in list), so a
sentence's output never depends on which sentences share its batch.

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
from nmt_cli.hypothesis import BOS, EOS, NEG_INF, PAD, UNK, History, Hypothesis, length_penalty
from nmt_cli.model import DecoderState, EncoderOutput, StepOutput
from nmt_cli.shortlist import RowLists, Shortlist, restrict, token_ids

__all__ = ["Hypothesis", "Shortlist", "StepModel", "beam_search", "greedy", "length_penalty", "search"]


class StepModel(Protocol):
    """All search needs from a model (Seq2Seq has it): one decoder step, log_probs (N, V) or (N, V')."""

    def decode_step(self, prev_tokens: Tensor, state: DecoderState, enc: EncoderOutput) -> StepOutput: ...


def _max_lengths(src_lengths: Tensor, cfg: DecodeConfig) -> Tensor:
    """Per-sentence cap on output tokens, EOS included: floor(a * src_len + b). (B,) -> (B,)."""
    # float64, so that e.g. 0.7 * 10 floors to 7 as it does in Python, not to 6
    return torch.floor(cfg.max_len_a * src_lengths.double() + cfg.max_len_b).long()


def _mask_log_probs(log_probs: Tensor, step: int, cfg: DecodeConfig) -> Tensor:
    """Tokens that may not come next get -inf, in place: PAD, BOS, UNK with ban_unk, EOS at step 0. (N, V)."""
    banned = [PAD, BOS] + ([UNK] if cfg.ban_unk else []) + ([EOS] if step == 0 else [])
    log_probs[:, banned] = NEG_INF  # an empty translation is never the answer
    return log_probs


class _Sentences(NamedTuple):
    """The sentences still being searched: input row ids, source lengths, caps (B',), shortlists."""

    ids: Tensor
    src_lengths: Tensor
    caps: Tensor
    lists: RowLists | None  # each sentence's shortlist over the step model's columns; None: all of V

    @staticmethod
    def start(src_lengths: Tensor, cfg: DecodeConfig, device: torch.device, shortlist: Shortlist | None):
        src_lengths = src_lengths.to(device)
        ids = torch.arange(src_lengths.size(0), device=device)
        lists = None if shortlist is None else RowLists.of(shortlist.allowed.to(device))
        return _Sentences(ids, src_lengths, _max_lengths(src_lengths, cfg), lists)

    def select(self, index: Tensor) -> _Sentences:
        lists = None if self.lists is None else self.lists.select(index)
        return _Sentences(self.ids[index], self.src_lengths[index], self.caps[index], lists)


@torch.inference_mode()
def greedy(
    model: StepModel,
    enc: EncoderOutput,
    src_lengths: Tensor,
    cfg: DecodeConfig,
    shortlist: Shortlist | None = None,
) -> list[list[Hypothesis]]:
    """The most likely token at each step, up to each sentence's own cap.

    enc with B rows, src_lengths (B,) -> B one-hypothesis lists, in input order
    """
    sents = _Sentences.start(src_lengths, cfg, enc.mask.device, shortlist)
    results: list[list[Hypothesis]] = [[] for _ in range(len(sents.ids))]
    history, log_prob = History.empty(len(sents.ids), enc), enc.memory.new_zeros(len(sents.ids))
    prev, state = torch.full_like(sents.ids, BOS), enc.state
    for t in range(int(sents.caps.max()) if len(sents.ids) else 0):
        out = model.decode_step(prev, state, enc)
        log_probs = _mask_log_probs(restrict(out.log_probs, sents.lists), t, cfg)
        step_log_prob, columns = log_probs.max(dim=1)
        prev, log_prob = token_ids(columns, shortlist), log_prob + step_log_prob
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

    history: History
    log_prob: Tensor
    finished: Tensor

    @staticmethod
    def start(sentences: int, k: int, enc: EncoderOutput) -> _Beam:
        """Only row 0 of each sentence is live (log-prob 0): step 0 must not fill the beam with k copies."""
        log_prob = enc.memory.new_full((sentences, k), NEG_INF)
        log_prob[:, 0] = 0.0
        finished = torch.zeros(sentences * k, dtype=torch.bool, device=log_prob.device)
        return _Beam(History.empty(sentences * k, enc), log_prob.view(-1), finished)

    def select(self, index: Tensor) -> _Beam:
        return _Beam(self.history.select(index), self.log_prob[index], self.finished[index])


def _candidate_log_probs(log_probs: Tensor, finished: Tensor, step: int, cfg: DecodeConfig) -> Tensor:
    """What each row may extend with, in place: log_probs (N, V), finished (N,) -> (N, V)."""
    log_probs = _mask_log_probs(log_probs, step, cfg)
    if finished.any():
        log_probs[finished] = NEG_INF  # a finished row stays in the beam ...
        log_probs[finished, PAD] = 0.0  # ... and can only extend with PAD, for free
    return log_probs


class _Choice(NamedTuple):
    """The k best continuations of each sentence: parent rows, columns, raw log-probs, all (B'*k,)."""

    parents: Tensor
    columns: Tensor
    log_prob: Tensor


def _top_k(scores: Tensor, k: int) -> _Choice:
    """Best k continuations per sentence, over all its rows at once: scores (B'*k, V) raw log-probs."""
    V = scores.size(1)
    best, flat = scores.view(-1, k * V).topk(k, dim=1)  # per sentence: never depends on batch-mates
    first_row = torch.arange(best.size(0), device=scores.device).unsqueeze(1) * k
    return _Choice((first_row + flat // V).flatten(), (flat % V).flatten(), best.flatten())


def _advance(beam: _Beam, choice: _Choice, tokens: Tensor, candidates: Tensor, attention: Tensor) -> _Beam:
    """Row i continues row choice.parents[i] with tokens[i]; candidates (N, V), attention (N, S)."""
    parents = choice.parents
    token_log_probs = candidates[parents, choice.columns]
    history = beam.history.select(parents).append(tokens, token_log_probs, attention[parents])
    return _Beam(history, choice.log_prob, beam.finished[parents] | (tokens == EOS))


class _Finished:
    """Each input sentence's k best finished hypotheses by normalised score, best first."""

    def __init__(self, sentences: int, k: int, cfg: DecodeConfig):
        self.best: list[list[Hypothesis]] = [[] for _ in range(sentences)]
        self.k, self.cfg = k, cfg

    def add(self, beam: _Beam, sents: _Sentences, step: int) -> None:
        """Rows that emitted EOS at this step enter their sentence's k best if they score high enough."""
        new = (beam.history.tokens[:, -1] == EOS) & beam.log_prob.isfinite()
        rows = new.nonzero().flatten()
        if not len(rows):
            return
        # every new one has step + 1 tokens (EOS included): score them at once, build only those kept
        scores = beam.log_prob[rows] / length_penalty(torch.full_like(rows, step + 1), self.cfg)
        for row, score in zip(rows.tolist(), scores.tolist(), strict=True):
            b = row // self.k
            best = self.best[int(sents.ids[b])]
            if len(best) < self.k or score > best[-1].score:
                src_len = int(sents.src_lengths[b])
                best.append(beam.history.hypothesis(row, beam.log_prob[row], src_len, self.cfg))
                best.sort(key=lambda h: h.score, reverse=True)  # stable: earlier finds win ties
                del best[self.k :]

    def kth_score(self, sentence: int) -> float:
        best = self.best[sentence]
        return best[-1].score if len(best) >= self.k else NEG_INF

    def n_best(self, beam: _Beam, b: int, sents: _Sentences) -> list[Hypothesis]:
        """Sentence b's cfg.n_best best finished hypotheses, filled up with its best unfinished rows."""
        k, n = self.k, self.cfg.n_best
        best = self.best[int(sents.ids[b])][:n]
        if len(best) < n:
            rows = [r for r in range(b * k, b * k + k) if not beam.finished[r]]
            rows = [r for r in rows if math.isfinite(beam.log_prob[r])]
            src_len = int(sents.src_lengths[b])
            unfinished = [beam.history.hypothesis(r, beam.log_prob[r], src_len, self.cfg) for r in rows]
            best = best + sorted(unfinished, key=lambda h: h.score, reverse=True)[: n - len(best)]
        return best


def _sentences_done(beam: _Beam, sents: _Sentences, finished: _Finished, step: int) -> Tensor:
    """(B',) True at the cap, or where no live row's bound R / lp(cap) beats the k-th kept hypothesis."""
    k = finished.k
    live = ~beam.finished & beam.log_prob.isfinite()
    bound = beam.log_prob / length_penalty(sents.caps.repeat_interleave(k), finished.cfg)
    best_live = torch.where(live, bound, NEG_INF).view(-1, k).amax(dim=1)
    kth = [finished.kth_score(i) for i in sents.ids.tolist()]
    return (best_live <= best_live.new_tensor(kth)) | (sents.caps <= step + 1)


@torch.inference_mode()
def beam_search(
    model: StepModel,
    enc: EncoderOutput,
    src_lengths: Tensor,
    cfg: DecodeConfig,
    shortlist: Shortlist | None = None,
) -> list[list[Hypothesis]]:
    """Fixed-shape beam search with length normalisation and per-sentence caps.

    enc with B rows, src_lengths (B,) -> B lists of cfg.n_best hypotheses, best first, in input order
    """
    k = cfg.beam_size
    sents = _Sentences.start(src_lengths, cfg, enc.mask.device, shortlist)
    finished = _Finished(len(sents.ids), k, cfg)
    results: list[list[Hypothesis]] = [[] for _ in range(len(sents.ids))]
    enc = enc.repeat_interleave(k)  # once: the k rows of a sentence share it, select only reorders state
    beam, state = _Beam.start(len(sents.ids), k, enc), enc.state
    prev = torch.full_like(beam.finished, BOS, dtype=torch.long)
    lists = (
        None if sents.lists is None else sents.lists.select(torch.arange(len(sents.ids)).repeat_interleave(k))
    )
    for t in range(int(sents.caps.max()) if len(sents.ids) else 0):
        out = model.decode_step(prev, state, enc)
        candidates = _candidate_log_probs(restrict(out.log_probs, lists), beam.finished, t, cfg)
        choice = _top_k(beam.log_prob.unsqueeze(1) + candidates, k)
        prev = token_ids(choice.columns, shortlist)
        beam = _advance(beam, choice, prev, candidates, out.attention)
        state = out.state.select(choice.parents)
        finished.add(beam, sents, t)
        done = _sentences_done(beam, sents, finished, t)
        for b in done.nonzero().flatten().tolist():
            results[int(sents.ids[b])] = finished.n_best(beam, b, sents)
        if done.all():
            break
        if done.any():  # finished sentences leave the batch: nothing is computed for them any more
            live = (~done).nonzero().flatten()
            rows = (live.unsqueeze(1) * k + torch.arange(k, device=live.device)).flatten()
            beam, state, enc, prev = beam.select(rows), state.select(rows), enc.select(rows), prev[rows]
            sents = sents.select(live)
            lists = None if lists is None else lists.select(rows)
    return results


def search(
    model: StepModel,
    enc: EncoderOutput,
    src_lengths: Tensor,
    cfg: DecodeConfig,
    shortlist: Shortlist | None = None,
) -> list[list[Hypothesis]]:
    """Greedy for beam_size 1, beam search otherwise; enc with B rows -> B n-best lists in input order."""
    run = greedy if cfg.beam_size == 1 else beam_search
    return run(model, enc, src_lengths, cfg, shortlist)
