"""model.nmt is one safetensors file that rebuilds the model without unpickling anything."""

import json
import os
import pickle

import pytest
import safetensors.torch
import torch

from nmt_cli.checkpoint import (
    load_model,
    load_subword,
    load_trainer_state,
    read_info,
    save_model,
    save_trainer_state,
)
from nmt_cli.errors import CheckpointError, InputError
from nmt_cli.model import build_model
from tests.conftest import tiny_model_config


def test_model_file_is_plain_safetensors_with_config_and_subwords(trained, subword):
    blob = trained.read_bytes()
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    assert header["__metadata__"]["format"] == "nmt-ckpt/1"
    assert json.loads(header["__metadata__"]["config"])["vocab_size"] == subword.vocab_size
    assert "__subword_model__" in header
    # nothing but the JSON header and raw tensor bytes: the tensors' byte ranges tile the rest of the
    # file exactly, so no pickle (or anything else) can hide in it
    start = 8 + int.from_bytes(blob[:8], "little")
    ranges = sorted(t["data_offsets"] for name, t in header.items() if name != "__metadata__")
    assert ranges[0][0] == 0 and ranges[-1][1] == len(blob) - start
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert {t["dtype"] for name, t in header.items() if name != "__metadata__"} <= {"F32", "U8", "I64"}


def test_model_files_are_written_with_the_umask_mode(trained, tmp_path):
    loaded = load_model(trained)
    old = os.umask(0o022)
    try:
        save_model(tmp_path / "m.nmt", loaded.model, loaded.subword)
    finally:
        os.umask(old)
    assert (tmp_path / "m.nmt").stat().st_mode & 0o777 == 0o644  # safetensors alone gives 0600


