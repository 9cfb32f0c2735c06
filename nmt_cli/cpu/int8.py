"""int8 decoding on CPU (`--int8`): weights per output channel, activations per row, exact int32 sums.

Each Linear and LSTM layer that decoding calls gets its weights quantized once (symmetric, one scale per
output channel); each row of an input is quantized as it comes, with its own scale, and the product runs
in int8 with int32 sums (Jacob et al. 2018). A row's result depends on that row alone, so int8 output does
not change with batch size or batch-mates (torch.ao's dynamic quantization lets the batch's largest
activation set every row's scale). A shortlist takes a subset of an int8 layer's columns as they are.

Two kernels run the int8 products (KERNEL): torch's _int_mm where oneDNN has its AVX-512 int8 code, and
fbgemm's quantized linear elsewhere (AVX2), which quantizes its input with one range for all rows: each row
is scaled to [-1, 1] first and two fence rows of +1 and -1 are added, so a row's result still depends on
that row alone. fbgemm keeps activations to 7 bits, so the two kernels give slightly different numbers;
the decoding signature says which ran, and NMT_INT8_KERNEL=int_mm or fbgemm picks one.

The encoder's LSTMs run a whole sentence per call in oneDNN's fused kernel, which has no int8 form in
torch; where the CPU multiplies bfloat16 natively (AVX512_BF16 or AMX), they run in bfloat16 with fp32
sums (ENCODER; NMT_INT8_ENCODER=bf16 or fp32 chooses). docs/performance.md has the figures.
"""

from __future__ import annotations

import copy
import gc
import os
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from nmt_cli.cpu import gemm, private
from nmt_cli.cpu.cell import gates_to_state
from nmt_cli.cpu.pages import release_file_pages
from nmt_cli.cpu.threads import in_parallel
from nmt_cli.errors import ConfigError
from nmt_cli.model import Seq2Seq

_TINY = 1e-12  # an all-zero row gets this scale instead of 0, and quantizes to zeros
QUANTIZE_ROWS = 256  # rows of a weight quantized at a time (Int8Weight.of)
KERNELS = ("int_mm", "fbgemm")


def _fbgemm_available() -> bool:
    return private.fbgemm_available()


def _kernel() -> str:
    """Which kernel runs int8 products here: NMT_INT8_KERNEL (checked by int8_dynamic), else _int_mm on
    AVX-512 CPUs, else fbgemm where this build has it."""
    chosen = os.environ.get("NMT_INT8_KERNEL")
    if chosen:
        return chosen
    if torch.backends.cpu.get_cpu_capability().startswith("AVX512") or not _fbgemm_available():
        return "int_mm"
    return "fbgemm"


def _check_settings(kernel: str) -> None:
    """NMT_INT8_KERNEL and NMT_INT8_ENCODER as read at import, refused with a clear error if unknown."""
    if kernel not in KERNELS:
        raise ConfigError(f"NMT_INT8_KERNEL={kernel!r}: expected one of {', '.join(KERNELS)}")
    if ENCODER not in ENCODER_PRECISIONS:
        raise ConfigError(f"NMT_INT8_ENCODER={ENCODER!r}: expected one of {', '.join(ENCODER_PRECISIONS)}")
    if kernel == "fbgemm" and not _fbgemm_available():
        raise ConfigError("NMT_INT8_KERNEL=fbgemm: this torch build has no fbgemm")


KERNEL = _kernel()
ENCODER_PRECISIONS = ("bf16", "fp32")


def _native_bf16() -> bool:
    return private.native_bf16()


def _encoder_precision() -> str:
    """The precision of the encoder's LSTMs under --int8: NMT_INT8_ENCODER (checked by int8_dynamic),
    else bf16 where the CPU has it natively, else fp32."""
    return os.environ.get("NMT_INT8_ENCODER") or ("bf16" if _native_bf16() else "fp32")


ENCODER = _encoder_precision()


def _fbgemm_pack(values: Tensor) -> Any:  # noqa: ANN401 - torch's packed-params object
    """fbgemm's packed copy of int8 weight values (N, K), with scale 1: the per-channel scales are applied
    to its output (per-channel packing made shortlist cuts slower, products no faster)."""
    return private.fbgemm_pack(values)


