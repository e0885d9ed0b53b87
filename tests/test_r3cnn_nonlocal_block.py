"""Tests of r3cnn.nonlocal_block against a per-position evaluation of Wang et al.'s Eq. 1-3."""
import torch
import torch.nn.functional as F

from r3cnn import NonLocalBlock2d


def test_identity_at_initialisation():
    torch.manual_seed(0)
    block = NonLocalBlock2d(6, kernel_size=3, reduction=2)
    x = torch.rand(2, 6, 5, 5)
    assert torch.equal(block(x), x)


def test_matches_per_position_formula():
    torch.manual_seed(0)
    block = NonLocalBlock2d(4, kernel_size=7, reduction=2)
    torch.nn.init.normal_(block.out.weight)
    x = torch.rand(1, 4, 3, 3)
    with torch.no_grad():
        got = block(x)
        th = F.conv2d(x, block.theta.weight, block.theta.bias, padding=3)[0].flatten(1)  # (2, 9)
        ph = F.conv2d(x, block.phi.weight, block.phi.bias, padding=3)[0].flatten(1)
        g = F.conv2d(x, block.g.weight, block.g.bias, padding=3)[0].flatten(1)
        y = torch.zeros_like(g)
        for i in range(9):
            e = torch.tensor([float(torch.dot(th[:, i], ph[:, j])) for j in range(9)]).exp()
            w = e / e.sum()  # C(x) = sum_j f(x_i, x_j), embedded Gaussian
            y[:, i] = (g * w[None]).sum(1)
        expected = x + F.conv2d(y.view(1, 2, 3, 3), block.out.weight, block.out.bias)
    assert torch.allclose(got, expected, atol=1e-5)


def test_parameter_count():
    block = NonLocalBlock2d(8, kernel_size=7, reduction=2)
    assert sum(p.numel() for p in block.parameters()) == 3 * (8 * 4 * 49 + 4) + (4 * 8 + 8)
