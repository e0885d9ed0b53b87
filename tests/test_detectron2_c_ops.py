"""Tests of ``d2infra/ops/detectron2_c.py``, the PyTorch replacement of ``detectron2._C``.

The tests run OUR module, imported by its path in our package (``d2infra.ops.detectron2_c``), so
they also run where Detectron2 was built from source with its compiled ``_C`` (scripts/test.sh's
Detectron2-main leg). Under the default v0.6 install, the installed ``detectron2._C`` must be
byte-identical to the repository file. Each op is checked against an independent reference:
torchvision's ops, ordinary convolution, hand-computed geometry, Detectron2's axis-aligned IoU,
and, where it is installed, Detectron2's compiled op. The deformable convolutions and the batched
rotated NMS run through Detectron2's own Python callers, pointed at our module.

Detectron2's deformable-conv layers only call ``_C`` for CUDA tensors (on CPU they raise or
bypass it). To drive that code path on a CPU-only machine, the inputs are wrapped in
``_CudaPath``, a tensor subclass whose ``is_cuda`` is True while its data stays on the CPU; on a
machine with CUDA the same tests also run on real CUDA tensors.
"""
import importlib
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d, nms, roi_align

import detectron2._C as installed_C
from d2infra.ops import detectron2_c as ours
from detectron2.layers import DeformConv, ModulatedDeformConv, batched_nms_rotated
from detectron2.structures import Boxes, pairwise_iou

REPO_OPS = Path(__file__).resolve().parents[1] / "projects/d2infra/ops/detectron2_c.py"
COMPILED = not installed_C.__file__.endswith(".py")  # Detectron2 built from source
needs_compiled = pytest.mark.skipif(
    not COMPILED, reason="compares with Detectron2's compiled _C, which this install lacks"
)


@pytest.fixture(autouse=True)
def _detectron2_calls_ours(monkeypatch):
    """Detectron2's Python callers of ``_C`` (deformable convolution, batched rotated NMS) call
    our module, whichever ``detectron2._C`` is installed."""
    # (detectron2.layers.nms is also the name of a function: import the modules by name.)
    monkeypatch.setattr(importlib.import_module("detectron2.layers.deform_conv"), "_C", ours)
    monkeypatch.setattr(importlib.import_module("detectron2.layers.nms"), "nms_rotated",
                        ours.nms_rotated)


class _CudaPath(torch.Tensor):
    """CPU tensor that reports ``is_cuda``, so Detectron2's layers take their ``_C`` path."""

    @property
    def is_cuda(self) -> bool:
        return True


DEVICES = ["cpu-cuda-path"] + (["cuda"] if torch.cuda.is_available() else [])


def _to(t: torch.Tensor, device: str) -> torch.Tensor:
    return t.cuda() if device == "cuda" else t.as_subclass(_CudaPath)


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(torch.Tensor).detach().cpu()


# --------------------------------------------------------------------------------------------
# Installed copy, build info, fast COCOeval
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(COMPILED, reason="Detectron2's compiled _C is installed (built from source)")
def test_installed_C_is_this_file():
    assert installed_C.__file__.endswith("_C.py"), installed_C.__file__
    assert Path(installed_C.__file__).read_bytes() == REPO_OPS.read_bytes(), (
        "the installed detectron2._C is stale: run `bash scripts/setup.sh`"
    )


def test_build_info_is_honest():
    assert "no compiled extension" in ours.get_compiler_version()
    assert "no compiled extension" in ours.get_cuda_version()
    assert ours.has_cuda() is False


@pytest.mark.parametrize(
    "name", ["InstanceAnnotation", "COCOevalEvaluateImages", "COCOevalAccumulate"]
)
def test_fast_coco_eval_raises_naming_the_feature(name):
    with pytest.raises(RuntimeError, match=r"fast COCO evaluation.*use_fast_impl=False"):
        getattr(ours, name)(0, 1.0, 2.0, False, False)


