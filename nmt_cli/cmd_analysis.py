"""`nmt align`, `nmt attention`, `nmt curves`, `nmt info`: what a model attends to, and what it is."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import typer

from nmt_cli.cli_base import DEVICE_HELP, resolve_device, set_threads, write_stdout
from nmt_cli.errors import ConfigError, InputError

LEVELS = ("word", "subword")


def align(
    model: Path = typer.Option(..., "-m", "--model", help="A model.nmt file."),
    src: Path = typer.Option(..., "--src", help="Source lines."),
    tgt: Path | None = typer.Option(
        None, "--tgt", help="Reference lines: align them by forced decoding (else the model's translation)."
    ),
    gold: Path | None = typer.Option(None, "--gold", help="Gold Pharaoh alignments of src and --tgt: AER."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the alignments here."),
    beam_size: int = typer.Option(1, "--beam-size", "-b", help="Without --tgt: 1 is greedy search."),
    level: str = typer.Option("word", "--level", help="word (whitespace tokens) or subword (pieces)."),
    batch_size: int = typer.Option(64, help="Sentences per batch."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: alignments, AER, settings."),
    threads: int = typer.Option(0, help="Torch threads (0: OMP_NUM_THREADS or all cores)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Pharaoh word alignments (i-j, one line per input line) from attention, and AER against gold."""
    from nmt_cli import analysis
    from nmt_cli.console import console
    from nmt_cli.textio import read_lines, read_parallel, write_text_atomic

    _check_choice("--level", level, LEVELS)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if gold is not None and (tgt is None or level != "word"):
        raise ConfigError(
            "--gold needs --tgt and word level: gold alignments link the source to the reference"
        )
    src_lines, tgt_lines = read_parallel(src, tgt) if tgt is not None else (read_lines(src), None)
    sure = _read_gold(gold, src, src_lines, tgt_lines) if gold is not None and tgt_lines is not None else None
    set_threads(threads)
    pairs, record = _attention_of(model, src_lines, tgt_lines, beam_size, batch_size, device)
    lines = [analysis.align(pair, level) for pair in pairs]
    for a in lines:
        if a.problem:
            console.print(
                f"nmt: warning: {src}:{a.line}: {a.problem}; no links", markup=False, highlight=False
            )
    alignments = [_pharaoh(a.links) for a in lines]
    aer = _aer([a.links for a in lines], sure, gold, console) if sure is not None else None
    if output is not None:
        write_text_atomic(output, "".join(a + "\n" for a in alignments))
    if as_json:
        record.update(
            level=level,
            lines=len(lines),
            aer=aer,
            gold=str(gold) if gold is not None else None,
            unaligned_lines=[a.line for a in lines if a.problem],
            alignments=alignments,
        )
        write_stdout(json.dumps(record, ensure_ascii=False) + "\n")
    elif output is None:
        write_stdout("".join(a + "\n" for a in alignments))


def _attention_of(
    model: Path,
    src_lines: list[str],
    tgt_lines: list[str] | None,
    beam_size: int,
    batch_size: int,
    device: str,
) -> tuple[list, dict[str, Any]]:
    """Forced attention on the references, or the attention of translations (signature on stderr)."""
    from nmt_cli import analysis
    from nmt_cli.checkpoint import load_model
    from nmt_cli.config import DecodeConfig
    from nmt_cli.console import console
    from nmt_cli.translate import decode_signature

    loaded = load_model(model, device=resolve_device(device))
    analysis.require_attention(loaded, str(model), "attention to align")
    if tgt_lines is not None:
        pairs = analysis.forced_attention(loaded, src_lines, tgt_lines, batch_size)
        return pairs, {"model": loaded.digest, "mode": "forced", "decode": None}
    cfg = DecodeConfig(beam_size=beam_size)
    signature = decode_signature(loaded, cfg)
    console.print(signature, markup=False, highlight=False)
    pairs = analysis.translation_attention(loaded, src_lines, cfg, batch_size)
    mode = "greedy" if beam_size == 1 else "beam"
    return pairs, {"model": loaded.digest, "mode": mode, "decode": signature, "hyps": [p.tgt for p in pairs]}


def _pharaoh(links: list) -> str:  # noqa: ANN001
    from nmt_cli.align import format_pharaoh

    return format_pharaoh(links)


def _read_gold(gold: Path, src: Path, src_lines: list[str], tgt_lines: list[str]) -> list[set]:
    """Sure links per line; a link outside its sentence pair is an error naming the gold line."""
    from nmt_cli.align import check_links, parse_pharaoh
    from nmt_cli.textio import read_lines

    gold_lines = read_lines(gold)
    if len(gold_lines) != len(src_lines):
        raise InputError(
            f"{gold} has {len(gold_lines)} lines but {src} has {len(src_lines)}: "
            "gold alignments need one line per sentence pair",
            str(gold if len(gold_lines) < len(src_lines) else src),
            min(len(gold_lines), len(src_lines)) + 1,
        )
    sure = []
    for n, (line, s, t) in enumerate(zip(gold_lines, src_lines, tgt_lines, strict=True), start=1):
        links = parse_pharaoh(line, str(gold), n)
        check_links(links, len(s.split()), len(t.split()), str(gold), n)
        sure.append(links)
    return sure


