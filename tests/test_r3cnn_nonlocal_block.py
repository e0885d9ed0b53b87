"""Tests of r3cnn.nonlocal_block against a per-position evaluation of Wang et al.'s Eq. 1-3 with the
1/sqrt(C') scaling, and against the layer sizes of the authors' 7x7 block."""
import math

import torch
import torch.nn.functional as F

from r3cnn import NonLocalBlock2d


def test_identity_at_initialisation():
    torch.manual_seed(0)
    block = NonLocalBlock2d(6, kernel_size=3, reduction=2)
    x = torch.rand(2, 6, 5, 5)
    assert torch.equal(block(x), x)


def test_initialisation_is_normal_0_01_and_zero_output():
    torch.manual_seed(0)
    block = NonLocalBlock2d(64, kernel_size=7, reduction=2)
    for conv in (block.theta, block.phi, block.g):
        assert abs(float(conv.weight.std()) - 0.01) < 0.001  # 64*32*49 samples of N(0, 0.01)
        assert abs(float(conv.weight.mean())) < 0.001
        assert torch.count_nonzero(conv.bias) == 0
    assert torch.count_nonzero(block.out.weight) == 0 and torch.count_nonzero(block.out.bias) == 0


def test_matches_per_position_formula():
    torch.manual_seed(0)
    block = NonLocalBlock2d(4, kernel_size=7, reduction=2)
    for conv in (block.theta, block.phi, block.g, block.out):
        torch.nn.init.normal_(conv.weight)
    x = torch.rand(1, 4, 3, 3)
    with torch.no_grad():
        got = block(x)
        th = F.conv2d(x, block.theta.weight, block.theta.bias, padding=3)[0].flatten(1)  # (2, 9)
        ph = F.conv2d(x, block.phi.weight, block.phi.bias, padding=3)[0].flatten(1)
        g = F.conv2d(x, block.g.weight, block.g.bias, padding=3)[0].flatten(1)
        y = torch.zeros_like(g)
        for i in range(9):
            # embedded Gaussian scaled by 1/sqrt(C'), C' = 2
            e = torch.tensor([float(torch.dot(th[:, i], ph[:, j])) / math.sqrt(2)
                              for j in range(9)]).exp()
            w = e / e.sum()
            y[:, i] = (g * w[None]).sum(1)
        # the output conv W is 7x7 as well
        expected = x + F.conv2d(y.view(1, 2, 3, 3), block.out.weight, block.out.bias, padding=3)
    assert torch.allclose(got, expected, atol=1e-5)


def test_parameter_count_of_a_7x7_block():
    block = NonLocalBlock2d(8, kernel_size=7, reduction=2)
    assert block.out.weight.shape == (8, 4, 7, 7)
    assert sum(p.numel() for p in block.parameters()) == 3 * (8 * 4 * 49 + 4) + (4 * 8 * 49 + 8)
