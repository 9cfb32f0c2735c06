"""The one stderr Console, the log handler on it, and progress that hides itself off a terminal."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress

# rich.logging and rich.progress are imported where used: `nmt --help` needs neither
console = Console(stderr=True, highlight=False, soft_wrap=True)  # log lines never wrap mid-line


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Route library logging to stderr through rich: warnings always, info unless quiet."""
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = RichHandler(console=console, show_path=False, show_time=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("nmt_cli")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def progress(quiet: bool = False) -> Progress:
    """A progress bar on stderr; disabled when stderr is not a terminal or with --quiet."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,
    )