def test_a_full_disk_while_saving_is_one_error(trained, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import nmt_cli.checkpoint

    def full(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(nmt_cli.checkpoint, "save_safetensors_file", full)
    loaded = load_model(trained)
    with pytest.raises(InputError, match=r"m.nmt: cannot write: No space left on device \(os error 28\)$"):
        save_model(tmp_path / "m.nmt", loaded.model, loaded.subword)
    assert list(tmp_path.iterdir()) == []


def test_fp16_weights_are_widened_on_load(trained, tmp_path):
    tensors = safetensors.torch.load_file(trained)
    half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    blob = trained.read_bytes()
    metadata = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["__metadata__"]
    safetensors.torch.save_file(half, tmp_path / "half.nmt", metadata=metadata)
    model = load_model(tmp_path / "half.nmt").model
    assert all(p.dtype == torch.float32 for p in model.parameters())
    reference = load_model(trained).model.state_dict()
    for name, t in model.state_dict().items():
        assert torch.allclose(t, reference[name], atol=1e-2, rtol=1e-2), name


def test_a_newer_format_says_so(trained, tmp_path):
    tensors = safetensors.torch.load_file(trained)
    blob = trained.read_bytes()
    metadata = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["__metadata__"]
    safetensors.torch.save_file(
        tensors, tmp_path / "model.nmt", metadata={**metadata, "format": "nmt-ckpt/2"}
    )
    with pytest.raises(CheckpointError, match=r"model.nmt was written by format nmt-ckpt/2; .* upgrade nmt$"):
        read_info(tmp_path / "model.nmt")


def test_load_needs_no_pickle(trained, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_model(trained)
    assert not loaded.model.training
    assert loaded.subword.vocab_size == loaded.config.vocab_size
    assert loaded.info["step"] in (75, 150) and len(loaded.digest) == 8  # the best of two validations
    assert load_model(trained.parent / "last.nmt").info["step"] == 150


@pytest.mark.parametrize("share", [True, False])
def test_round_trip_with_tied_weights(tmp_path, subword, share):
    model = build_model(
        tiny_model_config(subword.vocab_size, emb_size=128, tie_embeddings=True, share_embeddings=share)
    )
    save_model(tmp_path / "m.nmt", model, subword, {"note": "x"})
    loaded = load_model(tmp_path / "m.nmt")
    assert loaded.model.generator.weight is loaded.model.tgt_embedding.weight
    assert (loaded.model.encoder.embedding.weight is loaded.model.tgt_embedding.weight) == share
    for (name, a), b in zip(model.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    cfg, info, _ = read_info(tmp_path / "m.nmt")
    assert cfg.tie_embeddings and info == {"note": "x"}


def test_not_a_model_file(tmp_path):
    junk = tmp_path / "junk.nmt"
    junk.write_bytes(b"hello, I am not a model\n")
    with pytest.raises(CheckpointError, match="not an nmt model file"):
        load_model(junk)
    with pytest.raises(InputError, match="no such model file"):
        load_model(tmp_path / "missing.nmt")


def test_subword_from_model_file(trained, subword):
    assert load_subword(trained).encode("the dog sleeps .") == subword.encode("the dog sleeps .")


def test_trainer_state_loads_with_weights_only(tmp_path):
    state = {"counters": {"step": 3}, "rng": torch.get_rng_state(), "betas": (0.9, 0.999)}
    save_trainer_state(tmp_path / "s.pt", state)
    back = load_trainer_state(tmp_path / "s.pt")
    assert back["counters"] == {"step": 3} and torch.equal(back["rng"], state["rng"])


def test_average_is_the_elementwise_mean(tmp_path, subword):
    from nmt_cli.checkpoint import average_models

    torch.manual_seed(0)
    paths = []
    for i in range(3):
        model = build_model(tiny_model_config(subword.vocab_size))
        save_model(tmp_path / f"m{i}.nmt", model, subword)
        paths.append(tmp_path / f"m{i}.nmt")
    models = [load_model(p).model.state_dict() for p in paths]
    averaged = average_models(paths).model.state_dict()
    for name, tensor in averaged.items():
        assert torch.allclose(tensor, (models[0][name] + models[1][name] + models[2][name]) / 3, atol=1e-7)
    other = build_model(tiny_model_config(subword.vocab_size, attention="dot"))
    save_model(tmp_path / "dot.nmt", other, subword)
    with pytest.raises(CheckpointError, match="config differs"):
        average_models([paths[0], tmp_path / "dot.nmt"])


@pytest.mark.parametrize("damage", ["drop", "reshape"])
def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, subword, damage):
    model = build_model(tiny_model_config(subword.vocab_size))
    save_model(tmp_path / "m.nmt", model, subword)
    tensors = safetensors.torch.load_file(tmp_path / "m.nmt")
    if damage == "drop":
        del tensors["generator.bias"]
    else:
        tensors["generator.bias"] = torch.zeros(3)
    metadata = read_info(tmp_path / "m.nmt")[2]
    safetensors.torch.save_file(tensors, tmp_path / "bad.nmt", metadata=metadata)
    with pytest.raises(CheckpointError, match="weights do not fit the config.*generator.bias"):
        load_model(tmp_path / "bad.nmt")


def test_unmapped_load_gives_the_same_weights(trained):
    mapped, unmapped = load_model(trained), load_model(trained, mapped=False)
    a, b = mapped.model.state_dict(), unmapped.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert unmapped.subword.vocab_size == mapped.subword.vocab_size and unmapped.digest == mapped.digest


def test_a_save_that_fails_midway_leaves_the_old_files(tmp_path, subword, monkeypatch):
    model = build_model(tiny_model_config(subword.vocab_size))
    save_model(tmp_path / "m.nmt", model, subword, {"step": 1})
    save_trainer_state(tmp_path / "state.pt", {"step": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def half_then_full_disk(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    def save_file(_tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            half_then_full_disk(f)

    monkeypatch.setattr("nmt_cli.checkpoint.save_safetensors_file", save_file)
    full = r"cannot write: No space left on device$"  # one error line, not an OSError traceback
    with pytest.raises(InputError, match=full):
        save_model(tmp_path / "m.nmt", model, subword, {"step": 2})
    monkeypatch.setattr(torch, "save", lambda _state, f: half_then_full_disk(f))
    with pytest.raises(InputError, match=full):
        save_trainer_state(tmp_path / "state.pt", {"step": 2})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary file left either
    assert read_info(tmp_path / "m.nmt")[1] == {"step": 1}


def test_a_model_file_with_the_old_bridge_key_loads_and_translates_the_same(trained, tmp_path, corpus):
    # model files from before decoder_init say `"bridge": true` (or false) and have no memory_dropout
    from nmt_cli.config import DecodeConfig
    from nmt_cli.decode import decode_ids
    from nmt_cli.textio import read_lines

    tensors = safetensors.torch.load_file(trained)
    blob = trained.read_bytes()
    metadata = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["__metadata__"]
    config = json.loads(metadata["config"])
    assert config.pop("decoder_init") == "bridge" and config.pop("memory_dropout") is True
    old = tmp_path / "old.nmt"
    safetensors.torch.save_file(
        tensors, old, metadata={**metadata, "config": json.dumps({**config, "bridge": True})}
    )
    now, before = load_model(trained), load_model(old)
    assert before.config == now.config
    src = [ids for ids in now.subword.encode_batch(read_lines(corpus.dev_src)[:10]) if ids]
    cfg = DecodeConfig(beam_size=2)
    assert [n[0].tokens for n in decode_ids(before.model, src, cfg)] == [
        n[0].tokens for n in decode_ids(now.model, src, cfg)
    ]
