"""LSTM cells stepped by hand over nn.LSTM's own weights, with weight gradients deferred: the decoder's,
and in training the encoder's (lstm_sequence, for memory).

Stepping nn.LSTM one position at a time is slow on CPU: every step's backward is a separate library call
that also builds and accumulates full weight gradients. Here the embedding part of the input projection
is done for several steps in one matmul, and each recurrent matmul's weight gradient is collected over
the steps and computed in a few large matmuls as the backward pass goes. The arithmetic is exactly that
of nn.LSTM (gate order i, f, g, o), so both paths share weights. Attention's per-step products with the
encoder keys and memory (`matvec`) defer their gradient the same way, as one batched matmul over all
steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from nmt_cli.cpu import compiled, gemm
from nmt_cli.cpu.layers import tanh


def _plus(product: Tensor, add: Tensor | None) -> Tensor:
    """product + add, in place in the fresh product; add None adds nothing."""
    return product if add is None else product.add_(add)


# Collected (gradient, input) pairs are turned into a weight gradient once they hold this many rows: a
# product as efficient as one over all steps, without keeping every step's gradient and a concatenated
# copy of all of them at step 0.
FLUSH_ROWS = 2048
PROJECTION_STEPS = 8  # positions per input-projection product (projected_steps)


class _DeferredLinear(torch.autograd.Function):
    """add + x @ w.T whose weight gradient is summed over the steps of a sequence in a few large matmuls.

    The backward pass collects each step's pair and returns their weight gradient every FLUSH_ROWS rows
    and at step 0; autograd adds the partial sums up, as it does for any weight used at several steps.
    """

    @staticmethod
    def forward(
        ctx: Any, add: Tensor | None, x: Tensor, weight: Tensor, collector: list, first: bool
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.collector, ctx.first = collector, first
        return _plus(gemm.linear(x, weight), add)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        pairs = ctx.collector
        pairs.append((grad, x))
        grad_weight = None
        # step 0 is reached last: every later step has added its pair by now
        if ctx.first or len(pairs) * grad.size(0) >= FLUSH_ROWS:
            grads, inputs = zip(*pairs, strict=True)
            grad_weight = gemm.mm(torch.cat(grads).t(), torch.cat(inputs))
            pairs.clear()
        grad_add = grad if ctx.needs_input_grad[0] else None
        grad_x = gemm.mm(grad, weight) if ctx.needs_input_grad[1] else None
        return grad_add, grad_x, grad_weight, None, None


def _bmv(mat: Tensor, vec: Tensor, transposed: bool) -> Tensor:
    """mat (B, S, D) @ vec (B, D) -> (B, S), or with `transposed` vec (B, S) @ mat -> (B, D)."""
    # vec as a row, (B, 1, D) @ mat^T: torch's bmm for a (B, S, D) @ (B, D, 1) column takes a much
    # slower path on CPU (bench/profiles.py bmv)
    if transposed:
        return torch.bmm(vec.unsqueeze(1), mat).squeeze(1)
    return torch.bmm(vec.unsqueeze(1), mat.transpose(1, 2)).squeeze(1)


class _DeferredMatvec(torch.autograd.Function):
    """_bmv whose gradient for mat is summed over all steps of a sequence in one batched matmul.

    Attention reads the same encoder keys and memory at every decoder step. Autograd would write a
    (B, S, D) outer product per step and add it into their gradient; here the pairs are kept and the
    gradient is one batched matmul over all steps when the backward pass reaches step 0.
    """

    @staticmethod
    def forward(ctx: Any, mat: Tensor, vec: Tensor, collector: list, first: bool, transposed: bool) -> Tensor:
        ctx.save_for_backward(mat, vec)
        ctx.collector, ctx.first, ctx.transposed = collector, first, transposed
        return _bmv(mat, vec, transposed)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        mat, vec = ctx.saved_tensors
        # grad_mat[b] = sum over steps of left[b] (S,) outer right[b] (D,)
        ctx.collector.append((vec, grad) if ctx.transposed else (grad, vec))
        grad_mat = None
        if ctx.first:
            lefts, rights = zip(*ctx.collector, strict=True)
            grad_mat = torch.bmm(torch.stack(lefts, 2), torch.stack(rights, 1))
            ctx.collector.clear()
        # the gradient for vec is the product the other way round
        return grad_mat, _bmv(mat, grad, not ctx.transposed), None, None, None


def matvec(
    mat: Tensor, vec: Tensor, name: str, collectors: Collectors | None, first: bool, transposed: bool = False
) -> Tensor:
    """mat (B, S, D) @ vec (B, D) -> (B, S), or vec (B, S) @ mat -> (B, D) when transposed; while
    training, mat's gradient is deferred to one batched matmul at step 0."""
    if collectors is None or not torch.is_grad_enabled():
        return _bmv(mat, vec, transposed)
    return _DeferredMatvec.apply(mat, vec, collectors.get(name), first, transposed)


