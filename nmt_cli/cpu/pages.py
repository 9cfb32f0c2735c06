"""Give back resident file pages that are no longer read: a mapped model file's, a library's code.

A model file is memory-mapped (checkpoint.load_model) and a page of it counts towards the process's RSS
from the first read until the mapping goes, which is when the last tensor of the file goes. fp32 decoding
reads most weights once, to make packed copies (gemm), and never again. madvise(MADV_DONTNEED) drops
them from this process; a later read, if any, maps them in again from the file (the page cache keeps
them meanwhile).

That is lossless only for pages that are still the file's: a page written since mapping is a private
copy, and DONTNEED would throw the write away. So every page of the range is checked first in
/proc/self/pagemap (bit 61: file page or shared), and a range with any private page is left alone, as
is everything on systems without these files (nothing happens there).

Library code is never written, and the same holds for it: release_code_pages drops the code that
importing torch ran once (see process.py), and what runs again maps in again from the page cache.
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


def _dont_need(start: int, length: int) -> bool:
    """madvise(MADV_DONTNEED) on [start, start + length); whether it was done."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise(start, length, _MADV_DONTNEED) == 0


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
        return length if _dont_need(start, length) else 0
    except (OSError, AttributeError):  # no pagemap or no madvise here
        return 0


def _executable_mappings(path_part: str) -> list[tuple[int, int]]:
    """(start, length) of this process's executable file mappings whose path contains path_part."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[1] == "r-xp" and path_part in fields[5]:
                start, end = (int(address, 16) for address in fields[0].split("-"))
                ranges.append((start, end - start))
    return ranges


def release_code_pages(path_part: str) -> int:
    """Drop the resident code pages of the libraries whose path contains path_part; -> bytes of the
    mappings given back. Code is never written, so a page that runs again maps in again from the page
    cache (a minor fault); the pagemap check still guards against a page made private (a debugger's)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        return sum(
            length
            for start, length in _executable_mappings(path_part)
            if _only_file_pages(start, length) and _dont_need(start, length)
        )
    except (OSError, AttributeError):
        return 0
