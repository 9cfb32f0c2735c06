"""The model contract: teacher forcing equals the step loop, shapes, parameter count, tied weights."""

import pytest
import torch

from nmt_cli.config import ModelConfig, from_dict, preset
from nmt_cli.errors import ConfigError
from nmt_cli.model import EncoderOutput, build_model, count_parameters
from tests.conftest import cpu_model

ATTENTIONS = ["bahdanau", "dot", "general", "scaled-dot"]


def tiny_config(**overrides) -> ModelConfig:
    base = dict(
        vocab_size=40,
        emb_size=8,
        encoder_hidden=6,
        decoder_hidden=12,
        dropout=0.0,
        encoder_layers=2,
        decoder_layers=2,
    )
    return ModelConfig(**{**base, **overrides})


def toy_batch():
    torch.manual_seed(0)
    src = torch.randint(4, 40, (3, 7))
    lengths = torch.tensor([7, 5, 3])
    src[1, 5:] = 0
    src[2, 3:] = 0
    tgt_in = torch.randint(4, 40, (3, 6))
    tgt_in[:, 0] = 2
    return src, lengths, tgt_in


def step_loop(model, src, lengths, tgt_in):
    enc = model.encode(src, lengths)
    state, log_probs, attns = enc.state, [], []
    for t in range(tgt_in.size(1)):
        out = model.decode_step(tgt_in[:, t], state, enc)
        state = out.state
        log_probs.append(out.logits.log_softmax(-1))
        attns.append(out.attention)
    return torch.stack(log_probs, 1), torch.stack(attns, 1)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("input_feeding", [True, False])
def test_teacher_forcing_equals_step_loop(attention, input_feeding):
    model = build_model(tiny_config(attention=attention, input_feeding=input_feeding)).eval()
    src, lengths, tgt_in = toy_batch()
    forced = model.teacher_force(src, lengths, tgt_in)
    log_probs, attns = step_loop(model, src, lengths, tgt_in)
    assert torch.allclose(model.log_probs(forced.hidden), log_probs, atol=1e-5)
    assert torch.allclose(forced.attention, attns, atol=1e-6)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_attention_is_a_distribution_over_real_source_tokens(attention):
    model = build_model(tiny_config(attention=attention)).eval()
    src, lengths, tgt_in = toy_batch()
    attn = model.teacher_force(src, lengths, tgt_in).attention  # (B, T, S)
    assert torch.allclose(attn.sum(-1), torch.ones(3, 6), atol=1e-6)
    assert attn[2, :, 3:].abs().max() == 0  # row 2 has 3 real tokens: padding gets no weight


def test_base_rnn_has_the_protocol_parameter_count():
    # OpenNMT-py's count for the side-by-side model: Luong general, input feeding, no bridge, vocab 8000
    cfg = from_dict(ModelConfig, {**preset("base-rnn")[0], "vocab_size": 8000})
    assert (cfg.decoder_init, cfg.memory_dropout) == ("last", False)
    assert count_parameters(build_model(cfg)) == 12_664_640


def test_decoder_init_last_starts_the_decoder_from_each_sentences_final_encoder_states():
    # each sentence alone, unpadded, through each direction's LSTM: the forward (h, c) after its last
    # token and the backward one after its first, side by side, are the decoder's first state
    model = build_model(tiny_config(decoder_init="last", encoder_layers=1, decoder_layers=1)).eval()
    src, lengths, _ = toy_batch()
    state = model.encode(src, lengths).state
    fwd, bwd = model.encoder.layers[0]
    assert state.h.shape == state.c.shape == (1, 3, 12) and state.feed.abs().max() == 0
    for b, n in enumerate(lengths.tolist()):
        x = model.encoder.embedding(src[b : b + 1, :n])
        _, (h_fwd, c_fwd) = fwd(x)
        _, (h_bwd, c_bwd) = bwd(x.flip(1))
        assert torch.allclose(state.h[0, b], torch.cat([h_fwd[0, 0], h_bwd[0, 0]]), atol=1e-6)
        assert torch.allclose(state.c[0, b], torch.cat([c_fwd[0, 0], c_bwd[0, 0]]), atol=1e-6)


