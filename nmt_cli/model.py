"""RNN encoder-decoder with global attention (Luong et al. 2015; Bahdanau et al. 2015), in plain torch.

Encoder and decoder cells are the simple tanh RNN (Elman 1990), the LSTM (Hochreiter & Schmidhuber 1997)
or the GRU (Cho et al. 2014); attention "none" is the fixed-vector seq2seq (Sutskever et al. 2014;
Cho et al. 2014), whose decoder sees the source only through its initial state.

Search and training talk to the model through three calls: `encode`, `decode_step` and
`DecoderState.select`. Training's `teacher_force` runs the same step (`_step`) over the target, or, with
input feeding off, the decoder LSTM and attention over all target positions in one call each (equal to the
step loop; tested). This is the reference model: it runs on any device. The CPU speed-ups in nmt_cli.cpu
replace some of its layers and methods in place (cpu.install), and tests keep the two equal.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt_cli.attention import build_attention, masked_softmax
from nmt_cli.config import ModelConfig
from nmt_cli.vocab import PAD


class DecoderState(NamedTuple):
    h: Tensor  # (L, B, H)
    c: Tensor  # (L, B, H) the LSTM's cell state; (L, B, 0) for the RNN and GRU, which have none
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
        """Rows in a new order (or a subset): index (B',) into the current rows. index_select copies
        whole rows, where indexing runs torch's much slower general gather."""
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
    logits: Tensor  # (N, V) before normalisation, a tensor of their own: search normalises them in place
    state: DecoderState
    attention: Tensor  # (N, S)


class TeacherForced(NamedTuple):
    hidden: Tensor  # (B, T, H) attentional vectors, before the output layer
    attention: Tensor  # (B, T, S)


CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Each row's first lengths[b] positions reversed, padding left in place: x (B, S, D)."""
    B, S, _ = x.shape
    positions = torch.arange(S, device=x.device).unsqueeze(0)  # (1, S)
    last = (lengths.to(x.device) - 1).unsqueeze(1)  # (B, 1)
    index = torch.where(positions <= last, last - positions, positions)  # (B, S)
    flat = index + S * torch.arange(B, device=x.device).unsqueeze(1)  # one index_select of whole rows
    return x.reshape(B * S, -1).index_select(0, flat.view(-1)).view_as(x)


class EncoderFinal(NamedTuple):
    memory: Tensor  # (B, S, M) the top layer's outputs, both directions side by side
    h: Tensor  # (L, B, M) each layer's states after each sentence's last token, directions side by side
    c: Tensor  # (L, B, M) the LSTM cell states there, kept for decoder_init last; else (L, B, 0)


class Encoder(nn.Module):
    """Embeddings and a (bi)directional, multi-layer RNN, LSTM or GRU over the source.

    Each direction of each layer runs over the whole padded batch in one call; the backward direction
    reads each sentence reversed within its length, so padding never enters a real state (packed
    sequences would do the same, without the fused kernel on CPU). The final cell states, which a padded
    call does not return, are read from a packed call, and only where decoder_init last needs them.
    """

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding):
        super().__init__()
        self.embedding = embedding
        rnn = CELLS[cfg.encoder_cell]
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
        self.dropout = nn.Dropout(cfg.dropout)
        self.memory_dropout = cfg.memory_dropout
        self.keep_cells = cfg.decoder_init == "last" and cfg.encoder_cell == cfg.decoder_cell == "lstm"

    def forward(self, src: Tensor, src_lengths: Tensor) -> EncoderFinal:
        """src (B, S), src_lengths (B,) -> memory (B, S, M) and each layer's final states (L, B, M)."""
        x = self.dropout(self.embedding(src))
        last = (src_lengths.to(src.device) - 1).view(-1, 1, 1)
        hs, cs = [], []
        for i, directions in enumerate(self.layers):
            if i:
                x = self.dropout(x)  # between layers, as nn.LSTM's dropout argument
            outputs, finals, cells = [], [], []
            for d, rnn in enumerate(directions):
                out, c = self._run(rnn, reverse_padded(x, src_lengths) if d else x, src_lengths)
                finals.append(out.gather(1, last.expand(-1, 1, out.size(2))).squeeze(1))  # last real token
                outputs.append(reverse_padded(out, src_lengths) if d else out)
                cells.append(c if c is not None else out.new_zeros(out.size(0), 0))
            x = torch.cat(outputs, dim=2)
            hs.append(torch.cat(finals, dim=1))
            cs.append(torch.cat(cells, dim=1))
        memory = self.dropout(x) if self.memory_dropout else x
        return EncoderFinal(memory, torch.stack(hs), torch.stack(cs))

    def _run(self, rnn: nn.Module, x: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor | None]:
        """One direction of one layer over x (B, S, I) -> outputs (B, S, H); with keep_cells also the LSTM
        cell states after each sentence's last real token (B, H), else None."""
        if not self.keep_cells:
            return rnn(x)[0], None
        lengths = src_lengths.cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, (_, c) = rnn(packed)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.size(1))[0], c[0]


