"""What every command shares: one-line errors, stdout writing, thread setting, durations."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from nmt_cli.console import console
from nmt_cli.errors import ConfigError, NmtError

PROCESS_START = time.time()  # budgets count from here: imports and data loading are part of the run
T = TypeVar("T")
DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps."


def reports_errors(command: Callable[..., T]) -> Callable[..., T]:
    """Turn NmtError into one stderr line and exit 1; a traceback only with NMT_DEBUG=1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return command(*args, **kwargs)
        except NmtError as err:
            if os.environ.get("NMT_DEBUG") == "1":
                raise
            console.print(f"nmt: error: {err}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(code=1) from None
        except KeyboardInterrupt:
            console.print("nmt: interrupted", markup=False, highlight=False)
            raise typer.Exit(code=130) from None

    return wrapper


class StopSignals:
    """While entered, SIGINT and SIGTERM are only noted (reason() names the first) for a loop that ends
    its current step and saves. A second one acts as it would have without us: KeyboardInterrupt, or the
    end of the process (safe where every save is atomic)."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._before: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can be set there only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._before[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame: object) -> None:
        self.received = signal.Signals(signum)
        self._restore()

    def reason(self) -> str:
        return self.received.name if self.received else ""

    def _restore(self) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)
        self._before = {}

    def __exit__(self, *exc: object) -> None:
        self._restore()


def set_threads(threads: int) -> None:
    """The one place that sets torch's thread count (0: OMP_NUM_THREADS or torch's default)."""
    import torch

    if threads < 0:
        raise ConfigError(f"--threads must be at least 0 (0: the default), got {threads}")
    if threads:
        torch.set_num_threads(threads)


def resolve_device(name: str):  # noqa: ANN201 - torch.device, imported late: --help stays fast
    """--device as a torch.device (auto: CUDA when present, else the CPU)."""
    from nmt_cli.device import resolve

    return resolve(name)


def write_stdout(text: str) -> None:
    """Results only, flushed at once so pipelines and `tail -f` see each line as it is ready."""
    sys.stdout.write(text)
    sys.stdout.flush()


def parse_duration(text: str | None) -> float | None:
    """'900', '900s', '15m', '1.5h' -> seconds."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise ConfigError(f"cannot read duration {text!r}; use e.g. 900, 900s, 15m or 1.5h") from None
    if seconds < 0:
        raise ConfigError(f"duration must not be negative, got {text!r}")
    return seconds
