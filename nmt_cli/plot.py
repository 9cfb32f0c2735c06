"""Attention heatmaps (PNG/SVG/PDF or the terminal), training curves, BLEU by length, gate activations.

matplotlib is imported inside the drawing functions, so `nmt --help` and the terminal heatmap do
not pay for it, and only `matplotlib.figure.Figure` is used: no pyplot, no global figure state.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.color import Color
from rich.console import Group
from rich.style import Style
from rich.table import Table
from rich.text import Text

from nmt_cli.errors import ConfigError, InputError
from nmt_cli.textio import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FORMATS = (".png", ".svg", ".pdf")
DPI = 100
CURVES_SIZE = (10.0, 8.0)  # inches: 1000 x 800 pixels at DPI
SHADES = " ░▒▓█"  # weights 0, .25, .5, .75, 1: for terminals without colour, or piped output
HEADER_WIDTH = 6  # longer source tokens are cut to this many cells, ending in "…"
# Five stops of matplotlib's viridis, so the terminal and the image shade alike.
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
# The same plot gives the same bytes: no creation date in SVG or PDF metadata (and a fixed SVG salt).
_METADATA: dict[str, dict[str, Any] | None] = {
    "png": None,
    "svg": {"Date": None},
    "pdf": {"CreationDate": None},
}
# Curve panels: (y label, record keys drawn on it), each against step and wall-clock minutes.
_PANELS = (("loss", ("loss", "dev_loss")), ("dev BLEU", ("dev_bleu",)), ("learning rate", ("lr",)))
_X_AXES = (("step", "step"), ("wall", "wall-clock minutes"))
LENGTH_EDGES = (5, 10, 15, 20)  # source-length buckets 1-5, 6-10, 11-15, 16-20, 21+ (words)
Buckets = Sequence[tuple[str, int, "float | None"]]  # (label, lines, BLEU or None when empty)


def save_by_length(series: dict[str, Buckets], path: str | Path, title: str = "") -> None:
    """BLEU per source-length bucket, one line per system, on one picture."""
    fmt = image_format(path)
    if not series:
        raise InputError("no systems to draw")
    fig = _figure((7.0, 4.5))
    ax = fig.subplots()
    for name, buckets in series.items():
        xs = [k for k, (_, _, bleu) in enumerate(buckets) if bleu is not None]
        ax.plot(xs, [buckets[k][2] for k in xs], marker="o", label=name)
    first = next(iter(series.values()))
    ax.set_xticks(range(len(first)), [f"{label}\n({n})" for label, n, _ in first])
    ax.set(xlabel="source length in words (lines)", ylabel="BLEU", title=title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    _write(fig, path, fmt)


def by_length_table(series: dict[str, Buckets]) -> Table:
    """The same numbers as save_by_length, as a terminal table: systems down, buckets across."""
    first = next(iter(series.values()))
    table = Table(title="BLEU by source length (words)", title_justify="left")
    table.add_column("system")
    for label, n, _ in first:
        table.add_column(f"{label} ({n})", justify="right")
    for name, buckets in series.items():
        table.add_row(name, *("-" if b is None else f"{b:.1f}" for _, _, b in buckets))
    return table


def save_attention(
    attention: Any,
    src_tokens: Sequence[str],
    tgt_tokens: Sequence[str],
    path: str | Path,
    title: str | None = None,
) -> None:
    """Write attention (T target rows, S source columns) as a heatmap; the format follows path's suffix.

    The figure is 3 + 0.5·S inches wide and 2.5 + 0.5·T high, at DPI dots per inch.
    """
    fmt = image_format(path)
    weights = check_attention(attention, src_tokens, tgt_tokens)
    fig = _figure(attention_size(len(src_tokens), len(tgt_tokens)))
    ax = fig.add_subplot()
    # vmax 1 keeps colours comparable between sentences; merged word-level weights may exceed it
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=max(1.0, float(weights.max())), aspect="auto")
    ax.set_xticks(range(len(src_tokens)), labels=list(src_tokens), rotation=90)
    ax.set_yticks(range(len(tgt_tokens)), labels=list(tgt_tokens))
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, label="attention weight")
    _write(fig, path, fmt)


def terminal_heatmap(
    attention: Any, src_tokens: Sequence[str], tgt_tokens: Sequence[str], color: bool = True
) -> Group:
    """A rich Table, one row per target token and one cell per source token shaded by weight, and a legend.

    With color, cells get a viridis background; without, a shade character repeated across the
    cell, rounded to the nearest of 0, .25, .5, .75, 1 (' ', '░', '▒', '▓', '█').
    """
    weights = check_attention(attention, src_tokens, tgt_tokens)
    table = Table(box=None, padding=(0, 1), collapse_padding=True, pad_edge=False)
    table.add_column("", justify="right", no_wrap=True)
    widths = []
    for token in src_tokens:
        header = Text(token)  # Text, not str: tokens such as "[b]" must not be read as markup
        header.truncate(HEADER_WIDTH, overflow="ellipsis")
        widths.append(max(2, header.cell_len))
        table.add_column(header, width=widths[-1], no_wrap=True, justify="center")
    for token, row in zip(tgt_tokens, weights, strict=True):
        cells = [_cell(float(w), width, color) for w, width in zip(row, widths, strict=True)]
        table.add_row(Text(token), *cells)
    return Group(table, _legend(color))  # a caption would wrap inside a narrow table


def save_gates(traces: Sequence[Any], path: str | Path, title: str = "") -> None:
    """One column per trace (gates.GateTrace): a heatmap per gate (units down, steps across), then the
    norms of h_t and c_t over the steps."""
    fmt = image_format(path)
    rows = 1 + max(len(t.gates) for t in traces)
    width = max(len(t.tokens) for t in traces)
    fig = _figure((2.0 + 0.45 * width * len(traces), 2.2 * rows))
    axes = fig.subplots(rows, len(traces), squeeze=False)
    for col, trace in enumerate(traces):
        steps = range(len(trace.tokens))
        for row, (gate, values) in enumerate(trace.gates.items()):
            ax = axes[row][col]
            image = ax.imshow(
                values.T, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest"
            )
            ax.set(title=f"{trace.name}: {gate} gate", ylabel="unit")
            ax.set_xticks(list(steps), trace.tokens, rotation=90, fontsize="small")
            fig.colorbar(image, ax=ax)
        for row in range(len(trace.gates), rows - 1):
            axes[row][col].axis("off")
            axes[row][col].text(0.5, 0.5, "no gates:\nh = tanh(W x + U h + b)", ha="center", va="center")
        ax = axes[rows - 1][col]
        ax.plot(list(steps), np.linalg.norm(trace.hidden, axis=1), marker="o", label="‖h_t‖")
        if trace.cell is not None:
            ax.plot(list(steps), np.linalg.norm(trace.cell, axis=1), marker="s", label="‖c_t‖")
        ax.set(title=f"{trace.name}: state norms")
        ax.set_xticks(list(steps), trace.tokens, rotation=90, fontsize="small")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    _write(fig, path, fmt)


def gates_table(trace: Any) -> Table:  # noqa: ANN401 - a gates.GateTrace
    """A trace in the terminal: per step, each gate's mean over units and the state norms."""
    table = Table(title=trace.name, title_justify="left")
    table.add_column("step", justify="right")
    table.add_column("input")
    for gate in trace.gates:
        table.add_column(f"{gate} (mean)", justify="right")
    table.add_column("‖h‖", justify="right")
    if trace.cell is not None:
        table.add_column("‖c‖", justify="right")
    for t, token in enumerate(trace.tokens):
        cells = [f"{values[t].mean():.2f}" for values in trace.gates.values()]
        norms = [f"{np.linalg.norm(trace.hidden[t]):.2f}"]
        if trace.cell is not None:
            norms.append(f"{np.linalg.norm(trace.cell[t]):.2f}")
        table.add_row(str(t + 1), token, *cells, *norms)
    return table


