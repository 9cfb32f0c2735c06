"""What search returns, and the per-row history it builds a Hypothesis from."""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch
from torch import Tensor

from nmt_cli.config import DecodeConfig
from nmt_cli.model import EncoderOutput
from nmt_cli.vocab import BOS, EOS, PAD, UNK  # noqa: F401 - search imports them from here

NEG_INF = float("-inf")


class Hypothesis(NamedTuple):
    tokens: list[int]  # output ids, without BOS and EOS
    score: float  # log_prob / length penalty: what hypotheses are ranked by
    log_prob: float  # sum of token_log_probs
    token_log_probs: list[float]  # one per output token, plus one for EOS when finished
    attention: Tensor  # (len(token_log_probs), S_b) over the sentence's real source tokens
    finished: bool  # ended with EOS; False when stopped by the length cap


def length_penalty(lengths: Tensor, cfg: DecodeConfig) -> Tensor:
    """Divisor of a log-prob: len**alpha ("average") or ((5 + len) / 6)**alpha ("gnmt", Wu et al. 2016, §7).

    lengths (N,) output tokens including EOS -> (N,) float
    """
    lengths = lengths.float()
    base = lengths if cfg.length_penalty_type == "average" else (5.0 + lengths) / 6.0
    return base.pow(cfg.length_penalty)


@lru_cache(maxsize=1024)
def _one_penalty(length: int, cfg: DecodeConfig) -> float:
    """length_penalty of one length, as a one-element tensor computes it. Not taken over a vector of
    lengths: torch's pow runs vector code on most of a vector and scalar code on the rest, which may
    differ in the last bit, and a score would then depend on the row's place in the batch."""
    return float(length_penalty(torch.tensor(length), cfg))


class History(NamedTuple):
    """What each row has output so far: tokens (N, t), their log-probs (N, t), attention (N, t, S)."""

    tokens: Tensor
    token_log_probs: Tensor
    attention: Tensor

    @staticmethod
    def empty(rows: int, enc: EncoderOutput) -> History:
        device, S = enc.mask.device, enc.mask.size(1)
        return History(
            torch.empty(rows, 0, dtype=torch.long, device=device),
            torch.empty(rows, 0, device=device),
            enc.memory.new_empty(rows, 0, S),
        )

    def select(self, index: Tensor) -> History:
        return History(*(x.index_select(0, index) for x in self))  # see EncoderOutput.select

    def append(self, tokens: Tensor, token_log_probs: Tensor, attention: Tensor) -> History:
        """tokens (N,), token_log_probs (N,), attention (N, S) become step t."""
        return History(
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

    def ended(self, row: int, length: int, log_prob: float, score: float, src_len: int) -> Hypothesis:
        """Row `row`, which emitted EOS as its length-th token, scored by the caller (search scores all the
        rows that end at a step in one call; this only copies one out)."""
        return Hypothesis(
            self.tokens[row, : length - 1].tolist(),
            score,
            log_prob,
            self.token_log_probs[row, :length].tolist(),
            self.attention[row, :length, :src_len].clone(),  # a copy, so the history can be freed
            True,
        )


class SlotHistory:
    """Greedy search's output so far, one slot per row being searched, written in place.

    Rows leave and join the search at different steps, so each row writes at its own step into the slot
    it was given: nothing is copied when rows leave, and a slot is reused once its sentence is done.
    tokens and token_log_probs (P, T), attention (P, T, S).
    """

    def __init__(self, slots: int, like: Tensor):
        self.tokens = torch.zeros(slots, 0, dtype=torch.long, device=like.device)
        self.token_log_probs = like.new_zeros(slots, 0)
        self.attention = like.new_zeros(slots, 0, 0)

    def reserve(self, steps: int, width: int) -> None:
        """Room for `steps` steps over `width` source positions, keeping what is written."""
        P, T, S = self.attention.shape
        if steps <= T and width <= S:
            return
        T, S = max(steps, T), max(width, S)
        tokens, token_log_probs = self.tokens.new_zeros(P, T), self.token_log_probs.new_zeros(P, T)
        attention = self.attention.new_zeros(P, T, S)
        _, t, s = self.attention.shape
        tokens[:, :t], token_log_probs[:, :t], attention[:, :t, :s] = (
            self.tokens,
            self.token_log_probs,
            self.attention,
        )
        self.tokens, self.token_log_probs, self.attention = tokens, token_log_probs, attention

    def write(self, slots: Tensor, steps: Tensor, tokens: Tensor, token_log_probs: Tensor, attention: Tensor):
        """Row i's step steps[i] into slot slots[i]: tokens, token_log_probs (N,), attention (N, S')."""
        self.tokens[slots, steps] = tokens
        self.token_log_probs[slots, steps] = token_log_probs
        self.attention[slots, steps, : attention.size(1)] = attention

    def hypotheses(
        self, slots: Tensor, lengths: Tensor, log_probs: Tensor, src_lengths: Tensor, cfg: DecodeConfig
    ) -> list[Hypothesis]:
        """Slot slots[i]'s first lengths[i] steps as a Hypothesis, its attention cut to src_lengths[i] (a
        copy); all (n,). One tensor op per field for all n, not some 15 small ops per row, which showed in
        fast decoding's profile (docs/performance.md).

        Scores are worked out in log_probs' precision, as History.hypothesis does.
        """
        steps = lengths.tolist()
        penalties = torch.tensor([_one_penalty(n, cfg) for n in steps], dtype=log_probs.dtype)
        scores = (log_probs / penalties.to(log_probs.device)).tolist()
        width = max(steps)
        tokens = self.tokens[slots, :width].tolist()
        token_log_probs = self.token_log_probs[slots, :width].tolist()
        hypotheses = []
        for i, (slot, length, src_len, log_prob) in enumerate(
            zip(slots.tolist(), steps, src_lengths.tolist(), log_probs.tolist(), strict=True)
        ):
            finished = tokens[i][length - 1] == EOS
            hypotheses.append(
                Hypothesis(
                    tokens[i][: length - finished],
                    scores[i],
                    log_prob,
                    token_log_probs[i][:length],
                    self.attention[slot, :length, :src_len].clone(),
                    finished,
                )
            )
        return hypotheses
