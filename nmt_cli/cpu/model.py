"""The plain model's encoder and decoder as they run fastest on CPU: same weights, same maths.

cpu.install switches a plain Seq2Seq (and its Encoder) to these subclasses in place. What differs:
- training steps the decoder LSTM by hand over its own weights, one [input | recurrent] product per layer
  and step, with the weight gradients of all steps summed in a few large products (cell.py); the encoder's
  larger LSTMs are stepped the same way, for memory;
- decoding steps the decoder LSTM over packed copies of its weights (gemm.pack), made once per set of
  weights and dropped when the model goes back to training;
- attention's per-step products with the encoder keys and memory defer their gradients (cell.matvec).
tests/test_cpu.py keeps losses, gradients and outputs equal to the plain model's.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from nmt_cli.attention import masked_softmax
from nmt_cli.cpu import gemm
from nmt_cli.cpu.cell import (
    Collectors,
    LayerWeights,
    gates_to_state,
    linear,
    lstm_sequence,
    lstm_step,
    matvec,
    projected_steps,
)
from nmt_cli.cpu.layers import Dropout, tanh
from nmt_cli.cpu.pages import release_file_pages
from nmt_cli.cpu.threads import in_parallel
from nmt_cli.model import (
    DecoderState,
    Encoder,
    EncoderOutput,
    Seq2Seq,
    StepOutput,
    TeacherForced,
)

# From this size up the encoder's LSTMs train stepped by hand: below it a step's products are too small to
# carry the per-step work, and the fused kernel's workspace is small too (docs/performance.md).
STEPPED_MIN_HIDDEN = 256


class CpuEncoder(Encoder):
    """Encoder whose LSTMs of STEPPED_MIN_HIDDEN units or more are stepped by hand in training
    (cell.lstm_sequence), which keeps a third of the fused kernel's memory."""

    def _run(self, rnn: nn.Module, x: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor | None]:
        if isinstance(rnn, nn.LSTM) and rnn.hidden_size >= STEPPED_MIN_HIDDEN and torch.is_grad_enabled():
            return lstm_sequence(rnn, x, src_lengths if self.keep_cells else None)
        return super()._run(rnn, x, src_lengths)