def save_curves(records: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Plot loss, dev BLEU and learning rate against step and wall-clock minutes, 3 x 2 panels.

    Records are training-log lines (step, wall in seconds, loss, dev_loss, dev_bleu, lr, ...); a
    record lacking a key simply adds no point to that curve.
    """
    fmt = image_format(path)
    if not records:
        raise InputError("the training log has no records to plot")
    fig = _figure(CURVES_SIZE)
    axes = fig.subplots(len(_PANELS), len(_X_AXES), squeeze=False)
    for row, (ylabel, keys) in enumerate(_PANELS):
        for col, (x_key, xlabel) in enumerate(_X_AXES):
            _draw_panel(axes[row][col], records, x_key, keys)
            axes[row][col].set(xlabel=xlabel, ylabel=ylabel)
    _write(fig, path, fmt)


def curve_points(records: Sequence[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    """(xs, ys) from the records holding both keys; "wall" seconds become minutes."""
    xs, ys = [], []
    for n, record in enumerate(records, start=1):
        if record.get(x) is None or record.get(y) is None:
            continue
        xs.append(_number(record, x, n) / (60.0 if x == "wall" else 1.0))
        ys.append(_number(record, y, n))
    return xs, ys


def check_attention(attention: Any, src_tokens: Sequence[str], tgt_tokens: Sequence[str]) -> np.ndarray:
    """attention as a float array of shape (T, S) = (len(tgt_tokens), len(src_tokens)), or InputError."""
    try:
        weights = np.asarray(attention, dtype=float)
    except (TypeError, ValueError):
        raise InputError("attention is not a rectangular table of numbers") from None
    expected = (len(tgt_tokens), len(src_tokens))
    if weights.shape != expected:
        raise InputError(
            f"attention has shape {weights.shape} but {expected[0]} target x {expected[1]} source "
            "tokens need one row per target token and one column per source token"
        )
    if weights.size == 0:
        raise InputError("attention is empty: nothing to draw")
    if not np.isfinite(weights).all():
        raise InputError("attention contains NaN or infinite weights")
    return weights


def image_format(path: str | Path) -> str:
    """'png', 'svg' or 'pdf' from path's suffix; any other suffix is a ConfigError listing these."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(
            f"cannot write images as {suffix or 'a file without suffix'}; use one of {', '.join(FORMATS)}",
            str(path),
        )
    return suffix[1:]