def _aer(predicted: list, sure: list, gold: Path | None, console: Any) -> float:  # noqa: ANN001
    from nmt_cli.align import alignment_error_rate

    aer = alignment_error_rate(predicted, sure)
    console.print(f"AER {aer:.4f} against {gold} ({len(sure)} lines)", markup=False, highlight=False)
    return aer


def attention(
    model: Path = typer.Option(..., "-m", "--model", help="A model.nmt file."),
    sentence: str | None = typer.Argument(None, help="The source sentence (or use --input and --lines)."),
    input_file: Path | None = typer.Option(None, "--input", help="Take the sentences from this file."),
    lines: str = typer.Option("1", "--lines", "--line", help="1-based lines of --input, e.g. 1,5,9."),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="PNG, SVG or PDF (one per line: NAME-LINE.png); none: the terminal."
    ),
    beam_size: int = typer.Option(1, "--beam-size", "-b", help="1 is greedy search; else the beam's best."),
    level: str = typer.Option("subword", "--level", help="subword (pieces) or word (pieces merged)."),
    color: bool = typer.Option(
        True, "--color/--no-color", help="Terminal heatmap in colour (on a terminal) or shade characters."
    ),
    threads: int = typer.Option(0, help="Torch threads (0: OMP_NUM_THREADS or all cores)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Draw the attention of translations: source across, target down, one picture per sentence."""
    from nmt_cli import analysis
    from nmt_cli.checkpoint import load_model
    from nmt_cli.config import DecodeConfig
    from nmt_cli.console import setup_logging

    setup_logging()
    _check_choice("--level", level, LEVELS)
    chosen = _chosen_sentences(sentence, input_file, lines)
    set_threads(threads)
    loaded = load_model(model, device=resolve_device(device))
    analysis.require_attention(loaded, str(model), "attention to draw")
    pairs = analysis.translation_attention(loaded, [s for _, s in chosen], DecodeConfig(beam_size=beam_size))
    for (n, _), pair in zip(chosen, pairs, strict=True):
        header = pair.tgt if n is None else f"line {n}: {pair.tgt}"
        path = _image_path(output, n, len(chosen) > 1) if output is not None else None
        write_stdout(_show(analysis.attention_table(pair, level), pair.tgt, header, path, color))


def _chosen_sentences(
    sentence: str | None, input_file: Path | None, lines: str
) -> list[tuple[int | None, str]]:
    """(line number or None, sentence) for the argument or each chosen line of the file; none empty."""
    from nmt_cli.textio import read_lines

    if (sentence is None) == (input_file is None):
        raise ConfigError("give either a sentence or --input FILE --lines N[,N...]")
    if sentence is not None:
        chosen: list[tuple[int | None, str]] = [(None, sentence)]
    else:
        text = read_lines(input_file)
        chosen = []
        for n in _line_numbers(lines):
            if n > len(text):
                raise InputError(f"line {n} is beyond the file's {len(text)} lines", str(input_file), n)
            chosen.append((n, text[n - 1]))
    for n, s in chosen:
        if not s.strip():
            raise InputError("the sentence is empty: nothing to align", str(input_file) if n else None, n)
    return chosen


def _line_numbers(lines: str) -> list[int]:
    try:
        numbers = [int(part) for part in lines.split(",") if part.strip()]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1:
        raise ConfigError(f"--lines takes 1-based line numbers such as 1,5,9, got {lines!r}")
    return list(dict.fromkeys(numbers))  # each once, in the order given


def _image_path(output: Path, line: int | None, several: bool) -> Path:
    """output itself, or with the line number before the suffix when several lines are drawn."""
    from nmt_cli.plot import image_format

    image_format(output)  # a bad suffix fails before any translating is done
    return output.with_name(f"{output.stem}-{line}{output.suffix}") if several else output


def _show(table: Any, hyp: str, header: str, path: Path | None, color: bool) -> str:
    """Draw to a file (and name it) or render the heatmap as text: colour only on a terminal."""
    from rich.console import Console

    from nmt_cli import plot

    if path is not None:
        plot.save_attention(table.weights, table.src_words, table.tgt_words, path, title=hyp)
        return f"{header}\n{path}\n"
    color = color and sys.stdout.isatty()
    buffer = io.StringIO()
    Console(file=buffer, width=200, force_terminal=color, color_system="truecolor" if color else None).print(
        plot.terminal_heatmap(table.weights, table.src_words, table.tgt_words, color=color)
    )
    return f"{header}\n{buffer.getvalue()}"


def curves(
    run_dir: Path = typer.Argument(..., help="A training run directory (or its log.jsonl)."),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="PNG, SVG or PDF; default RUN/curves.png."
    ),
) -> None:
    """Plot a run's training log: loss, dev BLEU and learning rate against steps and minutes."""
    from nmt_cli import plot
    from nmt_cli.textio import read_jsonl

    log = run_dir / "log.jsonl" if run_dir.is_dir() else run_dir
    records = read_jsonl(log)
    if bad := [n for n, r in enumerate(records, start=1) if not isinstance(r, dict)]:
        raise InputError(f"record {bad[0]} is not a JSON object", str(log))
    output = output if output is not None else (log.parent / "curves.png")
    plot.save_curves(records, output)
    write_stdout(f"{output}\n")


def _check_choice(option: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {option} {value!r}; valid: {', '.join(valid)}")
