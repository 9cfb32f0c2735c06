"""Decoding's use of threads: element-wise work on one thread, products on all, when idle threads sleep.

With OMP_WAIT_POLICY=PASSIVE (translate's default, as spinning threads are ruinous on a busy machine)
every parallel kernel wakes the sleeping threads, about 100 us each on this kind of machine. Greedy
search runs some 30 kernels a step, most of them small element-wise ones that cost less than that on
one thread. Inside products_in_parallel, torch runs on one thread, and only the products (nn.Linear and
nn.LSTM calls, and the layers that ask in_parallel) get the threads there were. It serves greedy search
on one sentence (a stream's lines as they come one at a time); with more, decode.decode_ids runs them on
worker threads of one thread each, which wake nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")
# int8 products smaller than this run faster on one thread than on two with a sleeping thread to wake
# (bench/profiles.py int8-threads: 64 x 1024 x 512 in 85 against 106 us, 64 x 256 x 1024 in 40 against
# 68; 64 x 1280 x 2048 in 399 against 282). fp32 products, nine times the work, always pay for it.
PARALLEL_INT8_MACS = 64_000_000
_threads = 1  # the threads products get inside products_in_parallel; 1 outside it


@contextmanager
def products_in_parallel(model: nn.Module) -> Iterator[None]:
    """One thread for everything but the model's products, with sleeping threads; otherwise nothing."""
    global _threads
    threads = torch.get_num_threads()
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE" or threads == 1:
        yield  # spinning threads wake at no cost: element-wise kernels are better off parallel
        return
    hooks = [
        hook
        for module in model.modules()
        if isinstance(module, (nn.Linear, nn.LSTM))
        for hook in (
            module.register_forward_pre_hook(lambda *_: torch.set_num_threads(threads)),
            module.register_forward_hook(lambda *_: torch.set_num_threads(1)),
        )
    ]
    _threads = threads
    torch.set_num_threads(1)
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        torch.set_num_threads(threads)
        _threads = 1


def in_parallel(product: Callable[[], T], int8_macs: int | None = None) -> T:
    """product() on all threads inside products_in_parallel, for layers the hooks do not reach; an int8
    product of fewer than PARALLEL_INT8_MACS multiply-adds stays on one, as waking a thread costs more."""
    if _threads == 1 or (int8_macs is not None and int8_macs < PARALLEL_INT8_MACS):
        return product()
    torch.set_num_threads(_threads)
    try:
        return product()
    finally:
        torch.set_num_threads(1)
