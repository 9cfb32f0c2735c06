"""`nmt translate`, `nmt score` and `nmt shortlist`: a model file, lines in, results out."""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from nmt_cli.cli_base import DEVICE_HELP, resolve_device, set_threads, write_stdout
from nmt_cli.errors import ConfigError

FORMATS = ("text", "jsonl")
# JSON allows these raw inside strings, but str.splitlines() and some editors break lines at them
LINE_BREAKS_IN_JSON = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"}


def _json_line(record: dict[str, Any]) -> str:
    """One JSON object on one line, whatever line-breaking characters its strings hold."""
    text = json.dumps(record, ensure_ascii=False)
    for char, escaped in LINE_BREAKS_IN_JSON.items():
        text = text.replace(char, escaped)
    return text + "\n"


@contextmanager
def _collector_skips_what_exists() -> Iterator[None]:
    """The objects that exist now (torch, the model) are left out of garbage collection meanwhile.

    They live to the end anyway, and each full collection would scan them all again while decoding
    makes many short-lived objects, a cost that shows in fast int8 decoding (docs/performance.md).
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()  # as before for a caller that goes on (tests, other programs)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")


def _format(t, fmt: str, signature: str, with_attention: bool) -> str:  # noqa: ANN001
    if fmt == "text":
        return t.hyp.replace("\n", " ") + "\n"  # only '\n' ends a line, so none may be inside one
    record = {
        "line": t.line,
        "src": t.src,
        "hyp": t.hyp,
        "score": t.score,
        "token_log_probs": [round(x, 4) for x in t.token_log_probs],
        "nbest": [{"hyp": h, "score": s, "finished": f} for h, s, f in t.nbest],
        "signature": signature,
    }
    if with_attention:
        record.update(src_pieces=t.src_pieces, hyp_pieces=t.hyp_pieces, attention=t.attention)
    return _json_line(record)


def translate(
    model: Path = typer.Option(..., "-m", "--model", help="A model.nmt file."),
    input_file: str = typer.Argument("-", metavar="[FILE|-]", help="Source text; '-' or nothing: stdin."),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Write here (atomically) instead of stdout."
    ),
    beam_size: int = typer.Option(5, "--beam-size", "-b", help="1 is greedy search."),
    batch_size: int = typer.Option(64, help="Sentences per batch."),
    length_penalty: float = typer.Option(1.0, "--length-penalty", "--alpha", help="score / length**alpha."),
    length_penalty_type: str = typer.Option(
        "average", help="average: len**alpha; gnmt: ((5 + len) / 6)**alpha."
    ),
    max_len_a: float = typer.Option(1.5, help="Output cap per sentence: a * source length + b."),
    max_len_b: int = typer.Option(10, help="Output cap per sentence: a * source length + b."),
    n_best: int = typer.Option(1, help="Hypotheses per line in JSONL output."),
    ban_unk: bool = typer.Option(False, "--ban-unk", help="Never output the unknown piece."),
    int8: bool = typer.Option(False, "--int8", help="int8 decoder LSTM and Linear layers: faster on CPU."),
    shortlist: int = typer.Option(
        0, "--shortlist", help="Score only K table pieces per source piece (needs `nmt shortlist`)."
    ),
    max_input_tokens: int = typer.Option(250, help="Longer lines are translated in pieces, with a warning."),
    fmt: str = typer.Option("text", "--format", help="text or jsonl."),
    with_attention: bool = typer.Option(False, "--with-attention", help="JSONL: add pieces and attention."),
    threads: int = typer.Option(0, help="Torch threads (0: OMP_NUM_THREADS or all cores)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No decoding signature or timing on stderr."),
) -> None:
    """Translate FILE or stdin: exactly one output line per input line, in order."""
    from nmt_cli.cpu.process import release_start_up_code, settings_for_decoding

    settings_for_decoding()  # before torch is first imported
    import time

    from nmt_cli.checkpoint import load_model
    from nmt_cli.config import DecodeConfig
    from nmt_cli.console import console, progress, setup_logging
    from nmt_cli.translate import decode_signature, for_decoding, translate_lines

    _check_format(fmt)
    if batch_size < 1 or max_input_tokens < 1:
        raise ConfigError("--batch-size and --max-input-tokens must be at least 1")
    setup_logging(quiet=quiet)
    set_threads(threads)
    cfg = DecodeConfig(
        beam_size=beam_size,
        length_penalty=length_penalty,
        length_penalty_type=length_penalty_type,
        max_len_a=max_len_a,
        max_len_b=max_len_b,
        n_best=n_best,
        ban_unk=ban_unk,
        shortlist=shortlist,
    )
    with _output(output) as write:  # an output file that cannot be written fails here, before any work
        loaded = for_decoding(load_model(model, device=resolve_device(device)), int8)
        if with_attention:
            from nmt_cli.analysis import require_attention

            require_attention(loaded, str(model), "attention for --with-attention")
        release_start_up_code()
        signature = decode_signature(loaded, cfg)
        if not quiet:
            console.print(signature, markup=False, highlight=False)
        began = time.time()
        translations = translate_lines(
            _input_chunks(input_file, batch_size), loaded, cfg, batch_size, max_input_tokens, with_attention
        )
        # lines printed to a terminal show their own progress; a bar would only cut through them
        bar_off = quiet or (output is None and sys.stdout.isatty())
        count = 0
        with _collector_skips_what_exists(), progress(bar_off) as bar:
            task = bar.add_task("translate", total=None if bar_off else _line_count(input_file))
            texts = (_format(t, fmt, signature, with_attention) for t in translations)
            for text in _advancing(texts, bar, task):
                write(text)
                count += 1
    if not quiet:
        seconds = time.time() - began
        console.print(
            f"translated {count} lines in {seconds:.2f}s ({count / max(seconds, 1e-9):.1f} lines/s)",
            highlight=False,
        )


def _line_count(input_file: str) -> int | None:
    """Lines in a regular file (a last line without '\\n' counts); None for stdin, a pipe or a file that
    cannot be read (the translation's own reading then reports it, with its line number)."""
    path = Path(input_file)
    if input_file == "-" or not path.is_file():
        return None
    count, last = 0, b"\n"
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                count, last = count + block.count(b"\n"), block[-1:]
    except OSError:
        return None
    return count + (last != b"\n")


def _advancing(texts, bar, task):  # noqa: ANN001, ANN202 - Iterable[str], Progress, TaskID -> Iterator[str]
    """Each text as it comes; the bar moves on once the caller has written it."""
    for text in texts:
        yield text
        bar.advance(task)


def _input_chunks(input_file: str, batch_size: int):  # noqa: ANN202 - Iterator[list[str]]
    """Lines of FILE or stdin in chunks of up to 8 batches, each as soon as its lines have arrived."""
    from nmt_cli.textio import open_binary, stream_chunks

    with open_binary(input_file) as stream:
        yield from stream_chunks(stream, input_file, batch_size * 8)


@contextmanager
def _output(output: Path | None) -> Iterator[Callable[[str], object]]:
    """Where results go: stdout, each flushed as it comes; or a temporary file beside output, streamed
    and renamed into place at the end, so an error or interruption leaves no partial file."""
    if output is None:
        yield write_stdout
        return
    from nmt_cli.textio import atomic_write

    with atomic_write(output) as f:
        yield lambda text: f.write(text.encode("utf-8"))


def score(
    model: Path = typer.Option(..., "-m", "--model", help="A model.nmt file."),
    src: Path = typer.Option(..., "--src", help="Source lines."),
    tgt: Path = typer.Option(..., "--tgt", help="Target lines to score, one per source line."),
    fmt: str = typer.Option("text", "--format", help="text or jsonl."),
    batch_size: int = typer.Option(64, help="Sentence pairs per batch."),
    threads: int = typer.Option(0, help="Torch threads (0: OMP_NUM_THREADS or all cores)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No signature on stderr."),
) -> None:
    """Force-decode given translations: log p(target | source) per line, and per target piece.

    Text: `logprob<TAB>n_tokens<TAB>per-token log-probs` (space-separated; EOS counts as a token); an
    empty source line gives an empty line.
    """
    from nmt_cli.cpu.process import settings_for_decoding

    settings_for_decoding()  # before torch is first imported
    from nmt_cli import __version__
    from nmt_cli.checkpoint import load_model
    from nmt_cli.console import console, setup_logging
    from nmt_cli.textio import read_parallel
    from nmt_cli.translate import score_lines

    _check_format(fmt)
    if batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    setup_logging(quiet=quiet)
    set_threads(threads)
    src_lines, tgt_lines = read_parallel(src, tgt)
    loaded = load_model(model, device=resolve_device(device))
    signature = f"score|model:{loaded.digest}|nmt:{__version__}"
    if not quiet:
        console.print(signature, markup=False, highlight=False)
    with _collector_skips_what_exists():
        scores = score_lines(loaded, src_lines, tgt_lines, batch_size)
    for s in scores:
        per_token = [round(x, 4) for x in s.token_log_probs]
        if fmt == "jsonl":
            record = {"line": s.line, "src": src_lines[s.line - 1], "tgt": tgt_lines[s.line - 1]}
            record.update(log_prob=s.log_prob, n_tokens=len(per_token), token_log_probs=per_token)
            write_stdout(_json_line({**record, "tgt_pieces": s.tgt_pieces, "signature": signature}))
        elif s.log_prob is None:
            write_stdout("\n")
        else:
            write_stdout(f"{s.log_prob:.4f}\t{len(per_token)}\t{' '.join(map(str, per_token))}\n")


def shortlist(
    model: Path = typer.Option(..., "-m", "--model", help="A model.nmt file."),
    src: Path = typer.Option(..., "--src", help="Training corpus, source side."),
    tgt: Path = typer.Option(..., "--tgt", help="Training corpus, target side."),
    k: int = typer.Option(50, "-k", help="Target pieces kept per source piece."),
    frequent: int = typer.Option(100, "--frequent", help="Most frequent target pieces, always allowed."),
    output: Path = typer.Option(..., "-o", "--output", help="The model file with its shortlist table."),
) -> None:
    """Add a lexical shortlist table to a model file, for `nmt translate --shortlist K`."""
    import time

    from nmt_cli.checkpoint import load_model, save_model
    from nmt_cli.console import console
    from nmt_cli.shortlist import build_table, coverage
    from nmt_cli.textio import read_parallel

    if k < 1 or frequent < 0:
        raise ConfigError("-k must be at least 1 and --frequent at least 0")
    began = time.time()
    loaded = load_model(model)
    src_lines, tgt_lines = read_parallel(src, tgt)
    src_ids, tgt_ids = loaded.subword.encode_batch(src_lines), loaded.subword.encode_batch(tgt_lines)
    lex = build_table(src_ids, tgt_ids, loaded.config.vocab_size, k, frequent)
    save_model(output, loaded.model, loaded.subword, loaded.info, {**loaded.extras, **lex.to_tensors()})
    recall, size = coverage(src_ids[:2000], tgt_ids[:2000], lex, k)
    console.print(
        f"shortlist: {k} per source piece + {len(lex.frequent)} frequent, from {len(src_lines)} pairs "
        f"in {time.time() - began:.1f}s; on the first 2000 pairs it holds {100 * recall:.2f} % of the "
        f"reference pieces with {size:.0f} pieces per sentence; wrote {output}",
        highlight=False,
    )
