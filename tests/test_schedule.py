"""Learning-rate schedules, checked against values worked out by hand."""

import math

import pytest

from nmt_cli.config import TrainConfig
from nmt_cli.schedule import learning_rate


def test_warmup_then_inverse_sqrt():
    cfg = TrainConfig(lr=2e-3, schedule="inverse-sqrt", warmup_steps=100)
    assert learning_rate(cfg, 50, 0.0) == pytest.approx(1e-3)  # half way up the warmup
    assert learning_rate(cfg, 100, 0.0) == pytest.approx(2e-3)  # the peak
    assert learning_rate(cfg, 400, 0.0) == pytest.approx(1e-3)  # sqrt(100 / 400) = 0.5


def test_cosine_and_linear_reach_min_lr_at_the_end():
    cos = TrainConfig(lr=1.0, schedule="cosine", min_lr=0.1)
    assert learning_rate(cos, 10, 0.5) == pytest.approx(0.1 + 0.9 * 0.5)  # cos(pi/2) = 0
    assert learning_rate(cos, 10, 1.0) == pytest.approx(0.1)
    lin = TrainConfig(lr=1.0, schedule="linear")
    assert learning_rate(lin, 10, 0.25) == pytest.approx(0.75)


def test_constant_and_plateau():
    assert learning_rate(TrainConfig(lr=0.3), 1000, 0.9) == 0.3
    plateau = TrainConfig(lr=1.0, schedule="plateau", min_lr=0.2)
    assert learning_rate(plateau, 5, 0.0, plateau_scale=0.5) == 0.5
    assert learning_rate(plateau, 5, 0.0, plateau_scale=0.01) == 0.2  # floored at min_lr
    assert math.isfinite(learning_rate(TrainConfig(schedule="inverse-sqrt"), 1, 0.0))
