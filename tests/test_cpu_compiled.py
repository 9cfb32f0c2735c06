"""The compiled LSTM cell (nmt_cli/cpu/compiled.py): equal to the eager cell, and eager wherever compiling
fails, disagrees or is switched off."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from nmt_cli import cpu
from nmt_cli.cpu import compiled
from nmt_cli.cpu.cell import gates_to_state

needs_compiler = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="torch.compile's CPU code needs a C++ compiler",
)


def cell_inputs(B: int = 5, H: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    gates, c = torch.randn(B, 4 * H, generator=g) * 3, torch.randn(B, H, generator=g)
    grad_h, grad_c = torch.randn(B, H, generator=g), torch.randn(B, H, generator=g)
    return gates, c, grad_h, grad_c


@needs_compiler
def test_the_compiled_cell_is_used_and_equals_the_eager_cell_forward_and_backward():
    cell = compiled.Compiled("cell", compiled._lstm_pointwise, compiled.lstm_pointwise_eager)
    backward = compiled.Compiled(
        "backward", compiled._lstm_pointwise_backward, compiled.lstm_pointwise_backward_eager
    )
    for B, H in ((5, 16), (7, 16), (3, 24)):  # one compiled variant serves other sizes
        gates, c, grad_h, grad_c = cell_inputs(B, H)
        got, expected = cell(gates, c), compiled.lstm_pointwise_eager(gates, c)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        act, c_new = expected[2], expected[1]
        got = backward(grad_h, grad_c, act, c, c_new)
        expected = compiled.lstm_pointwise_backward_eager(grad_h, grad_c, act, c, c_new)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert cell.call == cell._run_compiled and backward.call == backward._run_compiled


@needs_compiler
def test_gradients_through_the_cell_match_autograd_of_the_textbook_lstm():
    gates, c, grad_h, grad_c = cell_inputs(6, 8, seed=1)
    gates.requires_grad_(), c.requires_grad_()
    h, c_new = gates_to_state(gates, c)
    torch.autograd.backward([h, c_new], [grad_h, grad_c])
    ref_gates, ref_c = gates.detach().clone().requires_grad_(), c.detach().clone().requires_grad_()
    i, f, g, o = ref_gates.chunk(4, 1)
    ref_c_new = torch.sigmoid(f) * ref_c + torch.sigmoid(i) * torch.tanh(g)
    ref_h = torch.sigmoid(o) * torch.tanh(ref_c_new)
    torch.autograd.backward([ref_h, ref_c_new], [grad_h, grad_c])
    torch.testing.assert_close(h, ref_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gates.grad, ref_gates.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c.grad, ref_c.grad, rtol=1e-5, atol=1e-6)
    assert cpu.lstm_cell() == "torch.compile"  # what nmt bench train reports


def test_a_failed_compile_runs_the_eager_function_for_good(monkeypatch, caplog):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(torch, "compile", no_compiler)
    cell = compiled.Compiled("the test cell", compiled._lstm_pointwise, compiled.lstm_pointwise_eager)
    gates, c, *_ = cell_inputs()
    with caplog.at_level(logging.WARNING, logger="nmt_cli.cpu.compiled"):
        got = cell(gates, c)
        cell(gates, c)
    for a, b in zip(got, compiled.lstm_pointwise_eager(gates, c), strict=True):
        assert torch.equal(a, b)
    assert cell.call is compiled.lstm_pointwise_eager
    assert [r.getMessage() for r in caplog.records] == [
        "could not compile the test cell, running it eagerly: no C++ compiler found"
    ]


def test_a_compiled_function_that_disagrees_is_not_used(monkeypatch, caplog):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: lambda *args: tuple(t + 1 for t in fn(*args)))
    cell = compiled.Compiled("the test cell", compiled._lstm_pointwise, compiled.lstm_pointwise_eager)
    gates, c, *_ = cell_inputs()
    with caplog.at_level(logging.WARNING, logger="nmt_cli.cpu.compiled"):
        got = cell(gates, c)
    assert torch.equal(got[0], compiled.lstm_pointwise_eager(gates, c)[0])
    assert cell.call is compiled.lstm_pointwise_eager
    assert "disagrees" in caplog.text


def test_the_off_switch_never_compiles(monkeypatch):
    def must_not_compile(*args, **kwargs):
        raise AssertionError("torch.compile called with NMT_COMPILE=0")

    monkeypatch.setenv(compiled.OFF_SWITCH, "0")
    monkeypatch.setattr(torch, "compile", must_not_compile)
    cell = compiled.Compiled("the test cell", compiled._lstm_pointwise, compiled.lstm_pointwise_eager)
    gates, c, *_ = cell_inputs()
    assert torch.equal(cell(gates, c)[0], compiled.lstm_pointwise_eager(gates, c)[0])
    assert cell.call is compiled.lstm_pointwise_eager
    assert cpu.lstm_cell() == "eager (NMT_COMPILE=0)"
