"""Every private torch API nmt uses, looked up here and nowhere else, each with a public fallback.

Checked on torch 2.13 (the pyproject's range). Private ops can vanish or change between releases, or be
present and wrong on a given CPU, so an op is used only after its first call has agreed with the public
equivalent on the same inputs (`_Checked`); if it is missing, raises, or disagrees, the public path runs for
the rest of the process. Looking an op up never runs it: oneDNN reads its cache settings at its first use,
which the process settings (process.py) must come before.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)
CHECKED_ON = "2.13"


def _lookup(get: Callable[[], Any]) -> Any:  # noqa: ANN401 - an op of torch's dispatcher
    try:
        return get()
    except (AttributeError, RuntimeError):
        return None


class _Checked:
    """A private op that replaces a public one once its first result has matched the public result."""

    def __init__(
        self, name: str, op: Callable[..., Tensor] | None, public: Callable[..., Tensor], tol: float
    ):
        self.name, self.op, self.public, self.tol = name, op, public, tol
        self.trusted = False
        self.lock = threading.Lock()
        # what callers call: the check until the first call has passed, then the op itself (or the public
        # one for good), so that a trusted op costs no Python call of its own
        self.call: Callable[..., Tensor] = self._checking if op is not None else public

    @property
    def available(self) -> bool:
        return self.op is not None

    def __call__(self, *args: Any) -> Tensor:  # noqa: ANN401
        return self.call(*args)

    def _checking(self, *args: Any) -> Tensor:  # noqa: ANN401
        with self.lock:
            if self.trusted or self.op is None:
                return self.call(*args)
            return self._first_call(*args)

    def _first_call(self, *args: Any) -> Tensor:  # noqa: ANN401
        expected = self.public(*args)
        try:
            got = self.op(*args)  # type: ignore[misc]
            ok = got.shape == expected.shape and _agree(got, expected, self.tol)
        except RuntimeError as e:
            got, ok = None, False
            log.debug("%s failed on first call: %s", self.name, e)
        if not ok:
            log.warning("torch's %s is unusable here; using the public op instead", self.name)
            self.op, self.call = None, self.public
            return expected
        self.trusted, self.call = True, self.op  # type: ignore[assignment]
        return got  # type: ignore[return-value]


def _agree(got: Tensor, expected: Tensor, tol: float) -> bool:
    """Whether two results agree to a relative tolerance over the whole result: products summed in another
    order differ in their last bits, more so the longer the sums, while a broken kernel is off entirely."""
    got, expected = got.double(), expected.double()
    return bool(torch.linalg.vector_norm(got - expected) <= tol * torch.linalg.vector_norm(expected))


def _onednn_linear_public(x: Tensor, weight: Tensor, bias: Tensor | None, *_: Any) -> Tensor:  # noqa: ANN401
    with torch.no_grad():
        return F.linear(x, weight, bias)


def _onednn_op() -> Callable[..., Tensor] | None:
    if not torch.backends.mkldnn.is_available():
        return None
    return _lookup(lambda: torch.ops.mkldnn._linear_pointwise)


# x @ weight.T + bias through oneDNN: (x, weight, bias, "none", [], "") as torch.compile emits it for CPU
onednn_linear = _Checked("mkldnn._linear_pointwise", _onednn_op(), _onednn_linear_public, tol=1e-5)
# weight (N, K) reordered into oneDNN's blocked layout for a given row count; usable only by onednn_linear
onednn_reorder = _lookup(lambda: torch.ops.mkldnn._reorder_linear_weight)
if onednn_linear.op is None:
    onednn_reorder = None


def check_reorder(weight: Tensor, packed: Tensor) -> bool:
    """Whether a reordered weight gives the plain weight's products (checked once, on first pack)."""
    # a fixed probe: drawing from the global generator would shift dropout masks and break exact resume
    probe = torch.linspace(-1.0, 1.0, 3 * weight.size(1)).view(3, -1)
    try:
        got = onednn_linear.op(probe, packed, None, "none", [], "") if onednn_linear.op else None
    except RuntimeError:
        return False
    return got is not None and _agree(got, F.linear(probe, weight.detach()), 1e-5)


def _int_mm_public(a: Tensor, b: Tensor) -> Tensor:
    return (a.to(torch.int32) @ b.to(torch.int32)).to(torch.int32)


# int8 (M, K) @ int8 (K, N) -> int32 (M, N), exact sums
int_mm = _Checked("_int_mm", _lookup(lambda: torch._int_mm), _int_mm_public, tol=0.0)


def fbgemm_available() -> bool:
    """Whether this build has fbgemm's dynamic quantized linear (torch calls these ops deprecated)."""
    op = _lookup(lambda: torch.ops.quantized.linear_dynamic)
    return op is not None and "fbgemm" in torch.backends.quantized.supported_engines


def fbgemm_pack(values: Tensor) -> Any:  # noqa: ANN401 - torch's packed-params object
    """fbgemm's packed copy of int8 weight values (N, K) with scale 1."""
    import warnings

    torch.backends.quantized.engine = "fbgemm"  # a packed weight runs on the engine that packed it
    with warnings.catch_warnings():  # torch calls quantized tensors deprecated; the kernels are not
        warnings.simplefilter("ignore", UserWarning)
        return torch.ops.quantized.linear_prepack(
            torch._make_per_tensor_quantized_tensor(values, 1.0, 0), None
        )


def fbgemm_linear(rows: Tensor, packed: Any) -> Tensor:  # noqa: ANN401
    """rows (M, K) float @ a packed int8 weight, fbgemm quantizing the rows with one range, fp32 out."""
    return torch.ops.quantized.linear_dynamic(rows, packed, True)


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512_BF16 or AMX)."""
    probes = [
        _lookup(lambda: torch.cpu._is_avx512_bf16_supported),
        _lookup(lambda: torch.cpu._is_amx_tile_supported),
    ]
    return any(probe is not None and probe() for probe in probes)


def version(t: Tensor) -> int:
    """A tensor's in-place update counter (fused optimizers do not bump it: see gemm.weights_changed)."""
    return getattr(t, "_version", 0)


def with_module(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """A shallow copy of model sharing every submodule but `name`, which is `module`: the original is
    left as it is, for other threads and batches."""
    view = copy.copy(model)
    view._modules = {**model._modules, name: module}
    return view
