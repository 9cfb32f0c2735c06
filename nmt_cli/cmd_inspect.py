"""`nmt inspect gates`: a model's gate activations and state norms on one sentence, drawn."""

from __future__ import annotations

import io
from pathlib import Path

import typer

from nmt_cli.cli_base import set_threads, write_stdout


def gates(
    model: Path = typer.Option(..., "-m", "--model", help="A model.nmt file."),
    sentence: str = typer.Argument(..., help="The source sentence."),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Draw to this PNG, SVG or PDF (besides the terminal tables)."
    ),
    threads: int = typer.Option(0, help="Torch threads (0: OMP_NUM_THREADS or all cores)."),
) -> None:
    """Encoder and decoder gates (LSTM: input, forget, output; GRU: update, reset) and ‖h‖, ‖c‖ per step,
    recomputed from the cells' weights over the sentence and its greedy translation."""
    from rich.console import Console

    from nmt_cli import plot
    from nmt_cli.checkpoint import load_model
    from nmt_cli.gates import gate_traces

    if output is not None:
        plot.image_format(output)
    set_threads(threads)
    loaded = load_model(model)
    traces, translation = gate_traces(loaded, sentence)
    buffer = io.StringIO()
    terminal = Console(file=buffer, width=160, force_terminal=False)
    cfg = loaded.config
    terminal.print(f"encoder {cfg.encoder_cell.upper()}, decoder {cfg.decoder_cell.upper()}")
    terminal.print(f"translation (greedy): {translation}")
    for trace in traces:
        terminal.print(plot.gates_table(trace))
    if output is not None:
        drawn = [t for t in traces if t.name.startswith("encoder layer 1 ") or t.name == "decoder layer 1"]
        plot.save_gates(drawn, output, title=f"{sentence}  →  {translation}")
        terminal.print(str(output))
    write_stdout(buffer.getvalue())
