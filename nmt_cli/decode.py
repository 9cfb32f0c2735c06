"""Decode lists of source ids in length-sorted batches and hand results back in input order."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch
from torch import Tensor

from nmt_cli.config import DecodeConfig
from nmt_cli.model import PAD, Seq2Seq
from nmt_cli.quantize import OutputRows
from nmt_cli.search import Group, Hypothesis, greedy_refilled, search
from nmt_cli.shortlist import LexicalTable, batch_shortlist, with_output_layer
from nmt_cli.threads import products_in_parallel

REFILL_PARTS = 4  # greedy brings in new sentences once a quarter of the batch has finished
# Decoding on the CPU runs up to this many workers side by side, each over its own batches; past it, each
# worker gets several threads instead (every worker keeps a batch's tensors in memory).
MAX_WORKERS = 4


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
    layer covers only the union of the shortlists of the sentences being stepped.

    On the CPU, the sentences are dealt out to one worker thread per torch thread (up to MAX_WORKERS), each
    batching its own and running them on one thread. A step is some 30 kernels, most of them too small
    to split; one thread per worker never waits for another at the end of a kernel, where splitting each
    kernel over sleeping OpenMP threads pays about 0.1 ms per kernel to wake them, and spinning ones are
    ruinous as soon as another process wants the cores. torch's kernels run without the GIL.
    """
    assert all(src_ids), "empty sources are skipped by the caller"
    workers = _workers(model, len(src_ids))
    if workers == 1:
        return _decode(model, src_ids, cfg, batch_size, shortlist)
    # A beam batch has k rows per sentence, so the workers share batch_size between them: their products
    # stay large, and decoding holds about one batch's tensors, as on one thread (fp32 beam 5: 588-597
    # against 722-739 MB, at 1.02-1.15x). Greedy rows are too few for that (0.80-0.88x).
    size = batch_size if cfg.beam_size == 1 else -(-batch_size // workers)
    # sentences dealt out in length order: each worker gets as many, long and short alike, and makes its
    # own batches of them, so no worker waits long for another at the end
    order = length_order([len(s) for s in src_ids])
    parts = [order[w::workers] for w in range(workers)]
    threads = torch.get_num_threads()

    def work(indices: list[int]) -> list[list[Hypothesis]]:
        torch.set_num_threads(max(1, threads // workers))  # this thread's own setting
        with torch.inference_mode():  # grad mode is per thread
            return _decode(model, [src_ids[i] for i in indices], cfg, size, shortlist, worker=True)

    results: list[list[Hypothesis]] = [[] for _ in src_ids]
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="nmt-decode") as pool:
            for indices, nbests in zip(parts, pool.map(work, parts), strict=True):
                for i, nbest in zip(indices, nbests, strict=True):
                    results[i] = nbest
    finally:
        torch.set_num_threads(threads)  # torch also keeps the last setting process-wide for new threads
    return results


def _workers(model: Seq2Seq, sentences: int) -> int:
    """Worker threads for decoding: one per torch thread, up to MAX_WORKERS and the number of sentences;
    one on a GPU.

    A lone batch too is shared out, not run on the calling thread with its products on all threads:
    oneDNN compiles and keeps a kernel per product shape and thread count, so the first batch of a run
    (translate sends it alone, for an early first line) had every shape compiled twice, once for two
    threads and again for the workers' one. Shared out, over test_2016_flickr: greedy 132 -> 80 kernels,
    peak RSS fp32 greedy 364-369 -> 346-354 MB, beam 5 425-444 -> 370-382, the same output, and the
    first line no later (2.2-3.0 -> 2.0-2.9 s).
    """
    if any(p.device.type != "cpu" for p in model.parameters()):
        return 1
    return max(1, min(torch.get_num_threads(), MAX_WORKERS, sentences))


def _decode(
    model: Seq2Seq,
    src_ids: Sequence[Sequence[int]],
    cfg: DecodeConfig,
    batch_size: int,
    shortlist: ShortlistSetting | None,
    worker: bool = False,
) -> list[list[Hypothesis]]:
    """decode_ids on the calling thread. A worker leaves the threads as they are: products_in_parallel
    hooks the model, which the other workers share."""
    if cfg.beam_size == 1 and not worker:
        # one sentence, or one thread in all: one thread but for the products (on a lone batch of 64,
        # against all threads for every kernel: int8 1.4x, fp32 1.0x; beam 5 fp32 0.93x, so not there)
        with products_in_parallel(model):
            return _greedy(model, src_ids, cfg, batch_size, shortlist)
    return _beam(model, src_ids, cfg, batch_size, shortlist)


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
            src, lengths = pad_batch(batch)
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
    # emptier steps they save (int8 greedy 0.8x), so its batches run until their last sentence is done.
    refill = batch_size if shortlist is not None else max(1, batch_size // REFILL_PARTS)
    return greedy_refilled(model_for, next_group, len(src_ids), cfg, batch_size, refill)
