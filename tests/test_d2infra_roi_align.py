"""``d2infra.modeling.roi_align``: RoIAlign on every CPU thread against torchvision's own op and
autograd (the reference), bit for bit, from the op up to a whole model's training step.

The tests run under one torch thread (conftest.py); where the parallel path needs more, they set
two threads themselves and check that the parallel path was the one taken.
"""
import contextlib
import os

import pytest
import torch
from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage
from torchvision.ops import roi_align

import d2infra.modeling.roi_align as ours
from d2infra.modeling.roi_align import (
    ChannelParallelROIAlign,
    parallelize_roi_align,
    roi_align_backward_by_channels,
    roi_align_by_channels,
)


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def calls(monkeypatch):
    """How often the module's forward and backward took the channel-parallel path."""
    counts = {"forward": 0, "backward": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(ours, "roi_align_by_channels",
                        counted("forward", ours.roi_align_by_channels))
    monkeypatch.setattr(ours, "roi_align_backward_by_channels",
                        counted("backward", ours.roi_align_backward_by_channels))
    return counts


def _rois(n: int, images: int, size: float, generator: torch.Generator) -> torch.Tensor:
    """Boxes of every kind RoIAlign meets: inside, across the border, outside the image, tiny and
    zero-width ones, in shuffled image order."""
    xy = torch.rand(n, 2, generator=generator) * size * 1.2 - 0.1 * size
    wh = torch.rand(n, 2, generator=generator) * size * 0.6
    wh[: n // 8] = 0.0  # degenerate boxes
    wh[n // 8: n // 4] *= 0.01  # tiny boxes
    batch = torch.randint(0, images, (n, 1), generator=generator).float()
    return torch.cat([batch, xy, xy + wh], dim=1)


def _torchvision_grad(x, rois, output_size, scale, sampling_ratio, aligned, grad):
    x = x.detach().clone().requires_grad_()
    roi_align(x, rois, output_size, scale, sampling_ratio, aligned).backward(grad)
    return x.grad


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("chunks", [2, 3, 7, 16])
def test_op_is_torchvisions_bitwise(aligned, sampling_ratio, chunks):
    g = torch.Generator().manual_seed(chunks * 10 + sampling_ratio + aligned)
    x = torch.randn(3, 7, 19, 23, generator=g)  # 7 channels: uneven chunks, and more chunks than 7
    rois = _rois(40, 3, 80.0, g)
    args = (0.25, (5, 4))
    out = roi_align_by_channels(x, rois, *args, sampling_ratio, aligned, chunks=chunks)
    assert torch.equal(out, roi_align(x, rois, (5, 4), 0.25, sampling_ratio, aligned))
    # a non-contiguous output gradient, as autograd may hand over
    grad = torch.randn(40, 4, 5, 7, generator=g).transpose(1, 3)
    expected = _torchvision_grad(x, rois, (5, 4), 0.25, sampling_ratio, aligned, grad)
    got = roi_align_backward_by_channels(grad, rois, *args, x.shape, sampling_ratio, aligned,
                                         chunks=chunks)
    assert expected.abs().sum() > 0
    assert torch.equal(got, expected)


def test_no_rois():
    x = torch.randn(2, 4, 8, 8)
    out = roi_align_by_channels(x, torch.zeros(0, 5), 0.5, (7, 7), 0, True, chunks=2)
    assert out.shape == (0, 4, 7, 7)
    got = roi_align_backward_by_channels(torch.zeros(0, 4, 7, 7), torch.zeros(0, 5), 0.5, (7, 7),
                                         x.shape, 0, True, chunks=2)
    assert got.shape == x.shape and not got.any()


@pytest.mark.parametrize("dtype,sampling_ratio,aligned",
                         [(torch.float32, 0, True), (torch.float32, 2, False),
                          (torch.float64, 3, True)])
def test_module_takes_the_parallel_path_and_matches_torchvision(dtype, sampling_ratio, aligned,
                                                                calls):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 16, 16, generator=g, dtype=dtype).requires_grad_()
    rois = _rois(24, 2, 64.0, g)
    pooler = ChannelParallelROIAlign((5, 3), 0.25, sampling_ratio, aligned)
    args = ((5, 3), 0.25, sampling_ratio, aligned)
    with threads(2):
        out = pooler(x, rois)
        grad = torch.randn(out.shape, generator=g, dtype=dtype)
        out.backward(grad)
        with torch.no_grad():
            assert torch.equal(pooler(x, rois), out.detach())
    assert calls == {"forward": 2, "backward": 1}
    assert torch.equal(out.detach(), roi_align(x.detach(), rois.to(dtype), *args))
    assert torch.equal(x.grad, _torchvision_grad(x, rois.to(dtype), *args, grad))


def test_module_is_detectron2s_roialign_elsewhere(calls):
    """One thread, CPU autocast, scripting: Detectron2's ``ROIAlign`` itself."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 3, 12, 12, generator=g).requires_grad_()
    rois = _rois(6, 1, 48.0, g)
    mine, theirs = ChannelParallelROIAlign((4, 4), 0.25, 2, True), ROIAlign((4, 4), 0.25, 2, True)
    with threads(1):
        assert torch.equal(mine(x, rois), theirs(x, rois))
    with threads(2), torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = mine(x, rois), theirs(x, rois)
    assert out.dtype == ref.dtype and torch.equal(out, ref)
    assert calls == {"forward": 0, "backward": 0}
    scripted = torch.jit.script(mine)
    with threads(2):
        assert torch.equal(scripted(x, rois), theirs(x, rois))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_runs_it():
    """The parent's pool threads do not exist in a forked child; the child makes its own."""
    x, rois = torch.randn(1, 4, 8, 8), torch.tensor([[0.0, 1.0, 1.0, 20.0, 20.0]])
    expected = roi_align(x, rois, (2, 2), 0.5, 0, True)
    assert torch.equal(roi_align_by_channels(x, rois, 0.5, (2, 2), 0, True, chunks=2), expected)
    pid = os.fork()
    if pid == 0:  # child: exit 0 only if the op ran and matched
        import signal
        signal.alarm(20)
        ok = torch.equal(roi_align_by_channels(x, rois, 0.5, (2, 2), 0, True, chunks=2), expected)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign"])  # aligned True, False
def test_parallelize_replaces_every_roialign_of_a_pooler(pooler_type, calls):
    pooler = ROIPooler((7, 7), scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32), sampling_ratio=0,
                       pooler_type=pooler_type)
    reference = ROIPooler((7, 7), scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32), sampling_ratio=0,
                          pooler_type=pooler_type)
    keys = list(pooler.state_dict())
    assert parallelize_roi_align(pooler) == 4
    assert all(type(m) is ChannelParallelROIAlign for m in pooler.level_poolers)
    assert list(pooler.state_dict()) == keys
    assert [(m.output_size, m.spatial_scale, m.sampling_ratio, m.aligned)
            for m in pooler.level_poolers] == [(m.output_size, m.spatial_scale, m.sampling_ratio,
                                               m.aligned) for m in reference.level_poolers]

    g = torch.Generator().manual_seed(5)
    feats = [torch.randn(2, 5, 64 // s, 64 // s, generator=g) for s in (1, 2, 4, 8)]
    boxes = [Boxes(_rois(30, 1, 256.0, g)[:, 1:]) for _ in range(2)]
    results = []
    for p in (reference, pooler):
        xs = [f.clone().requires_grad_() for f in feats]
        with threads(2):
            out = p(xs, boxes)
            out.backward(torch.ones_like(out))
        results.append([out.detach()] + [x.grad for x in xs])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert calls["backward"] >= 2  # the levels with boxes
    assert parallelize_roi_align(pooler) == 0  # nothing left to replace


def test_train_net_model_step_equals_torchvisions(repo_root, datasets_dir, calls):
    """train_net.py's CPU model of the embedded R^3-CNN (box loops and mask head): one training
    step's losses and gradients equal those of the same weights with Detectron2's ``ROIAlign``."""
    from cli_runs import detectron2_log
    from train_net import Trainer, build_cfg

    from d2infra.data import ensure_generated, register_coco_format_datasets

    cfg = build_cfg(f"{repo_root}/configs/r3cnn/r3cnn_naive_smallR_FPN_shapes.yaml",
                    ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "('shapes_mini_train',)",
                     "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2"])
    with detectron2_log(datasets_dir) as log, threads(2):
        register_coco_format_datasets(cfg)
        ensure_generated("shapes_mini_train")
        model = Trainer.build_model(cfg)
        batch = next(iter(Trainer.build_train_loader(cfg)))
    poolers = [m for m in model.modules() if isinstance(m, ROIAlign)]
    # 4 FPN levels in the box pooler and 4 in the mask pooler
    assert len(poolers) == 8 and all(type(m) is ChannelParallelROIAlign for m in poolers)
    assert "RoIAlign on 2 threads (8 RoIAlign modules" in log.getvalue()
    model.train()

    def step():
        model.zero_grad()
        torch.manual_seed(0)  # the RoI heads sample at random
        with threads(2), EventStorage(0):
            losses = model(batch)
            sum(losses.values()).backward()
        return ({k: v.detach() for k, v in losses.items()},
                {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    losses, grads = step()
    assert calls["backward"] >= 4  # 3 box loops and the mask head, on the levels with RoIs
    for m in poolers:
        m.__class__ = ROIAlign
    ref_losses, ref_grads = step()
    assert losses.keys() == ref_losses.keys()
    assert all(torch.equal(losses[k], ref_losses[k]) for k in losses)
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    different = [n for n in grads if not torch.equal(grads[n], ref_grads[n])]
    assert not different, different
