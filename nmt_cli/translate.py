"""translate_lines(): N lines in, N translations out, in order; empty in gives empty out."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch

from nmt_cli import __version__, cpu
from nmt_cli.checkpoint import LoadedModel
from nmt_cli.config import DecodeConfig
from nmt_cli.decode import ShortlistSetting, decode_ids, length_sorted_chunks, pad_batch
from nmt_cli.errors import ConfigError
from nmt_cli.model import Seq2Seq, device_of
from nmt_cli.search import Hypothesis
from nmt_cli.shortlist import LexicalTable, OutputRows
from nmt_cli.subword import BOS, EOS

log = logging.getLogger(__name__)


class Translation(NamedTuple):
    line: int  # 1-based input line number
    src: str
    hyp: str
    score: float | None  # length-normalised log-probability of the best hypothesis; None for empty input
    # (text, score, finished), best first: those that ended with EOS by score, then those cut at the
    # length cap by score (a complete translation beats a cut one; the top-1 never depends on n_best)
    nbest: list[tuple[str, float, bool]]
    token_log_probs: list[float]
    src_pieces: list[str]
    hyp_pieces: list[str]
    attention: list[list[float]] | None  # (len(hyp_pieces) + 1 for EOS) x len(src_pieces)


class _Job(NamedTuple):
    """What every chunk of one translate_lines call shares."""

    loaded: LoadedModel
    cfg: DecodeConfig
    batch_size: int
    max_input_tokens: int
    with_attention: bool
    shortlist: ShortlistSetting | None


def decode_signature(loaded: LoadedModel, cfg: DecodeConfig) -> str:
    """Which model and search settings produced a translation, in sacrebleu's signature style."""
    search = "greedy" if cfg.beam_size == 1 else "beam"
    lp = f"{cfg.length_penalty}" + ("gnmt" if cfg.length_penalty_type == "gnmt" else "")
    int8 = _int8_label(loaded.model)
    unk = "|unk:ban" if cfg.ban_unk else ""
    lex = LexicalTable.from_tensors(loaded.extras)
    shortlist = f"{cfg.shortlist}+{len(lex.frequent)}" if cfg.shortlist and lex is not None else "no"
    return (
        f"decode|model:{loaded.digest}|search:{search}|beam:{cfg.beam_size}|lp:{lp}"
        f"|maxlen:{cfg.max_len_a}x+{cfg.max_len_b}{unk}|int8:{int8 or 'no'}"
        f"|shortlist:{shortlist}|kernels:{cpu.kernels(loaded.model)}|nmt:{__version__}"
    )


def shortlist_setting(loaded: LoadedModel, cfg: DecodeConfig) -> ShortlistSetting | None:
    """The model's lexical table cut to cfg.shortlist entries per source piece; None when not asked for."""
    if not cfg.shortlist:
        return None
    lex = LexicalTable.from_tensors(loaded.extras)
    if lex is None:
        raise ConfigError("this model file has no shortlist table; add one with `nmt shortlist`")
    if cfg.shortlist > lex.table.size(1):
        raise ConfigError(
            f"--shortlist {cfg.shortlist} is more than the table's {lex.table.size(1)} per piece"
        )
    return ShortlistSetting(lex, cfg.shortlist, OutputRows(loaded.model.generator))


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
    """One Translation per input line, chunk by chunk, so streamed input is answered as it arrives.

    The first batch of the first chunk goes out on its own: the first line appears after one batch,
    not after a whole chunk (batches are length-sorted inside a chunk; results never depend on it).
    """
    job = _Job(loaded, cfg, batch_size, max_input_tokens, with_attention, shortlist_setting(loaded, cfg))
    line_no = 0
    for n, chunk in enumerate(chunks):
        parts = [chunk[:batch_size], chunk[batch_size:]] if n == 0 else [chunk]
        for part in filter(None, parts):
            yield from _translate_chunk(part, line_no, job)
            line_no += len(part)


