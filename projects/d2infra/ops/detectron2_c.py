"""PyTorch implementations of every entry point Detectron2 v0.6 uses from ``detectron2._C``.

Design
------
Detectron2 v0.6 ships its custom operators as a compiled C++/CUDA extension, ``detectron2._C``.
The source archive we build from has no ``layers/csrc``, so there is nothing to compile. Instead
``tools/detectron2/build_wheel.py`` copies *this single file* into the wheel as
``detectron2/_C.py``; ``from detectron2 import _C`` then finds these functions under the names and
call signatures Detectron2's Python callers use. The same file is also importable as
``d2infra.ops.detectron2_c`` (which is what the tests compare the installed copy against).

Because it is copied verbatim into another package, the file is **self-contained**: it imports only
``torch``, ``torchvision``, ``numpy`` and the standard library -- no relative imports, nothing from
``d2infra`` or ``detectron2`` (it only asks whether ``detectron2._C`` is a compiled extension).
Everything is written with tensor operations on the inputs' device, so the ops run on CPU and CUDA
alike.

Entry points (callers in Detectron2 v0.6 and main in brackets):

* ``deform_conv_forward``, ``deform_conv_backward_input``, ``deform_conv_backward_filter``,
  ``modulated_deform_conv_forward``, ``modulated_deform_conv_backward``
  [``layers/deform_conv.py``]: deformable convolution v1/v2 expressed with
  :func:`torchvision.ops.deform_conv2d` (same offset/mask channel layout); the backward entry
  points run autograd over that op. Results are written in place into the buffers the callers
  pass (``output``, ``grad_*``); the ``columns``/``ones`` scratch buffers and ``im2col_step`` are
  accepted and ignored.
* ``box_iou_rotated`` [``layers/rotated_boxes.py``]: exact IoU of rotated rectangles, vectorised.
* ``nms_rotated`` [``layers/nms.py``].
* ``roi_align_rotated_forward``, ``roi_align_rotated_backward``
  [``layers/roi_align_rotated.py``]: bilinear RoIAlign over a rotated sampling grid.

The four rotated ops are also registered as operators, ``torch.ops.detectron2.<name>``, with the
schemas of Detectron2's ``layers/csrc/vision.cpp``: v0.6 calls ``nms_rotated`` that way, and
Detectron2 main (after v0.6) calls all four that way (``layers/rotated_boxes.py``,
``layers/roi_align_rotated.py``). They are not registered when Detectron2's compiled extension is
installed, which defines them itself (see :func:`_register_ops`).
* ``InstanceAnnotation``, ``COCOevalEvaluateImages``, ``COCOevalAccumulate``
  [``evaluation/fast_eval_api.py``]: not implemented; they raise a ``RuntimeError`` that says to
  use ``COCOEvaluator(..., use_fast_impl=False)``.
* ``get_compiler_version``, ``get_cuda_version``, ``has_cuda`` [``utils/collect_env.py``].

Rotated boxes are ``(x_ctr, y_ctr, width, height, angle_degrees)`` as defined in
``detectron2.structures.RotatedBoxes``: in image coordinates (x right, y down) the box's width
vector is ``(cos a, -sin a)`` and its height vector ``(sin a, cos a)``, i.e. a positive angle
rotates the box counter-clockwise on screen.
"""
import importlib.util
import math
from typing import List, Optional, Tuple

import numpy as np
import torch
from torchvision.ops import deform_conv2d as _tv_deform_conv2d

__all__ = [
    "deform_conv_forward",
    "deform_conv_backward_input",
    "deform_conv_backward_filter",
    "modulated_deform_conv_forward",
    "modulated_deform_conv_backward",
    "box_iou_rotated",
    "nms_rotated",
    "roi_align_rotated_forward",
    "roi_align_rotated_backward",
    "InstanceAnnotation",
    "COCOevalEvaluateImages",
    "COCOevalAccumulate",
    "get_compiler_version",
    "get_cuda_version",
    "has_cuda",
]


# ---------------------------------------------------------------------------------------------
# Build information (utils/collect_env.py)
# ---------------------------------------------------------------------------------------------
def get_compiler_version() -> str:
    """No compiler was involved: the ops are Python/PyTorch code."""
    return "PyTorch ops (no compiled extension)"


