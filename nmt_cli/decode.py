"""Decode lists of source ids in length-sorted batches and hand results back in input order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from nmt_cli.config import DecodeConfig
from nmt_cli.cpu import kernels
from nmt_cli.cpu.threads import decode_in_workers
from nmt_cli.model import Seq2Seq, device_of
from nmt_cli.search import Group, Hypothesis, greedy_refilled, search
from nmt_cli.shortlist import LexicalTable, OutputRows, batch_shortlist, with_output_layer
from nmt_cli.vocab import PAD

REFILL_PARTS = 4  # greedy brings in new sentences once a quarter of the batch has finished


class ShortlistSetting(NamedTuple):
    lex: LexicalTable
    k: int  # table entries per source piece to use (at most the table's width)
    rows: OutputRows  # the model's output layer, from which each batch cuts its columns


def pad_batch(seqs: Sequence[Sequence[int]], device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Token lists -> src (B, S) padded with PAD, src_lengths (B,); src on device (the CPU by default)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    src = torch.full((len(seqs), int(lengths.max())), PAD, dtype=torch.long)
    for row, seq in enumerate(seqs):
        src[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return (src if device is None else src.to(device)), lengths


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices longest first, ties in input order."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def length_sorted_chunks(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (less padding, same results)."""
    order = length_order(lengths)
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

    Greedy search keeps up to batch_size sentences stepping and brings in more, longest first, as
    others finish; beam search takes length-sorted batches of batch_size. With a shortlist, the output
    layer covers only the union of the shortlists of the sentences being stepped. With the CPU swaps
    installed, the sentences are shared out among worker threads (cpu.threads.decode_in_workers).
    """
    assert all(src_ids), "empty sources are skipped by the caller"

    def decode_part(part: Sequence[Sequence[int]], size: int) -> list[list[Hypothesis]]:
        if cfg.beam_size == 1:
            return _greedy(model, part, cfg, size, shortlist)
        return _beam(model, part, cfg, size, shortlist)

    if kernels(model) == "cpu":
        return decode_in_workers(model, src_ids, cfg.beam_size == 1, batch_size, decode_part)
    return decode_part(src_ids, batch_size)


def _beam(
    model: Seq2Seq,
    src_ids: Sequence[Sequence[int]],
    cfg: DecodeConfig,
    batch_size: int,
    shortlist: ShortlistSetting | None,
) -> list[list[Hypothesis]]:
    """Beam search over length-sorted batches."""
    results: list[list[Hypothesis]] = [[] for _ in src_ids]
    for chunk in length_sorted_chunks([len(s) for s in src_ids], batch_size):
        batch = [src_ids[i] for i in chunk]
        src, lengths = pad_batch(batch, device_of(model))
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


def _greedy(
    model: Seq2Seq,
    src_ids: Sequence[Sequence[int]],
    cfg: DecodeConfig,
    batch_size: int,
    shortlist: ShortlistSetting | None,
) -> list[list[Hypothesis]]:
    """Greedy search with sentences joining, longest first, as others finish. They are encoded
    batch_size at a time (a small batch costs the encoder nearly as much as a full one) and wait
    for room."""
    chunks = iter(length_sorted_chunks([len(s) for s in src_ids], batch_size))
    waiting: list[Group] = []

    def next_group(room: int) -> Group | None:
        if not waiting:
            chunk = next(chunks, None)
            if chunk is None:
                return None
            batch = [src_ids[i] for i in chunk]
            src, lengths = pad_batch(batch, device_of(model))
            columns = None if shortlist is None else batch_shortlist(batch, shortlist.lex, shortlist.k)
            waiting.append(Group(model.encode(src, lengths), lengths, torch.tensor(chunk), columns))
        group = waiting.pop()
        if len(group.ids) > room:
            group, rest = group.split(room)
            waiting.append(rest)
        return group

    def model_for(vocab: Tensor | None) -> Seq2Seq:
        if vocab is None or shortlist is None:
            return model
        return with_output_layer(model, shortlist.rows.cut(vocab))

    # A quarter of the batch at a time: fewer, larger joins against steps that run below capacity
    # meanwhile. With a shortlist, a join redoes the batch's column lists, which cost more than the
    # emptier steps they save, so its batches run until their last sentence is done.
    refill = batch_size if shortlist is not None else max(1, batch_size // REFILL_PARTS)
    return greedy_refilled(model_for, next_group, len(src_ids), cfg, batch_size, refill)
