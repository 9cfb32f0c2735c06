"""Global attention scores: Bahdanau (additive) and Luong dot / general / scaled-dot. No state kept.

Every attention first projects the encoder memory into keys once per batch (`project_keys`), then scores
decoder queries against them. Scoring one query per row serves search; scoring all T queries of a row at
once serves training without input feeding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def masked_softmax(energies: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last (source) axis; mask (B, S) True on real tokens, broadcast over queries."""
    if energies.dim() == 3:
        mask = mask.unsqueeze(1)
    return energies.masked_fill(~mask, float("-inf")).softmax(dim=-1)


class LuongAttention(nn.Module):
    """Luong et al. 2015, §3.1: dot h_t·h_s, general h_t·W_a h_s; scaled-dot divides dot by sqrt(H)."""

    def __init__(self, kind: str, query_size: int, memory_size: int):
        super().__init__()
        self.kind = kind
        self.scale = 1.0 / math.sqrt(query_size) if kind == "scaled-dot" else 1.0
        # general: W_a h_s is computed once per batch, so each step is a single batched dot product
        self.key_proj = nn.Linear(memory_size, query_size, bias=False) if kind == "general" else None

    def project_keys(self, memory: Tensor) -> Tensor:
        """memory (B, S, M) -> keys (B, S, H)."""
        return self.key_proj(memory) if self.key_proj is not None else memory

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """query (B, H) or (B, T, H), keys (B, S, H) -> energies (B, S) or (B, T, S)."""
        if query.dim() == 2:
            energies = torch.bmm(query.unsqueeze(1), keys.transpose(1, 2)).squeeze(1)
            return energies * self.scale if self.scale != 1.0 else energies
        return torch.bmm(query, keys.transpose(1, 2)) * self.scale


class BahdanauAttention(nn.Module):
    """Bahdanau et al. 2015, §3.1 / App. A.1.2: e = v·tanh(W q + U h_s), additive ("mlp") scores.

    As in OpenNMT-py's "mlp" global attention, the query is the current decoder output h_t (Luong's
    layout), so both attention families share one decoder.
    """

    def __init__(self, query_size: int, memory_size: int):
        super().__init__()
        self.key_proj = nn.Linear(memory_size, query_size, bias=False)  # U, once per batch
        self.query_proj = nn.Linear(query_size, query_size, bias=True)  # W
        self.v = nn.Linear(query_size, 1, bias=False)

    def project_keys(self, memory: Tensor) -> Tensor:
        """memory (B, S, M) -> keys (B, S, H)."""
        return self.key_proj(memory)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """query (B, H) or (B, T, H), keys (B, S, H) -> energies (B, S) or (B, T, S)."""
        q = self.query_proj(query)
        if query.dim() == 2:
            return self.v(torch.tanh(q.unsqueeze(1) + keys)).squeeze(-1)
        return self.v(torch.tanh(q.unsqueeze(2) + keys.unsqueeze(1))).squeeze(-1)


def build_attention(kind: str, query_size: int, memory_size: int) -> nn.Module | None:
    """The attention module for a config's attention type; None for "none" (no attention at all)."""
    if kind == "none":
        return None
    if kind == "bahdanau":
        return BahdanauAttention(query_size, memory_size)
    return LuongAttention(kind, query_size, memory_size)