def test_decoder_init_last_gives_layer_by_layer_and_zero_cells_where_the_encoder_has_none():
    src, lengths, _ = toy_batch()
    model = build_model(tiny_config(decoder_init="last")).eval()  # two layers each side
    enc = model.encode(src, lengths)
    for b, n in enumerate(
        lengths.tolist()
    ):  # the top layer's: forward at the last token, backward at the first
        top = torch.cat([enc.memory[b, n - 1, :6], enc.memory[b, 0, 6:]])
        assert torch.allclose(enc.state.h[1, b], top)
    assert not torch.allclose(enc.state.h[0], enc.state.h[1])
    gru_encoder = build_model(tiny_config(decoder_init="last", encoder_cell="gru")).eval()
    state = gru_encoder.encode(src, lengths).state
    assert state.c.shape == (2, 3, 12) and state.c.abs().max() == 0 and state.h.abs().max() > 0
    gru_decoder = build_model(tiny_config(decoder_init="last", decoder_cell="gru")).eval()
    assert gru_decoder.encode(src, lengths).state.c.shape == (2, 3, 0)
    zero = build_model(tiny_config(decoder_init="zero")).eval().encode(src, lengths).state
    assert zero.h.abs().max() == 0 and zero.c.abs().max() == 0
    assert build_model(tiny_config(decoder_init="last")).bridge is None


def test_decoder_init_last_is_the_same_for_a_sentence_alone_and_in_a_padded_batch():
    model = build_model(tiny_config(decoder_init="last")).eval()
    src, lengths, _ = toy_batch()
    batched = model.encode(src, lengths).state
    alone = model.encode(src[2:, :3], lengths[2:]).state
    assert torch.allclose(batched.h[:, 2], alone.h[:, 0], atol=1e-6)
    assert torch.allclose(batched.c[:, 2], alone.c[:, 0], atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            dict(decoder_hidden=10),
            r"encoder output size \(12: encoder_hidden 6 x 2 directions\) == decoder_hidden \(10\)",
        ),
        (dict(encoder_layers=1), r"encoder_layers \(1\) == decoder_layers \(2\)"),
        (dict(decoder_init="first"), "unknown decoder init 'first'; valid: zero, last, bridge"),
    ],
)
def test_decoder_init_last_that_cannot_fit_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**{"decoder_init": "last", **overrides})


@pytest.mark.parametrize(
    ("old", "decoder_init"),
    [
        ({"bridge": True}, "bridge"),
        ({"bridge": False}, "zero"),
        ({"bridge": False, "decoder_init": "last"}, "last"),
    ],
)
def test_the_old_bridge_key_reads_as_decoder_init(old, decoder_init):
    base = {"vocab_size": 40, "emb_size": 8, "encoder_hidden": 6, "decoder_hidden": 12}
    assert from_dict(ModelConfig, {**base, **old}).decoder_init == decoder_init


def test_a_bridge_key_that_contradicts_decoder_init_is_refused():
    with pytest.raises(ConfigError, match="bridge true contradicts decoder_init last"):
        from_dict(ModelConfig, {"bridge": True, "decoder_init": "last"})


def test_tied_and_shared_embeddings_are_one_tensor():
    model = build_model(tiny_config(emb_size=12, tie_embeddings=True, share_embeddings=True))
    assert model.generator.weight is model.tgt_embedding.weight
    assert model.encoder.embedding.weight is model.tgt_embedding.weight
    untied = build_model(tiny_config(emb_size=12))
    assert count_parameters(untied) - count_parameters(model) == 2 * 40 * 12


def test_gru_encoder_and_padding_do_not_change_a_sentence():
    # the same sentence alone and padded beside a longer one encodes to the same memory
    model = build_model(tiny_config(encoder_cell="gru")).eval()
    src, lengths, _ = toy_batch()
    both = model.encode(src, lengths)
    alone = model.encode(src[2:, :3], lengths[2:])
    assert torch.allclose(both.memory[2, :3], alone.memory[0], atol=1e-6)
    assert torch.allclose(both.state.h[:, 2], alone.state.h[:, 0], atol=1e-6)


