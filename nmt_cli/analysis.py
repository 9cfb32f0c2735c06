"""What a model attends to: forced attention on given pairs, or on its own translations; alignments.

Pure: lines in, arrays and links out; no files and no printing. Row t of an attention matrix is the
step that outputs target piece t (its input is piece t-1, or BOS), and the EOS step is kept apart.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from nmt_cli.align import Link, WordAttention, alignment_from_attention, merge_subwords, word_count_mismatch
from nmt_cli.checkpoint import LoadedModel
from nmt_cli.config import DecodeConfig
from nmt_cli.decode import ShortlistSetting, decode_ids, length_sorted_chunks, pad_batch
from nmt_cli.errors import ConfigError
from nmt_cli.metrics import corpus_scores
from nmt_cli.model import device_of
from nmt_cli.subword import BOS

LEVELS = ("word", "subword")
EOS_LABEL = "</s>"


class PairAttention(NamedTuple):
    line: int  # 1-based
    src: str
    tgt: str  # the given reference (forced decoding) or the model's translation
    src_pieces: list[str]
    tgt_pieces: list[str]
    attention: np.ndarray  # (T target pieces, S source pieces), EOS step left out
    eos: np.ndarray | None  # (S,) attention of the EOS step; None if the search hit its length cap


class LineAlignment(NamedTuple):
    line: int
    links: list[Link]
    problem: str | None  # why a line with words on both sides got no links


class SweepRow(NamedTuple):
    beam_size: int
    length_penalty: float | None  # None for greedy search, which no length penalty changes
    bleu: float
    ratio: float  # hypothesis / reference length, as BLEU counts it
    empty: int  # non-empty source lines translated to nothing
    seconds: float
    signature: str  # BLEU's


def require_attention(loaded: LoadedModel, path: str, what: str) -> None:
    """Fail clearly for a model without attention (attention none): it has nothing to align or draw."""
    if loaded.config.attention == "none":
        raise ConfigError(
            f"this model has no attention (attention none: the decoder sees only the encoder's final "
            f"state), so there is no {what}",
            path,
        )


def _empty(line: int, src: str, tgt: str, src_pieces: list[str], tgt_pieces: list[str]) -> PairAttention:
    return PairAttention(
        line, src, tgt, src_pieces, tgt_pieces, np.zeros((len(tgt_pieces), len(src_pieces))), None
    )


@torch.inference_mode()
def forced_attention(
    loaded: LoadedModel, src_lines: Sequence[str], tgt_lines: Sequence[str], batch_size: int = 64
) -> list[PairAttention]:
    """Attention while teacher forcing each reference: one PairAttention per pair, in order.

    A pair with an empty side skips the model and gets an empty (T, S) matrix.
    """
    sub = loaded.subword
    src_ids, tgt_ids = sub.encode_batch(list(src_lines)), sub.encode_batch(list(tgt_lines))
    pairs = [
        _empty(n + 1, s, t, sub.id_to_piece(si), sub.id_to_piece(ti))
        for n, (s, t, si, ti) in enumerate(zip(src_lines, tgt_lines, src_ids, tgt_ids, strict=True))
    ]
    todo = [n for n in range(len(pairs)) if src_ids[n] and tgt_ids[n]]
    for chunk in length_sorted_chunks([len(src_ids[n]) for n in todo], batch_size):
        rows = [todo[k] for k in chunk]
        device = device_of(loaded.model)
        src, src_lengths = pad_batch([src_ids[n] for n in rows], device)
        tgt_in, _ = pad_batch([[BOS, *tgt_ids[n]] for n in rows], device)
        attention = loaded.model.teacher_force(src, src_lengths, tgt_in).attention  # (B, T+1, S)
        for b, n in enumerate(rows):
            weights = attention[b, : len(tgt_ids[n]) + 1, : len(src_ids[n])].float().cpu().numpy()
            pairs[n] = pairs[n]._replace(attention=weights[:-1], eos=weights[-1])
    return pairs


@torch.inference_mode()
def translation_attention(
    loaded: LoadedModel,
    src_lines: Sequence[str],
    cfg: DecodeConfig,
    batch_size: int = 64,
    shortlist: ShortlistSetting | None = None,
) -> list[PairAttention]:
    """Translate each line (greedy or beam, by cfg) and keep the best hypothesis's attention, in order.

    Lines are not cut into pieces as `nmt translate` cuts over-long ones: an alignment needs one matrix.
    """
    sub = loaded.subword
    src_ids = sub.encode_batch(list(src_lines))
    todo = [n for n, ids in enumerate(src_ids) if ids]
    todo_ids = [src_ids[n] for n in todo]
    results = decode_ids(loaded.model, todo_ids, cfg, batch_size, shortlist) if todo else []
    pairs = [
        _empty(n + 1, s, "", sub.id_to_piece(ids), [])
        for n, (s, ids) in enumerate(zip(src_lines, src_ids, strict=True))
    ]
    for n, nbest in zip(todo, results, strict=True):
        best = nbest[0]
        weights = best.attention.float().cpu().numpy()  # (T, S), plus the EOS row when finished
        pairs[n] = pairs[n]._replace(
            tgt=sub.decode(best.tokens),
            tgt_pieces=sub.id_to_piece(best.tokens),
            attention=weights[: len(best.tokens)],
            eos=weights[len(best.tokens)] if best.finished else None,
        )
    return pairs


def align(pair: PairAttention, level: str = "word") -> LineAlignment:
    """Links (source, target) by each target word's (or piece's) most attended source word (or piece)."""
    if level == "subword":
        return LineAlignment(pair.line, alignment_from_attention(pair.attention), None)
    if not pair.src.split() or not pair.tgt.split():
        return LineAlignment(pair.line, [], None)
    for side, pieces, text in (("source", pair.src_pieces, pair.src), ("target", pair.tgt_pieces, pair.tgt)):
        if problem := word_count_mismatch(pieces, text):
            return LineAlignment(pair.line, [], f"{side}: {problem}")
    merged = merge_subwords(pair.attention, pair.src_pieces, pair.tgt_pieces)
    return LineAlignment(pair.line, alignment_from_attention(merged.weights), None)


def attention_table(pair: PairAttention, level: str = "subword") -> WordAttention:
    """What a picture shows: (rows, columns) weights with their labels, the EOS step as a last row."""
    rows, labels = pair.attention, list(pair.tgt_pieces)
    if pair.eos is not None:
        # "▁" makes the EOS step a word of its own when pieces are merged; its label is set below
        rows, labels = np.vstack([rows, pair.eos]), [*labels, "▁" + EOS_LABEL]
    if level == "word":
        table = merge_subwords(rows, pair.src_pieces, labels)
    else:
        table = WordAttention(np.asarray(rows, dtype=float), list(pair.src_pieces), labels)
    if pair.eos is not None:
        table.tgt_words[-1] = EOS_LABEL
    return table


def sweep(
    loaded: LoadedModel,
    src_lines: Sequence[str],
    refs: Sequence[str],
    settings: Sequence[DecodeConfig],
    batch_size: int = 64,
    shortlist: ShortlistSetting | None = None,
) -> list[SweepRow]:
    """Translate the lines once per decoding setting: BLEU, length ratio, empty outputs, seconds."""
    rows = []
    for cfg in settings:
        began = time.perf_counter()
        hyps = [p.tgt for p in translation_attention(loaded, src_lines, cfg, batch_size, shortlist)]
        seconds = time.perf_counter() - began
        bleu = corpus_scores(hyps, [list(refs)], ("bleu",))[0]
        empty = sum(1 for s, h in zip(src_lines, hyps, strict=True) if s.strip() and not h.strip())
        lp = None if cfg.beam_size == 1 else cfg.length_penalty
        rows.append(
            SweepRow(cfg.beam_size, lp, bleu.score, bleu.ratio or 0.0, empty, seconds, bleu.signature)
        )
    return rows
