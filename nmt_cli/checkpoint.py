"""model.nmt: one safetensors file holding weights, config JSON and the SentencePiece model; no pickle.

trainer_state.pt (optimizer, scheduler, RNG, data position) is a plain dict of tensors and numbers,
read back with `torch.load(weights_only=True)`. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file as load_safetensors_file
from safetensors.torch import save_file as save_safetensors_file

from nmt_cli import __version__, cpu
from nmt_cli.config import ModelConfig, from_json, to_json
from nmt_cli.errors import CheckpointError, ConfigError, InputError
from nmt_cli.model import Seq2Seq, build_model
from nmt_cli.shortlist import FREQUENT_KEY, TABLE_KEY
from nmt_cli.subword import Subword
from nmt_cli.textio import atomic_path, atomic_write

FORMAT_NAME = "nmt-ckpt/"
FORMAT = FORMAT_NAME + "1"
SPM_KEY = "__subword_model__"
MAX_HEADER = 100_000_000  # as safetensors itself: a longer header is not one
SHORTLIST_KEYS = (TABLE_KEY, FREQUENT_KEY)
EXTRA_PREFIX = "__extra__."  # tensors that are not weights, e.g. a shortlist table; the model ignores them


class LoadedModel(NamedTuple):
    model: Seq2Seq
    config: ModelConfig
    subword: Subword
    info: dict[str, Any]  # training facts: steps, dev scores, data hashes, versions
    digest: str  # first 8 hex digits of the file's sha256, for decoding signatures
    extras: dict[str, torch.Tensor] = {}  # non-weight tensors by name (never mutated: a shared default)


def _unique_tensors(model: Seq2Seq) -> dict[str, torch.Tensor]:
    """The state dict without second names of tied weights (safetensors refuses shared storage), as fp32
    CPU tensors whatever device and precision the model ran in: every model file loads anywhere."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        dtype = torch.float32 if tensor.is_floating_point() else tensor.dtype
        tensors[name] = tensor.detach().to("cpu", dtype).contiguous()
    return tensors


def _tied_aliases(model: Seq2Seq, saved: dict[str, torch.Tensor]) -> set[str]:
    """Names of parameters that are one tensor with a saved name (tied weights are saved once)."""
    by_param: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_param.setdefault(id(param), []).append(name)
    return {name for names in by_param.values() if any(n in saved for n in names) for name in names}


def _file_digest(path: str) -> str:
    """First 8 hex digits of the file's sha256, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:8]


def save_model(
    path: str | Path,
    model: Seq2Seq,
    subword: Subword,
    info: dict[str, Any] | None = None,
    extras: dict[str, torch.Tensor] | None = None,
) -> None:
    """The model file, streamed to path: safetensors' bytes would hold two copies of the weights."""
    tensors, metadata = _model_record(model, subword, info, extras)
    with atomic_path(path) as tmp:
        mode = stat.S_IMODE(os.stat(tmp).st_mode)  # as the umask gives every other file we write
        try:
            save_safetensors_file(tensors, tmp, metadata=metadata)
        except SafetensorError as e:  # its I/O errors (a full disk) come as text: atomic_path names the file
            raise OSError(str(e).split("I/O error: ")[-1]) from None
        os.chmod(tmp, mode)  # safetensors writes a file of its own, readable by its owner only


