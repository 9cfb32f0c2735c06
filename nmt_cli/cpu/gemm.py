"""fp32 matrix products through oneDNN where this torch build has it, else through torch's own (MKL).

torch.mm on x86 calls MKL, whose sgemm runs its AVX2 code on AMD CPUs, AVX-512 or not; oneDNN, which
torch also ships, takes the widest vector unit it finds (docs/performance.md, "oneDNN products"). Both are
IEEE fp32 with fp32 sums; the sums run in another order, so results differ in the last bits.

The oneDNN op (private.onednn_linear) has no autograd: `linear` and `mm` are for no-grad code and the
backward of autograd Functions, and `Linear` is nn.Linear with a backward written out, installed in place
of nn.Linear by cpu.install. NMT_GEMM=torch keeps every product on torch's own path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt_cli.cpu import private
from nmt_cli.cpu.pages import release_file_pages
from nmt_cli.cpu.threads import in_parallel

_LinearOp = Callable[..., Tensor]
PACKED_ROWS = 64  # the row count a packed weight is tuned for: translate's default batch

# oneDNN compiles and keeps a kernel (with its scratch buffers) for each product shape it meets. Training
# meets new shapes with every batch and wants few kept; decoding meets the same few again and again and
# wants many (docs/performance.md, "oneDNN kernel caches"). oneDNN reads the setting once, at its first
# use in the process, so set_cache_capacity must come before that; a user's own setting wins.
CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
TRAINING_CACHE, DECODING_CACHE = 16, 256
_USER_CACHES = {name for name in CACHE_VARIABLES if name in os.environ}


def set_cache_capacity(kernels: int) -> None:
    """How many compiled kernels oneDNN keeps per cache; effective only before its first use."""
    for name in CACHE_VARIABLES:
        if name not in _USER_CACHES:
            os.environ[name] = str(kernels)


set_cache_capacity(TRAINING_CACHE)  # the safe default; translate asks for more before its first product

_ONEDNN = private.onednn_linear


_WANTED = os.environ.get("NMT_GEMM", "onednn") != "torch"


def _use_onednn() -> bool:
    return _WANTED and _ONEDNN.available


def backend() -> str:
    """Which library runs the products: "onednn" or "torch" (NMT_GEMM=torch, or no usable oneDNN op)."""
    return "onednn" if _use_onednn() else "torch"


def _dense(t: Tensor) -> Tensor:
    """t itself when its rows or its columns are contiguous; oneDNN runs other strides very slowly."""
    return t if t.is_contiguous() or (t.dim() == 2 and t.t().is_contiguous()) else t.contiguous()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (..., K) @ weight (N, K).T + bias (N,), without autograd.

    weight may be a transposed view (oneDNN reads it as it is); x is made contiguous if it is not.
    """
    if not _WANTED or _ONEDNN.op is None or x.dtype != torch.float32 or weight.dtype != torch.float32:
        with torch.no_grad():
            return F.linear(x, weight, bias)
    return _ONEDNN.call(x.contiguous(), _dense(weight), bias, "none", [], "")


def mm(a: Tensor, b: Tensor) -> Tensor:
    """a (M, K) @ b (K, N), without autograd; may return a transposed view.

    The left operand must be contiguous for oneDNN. When a is not and b is, the product is taken the
    other way round, (b.T @ a.T).T, so that the smaller of the two is the one copied.
    """
    if not _WANTED or _ONEDNN.op is None or a.is_contiguous() or a.numel() <= b.numel():
        return linear(a, b.t())
    return linear(b.t(), a).t()


class _LinearFunction(torch.autograd.Function):
    """F.linear's forward and backward, each product through `linear`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = linear(grad, weight.t()) if ctx.needs_input_grad[0] else None
        rows = grad.reshape(-1, grad.size(-1))
        grad_w = mm(rows.t(), x.reshape(-1, x.size(-1))) if ctx.needs_input_grad[1] else None
        grad_b = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear_with_grad(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear with its products through `linear`, forward and backward."""
    if not _use_onednn():
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _LinearFunction.apply(x, weight, bias)
    return linear(x, weight, bias)


_packing = True  # off inside unpacked()
# Bumped by weights_changed() after every optimizer step (see cpu.install). Packed copies are keyed by it
# as well as by the weights' version counters: fused Adam updates parameters in place without bumping them.
_generation = 0


def weights_changed() -> None:
    """Call after updating weights in place (an optimizer step): every packed copy is made again."""
    global _generation
    _generation += 1


def weights_key(weights: list[Tensor]) -> tuple:
    """What a packed copy of these weights is valid for: their identity, versions and the generation."""
    return (_generation, *((w.data_ptr(), private.version(w)) for w in weights))


def pack_available() -> bool:
    """Whether `pack` and `linear_packed` run here (oneDNN with its weight reorder), and are wanted."""
    return _packing and _WANTED and private.onednn_reorder is not None and _ONEDNN.op is not None


