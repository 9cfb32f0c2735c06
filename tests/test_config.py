"""Configs: exact JSON round trips, unknown keys listed, bad values refused with the valid choices."""

import pytest

from nmt_cli.config import (
    DataConfig,
    DecodeConfig,
    ModelConfig,
    SubwordConfig,
    TrainConfig,
    from_dict,
    from_json,
    preset,
    to_json,
    with_overrides,
)
from nmt_cli.errors import ConfigError


@pytest.mark.parametrize(
    "config",
    [
        SubwordConfig(vocab_size=500),
        ModelConfig(attention="bahdanau"),
        TrainConfig(schedule="cosine", epochs=2.5),
        DecodeConfig(beam_size=3),
        DataConfig("a.en", "a.de", "d.en", "d.de"),
    ],
)
def test_json_round_trip(config):
    assert from_json(type(config), to_json(config)) == config


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown ModelConfig keys \['atention'\]; valid: .*attention"):
        from_dict(ModelConfig, {"atention": "dot"})


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (ModelConfig, {"attention": "cosine"}, "valid: none, bahdanau, dot, general, scaled-dot"),
        (ModelConfig, {"decoder_cell": "elman"}, "unknown decoder cell 'elman'; valid: rnn, lstm, gru"),
        (ModelConfig, {"dropout": 1.0}, "dropout must be in"),
        (ModelConfig, {"attention": "dot", "encoder_hidden": 100}, "dot attention needs"),
        (ModelConfig, {"tie_embeddings": True}, "tie_embeddings needs"),
        (TrainConfig, {"schedule": "exp"}, "valid: constant, inverse-sqrt"),
        (TrainConfig, {"lr": float("nan")}, "lr must be"),
        (DecodeConfig, {"beam_size": 0}, "beam_size must be at least 1"),
        (DecodeConfig, {"beam_size": 2, "n_best": 3}, "n_best"),
        (DecodeConfig, {"max_len_a": float("inf")}, "max_len_a must be a finite number"),
        (TrainConfig, {"plateau_patience": 0}, "plateau_patience must be at least 1"),
        (TrainConfig, {"min_lr": -1e-4}, "min_lr must be at least 0"),
        (TrainConfig, {"min_lr": float("inf")}, "min_lr must be a finite number"),
    ],
)
def test_bad_values_are_refused(cls, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        cls(**kwargs)


def test_preset_and_overrides():
    model, train = preset("base-rnn")
    assert model["decoder_hidden"] == 512 and train["lr"] == 1e-3
    with pytest.raises(ConfigError, match="unknown preset 'fast'; valid: base-rnn"):
        preset("fast")
    assert with_overrides(TrainConfig(), {"lr": 0.5, "seed": None}) == TrainConfig(lr=0.5)


@pytest.mark.parametrize(
    ("flags", "decoder_init"),
    [
        ({}, "last"),
        ({"bridge": True}, "bridge"),
        ({"bridge": False}, "zero"),
        ({"decoder_init": "zero"}, "zero"),
        ({"decoder_init": "bridge", "bridge": None}, "bridge"),
    ],
)
def test_decoder_init_and_the_old_bridge_flag_override_the_preset(flags, decoder_init):
    from nmt_cli.cmd_train import merged_configs

    model, train, _ = merged_configs("base-rnn", None, flags, {}, {})
    assert model.decoder_init == decoder_init and train.normalization == "sents"