def test_encoder_output_select_and_repeat():
    model = build_model(tiny_config()).eval()
    src, lengths, _ = toy_batch()
    enc: EncoderOutput = model.encode(src, lengths)
    rep = enc.state.repeat_interleave(2)
    assert rep.h.shape[1] == 6 and torch.equal(rep.h[:, 2], enc.state.h[:, 1])
    assert torch.equal(rep.c[:, 3], enc.state.c[:, 1]) and torch.equal(rep.feed[5], enc.state.feed[2])
    picked = enc.select(torch.tensor([2, 0]))
    assert torch.equal(picked.keys[0], enc.keys[2]) and torch.equal(picked.state.h[:, 1], enc.state.h[:, 0])


def plain_loss(model, src, lengths, tgt_in, tgt_out):
    """The reference: summed NLL from the step loop, where every matmul takes its own gradient."""
    log_probs, _ = step_loop(model, src, lengths, tgt_in)
    return torch.nn.functional.nll_loss(log_probs.transpose(1, 2), tgt_out, reduction="sum")


@pytest.fixture(params=["whole", "in pieces"])
def deferred_pieces(request, monkeypatch):
    """At toy size every sequence fits in one input-projection product and one weight-gradient flush;
    "in pieces" makes both a few rows long, so that the pieces' sums are tested too."""
    if request.param == "in pieces":
        import nmt_cli.cpu.cell as cell

        monkeypatch.setattr(cell, "PROJECTION_STEPS", 4)
        monkeypatch.setattr(cell, "FLUSH_ROWS", 4)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("input_feeding", [True, False])
def test_fast_training_forward_has_the_plain_gradients(attention, input_feeding, deferred_pieces):
    # teacher_force precomputes input projections, defers weight gradients (input feeding) or runs the
    # decoder in one call (no input feeding); loss and every gradient must equal the plain step loop's
    model = cpu_model(tiny_config(attention=attention, input_feeding=input_feeding)).train()
    src, lengths, tgt_in = toy_batch()
    tgt_out = torch.roll(tgt_in, -1, dims=1)
    fast = torch.nn.functional.nll_loss(
        model.log_probs(model.teacher_force(src, lengths, tgt_in).hidden).transpose(1, 2),
        tgt_out,
        reduction="sum",
    )
    fast.backward()
    fast_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    plain = plain_loss(model, src, lengths, tgt_in, tgt_out)
    plain.backward()
    assert torch.allclose(fast, plain, rtol=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(fast_grads[name], p.grad, rtol=1e-4, atol=1e-6), name


def test_lstm_pointwise_part_is_nn_lstms_with_and_without_autograd():
    from nmt_cli.cpu.cell import gates_to_state

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 4, batch_first=True)
    x, h, c = torch.randn(3, 5), torch.randn(3, 4), torch.randn(3, 4)
    gates = x @ lstm.weight_ih_l0.t() + lstm.bias_ih_l0 + h @ lstm.weight_hh_l0.t() + lstm.bias_hh_l0
    with torch.no_grad():
        _, (h_ref, c_ref) = lstm(x.unsqueeze(1), (h.unsqueeze(0), c.unsqueeze(0)))
        inference = gates_to_state(gates, c)
    training = gates_to_state(gates.detach().requires_grad_(), c)
    assert torch.allclose(inference[0], h_ref[0], atol=1e-6)
    assert torch.allclose(inference[1], c_ref[0], atol=1e-6)
    # inference takes tanh through sigmoid (nmt_cli.activations): within a few ulps of training's
    assert all(
        torch.allclose(a, b.detach(), rtol=0, atol=5e-7) for a, b in zip(inference, training, strict=True)
    )


