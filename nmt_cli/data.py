"""Examples and batches: length-bucketed, seeded, sharded by rank, resumable by skipping batches."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from nmt_cli.errors import ConfigError, InputError
from nmt_cli.subword import BOS, EOS, PAD, UNK, Subword
from nmt_cli.textio import iter_parallel, read_parallel

SHOW_LINES = 5  # reports list the first few line numbers of each problem, enough to go and look
LONG_WORDS = 100  # check_corpus flags lines with more whitespace-separated words than this
MAX_RATIO = 3.0  # and pairs whose longer side has more than this many times the words of the shorter


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
    # one int object per id, shared by every example: a token costs its list slot, not an int object of
    # its own as well (docs/performance.md)
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
    ratio: int  # non-blank pairs whose longer side has more than max_ratio times the words of the other
    ratio_lines: list[int]
    max_ratio: float
    duplicate: int  # non-blank pairs equal on both sides to an earlier pair (the first is not counted)
    duplicate_lines: list[int]
    flagged: int  # pairs with any of the problems above: what --filter leaves out

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
                f"  length ratio over {self.max_ratio:g}: {self.ratio}"
                + _where(self.ratio_lines, self.ratio),
                f"  duplicate pairs: {self.duplicate}" + _where(self.duplicate_lines, self.duplicate),
                f"  longest: {self.max_src_words} source words, {self.max_tgt_words} target words",
            ]
        )


def _where(lines: list[int], count: int) -> str:
    """' (lines 3, 9, ...)' for the first few of count problem lines; '' when there are none."""
    if not lines:
        return ""
    more = ", ..." if count > len(lines) else ""
    return f" (lines {', '.join(map(str, lines))}{more})"


class _Found:
    """A count and the first few line numbers of one kind of problem."""

    def __init__(self) -> None:
        self.count, self.lines = 0, []

    def add(self, n: int) -> None:
        self.count += 1
        if len(self.lines) < SHOW_LINES:
            self.lines.append(n)


def check_corpus(
    src_path: str | Path, tgt_path: str | Path, long_words: int = LONG_WORDS, max_ratio: float = MAX_RATIO
) -> CorpusReport:
    """Count lines, blank lines, copied lines and very long lines; bad UTF-8 raises path:line."""
    return scan_corpus(src_path, tgt_path, long_words, max_ratio)[0]


def scan_corpus(
    src_path: str | Path, tgt_path: str | Path, long_words: int = LONG_WORDS, max_ratio: float = MAX_RATIO
) -> tuple[CorpusReport, np.ndarray]:
    """check_corpus's report, and a bool per line pair: True where any problem was found.

    Streams over the files: memory holds 9 bytes per pair (a 64-bit digest for the duplicates, the flag).
    """
    if max_ratio < 1:
        raise ConfigError(f"max_ratio must be at least 1, got {max_ratio}")
    empty, identical, long, ratio = _Found(), _Found(), _Found(), _Found()
    src_empty = tgt_empty = max_src = max_tgt = 0
    digests, flagged = array("Q"), bytearray()
    for n, (s, t) in enumerate(iter_parallel(src_path, tgt_path), start=1):
        ws, wt = len(s.split()), len(t.split())
        max_src, max_tgt = max(max_src, ws), max(max_tgt, wt)
        bad = False
        if ws == 0 or wt == 0:
            src_empty, tgt_empty = src_empty + (ws == 0), tgt_empty + (wt == 0)
            empty.add(n)
            digests.append(0)  # blank pairs are reported as empty, not as copies of each other
            flagged.append(1)
            continue
        if s == t:
            identical.add(n)
            bad = True
        if max(ws, wt) > long_words:
            long.add(n)
            bad = True
        if max(ws, wt) > max_ratio * min(ws, wt):
            ratio.add(n)
            bad = True
        digest = hashlib.blake2b(f"{s}\n{t}".encode(), digest_size=8).digest()
        digests.append(int.from_bytes(digest, "little") or 1)  # 0 marks a blank pair
        flagged.append(bad)
    lines = len(flagged)
    flags = np.frombuffer(flagged, dtype=np.bool_).copy() if lines else np.zeros(0, dtype=np.bool_)
    duplicates = _later_copies(np.frombuffer(digests, dtype=np.uint64) if lines else np.zeros(0, np.uint64))
    flags[duplicates] = True
    report = CorpusReport(
        src_path=str(src_path),
        tgt_path=str(tgt_path),
        lines=lines,
        src_empty=src_empty,
        tgt_empty=tgt_empty,
        empty=empty.count,
        empty_lines=empty.lines,
        identical=identical.count,
        identical_lines=identical.lines,
        long=long.count,
        long_lines=long.lines,
        long_words=long_words,
        max_src_words=max_src,
        max_tgt_words=max_tgt,
        ratio=ratio.count,
        ratio_lines=ratio.lines,
        max_ratio=max_ratio,
        duplicate=len(duplicates),
        duplicate_lines=(duplicates[:SHOW_LINES] + 1).tolist(),
        flagged=int(flags.sum()),
    )
    return report, flags


def _later_copies(digests: np.ndarray) -> np.ndarray:
    """Ascending 0-based positions whose non-zero digest appeared at an earlier position."""
    order = np.argsort(digests, kind="stable")  # equal digests keep their line order
    ordered = digests[order]
    again = np.zeros(len(digests), dtype=np.bool_)
    again[1:] = (ordered[1:] == ordered[:-1]) & (ordered[1:] != 0)
    return np.sort(order[again])


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


def example_lengths(examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray]:
    """Source and target lengths as int64 arrays: a store's own (no pair is read), else counted."""
    lengths = getattr(examples, "lengths", None)
    if lengths is not None:
        return lengths()
    src = np.fromiter((len(e.src) for e in examples), dtype=np.int64, count=len(examples))
    return src, np.fromiter((len(e.tgt) for e in examples), dtype=np.int64, count=len(examples))