class Seq2Seq(nn.Module):
    """Encoder, the decoder's first state, (input-feeding) RNN/LSTM/GRU decoder with global attention or
    none, output layer."""

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
        self.states = 2 if cfg.decoder_cell == "lstm" else 1  # h and c, or h alone
        bridge = cfg.decoder_init == "bridge"
        self.bridge = nn.Linear(cfg.memory_size, self.states * L * H) if bridge else None
        feed = H if cfg.input_feeding else 0
        self.decoder_rnn = CELLS[cfg.decoder_cell](
            cfg.emb_size + feed, H, num_layers=L, batch_first=True, dropout=cfg.dropout if L > 1 else 0.0
        )
        self.attention = build_attention(cfg.attention, H, cfg.memory_size)
        context = 0 if self.attention is None else cfg.memory_size
        self.combine = nn.Linear(context + H, H, bias=False)  # W_c [c_t; h_t], Luong eq. 5; W_c h_t without
        self.dropout = nn.Dropout(cfg.dropout)
        self.generator = nn.Linear(H, cfg.vocab_size)
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
        final = self.encoder(src, src_lengths)
        memory, mask = final.memory, src != PAD
        keys = memory if self.attention is None else self.attention.project_keys(memory)
        return EncoderOutput(memory, keys, mask, self._initial_state(final))

    def decode_step(self, prev_tokens: Tensor, state: DecoderState, enc: EncoderOutput) -> StepOutput:
        """prev_tokens (N,) -> logits of the next token (N, V), new state, attention (N, S).

        enc has B rows and N = B * k: the k consecutive rows of a beam share their sentence's encoder row
        (k = 1 for greedy search and training), so a beam is never copied k times.
        """
        hidden, state, attn = self._step(self.dropout(self.tgt_embedding(prev_tokens)), state, enc)
        return StepOutput(self.generator(hidden), state, attn)

    # --- training -----------------------------------------------------------------------------------

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> TeacherForced:
        """teacher_force, as the module's call: what DistributedDataParallel wraps."""
        return self.teacher_force(src, src_lengths, tgt_in)

    def teacher_force(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> TeacherForced:
        """src (B, S), tgt_in (B, T) starting with BOS -> attentional vectors (B, T, H), attention."""
        enc = self.encode(src, src_lengths)
        emb = self.dropout(self.tgt_embedding(tgt_in))
        if not self.cfg.input_feeding:
            return self._all_steps(emb, enc)
        state, hiddens, attns = enc.state, [], []
        for emb_t in emb.unbind(1):
            hidden, state, attn = self._step(emb_t, state, enc)
            hiddens.append(hidden)
            attns.append(attn)
        return TeacherForced(torch.stack(hiddens, 1), torch.stack(attns, 1))

    def log_probs(self, hidden: Tensor) -> Tensor:
        """hidden (..., H) -> log-probabilities (..., V)."""
        return F.log_softmax(self.generator(hidden), dim=-1)

    # --- internals ----------------------------------------------------------------------------------

    def _initial_state(self, final: EncoderFinal) -> DecoderState:
        """The decoder's first state, by decoder_init: zeros; `last`, each encoder layer's final states as
        they are, directions side by side (OpenNMT-py without its bridge), and the final cell states where
        both sides are LSTMs (zeros for an LSTM decoder over another encoder); `bridge`, h0 (and c0) =
        tanh(W_b top) of the top layer's final states. The input feed starts at zeros."""
        top = final.h[-1]  # (B, M)
        B, H, L = top.size(0), self.cfg.decoder_hidden, self.cfg.decoder_layers
        feed = top.new_zeros(B, H if self.cfg.input_feeding else 0)
        no_c = top.new_zeros(L, B, 0)
        if self.cfg.decoder_init == "last":
            if self.states == 1:
                return DecoderState(final.h, no_c, feed)
            return DecoderState(final.h, final.c if final.c.size(2) else torch.zeros_like(final.h), feed)
        if self.bridge is None:
            zeros = top.new_zeros(L, B, H)
            return DecoderState(zeros, zeros if self.states == 2 else no_c, feed)
        states = torch.tanh(self.bridge(top)).view(B, self.states, L, H).permute(1, 2, 0, 3)
        h = states[0].contiguous()
        return DecoderState(h, states[1].contiguous() if self.states == 2 else no_c, feed)

    def decoder_input(self, emb: Tensor, state: DecoderState) -> Tensor:
        """emb (N, E) -> the decoder RNN's input (N, E [+ H]): with input feeding, the last attentional
        vector joins the embedding (Luong et al. 2015, §3.3)."""
        return torch.cat([emb, state.feed], dim=1) if self.cfg.input_feeding else emb

    def run_decoder_rnn(self, x: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """x (N, T, I) from `state` -> top-layer outputs (N, T, H), the state after the last step."""
        if self.states == 2:
            out, (h, c) = self.decoder_rnn(x, (state.h, state.c))
            return out, DecoderState(h, c, state.feed)
        out, h = self.decoder_rnn(x, state.h)
        return out, DecoderState(h, state.c, state.feed)

    def _step(
        self, emb: Tensor, state: DecoderState, enc: EncoderOutput
    ) -> tuple[Tensor, DecoderState, Tensor]:
        """One decoder step with input feeding (Luong et al. 2015, §3.3): emb (N, E) the previous target
        piece's embedding -> attentional vector (N, H), new state, attention (N, S)."""
        out, state = self.run_decoder_rnn(self.decoder_input(emb, state).unsqueeze(1), state)
        hidden, attn = self._attend(out.squeeze(1), enc)
        return hidden, state._replace(feed=hidden) if self.cfg.input_feeding else state, attn

    def _attend(self, query: Tensor, enc: EncoderOutput) -> tuple[Tensor, Tensor]:
        """query (N, H) -> attentional vector tanh(W_c [c_t; h_t]) (N, H) (Luong eq. 5), attention (N, S);
        N = B * k, k consecutive queries over each of enc's B rows (see decode_step). Without attention:
        tanh(W_c h_t), and attention all zeros (N, S) so that search keeps its shapes."""
        if self.attention is None:
            attn = enc.mask.new_zeros(query.size(0), enc.mask.size(1), dtype=query.dtype)
            return self.dropout(torch.tanh(self.combine(query))), attn
        B = enc.mask.size(0)
        queries = query.view(B, -1, query.size(1))  # (B, k, H): a beam's k queries in one product
        attn = masked_softmax(self.attention.score(queries, enc.keys), enc.mask)  # (B, k, S)
        context = torch.bmm(attn, enc.memory).flatten(0, 1)  # (N, M)
        combined = self.combine(torch.cat([context, query], dim=1))
        return self.dropout(torch.tanh(combined)), attn.flatten(0, 1)

    def _all_steps(self, emb: Tensor, enc: EncoderOutput) -> TeacherForced:
        """Without input feeding no step depends on the last output: one LSTM call, one attention call."""
        queries, _ = self.run_decoder_rnn(emb, enc.state)  # (B, T, H)
        if self.attention is None:
            attn = enc.mask.new_zeros(*queries.shape[:2], enc.mask.size(1), dtype=queries.dtype)
            return TeacherForced(self.dropout(torch.tanh(self.combine(queries))), attn)
        attn = masked_softmax(self.attention.score(queries, enc.keys), enc.mask)  # (B, T, S)
        context = torch.bmm(attn, enc.memory)
        hidden = self.dropout(torch.tanh(self.combine(torch.cat([context, queries], dim=2))))
        return TeacherForced(hidden, attn)


def build_model(cfg: ModelConfig) -> Seq2Seq:
    return Seq2Seq(cfg)


def device_of(model: nn.Module) -> torch.device:
    """Where a model's weights are (and so where its inputs must go)."""
    return next(model.parameters()).device


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
