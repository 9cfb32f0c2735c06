"""Gate activations of a trained model on one sentence, recomputed step by step from the nn.RNN/LSTM/GRU
weights with the cells' equations, so they can be drawn (tests hold the recomputed states equal to the
modules' own).

LSTM (Hochreiter & Schmidhuber 1997), torch's gate order i, f, g, o:
  i, f, o = σ(W_i x + U_i h + b), g = tanh(W_g x + U_g h + b);  c' = f ⊙ c + i ⊙ g;  h' = o ⊙ tanh(c')
GRU (Cho et al. 2014), torch's order r, z, n:
  r, z = σ(W x + U h + b);  n = tanh(W_n x + b_in + r ⊙ (U_n h + b_hn));  h' = (1 - z) ⊙ n + z ⊙ h
simple RNN (Elman 1990): h' = tanh(W x + U h + b), no gates.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from nmt_cli.checkpoint import LoadedModel
from nmt_cli.errors import InputError
from nmt_cli.subword import BOS, EOS

GATE_NAMES = {"lstm": ("input", "forget", "output"), "gru": ("update", "reset"), "rnn": ()}


class GateTrace(NamedTuple):
    """One layer (and direction) of one RNN over a sentence."""

    name: str  # e.g. "encoder layer 1 forward"
    tokens: list[str]  # the input piece at each step
    gates: dict[str, np.ndarray]  # gate name -> (T, H) activations in [0, 1]
    hidden: np.ndarray  # (T, H) h_t
    cell: np.ndarray | None  # (T, H) c_t, LSTM only


def kind_of(rnn: nn.RNNBase) -> str:
    return "lstm" if isinstance(rnn, nn.LSTM) else "gru" if isinstance(rnn, nn.GRU) else "rnn"


def cell_step(
    rnn: nn.RNNBase, layer: int, x: Tensor, h: Tensor, c: Tensor
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """One step of layer `layer` of rnn: x (I,), h and c (H,) -> gates by name, h', c' (LSTM only)."""
    w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
    b_ih, b_hh = getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
    wx, uh = w_ih @ x + b_ih, w_hh @ h + b_hh
    kind = kind_of(rnn)
    if kind == "lstm":
        i, f, g, o = (wx + uh).chunk(4)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        return {"input": i, "forget": f, "output": o}, o * torch.tanh(c), c
    if kind == "gru":
        (wr, wz, wn), (ur, uz, un) = wx.chunk(3), uh.chunk(3)
        r, z = torch.sigmoid(wr + ur), torch.sigmoid(wz + uz)
        n = torch.tanh(wn + r * un)
        return {"update": z, "reset": r}, (1 - z) * n + z * h, c
    return {}, torch.tanh(wx + uh), c


def _run(rnn: nn.RNNBase, layer: int, xs: Tensor, h: Tensor, c: Tensor, name: str, tokens: list[str]):  # noqa: ANN202
    """Step over xs (T, I) -> the trace and the outputs (T, H)."""
    gates: dict[str, list[Tensor]] = {g: [] for g in GATE_NAMES[kind_of(rnn)]}
    hs, cs = [], []
    for x in xs:
        step, h, c = cell_step(rnn, layer, x, h, c)
        for g, value in step.items():
            gates[g].append(value)
        hs.append(h)
        cs.append(c)
    out = torch.stack(hs)
    trace = GateTrace(
        name,
        tokens,
        {g: torch.stack(v).numpy() for g, v in gates.items()},
        out.numpy(),
        torch.stack(cs).numpy() if kind_of(rnn) == "lstm" else None,
    )
    return trace, out


@torch.inference_mode()
def encoder_traces(loaded: LoadedModel, src_ids: list[int]) -> tuple[list[GateTrace], Tensor]:
    """Every encoder layer and direction over one sentence -> traces, and the top layer's outputs (S, M)."""
    encoder, sub = loaded.model.encoder, loaded.subword
    tokens = sub.id_to_piece(src_ids)
    x = encoder.embedding(torch.tensor(src_ids))  # (S, E); eval mode: no dropout
    traces = []
    for i, directions in enumerate(encoder.layers):
        outputs = []
        for d, rnn in enumerate(directions):
            zeros = x.new_zeros(rnn.hidden_size)
            name = f"encoder layer {i + 1} {'backward' if d else 'forward'}"
            steps = x.flip(0) if d else x
            trace, out = _run(rnn, 0, steps, zeros, zeros, name, tokens[::-1] if d else tokens)
            traces.append(trace)
            outputs.append(out.flip(0) if d else out)
        x = torch.cat(outputs, dim=1)
    return traces, x


@torch.inference_mode()
def decoder_traces(
    loaded: LoadedModel, src_ids: list[int], max_len: int = 100
) -> tuple[list[GateTrace], list[int]]:
    """Greedy-decode the sentence, each decoder layer's gates recomputed per step -> traces, output ids."""
    model = loaded.model
    rnn = model.decoder_rnn
    enc = model.encode(torch.tensor([src_ids]), torch.tensor([len(src_ids)]))
    state, prev, out_ids = enc.state, BOS, []
    per_layer: list[list[tuple[dict[str, Tensor], Tensor, Tensor]]] = [[] for _ in range(rnn.num_layers)]
    for _ in range(max_len):
        x = model.decoder_input(model.tgt_embedding(torch.tensor([prev])), state)[0]
        for layer in range(rnn.num_layers):
            c = state.c[layer, 0] if state.c.size(-1) else x.new_zeros(0)
            gates, h, c = cell_step(rnn, layer, x, state.h[layer, 0], c)
            per_layer[layer].append((gates, h, c))
            x = h
        step = model.decode_step(torch.tensor([prev]), state, enc)
        state, prev = step.state, int(step.logits[0].argmax())
        if prev == EOS:
            break
        out_ids.append(prev)
    tokens = ["<s>", *loaded.subword.id_to_piece(out_ids)][: len(per_layer[0])]
    traces = []
    for layer, steps in enumerate(per_layer):
        names = GATE_NAMES[kind_of(rnn)]
        traces.append(
            GateTrace(
                f"decoder layer {layer + 1}",
                tokens,
                {g: torch.stack([s[0][g] for s in steps]).numpy() for g in names},
                torch.stack([s[1] for s in steps]).numpy(),
                torch.stack([s[2] for s in steps]).numpy() if kind_of(rnn) == "lstm" else None,
            )
        )
    return traces, out_ids


def gate_traces(loaded: LoadedModel, sentence: str) -> tuple[list[GateTrace], str]:
    """The encoder's and the decoder's traces over a sentence and its greedy translation."""
    src_ids = loaded.subword.encode_batch([sentence])[0]
    if not src_ids:
        raise InputError("the sentence is empty: no gates to show")
    enc, _ = encoder_traces(loaded, src_ids)
    dec, out_ids = decoder_traces(loaded, src_ids)
    return enc + dec, loaded.subword.decode(out_ids)
