"""The contract between the plain model and the CPU swaps: the same weights give the same loss, the same
gradients and the same translations, and NMT_PLAIN=1 switches the swaps off everywhere."""

from __future__ import annotations

import copy

import pytest
import torch

from nmt_cli import cpu
from nmt_cli.config import DecodeConfig
from nmt_cli.cpu.model import CpuSeq2Seq
from nmt_cli.data import collate, load_parallel
from nmt_cli.decode import decode_ids
from nmt_cli.loss import backward
from nmt_cli.model import Seq2Seq, build_model
from tests.conftest import cpu_model, tiny_model_config

ATTENTIONS = ["dot", "general", "scaled-dot", "bahdanau"]


def twins(**overrides) -> tuple[Seq2Seq, Seq2Seq]:
    """A plain model and a CPU-swapped copy of it, with the same weights."""
    torch.manual_seed(0)
    cfg = tiny_model_config(40, **{"dropout": 0.0, **overrides})
    plain = build_model(cfg)
    fast = cpu_model(cfg)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def batch_of(n: int = 5):
    from nmt_cli.data import Example

    gen = torch.Generator().manual_seed(1)
    examples = []
    for line in range(n):
        src = torch.randint(4, 40, (int(torch.randint(2, 9, (1,), generator=gen)),), generator=gen)
        tgt = torch.randint(4, 40, (int(torch.randint(2, 9, (1,), generator=gen)),), generator=gen)
        examples.append(Example(src.tolist(), tgt.tolist(), line + 1))
    return collate(examples)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("input_feeding", [True, False])