class Int8Weight(NamedTuple):
    values: Tensor  # (K, N) int8: the transpose of a row-major (N, K) matrix, as _int_mm takes it fastest
    scales: Tensor  # (N,) one per output channel
    packed: Any = None  # fbgemm's copy, where KERNEL is fbgemm

    @staticmethod
    def of(weight: Tensor) -> Int8Weight:
        """weight (N, K) -> symmetric int8 with one scale per row (output channel), for KERNEL.

        QUANTIZE_ROWS rows at a time: each row's values depend on that row alone, and whole-matrix fp32
        temporaries would grow the heap for good."""
        weight = weight.detach()
        values = torch.empty(weight.shape, dtype=torch.int8)
        scales = torch.empty(len(weight))
        for start in range(0, len(weight), QUANTIZE_ROWS):
            rows = weight[start : start + QUANTIZE_ROWS].float()
            row_scales = rows.abs().amax(dim=1).clamp_min(_TINY) / 127.0
            values[start : start + len(rows)] = torch.round(rows / row_scales.unsqueeze(1))
            scales[start : start + len(rows)] = row_scales
        return Int8Weight._made(values, scales, KERNEL)

    @staticmethod
    def _made(values: Tensor, scales: Tensor, kernel: str) -> Int8Weight:
        packed = _fbgemm_pack(values) if kernel == "fbgemm" else None
        return Int8Weight(values.t(), scales, packed)

    def columns(self, index: Tensor) -> Int8Weight:
        """The output channels `index` alone, in the same transposed layout: rows of the (N, K) storage
        are gathered, much faster than columns of the (K, N) view."""
        rows, scales = self.values.t().index_select(0, index), self.scales.index_select(0, index)
        return Int8Weight._made(rows, scales, "int_mm" if self.packed is None else "fbgemm")


def _fbgemm_matmul(x: Tensor, w: Int8Weight, bias: Tensor | None) -> Tensor:
    """int8_matmul through fbgemm: rows scaled to [-1, 1] and fenced by a row of +1 and one of -1, so its
    one input range is [-1, 1] whatever the batch (see the module's docstring)."""
    M, K = x.shape
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min_(_TINY)
    rows = x.new_empty(M + 2, K)
    torch.div(x, scale, out=rows[:M])
    rows[M].fill_(1.0)
    rows[M + 1].fill_(-1.0)
    macs = M * K * w.values.size(1)
    out = in_parallel(lambda: private.fbgemm_linear(rows, w.packed), int8_macs=macs)
    out = out[:M].mul_(scale)
    return out.mul_(w.scales) if bias is None else torch.addcmul(bias, out, w.scales)


def int8_matmul(x: Tensor, w: Int8Weight, bias: Tensor | None = None) -> Tensor:
    """x (M, K) float @ the weight's transpose (+ bias) -> (M, N) float; each row of x quantized with its
    own scale. The scales are applied one axis at a time: broadcasting their (M, N) outer product, or
    linalg's inf-norm for the row maxima, each cost more than the int8 product itself."""
    if w.packed is not None:
        return _fbgemm_matmul(x, w, bias)
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min_(_TINY).div_(127.0)
    q = torch.div(x, scale).round_().to(torch.int8)
    macs = q.size(0) * q.size(1) * w.values.size(1)
    out = (
        in_parallel(lambda: private.int_mm(q, w.values), int8_macs=macs)
        .to(x.dtype)
        .mul_(scale)
        .mul_(w.scales)
    )
    return out if bias is None else out.add_(bias)


class Int8Linear(nn.Module):
    """nn.Linear with an int8 weight."""

    def __init__(self, weight: Int8Weight, bias: Tensor | None):
        super().__init__()
        self.weight, self.bias = weight, bias
        self.in_features, self.out_features = weight.values.shape

    @staticmethod
    def of(linear: nn.Linear) -> Int8Linear:
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return Int8Linear(Int8Weight.of(linear.weight), bias)

    def forward(self, x: Tensor) -> Tensor:
        out = int8_matmul(x.reshape(-1, self.in_features), self.weight, self.bias)
        return out.view(*x.shape[:-1], self.out_features)

    def cut(self, rows: Tensor) -> Int8Linear:
        """The layer for output rows `rows` (V',) alone: the same int8 values and scales (a shortlist)."""
        bias = None if self.bias is None else self.bias.index_select(0, rows)
        return Int8Linear(self.weight.columns(rows), bias)


class _Int8Layer(NamedTuple):
    weight: Int8Weight  # (4H, I + H): nn.LSTM's weight_ih and weight_hh side by side
    bias: Tensor  # (4H,) b_ih + b_hh


