"""Decoding's use of threads: sentences shared out among worker threads of one thread each, and, for a
lone greedy batch, element-wise work on one thread and products on all.

With OMP_WAIT_POLICY=PASSIVE (translate's default, as spinning threads are ruinous on a busy machine)
every parallel kernel wakes the sleeping threads. A decoding step is some 30 kernels, most of them small
element-wise ones that cost less on one thread than the wake-up; one thread per worker never waits for
another at the end of a kernel (docs/performance.md, "threads"). torch's kernels run without the GIL.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")
# int8 products smaller than this run faster on one thread than on two with a sleeping thread to wake
# (bench/profiles.py int8-threads); fp32 products, nine times the work, always pay for it.
PARALLEL_INT8_MACS = 64_000_000
# Up to this many workers side by side, each over its own batches; past it, each worker gets several
# threads instead (every worker keeps a batch's tensors in memory).
MAX_WORKERS = 4
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


def decode_in_workers(
    model: nn.Module,
    src_ids: Sequence[Sequence[int]],
    greedy: bool,
    batch_size: int,
    decode_part: Callable[[Sequence[Sequence[int]], int], list[T]],
) -> list[T]:
    """decode_part over src_ids, the sentences dealt out in length order to one worker thread per torch
    thread (up to MAX_WORKERS), each batching its own on one thread; results in input order.

    A lone batch too is shared out: oneDNN compiles a kernel per product shape and thread count, and a
    first batch on all threads would have every shape compiled twice. With one worker, a greedy batch runs
    its element-wise work on one thread and its products on all (products_in_parallel)."""
    workers = max(1, min(torch.get_num_threads(), MAX_WORKERS, len(src_ids)))
    if workers == 1:
        if not greedy:
            return decode_part(src_ids, batch_size)
        with products_in_parallel(model):
            return decode_part(src_ids, batch_size)
    # a beam batch has k rows per sentence, so the workers share batch_size: their products stay large,
    # and decoding holds about one batch's tensors; greedy rows are too few for that
    size = batch_size if greedy else -(-batch_size // workers)
    order = sorted(range(len(src_ids)), key=lambda i: (-len(src_ids[i]), i))
    parts = [order[w::workers] for w in range(workers)]
    threads = torch.get_num_threads()

    def work(indices: list[int]) -> list[T]:
        torch.set_num_threads(max(1, threads // workers))  # this thread's own setting
        with torch.inference_mode():  # grad mode is per thread
            return decode_part([src_ids[i] for i in indices], size)

    results: list[T] = [None] * len(src_ids)  # type: ignore[list-item]
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="nmt-decode") as pool:
            for indices, outputs in zip(parts, pool.map(work, parts), strict=True):
                for i, output in zip(indices, outputs, strict=True):
                    results[i] = output
    finally:
        torch.set_num_threads(threads)  # torch also keeps the last setting process-wide for new threads
    return results
