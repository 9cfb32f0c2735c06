"""Training's element-wise step work compiled by torch.compile (Inductor's C++ backend): one loop for what
eager mode runs as a dozen small kernels, with their dispatches and passes over memory.

Off with NMT_COMPILE=0 (and with all CPU swaps, NMT_PLAIN=1). Compiling needs a C++ compiler and happens
once per process, at the first training step (Inductor keeps the code on disk for the next process). If it
fails, or its first result disagrees with the eager function's, the eager function runs for the rest of the
process, as for the private ops in private.py. Decoding keeps the eager code: its steps run on several
worker threads, and torch.compile's tracing is not made for that.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import torch
from torch import Tensor

log = logging.getLogger(__name__)
OFF_SWITCH = "NMT_COMPILE"
TOLERANCE = 1e-5  # relative, over the whole result: tanh through sigmoid is within a few ulps


def wanted() -> bool:
    """Whether compiled element-wise code is to be tried in this process: unless NMT_COMPILE=0."""
    return os.environ.get(OFF_SWITCH, "") not in ("0", "false", "no")


def _tanh(x: Tensor) -> Tensor:
    # Inductor's vectorised tanh is slow on CPU, its sigmoid is not (docs/performance.md, "tanh")
    return 2 * torch.sigmoid(2 * x) - 1


def lstm_pointwise_eager(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """LSTM pointwise part: gates (B, 4H) in nn.LSTM's order i, f, g, o, c (B, H) -> h, c', and the four
    activated gates (B, 4H), kept for the backward pass."""
    H = c.size(1)
    act = torch.sigmoid(gates)
    act[:, 2 * H : 3 * H].copy_(torch.tanh(gates[:, 2 * H : 3 * H]))
    i, f, g, o = act.chunk(4, dim=1)
    c_new = torch.addcmul(f * c, i, g)
    return o * torch.tanh(c_new), c_new, act


def lstm_pointwise_backward_eager(
    grad_h: Tensor, grad_c: Tensor, act: Tensor, c: Tensor, c_new: Tensor
) -> tuple[Tensor, Tensor]:
    """Gradients of lstm_pointwise: for the gates (B, 4H) and for c (B, H), tanh(c') recomputed."""
    tanh_c = torch.tanh(c_new)
    i, f, g, o = act.chunk(4, dim=1)
    grad_c = torch.addcmul(grad_c, grad_h * o, 1 - tanh_c * tanh_c)
    d_act = torch.cat([grad_c * g, grad_c * c, grad_c * i, grad_h * tanh_c], dim=1)
    # sigmoid' = s (1 - s) for i, f, o; tanh' = 1 - t^2 for g
    slope = act * (1 - act)
    H = c.size(1)
    slope[:, 2 * H : 3 * H] = 1 - g * g
    return d_act * slope, grad_c * f


def _lstm_pointwise(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """lstm_pointwise_eager as torch.compile is given it: no in-place writes, tanh through sigmoid."""
    i, f, g, o = gates.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), _tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    return o * _tanh(c_new), c_new, torch.cat([i, f, g, o], dim=1)


def _lstm_pointwise_backward(
    grad_h: Tensor, grad_c: Tensor, act: Tensor, c: Tensor, c_new: Tensor
) -> tuple[Tensor, Tensor]:
    """lstm_pointwise_backward_eager as torch.compile is given it."""
    i, f, g, o = act.chunk(4, dim=1)
    tanh_c = _tanh(c_new)
    grad_c = grad_c + grad_h * o * (1 - tanh_c * tanh_c)
    grad_gates = torch.cat(
        [
            grad_c * g * i * (1 - i),
            grad_c * c * f * (1 - f),
            grad_c * i * (1 - g * g),
            grad_h * tanh_c * o * (1 - o),
        ],
        dim=1,
    )
    return grad_gates, grad_c * f


class Compiled:
    """`eager`, or once its first call has agreed with it, `source` compiled by torch.compile.

    Compiling is tried at the first call, not at import: importing torch's compiler costs start-up time
    that decoding does not need. `call` is what callers run: the check, then the compiled or the eager
    function for good.
    """

    def __init__(self, name: str, source: Callable, eager: Callable):
        self.name, self.source, self.eager = name, source, eager
        self.lock = threading.Lock()
        self.compiled: Callable | None = None
        self.decided = not wanted()
        self.call: Callable = eager if self.decided else self._first

    def __call__(self, *args: Tensor) -> tuple[Tensor, ...]:
        return self.call(*args)

    def _run_compiled(self, *args: Tensor) -> tuple[Tensor, ...]:
        # one compiled variant only: dynamo guards on requires_grad and on strides, and each cached variant
        # it has to rule out before the one that fits costs a guard evaluation in every call
        return self.compiled(*(a.detach().contiguous() for a in args))  # type: ignore[misc]

    def _first(self, *args: Tensor) -> tuple[Tensor, ...]:
        with self.lock:
            if self.decided:
                return self.call(*args)
            self.decided = True
            expected = self.eager(*args)
            try:
                self.compiled = torch.compile(self.source, dynamic=True)
                got = self._run_compiled(*args)
                ok = len(got) == len(expected) and all(map(_agree, got, expected))
            except Exception as e:  # noqa: BLE001 - whatever stops compiling, the eager code runs
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                log.warning("could not compile %s, running it eagerly: %s", self.name, reason)
                self.call = self.eager
                return expected
            if not ok:
                log.warning("compiled %s disagrees with the eager code; running it eagerly", self.name)
                self.call = self.eager
                return expected
            self.call = self._run_compiled
            return got


def _agree(got: Tensor, expected: Tensor) -> bool:
    got, expected = got.double(), expected.double()
    return got.shape == expected.shape and bool(
        torch.linalg.vector_norm(got - expected) <= TOLERANCE * torch.linalg.vector_norm(expected)
    )


def describe() -> str:
    """How training's LSTM cell ran in this process, for reports: "torch.compile", "eager (...)" with the
    reason, or "not used" (no hand-stepped LSTM of grad-enabled training has run)."""
    cell = lstm_pointwise
    if not wanted():
        return f"eager ({OFF_SWITCH}=0)"
    if not cell.decided:
        return "not used"
    return "torch.compile" if cell.compiled is not None and cell.call != cell.eager else "eager (see the log)"


lstm_pointwise = Compiled("the LSTM cell", _lstm_pointwise, lstm_pointwise_eager)
lstm_pointwise_backward = Compiled(
    "the LSTM cell's backward", _lstm_pointwise_backward, lstm_pointwise_backward_eager
)