def get_cuda_version() -> str:
    """No CUDA code was compiled; CUDA tensors run through PyTorch's own kernels."""
    return "none (PyTorch ops, no compiled extension; torch CUDA {})".format(torch.version.cuda)


def has_cuda() -> bool:
    """False: there are no compiled CUDA kernels, so collect_env must not inspect this file's
    "arch flags" (it would run cuobjdump on a ``.py``)."""
    return False


# ---------------------------------------------------------------------------------------------
# Fast COCO evaluation (evaluation/fast_eval_api.py): not provided.
# ---------------------------------------------------------------------------------------------
_FAST_COCO_MSG = (
    "fast COCO evaluation (COCOEvaluator use_fast_impl=True) needs Detectron2's compiled ops; "
    "use COCOEvaluator(..., use_fast_impl=False)"
)


def InstanceAnnotation(*args, **kwargs):  # noqa: N802 (name fixed by the caller)
    raise RuntimeError(_FAST_COCO_MSG)


def COCOevalEvaluateImages(*args, **kwargs):  # noqa: N802
    raise RuntimeError(_FAST_COCO_MSG)


def COCOevalAccumulate(*args, **kwargs):  # noqa: N802
    raise RuntimeError(_FAST_COCO_MSG)


# ---------------------------------------------------------------------------------------------
# Deformable convolution (layers/deform_conv.py)
# ---------------------------------------------------------------------------------------------
def _check_groups(
    input: torch.Tensor,
    weight: torch.Tensor,
    offset: torch.Tensor,
    mask: Optional[torch.Tensor],
    kh: int,
    kw: int,
    group: int,
    deformable_group: int,
) -> None:
    """torchvision infers ``group`` from ``weight`` and ``deformable_group`` from ``offset``;
    make sure these agree with the values the caller passed. A mismatch raises ``RuntimeError``,
    as the shape checks (``TORCH_CHECK``) of Detectron2's compiled op do."""
    if tuple(weight.shape[2:]) != (kh, kw):
        raise RuntimeError(f"kernel size ({kh}, {kw}) does not match weight {tuple(weight.shape)}")
    if input.shape[1] != weight.shape[1] * group:
        raise RuntimeError(
            f"input has {input.shape[1]} channels; weight {tuple(weight.shape)} with "
            f"group={group} expects {weight.shape[1] * group}"
        )
    if weight.shape[0] % group != 0:
        raise RuntimeError(f"out channels {weight.shape[0]} not divisible by group={group}")
    if offset.shape[1] != 2 * kh * kw * deformable_group:
        raise RuntimeError(
            f"offset has {offset.shape[1]} channels; expected 2*{kh}*{kw}*{deformable_group}"
        )
    if mask is not None and mask.shape[1] != kh * kw * deformable_group:
        raise RuntimeError(
            f"mask has {mask.shape[1]} channels; expected {kh}*{kw}*{deformable_group}"
        )
    if input.shape[1] % deformable_group != 0:
        raise RuntimeError(
            f"input channels {input.shape[1]} not divisible by deformable_group={deformable_group}"
        )


def _deform(
    input: torch.Tensor,
    weight: torch.Tensor,
    offset: torch.Tensor,
    mask: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
) -> torch.Tensor:
    """Deformable convolution; all (h, w) tuples. Groups are carried by the tensor shapes:
    ``weight`` is (C_out, C_in / group, kh, kw), ``offset`` is (N, 2*kh*kw*deformable_group,
    H_out, W_out) ordered [deformable group][kernel position, row-major][dy, dx], ``mask`` is
    (N, kh*kw*deformable_group, H_out, W_out)."""
    return _tv_deform_conv2d(
        input, offset, weight, bias=bias, stride=stride, padding=padding, dilation=dilation,
        mask=mask,
    )