def epoch_tokens(examples: Sequence[Example]) -> int:
    """Label positions in one epoch: every target and its EOS."""
    return int(example_lengths(examples)[1].sum()) + len(examples)


def _cut(order: np.ndarray, widths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Consecutive runs of order whose padded positions fit the budget on both sides: rows times the
    longest source, and rows times the longest target + 1 (OpenNMT-py's tokens batch type). Counting the
    target alone let a batch of short targets carry twice the budget in source positions, and the
    encoder's activations with it. widths[i]: the positions pair i needs in a row, max(source, target + 1)."""
    ordered = widths[order]
    starts: list[int] = []
    k, n = 0, len(ordered)
    while k < n:
        # r rows from k need max(their widths) * r positions, at least ordered[k] * r: more than
        # batch_tokens // ordered[k] rows never fit, so the first row that does not is within that window
        window = np.maximum.accumulate(ordered[k : k + batch_tokens // max(int(ordered[k]), 1) + 1])
        over = window * np.arange(1, len(window) + 1) > batch_tokens
        over[0] = False  # a pair over the budget on its own still gets a batch: never dropped
        k += int(over.argmax()) if over.any() else len(window)
        starts.append(k)
    return np.split(order, starts[:-1]) if n else []


def _length_order(src: np.ndarray, tgt: np.ndarray, tie_break: np.ndarray) -> np.ndarray:
    """Sorted by target length, then source length ascending for odd and descending for even target
    lengths: neighbouring groups meet at similar source lengths, so a batch that spans two of them is
    not padded from the shortest source to the longest. Ties keep the tie_break order."""
    snake = np.where(tgt % 2 == 1, src, -src)
    key = (tgt - tgt.min()) * int(snake.max() - snake.min() + 1) + (snake - snake.min())
    n = len(tie_break)
    if key.max() < 1 << 16:  # lengths up to a few hundred: numpy's stable sort of 16-bit keys is a radix sort
        return tie_break[np.argsort(key.astype(np.uint16)[tie_break], kind="stable")]
    if (int(key.max()) + 1) * n >= 1 << 63:  # lengths no corpus has: the slower stable sort
        return tie_break[np.lexsort((snake[tie_break], tgt[tie_break]))]
    rank = np.empty(n, dtype=np.int64)
    rank[tie_break] = np.arange(n)
    return np.argsort(key * n + rank)  # keys made unique by the tie-break rank: any sort is stable


def token_batches(
    examples: Sequence[Example], batch_tokens: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[np.ndarray]:
    """This rank's batches for one epoch, as int64 index arrays into examples, in training order.

    Pairs are sorted by length (_length_order) with a seeded random tie-break, cut into batches of at
    most batch_tokens padded positions on either side, and the batches are shuffled. The result
    depends only on the arguments, so a run resumes mid-epoch by calling this again and skipping
    the batches it already did. Rank r gets batches r, r + world_size, ...; the list is wrapped
    around so that every rank gets the same count and distributed steps stay in lockstep. Only the
    lengths are read (example_lengths): a store of millions of pairs stays on disk.
    """
    if batch_tokens < 1:
        raise ConfigError(f"batch_tokens must be at least 1, got {batch_tokens}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank must be in [0, {world_size}), got {rank}")
    if not len(examples):
        return []
    src, tgt = example_lengths(examples)
    gen = torch.Generator().manual_seed(seed + epoch)  # its own generator: dropout must not shift the data
    tie_break = torch.randperm(len(examples), generator=gen).numpy()
    batches = _cut(_length_order(src, tgt, tie_break), np.maximum(src, tgt + 1), batch_tokens)
    batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
    padded_count = -(-len(batches) // world_size) * world_size
    wrapped = [batches[i % len(batches)] for i in range(padded_count)]  # repeats at most world_size - 1
    return wrapped[rank::world_size]


def padding_fraction(batches: Sequence[Sequence[int]], examples: Sequence[Example]) -> float:
    """Share of label positions (tgt_out) that are PAD, over all given batches."""
    tgt = example_lengths(examples)[1]
    total = real = 0
    for batch in batches:
        lengths = tgt[np.asarray(batch, dtype=np.int64)] + 1
        total += int(lengths.max(initial=0)) * len(lengths)
        real += int(lengths.sum())
    return 1.0 - real / total if total else 0.0


def sorted_chunks(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped for decoding, longest first; concatenated they are a permutation to undo."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep input order
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
