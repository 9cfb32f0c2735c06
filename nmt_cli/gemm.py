"""fp32 matrix products through oneDNN where this torch build has it, else through torch's own (MKL).

torch.mm on x86 calls MKL, whose sgemm runs its AVX2 code on AMD CPUs, AVX-512 or not. oneDNN, which
torch also ships (it runs the LSTM layers), takes the widest vector unit it finds. On the 2-core AMD EPYC
(AVX-512) benchmark machine, 2048² products run at ~200 GFLOP/s through torch.mm and ~400 through oneDNN,
and base-rnn's products 1.75-2.5x faster (`python bench/profiles.py gemm`). Both are IEEE fp32 with fp32
accumulation, no reduced precision; the sums run in another order, so results differ in the last bits.

The oneDNN call (`torch.ops.mkldnn._linear_pointwise`, what torch.compile emits for CPU linears) has no
autograd: `linear` and `mm` are for no-grad code and the backward of autograd Functions, and `Linear`
is nn.Linear with a backward written out. NMT_GEMM=torch keeps every product on torch's own path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt_cli.pages import release_file_pages

_LinearOp = Callable[..., Tensor]
PACKED_ROWS = 64  # the row count a packed weight is tuned for: translate's default batch

# oneDNN compiles a kernel for each product shape it meets and keeps up to 1,024 in each of two caches;
# a kept kernel keeps its scratch buffer too (a packed copy of an operand: megabytes for base-rnn's).
# Training meets new shapes with every batch (rows are sentences): a base-rnn batch runs about 33, of which
# 9-15 again and again in its step loops. Its peak over 40 updates was 956 MB with 32 kept, 891 with 16
# and 869 with 8, at 1.00x and 0.95x the tokens/s of 32 (5 rounds each); 256 took it to 1,566 over 80.
# Decoding met a shape for every row count of every product, and re-compiling them cost it 1.4x
# (391 against 548 sentences/s greedy with 32 and 256 kept); since linear_packed pads rows to multiples
# of ROW_BLOCK, greedy over test_2016_flickr compiles 56 (ONEDNN_VERBOSE=all), not 244. oneDNN reads
# the setting once, at its first use in the process: set_cache_capacity must come before that, and a
# user's own setting wins.
CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
TRAINING_CACHE, DECODING_CACHE = 16, 256
_USER_CACHES = {name for name in CACHE_VARIABLES if name in os.environ}


def set_cache_capacity(kernels: int) -> None:
    """How many compiled kernels oneDNN keeps per cache; effective only before its first use."""
    for name in CACHE_VARIABLES:
        if name not in _USER_CACHES:
            os.environ[name] = str(kernels)


set_cache_capacity(TRAINING_CACHE)  # the safe default; translate asks for more before it loads a model


def _onednn_linear() -> _LinearOp | None:
    """The oneDNN linear op when this build has it (looked up, not run: running it would fix the caches)."""
    if os.environ.get("NMT_GEMM", "onednn") == "torch" or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without it
        return None


_ONEDNN = _onednn_linear()


def backend() -> str:
    """Which library runs the products: "onednn" or "torch"."""
    return "torch" if _ONEDNN is None else "onednn"


def _dense(t: Tensor) -> Tensor:
    """t itself when its rows or its columns are contiguous; oneDNN runs other strides very slowly."""
    return t if t.is_contiguous() or (t.dim() == 2 and t.t().is_contiguous()) else t.contiguous()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (..., K) @ weight (N, K).T + bias (N,), without autograd.

    weight may be a transposed view (oneDNN reads it as it is); x is made contiguous if it is not.
    """
    if _ONEDNN is None or x.dtype != torch.float32 or weight.dtype != torch.float32:
        with torch.no_grad():
            return F.linear(x, weight, bias)
    return _ONEDNN(x.contiguous(), _dense(weight), bias, "none", [], "")


