"""nmt inspect gates: the gates recomputed from the weights give the modules' own hidden states, for every
cell, in the encoder and the decoder; the picture is a valid file and the terminal shows every step."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nmt_cli.checkpoint import LoadedModel, save_model
from nmt_cli.cli import app
from nmt_cli.gates import decoder_traces, encoder_traces
from nmt_cli.model import build_model
from tests.conftest import tiny_model_config


def loaded_model(subword, cell: str, **overrides) -> LoadedModel:
    torch.manual_seed(0)
    cfg = tiny_model_config(subword.vocab_size, encoder_cell=cell, decoder_cell=cell, **overrides)
    model = build_model(cfg).eval()
    with torch.no_grad():  # livelier than uniform(-0.1, 0.1), so the gates differ from 0.5
        for p in model.parameters():
            p.mul_(3)
    return LoadedModel(model, cfg, subword, {}, "00000000")


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_recomputed_encoder_states_equal_the_modules(subword, cell):
    loaded = loaded_model(subword, cell, encoder_layers=2)
    ids = subword.encode_batch(["the small sisters help the monkeys ."])[0]
    traces, top = encoder_traces(loaded, ids)
    memory = loaded.model.encoder(torch.tensor([ids]), torch.tensor([len(ids)])).memory
    assert torch.allclose(top, memory[0], atol=1e-5)  # both layers, both directions, step by step
    names = [f"encoder layer {i} {d}" for i in (1, 2) for d in ("forward", "backward")]
    assert [t.name for t in traces] == names
    gates = {"rnn": set(), "lstm": {"input", "forget", "output"}, "gru": {"update", "reset"}}[cell]
    assert set(traces[0].gates) == gates and (traces[0].cell is not None) == (cell == "lstm")
    for values in traces[0].gates.values():
        assert (
            values.shape == (len(ids), 64) and values.min() >= 0 and values.max() <= 1 and values.std() > 0.05
        )


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("input_feeding", [True, False])
def test_recomputed_decoder_states_equal_the_modules_along_greedy_search(subword, cell, input_feeding):
    loaded = loaded_model(subword, cell, decoder_layers=2, input_feeding=input_feeding)
    model = loaded.model
    ids = subword.encode_batch(["the hungry queens carry the duck ."])[0]
    traces, out_ids = decoder_traces(loaded, ids, max_len=6)
    # replay the same greedy steps with the module and compare every layer's h (and c) at every step
    enc = model.encode(torch.tensor([ids]), torch.tensor([len(ids)]))
    state, prev = enc.state, 2
    for t in range(len(traces[0].tokens)):
        state = model.decode_step(torch.tensor([prev]), state, enc).state
        for layer, trace in enumerate(traces):
            assert np.allclose(trace.hidden[t], state.h[layer, 0].detach().numpy(), atol=1e-5)
            if cell == "lstm":
                assert np.allclose(trace.cell[t], state.c[layer, 0].detach().numpy(), atol=1e-5)
        prev = out_ids[t] if t < len(out_ids) else 3
    assert traces[0].tokens[0] == "<s>" and len(traces) == 2


def test_inspect_gates_draws_a_picture_and_prints_each_step(subword, tmp_path):
    loaded = loaded_model(subword, "gru")
    save_model(tmp_path / "m.nmt", loaded.model, subword)
    result = CliRunner().invoke(
        app, ["inspect", "gates", "-m", str(tmp_path / "m.nmt"), "the duck .", "-o", str(tmp_path / "g.png")]
    )
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
    assert "encoder layer 1 backward" in result.stdout and "update (mean)" in result.stdout
    assert "translation (greedy):" in result.stdout
    empty = CliRunner().invoke(app, ["inspect", "gates", "-m", str(tmp_path / "m.nmt"), " "])
    assert empty.exit_code == 1 and "the sentence is empty" in empty.stderr