def _segments(lines: list[str], first: int, job: _Job) -> tuple[list[list[int]], list[int]]:
    """Source ids to decode and the line each came from; empty lines have none, long ones several."""
    segments: list[list[int]] = []
    owner: list[int] = []
    for i, ids in enumerate(job.loaded.subword.encode_batch(lines)):
        if len(ids) > job.max_input_tokens:
            pieces = -(-len(ids) // job.max_input_tokens)
            limit = job.max_input_tokens
            log.warning(
                "line %d: %d subwords, over --max-input-tokens %d; translated in %d pieces",
                first + i + 1,
                len(ids),
                limit,
                pieces,
            )
        for piece in split_long(ids, job.max_input_tokens) if ids else []:
            segments.append(piece)
            owner.append(i)
    return segments, owner


def _translate_chunk(lines: list[str], first: int, job: _Job) -> Iterator[Translation]:
    segments, owner = _segments(lines, first, job)
    with torch.inference_mode():
        results = (
            decode_ids(job.loaded.model, segments, job.cfg, job.batch_size, job.shortlist) if segments else []
        )
    per_line: list[list[tuple[list[int], list[Hypothesis]]]] = [[] for _ in lines]
    for seg, i, nbest in zip(segments, owner, results, strict=True):
        per_line[i].append((seg, nbest))
    for i, line in enumerate(lines):
        yield _assemble(first + i + 1, line, per_line[i], job)


def _assemble(
    line_no: int, src: str, parts: list[tuple[list[int], list[Hypothesis]]], job: _Job
) -> Translation:
    """Join the translations of a line's segments (one segment unless the line was over-long)."""
    sub = job.loaded.subword
    if not parts:
        return Translation(line_no, src, "", None, [], [], [], [], None)
    tokens = [t for _, nbest in parts for t in nbest[0].tokens]
    score = sum(nbest[0].score for _, nbest in parts)
    nbest = (
        [(sub.decode(h.tokens), h.score, h.finished) for h in parts[0][1]]
        if len(parts) == 1
        else [(sub.decode(tokens), score, all(nb[0].finished for _, nb in parts))]
    )
    src_ids = [t for seg, _ in parts for t in seg]
    attention = None
    if job.with_attention and len(parts) == 1:
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


class PairScore(NamedTuple):
    line: int  # 1-based
    log_prob: float | None  # log p(target | source), EOS included; None when the source is empty
    token_log_probs: list[float]  # one per target piece, then one for EOS
    tgt_pieces: list[str]


@torch.inference_mode()
def force_decode(
    model: torch.nn.Module, src_ids: list[list[int]], tgt_ids: list[list[int]], batch_size: int = 64
) -> list[list[float]]:
    """Token log-probs of each given target (its pieces, then EOS) under teacher forcing, in input order."""
    assert all(src_ids), "empty sources are skipped by the caller"
    results: list[list[float]] = [[] for _ in src_ids]
    for chunk in length_sorted_chunks([len(s) for s in src_ids], batch_size):
        device = device_of(model)
        src, src_lengths = pad_batch([src_ids[i] for i in chunk], device)
        tgt_in, _ = pad_batch([[BOS, *tgt_ids[i]] for i in chunk], device)
        tgt_out, _ = pad_batch([[*tgt_ids[i], EOS] for i in chunk], device)
        hidden = model.teacher_force(src, src_lengths, tgt_in).hidden  # (B, T+1, H)
        # one step at a time through the output layer: (B, V) at once instead of (B, T+1, V)
        picked = [
            model.log_probs(hidden[:, t]).gather(1, tgt_out[:, t : t + 1]) for t in range(hidden.size(1))
        ]
        token_log_probs = torch.cat(picked, dim=1)  # (B, T+1)
        for b, i in enumerate(chunk):
            results[i] = token_log_probs[b, : len(tgt_ids[i]) + 1].tolist()
    return results


def score_lines(
    loaded: LoadedModel, src_lines: list[str], tgt_lines: list[str], batch_size: int = 64
) -> list[PairScore]:
    """Each target line's log-probability given its source line; an empty source gets no score."""
    sub = loaded.subword
    src_ids, tgt_ids = sub.encode_batch(src_lines), sub.encode_batch(tgt_lines)
    todo = [n for n, ids in enumerate(src_ids) if ids]
    if len(todo) < len(src_ids):
        empty = [n + 1 for n, ids in enumerate(src_ids) if not ids]
        log.warning("%d empty source lines (first: line %d) get no score", len(empty), empty[0])
    scores = force_decode(loaded.model, [src_ids[n] for n in todo], [tgt_ids[n] for n in todo], batch_size)
    per_line: list[list[float] | None] = [None] * len(src_ids)
    for n, token_log_probs in zip(todo, scores, strict=True):
        per_line[n] = token_log_probs
    return [
        PairScore(n + 1, None if lp is None else sum(lp), lp or [], sub.id_to_piece(tgt_ids[n]))
        for n, lp in enumerate(per_line)
    ]


def for_decoding(loaded: LoadedModel, int8: bool) -> LoadedModel:
    """The loaded model as decoding will run it: with int8 LSTM and Linear layers when asked."""
    if not int8:
        return loaded
    if not cpu.covered(loaded.model):
        c = loaded.config
        raise ConfigError(
            "--int8 covers models with an LSTM decoder and attention; this one has a "
            f"{c.decoder_cell.upper()} decoder and {c.attention} attention: translate it without --int8"
        )
    if cpu.kernels(loaded.model) != "cpu":
        raise ConfigError(
            f"--int8 is a CPU speed-up: it needs the model on the CPU and {cpu.OFF_SWITCH} unset"
        )
    from nmt_cli.cpu.int8 import int8_dynamic

    return loaded._replace(model=int8_dynamic(loaded.model))


def _int8_label(model: Seq2Seq) -> str | None:
    """What --int8 made of the model, for the decoding signature; None without int8 layers."""
    if cpu.kernels(model) != "cpu":
        return None
    from nmt_cli.cpu.int8 import int8_label

    return int8_label(model)
