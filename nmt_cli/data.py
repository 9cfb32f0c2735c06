"""Examples and batches: length-bucketed, seeded, sharded by rank, resumable by skipping batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from nmt_cli.errors import ConfigError, InputError
from nmt_cli.subword import BOS, EOS, PAD, UNK, Subword
from nmt_cli.textio import read_parallel

SHOW_LINES = 5  # reports list the first few line numbers of each problem, enough to go and look
LONG_WORDS = 100  # check_corpus flags lines with more whitespace-separated words than this


class Example(NamedTuple):
    src: list[int]  # subword ids, no BOS/EOS
    tgt: list[int]  # subword ids, no BOS/EOS
    line: int  # 1-based line in the corpus files


class LoadReport(NamedTuple):
    total: int  # line pairs read
    kept: int
    skipped_empty: int  # either side encodes to no subwords
    skipped_long: int  # either side has more than max_len subwords
    empty_lines: list[int]  # first few skipped line numbers of each kind
    long_lines: list[int]
    src_tokens: int  # subwords in kept pairs, no BOS/EOS
    tgt_tokens: int
    src_unk: int  # UNK ids in kept pairs: characters the subword model never saw
    tgt_unk: int


class ParallelData(NamedTuple):
    examples: list[Example]
    report: LoadReport


def load_parallel(src_path: str | Path, tgt_path: str | Path, subword: Subword, max_len: int) -> ParallelData:
    """Encode a parallel corpus; pairs with an empty side or a side over max_len subwords are skipped."""
    if max_len < 1:
        raise ConfigError(f"max_len must be at least 1, got {max_len}")
    src_lines, tgt_lines = read_parallel(src_path, tgt_path)  # count mismatch names both files
    src_ids, tgt_ids = subword.encode_batch(src_lines), subword.encode_batch(tgt_lines)
    del src_lines, tgt_lines
    # one int object per id, shared by every example: each token then costs its list slot (8 bytes), not
    # a 28-byte int of its own as well (Multi30k train: load_parallel adds 23 MB to RSS instead of 32)
    shared = list(range(subword.vocab_size))
    examples: list[Example] = []
    empty: list[int] = []
    long: list[int] = []
    for n, (src, tgt) in enumerate(zip(src_ids, tgt_ids, strict=True), start=1):
        if not src or not tgt:
            empty.append(n)
        elif len(src) > max_len or len(tgt) > max_len:
            long.append(n)
        else:
            examples.append(Example([shared[i] for i in src], [shared[i] for i in tgt], n))
    if not examples:
        raise InputError(
            f"no usable sentence pairs: {len(empty)} empty, {len(long)} longer than {max_len} subwords",
            str(src_path),
        )
    report = LoadReport(
        total=len(src_ids),
        kept=len(examples),
        skipped_empty=len(empty),
        skipped_long=len(long),
        empty_lines=empty[:SHOW_LINES],
        long_lines=long[:SHOW_LINES],
        src_tokens=sum(len(e.src) for e in examples),
        tgt_tokens=sum(len(e.tgt) for e in examples),
        src_unk=sum(e.src.count(UNK) for e in examples),
        tgt_unk=sum(e.tgt.count(UNK) for e in examples),
    )
    return ParallelData(examples, report)


class CorpusReport(NamedTuple):
    """What `nmt prepare` tells about a raw parallel corpus; plain types, so _asdict() is JSON."""

    src_path: str
    tgt_path: str
    lines: int
    src_empty: int  # blank or whitespace-only lines
    tgt_empty: int
    empty: int  # pairs where either side is blank
    empty_lines: list[int]  # the first few of them
    identical: int  # non-blank pairs with source == target: often untranslated or copied lines
    identical_lines: list[int]
    long: int  # pairs where either side has more than long_words words
    long_lines: list[int]
    long_words: int
    max_src_words: int
    max_tgt_words: int

    def as_text(self) -> str:
        """A few human-readable lines for stderr."""
        return "\n".join(
            [
                f"{self.src_path} / {self.tgt_path}: {self.lines} line pairs",
                f"  empty: {self.src_empty} source, {self.tgt_empty} target"
                + _where(self.empty_lines, self.empty),
                f"  identical source and target: {self.identical}"
                + _where(self.identical_lines, self.identical),
                f"  longer than {self.long_words} words: {self.long}" + _where(self.long_lines, self.long),
                f"  longest: {self.max_src_words} source words, {self.max_tgt_words} target words",
            ]
        )


def _where(lines: list[int], count: int) -> str:
    """' (lines 3, 9, ...)' for the first few of count problem lines; '' when there are none."""
    if not lines:
        return ""
    more = ", ..." if count > len(lines) else ""
    return f" (lines {', '.join(map(str, lines))}{more})"


def check_corpus(src_path: str | Path, tgt_path: str | Path, long_words: int = LONG_WORDS) -> CorpusReport:
    """Count lines, blank lines, copied lines and very long lines; bad UTF-8 raises path:line."""
    src_lines, tgt_lines = read_parallel(src_path, tgt_path)
    src_words = [len(s.split()) for s in src_lines]
    tgt_words = [len(t.split()) for t in tgt_lines]
    pairs = list(zip(src_words, tgt_words, strict=True))
    empty = [n for n, (s, t) in enumerate(pairs, start=1) if s == 0 or t == 0]
    identical = [
        n for n, (s, t) in enumerate(zip(src_lines, tgt_lines, strict=True), start=1) if s == t and s.strip()
    ]
    long = [n for n, (s, t) in enumerate(pairs, start=1) if max(s, t) > long_words]
    return CorpusReport(
        src_path=str(src_path),
        tgt_path=str(tgt_path),
        lines=len(src_lines),
        src_empty=src_words.count(0),
        tgt_empty=tgt_words.count(0),
        empty=len(empty),
        empty_lines=empty[:SHOW_LINES],
        identical=len(identical),
        identical_lines=identical[:SHOW_LINES],
        long=len(long),
        long_lines=long[:SHOW_LINES],
        long_words=long_words,
        max_src_words=max(src_words, default=0),
        max_tgt_words=max(tgt_words, default=0),
    )


class Batch(NamedTuple):
    src: Tensor  # (B, S) long, PAD after each row's end; rows sorted by source length, longest first
    src_lengths: Tensor  # (B,) long, descending: ready for pack_padded_sequence(enforce_sorted=True)
    tgt_in: Tensor  # (B, T) long, BOS + tgt, PAD-padded: the decoder's teacher-forced inputs
    tgt_out: Tensor  # (B, T) long, tgt + EOS, PAD-padded: the labels
    n_tokens: int  # real label positions, sum of len(tgt) + 1: divide the summed loss by this
    lines: list[int]  # corpus line of each row

    def to(self, device: torch.device) -> Batch:
        """The same batch with its tensors on device (itself when they are there already)."""
        if device.type == "cpu":
            return self
        move = {
            name: getattr(self, name).to(device, non_blocking=True) for name in ("src", "tgt_in", "tgt_out")
        }
        return self._replace(**move, src_lengths=self.src_lengths.to(device))


def pad_sequences(seqs: Sequence[Sequence[int]]) -> Tensor:
    """Rows of ids -> (B, L) long tensor padded with PAD on the right, L the longest row."""
    width = max((len(s) for s in seqs), default=0)
    return torch.tensor([[*s, *[PAD] * (width - len(s))] for s in seqs], dtype=torch.long).view(
        len(seqs), width
    )


def collate(examples: Sequence[Example]) -> Batch:
    """Examples -> Batch with src (B, S), src_lengths (B,), tgt_in and tgt_out (B, T), T = longest tgt + 1."""
    assert examples, "collate needs at least one example"
    rows = sorted(examples, key=lambda e: -len(e.src))  # stable: equal lengths keep their order
    return Batch(
        src=pad_sequences([e.src for e in rows]),
        src_lengths=torch.tensor([len(e.src) for e in rows], dtype=torch.long),
        tgt_in=pad_sequences([[BOS, *e.tgt] for e in rows]),
        tgt_out=pad_sequences([[*e.tgt, EOS] for e in rows]),
        n_tokens=sum(len(e.tgt) + 1 for e in rows),
        lines=[e.line for e in rows],
    )


def _cut(order: list[int], examples: Sequence[Example], batch_tokens: int) -> list[list[int]]:
    """Consecutive runs of order whose padded positions fit the budget on both sides: rows times the
    longest source, and rows times the longest target + 1 (OpenNMT-py's tokens batch type). Counting the
    target alone let a batch of short targets carry twice the budget in source positions, and the
    encoder's activations with it."""
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        new_width = max(width, _width(examples[i]))
        if current and new_width * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, new_width = [], _width(examples[i])
        current.append(i)  # a pair over the budget on its own still gets a batch: never dropped
        width = new_width
    if current:
        batches.append(current)
    return batches


def _width(example: Example) -> int:
    """Padded positions a pair needs in a row: its source, or its target + EOS, whichever is longer."""
    return max(len(example.src), len(example.tgt) + 1)


def _length_order(examples: Sequence[Example], tie_break: list[int]) -> list[int]:
    """Sorted by target length, then source length ascending for odd and descending for even target
    lengths: neighbouring groups meet at similar source lengths, so a batch that spans two of them is
    not padded from the shortest source to the longest."""
    return sorted(
        tie_break,
        key=lambda i: (len(examples[i].tgt), len(examples[i].src) * (1 if len(examples[i].tgt) % 2 else -1)),
    )


def token_batches(
    examples: Sequence[Example], batch_tokens: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This rank's batches for one epoch, as index lists into examples, in training order.

    Pairs are sorted by length (_length_order) with a seeded random tie-break, cut into batches of at
    most batch_tokens padded positions on either side, and the batches are shuffled. The result
    depends only on the arguments, so a run resumes mid-epoch by calling this again and skipping
    the batches it already did. Rank r gets batches r, r + world_size, ...; the list is wrapped
    around so that every rank gets the same count and distributed steps stay in lockstep.
    """
    if batch_tokens < 1:
        raise ConfigError(f"batch_tokens must be at least 1, got {batch_tokens}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank must be in [0, {world_size}), got {rank}")
    if not examples:
        return []
    gen = torch.Generator().manual_seed(seed + epoch)  # its own generator: dropout must not shift the data
    tie_break = torch.randperm(len(examples), generator=gen).tolist()
    batches = _cut(_length_order(examples, tie_break), examples, batch_tokens)
    batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
    padded_count = -(-len(batches) // world_size) * world_size
    wrapped = [batches[i % len(batches)] for i in range(padded_count)]  # repeats at most world_size - 1
    return wrapped[rank::world_size]


def padding_fraction(batches: Sequence[Sequence[int]], examples: Sequence[Example]) -> float:
    """Share of label positions (tgt_out) that are PAD, over all given batches."""
    total = real = 0
    for batch in batches:
        lengths = [len(examples[i].tgt) + 1 for i in batch]
        total += max(lengths, default=0) * len(lengths)
        real += sum(lengths)
    return 1.0 - real / total if total else 0.0


def sorted_chunks(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped for decoding, longest first; concatenated they are a permutation to undo."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep input order
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
