"""What training minimises and what validation measures: token cross-entropy and greedy dev BLEU."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nmt_cli.config import DecodeConfig
from nmt_cli.cpu import kernels
from nmt_cli.cpu.loss import backward_in_chunks
from nmt_cli.data import Batch, Example, collate
from nmt_cli.decode import decode_ids
from nmt_cli.metrics import corpus_scores
from nmt_cli.model import Seq2Seq
from nmt_cli.subword import Subword
from nmt_cli.vocab import PAD


class Validation(NamedTuple):
    loss: float  # per target token, no label smoothing
    ppl: float
    bleu: float | None  # None without references
    signature: str  # sacrebleu's BLEU signature


def token_loss(
    model: Seq2Seq,
    batch: Batch,
    label_smoothing: float = 0.0,
    chunk: int = 256,
    forward: nn.Module | None = None,
) -> torch.Tensor:
    """Summed cross-entropy over real target tokens; the output layer runs only where tgt is not PAD,
    `chunk` tokens at a time (a whole batch's logits and log-softmax are large). `forward` is a wrapper
    that calls the model (DistributedDataParallel under torchrun); the model itself by default."""
    hidden = (forward or model)(batch.src, batch.src_lengths, batch.tgt_in).hidden  # (B, T, H)
    real = batch.tgt_out != PAD
    states, targets = hidden[real], batch.tgt_out[real]  # (N, H), (N,)
    total = states.new_zeros(())
    for start in range(0, states.size(0), chunk):
        logits = model.generator(states[start : start + chunk])  # (chunk, V)
        total = total + F.cross_entropy(
            logits, targets[start : start + chunk], label_smoothing=label_smoothing, reduction="sum"
        )
    return total


def backward(model: Seq2Seq, batch: Batch, label_smoothing: float, normalization: str = "tokens") -> float:
    """Backward of token_loss / n_tokens, or with normalization "sents" / the batch's sentences (OpenNMT-py's
    default, whose gradient the clip then sees), the gradients an update uses; -> the summed loss.

    With the CPU swaps installed, the output layer's part is written out (cpu.loss.backward_in_chunks),
    with the same gradients (tested)."""
    if kernels(model) == "cpu":
        loss = backward_in_chunks(model, batch, label_smoothing)
    else:
        loss_t = token_loss(model, batch, label_smoothing)
        (loss_t / batch.n_tokens).backward()
        loss = loss_t.item()
    if normalization == "sents":  # the same backward, rescaled: one pass over the gradients
        scale = batch.n_tokens / batch.src.size(0)
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
    return loss


@torch.inference_mode()
def validate(model: Seq2Seq, dev: list[Example], subword: Subword, refs: list[str] | None) -> Validation:
    """Dev loss per token (no smoothing) and greedy BLEU against the dev references; keeps model's mode."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(dev), 64):
        batch = collate(dev[start : start + 64]).to(device)
        total += token_loss(model, batch).item()
        tokens += batch.n_tokens
    bleu, signature = None, ""
    if refs is not None:
        hyps = decode_ids(model, [ex.src for ex in dev], DecodeConfig(beam_size=1), batch_size=100)
        texts = [subword.decode(nbest[0].tokens) for nbest in hyps]
        result = corpus_scores(texts, [refs], metrics=("bleu",))[0]
        bleu, signature = result.score, result.signature
    model.train(was_training)
    loss = total / max(tokens, 1)
    return Validation(loss, math.exp(min(loss, 50.0)), bleu, signature)
