"""OffsetBinCoder against hand-computed bins, expectations and gradients (paper Eqs. 5-11)."""
import math

import pytest
import torch
from fvcore.nn import smooth_l1_loss

from offset_bin import OffsetBinCoder

BIG = 1e4  # a logit that puts (numerically) all the softmax mass on one bin


def one_hot_logits(labels: torch.Tensor, num_bins: int) -> torch.Tensor:
    """(..., K) labels -> (..., K, n) logits with all the mass on the labelled bins."""
    return torch.nn.functional.one_hot(labels, num_bins).float() * BIG


def test_bins_by_hand():
    # a = 3, n = 5: m = 3 inner bins of width 2 on (-3, 3), centres -2, 0, 2; outer reps -3, 3.
    coder = OffsetBinCoder(offset_range=3.0, num_bins=5, num_stages=2)
    assert torch.allclose(coder.representatives(0), torch.tensor([-3.0, -2.0, 0.0, 2.0, 3.0]))
    # Stage 2: a_2 = w_1 / 2 = 1, w_2 = 2/3: centres -2/3, 0, 2/3; outer reps -1, 1.
    assert coder.ranges == (3.0, 1.0)
    assert torch.allclose(
        coder.representatives(1), torch.tensor([-1.0, -2 / 3, 0.0, 2 / 3, 1.0])
    )
    # Fig. 4 of the paper: (-5, 5) into five bins, outer bins represented by -5 and 5.
    fig4 = OffsetBinCoder(offset_range=5.0, num_bins=7, num_stages=1)
    assert torch.allclose(
        fig4.representatives(0), torch.tensor([-5.0, -4.0, -2.0, 0.0, 2.0, 4.0, 5.0])
    )


def test_paper_defaults_widths():
    coder = OffsetBinCoder(3.0, 20, 2)
    # w_1 = 2a / m = 6 / 18; a_2 = w_1 / 2; w_2 = 2 a_2 / 18.
    assert coder.widths[0] == pytest.approx(1 / 3)
    assert coder.ranges[1] == pytest.approx(1 / 6)
    assert coder.widths[1] == pytest.approx(1 / 54)
    assert coder.representatives(0).shape == (20,)


def test_assign_by_hand():
    coder = OffsetBinCoder(3.0, 5, 1)  # bins (-inf,-3], [-3,-1), [-1,1), [1,3), [3,inf)
    offsets = torch.tensor([-100.0, -3.0, -2.9, -1.0, 0.99, 1.0, 2.99, 3.0, 50.0])
    expected = torch.tensor([0, 0, 1, 2, 2, 3, 3, 4, 4])
    assert torch.equal(coder.assign(offsets, 0), expected)
    assert torch.equal(coder.encode(offsets)[..., 0], expected)


def test_encode_residual_by_hand():
    coder = OffsetBinCoder(3.0, 5, 2)
    # 1.5 is in [1, 3) (rep 2): residual -0.5 in stage 2's bins (-inf,-1], [-1,-1/3), [-1/3,1/3),
    # [1/3,1), [1,inf) -> label 1. 4.2: outer bin (rep 3), residual 1.2 -> stage-2 outer bin 4.
    labels = coder.encode(torch.tensor([1.5, 4.2]))
    assert labels.tolist() == [[3, 1], [4, 4]]


@pytest.mark.parametrize("num_stages", [1, 2, 3])
@pytest.mark.parametrize("expectation", [True, False])
def test_one_hot_at_true_bin_recovers_offset(num_stages, expectation):
    coder = OffsetBinCoder(3.0, 20, num_stages)
    g = torch.Generator().manual_seed(0)
    offsets = (torch.rand(500, 4, generator=g) * 2 - 1) * 2.999  # inside (-a, a)
    labels = coder.encode(offsets)
    decoded = coder.decode(one_hot_logits(labels, coder.num_bins), expectation=expectation)
    # Within half the finest bin width (K = 1: w_1 / 2 = 1/6; K = 2: w_2 / 2 = 1/108).
    half_width = coder.widths[-1] / 2
    assert (decoded - offsets).abs().max() <= half_width + 1e-5
    if num_stages > 1:
        # ... which is finer than one stage alone could do.
        assert (decoded - offsets).abs().max() < coder.widths[0] / 2 / 5


