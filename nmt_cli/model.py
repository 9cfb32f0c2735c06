"""LSTM encoder-decoder with global attention (Luong et al. 2015; Bahdanau et al. 2015).

Search and training talk to the model through three calls: `encode`, `decode_step` and
`DecoderState.select`. Training's `teacher_force` runs the same step (`_step`) over the target, or, with
input feeding off, the whole decoder LSTM and attention in one call each (equal to the step loop; tested).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt_cli import gemm
from nmt_cli.activations import tanh
from nmt_cli.attention import build_attention, masked_softmax
from nmt_cli.cell import (
    Collectors,
    LayerWeights,
    gates_to_state,
    linear,
    lstm_sequence,
    lstm_step,
    matvec,
    projected_steps,
)
from nmt_cli.config import ModelConfig
from nmt_cli.dropout import Dropout
from nmt_cli.gemm import Linear
from nmt_cli.pages import release_file_pages
from nmt_cli.threads import in_parallel

PAD = 0  # the subword module fixes PAD=0, UNK=1, BOS=2, EOS=3; the model only needs PAD
# Below this the encoder trains through the fused LSTM: a step's products are too small to carry the
# per-step work of stepping by hand (toy preset, 128 units: 0.84x tok/s), and its workspace is small too.
# At 256 both run in about the same time (bench/profiles.py encoder-lstm) and the fused one keeps 2.6x more.
STEPPED_MIN_HIDDEN = 256


class DecoderState(NamedTuple):
    h: Tensor  # (L, B, H)
    c: Tensor  # (L, B, H)
    feed: Tensor  # (B, H) previous attentional vector (input feeding), zeros at the start

    def select(self, index: Tensor) -> DecoderState:
        """Rows of the state in a new order: index (B',) into the current rows."""
        h, c = self.h.index_select(1, index), self.c.index_select(1, index)
        return DecoderState(h, c, self.feed.index_select(0, index))

    def moved(self, holes: Tensor, movers: Tensor, count: int) -> DecoderState:
        """Rows `movers` written over rows `holes` in place, then the first `count` rows (views)."""
        for rows, dim in ((self.h, 1), (self.c, 1), (self.feed, 0)):
            rows.index_copy_(dim, holes, rows.index_select(dim, movers))
        return DecoderState(self.h[:, :count], self.c[:, :count], self.feed[:count])

    def repeat_interleave(self, k: int) -> DecoderState:
        """Each row k times in a row (rows b*k .. b*k+k-1 start sentence b's beam)."""
        return DecoderState(
            self.h.repeat_interleave(k, dim=1),
            self.c.repeat_interleave(k, dim=1),
            self.feed.repeat_interleave(k, 0),
        )


class EncoderOutput(NamedTuple):
    memory: Tensor  # (B, S, M) encoder outputs, the attention values
    keys: Tensor  # (B, S, H) memory projected once for scoring
    mask: Tensor  # (B, S) True on real source tokens
    state: DecoderState  # initial decoder state

    def select(self, index: Tensor) -> EncoderOutput:
        """Rows in a new order (or a subset): index (B',) into the current rows.

        index_select copies whole rows; indexing (memory[index]) runs torch's general gather, 4.7x slower
        for a (64, 43, 512) memory on the AVX2 benchmark machine (3.1 against 0.65 ms). Search selects
        rows whenever sentences finish, so every row selection of decoding state uses index_select.
        """
        rows = (x.index_select(0, index) for x in (self.memory, self.keys, self.mask))
        return EncoderOutput(*rows, self.state.select(index))

    def moved(self, holes: Tensor, movers: Tensor, count: int, width: int) -> EncoderOutput:
        """Rows `movers` written over rows `holes` in place, then the first `count` rows and `width`
        source positions as views: rows leave without a new copy of the rest. The tensors must belong
        to this EncoderOutput alone, as greedy search's rows do once they have stepped."""
        for rows in (self.memory, self.keys, self.mask):
            rows.index_copy_(0, holes, rows.index_select(0, movers))
        kept = (x[:count, :width] for x in (self.memory, self.keys, self.mask))
        return EncoderOutput(*kept, self.state.moved(holes, movers, count))

    def narrow(self, start: int, stop: int) -> EncoderOutput:
        """Rows start..stop-1 as views of these tensors: nothing is copied, and a range of rows of a
        contiguous tensor is contiguous."""
        rows, (h, c, feed) = slice(start, stop), self.state
        state = DecoderState(h[:, rows], c[:, rows], feed[rows])
        return EncoderOutput(self.memory[rows], self.keys[rows], self.mask[rows], state)


class StepOutput(NamedTuple):
    # (N, V) scores before normalisation, a tensor of their own: search takes log_softmax in place over
    # them, or a shortlist's own
    logits: Tensor
    state: DecoderState
    attention: Tensor  # (N, S)


class TeacherForced(NamedTuple):
    hidden: Tensor  # (B, T, H) attentional vectors, before the output layer
    attention: Tensor  # (B, T, S)


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Each row's first lengths[b] positions reversed, padding left in place: x (B, S, D).

    One index_select of whole (B*S) rows: gather over the expanded (B, S, D) index took 4.8x as long
    (64 x 20 x 512: 1.10 against 0.23 ms on one thread).
    """
    B, S, _ = x.shape
    positions = torch.arange(S, device=x.device).unsqueeze(0)  # (1, S)
    last = (lengths.to(x.device) - 1).unsqueeze(1)  # (B, 1)
    index = torch.where(positions <= last, last - positions, positions)  # (B, S)
    flat = index + S * torch.arange(B, device=x.device).unsqueeze(1)
    return x.reshape(B * S, -1).index_select(0, flat.view(-1)).view_as(x)


class Encoder(nn.Module):
    """Embeddings and a (bi)directional, multi-layer LSTM or GRU over the source.

    Each direction of each layer runs over the whole padded batch; the backward direction reads each
    sentence reversed within its length, so padding never enters a real state. Without autograd that is
    one call of the fused kernel (packed sequences do not get it on CPU); in training an LSTM of
    STEPPED_MIN_HIDDEN units or more is stepped by hand over the same weights, for memory (tested equal).
    """

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding):
        super().__init__()
        self.embedding = embedding
        rnn = nn.LSTM if cfg.encoder_cell == "lstm" else nn.GRU
        dirs = 2 if cfg.bidirectional else 1
        self.layers = nn.ModuleList(
            nn.ModuleList(
                rnn(
                    cfg.emb_size if i == 0 else dirs * cfg.encoder_hidden,
                    cfg.encoder_hidden,
                    batch_first=True,
                )
                for _ in range(dirs)
            )
            for i in range(cfg.encoder_layers)
        )
        self.dropout = Dropout(cfg.dropout)

    def forward(self, src: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S), src_lengths (B,) -> memory (B, S, M), final top-layer state (B, M)."""
        x = self.dropout(self.embedding(src))
        last = (src_lengths.to(src.device) - 1).view(-1, 1, 1)
        for i, directions in enumerate(self.layers):
            if i:
                x = self.dropout(x)  # between layers, as nn.LSTM's dropout argument
            outputs, finals = [], []
            for d, rnn in enumerate(directions):
                out = self._run(rnn, reverse_padded(x, src_lengths) if d else x)
                finals.append(
                    out.gather(1, last.expand(-1, 1, out.size(2))).squeeze(1)
                )  # after the last real token
                outputs.append(reverse_padded(out, src_lengths) if d else out)
            x = torch.cat(outputs, dim=2)
        return self.dropout(x), torch.cat(finals, dim=1)

    @staticmethod
    def _run(rnn: nn.Module, x: Tensor) -> Tensor:
        """One direction of one layer over x (B, S, I) -> (B, S, H); an LSTM of STEPPED_MIN_HIDDEN units or
        more that will be backpropagated is stepped by hand (cell.lstm_sequence), which keeps a third of
        the fused kernel's memory."""
        if isinstance(rnn, nn.LSTM) and rnn.hidden_size >= STEPPED_MIN_HIDDEN and torch.is_grad_enabled():
            return lstm_sequence(rnn, x)
        return rnn(x)[0]


class Seq2Seq(nn.Module):
    """Encoder, bridge, input-feeding LSTM decoder with global attention, output layer."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        tgt_embedding = nn.Embedding(cfg.vocab_size, cfg.emb_size, padding_idx=PAD)
        src_embedding = (
            tgt_embedding
            if cfg.share_embeddings
            else nn.Embedding(cfg.vocab_size, cfg.emb_size, padding_idx=PAD)
        )
        self.encoder = Encoder(cfg, src_embedding)
        self.tgt_embedding = tgt_embedding
        H, L = cfg.decoder_hidden, cfg.decoder_layers
        self.bridge = Linear(cfg.memory_size, 2 * L * H) if cfg.bridge else None
        feed = H if cfg.input_feeding else 0
        self.decoder_rnn = nn.LSTM(
            cfg.emb_size + feed, H, num_layers=L, batch_first=True, dropout=cfg.dropout if L > 1 else 0.0
        )
        self.attention = build_attention(cfg.attention, H, cfg.memory_size)
        self.combine = Linear(cfg.memory_size + H, H, bias=False)  # W_c [c_t; h_t], Luong eq. 5
        self.dropout = Dropout(cfg.dropout)
        self.dropout_between = Dropout(cfg.dropout if L > 1 else 0.0)  # as nn.LSTM between its layers
        self.generator = Linear(H, cfg.vocab_size)
        # decode_step's packed LSTM weights, by the weights' identity; a dict, so that the shallow copies
        # the shortlist makes of the model (shortlist.with_output_layer) share it
        self._packed_lstm: dict[str, object] = {}
        self.reset_parameters()
        self.tie_weights()

    def tie_weights(self) -> None:
        """With tie_embeddings, the output layer's weight is the target embedding (one tensor)."""
        if self.cfg.tie_embeddings:
            self.generator.weight = self.tgt_embedding.weight

    def reset_parameters(self, scale: float = 0.1) -> None:
        """Uniform(-0.1, 0.1) everywhere (as OpenNMT-py's param_init), PAD embeddings zero."""
        for p in self.parameters():
            nn.init.uniform_(p, -scale, scale)
        with torch.no_grad():
            self.tgt_embedding.weight[PAD].zero_()
            self.encoder.embedding.weight[PAD].zero_()

    # --- the three-call contract -------------------------------------------------------------------

    def encode(self, src: Tensor, src_lengths: Tensor) -> EncoderOutput:
        """src (B, S) padded with PAD, src_lengths (B,) -> EncoderOutput."""
        memory, top = self.encoder(src, src_lengths)
        mask = src != PAD
        return EncoderOutput(memory, self.attention.project_keys(memory), mask, self._initial_state(top))

    def decode_step(self, prev_tokens: Tensor, state: DecoderState, enc: EncoderOutput) -> StepOutput:
        """prev_tokens (N,) -> logits of the next token (N, V), new state, attention (N, S).

        enc has B rows and N = B * k: the k consecutive rows of a beam share their sentence's encoder row
        (k = 1 for greedy search and training), so a beam is never copied k times.
        Without autograd, an nn.LSTM decoder is stepped by hand over packed copies of its weights
        (_packed_lstm_step); otherwise, and once --int8 has replaced it, the LSTM runs as a module. Training
        steps the same weights by hand (see _step), and tests keep all three equal.
        """
        emb = self.dropout(self.tgt_embedding(prev_tokens))
        x = torch.cat([emb, state.feed], dim=1) if self.cfg.input_feeding else emb
        if type(self.decoder_rnn) is nn.LSTM and not torch.is_grad_enabled() and gemm.pack_available():
            h, c = self._packed_lstm_step(x, state.h, state.c)
            out = h[-1]
        else:
            out, (h, c) = self.decoder_rnn(x.unsqueeze(1), (state.h, state.c))
            out = out.squeeze(1)
        hidden, attn = self._attend(out, enc)
        feed = hidden if self.cfg.input_feeding else state.feed
        return StepOutput(self.generator(hidden), DecoderState(h, c, feed), attn)

    def _packed_lstm_step(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """One nn.LSTM step at inference, x (B, I), h and c (L, B, H) -> h, c, each layer's [input |
        recurrent] product one call on a packed weight. torch's oneDNN LSTM reorders its weights inside
        every call: at 64 rows that made a step 2.1 ms against 0.94 here (bench/profiles.py gemm)."""
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
        layers: list[tuple[Tensor, Tensor]] = cache["layers"]  # type: ignore[assignment]
        for layer, (weight, bias) in enumerate(layers):
            joined = torch.cat([x, h[layer]], dim=1)
            gates = in_parallel(
                lambda joined=joined, weight=weight, bias=bias: gemm.linear_packed(joined, weight, bias)
            )
            h_new, c_new = gates_to_state(gates, c[layer])
            hs.append(h_new)
            cs.append(c_new)
            x = h_new  # nn.LSTM's dropout between layers is off in eval mode
        return torch.stack(hs), torch.stack(cs)

    def drop_packed_weights(self) -> None:
        """Forget the packed weight copies decoding made (base-rnn: 25 MB), as training does after it
        validates: they are made again at the next decode."""
        self._packed_lstm.clear()
        for module in self.modules():
            if isinstance(module, Linear):
                module.drop_packed()

    # --- training -----------------------------------------------------------------------------------

    def teacher_force(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> TeacherForced:
        """src (B, S), tgt_in (B, T) starting with BOS -> attentional vectors (B, T, H), attention."""
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
            feed, attn = self._step(gates, hs, cs, feed, enc, weights, collectors, first=t == 0)
            hiddens.append(feed)
            attns.append(attn)
        return TeacherForced(torch.stack(hiddens, 1), torch.stack(attns, 1))

    def log_probs(self, hidden: Tensor) -> Tensor:
        """hidden (..., H) -> log-probabilities (..., V)."""
        return F.log_softmax(self.generator(hidden), dim=-1)

    # --- internals ----------------------------------------------------------------------------------

    def _initial_state(self, top: Tensor) -> DecoderState:
        B, H, L = top.size(0), self.cfg.decoder_hidden, self.cfg.decoder_layers
        feed = top.new_zeros(B, H if self.cfg.input_feeding else 0)
        if self.bridge is None:
            zeros = top.new_zeros(L, B, H)
            return DecoderState(zeros, zeros, feed)
        h, c = torch.tanh(self.bridge(top)).view(B, 2, L, H).permute(1, 2, 0, 3).unbind(0)
        return DecoderState(h.contiguous(), c.contiguous(), feed)

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

    def _step(
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
        return self._attend(hs[-1], enc, collectors, first)

    def _attend(
        self, query: Tensor, enc: EncoderOutput, collectors: Collectors | None = None, first: bool = False
    ) -> tuple[Tensor, Tensor]:
        """query (N, H) -> attentional vector tanh(W_c [c_t; h_t]) (N, H) (Luong eq. 5), attention (N, S);
        N = B * k, k consecutive queries over each of enc's B rows (see decode_step)."""
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

    def _all_steps(self, emb: Tensor, enc: EncoderOutput) -> TeacherForced:
        """Without input feeding no step depends on the last output: one LSTM call, one attention call."""
        queries, _ = self.decoder_rnn(emb, (enc.state.h, enc.state.c))  # (B, T, H)
        attn = masked_softmax(self.attention.score(queries, enc.keys), enc.mask)  # (B, T, S)
        context = torch.bmm(attn, enc.memory)
        hidden = self.dropout(torch.tanh(self.combine(torch.cat([context, queries], dim=2))))
        return TeacherForced(hidden, attn)


def build_model(cfg: ModelConfig) -> Seq2Seq:
    return Seq2Seq(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
