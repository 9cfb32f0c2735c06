"""`nmt evaluate`: sacrebleu scores with their signatures for one or several systems, paired tests, per line.

Output follows stdout: a table on a terminal, `NAME|signature = score` lines in pipes (with the
system's file and a tab in front when there are several), JSON with --json, bare numbers with
--score-only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from nmt_cli.cli_base import write_stdout
from nmt_cli.errors import ConfigError, InputError

Scores = dict[str, list[Any]]  # system name -> MetricResult per metric, in metric order


def evaluate(
    hyps: list[str] | None = typer.Argument(
        None, metavar="[HYP|-]...", help="Hypothesis files, baseline first; none or '-': stdin."
    ),
    refs: list[Path] = typer.Option(
        ..., "-r", "--ref", help="Reference file; repeat for several references."
    ),
    metrics: str = typer.Option("bleu,chrf,ter", help="Comma-separated: bleu, chrf, chrf++, ter."),
    as_json: bool = typer.Option(False, "--json", help="JSON: every score with its signature."),
    score_only: bool = typer.Option(
        False, "--score-only", "-b", help="Only the numbers, one line per system."
    ),
    significance: str | None = typer.Option(
        None, "--significance", help="Test each system against the first: bootstrap or ar."
    ),
    seed: int = typer.Option(12345, help="Seed of the paired test."),
    samples: int | None = typer.Option(
        None, help="Bootstrap resamples or randomization trials (default 1000 or 10000)."
    ),
    sentence: bool = typer.Option(False, "--sentence", help="Per-line scores as JSON lines."),
    tsv: bool = typer.Option(False, "--tsv", help="With --sentence: tab-separated, with a header."),
    by_length: Path | None = typer.Option(
        None, "--by-length", help="Source file: BLEU per source-length bucket of each system (a table)."
    ),
    plot_path: Path | None = typer.Option(None, "--plot", help="With --by-length: draw it (PNG/SVG/PDF)."),
) -> None:
    """Score detokenized hypotheses against references: BLEU, chrF, TER, each with its signature."""
    from nmt_cli.metrics import corpus_scores

    _check_modes(as_json, score_only, significance, sentence, tsv)
    keys = [m.strip() for m in metrics.split(",") if m.strip()]
    systems, ref_lines = _read_systems(hyps or ["-"], refs)
    if by_length is not None or plot_path is not None:
        _by_length(systems, ref_lines, by_length, plot_path, as_json)
        return
    if sentence:
        write_stdout(_sentence_output(systems, ref_lines, keys, tsv))
        return
    scores = {name: corpus_scores(lines, ref_lines, keys) for name, lines in systems.items()}
    test = _paired_test(systems, ref_lines, keys, significance, samples, seed) if significance else None
    if score_only:
        write_stdout("".join("\t".join(f"{r.score:.2f}" for r in rs) + "\n" for rs in scores.values()))
    elif as_json:
        write_stdout(json.dumps(_json_records(scores, test), ensure_ascii=False) + "\n")
    elif _stdout_is_terminal():
        _print_table(scores, test)
    else:
        write_stdout(_plain(scores, test))


def _check_modes(
    as_json: bool, score_only: bool, significance: str | None, sentence: bool, tsv: bool
) -> None:
    if as_json and score_only:
        raise ConfigError("--json and --score-only choose different outputs; give one")
    if sentence and (score_only or significance):
        raise ConfigError(
            "--sentence gives per-line scores: it does not combine with --score-only or --significance"
        )
    if tsv and not sentence:
        raise ConfigError("--tsv is for --sentence output")


def _read_systems(paths: list[str], refs: list[Path]) -> tuple[dict[str, list[str]], list[list[str]]]:
    """Each system's lines, checked against the references; warnings on stderr."""
    from nmt_cli.console import console
    from nmt_cli.metrics import check_inputs, warnings_for
    from nmt_cli.textio import read_lines

    if duplicates := sorted({p for p in paths if paths.count(p) > 1}):
        raise ConfigError(f"hypothesis file given twice: {', '.join(duplicates)}")
    systems = {path: read_lines(path) for path in paths}
    ref_lines = [read_lines(r) for r in refs]
    for path in paths:
        check_inputs(systems[path], ref_lines, path, [str(r) for r in refs])
        for warning in warnings_for(systems[path], ref_lines):
            where = f"{path}: " if len(paths) > 1 else ""
            console.print(f"nmt: warning: {where}{warning}", markup=False, highlight=False)
    return systems, ref_lines


def _paired_test(
    systems: dict[str, list[str]],
    ref_lines: list[list[str]],
    keys: list[str],
    method: str,
    samples: int | None,
    seed: int,
) -> Any:
    """metrics.significance with the first system as the baseline."""
    from nmt_cli.console import console
    from nmt_cli.metrics import significance

    (baseline, base_lines), *others = systems.items()
    if not others:
        raise ConfigError("--significance needs at least two hypothesis files: the baseline first")
    for name, lines in others:
        if lines == base_lines:  # no difference at all: the test's p = 1 / (n + 1) would look significant
            console.print(
                f"nmt: warning: {name} is identical to the baseline {baseline}: its p-value means nothing",
                markup=False,
                highlight=False,
            )
    return significance(
        base_lines,
        dict(others),
        ref_lines,
        keys,
        method=method,
        n_samples=samples,
        seed=seed,
        baseline_name=baseline,
    )


def score_line(result: Any) -> str:
    """sacrebleu's own text form: NAME|signature = score and details."""
    detail = result.text.split(" = ", 1)[1] if " = " in result.text else f"{result.score:.2f}"
    return f"{result.name}|{result.signature} = {detail}"