def test_ops_registration_survives_another_import():
    # A third copy of the module (under another name) must not re-register the ops.
    spec = importlib.util.spec_from_file_location("_d2c_third_copy", REPO_OPS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod._OPS_LIBRARY is None
    boxes = torch.tensor([[0.0, 0, 2, 2, 0], [0.1, 0, 2, 2, 0]])
    keep = torch.ops.detectron2.nms_rotated(boxes, torch.tensor([0.5, 0.9]), 0.5)
    assert keep.tolist() == [1]


# --------------------------------------------------------------------------------------------
# Deformable convolution
# --------------------------------------------------------------------------------------------
def _deform_case(seed: int, modulated: bool):
    """Random inputs with groups = deformable_groups = 2 and a 3x2 kernel. DeformConv takes
    (h, w) pairs, so its stride/padding/dilation differ between h and w; ModulatedDeformConv's
    caller passes one int for both."""
    g = torch.Generator().manual_seed(seed)
    n, c_in, c_out, (kh, kw), h, w = 2, 4, 6, (3, 2), 9, 8
    groups, dgroups = 2, 2
    if modulated:
        stride, pad, dil = 2, 1, 2
        (sh, sw), (ph, pw), (dh, dw) = (stride, stride), (pad, pad), (dil, dil)
    else:
        (sh, sw), (ph, pw), (dh, dw) = (2, 1), (2, 1), (1, 2)
        stride, pad, dil = (sh, sw), (ph, pw), (dh, dw)
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    x = torch.randn(n, c_in, h, w, generator=g)
    offset = 2.0 * torch.randn(n, 2 * kh * kw * dgroups, h_out, w_out, generator=g)
    mask = torch.rand(n, kh * kw * dgroups, h_out, w_out, generator=g) if modulated else None
    weight = torch.randn(c_out, c_in // groups, kh, kw, generator=g)
    bias = torch.randn(c_out, generator=g) if modulated else None
    grad_out = torch.randn(n, c_out, h_out, w_out, generator=g)
    cfg = dict(groups=groups, deformable_groups=dgroups, stride=stride, padding=pad, dilation=dil)
    return x, offset, mask, weight, bias, grad_out, cfg


def _torchvision_reference(x, offset, mask, weight, bias, grad_out, cfg):
    leaves = [t.clone().requires_grad_() if t is not None else None
              for t in (x, offset, mask, weight, bias)]
    out = deform_conv2d(
        leaves[0], leaves[1], leaves[3], bias=leaves[4], stride=cfg["stride"],
        padding=cfg["padding"], dilation=cfg["dilation"], mask=leaves[2],
    )
    out.backward(grad_out)
    return out.detach(), [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("device", DEVICES)
def test_deform_conv_matches_torchvision(device):
    x, offset, _, weight, _, grad_out, cfg = _deform_case(0, modulated=False)
    layer = DeformConv(4, 6, (3, 2), **cfg)
    with torch.no_grad():
        layer.weight.copy_(weight)
    if device == "cuda":
        layer = layer.cuda()
    xi, oi = _to(x, device).requires_grad_(), _to(offset, device).requires_grad_()
    out = layer(xi, oi)
    gx, goff, gw = torch.autograd.grad(out, [xi, oi, layer.weight], _to(grad_out, device))

    ref_out, (rx, roff, _, rw, _) = _torchvision_reference(
        x, offset, None, weight, None, grad_out, cfg
    )
    torch.testing.assert_close(_plain(out), ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_plain(gx), rx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_plain(goff), roff, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_plain(gw), rw, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_modulated_deform_conv_matches_torchvision(device):
    x, offset, mask, weight, bias, grad_out, cfg = _deform_case(1, modulated=True)
    layer = ModulatedDeformConv(4, 6, (3, 2), bias=True, **cfg)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    if device == "cuda":
        layer = layer.cuda()
    xi, oi, mi = (_to(t, device).requires_grad_() for t in (x, offset, mask))
    out = layer(xi, oi, mi)
    grads = torch.autograd.grad(out, [xi, oi, mi, layer.weight, layer.bias], _to(grad_out, device))

    ref_out, (rx, roff, rmask, rw, rb) = _torchvision_reference(
        x, offset, mask, weight, bias, grad_out, cfg
    )
    torch.testing.assert_close(_plain(out), ref_out, rtol=1e-4, atol=1e-4)
    for got, ref in zip(grads, (rx, roff, rmask, rw, rb)):
        torch.testing.assert_close(_plain(got), ref, rtol=1e-4, atol=1e-4)


def test_deform_conv_zero_offset_is_grouped_conv2d():
    # Independent of torchvision's deformable op: with zero offsets (and a unit mask) the layers
    # are ordinary grouped convolutions.
    x, offset, mask, weight, bias, grad_out, cfg = _deform_case(2, modulated=True)
    offset, mask = torch.zeros_like(offset), torch.ones_like(mask)
    conv = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"],
                groups=cfg["groups"])
    xr, wr = x.clone().requires_grad_(), weight.clone().requires_grad_()
    ref = F.conv2d(xr, wr, bias, **conv)
    ref_gx, ref_gw = torch.autograd.grad(ref, [xr, wr], grad_out)

    layer = ModulatedDeformConv(4, 6, (3, 2), bias=True, **cfg)
    plain = DeformConv(4, 6, (3, 2), **cfg)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
        plain.weight.copy_(weight)
    xi = _to(x, "cpu").requires_grad_()
    out = layer(xi, _to(offset, "cpu"), _to(mask, "cpu"))
    gx, gw = torch.autograd.grad(out, [xi, layer.weight], _to(grad_out, "cpu"))
    torch.testing.assert_close(_plain(out), ref.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_plain(gx), ref_gx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_plain(gw), ref_gw, rtol=1e-4, atol=1e-4)

    out_plain = plain(_to(x, "cpu"), _to(offset, "cpu"))
    torch.testing.assert_close(_plain(out_plain), ref.detach() - bias[:, None, None],
                               rtol=1e-4, atol=1e-4)


def test_deform_conv_backward_filter_applies_scale():
    x, offset, _, weight, _, grad_out, cfg = _deform_case(3, modulated=False)
    _, (_, _, _, rw, _) = _torchvision_reference(x, offset, None, weight, None, grad_out, cfg)
    gw = torch.zeros_like(weight)
    (sh, sw), (ph, pw), (dh, dw) = cfg["stride"], cfg["padding"], cfg["dilation"]
    ours.deform_conv_backward_filter(
        x, offset, grad_out, gw, x.new_empty(0), x.new_empty(0), 2, 3, sw, sh, pw, ph, dw, dh,
        cfg["groups"], cfg["deformable_groups"], 0.5, 1,
    )
    torch.testing.assert_close(gw, 0.5 * rw, rtol=1e-4, atol=1e-4)


def test_deform_conv_rejects_inconsistent_groups():
    x, offset, _, weight, _, _, cfg = _deform_case(4, modulated=False)
    out = x.new_empty(0)
    with pytest.raises(RuntimeError, match="offset"):
        # kW, kH, dW, dH, padW, padH, dilW, dilH, group=2, deformable_group=1 (offset has 2)
        ours.deform_conv_forward(
            x, weight, offset, out, out, out, 2, 3, 1, 2, 1, 2, 2, 1, 2, 1, 1
        )


@pytest.mark.parametrize("device", DEVICES)
def test_wrong_offset_or_mask_channels_raise_runtime_error(device):
    """Detectron2's own check (v0.6 tests/layers/test_deformable.py, test_raise_exception): an
    offset or a mask with the wrong channel count raises RuntimeError through its layers, as its
    compiled op's TORCH_CHECK does; callers catching RuntimeError see it."""
    x = _to(torch.rand(1, 1, 3, 3), device)
    offset = _to(torch.randn(1, 9, 3, 3), device)  # 2 * 3 * 3 channels expected
    deform = DeformConv(1, 1, kernel_size=3, padding=1).to(x.device)
    with pytest.raises(RuntimeError, match="offset has 9 channels"):
        deform(x, offset)
    offset = _to(torch.randn(1, 18, 3, 3), device)
    mask = _to(torch.ones(1, 18, 3, 3), device)  # 3 * 3 channels expected
    modulated = ModulatedDeformConv(1, 1, 3, padding=1, bias=False).to(x.device)
    with pytest.raises(RuntimeError, match="mask has 18 channels"):
        modulated(x, offset, mask)


def _wrong_offset_call(module, device: str):
    """``deform_conv_forward`` of ``module`` with an offset of 9 channels for a 3x3 kernel."""
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    x, weight = torch.rand(1, 1, 3, 3, device=dev), torch.rand(1, 1, 3, 3, device=dev)
    offset, out = torch.randn(1, 9, 3, 3, device=dev), torch.empty(0, device=dev)
    # kW, kH, dW, dH, padW, padH, dilW, dilH, group, deformable_group, im2col_step
    module.deform_conv_forward(x, weight, offset, out, torch.empty(0, device=dev),
                               torch.empty(0, device=dev), 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1)


@needs_compiled
@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_wrong_offset_channels_raise_the_compiled_ops_exception_type(device):
    """The same call to Detectron2's compiled op and to ours raises the same type. (Without CUDA
    the compiled op raises RuntimeError before its channel check: it has no CPU kernel.)"""
    with pytest.raises(Exception) as compiled:
        _wrong_offset_call(installed_C, device)
    with pytest.raises(Exception) as ours_:
        _wrong_offset_call(ours, device)
    assert compiled.type is RuntimeError and ours_.type is RuntimeError
    assert "offset" in str(ours_.value)


# --------------------------------------------------------------------------------------------
# Rotated box IoU
# --------------------------------------------------------------------------------------------
def _iou(a, b) -> float:
    return ours.box_iou_rotated(torch.tensor([a], dtype=torch.float32),
                                torch.tensor([b], dtype=torch.float32)).item()


def test_box_iou_rotated_hand_computed_cases():
    sq = [0.0, 0.0, 2.0, 2.0, 0.0]
    assert _iou(sq, sq) == pytest.approx(1.0, abs=1e-6)
    tilted = [3.0, 4.0, 3.0, 1.0, 33.0]
    assert _iou(tilted, tilted) == pytest.approx(1.0, abs=1e-6)
    assert _iou(sq, [5.0, 0.0, 2.0, 2.0, 30.0]) == 0.0  # disjoint
    # Shifted by half a side: intersection 1 x 2 = 2, union 4 + 4 - 2 = 6.
    assert _iou(sq, [1.0, 0.0, 2.0, 2.0, 0.0]) == pytest.approx(1 / 3, abs=1e-6)
    # Square of side 2 and itself rotated 45 deg about its centre: the intersection is the
    # regular octagon of inradius 1, area 8 tan(pi/8) = 8 (sqrt 2 - 1).
    octagon = 8 * (math.sqrt(2) - 1)
    expected = octagon / (4 + 4 - octagon)  # = 1 / sqrt(2)
    assert _iou(sq, [0.0, 0.0, 2.0, 2.0, 45.0]) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(1 / math.sqrt(2))
    # Containment: a 1x1 box well inside a 4x4 box -> 1 / 16.
    big, inner = [0.0, 0.0, 4.0, 4.0, 30.0], [0.2, -0.1, 1.0, 1.0, -10.0]
    assert _iou(big, inner) == pytest.approx(1 / 16, abs=1e-6)
    # Same rectangle described with w/h swapped and a 90 degree turn.
    turned, upright = [1.0, 2.0, 4.0, 2.0, 90.0], [1.0, 2.0, 2.0, 4.0, 0.0]
    assert _iou(turned, upright) == pytest.approx(1.0, abs=1e-6)


def test_box_iou_rotated_angle_direction():
    # RotatedBoxes convention: a positive angle turns the width vector to (cos a, -sin a) in image
    # coordinates (y down). A 4x1 bar at +45 deg therefore runs up-right, through (1, -1), and
    # contains a 0.5x0.5 box centred there; at -45 deg it runs down-right and misses it.
    small = [1.0, -1.0, 0.5, 0.5, 0.0]
    assert _iou([0.0, 0.0, 4.0, 1.0, 45.0], small) == pytest.approx(0.25 / 4, abs=1e-6)
    assert _iou([0.0, 0.0, 4.0, 1.0, -45.0], small) == 0.0


def test_box_iou_rotated_is_rotation_invariant():
    g = torch.Generator().manual_seed(5)
    a = torch.rand(30, 5, generator=g, dtype=torch.float64) * torch.tensor([10, 10, 6, 6, 360.0])
    b = torch.rand(20, 5, generator=g, dtype=torch.float64) * torch.tensor([10, 10, 6, 6, 360.0])
    a[:, 2:4] += 0.5
    b[:, 2:4] += 0.5
    phi = 0.7  # rotate every box and centre about the origin by the same angle
    rot = torch.tensor([[math.cos(phi), math.sin(phi)], [-math.sin(phi), math.cos(phi)]],
                       dtype=torch.float64)

    def turn(x):
        y = x.clone()
        y[:, 0:2] = x[:, 0:2] @ rot.T
        y[:, 4] = x[:, 4] + math.degrees(phi)
        return y

    iou = ours.box_iou_rotated(a, b)
    assert (iou > 0).sum() > 20  # the case has real overlaps
    torch.testing.assert_close(ours.box_iou_rotated(turn(a), turn(b)), iou, rtol=0, atol=1e-9)


def test_box_iou_rotated_at_angle_zero_equals_axis_aligned_iou():
    g = torch.Generator().manual_seed(6)
    xy = torch.rand(40, 2, generator=g) * 20
    wh = torch.rand(40, 2, generator=g) * 8 + 0.5
    xy[:5] = xy[5:10]  # some identical centres
    wh[:3] = wh[5:8]
    rot = torch.cat([xy, wh, torch.zeros(40, 1)], 1)
    xyxy = torch.cat([xy - wh / 2, xy + wh / 2], 1)
    got = ours.box_iou_rotated(rot[:25], rot[10:])
    ref = pairwise_iou(Boxes(xyxy[:25]), Boxes(xyxy[10:]))
    assert (ref > 0).sum() > 30
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    assert got.dtype == torch.float32 and got.shape == (25, 30)


def test_box_iou_rotated_empty():
    assert ours.box_iou_rotated(torch.zeros(0, 5), torch.zeros(3, 5)).shape == (0, 3)


# --------------------------------------------------------------------------------------------
# Rotated NMS
# --------------------------------------------------------------------------------------------
def test_nms_rotated_at_angle_zero_equals_torchvision_nms():
    g = torch.Generator().manual_seed(7)
    xy = torch.rand(200, 2, generator=g) * 30
    wh = torch.rand(200, 2, generator=g) * 10 + 1
    scores = torch.rand(200, generator=g)
    xyxy = torch.cat([xy - wh / 2, xy + wh / 2], 1)
    rot = torch.cat([xy, wh, torch.zeros(200, 1)], 1)
    for thr in (0.3, 0.5, 0.7):
        ref = nms(xyxy, scores, thr)
        assert 20 < len(ref) < 200
        got = ours.nms_rotated(rot, scores, thr)
        assert got.dtype == torch.int64
        assert got.tolist() == ref.tolist()


def test_nms_rotated_hand_built_case():
    boxes = torch.tensor([
        [0.0, 0.0, 4.0, 1.0, 45.0],    # 0: kept (highest score)
        [0.0, 0.0, 4.0, 1.0, -45.0],   # 1: crosses 0 at right angles, IoU 1/7 -> kept
        [0.1, 0.1, 4.0, 1.0, 40.0],    # 2: nearly 0 -> suppressed
        [10.0, 0.0, 4.0, 1.0, 45.0],   # 3: far away -> kept
    ])
    scores = torch.tensor([0.9, 0.8, 0.85, 0.1])
    assert _iou(boxes[0].tolist(), boxes[1].tolist()) == pytest.approx(1 / 7, abs=1e-6)
    assert ours.nms_rotated(boxes, scores, 0.5).tolist() == [0, 1, 3]
    # 0 and 1 (identical if the angles were ignored) overlap with IoU 1/7 only.
    assert ours.nms_rotated(boxes, scores, 0.15).tolist() == [0, 1, 3]
    assert ours.nms_rotated(boxes, scores, 0.13).tolist() == [0, 3]
    # Per class: the same box in two classes is kept twice.
    two = torch.cat([boxes[:1], boxes[:1]])
    keep = batched_nms_rotated(two, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5)
    assert sorted(keep.tolist()) == [0, 1]
    assert ours.nms_rotated(torch.zeros(0, 5), torch.zeros(0), 0.5).shape == (0,)


# --------------------------------------------------------------------------------------------
# ROIAlignRotated
# --------------------------------------------------------------------------------------------
class _OursROIAlignRotated(torch.autograd.Function):
    """Our forward/backward entry points, called as Detectron2's ``_ROIAlignRotated`` calls them
    (``layers/roi_align_rotated.py``: v0.6 through ``_C``, main through ``torch.ops``)."""

    @staticmethod
    def forward(ctx, x, rois, output_size, spatial_scale, sampling_ratio):
        ctx.save_for_backward(rois)
        ctx.args = (output_size, spatial_scale, sampling_ratio, x.shape)
        return ours.roi_align_rotated_forward(x, rois, spatial_scale, *output_size, sampling_ratio)

    @staticmethod
    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        (ph, pw), spatial_scale, sampling_ratio, (n, c, h, w) = ctx.args
        g = ours.roi_align_rotated_backward(grad, rois, spatial_scale, ph, pw, n, c, h, w,
                                            sampling_ratio)
        return g, None, None, None, None


def _roi_align_rotated(x, rois, output_size, spatial_scale, sampling_ratio):
    return _OursROIAlignRotated.apply(x, rois, output_size, spatial_scale, sampling_ratio)


def _random_rois(g, n_img, k, h, w):
    ctr = torch.rand(k, 2, generator=g) * torch.tensor([w, h]) * 2  # image coords (scale 0.5)
    size = torch.rand(k, 2, generator=g) * 12 + 0.5
    idx = torch.randint(0, n_img, (k, 1), generator=g).float()
    return idx, ctr, size


@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_roi_align_rotated_at_angle_zero_equals_roi_align(sampling_ratio):
    g = torch.Generator().manual_seed(8)
    n, c, h, w = 2, 3, 10, 12
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    idx, ctr, size = (t.double() for t in _random_rois(g, n, 12, h, w))
    rois_rot = torch.cat([idx, ctr, size, torch.zeros(12, 1)], 1).double()
    rois_xyxy = torch.cat([idx, ctr - size / 2, ctr + size / 2], 1).double()
    grad = torch.randn(12, c, 3, 4, generator=g, dtype=torch.float64)

    xa = x.clone().requires_grad_()
    out = _roi_align_rotated(xa, rois_rot, (3, 4), 0.5, sampling_ratio)
    (gx,) = torch.autograd.grad(out, xa, grad)
    xb = x.clone().requires_grad_()
    ref = roi_align(xb, rois_xyxy, (3, 4), 0.5, sampling_ratio, aligned=True)
    (ref_gx,) = torch.autograd.grad(ref, xb, grad)
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(gx, ref_gx)


def test_roi_align_rotated_quarter_turn_equals_roi_align_on_turned_image():
    # With angle 90, sample (yy, xx) of the box frame lands at image (cy - xx, cx + yy), which is
    # an axis-aligned RoIAlign on the image J[r, c] = I[H-1-c, r], centred at (x, y) = (H - cy, cx).
    g = torch.Generator().manual_seed(9)
    n, c, h, w = 1, 2, 9, 11
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    turned = x.transpose(-2, -1).flip(-1)  # shape (n, c, w, h)
    rois = torch.tensor([[0, 5.3, 4.1, 6.0, 3.5, 90.0], [0, 2.2, 7.9, 3.0, 5.0, 90.0]],
                        dtype=torch.float64)
    cx, cy, rw, rh = rois[:, 1], rois[:, 2], rois[:, 3], rois[:, 4]
    ncx, ncy = h - cy, cx
    boxes = torch.stack([rois[:, 0], ncx - rw / 2, ncy - rh / 2, ncx + rw / 2, ncy + rh / 2], 1)
    out = _roi_align_rotated(x, rois, (4, 3), 1.0, 2)
    ref = roi_align(turned, boxes, (4, 3), 1.0, 2, aligned=True)
    torch.testing.assert_close(out, ref)


def test_roi_align_rotated_gradcheck():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 1, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 3.1, 2.4, 3.3, 2.2, 30.0], [1, 2.0, 3.0, 4.5, 1.7, -65.0]],
                        dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda t: _roi_align_rotated(t, rois, (2, 3), 1.0, 0), (x,), eps=1e-6, atol=1e-5
    )


