"""Word alignments from attention: SentencePiece pieces to words, argmax links, Pharaoh I/O, AER.

Pure functions over numpy arrays and sets of links. A link is (i, j) = (source word, target word),
written "i-j" in the Pharaoh format that fast_align and GIZA++ tools read.

Pieces to words: a piece starting with '▁' starts a word (a lone '▁' opens the word of the piece
after it), so the words are the line's whitespace tokens. Weights merge by summing over a source
word's pieces and averaging over a target word's pieces (merge_subwords). SentencePiece normalises
text first (NFKC), which can remove a token, e.g. a lone zero-width space: word_count_mismatch says
when the pieces do not give one word per whitespace token, and such a line gets no word links.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from nmt_cli.errors import InputError

WORD_START = "▁"  # SentencePiece's mark of a piece that begins a word
_LINK = re.compile(r"(\d+)-(\d+)", re.ASCII)


class Link(NamedTuple):
    """One alignment link; equal to, and hashed like, the plain tuple (src, tgt)."""

    src: int  # i: source word index
    tgt: int  # j: target word index


class WordAttention(NamedTuple):
    weights: np.ndarray  # (T target words, S source words)
    src_words: list[str]
    tgt_words: list[str]


def word_groups(pieces: Sequence[str]) -> list[list[int]]:
    """Indices of each word's pieces: a piece starting with '▁' starts a word, a lone '▁' joins the next.

    ["▁the", "▁do", "g"] -> [[0], [1, 2]];  ["▁", "Hund"] -> [[0, 1]].
    The first piece always starts a word; a lone '▁' at the very end stays with the word before it.
    """
    groups: list[list[int]] = []
    opened = False  # the previous piece was a lone "▁", which opens the word of the piece after it
    for k, piece in enumerate(pieces):
        if not groups or (piece.startswith(WORD_START) and not opened):
            groups.append([k])
        else:
            groups[-1].append(k)
        opened = piece == WORD_START
    if len(groups) > 1 and all(pieces[k] == WORD_START for k in groups[-1]):
        groups[-2].extend(groups.pop())  # trailing lone "▁": no piece after it to open a word for
    return groups


def merge_subwords(attention: Any, src_pieces: Sequence[str], tgt_pieces: Sequence[str]) -> WordAttention:
    """(T pieces, S pieces) attention -> WordAttention with (T words, S words) weights and the words.

    Rule: weight(target word, source word) = the sum over the source word's pieces, averaged over
    the target word's pieces. Summing keeps what a target piece gave the whole source word (a row
    that summed to 1 still does); averaging gives each target word one distribution, however many
    pieces it was cut into.
    """
    weights = np.asarray(attention, dtype=float)
    if weights.shape != (len(tgt_pieces), len(src_pieces)):
        raise InputError(
            f"attention has shape {weights.shape} but there are {len(tgt_pieces)} target and "
            f"{len(src_pieces)} source pieces (rows are target pieces, columns source pieces)"
        )
    src_groups, tgt_groups = word_groups(src_pieces), word_groups(tgt_pieces)
    sum_src = np.zeros((len(src_pieces), len(src_groups)))  # (S pieces, S words): 1 where piece in word
    for w, group in enumerate(src_groups):
        sum_src[group, w] = 1.0
    mean_tgt = np.zeros((len(tgt_groups), len(tgt_pieces)))  # (T words, T pieces): 1/len(word) weights
    for w, group in enumerate(tgt_groups):
        mean_tgt[w, group] = 1.0 / len(group)
    return WordAttention(
        mean_tgt @ weights @ sum_src, _words(src_pieces, src_groups), _words(tgt_pieces, tgt_groups)
    )


def alignment_from_attention(word_attention: Any, min_weight: float = 0.0) -> list[Link]:
    """Links (i, j) for each target word j to its most attended source word i, sorted.

    word_attention is (T target words, S source words) without the EOS row and column: EOS
    usually soaks up attention that belongs to no word, and would take links from real words.
    Ties go to the first source word. Target words whose largest weight is below min_weight
    stay unaligned.
    """
    weights = np.asarray(word_attention, dtype=float)
    if weights.ndim != 2:
        raise InputError(f"word attention must be a (target, source) matrix, got {weights.ndim} dimensions")
    if weights.shape[1] == 0:
        return []
    best = weights.argmax(axis=1)  # (T,) first maximum of each row
    return sorted(Link(int(i), j) for j, i in enumerate(best) if weights[j, i] >= min_weight)


def parse_pharaoh(line: str, path: str | None = None, line_no: int | None = None) -> set[Link]:
    """Links from one Pharaoh line such as "0-0 1-2 2-1"; an empty line has none."""
    links = set()
    for token in line.split():
        match = _LINK.fullmatch(token)
        if match is None:
            raise InputError(
                f"bad alignment link {token!r}: expected source-target indices such as 0-1", path, line_no
            )
        links.add(Link(int(match[1]), int(match[2])))
    return links


def format_pharaoh(links: Iterable[tuple[int, int]]) -> str:
    """One Pharaoh line, links sorted by source then target index: "0-0 1-2 2-1"."""
    return " ".join(f"{i}-{j}" for i, j in sorted(set(links)))


def alignment_error_rate(
    predicted: Sequence[Collection[tuple[int, int]]],
    sure: Sequence[Collection[tuple[int, int]]],
    possible: Sequence[Collection[tuple[int, int]]] | None = None,
) -> float:
    """Och & Ney (2003) AER over a corpus, 0 is perfect: 1 - (|A∩S| + |A∩P|) / (|A| + |S|).

    Counts are summed over sentences before dividing. P is taken as P ∪ S, since every sure link is
    also possible; without possible links, P = S and AER = 1 - F1 against S. No links at all: 0.
    """
    possible = sure if possible is None else possible
    if not len(predicted) == len(sure) == len(possible):
        raise InputError(
            f"alignments for {len(predicted)} sentences, but {len(sure)} sure and {len(possible)} possible"
        )
    a_and_s = a_and_p = n_a = n_s = 0
    for a, s, p in zip(predicted, sure, possible, strict=True):
        a, s = set(a), set(s)
        a_and_s += len(a & s)
        a_and_p += len(a & (set(p) | s))
        n_a, n_s = n_a + len(a), n_s + len(s)
    return 0.0 if n_a + n_s == 0 else 1.0 - (a_and_s + a_and_p) / (n_a + n_s)


def word_count_mismatch(pieces: Sequence[str], text: str) -> str | None:
    """Why pieces cannot stand for text's whitespace tokens (different word counts), or None if they can."""
    n_pieces, n_tokens = len(word_groups(pieces)), len(text.split())
    if n_pieces == n_tokens:
        return None
    return f"its subword pieces form {n_pieces} words but it has {n_tokens} whitespace tokens"


def check_links(
    links: Iterable[tuple[int, int]], n_src: int, n_tgt: int, path: str | None = None, line: int | None = None
) -> None:
    """InputError naming path and line when a link points past the last source or target word."""
    for i, j in sorted(links):
        if i >= n_src or j >= n_tgt:
            raise InputError(
                f"alignment link {i}-{j} is outside the sentence pair ({n_src} source, {n_tgt} target words)",
                path,
                line,
            )


def _words(pieces: Sequence[str], groups: list[list[int]]) -> list[str]:
    return ["".join(pieces[k] for k in group).replace(WORD_START, "") for group in groups]
