"""The one stderr Console, the log handler on it, and progress that hides itself off a terminal."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
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
    """A transient progress bar on stderr; disabled when stderr is not a terminal or with --quiet.

    A task added with total=None shows a pulsing bar: work whose size is unknown until it is done.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,
        redirect_stdout=False,  # results written meanwhile must stay on stdout, not join the bar on stderr
    )


@contextmanager
def working(description: str, quiet: bool = False) -> Iterator[None]:
    """A spinner on stderr while one call of unknown length runs; nothing off a terminal or with --quiet."""
    if quiet or not console.is_terminal:
        yield
        return
    with console.status(description):
        yield
