"""`nmt prepare` and `nmt subword`: corpus checks, subword model training, encoding and decoding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from nmt_cli.cli_base import write_stdout
from nmt_cli.errors import InputError


def prepare(
    src: Path = typer.Option(..., "--src", help="Source side of the training corpus."),
    tgt: Path = typer.Option(..., "--tgt", help="Target side of the training corpus."),
    out: Path = typer.Option(..., "-o", "--out", help="Directory for spm.model and prepare.json."),
    vocab_size: int = typer.Option(8000, help="Subword vocabulary size (joint)."),
    model_type: str = typer.Option("unigram", help="SentencePiece model type: unigram, bpe, char, word."),
    character_coverage: float = typer.Option(1.0, help="Share of characters the model must cover."),
    as_json: bool = typer.Option(False, "--json", help="Print the corpus report as JSON."),
) -> None:
    """Check a parallel corpus and train one joint SentencePiece model on both sides."""
    from nmt_cli.config import SubwordConfig
    from nmt_cli.prepare import prepare_corpus

    cfg = SubwordConfig(vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage)
    report = prepare_corpus(src, tgt, out, cfg)
    write_stdout(json.dumps(report, ensure_ascii=False) + "\n" if as_json else _report_text(report))


def _report_text(report: dict[str, Any]) -> str:
    corpus, sub = report["corpus"], report["subword"]
    return (
        f"corpus\t{corpus['lines']} line pairs, {corpus['empty']} with an empty side, "
        f"{corpus['identical']} identical, {corpus['long']} long\n"
        f"subword\t{sub['model']} ({sub['model_type']}, vocab {sub['vocab_size']}, {sub['seconds']} s)\n"
    )


def subword_encode(
    model: Path = typer.Option(..., "-m", "--model", help="spm.model, or a model.nmt (its subword model)."),
    input_file: str = typer.Argument("-", metavar="[FILE|-]", help="Text to encode; '-' or nothing: stdin."),
    ids: bool = typer.Option(False, "--ids", help="Print ids instead of pieces."),
) -> None:
    """Text -> space-separated subword pieces (or ids), one line per line."""
    from nmt_cli.checkpoint import load_subword
    from nmt_cli.textio import open_binary, stream_chunks

    sub = load_subword(model)
    with open_binary(input_file) as stream:
        for chunk in stream_chunks(stream, input_file, 1000):
            rows = sub.encode_batch(chunk) if ids else [sub.pieces(line) for line in chunk]
            write_stdout("".join(" ".join(map(str, row)) + "\n" for row in rows))


def subword_decode(
    model: Path = typer.Option(..., "-m", "--model", help="spm.model, or a model.nmt (its subword model)."),
    input_file: str = typer.Argument(
        "-", metavar="[FILE|-]", help="Pieces to decode; '-' or nothing: stdin."
    ),
    ids: bool = typer.Option(False, "--ids", help="Input lines are ids, not pieces."),
) -> None:
    """Space-separated pieces (or ids) -> text, one line per line."""
    from nmt_cli.checkpoint import load_subword
    from nmt_cli.textio import open_binary, stream_chunks

    sub = load_subword(model)
    line_no = 0  # chunks of a stream have any size: count lines, not chunks
    with open_binary(input_file) as stream:
        for chunk in stream_chunks(stream, input_file, 1000):
            out = []
            for line in chunk:
                line_no += 1
                if ids:
                    out.append(sub.decode(_ids(line, sub.vocab_size, input_file, line_no)))
                else:
                    out.append(sub.decode_pieces(line.split()))
            write_stdout("".join(text + "\n" for text in out))


def _ids(line: str, vocab_size: int, path: str, line_no: int) -> list[int]:
    """The integer ids of a line, each one of the vocabulary's."""
    try:
        ids = [int(t) for t in line.split()]
    except ValueError:
        raise InputError("not a list of integer ids", path, line_no) from None
    if bad := [i for i in ids if not 0 <= i < vocab_size]:
        raise InputError(f"id {bad[0]} is outside the vocabulary (0 to {vocab_size - 1})", path, line_no)
    return ids
