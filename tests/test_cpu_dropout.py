"""Dropout keeps each element with probability 1 - p, scales kept ones by 1 / (1 - p), and is the
identity in eval mode."""

import pytest
import torch

from nmt_cli.cpu.layers import Dropout


def test_kept_share_and_scale_match_p():
    torch.manual_seed(0)
    drop = Dropout(0.3).train()
    x = torch.ones(400, 500, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # 200,000 draws: sd 0.001
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient is the same mask and scale


def test_eval_mode_and_zero_p_are_the_identity():
    x = torch.randn(3, 4)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x


def test_seeded_masks_repeat():
    x = torch.ones(50, 50)
    drop = Dropout(0.5).train()
    torch.manual_seed(3)
    first = drop(x)
    torch.manual_seed(3)
    assert torch.equal(drop(x), first)


@pytest.mark.parametrize("p", [-0.1, 1.1])
def test_out_of_range_p_is_refused(p):
    with pytest.raises(ValueError, match="dropout"):
        Dropout(p)


def test_the_mask_kept_for_backward_is_one_byte_per_element():
    # a float mask would be four; the values are those of x * float_mask all the same
    torch.manual_seed(0)
    x = torch.randn(20, 30, requires_grad=True)
    y = Dropout(0.4).train()(x)
    saved = list(y.grad_fn.saved_tensors)
    assert [(t.dtype, t.shape) for t in saved] == [(torch.bool, x.shape)]
    assert torch.equal(y, x * (saved[0].float() * (1 / 0.6)))  # bit for bit the float-mask product
