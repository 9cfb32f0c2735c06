"""Decoding's use of threads: element-wise work on one thread, products on all, when idle threads sleep.

With OMP_WAIT_POLICY=PASSIVE (translate's default, as spinning threads are ruinous on a busy machine)
every parallel kernel wakes the sleeping threads, about 100 us each on this kind of machine. Greedy
search runs some 30 kernels a step, most of them small element-wise ones that cost less than that on
one thread. Inside products_in_parallel, torch runs on one thread, and only the products (nn.Linear and
nn.LSTM calls, and the layers that ask in_parallel) get the threads there were.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")
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


def in_parallel(product: Callable[[], T]) -> T:
    """product() on all threads inside products_in_parallel, for layers the hooks do not reach."""
    if _threads == 1:
        return product()
    torch.set_num_threads(_threads)
    try:
        return product()
    finally:
        torch.set_num_threads(1)