def test_roi_align_rotated_negative_size_raises_runtime_error():
    rois = torch.tensor([[0, 2.0, 2.0, -1.0, 2.0, 0.0]])
    with pytest.raises(RuntimeError, match="non-negative size"):
        ours.roi_align_rotated_forward(torch.randn(1, 1, 5, 5), rois, 1.0, 2, 2, 0)


def test_roi_align_rotated_empty_rois():
    x = torch.randn(1, 3, 5, 5)
    out = _roi_align_rotated(x, torch.zeros(0, 6), (2, 2), 1.0, 0)
    assert out.shape == (0, 3, 2, 2)


# --------------------------------------------------------------------------------------------
# The operators Detectron2 main calls (torch.ops.detectron2.*), and the compiled ops
# --------------------------------------------------------------------------------------------
def test_rotated_operators_are_registered_with_detectron2s_schemas():
    # Detectron2 main calls all four rotated ops as torch.ops.detectron2.<name> (v0.6 only
    # nms_rotated): ours under the default install, Detectron2's compiled ops when built from
    # source. Both must give the hand-computed values.
    sq = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]])
    others = torch.tensor([[1.0, 0.0, 2.0, 2.0, 0.0], [0.0, 0.0, 2.0, 2.0, 45.0]])
    iou = torch.ops.detectron2.box_iou_rotated(sq, others)
    torch.testing.assert_close(iou, torch.tensor([[1 / 3, 1 / math.sqrt(2)]]), atol=1e-5, rtol=0)
    # A 2x2 RoI centred at (1.5, 1.5), angle 0, one bin, 2x2 samples: with the half-pixel offset
    # the samples sit at pixel coordinates (y, x) in {0.5, 1.5}^2. On the ramp x[r, c] = 4 r + c,
    # bilinear sampling is exact, so the bin is the ramp at the mean sample (1, 1): 5.
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    rois = torch.tensor([[0.0, 1.5, 1.5, 2.0, 2.0, 0.0]])
    out = torch.ops.detectron2.roi_align_rotated_forward(x, rois, 1.0, 1, 1, 2)
    torch.testing.assert_close(out, torch.tensor([[[[5.0]]]]))
    # Backward of a unit gradient: each sample (weight 1/4) splits half-half between pixels 0, 1
    # (at 0.5) or 1, 2 (at 1.5) along each axis -> per axis (1/4, 1/2, 1/4, 0), outer product.
    grad = torch.ops.detectron2.roi_align_rotated_backward(
        torch.ones(1, 1, 1, 1), rois, 1.0, 1, 1, 1, 1, 4, 4, 2
    )
    axis = torch.tensor([0.25, 0.5, 0.25, 0.0])
    torch.testing.assert_close(grad, (axis[:, None] * axis[None, :]).reshape(1, 1, 4, 4))
    keep = torch.ops.detectron2.nms_rotated(torch.cat([sq, others]), torch.tensor([0.9, 0.8, 0.7]),
                                            0.5)
    assert keep.tolist() == [0, 1]