class CpuSeq2Seq(Seq2Seq):
    """Seq2Seq with the CPU paths above; made only by cpu.install, from a plain model."""

    dropout_between: nn.Module  # as nn.LSTM's dropout between its layers, for the hand-stepped decoder
    _packed_lstm: dict[str, object]  # decoding's packed LSTM weights, by the weights' identity; a dict,
    # so that the shallow copies a shortlist makes of the model share it

    def adopt(self) -> None:
        """Set up what the CPU paths keep beside the plain model's modules."""
        L = self.cfg.decoder_layers
        self.dropout_between = Dropout(self.cfg.dropout if L > 1 else 0.0)
        self._packed_lstm = {}

    def train(self, mode: bool = True) -> CpuSeq2Seq:
        """As nn.Module.train; back to training, packed weight copies are let go (updates make them stale)."""
        if mode:
            self.drop_packed_weights()
        return super().train(mode)

    def decode_step(self, prev_tokens: Tensor, state: DecoderState, enc: EncoderOutput) -> StepOutput:
        """As Seq2Seq.decode_step; without autograd, an nn.LSTM decoder is stepped by hand over packed
        copies of its weights (once --int8 has replaced it, the LSTM runs as a module)."""
        emb = self.dropout(self.tgt_embedding(prev_tokens))
        x = torch.cat([emb, state.feed], dim=1) if self.cfg.input_feeding else emb
        if type(self.decoder_rnn) is nn.LSTM and not torch.is_grad_enabled() and gemm.pack_available():
            h, c = self._packed_lstm_step(x, state.h, state.c)
            out = h[-1]
        else:
            out, (h, c) = self.decoder_rnn(x.unsqueeze(1), (state.h, state.c))
            out = out.squeeze(1)
        hidden, attn = self._attend_deferred(out, enc)
        feed = hidden if self.cfg.input_feeding else state.feed
        return StepOutput(self.generator(hidden), DecoderState(h, c, feed), attn)

    def _packed_lstm_step(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """One nn.LSTM step at inference, x (B, I), h and c (L, B, H) -> h, c, each layer's [input |
        recurrent] product one call on a packed weight (torch's oneDNN LSTM reorders its weights inside
        every call)."""
        rnn, hs, cs, cache = self.decoder_rnn, [], [], self._packed_lstm
        key = gemm.weights_key(list(rnn.parameters()))
        if cache.get("key") != key:
            cache["layers"] = [
                (
                    gemm.pack(
                        torch.cat([getattr(rnn, f"weight_ih_l{i}"), getattr(rnn, f"weight_hh_l{i}")], 1)
                    ),
                    (getattr(rnn, f"bias_ih_l{i}") + getattr(rnn, f"bias_hh_l{i}")).detach(),
                )
                for i in range(rnn.num_layers)
            ]
            cache["key"] = key
            for i in range(rnn.num_layers):  # the steps read the packed copies only (see pages)
                release_file_pages(getattr(rnn, f"weight_ih_l{i}"))
                release_file_pages(getattr(rnn, f"weight_hh_l{i}"))
        layers: list[tuple[Tensor | None, Tensor]] = cache["layers"]  # type: ignore[assignment]
        for layer, (weight, bias) in enumerate(layers):
            joined = torch.cat([x, h[layer]], dim=1)
            if weight is None:  # oneDNN's reorder failed its check
                weight_ih = getattr(rnn, f"weight_ih_l{layer}")
                full = torch.cat([weight_ih, getattr(rnn, f"weight_hh_l{layer}")], 1)
                gates = gemm.linear(joined, full, bias)
            else:
                gates = in_parallel(
                    lambda joined=joined, weight=weight, bias=bias: gemm.linear_packed(joined, weight, bias)
                )
            h_new, c_new = gates_to_state(gates, c[layer])
            hs.append(h_new)
            cs.append(c_new)
            x = h_new  # nn.LSTM's dropout between layers is off in eval mode
        return torch.stack(hs), torch.stack(cs)

    def drop_packed_weights(self) -> None:
        """Forget the packed weight copies decoding made: they are made again at the next decode."""
        self._packed_lstm.clear()
        for module in self.modules():
            if isinstance(module, gemm.Linear):
                module.drop_packed()

    def teacher_force(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> TeacherForced:
        """As Seq2Seq.teacher_force, the decoder stepped by hand with deferred weight gradients."""
        enc = self.encode(src, src_lengths)
        emb = self.dropout(self.tgt_embedding(tgt_in))
        if not self.cfg.input_feeding:
            return self._all_steps(emb, enc)
        steps = projected_steps(self.decoder_rnn, emb)
        weights, collectors = self._decoder_weights(), Collectors()
        # per-layer lists, not (L, B, H) tensors: no stack per step, no zero-filled select gradients
        hs, cs, feed = list(enc.state.h.unbind(0)), list(enc.state.c.unbind(0)), enc.state.feed
        hiddens, attns = [], []
        for t, gates in enumerate(steps):
            feed, attn = self._hand_step(gates, hs, cs, feed, enc, weights, collectors, first=t == 0)
            hiddens.append(feed)
            attns.append(attn)
        return TeacherForced(torch.stack(hiddens, 1), torch.stack(attns, 1))

    def _decoder_weights(self) -> list[LayerWeights]:
        """Per layer, [input | recurrent] weights side by side (layer 0 without its embedding columns),
        so each step is one (B, I + H) x (I + H, 4H) product instead of two smaller ones."""
        rnn, e = self.decoder_rnn, self.cfg.emb_size
        return [
            LayerWeights(
                torch.cat(
                    [
                        getattr(rnn, f"weight_ih_l{i}")[:, e if i == 0 else 0 :],
                        getattr(rnn, f"weight_hh_l{i}"),
                    ],
                    dim=1,
                ),
                getattr(rnn, f"bias_ih_l{i}") + getattr(rnn, f"bias_hh_l{i}"),
            )
            for i in range(self.cfg.decoder_layers)
        ]

    def _hand_step(
        self,
        gates: Tensor,
        hs: list[Tensor],
        cs: list[Tensor],
        feed: Tensor,
        enc: EncoderOutput,
        weights: list[LayerWeights],
        collectors: Collectors,
        first: bool,
    ) -> tuple[Tensor, Tensor]:
        """One teacher-forced decoder step with input feeding (Luong et al. 2015, §3.3).

        gates (B, 4H) layer 0's pre-activations from the embedding, hs / cs per-layer states (B, H),
        updated in place, feed (B, H) the last attentional vector -> the new one (B, H), attention (B, S)
        """
        x = feed
        for layer, w in enumerate(weights):
            if layer:
                x, gates = self.dropout_between(hs[layer - 1]), w.bias
            hs[layer], cs[layer] = lstm_step(
                gates, x, hs[layer], cs[layer], w, f"l{layer}", collectors, first
            )
        return self._attend_deferred(hs[-1], enc, collectors, first)

    def _attend_deferred(
        self, query: Tensor, enc: EncoderOutput, collectors: Collectors | None = None, first: bool = False
    ) -> tuple[Tensor, Tensor]:
        """As Seq2Seq._attend; in training (collectors given) the keys', memory's and combine's weight
        gradients are deferred to a few large products."""
        B = enc.mask.size(0)
        if query.size(0) == B:
            keys_matvec = partial(matvec, name="keys", collectors=collectors, first=first)
            attn = masked_softmax(self.attention.score(query, enc.keys, keys_matvec), enc.mask)
            context = matvec(enc.memory, attn, "memory", collectors, first, transposed=True)
        else:  # a beam's k queries against their sentence's keys in one (k, H) x (H, S) product
            attn = masked_softmax(self.attention.score(query.view(B, -1, query.size(1)), enc.keys), enc.mask)
            context = torch.bmm(attn, enc.memory).flatten(0, 1)
            attn = attn.flatten(0, 1)
        joined = torch.cat([context, query], dim=1)
        combined = (  # decoding calls the module, which --int8 may have replaced by an int8 layer
            self.combine(joined)
            if collectors is None
            else linear(joined, self.combine.weight, "combine", collectors, first)
        )
        return self.dropout(tanh(combined)), attn
