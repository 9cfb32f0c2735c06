"""The products through oneDNN equal torch's, operand layouts and gradients included."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from nmt_cli.cpu import gemm
from tests.conftest import cpu_model, tiny_model_config

needs_onednn = pytest.mark.skipif(gemm.backend() != "onednn", reason="this torch build has no oneDNN linear")


def test_linear_and_mm_equal_torch_for_every_operand_layout():
    torch.manual_seed(0)
    big = torch.randn(48, 80)
    x, x3 = torch.randn(9, 32), torch.randn(4, 5, 32)
    cases = {
        "contiguous weight": (x, big[:, :32].contiguous()),
        "transposed weight": (x, big[:32, :48].contiguous().t()),
        "a slice of a wider weight": (x, big[:, 10:42]),  # rows 80 apart: oneDNN's slow strides
        "3-d input": (x3, big[:, :32].contiguous()),
        "transposed input": (big[:32, :9].t(), big[:, :32].contiguous()),
    }
    for name, (inputs, weight) in cases.items():
        assert torch.allclose(gemm.linear(inputs, weight), F.linear(inputs, weight), atol=1e-5), name
    a, b = torch.randn(300, 20), torch.randn(300, 7)
    for left, right in ((a.t(), b), (b.t(), a), (a.t(), torch.randn(7, 300).t())):  # either one copied
        product = gemm.mm(left, right)
        assert product.shape == (left.size(0), right.size(1))
        assert torch.allclose(product, left @ right, atol=1e-4)


def test_linear_with_grad_has_f_linears_gradients():
    torch.manual_seed(0)
    wide = torch.randn(24, 40, requires_grad=True)
    bias = torch.randn(24, requires_grad=True)
    x = torch.randn(3, 6, 16, requires_grad=True)
    grads = []
    for fn in (gemm.linear_with_grad, F.linear):
        out = fn(x, wide[:, 8:24], bias)  # a weight slice, as the decoder's input projection uses
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([t.grad.clone() for t in (x, wide, bias)])
        for t in (x, wide, bias):
            t.grad = None
    for ours, theirs in zip(*grads, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-5)


@needs_onednn
def test_packed_products_give_each_row_the_same_bits_whatever_the_row_count():
    torch.manual_seed(0)
    weight, bias, x = torch.randn(40, 24), torch.randn(40), torch.randn(19, 24)
    packed = gemm.pack(weight)
    full = gemm.linear_packed(x, packed, bias)
    assert torch.allclose(full, F.linear(x, weight, bias), atol=1e-5)
    for rows in range(1, 19):  # padded to multiples of gemm.ROW_BLOCK inside, cut back here
        part = gemm.linear_packed(x[:rows], packed, bias)
        assert part.shape == (rows, 40)
        assert torch.equal(part, full[:rows]), rows
    x3 = x[:15].view(3, 5, 24)
    assert torch.equal(gemm.linear_packed(x3, packed, bias), full[:15].view(3, 5, 40))


@needs_onednn
def test_packed_products_of_many_rows_run_in_chunks_with_the_same_bits(monkeypatch):
    torch.manual_seed(0)
    weight, bias, x = torch.randn(40, 24), torch.randn(40), torch.randn(150, 24)
    packed = gemm.pack(weight)
    whole = gemm.linear_packed(x, packed, bias)  # 150 rows: 64 + 64 + 22 padded to 24
    assert torch.allclose(whole, F.linear(x, weight, bias), atol=1e-5)
    calls = []
    onednn = gemm._ONEDNN.op
    monkeypatch.setattr(
        gemm._ONEDNN, "op", lambda rows, *rest: calls.append(len(rows)) or onednn(rows, *rest)
    )
    monkeypatch.setattr(gemm, "CHUNK_ROWS", 16)
    chunked = gemm.linear_packed(x[:37].view(37, 1, 24), packed, bias)
    assert calls == [16, 16, 8]
    assert chunked.shape == (37, 1, 40)
    assert torch.equal(chunked.view(37, 40), whole[:37])


@needs_onednn
def test_decoding_steps_its_lstm_over_packed_weights_as_the_module_would():
    torch.manual_seed(0)
    model = cpu_model(tiny_model_config(50, input_feeding=True, decoder_layers=2)).eval()
    src = torch.randint(4, 50, (5, 7))
    with torch.inference_mode():
        enc = model.encode(src, torch.full((5,), 7))
        prev = torch.randint(4, 50, (5,))
        packed = model.decode_step(prev, enc.state, enc)
        assert model._packed_lstm  # the packed path ran
        with gemm.unpacked():
            module = model.decode_step(prev, enc.state, enc)
    assert torch.allclose(packed.logits, module.logits, atol=1e-5)
    assert torch.allclose(packed.state.h, module.state.h, atol=1e-5)
    assert torch.allclose(packed.state.c, module.state.c, atol=1e-5)


def _in_fresh_python(code: str, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k not in (*gemm.CACHE_VARIABLES, "NMT_GEMM")}
    result = subprocess.run(
        [sys.executable, "-c", code], env={**environment, **env}, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_nmt_gemm_torch_keeps_products_on_torch():
    code = "from nmt_cli.cpu import gemm; print(gemm.backend(), gemm.pack_available())"
    assert _in_fresh_python(code, NMT_GEMM="torch") == "torch False"


def test_cache_capacity_defaults_to_trainings_and_never_overrides_the_users():
    code = (
        "import os; from nmt_cli.cpu import gemm; v = 'ONEDNN_PRIMITIVE_CACHE_CAPACITY'; a = os.environ[v];"
        "gemm.set_cache_capacity(gemm.DECODING_CACHE); print(a, os.environ[v])"
    )
    assert _in_fresh_python(code) == f"{gemm.TRAINING_CACHE} {gemm.DECODING_CACHE}"
    assert _in_fresh_python(code, ONEDNN_PRIMITIVE_CACHE_CAPACITY="7") == "7 7"


@needs_onednn
def test_a_training_update_renews_the_packed_weights_validation_decodes_with():
    from nmt_cli.config import TrainConfig
    from nmt_cli.data import Example, collate
    from nmt_cli.update import build_optimizer, train_step

    torch.manual_seed(0)
    model = cpu_model(tiny_model_config(50, input_feeding=True))
    cfg = TrainConfig(optimizer="adam", lr=0.05)
    optimizer = build_optimizer(model, cfg)  # fused Adam: it does not bump the weights' version counters
    batch = collate([Example([5, 6, 7, 8], [9, 10, 11], 1), Example([12, 13], [14, 15, 16, 17], 2)])
    src, lengths, prev = batch.src, batch.src_lengths, torch.tensor([9, 14])

    def step(packed: bool) -> torch.Tensor:
        model.eval()
        with torch.inference_mode():
            enc = model.encode(src, lengths)
            if packed:
                return model.decode_step(prev, enc.state, enc).logits
            with gemm.unpacked():
                return model.decode_step(prev, enc.state, enc).logits

    step(packed=True)  # packs the weights as they are now
    model.train()
    train_step(model, optimizer, batch, cfg, cfg.lr)
    assert torch.allclose(step(packed=True), step(packed=False), atol=1e-5)


@needs_onednn
def test_validation_during_training_leaves_no_packed_copies_behind(corpus, subword):
    # packed copies go stale at the next update; kept, they would sit in memory through training
    from nmt_cli.data import load_parallel
    from nmt_cli.loss import validate

    model = cpu_model(tiny_model_config(subword.vocab_size, input_feeding=True)).train()
    dev, _ = load_parallel(corpus.dev_src, corpus.dev_tgt, subword, 100)

    def packed_copies() -> int:
        linears = [m for m in model.modules() if isinstance(m, gemm.Linear) and m._packed is not None]
        return len(linears) + len(model._packed_lstm)

    model.eval()
    validate(model, dev[:4], subword, None)
    assert packed_copies() > 0  # outside training they stay for the next decode
    model.train()
    validate(model, dev[:4], subword, None)
    assert packed_copies() == 0 and model.training
