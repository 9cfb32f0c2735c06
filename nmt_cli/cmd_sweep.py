"""`nmt sweep`: a grid of configurations, one budget each, as one table (rich, JSON or CSV)."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import typer

from nmt_cli.cli_base import parse_duration, set_threads, write_stdout
from nmt_cli.errors import ConfigError


def sweep(
    grid: list[str] = typer.Option(
        [], "--grid", help="key=v1,v2 (repeatable): a ModelConfig/TrainConfig field, or cell."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="TOML: [grid] key = [values], optional preset, [model], [train]."
    ),
    out: Path = typer.Option(
        Path("runs/sweep"), "-o", "--out", help="Sweep directory: cells/NAME/result.json."
    ),
    preset: str | None = typer.Option(None, "--preset", help="Recipe every cell starts from (default toy)."),
    time_budget: str | None = typer.Option(
        None, "--time-budget", help="Training wall time per cell: 60, 2m."
    ),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Training updates per cell."),
    seeds: int = typer.Option(1, "--seeds", help="Runs per grid setting (seed, seed+1, ...): mean ± sd."),
    src: Path = typer.Option(Path("data/train.en"), "--src", help="Training corpus, source side."),
    tgt: Path = typer.Option(Path("data/train.de"), "--tgt", help="Training corpus, target side."),
    dev_src: Path = typer.Option(Path("data/dev.en"), "--dev-src"),
    dev_tgt: Path = typer.Option(Path("data/dev.de"), "--dev-tgt"),
    test_src: Path | None = typer.Option(Path("data/test.en"), "--test-src"),
    test_tgt: Path | None = typer.Option(Path("data/test.de"), "--test-tgt"),
    dev_align: Path | None = typer.Option(Path("data/dev.align"), "--dev-align", help="Gold links: AER."),
    test_align: Path | None = typer.Option(Path("data/test.align"), "--test-align", help="Gold links: AER."),
    vocab_size: int = typer.Option(300, help="Subword vocabulary of the sweep's one SentencePiece model."),
    beam_size: int = typer.Option(1, "--beam-size", "-b", help="Search for dev and test BLEU (1: greedy)."),
    by_length: Path | None = typer.Option(
        None, "--by-length", help="Also draw test BLEU by source length per setting (PNG/SVG/PDF)."
    ),
    as_json: bool = typer.Option(False, "--json", help="JSON: every cell and the summary rows."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV: one summary row per grid setting."),
    threads: int = typer.Option(0, help="Torch threads (0: OMP_NUM_THREADS or all cores)."),
) -> None:
    """Train every cell of a grid under one budget; table of BLEU (95 % bootstrap CI), AER, size, speed."""
    from nmt_cli import sweep as sw
    from nmt_cli.config import DataConfig
    from nmt_cli.config import preset as preset_overrides
    from nmt_cli.console import setup_logging

    setup_logging()
    if as_json and as_csv:
        raise ConfigError("give --json or --csv, not both")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    raw = _read_toml(config) if config else {}
    parsed = sw.parse_grid(grid or raw.get("grid", {})) if (grid or raw.get("grid")) else sw.parse_grid([])
    if grid and raw.get("grid"):
        raise ConfigError("give the grid as --grid or in the TOML file, not both")
    model_over, train_over = preset_overrides(preset or raw.get("preset") or "toy")
    budget = parse_duration(time_budget)
    fixed_train = {
        **raw.get("train", {}),
        **{k: v for k, v in (("time_budget", budget), ("max_steps", max_steps)) if v},
    }
    if not (fixed_train.get("time_budget") or fixed_train.get("max_steps") or train_over.get("time_budget")):
        raise ConfigError("give each cell a budget: --time-budget or --max-steps")
    set_threads(threads)
    spec = sw.SweepSpec(
        DataConfig(str(src), str(tgt), str(dev_src), str(dev_tgt)),
        test_src=str(test_src or ""),
        test_tgt=str(test_tgt or ""),
        dev_align=str(dev_align or ""),
        test_align=str(test_align or ""),
        model=tuple(raw.get("model", {}).items()),
        train=tuple(fixed_train.items()),
        vocab_size=vocab_size,
        seeds=seeds,
        beam_size=beam_size,
    )
    results = sw.run_sweep(spec, parsed, {"model": model_over, "train": train_over}, out)
    rows = sw.summarize(results)
    if by_length is not None:
        _by_length(results, spec, out, by_length)
    if as_json:
        write_stdout(json.dumps({"cells": results, "summary": rows}, indent=1) + "\n")
    elif as_csv:
        write_stdout(_csv(rows, list(parsed)))
    else:
        _table(rows, list(parsed), seeds)


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    from nmt_cli.errors import InputError

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no such sweep file", str(path)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"not valid TOML: {e}", str(path)) from None
    if unknown := sorted(set(raw) - {"grid", "preset", "model", "train"}):
        raise ConfigError(f"unknown tables {unknown}; valid: grid, preset, model, train", str(path))
    return raw


def _measure(row: dict[str, Any], key: str, spread: str, digits: int = 1) -> str:
    if row.get(key) is None:
        return "-"
    return f"{row[key]:.{digits}f} ± {row[spread]:.{digits}f}"


def _table(rows: list[dict[str, Any]], keys: list[str], seeds: int) -> None:
    """A rich table on stdout: BLEU ± its bootstrap 95 % CI (one seed) or ± sd over seeds."""
    from rich.console import Console
    from rich.table import Table

    spread = "_ci" if seeds == 1 else "_sd"
    how = "± 95 % bootstrap CI" if seeds == 1 else f"mean ± sd of {seeds} seeds"
    table = Table(title=f"sweep: BLEU {how}", title_justify="left")
    for key in keys:
        table.add_column(key)
    for name in ("dev BLEU", "test BLEU", "test AER", "params", "tok/s", "wall s"):
        table.add_column(name, justify="right")
    for r in rows:
        aer = "-" if r["test_aer"] is None else f"{r['test_aer']:.3f}"
        table.add_row(
            *(str(r["settings"][k]) for k in keys),
            _measure(r, "dev_bleu", "dev_bleu" + spread),
            _measure(r, "test_bleu", "test_bleu" + spread),
            aer,
            f"{r['parameters']:,.0f}",
            f"{r['tokens_per_s']:,.0f}",
            f"{r['wall_s']:.0f}",
        )
    buffer = io.StringIO()
    Console(file=buffer, width=160, force_terminal=False).print(table)
    write_stdout(buffer.getvalue())


def _csv(rows: list[dict[str, Any]], keys: list[str]) -> str:
    from nmt_cli.sweep import MEASURES

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    measures = [m for measure in MEASURES for m in (measure, f"{measure}_sd")]
    writer.writerow([*keys, "seeds", *measures])
    for r in rows:
        writer.writerow([*(r["settings"][k] for k in keys), r["seeds"], *(r[m] for m in measures)])
    return buffer.getvalue()


def _by_length(results: list[dict[str, Any]], spec: Any, out: Path, path: Path) -> None:  # noqa: ANN401
    """Test BLEU by source-length bucket of each setting's first seed: one picture, a table on stderr."""
    from nmt_cli import plot
    from nmt_cli.console import console
    from nmt_cli.metrics import bleu_by_length
    from nmt_cli.textio import read_lines

    if not spec.test_src:
        raise ConfigError("--by-length needs a test set (--test-src, --test-tgt)")
    plot.image_format(path)
    refs = read_lines(spec.test_tgt)
    lengths = [len(line.split()) for line in read_lines(spec.test_src)]
    series = {
        ",".join(f"{k}={v}" for k, v in r["settings"].items()): bleu_by_length(
            read_lines(out / "cells" / r["cell"] / "test.hyp"), refs, lengths, plot.LENGTH_EDGES
        )
        for r in results
        if r["seed"] == 0
    }
    plot.save_by_length(series, path, title=f"test BLEU by source length ({spec.test_src})")
    console.print(plot.by_length_table(series))
    console.print(f"by length: {path}", markup=False, highlight=False)