def deform_conv_forward(
    input: torch.Tensor,
    weight: torch.Tensor,
    offset: torch.Tensor,
    output: torch.Tensor,
    columns: torch.Tensor,
    ones: torch.Tensor,
    kW: int,
    kH: int,
    dW: int,
    dH: int,
    padW: int,
    padH: int,
    dilW: int,
    dilH: int,
    group: int,
    deformable_group: int,
    im2col_step: int,
) -> None:
    """Deformable convolution v1; writes the result into ``output`` (resized if needed)."""
    _check_groups(input, weight, offset, None, kH, kW, group, deformable_group)
    with torch.no_grad():
        out = _deform(input, weight, offset, None, None, (dH, dW), (padH, padW), (dilH, dilW))
    output.resize_(out.shape).copy_(out)


def _deform_grads(
    input: torch.Tensor,
    weight: torch.Tensor,
    offset: torch.Tensor,
    mask: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    grad_output: torch.Tensor,
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
    wanted: List[bool],
) -> List[Optional[torch.Tensor]]:
    """Gradients of sum(grad_output * deform(...)) w.r.t. (input, weight, offset, mask, bias),
    for the entries whose ``wanted`` flag is set (None elsewhere)."""
    leaves = [input, weight, offset, mask, bias]
    with torch.enable_grad():
        xs = [
            t.detach().requires_grad_(w) if t is not None else None
            for t, w in zip(leaves, wanted)
        ]
        out = _deform(xs[0], xs[1], xs[2], xs[3], xs[4], stride, padding, dilation)
        req = [x for x, w in zip(xs, wanted) if x is not None and w]
        grads = torch.autograd.grad(out, req, grad_output, allow_unused=True)
    it = iter(grads)
    result: List[Optional[torch.Tensor]] = []
    for x, w in zip(xs, wanted):
        if x is not None and w:
            g = next(it)
            result.append(torch.zeros_like(x) if g is None else g)
        else:
            result.append(None)
    return result


def deform_conv_backward_input(
    input: torch.Tensor,
    offset: torch.Tensor,
    gradOutput: torch.Tensor,
    gradInput: torch.Tensor,
    gradOffset: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    kW: int,
    kH: int,
    dW: int,
    dH: int,
    padW: int,
    padH: int,
    dilW: int,
    dilH: int,
    group: int,
    deformable_group: int,
    im2col_step: int,
) -> None:
    """Writes dL/dinput into ``gradInput`` and dL/doffset into ``gradOffset``."""
    _check_groups(input, weight, offset, None, kH, kW, group, deformable_group)
    g_in, _, g_off, _, _ = _deform_grads(
        input, weight, offset, None, None, gradOutput, (dH, dW), (padH, padW), (dilH, dilW),
        [True, False, True, False, False],
    )
    gradInput.copy_(g_in)
    gradOffset.copy_(g_off)


def deform_conv_backward_filter(
    input: torch.Tensor,
    offset: torch.Tensor,
    gradOutput: torch.Tensor,
    gradWeight: torch.Tensor,
    columns: torch.Tensor,
    ones: torch.Tensor,
    kW: int,
    kH: int,
    dW: int,
    dH: int,
    padW: int,
    padH: int,
    dilW: int,
    dilH: int,
    group: int,
    deformable_group: int,
    scale: float,
    im2col_step: int,
) -> None:
    """Writes ``scale`` * dL/dweight into ``gradWeight``."""
    _check_groups(input, gradWeight, offset, None, kH, kW, group, deformable_group)
    # The weight's value does not enter dL/dweight (the op is linear in it); its shape does.
    _, g_w, _, _, _ = _deform_grads(
        input, torch.zeros_like(gradWeight), offset, None, None, gradOutput, (dH, dW),
        (padH, padW), (dilH, dilW), [False, True, False, False, False],
    )
    gradWeight.copy_(g_w * scale)


def modulated_deform_conv_forward(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    ones: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    output: torch.Tensor,
    columns: torch.Tensor,
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
    group: int,
    deformable_group: int,
    with_bias: bool,
) -> None:
    """Modulated deformable convolution (v2); writes the result into ``output``."""
    _check_groups(input, weight, offset, mask, kernel_h, kernel_w, group, deformable_group)
    with torch.no_grad():
        out = _deform(
            input, weight, offset, mask, bias if with_bias else None, (stride_h, stride_w),
            (pad_h, pad_w), (dilation_h, dilation_w),
        )
    output.resize_(out.shape).copy_(out)


