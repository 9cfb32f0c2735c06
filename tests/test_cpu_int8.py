"""int8 decoding: close to fp32; an output layer cut to some rows scores them as the full layer does."""

from __future__ import annotations

import weakref

import pytest
import torch

from nmt_cli.checkpoint import load_model
from nmt_cli.config import DecodeConfig
from nmt_cli.cpu import gemm
from nmt_cli.cpu import int8 as quantize
from nmt_cli.cpu.int8 import Bf16LSTM, Int8LSTM, int8_dynamic, int8_kernel, int8_label
from nmt_cli.cpu.threads import PARALLEL_INT8_MACS, in_parallel, products_in_parallel
from nmt_cli.decode import decode_ids, pad_batch
from nmt_cli.errors import ConfigError
from nmt_cli.shortlist import OutputRows
from nmt_cli.textio import read_lines


@pytest.fixture(scope="module")
def models(trained):
    """The trained tiny model in fp32 and in int8 (two separate loads: conversion is in place)."""
    return load_model(trained), int8_dynamic(load_model(trained).model)


@pytest.fixture(scope="module")
def dev_ids(models, corpus) -> list[list[int]]:
    fp32, _ = models
    return [ids for ids in fp32.subword.encode_batch(read_lines(corpus.dev_src)[:40]) if ids]


def test_int8_replaces_the_layers_decoding_calls(models):
    fp32, int8 = models
    assert int8_kernel(int8) == quantize.KERNEL and int8_kernel(fp32.model) is None
    assert type(int8.generator) is not torch.nn.Linear  # the largest layer of every step
    assert type(int8.decoder_rnn) is not torch.nn.LSTM  # stepped once per output token
    # the encoder's LSTMs run a whole sentence per call, faster in the fused kernel than stepped in int8
    encoder_rnns = {type(rnn) for directions in int8.encoder.layers for rnn in directions}
    assert encoder_rnns == {Bf16LSTM if quantize.ENCODER == "bf16" else torch.nn.LSTM}


def test_int8_log_probs_are_close_to_fp32(models, dev_ids):
    fp32, int8 = models
    src, lengths = pad_batch(dev_ids)
    with torch.inference_mode():
        steps = []
        for model in (fp32.model, int8):
            enc = model.encode(src, lengths)
            steps.append(
                model.decode_step(torch.full((len(dev_ids),), 2), enc.state, enc).logits.log_softmax(-1)
            )
    exact, approx = steps
    likely = exact > -5.0  # where the probability mass is; far-off tails matter to no decision
    assert (exact - approx)[likely].abs().max() < 0.1
    assert (exact - approx)[likely].abs().mean() < 0.02
    assert not torch.equal(exact, approx)  # it did run in int8


def forced_argmax(model, src_ids: list[list[int]], tgt: list[list[int]]) -> list[list[int]]:
    """The most likely next token at each step while the given targets are fed in (decode_step)."""
    src, lengths = pad_batch(src_ids)
    steps = max(len(t) for t in tgt)
    prev = torch.full((len(tgt),), 2)  # BOS
    out = []
    with torch.inference_mode():
        enc = model.encode(src, lengths)
        state = enc.state
        for t in range(steps):
            step = model.decode_step(prev, state, enc)
            out.append(step.logits.argmax(dim=1))
            prev = torch.tensor([seq[t] if t < len(seq) else 3 for seq in tgt])
            state = step.state
    picked = torch.stack(out, dim=1).tolist()
    return [row[: len(seq)] for row, seq in zip(picked, tgt, strict=True)]


