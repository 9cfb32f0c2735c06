"""translate_lines(): N lines in, N translations out, in order; empty in gives empty out."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch

from nmt_cli import __version__
from nmt_cli.checkpoint import LoadedModel
from nmt_cli.config import DecodeConfig
from nmt_cli.decode import decode_ids
from nmt_cli.search import Hypothesis

log = logging.getLogger(__name__)


class Translation(NamedTuple):
    line: int  # 1-based input line number
    src: str
    hyp: str
    score: float | None  # length-normalised log-probability of the best hypothesis; None for empty input
    nbest: list[tuple[str, float]]  # (text, score), best first
    token_log_probs: list[float]
    src_pieces: list[str]
    hyp_pieces: list[str]
    attention: list[list[float]] | None  # (len(hyp_pieces) + 1 for EOS) x len(src_pieces)


def decode_signature(loaded: LoadedModel, cfg: DecodeConfig, int8: bool = False) -> str:
    """Which model and search settings produced a translation, in sacrebleu's signature style."""
    search = "greedy" if cfg.beam_size == 1 else "beam"
    lp = f"{cfg.length_penalty}" + ("gnmt" if cfg.length_penalty_type == "gnmt" else "")
    return (
        f"decode|model:{loaded.digest}|search:{search}|beam:{cfg.beam_size}|lp:{lp}"
        f"|maxlen:{cfg.max_len_a}x+{cfg.max_len_b}|int8:{'yes' if int8 else 'no'}|nmt:{__version__}"
    )


def split_long(ids: list[int], limit: int) -> list[list[int]]:
    """An over-long source cut at subword boundaries into pieces of at most `limit` ids."""
    return [ids[i : i + limit] for i in range(0, len(ids), limit)] or [[]]


def translate_lines(
    chunks: Iterable[list[str]],
    loaded: LoadedModel,
    cfg: DecodeConfig,
    batch_size: int = 64,
    max_input_tokens: int = 250,
    with_attention: bool = False,
) -> Iterator[Translation]:
    """One Translation per input line, chunk by chunk, so streamed input is answered as it arrives."""
    line_no = 0
    for chunk in chunks:
        yield from _translate_chunk(chunk, line_no, loaded, cfg, batch_size, max_input_tokens, with_attention)
        line_no += len(chunk)


def _translate_chunk(
    lines: list[str],
    first: int,
    loaded: LoadedModel,
    cfg: DecodeConfig,
    batch_size: int,
    max_input_tokens: int,
    with_attention: bool,
) -> Iterator[Translation]:
    sub = loaded.subword
    encoded = sub.encode_batch(lines)
    # every non-empty line becomes one or more segments; empty lines skip the model entirely
    segments: list[list[int]] = []
    owner: list[int] = []
    for i, ids in enumerate(encoded):
        if not ids:
            continue
        if len(ids) > max_input_tokens:
            log.warning(
                "line %d: %d subwords, over --max-input-tokens %d; translated in %d pieces",
                first + i + 1,
                len(ids),
                max_input_tokens,
                -(-len(ids) // max_input_tokens),
            )
        for piece in split_long(ids, max_input_tokens):
            segments.append(piece)
            owner.append(i)
    with torch.inference_mode():
        results = decode_ids(loaded.model, segments, cfg, batch_size) if segments else []
    per_line: list[list[tuple[list[int], list[Hypothesis]]]] = [[] for _ in lines]
    for seg, i, nbest in zip(segments, owner, results, strict=True):
        per_line[i].append((seg, nbest))
    for i, line in enumerate(lines):
        yield _assemble(first + i + 1, line, per_line[i], loaded, with_attention)


def _assemble(
    line_no: int,
    src: str,
    parts: list[tuple[list[int], list[Hypothesis]]],
    loaded: LoadedModel,
    with_attention: bool,
) -> Translation:
    """Join the translations of a line's segments (one segment unless the line was over-long)."""
    sub = loaded.subword
    if not parts:
        return Translation(line_no, src, "", None, [], [], [], [], None)
    tokens = [t for _, nbest in parts for t in nbest[0].tokens]
    score = sum(nbest[0].score for _, nbest in parts)
    nbest = (
        [(sub.decode(h.tokens), h.score) for h in parts[0][1]]
        if len(parts) == 1
        else [(sub.decode(tokens), score)]
    )
    src_ids = [t for seg, _ in parts for t in seg]
    attention = None
    if with_attention and len(parts) == 1:
        attention = [[round(float(x), 4) for x in row] for row in parts[0][1][0].attention.tolist()]
    return Translation(
        line_no,
        src,
        sub.decode(tokens),
        score,
        nbest,
        [lp for _, nb in parts for lp in nb[0].token_log_probs],
        sub.id_to_piece(src_ids),
        sub.id_to_piece(tokens),
        attention,
    )