def _test_line(row: Any, signature: str) -> str:
    """NAME|test signature = score (μ = mean ± half the 95 % interval), p for all but the baseline."""
    text = f"{row.metric}|{signature} = {row.score:.2f} (μ = {row.mean:.2f} ± {row.ci:.2f})"
    return text + (" baseline" if row.p_value is None else f" p = {row.p_value:.4f}")


def _plain(scores: Scores, test: Any) -> str:
    prefix = (lambda name: f"{name}\t") if len(scores) > 1 else (lambda name: "")
    if test is None:
        return "".join(prefix(name) + score_line(r) + "\n" for name, rs in scores.items() for r in rs)
    return "".join(
        prefix(row.system) + _test_line(row, test.signatures[row.metric]) + "\n" for row in test.scores
    )


def _json_records(scores: Scores, test: Any) -> list[dict[str, Any]]:
    """One record per system and metric; with a paired test, its numbers under "significance"."""
    rows = {(row.system, row.metric): row for row in test.scores} if test is not None else {}
    records = []
    for name, results in scores.items():
        for r in results:
            record = {"system": name, "name": r.name, "score": round(r.score, 4), "signature": r.signature}
            record["text"] = r.text
            if (row := rows.get((name, r.name))) is not None:
                record["significance"] = {
                    "method": test.method,
                    "n_samples": test.n_samples,
                    "seed": test.seed,
                    "signature": test.signatures[r.name],
                    "baseline": test.scores[0].system,
                    "mean": round(row.mean, 4),
                    "ci": round(row.ci, 4),  # the 95 % interval is mean ± ci
                    "p_value": None if row.p_value is None else round(row.p_value, 6),
                }
            records.append(record)
    return records


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _print_table(scores: Scores, test: Any) -> None:
    """A rich table (systems down, metrics across; with a test, one row per metric and system), signatures."""
    from rich.console import Console
    from rich.table import Table

    first = next(iter(scores.values()))
    if test is None:
        table = Table("system", *(r.name for r in first), box=None, header_style="bold")
        for system, results in scores.items():
            table.add_row(system, *(f"{r.score:.2f}" for r in results))
        signatures = {r.name: r.signature for r in first}
    else:
        table = Table("metric", "system", "score", "μ ± 95 % CI", "p", box=None, header_style="bold")
        for row in test.scores:
            p = (
                "baseline"
                if row.p_value is None
                else f"{row.p_value:.4f}" + ("*" if row.p_value < 0.05 else "")
            )
            table.add_row(row.metric, row.system, f"{row.score:.2f}", f"{row.mean:.2f} ± {row.ci:.2f}", p)
        method = "paired bootstrap resampling" if test.method == "bootstrap" else "approximate randomization"
        table.caption = f"{method}, {test.n_samples} samples, seed {test.seed}; * p < 0.05"
        signatures = test.signatures
    for column in table.columns[1 if test is None else 2 :]:
        column.justify = "right"
    out = Console(file=sys.stdout, highlight=False, soft_wrap=True)
    out.print(table)
    for name, signature in signatures.items():
        out.print(f"{name}|{signature}", markup=False)


def _sentence_output(
    systems: dict[str, list[str]], ref_lines: list[list[str]], keys: list[str], tsv: bool
) -> str:
    """Per-line scores of every system: JSON lines with the texts, or TSV with a header."""
    from nmt_cli.metrics import sentence_scores

    out = []
    for name, hyps in systems.items():
        rows = sentence_scores(hyps, ref_lines, keys)
        if tsv and not out:
            out.append("\t".join(["system", "line", *(k for k in rows[0] if k != "line")]) + "\n")
        for row, hyp in zip(rows, hyps, strict=True):
            values = {k: round(v, 4) for k, v in row.items() if k != "line"}
            if tsv:
                out.append("\t".join([name, str(row["line"]), *map(str, values.values())]) + "\n")
                continue
            n = row["line"]
            refs = [stream[n - 1] for stream in ref_lines]
            record = {"system": name, "line": n, **values, "hyp": hyp, "refs": refs}
            out.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(out)


def _by_length(
    systems: dict[str, list[str]], refs: list[list[str]], src: Path | None, path: Path | None, as_json: bool
) -> None:
    """BLEU of each system per source-length bucket (first reference): a table or JSON, and a picture."""
    import io

    from rich.console import Console

    from nmt_cli import plot
    from nmt_cli.metrics import bleu_by_length
    from nmt_cli.textio import read_lines

    if src is None:
        raise ConfigError("--plot needs --by-length SOURCE_FILE (the lengths are the source's)")
    if path is not None:
        plot.image_format(path)
    src_lines = read_lines(src)
    if len(src_lines) != len(refs[0]):
        raise InputError(f"{src} has {len(src_lines)} lines but the references have {len(refs[0])}", str(src))
    lengths = [len(line.split()) for line in src_lines]
    series = {name: bleu_by_length(h, refs[0], lengths, plot.LENGTH_EDGES) for name, h in systems.items()}
    if path is not None:
        plot.save_by_length(series, path, title=f"BLEU by source length ({src})")
    if as_json:
        records = [
            {"system": name, "bucket": label, "lines": n, "bleu": bleu}
            for name, buckets in series.items()
            for label, n, bleu in buckets
        ]
        write_stdout(json.dumps(records) + "\n")
        return
    buffer = io.StringIO()
    Console(file=buffer, width=160, force_terminal=False).print(plot.by_length_table(series))
    write_stdout(buffer.getvalue() + (f"{path}\n" if path is not None else ""))
