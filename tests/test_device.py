"""--device and --precision: device names, bf16 detection, mixed-precision updates, portable model files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from nmt_cli.checkpoint import load_model, save_model
from nmt_cli.config import TrainConfig
from nmt_cli.data import Example, collate
from nmt_cli.device import check_precision, cpu_has_bf16, cpu_runs_fp16_lstm, grad_scaler, resolve
from nmt_cli.errors import ConfigError
from nmt_cli.model import build_model
from nmt_cli.update import Engine, Place, build_optimizer, place_model, train_step
from tests.conftest import tiny_model_config

CPU = torch.device("cpu")
no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
BATCH = [Example([5, 6, 7, 8], [9, 10, 11], 1), Example([12, 13], [14, 15, 16, 17], 2)]


def test_device_names():
    assert resolve("cpu") == CPU
    assert resolve("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else CPU)
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        resolve("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match="no CUDA device here"):
        resolve("cuda:1")


def test_bf16_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n")
    assert cpu_has_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert not cpu_has_bf16(info)
    assert not cpu_has_bf16(tmp_path / "absent")


def test_precision_names_are_checked():
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        TrainConfig(precision="fp8")
    if not cpu_has_bf16():
        with pytest.raises(ConfigError, match="AVX512_BF16"):
            check_precision("bf16", CPU)


def updates(precision: str, steps: int = 6) -> tuple[list[float], torch.nn.Module, str]:
    """Losses of `steps` updates on one batch, the model and its kernels."""
    cfg = TrainConfig(lr=0.01, precision=precision)
    torch.manual_seed(0)
    model, kernels, engine = place_model(tiny_model_config(20, input_feeding=True), cfg, Place())
    optimizer = build_optimizer(model, cfg)
    losses = [train_step(model, optimizer, collate(BATCH), cfg, cfg.lr, engine) for _ in range(steps)]
    return losses, model, kernels


@pytest.mark.parametrize(
    "precision",
    [
        pytest.param("fp16", marks=pytest.mark.skipif(not cpu_runs_fp16_lstm(), reason="no fp16 LSTM here")),
        pytest.param("bf16", marks=pytest.mark.skipif(not cpu_has_bf16(), reason="no bf16 on this CPU")),
    ],
)
def test_mixed_precision_updates_keep_fp32_weights_and_follow_fp32(precision):
    plain, _, _ = updates("fp32")
    mixed, model, kernels = updates(precision)
    assert kernels == "plain"  # the CPU swaps' fp32 products step aside under autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights
    assert mixed[-1] < mixed[0]
    # the first loss is the same model's loss in lower precision
    assert mixed[0] == pytest.approx(plain[0], rel=2e-2)


def test_loss_scaling_leaves_the_updates_as_they_were():
    """fp16's GradScaler (on the CPU too): scaled by a power of two and unscaled before clipping."""
    cfg = TrainConfig(lr=0.01, clip_norm=1.0)
    results = []
    for scaler in (grad_scaler("fp32", CPU), grad_scaler("fp16", CPU)):  # off, then on
        torch.manual_seed(0)
        model, _, _ = place_model(tiny_model_config(20), cfg, Place())
        optimizer = build_optimizer(model, cfg)
        for _ in range(3):
            train_step(model, optimizer, collate(BATCH), cfg, cfg.lr, Engine(scaler=scaler))
        results.append(model.state_dict())
    for name, weight in results[0].items():
        assert torch.allclose(weight, results[1][name], atol=1e-6), name


def test_a_model_file_is_fp32_on_the_cpu_whatever_the_model_ran_in(tmp_path, subword):
    torch.manual_seed(0)
    model = build_model(tiny_model_config(subword.vocab_size))
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    save_model(tmp_path / "bf16.nmt", model.to(torch.bfloat16), subword)
    stored = load_file(tmp_path / "bf16.nmt")
    assert {t.dtype for name, t in stored.items() if not name.startswith("__")} == {torch.float32}
    loaded = load_model(tmp_path / "bf16.nmt").model
    for name, weight in loaded.state_dict().items():
        assert torch.allclose(weight, expected[name], atol=1e-2), name  # bf16 kept 8 bits of mantissa


def test_loading_moves_the_model_to_the_device_and_leaves_the_cpu_swaps_out(tmp_path, subword):
    model = build_model(tiny_model_config(subword.vocab_size))
    save_model(tmp_path / "m.nmt", model, subword)
    loaded = load_model(tmp_path / "m.nmt", device=torch.device("meta"))  # a device with no data: the move
    assert {p.device.type for p in loaded.model.parameters()} == {"meta"}
    from nmt_cli.cpu import kernels

    assert kernels(loaded.model) == "plain"


@pytest.mark.gpu
@no_cuda
def test_an_update_on_cuda_equals_one_on_the_cpu():
    cfg = TrainConfig(lr=0.01)
    results = []
    for device in (CPU, torch.device("cuda")):
        torch.manual_seed(0)
        model, _, engine = place_model(tiny_model_config(20), cfg, Place(device))
        optimizer = build_optimizer(model, cfg)
        loss = train_step(model, optimizer, collate(BATCH), cfg, cfg.lr, engine)
        results.append((loss, {k: v.cpu() for k, v in model.state_dict().items()}))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-4)
    for name, weight in results[0][1].items():
        assert torch.allclose(weight, results[1][1][name], atol=1e-5), name


@pytest.mark.gpu
@no_cuda
def test_a_model_translates_the_same_on_cuda_and_on_the_cpu(trained):
    from nmt_cli.config import DecodeConfig
    from nmt_cli.translate import translate_lines

    lines = ["a man is walking", "two dogs play in the snow", ""]
    outputs = []
    for device in (CPU, torch.device("cuda")):
        loaded = load_model(trained, device=device)
        got = translate_lines(iter([lines]), loaded, DecodeConfig(beam_size=5), 64, 250, False)
        outputs.append([t.hyp for t in got])
    assert outputs[0] == outputs[1]
