"""What training minimises and what validation measures: token cross-entropy and greedy dev BLEU."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt_cli import gemm
from nmt_cli.config import DecodeConfig
from nmt_cli.data import Batch, Example, collate
from nmt_cli.decode import decode_ids
from nmt_cli.metrics import corpus_scores
from nmt_cli.model import PAD, Seq2Seq
from nmt_cli.subword import Subword


class Validation(NamedTuple):
    loss: float  # per target token, no label smoothing
    ppl: float
    bleu: float | None  # None without references
    signature: str  # sacrebleu's BLEU signature


def token_loss(model: Seq2Seq, batch: Batch, label_smoothing: float = 0.0, chunk: int = 256) -> torch.Tensor:
    """Summed cross-entropy over real target tokens; the output layer runs only where tgt is not PAD,
    `chunk` tokens at a time: the logits and their log-softmax of a 64-sentence batch, whole, are 60 MB."""
    hidden = model.teacher_force(batch.src, batch.src_lengths, batch.tgt_in).hidden  # (B, T, H)
    real = batch.tgt_out != PAD
    states, targets = hidden[real], batch.tgt_out[real]  # (N, H), (N,)
    total = states.new_zeros(())
    for start in range(0, states.size(0), chunk):
        logits = model.generator(states[start : start + chunk])  # (chunk, V)
        total = total + F.cross_entropy(
            logits, targets[start : start + chunk], label_smoothing=label_smoothing, reduction="sum"
        )
    return total


def backward_in_chunks(model: Seq2Seq, batch: Batch, label_smoothing: float, chunk: int = 512) -> float:
    """Backward of token_loss / n_tokens with the (N, V) logits made `chunk` tokens at a time.

    The output layer and loss dominate memory (three N x V tensors for ~3,000 tokens and 8,000 pieces:
    ~260 MB); in chunks of 512 they stay near 50 MB, and the gradients are the same sums (tested). 512 was
    as fast as 1,024 and 70 MB lighter at peak on base-rnn; 256 saved 50 MB more but was 3 % slower.
    The output layer's backward is written out (_output_layer_step): one (chunk, V) buffer per chunk
    instead of autograd's four, and fewer passes over it.
    """
    hidden = model.teacher_force(batch.src, batch.src_lengths, batch.tgt_in).hidden
    real = batch.tgt_out != PAD
    states, targets = hidden[real], batch.tgt_out[real]  # (N, H), (N,)
    grad_states = torch.empty_like(states)
    total = 0.0
    weight_grad_t = None  # the output layer's weight gradient, transposed: (H, V), summed over chunks
    with torch.no_grad():
        for start in range(0, states.size(0), chunk):
            end = start + chunk
            loss, chunk_grad_t = _output_layer_step(
                model.generator,
                states[start:end],
                targets[start:end],
                label_smoothing,
                1.0 / batch.n_tokens,
                grad_states[start:end],
            )
            total += loss
            weight_grad_t = chunk_grad_t if weight_grad_t is None else weight_grad_t.add_(chunk_grad_t)
        if weight_grad_t is not None:
            grad_t = weight_grad_t
            _accumulate(model.generator.weight, grad_t.t().contiguous, lambda g: g.add_(grad_t.t()))
    states.backward(grad_states)
    return total


def _output_layer_step(
    generator: nn.Linear, h: Tensor, targets: Tensor, smoothing: float, scale: float, grad_h: Tensor
) -> tuple[float, Tensor]:
    """Summed smoothed cross-entropy of h (N, H) against targets (N,), as F.cross_entropy defines it,
    and scale * its gradient for the generator's weight, transposed (H, V).

    Adds scale * its gradient to the generator's bias .grad, and writes the gradient for h into grad_h.
    With q = (1 - eps) onehot(t) + eps / V and p = softmax(z), the loss of a row is -sum_v q_v log p_v
    and its gradient for the logits z is p - q. The weight gradient comes transposed, h.T @ grad_z: that
    way round the product's left operand is the small h.T, not the (V, N) transpose of grad_z.
    """
    z = gemm.linear(h, generator.weight, generator.bias)  # (N, V), the one big buffer
    V = z.size(1)
    z.sub_(z.amax(dim=1, keepdim=True))  # log p = z - log sum exp z, now with max 0
    target_z = z.gather(1, targets.unsqueeze(1)).squeeze(1)
    mean_z = z.mean(dim=1) if smoothing else None
    norm = z.exp_().sum(dim=1, keepdim=True)  # z is exp(z) from here on
    log_norm = norm.log().squeeze(1)
    loss = -(1.0 - smoothing) * (target_z - log_norm)
    if mean_z is not None:
        loss -= smoothing * (mean_z - log_norm)
    grad_z = z.mul_(scale / norm)  # scale * p
    if smoothing:
        grad_z.sub_(scale * smoothing / V)
    grad_z.scatter_add_(1, targets.unsqueeze(1), z.new_full((len(targets), 1), -scale * (1.0 - smoothing)))
    grad_h.copy_(gemm.mm(grad_z, generator.weight))
    _accumulate(generator.bias, lambda: grad_z.sum(0), lambda g: g.add_(grad_z.sum(0)))
    return float(loss.sum()), gemm.mm(h.t(), grad_z)


def _accumulate(p: Tensor, new: Callable[[], Tensor], add: Callable[[Tensor], Tensor]) -> None:
    """p.grad = new(), or add(p.grad) in place when p already has one (as autograd accumulates)."""
    if p.grad is None:
        p.grad = new()
    else:
        add(p.grad)


@torch.inference_mode()
def validate(model: Seq2Seq, dev: list[Example], subword: Subword, refs: list[str] | None) -> Validation:
    """Dev loss per token (no smoothing) and greedy BLEU against the dev references; keeps model's mode."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(dev), 64):
        batch = collate(dev[start : start + 64])
        total += token_loss(model, batch).item()
        tokens += batch.n_tokens
    bleu, signature = None, ""
    if refs is not None:
        hyps = decode_ids(model, [ex.src for ex in dev], DecodeConfig(beam_size=1), batch_size=100)
        texts = [subword.decode(nbest[0].tokens) for nbest in hyps]
        result = corpus_scores(texts, [refs], metrics=("bleu",))[0]
        bleu, signature = result.score, result.signature
    model.train(was_training)
    if was_training:
        model.drop_packed_weights()  # the next update makes them stale; until then they hold 25 MB
    loss = total / max(tokens, 1)
    return Validation(loss, math.exp(min(loss, 50.0)), bleu, signature)
