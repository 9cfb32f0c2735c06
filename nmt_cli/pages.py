"""Give back the resident pages of a tensor that lives in a memory-mapped model file and is no longer read.

A model file is memory-mapped (checkpoint.load_model) and a page of it counts towards the process's RSS
from the first read until the mapping goes, which is when the last tensor of the file goes. fp32 decoding
reads most weights once, to make packed copies (gemm), and never again: base-rnn's output layer, decoder
LSTM and attention projections are 29 MB of such pages. madvise(MADV_DONTNEED) drops them from this
process; a later read, if any, maps them in again from the file (the page cache keeps them meanwhile).

That is lossless only for pages that are still the file's: a page written since mapping is a private
copy, and DONTNEED would throw the write away. So every page of the range is checked first in
/proc/self/pagemap (bit 61: file page or shared), and a range with any private page is left alone, as
is everything on systems without these files (nothing happens there).
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np
from torch import Tensor

PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4
_PRESENT, _SWAPPED, _FILE_OR_SHARED = 1 << 63, 1 << 62, 1 << 61


def _whole_pages(tensor: Tensor) -> tuple[int, int]:
    """(start, length) of the pages that lie wholly inside a contiguous tensor's bytes; length may be 0."""
    first = tensor.data_ptr()
    end = first + tensor.numel() * tensor.element_size()
    start = -(-first // PAGE) * PAGE
    return start, max(0, end // PAGE * PAGE - start)


def _only_file_pages(start: int, length: int) -> bool:
    """Whether no page in [start, start + length) is a private copy: each is absent, or the file's."""
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(start // PAGE * 8)
        entries = np.frombuffer(pagemap.read(length // PAGE * 8), dtype=np.uint64)
    if len(entries) != length // PAGE:
        return False
    held = (entries & np.uint64(_PRESENT | _SWAPPED)) != 0
    return bool(((entries[held] & np.uint64(_FILE_OR_SHARED)) != 0).all())


def release_file_pages(tensor: Tensor) -> int:
    """Drop a CPU tensor's resident file pages from this process when every one of them is still the
    file's (see the module docstring); -> bytes given back (0: nothing done). The tensor's values stay
    what they were: reading it again maps them in again."""
    if not sys.platform.startswith("linux") or tensor.device.type != "cpu" or not tensor.is_contiguous():
        return 0
    start, length = _whole_pages(tensor)
    try:
        if not length or not _only_file_pages(start, length):
            return 0
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return length if libc.madvise(start, length, _MADV_DONTNEED) == 0 else 0
    except (OSError, AttributeError):  # no pagemap or no madvise here
        return 0
