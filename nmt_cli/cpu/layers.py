"""Element-wise layers for CPU: dropout with a byte mask, tanh through sigmoid, and attention scoring
whose per-step products defer their gradients (cell.matvec).

Each class here subclasses the plain layer it replaces (same parameters, same state dict); cpu.install
switches a plain model's layers to them in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from nmt_cli.attention import BahdanauAttention, LuongAttention

MatVec = Callable[[Tensor, Tensor], Tensor]  # mat (B, S, D), vec (B, D) -> (B, S): cell.matvec


def tanh(x: Tensor, out: Tensor | None = None) -> Tensor:
    """torch.tanh(x), through sigmoid where no gradient is wanted; into `out` when given (no autograd).

    torch.tanh's CPU kernel is slow in this torch build and its sigmoid is not; 2 sigmoid(2x) - 1 is within
    a few ulps of it, far below what decoding can tell apart (docs/performance.md, "tanh").
    """
    if out is None and torch.is_grad_enabled() and x.requires_grad:
        return torch.tanh(x)
    doubled = torch.mul(x, 2, out=out) if out is not None else x * 2
    return torch.sigmoid(doubled, out=doubled).mul_(2).sub_(1)


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


class Dropout(nn.Dropout):
    """nn.Dropout(p) with its mask drawn by comparing uniform numbers (vectorised on CPU, where bernoulli_
    is not) and kept as bytes for backward, not as floats. Same distribution: each element kept with
    probability 1 - p and scaled by 1 / (1 - p)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        return _MaskedScale.apply(x, torch.rand_like(x) >= self.p, 1.0 / (1.0 - self.p))


class CpuLuongAttention(LuongAttention):
    """Luong scores with one query per row through the caller's matvec (deferred key gradient)."""

    def score(self, query: Tensor, keys: Tensor, matvec: MatVec | None = None) -> Tensor:
        if query.dim() == 3 or matvec is None:
            return super().score(query, keys)
        energies = matvec(keys, query)
        return energies * self.scale if self.scale != 1.0 else energies


class CpuBahdanauAttention(BahdanauAttention):
    """Bahdanau scores with tanh through sigmoid when decoding."""

    def score(self, query: Tensor, keys: Tensor, matvec: MatVec | None = None) -> Tensor:
        if query.dim() == 3:
            return super().score(query, keys)
        return self.v(tanh(self.query_proj(query).unsqueeze(1) + keys)).squeeze(-1)


SWAPS: dict[type, type] = {
    nn.Dropout: Dropout,
    LuongAttention: CpuLuongAttention,
    BahdanauAttention: CpuBahdanauAttention,
}
