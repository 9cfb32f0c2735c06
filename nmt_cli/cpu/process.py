"""Process-wide settings that make CPU decoding faster and leaner; each must come before torch first runs
(or, for the malloc arena, before the worker threads start). Nothing here is done under NMT_PLAIN=1, and a
user's own setting of each variable wins. docs/performance.md has the figures.
"""

from __future__ import annotations

import ctypes
import os

M_ARENA_MAX = -8  # glibc's mallopt parameter


def _sleeping_idle_threads() -> None:
    """Idle OpenMP threads sleep instead of spinning: decoding runs many small parallel regions, and when
    other processes share the cores a spinning thread takes the core its partner needs. OpenMP reads
    this once, when torch is first imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _one_malloc_arena() -> bool:
    """glibc's malloc keeps one heap for all threads; whether set. With one per decoding worker, freed
    tensors leave holes in each that the others cannot use. Elsewhere than glibc, nothing happens."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1))
    except (OSError, AttributeError):  # not glibc
        return False


def settings_for_decoding() -> None:
    """Sleeping idle threads, one malloc arena, and oneDNN kernel caches sized for decoding."""
    from nmt_cli.cpu import wanted

    if not wanted():
        return
    _sleeping_idle_threads()
    _one_malloc_arena()
    from nmt_cli.cpu import gemm

    gemm.set_cache_capacity(gemm.DECODING_CACHE)  # before the first product: see gemm


def release_start_up_code() -> None:
    """Give back the pages of torch's libraries that importing torch and loading the model ran: the kernel
    maps such code in large folios, and much of it never runs again; what decoding runs maps in again from
    the page cache (cpu.pages)."""
    from nmt_cli.cpu import wanted

    if not wanted():
        return
    import torch

    from nmt_cli.cpu.pages import release_code_pages

    release_code_pages(os.path.join(os.path.dirname(torch.__file__), "lib", ""))