@contextmanager
def unpacked() -> Iterator[None]:
    """Inside, layers use their weights as they are: to see which modules a step calls, for example."""
    global _packing
    before, _packing = _packing, False
    try:
        yield
    finally:
        _packing = before


def pack(weight: Tensor) -> Tensor | None:
    """weight (N, K) reordered into oneDNN's blocked layout for `linear_packed`; None without oneDNN.

    A reordered weight is a second copy. At inference, where weights stay fixed, it saves the reorder
    that oneDNN otherwise does inside every call (docs/performance.md, "packed weights").
    """
    global _reorder_checked
    if not pack_available() or weight.dtype != torch.float32:
        return None
    packed = private.onednn_reorder(weight.detach(), PACKED_ROWS)
    if not _reorder_checked:
        if not private.check_reorder(weight, packed):
            private.onednn_reorder = None
            return None
        _reorder_checked = True
    return packed


_reorder_checked = False


# Rows are padded to a multiple of ROW_BLOCK, and products of more rows run CHUNK_ROWS at a time: oneDNN
# compiles and keeps a kernel per row count, and decoding meets most row counts as sentences finish
# (docs/performance.md, "row padding").
ROW_BLOCK = 8
CHUNK_ROWS = PACKED_ROWS


def linear_packed(x: Tensor, packed: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (..., K) @ weight.T + bias, with weight as `pack` returned it; without autograd.

    The rows are padded to a multiple of ROW_BLOCK: oneDNN compiles a kernel for every row count it
    meets, and decoding meets most of 1..64 for each product as sentences finish one by one. Each row's
    result has the same bits whatever the row count and the chunk it falls in.
    """
    op = _ONEDNN.op
    assert op is not None, "pack_available() first"
    rows = x.reshape(-1, x.size(-1))
    M = rows.size(0)
    padded = -(-M // ROW_BLOCK) * ROW_BLOCK
    if padded != M:
        rows = torch.cat([rows, rows.new_zeros(padded - M, rows.size(1))])
    rows = rows.contiguous()
    if padded <= CHUNK_ROWS:
        out = op(rows, packed, bias, "none", [], "")
    else:
        out = torch.cat([op(chunk, packed, bias, "none", [], "") for chunk in rows.split(CHUNK_ROWS)])
    return (out if padded == M else out[:M]).view(*x.shape[:-1], out.size(-1))


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) whose products run through `linear`; without autograd,
    through a packed copy of the weight, made again when the weight changes."""

    _packed: tuple[tuple, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not pack_available() or torch.is_grad_enabled() or x.dtype != torch.float32:
            return linear_with_grad(x, self.weight, self.bias)
        key = weights_key([self.weight])
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, pack(self.weight))
            release_file_pages(self.weight)  # products read the packed copy only (see pages)
        if self._packed[1] is None:  # oneDNN's reorder failed its check: plain products
            return linear(x, self.weight, self.bias)
        return linear_packed(x, self._packed[1], self.bias)

    def drop_packed(self) -> None:
        """Forget the packed copy; the next forward without autograd makes it again."""
        self._packed = None

    def cut(self, rows: Tensor) -> nn.Module:
        """The layer for output rows `rows` (V',) alone, packed as this layer packs its weight (a
        vocabulary shortlist's output layer)."""
        bias = None if self.bias is None else self.bias.detach().index_select(0, rows)
        return PackedRows(self.weight.detach(), rows, bias)


# A packed cut gets zero rows up to a multiple of this: oneDNN compiles and keeps a kernel for every shape
# it meets, and each batch's shortlist has a row count of its own (docs/performance.md, "shortlists").
CUT_BLOCK = 512


class PackedRows(nn.Module):
    """x @ weight[rows].T + bias, the bias already cut. The rows are packed as Linear packs its weight, so
    that a cut of every row gives the full layer's bits; the packed copy has zero rows up to a multiple of
    CUT_BLOCK, whose outputs are cut off again."""

    def __init__(self, weight: Tensor, rows: Tensor, bias: Tensor | None):
        super().__init__()
        self.out_features, self.bias = len(rows), bias
        self.weight = self.packed = self.padded_bias = None
        padded = -(-len(rows) // CUT_BLOCK) * CUT_BLOCK
        if pack_available():
            cut = weight.new_zeros(padded, weight.size(1))
            torch.index_select(weight, 0, rows, out=cut[: len(rows)])
            self.packed = pack(cut)
        if self.packed is None:
            self.weight = weight.index_select(0, rows)
        elif bias is not None:
            self.padded_bias = torch.cat([bias, bias.new_zeros(padded - len(rows))])

    def forward(self, x: Tensor) -> Tensor:
        if self.packed is None:
            return in_parallel(lambda: linear(x, self.weight, self.bias))
        out = in_parallel(lambda: linear_packed(x, self.packed, self.padded_bias))
        return out[..., : self.out_features]