def test_int8_greedy_gives_the_same_tokens_on_most_sentences(models, dev_ids):
    fp32, int8 = models
    cfg = DecodeConfig(beam_size=1)
    a = [n[0].tokens for n in decode_ids(fp32.model, dev_ids, cfg)]
    b = [n[0].tokens for n in decode_ids(int8, dev_ids, cfg)]
    # a tiny model trained for 150 steps has many near-ties, and one flip changes the rest of a
    # sentence: most sentences agree, and given the same prefix nearly every next token does
    assert sum(x == y for x, y in zip(a, b, strict=True)) > 0.5 * len(a)
    same_step = [
        x == y
        for p, q in zip(forced_argmax(fp32.model, dev_ids, a), forced_argmax(int8, dev_ids, a), strict=True)
        for x, y in zip(p, q, strict=True)
    ]
    assert sum(same_step) >= 0.95 * len(same_step), sum(same_step) / len(same_step)


@pytest.mark.parametrize("int8", [False, True])
def test_an_output_layer_cut_to_rows_scores_them_exactly(models, int8):
    fp32, quantized = models
    layer = quantized.generator if int8 else fp32.model.generator
    rows = torch.tensor([0, 3, 7, 8, 100, fp32.config.vocab_size - 1])
    hidden = torch.randn(5, fp32.config.decoder_hidden, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        cut, full = OutputRows(layer).cut(rows)(hidden), layer(hidden)[:, rows]
        # int8 sums int8 products in int32, so any subset of rows gives the same bits; fp32 BLAS may
        # block a narrower matrix differently, which moves the last bits only
        assert torch.equal(cut, full) if int8 else torch.allclose(cut, full, rtol=0, atol=1e-5)
        everything = torch.arange(fp32.config.vocab_size)
        assert torch.equal(OutputRows(layer).cut(everything)(hidden), layer(hidden))


def test_an_fp32_cut_without_packing_scores_its_rows_from_a_plain_copy(models):
    fp32, _ = models
    layer = fp32.model.generator
    rows = torch.tensor([1, 4, 9, fp32.config.vocab_size - 2])
    hidden = torch.randn(3, fp32.config.decoder_hidden, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode(), gemm.unpacked():
        cut = OutputRows(layer).cut(rows)
        assert cut.packed is None and torch.equal(cut.weight, layer.weight[rows])
        assert torch.allclose(cut(hidden), layer(hidden)[:, rows], rtol=0, atol=1e-5)


def test_a_cut_int8_layer_keeps_the_layout_int_mm_runs_fastest(models):
    _, quantized = models
    rows = torch.tensor([0, 3, 7, 8, 100])
    values = OutputRows(quantized.generator).cut(rows).weight.values
    assert values.shape == (quantized.generator.in_features, len(rows))
    assert values.t().is_contiguous()  # (K, N') as the transpose of row-major (N', K), as the full layer


def test_weights_quantized_a_block_of_rows_at_a_time_equal_the_whole_matrix_formula():
    weight = torch.randn(quantize.QUANTIZE_ROWS * 2 + 37, 24, generator=torch.Generator().manual_seed(0))
    weight[5] = 0.0  # an all-zero row quantizes to zeros
    scales = weight.abs().amax(dim=1).clamp_min(quantize._TINY) / 127.0
    expected = torch.round(weight / scales.unsqueeze(1)).to(torch.int8)
    int8 = quantize.Int8Weight.of(weight)
    assert torch.equal(int8.scales, scales)
    assert torch.equal(int8.values.t(), expected)
    assert not int8.values.t()[5].any()


def test_int8_frees_the_fp32_layers_it_replaces(trained):
    """Decoding freezes the garbage collector, so the replaced layers must be freed by int8_dynamic."""
    model = load_model(trained, mapped=False).model
    replaced = weakref.ref(model.decoder_rnn)
    int8_dynamic(model)
    assert replaced() is None


def test_products_alone_get_all_threads_and_nothing_changes(models, monkeypatch):
    fp32, int8 = models
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    threads, seen = torch.get_num_threads(), []
    torch.set_num_threads(2)
    hook = fp32.model.combine.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    try:
        x = torch.randn(7, int8.generator.in_features, generator=torch.Generator().manual_seed(0))
        joined = torch.randn(7, fp32.model.combine.in_features, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            outside = int8.generator(x), fp32.model.combine(joined)
            with products_in_parallel(fp32.model):
                assert torch.get_num_threads() == 1  # element-wise work on one thread
                inside = int8.generator(x), fp32.model.combine(joined)
        assert seen == [2, 2]  # an fp32 product on both threads, inside as outside
        assert torch.get_num_threads() == 2
        assert all(torch.equal(a, b) for a, b in zip(inside, outside, strict=True))
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
        with products_in_parallel(fp32.model):
            assert torch.get_num_threads() == 2  # spinning threads: nothing changes
    finally:
        hook.remove()
        torch.set_num_threads(threads)


def test_small_int8_products_stay_on_one_thread(models, monkeypatch):
    fp32, _ = models
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with products_in_parallel(fp32.model):
            small = in_parallel(torch.get_num_threads, int8_macs=PARALLEL_INT8_MACS - 1)
            large = in_parallel(torch.get_num_threads, int8_macs=PARALLEL_INT8_MACS)
            fp32_product = in_parallel(torch.get_num_threads)
            after = torch.get_num_threads()
        assert (small, large, fp32_product, after) == (1, 2, 2, 1)
    finally:
        torch.set_num_threads(threads)


# --- the two int8 kernels --------------------------------------------------------------------------


@pytest.fixture(params=quantize.KERNELS)
def kernel(request, monkeypatch):
    """Each kernel in turn, as if this CPU had chosen it."""
    monkeypatch.setattr(quantize, "KERNEL", request.param)
    return request.param


def _layer_and_rows(seed: int = 0) -> tuple[torch.nn.Linear, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(48, 40)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(40, 48, generator=gen) * 0.1)
    x = torch.randn(9, 48, generator=gen)
    x[2] *= 1000.0  # rows of very different ranges: one may not change another's scale
    x[5] = 0.0
    return layer, x


def test_each_kernel_gives_a_row_the_same_bits_in_any_batch(kernel):
    layer, x = _layer_and_rows()
    int8 = quantize.Int8Linear.of(layer)
    assert (int8.weight.packed is None) == (kernel == "int_mm")
    with torch.inference_mode():
        batch = int8(x)
        alone = torch.cat([int8(x[i : i + 1]) for i in range(len(x))])
        others = int8(torch.cat([x[:4] * 50.0, x, -x]))[4 : 4 + len(x)]
        exact = layer(x)
    assert torch.equal(batch, alone) and torch.equal(batch, others)
    assert torch.equal(batch[5], layer.bias.detach())  # an all-zero row gives the bias exactly
    error = (batch - exact).abs().amax(dim=1) / exact.abs().amax(dim=1)
    assert float(error.max()) < (0.02 if kernel == "int_mm" else 0.04)  # 8 and 7 bits of activation
    assert not torch.equal(batch, exact)


def test_each_kernel_scores_a_cut_layer_as_the_full_one(kernel):
    layer, x = _layer_and_rows(1)
    int8 = quantize.Int8Linear.of(layer)
    rows = torch.tensor([0, 3, 7, 8, 39])
    with torch.inference_mode():
        assert torch.equal(OutputRows(int8).cut(rows)(x), int8(x)[:, rows])


def test_the_int8_kernel_follows_the_cpu_unless_chosen(monkeypatch):
    monkeypatch.delenv("NMT_INT8_KERNEL", raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert quantize._kernel() == "int_mm"  # oneDNN's int8 code behind torch._int_mm
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert quantize._kernel() == "fbgemm"  # where _int_mm is a plain loop
    monkeypatch.setenv("NMT_INT8_KERNEL", "int_mm")
    assert quantize._kernel() == "int_mm"


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("KERNEL", "fbgem", "NMT_INT8_KERNEL='fbgem': expected one of int_mm, fbgemm"),
        ("ENCODER", "fp16", "NMT_INT8_ENCODER='fp16': expected one of bf16, fp32"),
    ],
)
def test_an_unknown_int8_setting_is_a_clear_error(trained, monkeypatch, setting, value, message):
    monkeypatch.setattr(quantize, setting, value)
    with pytest.raises(ConfigError, match=message):
        int8_dynamic(load_model(trained).model)


def test_the_signature_names_the_int8_kernel(trained, kernel):
    from nmt_cli.translate import decode_signature, for_decoding

    loaded = for_decoding(load_model(trained), True)
    assert quantize.int8_kernel(loaded.model) == kernel
    assert f"|int8:{int8_label(loaded.model)}|" in decode_signature(loaded, DecodeConfig(beam_size=1))
    assert int8_label(loaded.model).startswith(kernel)


# --- the encoder's precision under --int8 ----------------------------------------------------------


@pytest.mark.parametrize("precision", quantize.ENCODER_PRECISIONS)
def test_the_encoder_runs_in_the_chosen_precision_close_to_fp32(trained, dev_ids, monkeypatch, precision):
    from nmt_cli.translate import decode_signature, for_decoding

    monkeypatch.setattr(quantize, "ENCODER", precision)
    fp32, int8 = load_model(trained), for_decoding(load_model(trained), True)
    rnns = {type(rnn) for directions in int8.model.encoder.layers for rnn in directions}
    assert rnns == {Bf16LSTM if precision == "bf16" else torch.nn.LSTM}
    src, lengths = pad_batch(dev_ids)
    with torch.inference_mode():
        exact, approx = fp32.model.encoder(src, lengths)[0], int8.model.encoder(src, lengths)[0]
    assert approx.dtype == torch.float32
    error = float((approx - exact).abs().max())
    assert error == 0.0 if precision == "fp32" else 0.0 < error < 0.05  # bfloat16 keeps 8 bits
    suffix = "+bf16-encoder" if precision == "bf16" else ""
    assert f"|int8:{quantize.KERNEL}{suffix}|" in decode_signature(int8, DecodeConfig(beam_size=1))


def test_a_bf16_encoder_leaves_output_independent_of_the_batch(trained, dev_ids, monkeypatch):
    from nmt_cli.translate import for_decoding

    monkeypatch.setattr(quantize, "ENCODER", "bf16")
    model = for_decoding(load_model(trained), True).model
    cfg = DecodeConfig(beam_size=1)
    one = decode_ids(model, dev_ids, cfg, batch_size=1)
    many = decode_ids(model, dev_ids, cfg, batch_size=7)
    assert [n[0].tokens for n in one] == [n[0].tokens for n in many]


def test_the_encoder_precision_follows_the_cpu_unless_chosen(monkeypatch):
    monkeypatch.delenv("NMT_INT8_ENCODER", raising=False)
    monkeypatch.setattr(quantize, "_native_bf16", lambda: True)
    assert quantize._encoder_precision() == "bf16"
    monkeypatch.setattr(quantize, "_native_bf16", lambda: False)
    assert quantize._encoder_precision() == "fp32"  # emulated bfloat16 would be slower than fp32
    monkeypatch.setenv("NMT_INT8_ENCODER", "bf16")
    assert quantize._encoder_precision() == "bf16"


def test_an_int8_lstm_over_a_sequence_equals_its_steps_and_is_close_to_fp32(kernel):
    gen = torch.Generator().manual_seed(2)
    lstm = torch.nn.LSTM(12, 16, num_layers=2, batch_first=True)
    x = torch.randn(3, 5, 12, generator=gen)
    state = (torch.randn(2, 3, 16, generator=gen), torch.randn(2, 3, 16, generator=gen))
    int8 = Int8LSTM(lstm)
    with torch.inference_mode():
        whole, (h, c) = int8(x, state)
        steps, step_state = [], state
        for t in range(x.size(1)):
            out, step_state = int8(x[:, t : t + 1], step_state)
            steps.append(out)
        exact, _ = lstm(x, state)
    assert torch.equal(whole, torch.cat(steps, dim=1))
    assert torch.equal(h, step_state[0]) and torch.equal(c, step_state[1])
    assert (whole - exact).abs().max() < 0.05 and not torch.equal(whole, exact)
