"""Decode lists of source ids in length-sorted batches and hand results back in input order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from nmt_cli.config import DecodeConfig
from nmt_cli.model import PAD, Seq2Seq
from nmt_cli.quantize import OutputRows
from nmt_cli.search import Hypothesis, search
from nmt_cli.shortlist import LexicalTable, batch_shortlist, with_output_layer


class ShortlistSetting(NamedTuple):
    lex: LexicalTable
    k: int  # table entries per source piece to use (at most the table's width)
    rows: OutputRows  # the model's output layer, from which each batch cuts its columns


def pad_batch(seqs: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Token lists -> src (B, S) padded with PAD, src_lengths (B,)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    src = torch.full((len(seqs), int(lengths.max())), PAD, dtype=torch.long)
    for row, seq in enumerate(seqs):
        src[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return src, lengths


def length_sorted_chunks(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (less padding, same results)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def decode_ids(
    model: Seq2Seq,
    src_ids: Sequence[Sequence[int]],
    cfg: DecodeConfig,
    batch_size: int = 64,
    shortlist: ShortlistSetting | None = None,
) -> list[list[Hypothesis]]:
    """One n-best list per non-empty source, in input order; search is batch-invariant, so sorting is safe.

    With a shortlist, each batch's output layer covers only the union of its sentences' shortlists.
    """
    assert all(src_ids), "empty sources are skipped by the caller"
    results: list[list[Hypothesis]] = [[] for _ in src_ids]
    for chunk in length_sorted_chunks([len(s) for s in src_ids], batch_size):
        batch = [src_ids[i] for i in chunk]
        src, lengths = pad_batch(batch)
        enc = model.encode(src, lengths)
        if shortlist is None:
            nbests = search(model, enc, lengths, cfg)
        else:
            columns = batch_shortlist(batch, shortlist.lex, shortlist.k)
            cut = with_output_layer(model, shortlist.rows.cut(columns.vocab))
            nbests = search(cut, enc, lengths, cfg, columns)
        for i, nbest in zip(chunk, nbests, strict=True):
            results[i] = nbest
    return results