def _random_rotated(g, k, spread=12.0):
    xy = torch.rand(k, 2, generator=g) * spread
    wh = torch.rand(k, 2, generator=g) * 6 + 0.5
    angle = torch.rand(k, 1, generator=g) * 360 - 180
    return torch.cat([xy, wh, angle], 1)


@needs_compiled
def test_box_iou_rotated_and_nms_match_detectron2s_compiled_ops():
    g = torch.Generator().manual_seed(11)
    a, b = _random_rotated(g, 60), _random_rotated(g, 50)
    ref = torch.ops.detectron2.box_iou_rotated(a, b)
    assert (ref > 0.05).sum() > 100
    torch.testing.assert_close(ours.box_iou_rotated(a, b), ref, rtol=0, atol=1e-4)
    scores = torch.rand(60, generator=g)
    for thr in (0.3, 0.5, 0.7):
        assert ours.nms_rotated(a, scores, thr).tolist() == (
            torch.ops.detectron2.nms_rotated(a, scores, thr).tolist()
        )


@needs_compiled
def test_roi_align_rotated_negative_size_raises_as_the_compiled_op():
    rois = torch.tensor([[0, 2.0, 2.0, -1.0, 2.0, 0.0]])
    x = torch.randn(1, 1, 5, 5)
    with pytest.raises(Exception) as compiled:
        torch.ops.detectron2.roi_align_rotated_forward(x, rois, 1.0, 2, 2, 0)
    with pytest.raises(Exception) as ours_:
        ours.roi_align_rotated_forward(x, rois, 1.0, 2, 2, 0)
    assert compiled.type is ours_.type is RuntimeError
    assert "non-negative size" in str(compiled.value) and "non-negative size" in str(ours_.value)


@needs_compiled
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_roi_align_rotated_matches_detectron2s_compiled_op(sampling_ratio):
    g = torch.Generator().manual_seed(12)
    n, c, h, w = 2, 3, 10, 12
    x = torch.randn(n, c, h, w, generator=g)
    idx, ctr, size = _random_rois(g, n, 10, h, w)
    angle = torch.rand(10, 1, generator=g) * 360 - 180
    rois = torch.cat([idx, ctr, size, angle], 1)
    args = (0.5, 3, 4)
    ref = torch.ops.detectron2.roi_align_rotated_forward(x, rois, *args, sampling_ratio)
    got = ours.roi_align_rotated_forward(x, rois, *args, sampling_ratio)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    grad = torch.randn(10, c, 3, 4, generator=g)
    ref_g = torch.ops.detectron2.roi_align_rotated_backward(grad, rois, *args, n, c, h, w,
                                                            sampling_ratio)
    got_g = ours.roi_align_rotated_backward(grad, rois, *args, n, c, h, w, sampling_ratio)
    torch.testing.assert_close(got_g, ref_g, rtol=1e-4, atol=1e-5)
