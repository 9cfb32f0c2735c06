"""Vocabulary shortlists: score only the target pieces a source sentence makes likely.

A lexical table lists, for each source piece, the k target pieces that co-occur with it most strongly
in the training corpus, by the Dice coefficient 2·c(s,t) / (c(s) + c(t)) over sentence counts (raw
counts would fill every row with "the" and "."). A sentence's shortlist is the table rows of its
pieces plus the most frequent target pieces and the special ids (Jean et al. 2015; Marian's lexical
shortlists). A batch runs the output layer over the union of its sentences' lists, and search
conditions each sentence on its own list, so batch-mates never change a translation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from nmt_cli.cpu.private import with_module
from nmt_cli.model import Seq2Seq

NEG_INF = float("-inf")
SPECIAL_IDS = (0, 1, 2, 3)  # PAD, UNK, BOS, EOS: always columns 0..3, so search masks them by column
TABLE_KEY, FREQUENT_KEY = "shortlist.table", "shortlist.frequent"  # extra tensors in model.nmt


class Shortlist(NamedTuple):
    """The output columns of one batch: vocab (V',) target ids, ascending, the special ids 0..3 first;
    allowed (B, V') True where a column is in that sentence's own shortlist."""

    vocab: Tensor
    allowed: Tensor

    def rows(self, index: Tensor) -> Shortlist:
        """The same columns for a subset of the sentences."""
        return Shortlist(self.vocab, self.allowed.index_select(0, index))


class RowLists(NamedTuple):
    """Per-row shortlists over the step model's columns, ready to condition on (N rows)."""

    columns: Tensor  # (N, L) the row's own columns, ascending, padded with column 0; every list holds the
    # special ids, columns 0..3, so they are every row's first four
    real: Tensor  # (N, L) False on that padding

    @staticmethod
    def of(allowed: Tensor) -> RowLists:
        """allowed (N, V') -> the same lists in the forms a step uses."""
        assert bool(allowed[:, : len(SPECIAL_IDS)].all()), "every list holds the special ids"
        counts = allowed.sum(dim=1)
        real = torch.arange(int(counts.max()), device=allowed.device) < counts.unsqueeze(1)
        columns = torch.zeros(real.shape, dtype=torch.long, device=allowed.device)
        columns[real] = allowed.nonzero()[:, 1]  # row-major: each row's columns in ascending order
        return RowLists(columns, real)

    def select(self, index: Tensor) -> RowLists:
        return RowLists(*(x.index_select(0, index) for x in self))


def own_log_probs(logits: Tensor, lists: RowLists) -> Tensor:
    """Each row's log p(y | y in its list) over its own columns: logits (N, V') -> (N, L), in the order
    of lists.columns, -inf on padding. Search ranks these and maps positions back to columns.

    From the logits of the row's own columns alone: no log_softmax over the batch's V' columns first
    (which only cancels out), nothing computed for columns outside the list, and the result depends on
    no other sentence's list, to the last bit (a cut output layer gives a column the same bits whatever
    the other columns). O(list), not O(V').
    """
    own = logits.gather(1, lists.columns).masked_fill_(~lists.real, NEG_INF)
    return own.sub_(own.logsumexp(dim=1, keepdim=True))


def token_ids(columns: Tensor, shortlist: Shortlist | None) -> Tensor:
    """Target ids of step-model columns (N,); the special ids are their own columns in both cases."""
    return columns if shortlist is None else shortlist.vocab.to(columns.device)[columns]


class LexicalTable(NamedTuple):
    table: Tensor  # (V, K) best target ids per source id, best first; -1 where fewer than K co-occur
    frequent: Tensor  # (F,) the most frequent target ids, most frequent first

    def to_tensors(self) -> dict[str, Tensor]:
        return {TABLE_KEY: self.table.int(), FREQUENT_KEY: self.frequent.int()}  # ids < 2**31

    @staticmethod
    def from_tensors(tensors: dict[str, Tensor]) -> LexicalTable | None:
        """The table stored in a model file, or None when it has none."""
        if TABLE_KEY not in tensors:
            return None
        return LexicalTable(tensors[TABLE_KEY].long(), tensors[FREQUENT_KEY].long())


def _document_counts(ids: Sequence[Sequence[int]], vocab_size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Each sentence's distinct ids, and in how many sentences each id occurs (V,)."""
    distinct = [np.unique(np.asarray(s, dtype=np.int64)) for s in ids]
    counts = np.bincount(np.concatenate(distinct or [np.zeros(0, np.int64)]), minlength=vocab_size)
    return distinct, counts


def build_table(
    src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]], vocab_size: int, k: int, frequent: int
) -> LexicalTable:
    """The k target ids with the highest Dice score per source id, and the `frequent` commonest targets."""
    V = vocab_size
    src_sets, src_count = _document_counts(src_ids, V)
    tgt_sets, tgt_count = _document_counts(tgt_ids, V)
    codes = [(s[:, None] * V + t[None, :]).ravel() for s, t in zip(src_sets, tgt_sets, strict=True)]
    pairs, together = np.unique(np.concatenate(codes or [np.zeros(0, np.int64)]), return_counts=True)
    s, t = pairs // V, pairs % V
    keep = t >= len(SPECIAL_IDS)  # special ids are in every shortlist anyway
    s, t, together = s[keep], t[keep], together[keep]
    dice = 2.0 * together / (src_count[s] + tgt_count[t])
    order = np.lexsort((t, -dice, s))  # by source id, then best score, then target id (deterministic)
    s, t = s[order], t[order]
    rank = np.arange(len(s)) - np.searchsorted(s, s)  # position within its source id's group
    table = np.full((V, k), -1, dtype=np.int64)
    table[s[rank < k], rank[rank < k]] = t[rank < k]
    totals = np.bincount(np.concatenate([np.asarray(x, np.int64) for x in tgt_ids] or [[]]), minlength=V)
    totals[list(SPECIAL_IDS)] = -1
    common = np.argsort(-totals, kind="stable")[: min(frequent, V - len(SPECIAL_IDS))]
    return LexicalTable(torch.from_numpy(table), torch.from_numpy(common.astype(np.int64)))


def shortlist_masks(src_batch: Sequence[Sequence[int]], lex: LexicalTable, k: int) -> Tensor:
    """(B, V) True where a target id is in that sentence's shortlist: its table rows, the frequent
    ids and the special ids. One scatter for the whole batch, not a set per sentence."""
    V = lex.table.size(0)
    lengths = torch.tensor([len(src) for src in src_batch], dtype=torch.long)
    src = torch.tensor([i for src in src_batch for i in src], dtype=torch.long)
    targets = lex.table[src, :k]  # (pieces, k), -1 where a piece has fewer entries
    rows = torch.arange(len(src_batch)).repeat_interleave(lengths).unsqueeze(1).expand_as(targets)
    masks = torch.zeros(len(src_batch), V + 1, dtype=torch.bool)  # column V takes the -1 entries
    masks[rows, targets.where(targets >= 0, V)] = True
    masks[:, list(SPECIAL_IDS)] = True
    masks[:, lex.frequent] = True
    return masks[:, :V]


def sentence_vocab(src: Sequence[int], lex: LexicalTable, k: int) -> Tensor:
    """One sentence's shortlist: ascending target ids (n,), the special ids first."""
    return shortlist_masks([src], lex, k)[0].nonzero().flatten()


def batch_shortlist(src_batch: Sequence[Sequence[int]], lex: LexicalTable, k: int) -> Shortlist:
    """The union of a batch's shortlists as output columns, and which columns each sentence may use."""
    masks = shortlist_masks(src_batch, lex, k)
    vocab = masks.any(dim=0).nonzero().flatten()
    return Shortlist(vocab, masks[:, vocab])


def with_output_layer(model: Seq2Seq, output: nn.Module) -> Seq2Seq:
    """A view of the model that shares every weight but has another output layer (the generator).

    decode_step then scores only the output layer's rows, with the model's own code for the rest of the
    step; the model itself is left untouched, so other batches and threads still see the full layer.
    """
    return with_module(model, "generator", output)  # type: ignore[return-value]


def coverage(
    src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]], lex: LexicalTable, k: int
) -> tuple[float, float]:
    """Share of target pieces inside their sentence's shortlist, and the mean shortlist size."""
    inside = total = size = 0
    pairs = [(s, t) for s, t in zip(src_ids, tgt_ids, strict=True) if s]
    for src, tgt in pairs:
        vocab = set(sentence_vocab(src, lex, k).tolist())
        inside += sum(t in vocab for t in tgt)
        total += len(tgt)
        size += len(vocab)
    return inside / max(total, 1), size / max(len(pairs), 1)


class RowsLinear(nn.Module):
    """x @ weight[rows].T + bias[rows]: an output layer cut to some rows, without a random init to throw
    away (unlike nn.Linear)."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class OutputRows:
    """An output layer, from which cut(rows) makes a layer for a subset of its rows (output pieces)."""

    def __init__(self, linear: nn.Module):
        self.layer = linear

    def cut(self, rows: Tensor) -> nn.Module:
        """The layer for output rows `rows` (V',): the same weights (a swapped layer, int8 or packed,
        cuts itself in its own form), so the cut gives exactly the full layer's scores for those rows."""
        own_cut = getattr(self.layer, "cut", None)
        if own_cut is not None:
            return own_cut(rows)
        bias = None if self.layer.bias is None else self.layer.bias.detach().index_select(0, rows)
        return RowsLinear(self.layer.weight.detach().index_select(0, rows), bias)
