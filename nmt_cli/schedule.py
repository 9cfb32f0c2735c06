"""Learning-rate schedules as pure functions of training progress."""

from __future__ import annotations

import math

from nmt_cli.config import TrainConfig


def learning_rate(cfg: TrainConfig, step: int, progress: float, plateau_scale: float = 1.0) -> float:
    """The rate for a 1-based step; progress in [0, 1] is the spent fraction of the run (for decays).

    Warmup is linear over warmup_steps for every schedule. inverse-sqrt then decays as sqrt(warmup/step)
    (Vaswani et al. 2017, §5.3); cosine and linear decay to min_lr at progress 1; plateau multiplies the
    rate by plateau_scale, which the trainer lowers when dev BLEU stops improving.
    """
    warm = cfg.warmup_steps
    factor = min(1.0, step / warm) if warm else 1.0
    if cfg.schedule == "inverse-sqrt" and warm and step > warm:
        factor = math.sqrt(warm / step)
    elif cfg.schedule == "inverse-sqrt" and not warm:
        factor = 1.0 / math.sqrt(max(step, 1))
    elif cfg.schedule in ("cosine", "linear") and step > warm:
        p = min(max(progress, 0.0), 1.0)
        decay = 0.5 * (1.0 + math.cos(math.pi * p)) if cfg.schedule == "cosine" else 1.0 - p
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * decay
    lr = cfg.lr * factor
    if cfg.schedule == "plateau":
        lr = max(cfg.lr * plateau_scale, cfg.min_lr) * factor
    return lr