def modulated_deform_conv_backward(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    ones: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    columns: torch.Tensor,
    grad_input: torch.Tensor,
    grad_weight: torch.Tensor,
    grad_bias: torch.Tensor,
    grad_offset: torch.Tensor,
    grad_mask: torch.Tensor,
    grad_output: torch.Tensor,
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
    group: int,
    deformable_group: int,
    with_bias: bool,
) -> None:
    """Writes the gradients w.r.t. input, weight, offset, mask (and bias when ``with_bias``)
    into the ``grad_*`` buffers; ``grad_bias`` is left untouched without bias."""
    _check_groups(input, weight, offset, mask, kernel_h, kernel_w, group, deformable_group)
    g_in, g_w, g_off, g_mask, g_b = _deform_grads(
        input, weight, offset, mask, bias if with_bias else None, grad_output,
        (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w),
        [True, True, True, True, bool(with_bias)],
    )
    grad_input.copy_(g_in)
    grad_weight.copy_(g_w)
    grad_offset.copy_(g_off)
    grad_mask.copy_(g_mask)
    if with_bias:
        grad_bias.copy_(g_b)


# ---------------------------------------------------------------------------------------------
# Rotated box IoU (layers/rotated_boxes.py)
# ---------------------------------------------------------------------------------------------
def _box_axes(boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unit width and height vectors, (..., 2) each, in image coordinates (RotatedBoxes
    convention): u = (cos a, -sin a), v = (sin a, cos a)."""
    theta = boxes[..., 4] * (math.pi / 180.0)
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([c, -s], dim=-1), torch.stack([s, c], dim=-1)


def _box_corners(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 5) boxes -> (..., 4, 2) corners in cyclic order (c -u -v, c +u -v, c +u +v, c -u +v),
    with u, v the half-width and half-height vectors."""
    u, v = _box_axes(boxes)
    hu = u * (boxes[..., 2:3] / 2)
    hv = v * (boxes[..., 3:4] / 2)
    ctr = boxes[..., 0:2]
    return torch.stack([ctr - hu - hv, ctr + hu - hv, ctr + hu + hv, ctr - hu + hv], dim=-2)


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(points: torch.Tensor, boxes: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """points (P, K, 2), boxes (P, 5) -> (P, K) bool: point within the box (up to ``tol``)."""
    u, v = _box_axes(boxes)
    d = points - boxes[:, None, 0:2]
    du = (d * u[:, None, :]).sum(-1).abs()
    dv = (d * v[:, None, :]).sum(-1).abs()
    tol = tol[:, None]
    return (du <= boxes[:, None, 2] / 2 + tol) & (dv <= boxes[:, None, 3] / 2 + tol)


def _intersection_area(b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """Exact intersection area of paired rotated rectangles b1[i], b2[i] (P, 5) -> (P,).

    The intersection of two convex polygons is the convex polygon whose vertices are the corners
    of either box lying inside the other plus the crossing points of their edges. Those (at most
    24, with duplicates) candidates are ordered by angle around their mean, which lies inside the
    polygon, and the area is the triangle fan from that mean (shoelace formula).
    """
    p = b1.shape[0]
    if p == 0:
        return b1.new_zeros(0)
    # Work relative to the midpoint of the two centres, for precision.
    origin = (b1[:, 0:2] + b2[:, 0:2]) / 2
    b1 = torch.cat([b1[:, 0:2] - origin, b1[:, 2:]], dim=1)
    b2 = torch.cat([b2[:, 0:2] - origin, b2[:, 2:]], dim=1)
    scale = torch.maximum(b1[:, 2:4].abs().amax(1), b2[:, 2:4].abs().amax(1)).clamp_min(1e-12)
    tol = scale * 1e-9

    c1, c2 = _box_corners(b1), _box_corners(b2)  # (P, 4, 2)
    in1 = _inside(c1, b2, tol)  # corners of box 1 inside box 2
    in2 = _inside(c2, b1, tol)

    # Edge k of box 1: c1[k] + t * e1[k], t in [0, 1]; edge l of box 2 likewise with s.
    e1 = torch.roll(c1, -1, dims=1) - c1
    e2 = torch.roll(c2, -1, dims=1) - c2
    a = c1[:, :, None, :]  # (P, 4, 1, 2)
    da = e1[:, :, None, :]
    b = c2[:, None, :, :]  # (P, 1, 4, 2)
    db = e2[:, None, :, :]
    den = _cross(da, db)  # (P, 4, 4)
    ab = b - a
    ok = den.abs() > (scale * scale * 1e-12)[:, None, None]
    safe = torch.where(ok, den, torch.ones_like(den))
    t = _cross(ab, db) / safe
    s = _cross(ab, da) / safe
    eps = 1e-9
    ok = ok & (t >= -eps) & (t <= 1 + eps) & (s >= -eps) & (s <= 1 + eps)
    xpts = (a + t[..., None] * da).reshape(p, 16, 2)

    pts = torch.cat([c1, c2, xpts], dim=1)  # (P, 24, 2)
    valid = torch.cat([in1, in2, ok.reshape(p, 16)], dim=1)
    vf = valid.to(pts.dtype)
    count = vf.sum(1)
    centre = (pts * vf[..., None]).sum(1) / count.clamp_min(1)[:, None]
    rel = pts - centre[:, None, :]
    ang = torch.atan2(rel[..., 1], rel[..., 0])
    ang = torch.where(valid, ang, torch.full_like(ang, 10.0))  # invalid points sort last
    order = ang.argsort(dim=1)
    rel = rel.gather(1, order[..., None].expand(-1, -1, 2))
    vf = vf.gather(1, order)
    k = count.long()
    idx = torch.arange(24, device=pts.device).expand(p, 24)
    nxt = torch.where(idx + 1 < k[:, None], idx + 1, torch.zeros_like(idx))
    rel_next = rel.gather(1, nxt[..., None].expand(-1, -1, 2))
    area = 0.5 * (_cross(rel, rel_next) * vf).sum(1)
    return area.clamp_min(0)


def _sparse_iou_rotated(
    boxes1: torch.Tensor, boxes2: torch.Tensor, upper_only: bool = False
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IoU of the pairs that can overlap, as (i, j, iou) with iou in float64.

    Pairs whose circumscribed circles do not meet, or with a box of (near) zero area, have IoU 0
    and are left out; with ``upper_only`` only pairs i < j are considered (NMS). The candidate
    search runs over row blocks, so memory stays linear in the number of candidate pairs.
    """
    n, m = boxes1.shape[0], boxes2.shape[0]
    b1 = boxes1.detach().to(torch.float64)
    b2 = boxes2.detach().to(device=boxes1.device, dtype=torch.float64)
    area1 = b1[:, 2] * b1[:, 3]
    area2 = b2[:, 2] * b2[:, 3]
    r1 = torch.hypot(b1[:, 2], b1[:, 3]) / 2
    r2 = torch.hypot(b2[:, 2], b2[:, 3]) / 2
    ok2 = area2 > 1e-14
    cols = torch.arange(m, device=b1.device)
    ii_parts, jj_parts = [], []
    rows = max(1, (1 << 22) // max(1, m))
    for s in range(0, n, rows):
        blk = slice(s, min(n, s + rows))
        dist = torch.cdist(b1[blk, 0:2], b2[:, 0:2])
        cand = dist <= (r1[blk, None] + r2[None, :]) * (1 + 1e-6) + 1e-6
        cand &= (area1[blk, None] > 1e-14) & ok2[None, :]
        if upper_only:
            cand &= cols[None, :] > torch.arange(blk.start, blk.stop, device=b1.device)[:, None]
        bi, bj = cand.nonzero(as_tuple=True)
        ii_parts.append(bi + s)
        jj_parts.append(bj)
    ii, jj = torch.cat(ii_parts), torch.cat(jj_parts)
    vals = []
    chunk = 1 << 14  # ~5 us per pair on one CPU core; larger chunks fall out of cache
    for start in range(0, ii.numel(), chunk):
        i, j = ii[start:start + chunk], jj[start:start + chunk]
        inter = _intersection_area(b1[i], b2[j])
        union = area1[i] + area2[j] - inter
        vals.append((inter / union.clamp_min(1e-14)).clamp(0, 1))
    iou = torch.cat(vals) if vals else b1.new_zeros(0)
    return ii, jj, iou


def box_iou_rotated(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every box in ``boxes1`` (N, 5) with every box in ``boxes2`` (M, 5) -> (N, M).

    Boxes are (x_ctr, y_ctr, width, height, angle_degrees). Computed exactly in float64 on the
    inputs' device and returned in ``boxes1``'s dtype; a box of (near) zero area has IoU 0 with
    everything. Pairs whose circumscribed circles do not meet are 0 without further work.
    """
    n, m = boxes1.shape[0], boxes2.shape[0]
    out_dtype = boxes1.dtype if boxes1.is_floating_point() else torch.float32
    out = torch.zeros((n, m), dtype=out_dtype, device=boxes1.device)
    if n == 0 or m == 0:
        return out
    ii, jj, iou = _sparse_iou_rotated(boxes1, boxes2)
    out[ii, jj] = iou.to(out_dtype)
    return out


# ---------------------------------------------------------------------------------------------
# Rotated NMS (layers/nms.py calls torch.ops.detectron2.nms_rotated)
# ---------------------------------------------------------------------------------------------
def nms_rotated(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression of rotated boxes.

    Visits boxes in decreasing score order; keeps a box unless an already kept box has
    IoU > ``iou_threshold`` with it. Returns the int64 indices of the kept boxes, in decreasing
    score order, on ``boxes``' device. Only overlapping pairs are evaluated and stored.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_boxes = boxes[order]
    ii, jj, iou = _sparse_iou_rotated(sorted_boxes, sorted_boxes, upper_only=True)
    over = iou > iou_threshold
    # Rows i (higher score) -> the later boxes j they suppress, as CSR arrays.
    src = ii[over].cpu().numpy()
    dst = jj[over].cpu().numpy()
    by_src = np.argsort(src, kind="stable")
    src, dst = src[by_src], dst[by_src]
    starts = np.searchsorted(src, np.arange(n + 1))
    removed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed[dst[starts[i]:starts[i + 1]]] = True
    keep_t = torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)
    return order[keep_t]




# ---------------------------------------------------------------------------------------------
# ROIAlignRotated (layers/roi_align_rotated.py)
# ---------------------------------------------------------------------------------------------
def _bilinear_gather(
    flat: torch.Tensor, batch: torch.Tensor, y: torch.Tensor, x: torch.Tensor, height: int,
    width: int,
) -> torch.Tensor:
    """Bilinear samples of the (N*H*W, C) feature table at points (y, x) of images ``batch``
    (all shape (S,)) -> (S, C). Pixel i covers [i, i+1) with its value at i (the caller has
    already subtracted the half-pixel offset). Points more than one pixel outside the image are
    zero; points within that margin are clamped to the border, as in RoIAlign."""
    outside = (y < -1.0) | (y > height) | (x < -1.0) | (x > width)
    y = y.clamp(min=0)
    x = x.clamp(min=0)
    y_low = y.floor().long().clamp(max=height - 1)
    x_low = x.floor().long().clamp(max=width - 1)
    y = torch.where(y_low >= height - 1, y_low.to(y.dtype), y)
    x = torch.where(x_low >= width - 1, x_low.to(x.dtype), x)
    y_high = (y_low + 1).clamp(max=height - 1)
    x_high = (x_low + 1).clamp(max=width - 1)
    ly, lx = y - y_low.to(y.dtype), x - x_low.to(x.dtype)
    hy, hx = 1 - ly, 1 - lx
    keep = (~outside).to(flat.dtype)
    base = batch * (height * width)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat.index_select(0, base + yy * width + xx)

    val = (
        (hy * hx * keep)[:, None] * at(y_low, x_low)
        + (hy * lx * keep)[:, None] * at(y_low, x_high)
        + (ly * hx * keep)[:, None] * at(y_high, x_low)
        + (ly * lx * keep)[:, None] * at(y_high, x_high)
    )
    return val


def _roi_align_rotated(
    input: torch.Tensor, rois: torch.Tensor, spatial_scale: float, pooled_height: int,
    pooled_width: int, sampling_ratio: int,
) -> torch.Tensor:
    """Differentiable (w.r.t. ``input``) ROIAlignRotated.

    For RoI (b, cx, cy, w, h, a) scaled by ``spatial_scale``, output bin (ph, pw) is the mean of
    a grid_h x grid_w grid of bilinear samples. A sample's box-local offset from the RoI centre is
    ``yy = -h/2 + (ph + (iy + 0.5) / grid_h) * h / pooled_height`` (and ``xx`` likewise); it is
    rotated into the image as ``y = yy cos a - xx sin a + cy - 0.5``,
    ``x = yy sin a + xx cos a + cx - 0.5`` (the RotatedBoxes rotation; the -0.5 is the aligned,
    half-pixel convention). The grid is ``sampling_ratio`` per side if > 0, otherwise
    ``ceil(h / pooled_height)`` x ``ceil(w / pooled_width)`` for each RoI.
    """
    n, c, height, width = input.shape
    r = rois.shape[0]
    out = input.new_zeros((r, c, pooled_height, pooled_width))
    if r == 0 or c == 0:
        return out
    flat = input.permute(0, 2, 3, 1).reshape(n * height * width, c)
    rois = rois.to(input.dtype)
    batch = rois[:, 0].long()
    cx = rois[:, 1] * spatial_scale - 0.5
    cy = rois[:, 2] * spatial_scale - 0.5
    rw = rois[:, 3] * spatial_scale
    rh = rois[:, 4] * spatial_scale
    theta = rois[:, 5] * (math.pi / 180.0)
    cos_t, sin_t = torch.cos(theta), torch.sin(theta)
    if bool((rw < 0).any()) or bool((rh < 0).any()):
        # RuntimeError, as the compiled op's check (AT_ASSERTM)
        raise RuntimeError("ROIs in ROIAlignRotated do not have non-negative size!")
    bin_h = rh / pooled_height
    bin_w = rw / pooled_width
    if sampling_ratio > 0:
        grid_h = torch.full((r,), sampling_ratio, dtype=torch.long, device=input.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(rh / pooled_height).long()
        grid_w = torch.ceil(rw / pooled_width).long()
    grids = torch.stack([grid_h, grid_w], 1)
    # RoIs sharing a sampling grid are processed together, in chunks of bounded size.
    keys, inverse = torch.unique(grids, dim=0, return_inverse=True)
    results = []
    for k, (gh, gw) in enumerate(keys.tolist()):
        members = (inverse == k).nonzero(as_tuple=True)[0]
        if gh <= 0 or gw <= 0:  # empty RoI: the average of no samples is 0
            continue
        per_roi = pooled_height * pooled_width * gh * gw
        step = max(1, (1 << 22) // max(1, per_roi * c))
        iy = (torch.arange(gh, device=input.device, dtype=input.dtype) + 0.5) / gh
        ix = (torch.arange(gw, device=input.device, dtype=input.dtype) + 0.5) / gw
        ph = torch.arange(pooled_height, device=input.device, dtype=input.dtype)
        pw = torch.arange(pooled_width, device=input.device, dtype=input.dtype)
        fy = (ph[:, None] + iy[None, :]).reshape(-1)  # (PH*gh,), in bin units
        fx = (pw[:, None] + ix[None, :]).reshape(-1)  # (PW*gw,)
        for s in range(0, members.numel(), step):
            idx = members[s:s + step]
            yy = -rh[idx, None] / 2 + fy[None, :] * bin_h[idx, None]  # (R', PH*gh)
            xx = -rw[idx, None] / 2 + fx[None, :] * bin_w[idx, None]  # (R', PW*gw)
            ct, st = cos_t[idx, None, None], sin_t[idx, None, None]
            y = yy[:, :, None] * ct - xx[:, None, :] * st + cy[idx, None, None]
            x = yy[:, :, None] * st + xx[:, None, :] * ct + cx[idx, None, None]
            bb = batch[idx, None, None].expand_as(y)
            val = _bilinear_gather(
                flat, bb.reshape(-1), y.reshape(-1), x.reshape(-1), height, width
            )
            val = val.reshape(idx.numel(), pooled_height, gh, pooled_width, gw, c)
            val = val.mean(dim=(2, 4)).permute(0, 3, 1, 2)
            results.append((idx, val))
    if results:
        idx = torch.cat([i for i, _ in results])
        vals = torch.cat([v for _, v in results])
        out = out.index_put((idx,), vals)
    return out


def roi_align_rotated_forward(
    input: torch.Tensor, rois: torch.Tensor, spatial_scale: float, pooled_height: int,
    pooled_width: int, sampling_ratio: int,
) -> torch.Tensor:
    """ROIAlignRotated: input (N, C, H, W), rois (R, 6) = (batch index, x_ctr, y_ctr, width,
    height, angle_degrees) -> (R, C, pooled_height, pooled_width)."""
    with torch.no_grad():
        return _roi_align_rotated(
            input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio
        ).contiguous()


def roi_align_rotated_backward(
    grad: torch.Tensor, rois: torch.Tensor, spatial_scale: float, pooled_height: int,
    pooled_width: int, batch_size: int, channels: int, height: int, width: int,
    sampling_ratio: int,
) -> torch.Tensor:
    """Gradient of ROIAlignRotated w.r.t. its input, (batch_size, channels, height, width).

    The op is linear in its input, so autograd through the forward at any input (zeros here)
    gives the exact gradient."""
    with torch.enable_grad():
        x = torch.zeros(
            (batch_size, channels, height, width), dtype=grad.dtype, device=grad.device,
            requires_grad=True,
        )
        out = _roi_align_rotated(x, rois, spatial_scale, pooled_height, pooled_width,
                                 sampling_ratio)
        if out.numel() == 0:
            return torch.zeros_like(x).detach()
        (g,) = torch.autograd.grad(out, x, grad.reshape(out.shape))
    return g


# ---------------------------------------------------------------------------------------------
# Operator registration: torch.ops.detectron2.* (schemas of Detectron2's layers/csrc/vision.cpp)
# ---------------------------------------------------------------------------------------------
_SCHEMAS = {
    "nms_rotated": "nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor",
    "box_iou_rotated": "box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor",
    "roi_align_rotated_forward": (
        "roi_align_rotated_forward(Tensor input, Tensor rois, float spatial_scale, "
        "int pooled_height, int pooled_width, int sampling_ratio) -> Tensor"
    ),
    "roi_align_rotated_backward": (
        "roi_align_rotated_backward(Tensor grad, Tensor rois, float spatial_scale, "
        "int pooled_height, int pooled_width, int batch_size, int channels, int height, "
        "int width, int sampling_ratio) -> Tensor"
    ),
}


def _compiled_extension_installed() -> bool:
    """True if ``detectron2._C`` is Detectron2's compiled extension (not a copy of this file)."""
    try:
        spec = importlib.util.find_spec("detectron2._C")
    except (ImportError, ValueError):  # no detectron2, or a module without a spec
        return False
    return spec is not None and spec.origin is not None and not spec.origin.endswith(".py")


def _register_ops() -> Optional["torch.library.Library"]:
    """Register the rotated ops of :data:`_SCHEMAS` that are not defined yet.

    This file may be imported both as ``detectron2._C`` and as ``d2infra.ops.detectron2_c``: the
    first import registers, and its module keeps the returned Library alive. Nothing is registered
    when Detectron2's compiled extension is installed: its ``TORCH_LIBRARY(detectron2, ...)``
    defines the same operators and would fail to load after ours.

    The kernels are ``CompositeImplicitAutograd``, i.e. they run above autograd, so that the
    backward's autograd over the forward (:func:`roi_align_rotated_backward`) records its graph.
    """
    if _compiled_extension_installed():
        return None
    missing = []
    for name in _SCHEMAS:
        try:
            getattr(torch.ops.detectron2, name)
        except (AttributeError, RuntimeError):
            missing.append(name)
    if not missing:
        return None
    lib = torch.library.Library("detectron2", "FRAGMENT")
    for name in missing:
        lib.define(_SCHEMAS[name])
        lib.impl(name, globals()[name], "CompositeImplicitAutograd")
    return lib


_OPS_LIBRARY = _register_ops()