def attention_size(n_src: int, n_tgt: int) -> tuple[float, float]:
    """Figure (width, height) in inches: room for labels, colour bar and half an inch per token."""
    return 3.0 + 0.5 * n_src, 2.5 + 0.5 * n_tgt


def _figure(size: tuple[float, float]) -> Figure:
    """A Figure on the Agg canvas: no pyplot, no GUI backend, whatever MPLBACKEND says."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # savefig still switches to the SVG or PDF canvas for those formats
    return fig


def _write(fig: Figure, path: str | Path, fmt: str) -> None:
    # Render fully first, so a failing render never leaves a half-written file behind.
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "nmt"}):  # SVG ids are random without a fixed salt
        fig.savefig(buffer, format=fmt, dpi=DPI, metadata=_METADATA[fmt])
    with atomic_write(path) as f:
        f.write(buffer.getvalue())


def _draw_panel(ax: Axes, records: Sequence[dict[str, Any]], x_key: str, keys: Sequence[str]) -> None:
    drawn = False
    for key in keys:
        xs, ys = curve_points(records, x_key, key)
        if xs:
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=key)
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
    elif len(keys) > 1:
        ax.legend()
    ax.grid(alpha=0.3)


def _number(record: dict[str, Any], key: str, n: int) -> float:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"training record {n}: {key} is {value!r}, expected a number")
    return float(value)


def _cell(weight: float, width: int, color: bool) -> Text:
    if color:
        return Text(" " * width, style=Style(bgcolor=_viridis(weight)))
    return Text(SHADES[_level(weight)] * width)


def _level(weight: float) -> int:
    """Nearest of the five shade levels: 0 for [0, .125), 1 for [.125, .375), ... 4 for [.875, 1]."""
    return int(min(max(weight, 0.0), 1.0) * 4 + 0.5)


def _viridis(weight: float) -> Color:
    position = min(max(weight, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    k = min(int(position), len(_VIRIDIS) - 2)
    frac = position - k
    rgb = [round(a + (b - a) * frac) for a, b in zip(_VIRIDIS[k], _VIRIDIS[k + 1], strict=True)]
    return Color.from_rgb(*rgb)


def _legend(color: bool) -> Text:
    if not color:
        return Text("weight: ' ' 0, ░ .25, ▒ .5, ▓ .75, █ 1")
    legend = Text("weight: 0 ")
    for k in range(5):
        legend.append("  ", style=Style(bgcolor=_viridis(k / 4)))
    return legend.append(" 1")
