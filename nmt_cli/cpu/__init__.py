"""CPU speed-ups, installed beside the plain model (nmt_cli.model), with one off switch: NMT_PLAIN=1.

`install(model)` switches a plain model's layers and methods to CPU versions in place, at train start and
at model load; `process_settings_for_decoding()` sets what must be set before torch first runs. Each swap
keeps the weights, the state dict and (where the maths is the same) the outputs; tests/test_cpu.py holds
them to that. What each does, and why (figures in docs/performance.md):
- gemm: fp32 products through oneDNN, which uses the widest vector unit where torch.mm's MKL may not;
  nn.Linear becomes gemm.Linear, whose decoding products use a packed (pre-reordered) copy of its weight.
- cell, model: the decoder LSTM (and the encoder's larger ones) stepped by hand in training, with weight
  gradients summed over all steps in a few large products instead of one small one per step; decoding
  steps over packed weights.
- compiled: training's LSTM cell (the pointwise part of each step, forward and backward) compiled by
  torch.compile into one loop each; `NMT_COMPILE=0` keeps it eager.
- layers: dropout with a vectorised byte mask; tanh through sigmoid when decoding; attention whose
  per-step products defer their gradients.
- loss: the output layer's loss and backward written out, chunk by chunk, with one buffer per chunk.
- int8 (`--int8`): int8 decoder LSTM and Linear layers, one scale per weight row and per input row.
- threads: decoding's sentences dealt out to one worker thread per core; element-wise work of a lone
  greedy batch on one thread.
- pages: a memory-mapped model file's pages given back once only packed copies are read.
- process: sleeping OpenMP threads, one malloc arena, oneDNN kernel caches sized for decoding.
- private: every private torch API above, looked up once, checked on first call, with public fallbacks.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nmt_cli.model import Seq2Seq

OFF_SWITCH = "NMT_PLAIN"


def wanted() -> bool:
    """Whether the CPU swaps are to be used in this process: unless NMT_PLAIN=1."""
    return os.environ.get(OFF_SWITCH, "") not in ("1", "true", "yes")


def install(model: Seq2Seq) -> str:
    """Switch a plain model on the CPU to the CPU paths, in place; -> "cpu", or "plain" where nothing was
    done (NMT_PLAIN=1, a model on another device, a model the swaps do not cover, or already installed:
    then "cpu")."""
    from nmt_cli.cpu.model import CpuSeq2Seq

    if isinstance(model, CpuSeq2Seq):
        return "cpu"
    if not wanted() or any(p.device.type != "cpu" for p in model.parameters()) or not covered(model):
        return "plain"
    from torch import nn

    from nmt_cli.cpu import gemm, layers
    from nmt_cli.cpu.model import CpuEncoder

    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = gemm.Linear
        elif type(module) in layers.SWAPS:
            module.__class__ = layers.SWAPS[type(module)]
    model.encoder.__class__ = CpuEncoder
    model.__class__ = CpuSeq2Seq
    model.adopt()
    _packed_copies_follow_optimizer_steps()
    return "cpu"


def covered(model: Seq2Seq) -> bool:
    """Whether the swaps know this model: they step an LSTM decoder with attention by hand; other cells
    and the no-attention model run plain."""
    return model.cfg.decoder_cell == "lstm" and model.cfg.attention != "none"


def kernels(model: Seq2Seq) -> str:
    """Which path a model runs: "cpu" with the swaps installed, else "plain"."""
    from nmt_cli.cpu.model import CpuSeq2Seq

    return "cpu" if isinstance(model, CpuSeq2Seq) else "plain"


def lstm_cell() -> str:
    """How training's hand-stepped LSTM cell ran in this process: "torch.compile", "eager (why)", or "not
    used"."""
    from nmt_cli.cpu import compiled

    return compiled.describe()


_hooked = False


def _packed_copies_follow_optimizer_steps() -> None:
    """Every optimizer step makes packed weight copies stale: fused optimizers update the weights in place
    without bumping their version counters, which the copies are keyed by."""
    global _hooked
    if not _hooked:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        from nmt_cli.cpu import gemm

        register_optimizer_step_post_hook(lambda *_: gemm.weights_changed())
        _hooked = True