def mm(a: Tensor, b: Tensor) -> Tensor:
    """a (M, K) @ b (K, N), without autograd; may return a transposed view.

    The left operand must be contiguous for oneDNN. When a is not and b is, the product is taken the
    other way round, (b.T @ a.T).T, so that the smaller of the two is the one copied.
    """
    if _ONEDNN is None or a.is_contiguous() or a.numel() <= b.numel():
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
    if _ONEDNN is None:
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _LinearFunction.apply(x, weight, bias)
    return linear(x, weight, bias)


def _reorder_op() -> Callable[..., Tensor] | None:
    try:  # looked up only, as _onednn_linear
        return None if _ONEDNN is None else torch.ops.mkldnn._reorder_linear_weight
    except (AttributeError, RuntimeError):
        return None


_REORDER = _reorder_op()


_packing = True  # off inside unpacked()
# Bumped by weights_changed(). Packed copies are keyed by it as well as by the weights' version counters:
# fused Adam updates parameters in place without bumping their version (torch 2.13).
_generation = 0


def weights_changed() -> None:
    """Call after updating weights in place (an optimizer step): every packed copy is made again."""
    global _generation
    _generation += 1


def weights_key(weights: list[Tensor]) -> tuple:
    """What a packed copy of these weights is valid for: their identity, versions and the generation."""
    return (_generation, *((w.data_ptr(), w._version) for w in weights))


def pack_available() -> bool:
    """Whether `pack` and `linear_packed` run here (oneDNN with its weight reorder), and are wanted."""
    return _REORDER is not None and _packing


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
    that oneDNN otherwise does inside every call: a 64-row output layer takes 1.25 instead of 1.76 ms.
    """
    if _REORDER is None or weight.dtype != torch.float32:
        return None
    return _REORDER(weight.detach(), PACKED_ROWS)


# One compiled kernel per 8 row counts, at the cost of up to 7 rows of padding: fp32 greedy over
# test_2016_flickr at 0.97x the speed (176.4 against 181.3 lines/s, medians of 8 interleaved rounds) and
# 0.88x the peak RSS (501 against 576 MB).
ROW_BLOCK = 8
# Products of more rows run CHUNK_ROWS at a time. oneDNN compiles and keeps a kernel, and sizes each call's
# buffers, by the row count: beam 5 (up to 160 rows a step per worker) met 20 row counts per product over
# test_2016_flickr, and the encoder's attention keys (sentences x words) a new one with every batch. In
# pieces of at most 64 rows there are 8, whatever the batch size: fp32 beam 5 peaked at 341-350 MB
# against 378-395, the same bits, at 0.91x the decoding speed (the pieces' outputs are copied together).
CHUNK_ROWS = PACKED_ROWS


def linear_packed(x: Tensor, packed: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (..., K) @ weight.T + bias, with weight as `pack` returned it; without autograd.

    The rows are padded to a multiple of ROW_BLOCK: oneDNN compiles a kernel for every row count it
    meets, and decoding meets most of 1..64 for each product as sentences finish one by one. Each row's
    result has the same bits whatever the row count and the chunk it falls in.
    """
    assert _ONEDNN is not None
    rows = x.reshape(-1, x.size(-1))
    M = rows.size(0)
    padded = -(-M // ROW_BLOCK) * ROW_BLOCK
    if padded != M:
        rows = torch.cat([rows, rows.new_zeros(padded - M, rows.size(1))])
    rows = rows.contiguous()
    if padded <= CHUNK_ROWS:
        out = _ONEDNN(rows, packed, bias, "none", [], "")
    else:
        out = torch.cat([_ONEDNN(chunk, packed, bias, "none", [], "") for chunk in rows.split(CHUNK_ROWS)])
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
        return linear_packed(x, self._packed[1], self.bias)

    def drop_packed(self) -> None:
        """Forget the packed copy; the next forward without autograd makes it again."""
        self._packed = None
