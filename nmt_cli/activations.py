"""tanh for decoding: torch.tanh's CPU kernel is slow in this torch build, its sigmoid is not.

On the AVX-512 benchmark machine (torch 2.13, one thread), torch.tanh over 64 x 512 takes 128 us and
sigmoid 9; tanh(x) = 2 sigmoid(2x) - 1 takes 29 (4.4x faster; 320 rows 6.0x; 8 rows the same) and
is within 1.8e-7 of the exact value (torch.tanh: 3.1e-8), far below what decoding can tell apart
(`python bench/profiles.py tanh`). With torch's AVX2 kernels (ATEN_CPU_CAPABILITY=avx2 on the same CPU)
it is 2.7x faster (82 against 30 us): torch.tanh takes as long whatever the vector unit. Training keeps
torch.tanh, whose backward autograd knows.
"""

from __future__ import annotations

import torch
from torch import Tensor


def tanh(x: Tensor, out: Tensor | None = None) -> Tensor:
    """torch.tanh(x), through sigmoid where no gradient is wanted; into `out` when given (no autograd)."""
    if out is None and torch.is_grad_enabled() and x.requires_grad:
        return torch.tanh(x)
    doubled = torch.mul(x, 2, out=out) if out is not None else x * 2
    return torch.sigmoid(doubled, out=doubled).mul_(2).sub_(1)
