"""Decode lists of source ids in length-sorted batches and hand results back in input order."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nmt_cli.config import DecodeConfig
from nmt_cli.model import PAD, Seq2Seq
from nmt_cli.search import Hypothesis, search


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
    model: Seq2Seq, src_ids: Sequence[Sequence[int]], cfg: DecodeConfig, batch_size: int = 64
) -> list[list[Hypothesis]]:
    """One n-best list per non-empty source, in input order; search is batch-invariant, so sorting is safe."""
    assert all(src_ids), "empty sources are skipped by the caller"
    results: list[list[Hypothesis]] = [[] for _ in src_ids]
    for chunk in length_sorted_chunks([len(s) for s in src_ids], batch_size):
        src, lengths = pad_batch([src_ids[i] for i in chunk])
        enc = model.encode(src, lengths)
        for i, nbest in zip(chunk, search(model, enc, lengths, cfg), strict=True):
            results[i] = nbest
    return results
