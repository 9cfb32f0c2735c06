"""Pretrained word vectors (word2vec / GloVe / fastText text format) matched to subword pieces.

The file is read one line at a time and only the vectors of matching tokens are kept, so a
multi-gigabyte file never has to fit in memory. A piece takes the vector of the identical token;
a word-initial piece '▁word' falls back to the vector of 'word'.
"""

from __future__ import annotations

import gzip
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from nmt_cli.errors import ConfigError, InputError
from nmt_cli.textio import iter_lines, open_binary

WORD_START = "\u2581"  # SentencePiece's '▁', which marks a piece that begins a word
N_SPECIAL = 4  # PAD, UNK, BOS, EOS: their rows are never taken from a vector file
SHOW_UNCOVERED = 10


class PieceVectors(NamedTuple):
    ids: list[int]  # piece ids that got a vector, ascending
    vectors: Tensor  # (n, d): row i is the vector of piece ids[i]
    exact: int  # pieces matched by the identical token
    stripped: int  # pieces '▁word' matched by 'word'
    read: int  # vectors in the file


class Coverage(NamedTuple):
    pieces: int  # pieces with a vector
    vocabulary: int  # pieces that could have one (specials left out)
    tokens: int  # training tokens whose piece has a vector
    total_tokens: int
    uncovered: list[tuple[str, int]]  # most frequent pieces without a vector, with their counts

    def as_text(self) -> str:
        share = 100 * self.tokens / self.total_tokens if self.total_tokens else 0.0
        top = ", ".join(f"{p} {n}" for p, n in self.uncovered) or "none"
        pieces = 100 * self.pieces / self.vocabulary
        return (
            f"{self.pieces} of {self.vocabulary} pieces covered ({pieces:.1f} %), "
            f"{share:.1f} % of training tokens; most frequent uncovered: {top}"
        )


def _lines(path: str) -> Iterator[str]:
    """Lines of a text file, or of a gzip file (recognised by its magic bytes, not its name)."""
    with open_binary(path) as raw:
        if raw.peek(2)[:2] == b"\x1f\x8b":  # type: ignore[attr-defined]
            try:
                with gzip.open(raw) as unzipped:
                    yield from iter_lines(unzipped, path)  # type: ignore[arg-type]
            except (OSError, EOFError) as e:
                raise InputError(f"not a readable gzip file: {e}", path) from None
        else:
            yield from iter_lines(raw, path)


def _header(fields: list[str]) -> tuple[int, int] | None:
    """(count, dim) when the first line is a word2vec/fastText header, else None."""
    if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
        return int(fields[0]), int(fields[1])
    return None


def _parse(values: list[str], path: str, line: int) -> list[float]:
    try:
        floats = [float(v) for v in values]
    except ValueError:
        bad = next(v for v in values if not _is_float(v))
        raise InputError(f"not a number: {bad[:40]!r}", path, line) from None
    if not all(math.isfinite(v) for v in floats):
        raise InputError("values must be finite numbers (found inf or nan)", path, line)
    return floats


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _wanted(pieces: Sequence[str]) -> dict[str, list[tuple[int, int]]]:
    """token -> [(piece id, rank)], rank 0 for the identical token, 1 for '▁word' -> 'word'."""
    wanted: dict[str, list[tuple[int, int]]] = {}
    for i, piece in enumerate(pieces):
        if i < N_SPECIAL:
            continue
        wanted.setdefault(piece, []).append((i, 0))
        if piece.startswith(WORD_START) and len(piece) > 1:
            wanted.setdefault(piece[1:], []).append((i, 1))
    return wanted


def read_vectors(path: str | Path, pieces: Sequence[str], dim: int) -> PieceVectors:
    """Vectors for the pieces (index = piece id) from a text vector file of dimension dim.

    Every line's value count is checked; the values themselves on the lines that are used. The first
    vector of a token counts, later ones are ignored.
    """
    path = str(path)
    wanted = _wanted(pieces)
    best: dict[int, tuple[int, list[float]]] = {}  # piece id -> (rank, vector)
    header, seen, n_read = None, set(), 0
    for n, text in enumerate(_lines(path), start=1):
        text = text.rstrip(" \t")  # word2vec writes a trailing space after the values
        if n == 1 and (header := _header(text.split(" "))) is not None:
            _check_dim(header[1], dim, path, n)
            continue
        token, _, values = text.partition(" ")
        found = values.count(" ") + 1 if values else 0
        if n_read == 0 and found:  # the first vector sets the file's dimension
            _check_dim(found, dim, path, n)
        if found != dim:
            raise InputError(f"expected a token and {dim} values, found {found} values", path, n)
        n_read += 1
        if token not in wanted or token in seen:
            continue  # only the lines used are parsed: a large file is mostly other words
        seen.add(token)  # only matching tokens: memory stays bounded by the vocabulary
        vector = _parse(values.split(" "), path, n)
        for piece_id, rank in wanted[token]:
            if piece_id not in best or rank < best[piece_id][0]:
                best[piece_id] = (rank, vector)
    if header is not None and header[0] != n_read:
        raise InputError(f"header announces {header[0]} vectors, the file has {n_read}", path, 1)
    if n_read == 0:
        raise InputError("no vectors in the file", path)
    ids = sorted(best)
    rows = torch.tensor([best[i][1] for i in ids], dtype=torch.float32).reshape(len(ids), dim)
    exact = sum(1 for i in ids if best[i][0] == 0)
    return PieceVectors(ids, rows, exact, len(ids) - exact, n_read)


def _check_dim(found: int, dim: int, path: str, line: int) -> None:
    if found != dim:
        raise ConfigError(
            f"the vectors have {found} dimensions but the embeddings have {dim}: "
            f"train with --emb-size {found}, or use vectors of size {dim}",
            path,
            line,
        )


def coverage(ids: Iterable[int], pieces: Sequence[str], corpus: Iterable[Sequence[int]]) -> Coverage:
    """How much of the vocabulary and of the training tokens (piece ids per sentence) got a vector."""
    covered = set(ids)
    counts: Counter[int] = Counter()
    for sentence in corpus:
        counts.update(sentence)
    tokens = sum(n for i, n in counts.items() if i in covered)
    uncovered = [(i, n) for i, n in counts.most_common() if i not in covered and i >= N_SPECIAL]
    return Coverage(
        pieces=len(covered),
        vocabulary=len(pieces) - N_SPECIAL,
        tokens=tokens,
        total_tokens=sum(counts.values()),
        uncovered=[(pieces[i], n) for i, n in uncovered[:SHOW_UNCOVERED]],
    )
