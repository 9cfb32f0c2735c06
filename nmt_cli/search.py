"""Greedy and beam search over the model's step contract: pure functions, no I/O.

Beam search keeps fixed shapes, as Sockeye does: B*k rows, and a finished row stays in the beam and can
only extend with PAD at zero cost. The beam therefore ranks prefixes by raw log-probability, which makes
k = 1 exactly greedy. Each sentence also keeps its k best finished hypotheses by length-normalised score,
so one pushed out of the beam by likelier (but still unfinished) prefixes is not lost.

Greedy search runs over a stream of sentences (greedy_refilled): up to a batch of them step together,
and as they finish, new ones join at their first step, so steps stay nearly full. Each row has its own
step count, cap and history slot; rows never interact, so joining changes no sentence's output.

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
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from nmt_cli.config import DecodeConfig
from nmt_cli.hypothesis import BOS, EOS, NEG_INF, PAD, UNK, History, Hypothesis, SlotHistory, length_penalty
from nmt_cli.model import DecoderState, EncoderOutput, StepOutput
from nmt_cli.shortlist import RowLists, Shortlist, own_log_probs, token_ids

__all__ = [
    "Group",
    "Hypothesis",
    "Shortlist",
    "StepModel",
    "beam_search",
    "greedy",
    "greedy_refilled",
    "length_penalty",
    "search",
]


class StepModel(Protocol):
    """All search needs from a model (Seq2Seq has it): one decoder step, logits (N, V) or (N, V')."""

    def decode_step(self, prev_tokens: Tensor, state: DecoderState, enc: EncoderOutput) -> StepOutput: ...


MAX_STEPS = 1 << 20  # no cap above this: far beyond any real output, and safe from int64 overflow


def _max_lengths(src_lengths: Tensor, cfg: DecodeConfig) -> Tensor:
    """Per-sentence cap on output tokens, EOS included: floor(a * src_len + b). (B,) -> (B,)."""
    # float64, so that e.g. 0.7 * 10 floors to 7 as it does in Python, not to 6
    caps = torch.floor(cfg.max_len_a * src_lengths.double() + cfg.max_len_b)
    return caps.clamp(max=MAX_STEPS).long()  # a huge a or b must not overflow int64


def _mask_log_probs(log_probs: Tensor, first: bool | Tensor, cfg: DecodeConfig) -> Tensor:
    """Tokens that may not come next get -inf, in place: PAD, BOS, UNK with ban_unk, and EOS where
    `first` (all rows, or a (N,) mask of rows at their first step). (N, V)."""
    banned = [PAD, BOS] + ([UNK] if cfg.ban_unk else [])
    log_probs[:, banned] = NEG_INF
    if isinstance(first, Tensor):
        log_probs[:, EOS].masked_fill_(first, NEG_INF)  # an empty translation is never the answer
    elif first:
        log_probs[:, EOS] = NEG_INF
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


class Group(NamedTuple):
    """Sentences that join greedy search together: one encoder batch, and where their results go."""

    enc: EncoderOutput
    src_lengths: Tensor  # (B,)
    ids: Tensor  # (B,) each row's index in the results
    shortlist: Shortlist | None  # the group's output columns and per-row lists; None: all of V

    def select(self, index: Tensor) -> Group:
        lists = None if self.shortlist is None else self.shortlist.rows(index)
        return Group(self.enc.select(index), self.src_lengths[index], self.ids[index], lists)

    def split(self, n: int) -> tuple[Group, Group]:
        """The first n rows, and the rest, as views: a split copies no encoder output."""
        return self._part(0, n), self._part(n, len(self.ids))

    def _part(self, start: int, stop: int) -> Group:
        lists = None if self.shortlist is None else self.shortlist.rows(torch.arange(start, stop))
        return Group(self.enc.narrow(start, stop), self.src_lengths[start:stop], self.ids[start:stop], lists)


NextGroup = Callable[[int], "Group | None"]  # up to n more sentences, encoded; None when none are left
ModelFor = Callable[[Tensor | None], StepModel]  # the step model that scores these columns (None: all)


class _Rows(NamedTuple):
    """The sentences greedy search is stepping, one row each. enc.state is the current decoder state."""

    sents: _Sentences
    enc: EncoderOutput
    prev: Tensor  # (N,) the last token
    log_prob: Tensor  # (N,)
    steps: Tensor  # (N,) tokens output so far
    slots: Tensor  # (N,) each row's slot in the history
    shortlist: Shortlist | None
    owned: bool  # whether enc's tensors are these rows' alone (not a caller's, nor a waiting group's)

    def without(self, done: Tensor) -> _Rows:
        """The rows not done, the last of them in the places of those done; the encoder output cut to
        the source positions the rows left still have.

        Once the rows own their tensors, rows move in place and the rest become views of the first
        rows: copying them to new tensors at every compaction held two copies of the memory and keys
        at once and left holes of every size in the heap (docs/performance.md). Before, they are
        copied once, so that a caller's encoder output stays as it was.
        """
        count = len(done) - int(done.sum())
        holes = done[:count].nonzero().flatten()
        movers = (~done[count:]).nonzero().flatten() + count
        order = torch.arange(count, device=done.device)
        order[holes] = movers  # row i is the old row order[i]
        sents = self.sents.select(order)
        width = int(sents.src_lengths.max()) if count else 0
        if self.owned:
            enc = self.enc.moved(holes, movers, count, width)
        else:
            enc, state = self.enc, self.enc.state
            enc = EncoderOutput(enc.memory[:, :width], enc.keys[:, :width], enc.mask[:, :width], state)
            enc = enc.select(order)
        lists = None if self.shortlist is None else self.shortlist.rows(order)
        kept = (x[order] for x in (self.prev, self.log_prob, self.steps, self.slots))
        return _Rows(sents, enc, *kept, lists, owned=True)


def _cat_rows(a: Tensor, b: Tensor) -> Tensor:
    """a's rows, then b's, over the wider of their source axes (dim 1), zeros in the padding: written into
    one new tensor, with no padded copy of either on the way (docs/performance.md)."""
    out = a.new_zeros(len(a) + len(b), max(a.size(1), b.size(1)), *a.shape[2:])
    out[: len(a), : a.size(1)] = a
    out[len(a) :, : b.size(1)] = b
    return out


def _cat_encoded(a: EncoderOutput, b: EncoderOutput) -> EncoderOutput:
    """The rows of a, then those of b, over the wider of their source axes."""
    sa, sb = a.state, b.state
    return EncoderOutput(
        _cat_rows(a.memory, b.memory),
        _cat_rows(a.keys, b.keys),
        _cat_rows(a.mask, b.mask),
        DecoderState(torch.cat([sa.h, sb.h], 1), torch.cat([sa.c, sb.c], 1), torch.cat([sa.feed, sb.feed])),
    )


def _cat_shortlists(a: Shortlist, b: Shortlist) -> Shortlist:
    """The rows of a, then those of b. The columns stay a's (the same tensor: no new output layer) when
    they hold all of b's; otherwise they are b's and those a's rows still use, so they never grow
    towards the whole vocabulary as sentences come and go."""
    if bool(torch.isin(b.vocab, a.vocab).all()):
        vocab = a.vocab
    else:  # sorted, so the special ids stay columns 0..3
        vocab = torch.unique(torch.cat([a.vocab[a.allowed.any(dim=0)], b.vocab]))
    allowed = a.allowed.new_zeros(len(a.allowed) + len(b.allowed), len(vocab))
    kept = torch.isin(a.vocab, vocab)  # columns no row of a uses may go
    allowed[: len(a.allowed), torch.searchsorted(vocab, a.vocab[kept])] = a.allowed[:, kept]
    allowed[len(a.allowed) :, torch.searchsorted(vocab, b.vocab)] = b.allowed
    return Shortlist(vocab, allowed)


def _join(rows: _Rows | None, group: Group, slots: Tensor, cfg: DecodeConfig) -> _Rows:
    """The rows being stepped, with a new group's sentences at their first step."""
    n, device = len(group.ids), group.enc.mask.device
    src_lengths = group.src_lengths.to(device)
    sents = _Sentences(group.ids.to(device), src_lengths, _max_lengths(src_lengths, cfg), None)
    new = _Rows(
        sents,
        group.enc,
        torch.full((n,), BOS, dtype=torch.long, device=device),
        group.enc.memory.new_zeros(n),
        torch.zeros(n, dtype=torch.long, device=device),
        slots.to(device),
        group.shortlist,
        owned=False,  # the group's encoder output: a caller's, or shared with the group's other rows
    )
    if rows is not None and len(rows.prev):
        shortlist = None if new.shortlist is None else _cat_shortlists(rows.shortlist, new.shortlist)
        old = rows.sents
        new = _Rows(
            _Sentences(
                *(torch.cat(pair) for pair in zip(old[:3], sents[:3], strict=True)), None
            ),  # ids..caps
            _cat_encoded(rows.enc, new.enc),
            *(torch.cat(pair) for pair in zip(rows[2:6], new[2:6], strict=True)),  # prev..slots
            shortlist,
            owned=True,  # new tensors
        )
    lists = None if new.shortlist is None else RowLists.of(new.shortlist.allowed.to(device))
    return new._replace(sents=new.sents._replace(lists=lists))


def _log_probs(logits: Tensor, lists: RowLists | None) -> Tensor:
    """A step's log-probabilities: over all columns (N, V), or with shortlists over each row's own (N, L).

    Over all columns they are written over the logits (the same bits as F.log_softmax): one (N, V) tensor
    fewer per step, which lowers beam search's peak memory (docs/performance.md). Search ranks a row's own
    columns only: a tenth of the batch's union or less, and they hold the special ids first, as columns
    0..3, so _mask_log_probs masks them by the same positions. Own columns ascend, so a tie goes to the
    lowest column either way.
    """
    return torch.log_softmax(logits, dim=-1, out=logits) if lists is None else own_log_probs(logits, lists)


def _model_columns(positions: Tensor, lists: RowLists | None, rows: Tensor | None = None) -> Tensor:
    """The step-model columns of positions (M,) chosen in _log_probs' output, one per row or in `rows`."""
    if lists is None:
        return positions
    if rows is None:
        return lists.columns.gather(1, positions.unsqueeze(1)).squeeze(1)
    return lists.columns[rows, positions]


def _greedy_choice(
    logits: Tensor, lists: RowLists | None, first: Tensor, cfg: DecodeConfig
) -> tuple[Tensor, Tensor]:
    """Each row's most likely next token: its log-prob (N,) and step-model column (N,)."""
    best, at = _mask_log_probs(_log_probs(logits, lists), first, cfg).max(dim=1)
    return best, _model_columns(at, lists)


@torch.inference_mode()
def greedy_refilled(
    model_for: ModelFor, next_group: NextGroup, sentences: int, cfg: DecodeConfig, capacity: int, refill: int
) -> list[list[Hypothesis]]:
    """Greedy search over a stream of sentences that keeps up to `capacity` of them stepping at once.

    Each sentence ends at EOS or its own cap and leaves; once `refill` rows are free, next_group encodes
    that many more and they start at their first step beside the others. A step then always runs on a
    nearly full batch, where a fixed batch ends with a few long sentences on steps that cost almost as
    much as full ones. Rows never interact, so a sentence's output does not depend on which others share
    its steps. -> `sentences` one-hypothesis lists, in the order of Group.ids.
    """
    results: list[list[Hypothesis]] = [[] for _ in range(sentences)]
    free, rows, more = list(range(capacity - 1, -1, -1)), None, True
    history: SlotHistory | None = None
    model, vocab_of_model = None, None
    while True:
        room = capacity - (0 if rows is None else len(rows.prev))
        while more and room >= min(refill, capacity):
            group = next_group(room)
            if group is None or not len(group.ids):
                more = False
                break
            slots = torch.tensor([free.pop() for _ in range(len(group.ids))])
            rows, room = _join(rows, group, slots, cfg), room - len(group.ids)
            # rows hold what they need of it; kept, the group's encoder output would outlive every
            # compaction of the rows, one more copy of the batch's largest tensors (docs/performance.md)
            del group
            history = history or SlotHistory(capacity, rows.enc.memory)
            history.reserve(int(rows.sents.caps.max()), rows.enc.mask.size(1))
            vocab = None if rows.shortlist is None else rows.shortlist.vocab
            if model is None or vocab is not vocab_of_model:
                model, vocab_of_model = model_for(vocab), vocab
        if rows is None or not len(rows.prev):
            return results
        assert history is not None and model is not None
        logits, state, attention = model.decode_step(rows.prev, rows.enc.state, rows.enc)
        step_log_prob, columns = _greedy_choice(logits, rows.sents.lists, rows.steps == 0, cfg)
        del logits  # not kept while the next step makes its own (as in beam_search)
        prev, log_prob = token_ids(columns, rows.shortlist), rows.log_prob + step_log_prob
        history.write(rows.slots, rows.steps, prev, step_log_prob, attention)
        steps = rows.steps + 1
        rows = rows._replace(enc=rows.enc._replace(state=state), prev=prev, log_prob=log_prob, steps=steps)
        done = (prev == EOS) | (rows.sents.caps <= steps)
        if done.any():  # finished sentences leave: nothing is computed for them any more
            ended = done.nonzero().flatten()
            slots = rows.slots[ended]
            hypotheses = history.hypotheses(
                slots, steps[ended], log_prob[ended], rows.sents.src_lengths[ended], cfg
            )
            for sentence, hypothesis in zip(rows.sents.ids[ended].tolist(), hypotheses, strict=True):
                results[sentence] = [hypothesis]
            free.extend(slots.tolist())
            rows = rows.without(done)


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
    B = len(src_lengths)
    groups = iter([Group(enc, src_lengths, torch.arange(B), shortlist)])
    return greedy_refilled(lambda _: model, lambda _: next(groups, None), B, cfg, max(B, 1), max(B, 1))


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
    """What each row may extend with, in place: log_probs (N, V) or (N, L), finished (N,) -> the same."""
    log_probs = _mask_log_probs(log_probs, step == 0, cfg)
    if finished.any():
        log_probs[finished] = NEG_INF  # a finished row stays in the beam ...
        log_probs[finished, PAD] = 0.0  # ... and can only extend with PAD, for free
    return log_probs


class _Choice(NamedTuple):
    """The k best continuations of each sentence: parent rows, positions in the candidates (columns, or
    places in the rows' own lists), raw log-probs, all (B'*k,)."""

    parents: Tensor
    positions: Tensor
    log_prob: Tensor


def _top_k(log_prob: Tensor, candidates: Tensor, k: int) -> _Choice:
    """Best k continuations per sentence, over all its rows at once: log_prob (B'*k,) raw log-probs of the
    rows, candidates (B'*k, V) of their next tokens.

    A sentence's best k are among each of its rows' own best k (a row adds the same log-prob to all its
    candidates), so only those k * k sums are made and ranked, never a (B'*k, V) tensor of them.
    """
    row_best, row_positions = candidates.topk(min(k, candidates.size(1)), dim=1)  # (B'*k, k')
    per_row = row_best.size(1)
    sums = (log_prob.unsqueeze(1) + row_best).view(-1, k * per_row)
    best, flat = sums.topk(k, dim=1)  # per sentence: never depends on batch-mates
    first_row = torch.arange(best.size(0), device=sums.device).unsqueeze(1) * k
    positions = row_positions.view(-1, k * per_row).gather(1, flat)
    return _Choice((first_row + flat // per_row).flatten(), positions.flatten(), best.flatten())


def _advance(beam: _Beam, choice: _Choice, tokens: Tensor, candidates: Tensor, attention: Tensor) -> _Beam:
    """Row i continues row choice.parents[i] with tokens[i]; candidates (N, V), attention (N, S)."""
    parents = choice.parents
    token_log_probs = candidates[parents, choice.positions]
    history = beam.history.select(parents).append(tokens, token_log_probs, attention.index_select(0, parents))
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
        log_probs = beam.log_prob[rows]
        scores = log_probs / length_penalty(torch.full_like(rows, step + 1), self.cfg)
        ids, src_lengths = sents.ids.tolist(), sents.src_lengths.tolist()
        for row, log_prob, score in zip(rows.tolist(), log_probs.tolist(), scores.tolist(), strict=True):
            b = row // self.k
            best = self.best[ids[b]]
            if len(best) < self.k or score > best[-1].score:
                best.append(beam.history.ended(row, step + 1, log_prob, score, src_lengths[b]))
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
    # enc keeps one row per sentence, which its k beam rows share (decode_step); only the state has k
    beam, state = _Beam.start(len(sents.ids), k, enc), enc.state.repeat_interleave(k)
    prev = torch.full_like(beam.finished, BOS, dtype=torch.long)
    lists = (
        None if sents.lists is None else sents.lists.select(torch.arange(len(sents.ids)).repeat_interleave(k))
    )
    for t in range(int(sents.caps.max()) if len(sents.ids) else 0):
        logits, step_state, attention = model.decode_step(prev, state, enc)
        # each (N, V) tensor is let go as soon as it is used: the last step's logits and candidates were
        # kept while this one made its own, in every worker (docs/performance.md)
        candidates = _candidate_log_probs(_log_probs(logits, lists), beam.finished, t, cfg)
        del logits
        choice = _top_k(beam.log_prob, candidates, k)
        prev = token_ids(_model_columns(choice.positions, lists, choice.parents), shortlist)
        beam = _advance(beam, choice, prev, candidates, attention)
        del candidates
        state = step_state.select(choice.parents)
        finished.add(beam, sents, t)
        done = _sentences_done(beam, sents, finished, t)
        for b in done.nonzero().flatten().tolist():
            results[int(sents.ids[b])] = finished.n_best(beam, b, sents)
        if done.all():
            break
        if done.any():  # finished sentences leave the batch: nothing is computed for them any more
            live = (~done).nonzero().flatten()
            rows = (live.unsqueeze(1) * k + torch.arange(k, device=live.device)).flatten()
            beam, state, enc, prev = beam.select(rows), state.select(rows), enc.select(live), prev[rows]
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
