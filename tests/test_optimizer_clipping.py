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


def test_amp_grad_scaler_clips_the_unscaled_gradients():
    """Detectron2's AMPTrainer steps with ``grad_scaler.scale(losses).backward();
    grad_scaler.step(optimizer)``. GradScaler.step unscales the gradients before it calls
    ``optimizer.step``, inside which the clipping runs: the clipped step is the one without a
    scaler. Clipping the scaled gradients (2^10 x (3, 4), norm 5120, to norm 1) and unscaling after
    would move the weights by (0.6, 0.8) / 2^10 instead."""
    try:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    except (AttributeError, RuntimeError, TypeError) as e:  # torch without a CPU GradScaler
        pytest.skip(f"no torch.amp.GradScaler('cpu') in torch {torch.__version__}: {e}")
    model = TwoParams()
    opt = build_optimizer(_cfg(value=1.0), model)
    loss = 3.0 * model.a.sum() + 4.0 * model.b.sum()  # gradients (3, 4): norm 5
    with EventStorage(0) as storage:
        scaler.scale(loss).backward()
        assert model.a.grad.item() == 3.0 * 2 ** 10  # scaled by the backward
        scaler.step(opt)
        scaler.update()
    assert storage.history("grad_norm").latest() == pytest.approx(5.0)  # the unscaled norm
    assert storage.history("grad_clipped_steps").latest() == 1
    plain_a, plain_b, _ = _step(_cfg(value=1.0), 3.0, 4.0)
    assert (-model.a.item(), -model.b.item()) == pytest.approx((plain_a, plain_b), rel=1e-6)
    assert (plain_a, plain_b) == pytest.approx((0.6, 0.8), rel=1e-5)
