"""Where tensors live and in what precision training runs: --device and --precision resolved once."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from nmt_cli.errors import ConfigError

DEVICES = "auto, cpu, cuda, cuda:N or mps"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve(name: str, local_rank: int = 0) -> torch.device:
    """'auto' (CUDA when present, else the CPU), 'cpu', 'cuda', 'cuda:N' or 'mps' -> an available device.

    Without an index, CUDA means this machine's GPU number local_rank (torchrun's LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; valid: {DEVICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: no CUDA device here (torch {torch.__version__})")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r}: MPS is not available here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {name!r}; valid: {DEVICES}")
    return device


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512_BF16 or AMX), as the kernel lists its flags."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_runs_fp16_lstm() -> bool:
    """Whether oneDNN has an fp16 LSTM for this CPU (it needs AVX512_FP16 or AMX-FP16): tried once."""
    global _FP16_LSTM
    if _FP16_LSTM is None:
        try:
            with torch.autocast("cpu", dtype=torch.float16):
                torch.nn.LSTM(4, 4, batch_first=True)(torch.zeros(1, 2, 4))
            _FP16_LSTM = True
        except RuntimeError:
            _FP16_LSTM = False
    return _FP16_LSTM


_FP16_LSTM: bool | None = None


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision (fp32, bf16, fp16: TrainConfig checks the name) the device cannot run."""
    if precision == "fp16" and device.type == "cpu" and not cpu_runs_fp16_lstm():
        raise ConfigError("this CPU has no fp16 LSTM (oneDNN needs AVX512_FP16 or AMX); use bf16 or fp32")
    if precision != "bf16":
        return
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{torch.cuda.get_device_name(device)} has no bf16; use --precision fp16")
    if device.type == "cpu" and not cpu_has_bf16():
        raise ConfigError("this CPU has neither AVX512_BF16 nor AMX; use --precision fp16 or fp32")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass and loss (weights stay fp32); a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling, on only for fp16 (bf16 has fp32's exponent range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
