"""SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model": the norm of all gradients together is clipped."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage

from d2infra.engine import build_optimizer


def _cfg(enabled=True, clip_type="full_model", value=1.0):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = enabled
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = value
    return cfg


class TwoParams(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(1))
        self.b = torch.nn.Parameter(torch.zeros(1))


def _step(cfg, grad_a, grad_b):
    """One SGD step (lr 1, no momentum or decay) from 0 with the given gradients: -update."""
    model = TwoParams()
    opt = build_optimizer(cfg, model)
    model.a.grad = torch.tensor([grad_a])
    model.b.grad = torch.tensor([grad_b])
    with EventStorage(0) as storage:
        opt.step()
    return -model.a.item(), -model.b.item(), storage


def test_the_whole_norm_is_clipped_not_each_parameter():
    # gradients (3, 4): norm 5; clipped to 1 -> (0.6, 0.8). Per-parameter "norm" clipping at 1
    # would give (1, 1), Detectron2's "value" clipping (1, 1) as well.
    a, b, storage = _step(_cfg(value=1.0), 3.0, 4.0)
    assert a == pytest.approx(0.6, rel=1e-5) and b == pytest.approx(0.8, rel=1e-5)
    assert storage.history("grad_norm").latest() == pytest.approx(5.0)
    assert storage.history("grad_clipped_steps").latest() == 1
    a, b, _ = _step(_cfg(clip_type="norm", value=1.0), 3.0, 4.0)
    assert (a, b) == pytest.approx((1.0, 1.0))


def test_a_norm_below_the_limit_is_left_alone():
    a, b, storage = _step(_cfg(value=35.0), 3.0, 4.0)
    assert (a, b) == pytest.approx((3.0, 4.0))
    assert storage.history("grad_clipped_steps").latest() == 0


def test_disabled_is_detectron2s_optimizer():
    a, b, _ = _step(_cfg(enabled=False), 3.0, 4.0)
    assert (a, b) == pytest.approx((3.0, 4.0))
    assert type(build_optimizer(_cfg(enabled=False), TwoParams())) is torch.optim.SGD


def test_a_non_positive_limit_is_an_error():
    with pytest.raises(ValueError, match="CLIP_VALUE"):
        build_optimizer(_cfg(value=0.0), TwoParams())