@pytest.mark.parametrize("length", [1, 6])
def test_lstm_stepped_by_hand_has_nn_lstms_outputs_and_gradients(length, deferred_pieces):
    # the encoder trains through lstm_sequence and decodes through the module: both must be one function
    from nmt_cli.cpu.cell import lstm_sequence

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 4, batch_first=True)
    x = torch.randn(3, length, 5, requires_grad=True)
    weights = torch.randn(3, length, 4)  # a loss that weighs every output differently
    results = []
    for run in (lambda: lstm(x)[0], lambda: lstm_sequence(lstm, x)[0]):
        out = run()
        results.append((out, torch.autograd.grad((out * weights).sum(), [x, *lstm.parameters()])))
    (module_out, module_grads), (stepped_out, stepped_grads) = results
    assert torch.allclose(stepped_out, module_out, atol=1e-6)
    for a, b in zip(stepped_grads, module_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    ("hidden", "grad", "stepped"), [(256, True, True), (64, True, False), (256, False, False)]
)
def test_the_encoder_steps_its_lstm_by_hand_only_where_it_trains_a_wide_one(
    monkeypatch, hidden, grad, stepped
):
    # by hand it keeps a third of the fused kernel's memory; below 256 units it costs more time than it saves
    import nmt_cli.cpu.model as model_module

    calls = []
    real = model_module.lstm_sequence
    monkeypatch.setattr(
        model_module, "lstm_sequence", lambda rnn, x, lengths: calls.append(rnn) or real(rnn, x, lengths)
    )
    model = cpu_model(tiny_config(encoder_hidden=hidden, encoder_layers=1)).train()
    src, lengths, _ = toy_batch()
    with torch.set_grad_enabled(grad):
        model.encode(src, lengths)
    assert len(calls) == (2 if stepped else 0)  # both directions, or neither


def test_reverse_padded_reverses_each_row_within_its_length_and_passes_gradients():
    from nmt_cli.model import reverse_padded

    x = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3).requires_grad_()
    out = reverse_padded(x, torch.tensor([4, 2]))
    assert torch.equal(out[0], x[0].flip(0))
    assert torch.equal(out[1, :2], x[1, :2].flip(0)) and torch.equal(out[1, 2:], x[1, 2:])  # padding stays
    assert torch.equal(reverse_padded(out, torch.tensor([4, 2])), x)
    (out * torch.arange(24.0).view(2, 4, 3)).sum().backward()
    assert torch.equal(x.grad, reverse_padded(torch.arange(24.0).view(2, 4, 3), torch.tensor([4, 2])))


CELLS = ["rnn", "lstm", "gru"]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("attention", ["none", "general"])
@pytest.mark.parametrize("input_feeding", [True, False])
def test_every_cell_with_and_without_attention_teacher_forces_as_it_steps(cell, attention, input_feeding):
    cfg = tiny_config(encoder_cell=cell, decoder_cell=cell, attention=attention, input_feeding=input_feeding)
    model = build_model(cfg).eval()
    assert type(model.decoder_rnn).__name__ == {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[cell]
    src, lengths, tgt_in = toy_batch()
    forced = model.teacher_force(src, lengths, tgt_in)
    log_probs, attns = step_loop(model, src, lengths, tgt_in)
    assert torch.allclose(model.log_probs(forced.hidden), log_probs, atol=1e-5)
    assert torch.allclose(forced.attention, attns, atol=1e-6)
    state = model.encode(src, lengths).state
    assert state.c.shape == ((2, 3, 12) if cell == "lstm" else (2, 3, 0))  # only the LSTM has a cell state
    picked = state.select(torch.tensor([2, 2, 0]))
    assert torch.equal(picked.h[:, 1], state.h[:, 2]) and picked.c.shape[1] == 3


def test_without_attention_the_decoder_sees_the_source_only_through_its_first_state():
    model = build_model(tiny_config(attention="none", decoder_cell="gru")).eval()
    src, lengths, tgt_in = toy_batch()
    enc = model.encode(src, lengths)
    assert model.attention is None and model.combine.in_features == 12  # W_c h_t, no context
    # another memory with the same initial state gives the same output: nothing but the state is read
    other = enc._replace(memory=torch.randn_like(enc.memory), keys=torch.randn_like(enc.keys))
    a = model.decode_step(tgt_in[:, 0], enc.state, enc)
    b = model.decode_step(tgt_in[:, 0], enc.state, other)
    assert torch.equal(a.logits, b.logits) and a.attention.abs().max() == 0
    with pytest.raises(Exception, match="attention none needs decoder_init last or bridge"):
        tiny_config(attention="none", decoder_init="zero")


def test_cell_parameter_counts_follow_the_gate_count():
    # one direction, one layer, input 8, hidden 6: a gate is 6*(8+6) weights + 2*6 biases = 96
    counts = {}
    for cell in CELLS:
        cfg = tiny_config(encoder_cell=cell, encoder_layers=1, bidirectional=False)
        counts[cell] = sum(p.numel() for p in build_model(cfg).encoder.layers.parameters())
    assert counts == {"rnn": 96, "gru": 3 * 96, "lstm": 4 * 96}