def _model_record(
    model: Seq2Seq, subword: Subword, info: dict[str, Any] | None, extras: dict[str, torch.Tensor] | None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a model file."""
    tensors = _unique_tensors(model)
    tensors[SPM_KEY] = torch.frombuffer(bytearray(subword.to_bytes()), dtype=torch.uint8)
    tensors.update({EXTRA_PREFIX + name: t.contiguous() for name, t in (extras or {}).items()})
    metadata = {
        "format": FORMAT,
        "config": to_json(model.cfg),
        "version": __version__,
        "info": json.dumps(info or {}, sort_keys=True),
    }
    return tensors, metadata


def _read_header(blob: bytes, path: str) -> dict[str, str]:
    """The safetensors metadata, or a CheckpointError when the bytes are not an nmt model."""
    try:
        header_len = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + header_len])
        metadata = header.get("__metadata__") or {}
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise CheckpointError("not an nmt model file (no safetensors header)", path) from None
    found = metadata.get("format")
    if isinstance(found, str) and found.startswith(FORMAT_NAME) and found != FORMAT:
        raise CheckpointError(
            f"{Path(path).name} was written by format {found}; this nmt ({__version__}) reads {FORMAT}"
            + (" — upgrade nmt" if _format_version(found) > _format_version(FORMAT) else ""),
            path,
        )
    if found != FORMAT:
        raise CheckpointError(f"not an nmt model file (format {found!r}, expected {FORMAT})", path)
    if "config" not in metadata:
        raise CheckpointError("damaged model file: its header has no model config", path)
    return metadata


def _format_version(tag: str) -> int:
    """'nmt-ckpt/2' -> 2; a tag without a number -> 0."""
    number = tag[len(FORMAT_NAME) :]
    return int(number) if number.isdigit() else 0


def load_model(path: str | Path, mapped: bool = True, device: torch.device | None = None) -> LoadedModel:
    """Rebuild the model in eval mode from a model.nmt file, without unpickling anything.

    The file is memory-mapped (copy on write) and its tensors become the parameters (assign=True), so
    the weights are not copied: less memory and a faster load than reading and copying them
    (docs/performance.md). The model is not built on the meta device: the first device context imports
    half of torch. mapped=False reads each tensor into memory of its own instead. The model is then
    moved to device (the CPU by default); on the CPU the CPU swaps are installed (cpu.install; off with
    NMT_PLAIN=1).
    """
    path = str(path)
    _, _, metadata = read_info(path)
    try:
        tensors = load_safetensors_file(path) if mapped else load_safetensors(Path(path).read_bytes())
        cfg = from_json(ModelConfig, metadata["config"])
    except (SafetensorError, KeyError, ConfigError, ValueError) as e:
        raise CheckpointError(f"damaged model file: {e}", path) from None
    if SPM_KEY not in tensors:
        raise CheckpointError(f"damaged model file: no subword model ({SPM_KEY})", path)
    subword = Subword.from_bytes(tensors.pop(SPM_KEY).numpy().tobytes(), path)
    extras = {
        name[len(EXTRA_PREFIX) :]: tensors.pop(name)
        for name in list(tensors)
        if name.startswith(EXTRA_PREFIX)
    }
    if (shortlist := [k for k in SHORTLIST_KEYS if k in extras]) and len(shortlist) < len(SHORTLIST_KEYS):
        missing = sorted(set(SHORTLIST_KEYS) - set(shortlist))
        raise CheckpointError(f"damaged model file: its shortlist table lacks {', '.join(missing)}", path)
    tensors = _float32_weights(tensors, path)
    model = build_model(cfg)
    aliases = _tied_aliases(model, tensors)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    except RuntimeError as e:  # shapes that do not fit the config
        raise CheckpointError(
            f"weights do not fit the config: {str(e).splitlines()[-1].strip()}", path
        ) from None
    model.tie_weights()  # assign replaced the tied parameter on one side only
    missing = [name for name in missing if name not in aliases]
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not fit the config: missing {sorted(missing)}, unexpected {sorted(unexpected)}", path
        )
    if device is not None and device.type != "cpu":
        model.to(device)
    cpu.install(model)
    model.eval()
    return LoadedModel(model, cfg, subword, _info(metadata, path), _file_digest(path), extras)


def _float32_weights(tensors: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """The weights as float32: fp16 or bf16 ones (a file converted to halve its size) are widened."""
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise CheckpointError(f"damaged model file: weight {name} is {t.dtype}, not a float", path)
    return {name: t if t.dtype == torch.float32 else t.float() for name, t in tensors.items()}


def read_info(path: str | Path) -> tuple[ModelConfig, dict[str, Any], dict[str, str]]:
    """Config, training info and raw metadata of a model file, without building the model."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = int.from_bytes(head, "little")
            if len(head) < 8 or size > MAX_HEADER:
                raise CheckpointError("not an nmt model file (no safetensors header)", str(path))
            blob = head + f.read(size)
    except FileNotFoundError:
        raise InputError("no such model file", str(path)) from None
    except OSError as e:
        raise InputError(f"cannot read model file: {e.strerror}", str(path)) from None
    metadata = _read_header(blob, str(path))
    try:
        cfg = from_json(ModelConfig, metadata["config"])
    except (ValueError, TypeError, ConfigError) as e:
        raise CheckpointError(f"damaged model file: its model config: {e}", str(path)) from None
    return cfg, _info(metadata, str(path)), metadata


def _info(metadata: dict[str, str], path: str) -> dict[str, Any]:
    """The training facts of a model file's header."""
    try:
        info = json.loads(metadata.get("info", "{}"))
    except ValueError:
        raise CheckpointError("damaged model file: its info is not JSON", path) from None
    if not isinstance(info, dict):
        raise CheckpointError("damaged model file: its info is not a JSON object", path)
    return info


def save_trainer_state(path: str | Path, state: dict[str, Any]) -> None:
    """Optimizer, scheduler, RNG states and counters; plain containers only, so no pickle is needed.
    Streamed to the file: through a buffer, a save held two extra copies of the state
    (docs/performance.md)."""
    with atomic_write(path) as f:
        try:
            torch.save(state, f)
        except RuntimeError as e:
            if isinstance(e.__context__, OSError):  # torch wraps the write's error (a full disk) in its own
                raise e.__context__ from None
            raise


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError("no trainer state to resume from", str(path)) from None
    except Exception as e:  # torch raises several unrelated types for damaged files
        raise CheckpointError(f"damaged trainer state: {e}", str(path)) from None


def load_subword(path: str | Path) -> Subword:
    """The subword model of a model.nmt file, or a plain SentencePiece model file."""
    with open_or_fail(path) as f:
        head = f.read(8)
    if len(head) == 8 and 0 < int.from_bytes(head, "little") < MAX_HEADER:
        try:
            blob = Path(path).read_bytes()
            _read_header(blob, str(path))
            return Subword.from_bytes(load_safetensors(blob)[SPM_KEY].numpy().tobytes())
        except CheckpointError:
            pass  # not a model file: try it as a SentencePiece model
    return Subword.from_file(path)


def open_or_fail(path: str | Path):  # noqa: ANN201 - a plain binary file object
    try:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise InputError("no such file", str(path)) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", str(path)) from None


def average_models(paths: list[str | Path]) -> LoadedModel:
    """The element-wise mean of several model files' weights (same config and subword model required)."""
    if not paths:
        raise InputError("no model files to average")
    first = load_model(paths[0])
    total = {name: t.detach().clone().double() for name, t in first.model.state_dict().items()}
    for path in paths[1:]:
        other = load_model(path)
        if other.config != first.config:
            raise CheckpointError(f"config differs from {paths[0]}'s: cannot average", str(path))
        if other.subword.to_bytes() != first.subword.to_bytes():
            raise CheckpointError(f"subword model differs from {paths[0]}'s: cannot average", str(path))
        for name, t in other.model.state_dict().items():
            total[name] += t.double()
    first.model.load_state_dict({n: (t / len(paths)).float() for n, t in total.items()})
    info = dict(first.info, averaged=[str(p) for p in paths])
    return first._replace(info=info)
