"""The decoder's LSTM cell, stepped by hand over nn.LSTM's own weights, with weight gradients deferred.

Stepping nn.LSTM one position at a time is slow on CPU: every step's backward is a separate library call
that also builds and accumulates full weight gradients. Here the embedding part of the input projection
is done for all steps in one matmul before the loop, and each recurrent matmul's weight gradient is
collected over the steps and computed once, as a single large matmul, when the backward pass reaches
step 0. The arithmetic is exactly that of nn.LSTM (gate order i, f, g, o), so both paths share weights.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn


class _DeferredLinear(torch.autograd.Function):
    """x @ w.T whose weight gradient is summed over all steps of a sequence in one matmul."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, collector: list, first: bool) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.collector, ctx.first = collector, first
        return x @ weight.t()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        ctx.collector.append((grad, x))
        grad_weight = None
        if ctx.first:  # step 0 is reached last: every later step has added its pair by now
            grads, inputs = zip(*ctx.collector, strict=True)
            grad_weight = torch.cat(grads).t() @ torch.cat(inputs)
            ctx.collector.clear()
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        return grad_x, grad_weight, None, None


class Collectors:
    """One gradient collector per recurrent weight, made fresh for each teacher-forced batch."""

    def __init__(self) -> None:
        self.lists: dict[str, list] = {}

    def get(self, name: str) -> list:
        return self.lists.setdefault(name, [])


def linear(x: Tensor, weight: Tensor, name: str, collectors: Collectors | None, first: bool) -> Tensor:
    """x (B, I) @ weight (O, I).T -> (B, O); deferred weight gradient while training."""
    if collectors is None or not torch.is_grad_enabled():
        return x @ weight.t()
    return _DeferredLinear.apply(x, weight, collectors.get(name), first)


class LayerWeights(NamedTuple):
    w_in: Tensor  # (4H, I) input part not precomputed; may have zero columns
    w_hh: Tensor  # (4H, H)
    bias: Tensor  # (4H,) b_ih + b_hh


def input_projection(rnn: nn.LSTM, emb: Tensor) -> Tensor:
    """emb (..., E) -> layer 0's gate pre-activations from the embedding columns, plus both biases."""
    e = emb.size(-1)
    return torch.nn.functional.linear(emb, rnn.weight_ih_l0[:, :e], rnn.bias_ih_l0 + rnn.bias_hh_l0)


def lstm_step(
    gates_in: Tensor,
    x: Tensor | None,
    h: Tensor,
    c: Tensor,
    w: LayerWeights,
    name: str,
    collectors: Collectors | None,
    first: bool,
) -> tuple[Tensor, Tensor]:
    """One LSTM layer step: gates_in (B, 4H) precomputed part, x (B, I) or None, h, c (B, H) -> h, c."""
    gates = gates_in + linear(h, w.w_hh, f"{name}.hh", collectors, first)
    if x is not None and x.size(1):
        gates = gates + linear(x, w.w_in, f"{name}.in", collectors, first)
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c