@pytest.mark.parametrize("decoder_layers", [1, 2])
def test_an_update_has_the_plain_models_loss_and_every_gradient(attention, input_feeding, decoder_layers):
    plain, fast = twins(attention=attention, input_feeding=input_feeding, decoder_layers=decoder_layers)
    batch = batch_of()
    plain_loss = backward(plain.train(), batch, label_smoothing=0.1)
    fast_loss = backward(fast.train(), batch, label_smoothing=0.1)
    assert fast_loss == pytest.approx(plain_loss, rel=1e-5)
    fast_grads = dict(fast.named_parameters())
    for name, p in plain.named_parameters():
        assert torch.allclose(fast_grads[name].grad, p.grad, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("encoder_cell", ["rnn", "gru"])
def test_an_rnn_or_gru_encoder_under_the_swapped_lstm_decoder_has_the_plain_gradients(encoder_cell):
    plain, fast = twins(encoder_cell=encoder_cell, input_feeding=True, decoder_layers=2)
    batch = batch_of()
    assert backward(fast.train(), batch, 0.0) == pytest.approx(backward(plain.train(), batch, 0.0), rel=1e-5)
    fast_grads = dict(fast.named_parameters())
    for name, p in plain.named_parameters():
        assert torch.allclose(fast_grads[name].grad, p.grad, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize(
    "overrides", [dict(decoder_cell="gru"), dict(decoder_cell="rnn"), dict(attention="none")]
)
def test_install_leaves_models_the_swaps_do_not_cover_plain(overrides, monkeypatch):
    monkeypatch.delenv("NMT_PLAIN", raising=False)
    model = build_model(tiny_model_config(40, **overrides))
    assert cpu.install(model) == "plain" and type(model) is Seq2Seq and cpu.kernels(model) == "plain"


def test_a_wide_encoder_stepped_by_hand_has_the_plain_gradients():
    plain, fast = twins(encoder_hidden=256, encoder_layers=2)
    batch = batch_of()
    assert backward(fast.train(), batch, 0.0) == pytest.approx(backward(plain.train(), batch, 0.0), rel=1e-5)
    fast_grads = dict(fast.named_parameters())
    for name, p in plain.named_parameters():
        assert torch.allclose(fast_grads[name].grad, p.grad, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("beam", [1, 3])
def test_decoding_gives_the_plain_models_translations(attention, beam):
    plain, fast = twins(attention=attention, input_feeding=True, decoder_layers=2)
    src = [batch_of(8).src[i][: int(n)].tolist() for i, n in enumerate(batch_of(8).src_lengths)]
    cfg = DecodeConfig(beam_size=beam, max_len_a=1.0, max_len_b=5)
    ours = decode_ids(fast.eval(), src, cfg, batch_size=3)
    theirs = decode_ids(plain.eval(), src, cfg, batch_size=3)
    assert [[h.tokens for h in n] for n in ours] == [[h.tokens for h in n] for n in theirs]
    ours_scores = [h.score for n in ours for h in n]
    assert ours_scores == pytest.approx([h.score for n in theirs for h in n], abs=1e-4)


# decoder_init last: the encoder's final states (2 x 64 units) are the decoder's first (128 units); with
# 256 units per direction the encoder trains stepped by hand (cell.lstm_sequence), which returns the cells
DECODER_INITS = [
    dict(decoder_init="zero"),
    dict(decoder_init="last"),
    dict(decoder_init="bridge"),
    dict(decoder_init="last", encoder_hidden=256, decoder_hidden=512),
    dict(decoder_init="last", encoder_cell="gru"),
]


@pytest.mark.parametrize("overrides", DECODER_INITS)
def test_each_decoder_init_has_the_plain_models_gradients_and_translations(overrides):
    layers = dict(encoder_layers=2, decoder_layers=2, input_feeding=True)
    plain, fast = twins(**{**layers, **overrides})
    batch = batch_of()
    assert backward(fast.train(), batch, 0.0) == pytest.approx(backward(plain.train(), batch, 0.0), rel=1e-5)
    fast_grads = dict(fast.named_parameters())
    for name, p in plain.named_parameters():
        assert torch.allclose(fast_grads[name].grad, p.grad, atol=1e-5, rtol=1e-4), name
    src = [batch_of(8).src[i][: int(n)].tolist() for i, n in enumerate(batch_of(8).src_lengths)]
    cfg = DecodeConfig(beam_size=3, max_len_a=1.0, max_len_b=5)
    ours, theirs = decode_ids(fast.eval(), src, cfg, batch_size=3), decode_ids(plain.eval(), src, cfg, 3)
    assert [[h.tokens for h in n] for n in ours] == [[h.tokens for h in n] for n in theirs]


def test_install_switches_layers_in_place_and_keeps_the_state_dict():
    plain, _ = twins()
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    kept = copy.copy(plain.state_dict())
    assert cpu.install(plain) == "cpu" and isinstance(plain, CpuSeq2Seq)
    assert cpu.install(plain) == "cpu"  # twice is once
    after = plain.state_dict()
    assert list(after) == list(kept)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_nmt_plain_switches_the_swaps_off(monkeypatch, trained):
    from nmt_cli.checkpoint import load_model
    from nmt_cli.translate import decode_signature

    monkeypatch.setenv("NMT_PLAIN", "1")
    model = build_model(tiny_model_config(30))
    assert cpu.install(model) == "plain" and type(model) is Seq2Seq
    assert all(type(m) is not torch.nn.Linear or type(m) is torch.nn.Linear for m in model.modules())
    loaded = load_model(trained)
    assert cpu.kernels(loaded.model) == "plain"
    assert "|kernels:plain|" in decode_signature(loaded, DecodeConfig())
    monkeypatch.delenv("NMT_PLAIN")
    assert "|kernels:cpu|" in decode_signature(load_model(trained), DecodeConfig())


def test_int8_is_refused_under_nmt_plain(monkeypatch, trained):
    from nmt_cli.checkpoint import load_model
    from nmt_cli.errors import ConfigError
    from nmt_cli.translate import for_decoding

    monkeypatch.setenv("NMT_PLAIN", "1")
    with pytest.raises(ConfigError, match="NMT_PLAIN"):
        for_decoding(load_model(trained), int8=True)


def test_a_model_loaded_plain_translates_as_the_swapped_one(monkeypatch, trained, corpus):
    from nmt_cli.checkpoint import load_model
    from nmt_cli.textio import read_lines

    lines = read_lines(corpus.dev_src)[:20]
    fast = load_model(trained)
    monkeypatch.setenv("NMT_PLAIN", "1")
    plain = load_model(trained)
    src = [ids for ids in fast.subword.encode_batch(lines) if ids]
    cfg = DecodeConfig(beam_size=3)
    ours, theirs = decode_ids(fast.model, src, cfg), decode_ids(plain.model, src, cfg)
    assert [n[0].tokens for n in ours] == [n[0].tokens for n in theirs]


def test_training_with_the_swaps_off_learns(monkeypatch, corpus, subword, tmp_path):
    """The plain path trains end to end: the dev loss falls, and the run says which kernels it used."""
    import json

    from nmt_cli.config import TrainConfig
    from nmt_cli.train import Run, fit

    monkeypatch.setenv("NMT_PLAIN", "1")
    cfg = tiny_model_config(subword.vocab_size)
    train = TrainConfig(max_steps=30, valid_every=15, batch_tokens=400, lr=0.01)
    fit(Run(corpus, subword, cfg, train, tmp_path), quiet=True)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["dev_loss"] for r in records if "dev_loss" in r]
    assert len(losses) == 2 and losses[1] < losses[0]
    dev, _ = load_parallel(corpus.dev_src, corpus.dev_tgt, subword, 100)
    assert dev


def test_a_private_op_that_disagrees_on_first_call_is_replaced_by_the_public_one():
    from nmt_cli.cpu.private import _Checked

    def public(a, b):
        return a + b

    wrong = _Checked("wrong", lambda a, b: a - b, public, tol=1e-6)
    x = torch.ones(3)
    assert torch.equal(wrong(x, x), public(x, x)) and wrong.op is None
    assert torch.equal(wrong(x, 2 * x), public(x, 2 * x))
    failing = _Checked("failing", lambda a, b: torch.mm(a, b), public, tol=1e-6)  # raises on 1-d
    assert torch.equal(failing(x, x), public(x, x)) and not failing.available
    right = _Checked("right", lambda a, b: b + a, public, tol=1e-6)
    assert torch.equal(right(x, x), public(x, x)) and right.trusted


def test_a_private_op_whose_sums_run_in_another_order_is_trusted_on_long_products():
    # a 2048-long sum in another order differs from the public result in its last bits, far more than an
    # absolute 1e-4 on values of size 45; only a kernel that is off entirely may be refused
    import torch.nn.functional as F

    from nmt_cli.cpu.private import _Checked, _onednn_linear_public

    def reordered(x, weight, bias, *_):
        return F.linear(x.double(), weight.double(), None).float()

    checked = _Checked("reordered", reordered, _onednn_linear_public, tol=1e-5)
    gen = torch.Generator().manual_seed(0)
    x, weight = torch.randn(256, 2048, generator=gen), torch.randn(512, 2048, generator=gen)
    assert not torch.allclose(reordered(x, weight, None), F.linear(x, weight), rtol=0, atol=1e-6)
    checked(x, weight, None, "none", [], "")
    assert checked.trusted and checked.op is reordered


def test_the_onednn_op_is_trusted_after_a_large_product():
    from nmt_cli.cpu import gemm, private

    if not private.onednn_linear.available:
        pytest.skip("this torch build has no oneDNN linear op")
    a, b = torch.randn(1024, 2048), torch.randn(2048, 1024)
    assert torch.allclose(gemm.mm(a, b), a @ b, rtol=1e-3, atol=1e-2)
    assert private.onednn_linear.available and gemm.backend() == "onednn"


def test_sentence_normalization_scales_every_gradient_by_the_batchs_tokens_per_sentence():
    # OpenNMT-py's default: the summed loss over the batch's sentences (5 here), not its tokens
    batch = batch_of()
    for model in twins(input_feeding=True):
        model.train()
        summed = backward(model, batch, 0.0)
        by_tokens = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        assert backward(model, batch, 0.0, "sents") == pytest.approx(summed, rel=1e-6)
        for name, p in model.named_parameters():
            assert torch.allclose(p.grad, by_tokens[name] * batch.n_tokens / 5, atol=1e-6, rtol=1e-5), name
