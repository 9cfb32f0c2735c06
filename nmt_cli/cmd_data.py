"""`nmt prepare` and `nmt subword`: corpus checks, subword model training, encoding and decoding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from nmt_cli.cli_base import write_stdout
from nmt_cli.errors import ConfigError, InputError


def prepare(
    src: Path = typer.Option(..., "--src", help="Source side of the training corpus."),
    tgt: Path = typer.Option(..., "--tgt", help="Target side of the training corpus."),
    out: Path = typer.Option(..., "-o", "--out", help="Directory for spm.model, store/ and prepare.json."),
    vocab_size: int = typer.Option(8000, help="Subword vocabulary size (joint)."),
    model_type: str = typer.Option("unigram", help="SentencePiece model type: unigram, bpe, char, word."),
    character_coverage: float = typer.Option(1.0, help="Share of characters the model must cover."),
    sample_sentences: int = typer.Option(
        1_000_000, help="Train the subword model on this many lines of both sides (a seeded sample)."
    ),
    spm: Path | None = typer.Option(
        None, "--spm", help="Encode with this subword model instead of training one (e.g. a dev set)."
    ),
    long_words: int = typer.Option(100, help="Report pairs with a side of more words than this."),
    max_ratio: float = typer.Option(
        3.0, help="Report pairs whose longer side has more than this many times the words."
    ),
    filter_: bool = typer.Option(
        False,
        "--filter",
        help="Write the pairs with none of the reported problems to OUT/NAME.filtered.EXT and prepare those.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Check a parallel corpus, train one joint SentencePiece model and encode the corpus into OUT/store/."""
    from nmt_cli.config import SubwordConfig
    from nmt_cli.console import setup_logging, working
    from nmt_cli.prepare import PrepareOptions, prepare_corpus

    setup_logging(quiet=quiet)  # the corpus report (first line numbers of each problem) goes to stderr
    if sample_sentences < 1:
        raise ConfigError(f"--sample-sentences must be at least 1, got {sample_sentences}")
    cfg = SubwordConfig(vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage)
    opts = PrepareOptions(sample_sentences, long_words, max_ratio, filter_, spm)
    with working("prepare: checking the corpus, training the subword model, encoding", quiet):
        report = prepare_corpus(src, tgt, out, cfg, opts)
    write_stdout(json.dumps(report, ensure_ascii=False) + "\n" if as_json else _report_text(report))


def _report_text(report: dict[str, Any]) -> str:
    corpus, sub, store = report["corpus"], report["subword"], report["store"]
    lines = [
        f"corpus\t{corpus['lines']} line pairs, {corpus['empty']} with an empty side, "
        f"{corpus['identical']} identical, {corpus['long']} long, {corpus['ratio']} over the length ratio, "
        f"{corpus['duplicate']} duplicates",
    ]
    if "filtered" in report:
        f = report["filtered"]
        lines.append(f"filtered\t{f['kept']} pairs kept: {f['src']} {f['tgt']}")
    lines += [
        f"subword\t{sub['model']} ({sub['model_type']}, vocab {sub['vocab_size']}, {sub['seconds']} s)",
        f"store\t{store['path']} ({store['pairs']} pairs, {store['dtype']}, {store['seconds']} s)",
    ]
    return "\n".join(lines) + "\n"


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
