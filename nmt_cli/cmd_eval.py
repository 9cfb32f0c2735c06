"""`nmt evaluate`: sacrebleu scores with their signatures, as text or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from nmt_cli.cli_base import write_stdout


def score_line(result) -> str:  # noqa: ANN001
    """sacrebleu's own text form: NAME|signature = score and details."""
    detail = result.text.split(" = ", 1)[1] if " = " in result.text else f"{result.score:.2f}"
    return f"{result.name}|{result.signature} = {detail}"


def evaluate(
    refs: list[Path] = typer.Option(
        ..., "-r", "--ref", help="Reference file; repeat for several references."
    ),
    hyp: str = typer.Argument("-", metavar="[HYP|-]", help="Hypotheses; '-' or nothing: stdin."),
    metrics: str = typer.Option("bleu,chrf,ter", help="Comma-separated: bleu, chrf, chrf++, ter."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object with every score and signature."),
) -> None:
    """Score detokenized hypotheses against references: BLEU, chrF, TER, each with its signature."""
    from nmt_cli.console import console
    from nmt_cli.metrics import check_inputs, corpus_scores, warnings_for
    from nmt_cli.textio import read_lines

    hyps = read_lines(hyp)
    ref_lines = [read_lines(r) for r in refs]
    check_inputs(hyps, ref_lines, hyp, [str(r) for r in refs])
    for warning in warnings_for(hyps, ref_lines):
        console.print(f"nmt: warning: {warning}", markup=False, highlight=False)
    results = corpus_scores(hyps, ref_lines, [m.strip() for m in metrics.split(",") if m.strip()])
    if as_json:
        payload = [
            {"name": r.name, "score": round(r.score, 4), "signature": r.signature, "text": r.text}
            for r in results
        ]
        write_stdout(json.dumps(payload, ensure_ascii=False) + "\n")
    else:
        write_stdout("".join(score_line(r) + "\n" for r in results))