class Int8LSTM(nn.Module):
    """A unidirectional, batch-first nn.LSTM with int8 products, for inference.

    Each step of each layer is one product of [input | h], each row with its own scale: that is all a
    decoder step needs, and a longer input (teacher forcing an int8 model) steps through the same code.
    """

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        assert lstm.batch_first and not lstm.bidirectional and lstm.proj_size == 0, "as the model uses it"
        self.hidden_size, self.num_layers = lstm.hidden_size, lstm.num_layers
        self.layers = [
            _Int8Layer(
                Int8Weight.of(
                    torch.cat([getattr(lstm, f"weight_ih_l{i}"), getattr(lstm, f"weight_hh_l{i}")], 1)
                ),
                (getattr(lstm, f"bias_ih_l{i}") + getattr(lstm, f"bias_hh_l{i}")).detach(),
            )
            for i in range(lstm.num_layers)
        ]

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None):  # noqa: ANN201 - as nn.LSTM
        """x (B, T, I), state (h, c) each (L, B, H) or None -> output (B, T, H), (h, c) of the last step."""
        B, T, _ = x.shape
        if state is None:
            zeros = x.new_zeros(self.num_layers, B, self.hidden_size)
            state = (zeros, zeros)
        hs, cs = [], []
        for i, layer in enumerate(self.layers):
            h, c = state[0][i], state[1][i]
            outputs = []
            for t in range(T):
                h, c = gates_to_state(int8_matmul(torch.cat([x[:, t], h], 1), layer.weight, layer.bias), c)
                outputs.append(h)
            x = h.unsqueeze(1) if T == 1 else torch.stack(outputs, dim=1)  # a decoder step: no copy
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))


class Bf16LSTM(nn.Module):
    """An nn.LSTM run in bfloat16 (fp32 sums inside oneDNN), taking and giving fp32, for inference."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        self.lstm = copy.deepcopy(lstm).to(torch.bfloat16)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None):  # noqa: ANN201 - as nn.LSTM
        if state is not None:
            state = (state[0].to(torch.bfloat16), state[1].to(torch.bfloat16))
        out, (h, c) = self.lstm(x.to(torch.bfloat16), state)
        return out.float(), (h.float(), c.float())


def int8_dynamic(model: Seq2Seq) -> Seq2Seq:
    """The same model with int8 Linear layers and an int8 decoder LSTM, converted in place; for decoding
    on CPU. The encoder's LSTMs are not stepped in int8: over a whole sentence at once, the fused oneDNN
    kernel runs in less time than stepping int8 products one position at a time. They run in ENCODER's
    precision (see the module's docstring)."""
    _check_settings(KERNEL)
    names = _called_as_modules(model.eval())
    decoder_lstms = [name for name in names[nn.LSTM] if not name.startswith("encoder.")]
    encoder_lstms = [name for name in names[nn.LSTM] if name.startswith("encoder.")]
    for name in names[nn.Linear] + decoder_lstms + (encoder_lstms if ENCODER == "bf16" else []):
        parent, _, child = name.rpartition(".")
        layer = model.get_submodule(name)
        if isinstance(layer, nn.Linear):
            new: nn.Module = Int8Linear.of(layer)
        else:
            new = Int8LSTM(layer) if name in decoder_lstms else Bf16LSTM(layer)
        setattr(model.get_submodule(parent), child, new)
        for weight in layer.parameters():
            release_file_pages(weight)  # a mapped model file's pages of it are never read again
    gc.collect()  # the replaced fp32 layers may sit in reference cycles: free their weights now
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
        if isinstance(module, kind)
    ]
    try:
        src = torch.full((1, 2), 4, dtype=torch.long)  # any two real (non-special) ids
        with gemm.unpacked():  # or decode_step steps its LSTM by hand over packed weights
            enc = model.eval().encode(src, torch.tensor([2]))
            model.decode_step(torch.tensor([2]), enc.state, enc)
    finally:
        for hook in hooks:
            hook.remove()
    return {kind: sorted(set(names)) for kind, names in called.items()}


def int8_kernel(model: nn.Module) -> str | None:
    """The kernel that runs the model's int8 products ("int_mm" or "fbgemm"); None when it has none."""
    for module in model.modules():
        if isinstance(module, Int8Linear):
            return "int_mm" if module.weight.packed is None else "fbgemm"
    return None


def int8_label(model: nn.Module) -> str | None:
    """What --int8 made of the model, for the decoding signature: the kernel, and "+bf16-encoder" where
    the encoder's LSTMs run in bfloat16; None without int8 layers."""
    kernel = int8_kernel(model)
    if kernel is None:
        return None
    return kernel + ("+bf16-encoder" if any(isinstance(m, Bf16LSTM) for m in model.modules()) else "")