def test_outer_bins_clip():
    offsets = torch.tensor([3.5, -3.5, 100.0, -100.0])
    one = OffsetBinCoder(3.0, 20, 1)
    decoded = one.decode(one_hot_logits(one.encode(offsets), 20))
    assert torch.allclose(decoded, torch.tensor([3.0, -3.0, 3.0, -3.0]))
    # With focusing, the finer stage's outer bins extend the clipping point to a_1 + a_2.
    two = OffsetBinCoder(3.0, 20, 2)
    decoded = two.decode(one_hot_logits(two.encode(offsets), 20))
    assert torch.allclose(decoded, torch.tensor([1.0, -1.0, 1.0, -1.0]) * (3.0 + 1 / 6))


def test_expectation_of_hand_made_distribution():
    coder = OffsetBinCoder(3.0, 5, 2)  # stage reps [-3, -2, 0, 2, 3] and [-1, -2/3, 0, 2/3, 1]
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0], [0.0, 0.0, 0.5, 0.5, 0.0]])
    # Eq. 10 per stage: 0.1*-3 + 0.2*-2 + 0.4*2 = 0.1 and 0.5*2/3 = 1/3; Eq. 11 sums them.
    expected = 0.1 + 1 / 3
    assert coder.decode_probs(probs).item() == pytest.approx(expected, abs=1e-6)
    assert coder.decode(probs.log()).item() == pytest.approx(expected, abs=1e-6)
    # Argmax: bins 3 (rep 2) and 2 or 3 (tie broken to the first: rep 0).
    assert coder.decode_probs(probs, expectation=False).item() == pytest.approx(2.0)
    # Uniform scores decode to 0: the representatives are symmetric.
    assert coder.decode(torch.zeros(2, 5)).item() == pytest.approx(0.0, abs=1e-6)


def test_bin_loss_gradient_bounded_unlike_l2():
    """Eq. 8: dL_bin/ds = p - y, each component in [-1, 1] whatever the offset error; smooth L1's
    gradient is clipped to 1 as well but is the same for every large error, L2's grows with it."""
    coder = OffsetBinCoder(3.0, 20, 1)
    target = torch.tensor([[100.0]])  # a huge offset: the outer bin [3, inf)
    labels = coder.encode(target)  # (1, 1)
    assert labels.item() == 19
    # Confidently wrong: all the mass on the opposite outer bin (decoded offset -3: error 103).
    logits = torch.zeros(1, 1, 20)
    logits[0, 0, 0] = 50.0
    logits.requires_grad_(True)
    coder.loss(logits, labels).sum().backward()
    grad = logits.grad[0, 0]
    p = torch.softmax(logits.detach()[0, 0], -1)
    y = torch.nn.functional.one_hot(torch.tensor(19), 20).float()
    assert torch.allclose(grad, p - y, atol=1e-6)  # Eq. 8
    assert grad.abs().max() <= 1.0
    assert grad.abs().sum() <= 2.0
    assert grad[19].item() == pytest.approx(-1.0, abs=1e-6)  # the full (bounded) penalty

    # A less wrong prediction gets a smaller gradient: penalties adapt to the predicted p.
    logits2 = torch.zeros(1, 1, 20, requires_grad=True)
    coder.loss(logits2, labels).sum().backward()
    assert logits2.grad[0, 0, 19].item() == pytest.approx(1 / 20 - 1)

    # Regression on the offset: smooth L1 (beta = 1) and L2, errors 2 and 103.
    for err in (2.0, 103.0):
        pred = torch.tensor([0.0], requires_grad=True)
        smooth_l1_loss(pred, torch.tensor([err]), beta=1.0, reduction="sum").backward()
        assert pred.grad.item() == pytest.approx(-1.0)  # Eq. 4: sgn, same for every large error
        pred_l2 = torch.tensor([0.0], requires_grad=True)
        (0.5 * (pred_l2 - err) ** 2).sum().backward()
        assert pred_l2.grad.item() == pytest.approx(-err)  # grows with the error
    assert abs(pred_l2.grad.item()) > 100 * grad.abs().max()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(offset_range=0.0),
        dict(offset_range=-1.0),
        dict(offset_range=math.inf),
        dict(num_bins=2),
        dict(num_bins=20.0),
        dict(num_stages=0),
        dict(num_stages=True),
    ],
)
def test_impossible_values_raise(kwargs):
    with pytest.raises(ValueError, match="MODEL.OFFSET_BIN"):
        OffsetBinCoder(**kwargs)


def test_logits_shape_checked():
    coder = OffsetBinCoder(3.0, 20, 2)
    with pytest.raises(ValueError, match="K=2, n=20"):
        coder.decode(torch.zeros(4, 1, 20))
