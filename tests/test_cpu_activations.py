import torch

from nmt_cli.cpu.layers import tanh


def test_tanh_without_autograd_is_within_two_ulps_of_one_of_torch_tanh():
    x = torch.linspace(-30, 30, 600_001)
    exact = torch.tanh(x.double())
    with torch.no_grad():
        fast = tanh(x)
    assert (fast.double() - exact).abs().max() < 2e-7
    assert fast.min() == -1 and fast.max() == 1  # saturates, never past +-1


def test_tanh_into_a_slice_leaves_the_rest_of_the_tensor():
    x, out = torch.randn(3, 8), torch.zeros(3, 8)
    tanh(x[:, 2:5], out=out[:, 2:5])
    assert torch.allclose(out[:, 2:5], torch.tanh(x[:, 2:5]), atol=2e-7)
    assert not out[:, :2].any() and not out[:, 5:].any()


def test_tanh_with_autograd_is_torch_tanh_and_its_gradient():
    x = torch.randn(100, requires_grad=True)
    y = tanh(x)
    assert torch.equal(y, torch.tanh(x))
    y.sum().backward()
    assert torch.allclose(x.grad, 1 - torch.tanh(x.detach()) ** 2)
