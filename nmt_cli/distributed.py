"""Training across processes: torchrun's environment -> one process group, and the few collectives used.

torchrun (`python -m torch.distributed.run`) starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK
and the rendezvous address; this module only reads them, as fairseq and nanoGPT do. The backend follows
the device: nccl for CUDA, gloo otherwise. Without torchrun everything here is a no-op for one process.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from contextlib import suppress
from datetime import timedelta
from typing import Any, NamedTuple, NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nmt_cli.errors import ConfigError


class World(NamedTuple):
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""  # "gloo" or "nccl" under torchrun, "" for one process

    @property
    def main(self) -> bool:
        """The process that validates and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def from_env() -> World:
    """Rank, world size and local rank as torchrun sets them; one process when they are absent."""
    try:
        rank, size, local = (
            int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))
        )
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None
    if not 0 <= rank < size:
        raise ConfigError(f"RANK {rank} is not in [0, WORLD_SIZE {size})")
    return World(rank, size, local)


# The backends this process has joined a process group of (see leave).
_joined: set[str] = set()


def start(world: World, device: torch.device) -> World:
    """Join the process group torchrun set up (a no-op for one process); -> world with its backend."""
    if not world.distributed:
        return world
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # ranks wait at most this long for rank 0's validation and saving
        dist.init_process_group(backend, timeout=timedelta(hours=2))
    _joined.add(backend)
    return world._replace(backend=backend)


def must_leave_at_once() -> bool:
    """Whether this process ends through leave() rather than the interpreter's shutdown."""
    return "gloo" in _joined


def leave(code: object) -> NoReturn:
    """End the process with code (a SystemExit's), skipping the interpreter's shutdown, once stdout,
    stderr and the log handlers are flushed.

    Once DistributedDataParallel has used a gloo process group, the group outlives
    destroy_process_group, and its worker threads release each collective's tensors after the caller
    has its result. A thread still doing that when the interpreter shuts down needs the GIL and aborts
    the process ("terminate called without an active exception"), and torchrun then fails a run that
    had ended well. Nothing is left to do at that point: every file is written and closed.
    """
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"), as the interpreter does it
        print(code, file=sys.stderr)
        status = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with suppress(BrokenPipeError, ValueError):  # a closed pipe or stream: nothing more to deliver
            stream.flush()
    os._exit(status)


def stop(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module | None:
    """DistributedDataParallel over the model under torchrun (gradients averaged over ranks as the
    backward runs); None for one process."""
    if not world.distributed:
        return None
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def total(world: World, values: Sequence[float], device: torch.device) -> list[float]:
    """Each of values summed over all ranks (float64: token counts stay exact)."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def from_main(world: World, value: Any) -> Any:
    """Rank 0's value on every rank (a small picklable object: a stop reason, counters, an error)."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(world: World, value: Any) -> list[Any]:
    """Every rank's value (a small picklable object), in rank order, on every rank."""
    if not world.distributed:
        return [value]
    values: list[Any] = [None] * world.world_size
    dist.all_gather_object(values, value)
    return values


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def launch(nproc: int, argv: list[str]) -> int:
    """Run `nmt <argv>` as nproc processes on this machine through torchrun; -> its exit code."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    if "WORLD_SIZE" in os.environ:
        raise ConfigError("--nproc starts torchrun itself; under torchrun, leave it out")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    # torchrun in a session of its own, so that a Ctrl-C reaches it once, from here: it passes SIGINT and
    # SIGTERM on to the ranks (each in a session of its own too), which stop together and save
    child = subprocess.Popen([*command, "-m", "nmt_cli", *argv], start_new_session=True)
    signals = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.signal(sig, lambda signum, _: child.send_signal(signum)) for sig in signals}
    try:
        return child.wait()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
