"""The output layer's loss and backward written out for CPU, a chunk of target positions at a time.

The output layer and loss dominate training memory (three N x V tensors for a batch's N tokens and V
pieces under autograd). Here the (N, V) logits are made `chunk` tokens at a time, with one buffer per
chunk and fewer passes over it, and the gradients are the same sums (tests/test_cpu.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from nmt_cli.cpu import gemm
from nmt_cli.data import Batch
from nmt_cli.model import Seq2Seq
from nmt_cli.vocab import PAD


def backward_in_chunks(model: Seq2Seq, batch: Batch, label_smoothing: float, chunk: int = 512) -> float:
    """Backward of loss.token_loss / n_tokens with the (N, V) logits made `chunk` tokens at a time; ->
    the summed loss. The chunk size trades speed against peak memory (docs/performance.md)."""
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