class _GatesToState(torch.autograd.Function):
    """LSTM pointwise part, gates (B, 4H) and c (B, H) -> h, c', as one autograd node.

    Autograd would record nine nodes per step and keep their inputs; this keeps the four activated
    gates and c' (the next step keeps it too, so it costs nothing there), recomputes tanh(c') in
    backward, and writes the gate gradient in one buffer (compiled.py: both directions one loop each).
    """

    @staticmethod
    def forward(ctx: Any, gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        h, c_new, act = compiled.lstm_pointwise(gates, c)
        ctx.save_for_backward(act, c, c_new)
        return h, c_new

    @staticmethod
    def backward(ctx: Any, grad_h: Tensor, grad_c: Tensor) -> tuple[Tensor, Tensor]:
        return compiled.lstm_pointwise_backward(grad_h, grad_c, *ctx.saved_tensors)


def gates_to_state(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """LSTM pointwise part: gates (B, 4H) in nn.LSTM's order i, f, g, o, and c (B, H) -> h, c'."""
    if torch.is_grad_enabled():
        return _GatesToState.apply(gates, c)
    # decoding steps here: the same arithmetic without the autograd node, tanh through sigmoid (see
    # layers.tanh), g's written in place
    H = c.size(1)
    act = torch.sigmoid(gates)
    tanh(gates[:, 2 * H : 3 * H], out=act[:, 2 * H : 3 * H])
    i, f, g, o = act.chunk(4, dim=1)
    c_new = torch.addcmul(f * c, i, g)
    return o * tanh(c_new), c_new


class Collectors:
    """One gradient collector per recurrent weight, made fresh for each teacher-forced batch."""

    def __init__(self) -> None:
        self.lists: dict[str, list] = {}

    def get(self, name: str) -> list:
        return self.lists.setdefault(name, [])


def linear(
    x: Tensor,
    weight: Tensor,
    name: str,
    collectors: Collectors,
    first: bool,
    add: Tensor | None = None,
) -> Tensor:
    """add + x (B, I) @ weight (O, I).T -> (B, O); deferred weight gradient while training."""
    if not torch.is_grad_enabled():
        return _plus(gemm.linear(x, weight), add)
    return _DeferredLinear.apply(add, x, weight, collectors.get(name), first)


class LayerWeights(NamedTuple):
    weight: Tensor  # (4H, I + H): [input columns not precomputed | recurrent], one matmul per step
    bias: Tensor  # (4H,) b_ih + b_hh


def input_projection(rnn: nn.LSTM, emb: Tensor) -> Tensor:
    """emb (..., E) -> layer 0's gate pre-activations from the embedding columns, plus both biases."""
    e = emb.size(-1)
    return gemm.linear_with_grad(emb, rnn.weight_ih_l0[:, :e], rnn.bias_ih_l0 + rnn.bias_hh_l0)


def projected_steps(rnn: nn.LSTM, x: Tensor) -> Iterator[Tensor]:
    """input_projection of x (B, S, E), one (B, 4H) tensor per position, made PROJECTION_STEPS positions
    per product as the caller's loop reaches them.

    Made inside the loop, each chunk's autograd node comes after the steps before it, so backward runs it
    as soon as its own steps are done: it holds one chunk's step gradients at a time, where one product
    for the whole sequence holds all of them and then a stacked copy.
    """
    for chunk in x.split(PROJECTION_STEPS, dim=1):
        # unbind, not chunk[:, t]: backward stacks the step gradients once instead of filling a zero
        # (B, PROJECTION_STEPS, 4H) tensor for every step
        yield from input_projection(rnn, chunk).unbind(1)


def lstm_step(
    gates_in: Tensor,
    x: Tensor,
    h: Tensor,
    c: Tensor,
    w: LayerWeights,
    name: str,
    collectors: Collectors,
    first: bool,
) -> tuple[Tensor, Tensor]:
    """One LSTM layer step: gates_in (B, 4H) precomputed part, x (B, I), h, c (B, H) -> h, c."""
    gates = linear(torch.cat([x, h], dim=1), w.weight, name, collectors, first, add=gates_in)
    return gates_to_state(gates, c)


def lstm_sequence(rnn: nn.LSTM, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """A one-layer, one-direction nn.LSTM over x (B, S, I) from a zero state, stepped by hand -> outputs
    (B, S, H), and given lengths (B,) the cell states after each row's last real position (B, H), else None.

    For training, where the encoder runs it: per position it keeps the four activated gates, the cell
    state and the output (6H floats), where oneDNN's fused LSTM keeps a workspace of about 18H
    (python bench/profiles.py encoder-lstm).
    """
    assert rnn.num_layers == 1 and not rnn.bidirectional, "one layer, one direction"
    steps = projected_steps(rnn, x)
    h = c = x.new_zeros(x.size(0), rnn.hidden_size)
    collectors, outputs, cells = Collectors(), [], []
    for t, gates_in in enumerate(steps):
        # step 0 multiplies the zero state too: the recurrent weight then gets a (zero) gradient even for
        # one-piece sources, as from nn.LSTM, and Adam treats it the same
        h, c = gates_to_state(linear(h, rnn.weight_hh_l0, "hh", collectors, t == 0, add=gates_in), c)
        outputs.append(h)
        if lengths is not None:
            cells.append(c)
    if lengths is None:
        return torch.stack(outputs, 1), None
    last = (lengths.to(x.device) - 1).view(-1, 1, 1).expand(-1, 1, rnn.hidden_size)
    return torch.stack(outputs, 1), torch.stack(cells, 1).gather(1, last).squeeze(1)
