"""The `nmt` command: each subcommand is a thin function in a cmd_* module, registered here."""

from __future__ import annotations

import os
import sys

import typer

from nmt_cli import (
    __version__,
    cmd_analysis,
    cmd_data,
    cmd_eval,
    cmd_inspect,
    cmd_model,
    cmd_sweep,
    cmd_train,
    cmd_translate,
    distributed,
)
from nmt_cli.cli_base import reports_errors, write_stdout

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="RNN-attention neural machine translation: prepare, train, translate, evaluate, plot.",
)


def _print_version(value: bool) -> None:
    if value:
        write_stdout(f"nmt {__version__}\n")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Options that come before the command."""


subword_app = typer.Typer(no_args_is_help=True, help="Encode or decode text with a SentencePiece model.")

bench_app = typer.Typer(no_args_is_help=True, help="Measure speed against this machine's limit.")
app.add_typer(subword_app, name="subword")
inspect_app = typer.Typer(no_args_is_help=True, help="Look inside a trained model.")
app.add_typer(bench_app, name="bench")
app.add_typer(inspect_app, name="inspect")
COMMANDS = [
    (app, "prepare", cmd_data.prepare),
    (subword_app, "encode", cmd_data.subword_encode),
    (subword_app, "decode", cmd_data.subword_decode),
    (app, "train", cmd_train.train),
    (bench_app, "train", cmd_train.bench_train),
    (app, "translate", cmd_translate.translate),
    (app, "score", cmd_translate.score),
    (app, "shortlist", cmd_translate.shortlist),
    (app, "evaluate", cmd_eval.evaluate),
    (app, "sweep", cmd_sweep.sweep),
    (inspect_app, "gates", cmd_inspect.gates),
    (app, "align", cmd_analysis.align),
    (app, "attention", cmd_analysis.attention),
    (app, "curves", cmd_analysis.curves),
    (app, "info", cmd_model.info),
    (app, "tune", cmd_model.tune),
    (app, "average", cmd_model.average),
]
for group, name, command in COMMANDS:
    group.command(name)(reports_errors(command))  # every command reports NmtError as one line


def main() -> None:
    """Console entry point: a closed stdout (`| head`) ends quietly."""
    try:
        app()
    except SystemExit as done:
        if distributed.must_leave_at_once():  # a torchrun rank that used gloo (distributed.leave)
            distributed.leave(done.code)
        raise
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python flushes stdout at exit; let that go nowhere
        sys.exit(0)
