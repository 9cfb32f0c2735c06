"""`nmt translate`: a model file, lines in, results out."""

from __future__ import annotations

import io
import json
from pathlib import Path

import typer

from nmt_cli.cli_base import set_threads, write_stdout
from nmt_cli.errors import ConfigError

FORMATS = ("text", "jsonl")


def _decode_config(beam_size: int, length_penalty: float, max_len_a: float, max_len_b: int, n_best: int):  # noqa: ANN202
    from nmt_cli.config import DecodeConfig

    return DecodeConfig(
        beam_size=beam_size,
        length_penalty=length_penalty,
        max_len_a=max_len_a,
        max_len_b=max_len_b,
        n_best=n_best,
    )


def _format(t, fmt: str, signature: str, with_attention: bool) -> str:  # noqa: ANN001
    if fmt == "text":
        return t.hyp + "\n"
    record = {
        "line": t.line,
        "src": t.src,
        "hyp": t.hyp,
        "score": t.score,
        "token_log_probs": [round(x, 4) for x in t.token_log_probs],
        "nbest": [{"hyp": h, "score": s} for h, s in t.nbest],
        "signature": signature,
    }
    if with_attention:
        record.update(src_pieces=t.src_pieces, hyp_pieces=t.hyp_pieces, attention=t.attention)
    return json.dumps(record, ensure_ascii=False) + "\n"


def translate(
    model: Path = typer.Option(..., "-m", "--model", help="A model.nmt file."),
    input_file: str = typer.Argument("-", metavar="[FILE|-]", help="Source text; '-' or nothing: stdin."),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Write here (atomically) instead of stdout."
    ),
    beam_size: int = typer.Option(5, "--beam-size", "-b", help="1 is greedy search."),
    batch_size: int = typer.Option(64, help="Sentences per batch."),
    length_penalty: float = typer.Option(1.0, "--length-penalty", "--alpha", help="score / length**alpha."),
    max_len_a: float = typer.Option(1.5, help="Output cap per sentence: a * source length + b."),
    max_len_b: int = typer.Option(10, help="Output cap per sentence: a * source length + b."),
    n_best: int = typer.Option(1, help="Hypotheses per line in JSONL output."),
    max_input_tokens: int = typer.Option(250, help="Longer lines are translated in pieces, with a warning."),
    fmt: str = typer.Option("text", "--format", help="text or jsonl."),
    with_attention: bool = typer.Option(False, "--with-attention", help="JSONL: add pieces and attention."),
    threads: int = typer.Option(0, help="Torch threads (0: OMP_NUM_THREADS or all cores)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No decoding signature or timing on stderr."),
) -> None:
    """Translate FILE or stdin: exactly one output line per input line, in order."""
    import time

    from nmt_cli.checkpoint import load_model
    from nmt_cli.console import console, setup_logging
    from nmt_cli.textio import atomic_write, open_binary, stream_chunks
    from nmt_cli.translate import decode_signature, translate_lines

    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if batch_size < 1 or max_input_tokens < 1:
        raise ConfigError("--batch-size and --max-input-tokens must be at least 1")
    setup_logging(quiet=quiet)
    set_threads(threads)
    cfg = _decode_config(beam_size, length_penalty, max_len_a, max_len_b, n_best)
    loaded = load_model(model)
    signature = decode_signature(loaded, cfg)
    if not quiet:
        console.print(signature, markup=False, highlight=False)
    began, count = time.time(), 0
    sink = io.BytesIO() if output else None
    with open_binary(input_file) as stream:
        chunks = stream_chunks(stream, input_file, batch_size * 8)
        for t in translate_lines(chunks, loaded, cfg, batch_size, max_input_tokens, with_attention):
            text = _format(t, fmt, signature, with_attention)
            count += 1
            if sink is not None:
                sink.write(text.encode("utf-8"))
            else:
                write_stdout(text)
    if output is not None and sink is not None:
        with atomic_write(output) as f:
            f.write(sink.getvalue())
    if not quiet:
        seconds = time.time() - began
        console.print(
            f"translated {count} lines in {seconds:.2f}s ({count / max(seconds, 1e-9):.1f} lines/s)",
            highlight=False,
        )
