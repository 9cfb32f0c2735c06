"""int8 dynamic quantization for CPU decoding, and output layers cut down to a shortlist's rows.

Dynamic quantization stores LSTM and Linear weights as int8 once and quantizes activations on each
call (Jacob et al. 2018). Every nn.LSTM and nn.Linear is converted, the decoder's one-step LSTM calls
included: on 2 AVX2 cores both the step's LSTM and its 8000-way output layer run several times faster.
Linear weights get one scale per output row, so a shortlist can take a subset of rows without
requantizing: a cut int8 layer gives exactly the scores the full one gives for those rows.
"""

from __future__ import annotations

import gc
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao.nn.quantized import dynamic as qdynamic
from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

from nmt_cli.model import Seq2Seq


def int8_dynamic(model: Seq2Seq) -> Seq2Seq:
    """The same model with int8 LSTM and Linear layers, converted in place; for decoding on CPU."""
    names = _called_as_modules(model)
    qconfig = {
        n: per_channel_dynamic_qconfig if n in names[nn.Linear] else default_dynamic_qconfig
        for n in names[nn.Linear] + names[nn.LSTM]
    }
    with warnings.catch_warnings():
        # torch marks torch.ao.quantization deprecated in favour of torchao, which is not a dependency
        warnings.simplefilter("ignore")
        quantize_dynamic(model.eval(), qconfig, dtype=torch.qint8, inplace=True)
    gc.collect()  # the replaced fp32 layers sit in reference cycles: free their weights now (33 MB)
    return model


@torch.inference_mode()
def _called_as_modules(model: Seq2Seq) -> dict[type, list[str]]:
    """Names of the LSTM and Linear layers that encode and decode_step call, found by running one step.

    Only a layer that the model calls can be swapped for an int8 one: a layer whose weight tensors the
    model reads itself (a hand-stepped LSTM cell, say) must stay as it is.
    """
    called: dict[type, list[str]] = {nn.Linear: [], nn.LSTM: []}
    hooks = [
        module.register_forward_pre_hook(lambda *_, name=name, kind=kind: called[kind].append(name))
        for name, module in model.named_modules()
        for kind in (nn.Linear, nn.LSTM)
        if type(module) is kind
    ]
    try:
        src = torch.full((1, 2), 4, dtype=torch.long)  # any two real (non-special) ids
        enc = model.eval().encode(src, torch.tensor([2]))
        model.decode_step(torch.tensor([2]), enc.state, enc)
    finally:
        for hook in hooks:
            hook.remove()
    return {kind: sorted(set(names)) for kind, names in called.items()}


def is_int8(model: nn.Module) -> bool:
    """True when any layer of the model was quantized by int8_dynamic."""
    return any(isinstance(m, (qdynamic.Linear, qdynamic.LSTM)) for m in model.modules())


class OutputRows:
    """An output layer's weights, unpacked once; cut(rows) gives a layer for a subset of its rows.

    Decoding with a shortlist cuts one layer per batch: unpacking an int8 layer costs about as much as
    decoding a short batch, so it is done once per model, not once per batch.
    """

    def __init__(self, linear: nn.Module):
        self.in_features = linear.in_features
        self.int8 = isinstance(linear, qdynamic.Linear)
        if not self.int8:
            self.weight, self.bias = linear.weight.detach(), linear.bias
            return
        weight, self.bias = linear._weight_bias()
        self.values = weight.int_repr()  # (V, H) int8
        self.per_row = weight.qscheme() == torch.per_channel_affine
        if self.per_row:
            self.scales, self.zero_points = weight.q_per_channel_scales(), weight.q_per_channel_zero_points()
        else:
            self.scales, self.zero_points = weight.q_scale(), weight.q_zero_point()

    def cut(self, rows: Tensor) -> nn.Module:
        """The layer for output rows `rows` (V',): the same weights (fp32) or int8 values and scales."""
        bias = None if self.bias is None else self.bias.detach().index_select(0, rows)
        if not self.int8:
            return _Linear(self.weight.index_select(0, rows), bias)
        values = self.values.index_select(0, rows)
        if self.per_row:
            scales, zero_points = self.scales.index_select(0, rows), self.zero_points.index_select(0, rows)
            weight = torch._make_per_channel_quantized_tensor(values, scales, zero_points, 0)
        else:
            weight = torch._make_per_tensor_quantized_tensor(values, self.scales, self.zero_points)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the quantized-tensor deprecation notice, as in int8_dynamic
            return _Int8Linear(torch.ops.quantized.linear_prepack(weight, bias))


class _Int8Linear(nn.Module):
    """What qdynamic.Linear computes, from packed weights (its constructor packs a dummy matrix first)."""

    def __init__(self, packed: Any):
        super().__init__()
        self.packed = packed

    def forward(self, x: Tensor) -> Tensor:
        # reduce_range as qdynamic.Linear (version 4) uses it, so a cut layer gives the full layer's bits
        return torch.ops.quantized.linear_dynamic(x, self.packed, reduce_range=True)


class _Linear(nn.Module):
    """x @ weight.T + bias with given tensors: no random init to throw away, unlike nn.Linear."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)
