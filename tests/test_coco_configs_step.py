"""Every paper-scale (COCO) config trains: one real training step of the model each
``configs/**/*_coco.yaml`` builds (the ``Base-*`` files are trained through their variants), on
the CPU, without pretrained weights, on a hand-made batch of two small images (no COCO on disk).

The step is ``AMPTrainer``'s (``SOLVER.AMP.ENABLED``, as the GPU users train), under CPU bfloat16
autocast with CUDA's autocast rules (tests/amp_emulation.py): ``model(batched_inputs)`` in train
mode inside an ``EventStorage`` and the sum of the losses under autocast, that sum backward once,
one step of the optimizer ``train_net.py`` builds (so ``SOLVER.CLIP_GRADIENTS`` of the GHM configs
runs too). Checked: the loss dict has exactly the keys the method's name promises (written out
below from the papers' heads, not read from the model), every loss is a finite float32 scalar,
every gradient is finite, the step changes the weights of the heads, and this project's code
passes half tensors only to the dtype-sensitive ops tests/test_amp.py checks directly
(``amp_emulation.HALF_SITES``). (Float32 steps of the same heads: the embedded configs', in the
other tests.)

The backbone is the config's at depth 50, for time: R-50 as it is, R-101 as R-50, X-101 32x8d as
ResNeXt-50 32x8d (its groups and widths kept); tests/test_configs.py builds the depth-101 models.
The FPN levels are untouched and the images small (96 x 128 px: the strides-64 and -128 levels are
2 x 2 and 1 x 1 cells), so the losses run as at full scale with far fewer anchors and proposals.
96 px high for a margin: at 64 x 64 px the stride-64 level is 1 x 1, and the 3x3 stride-2
convolution from it to stride 128 then gets a weight gradient that PyTorch's CPU bfloat16
convolution makes non-finite in about a third of runs, not reproducibly (30 of 100 seeded runs of
that convolution alone, a different set when run again; none at 1 x 2 or 2 x 2). Seeded, the 35
steps took 42 s here against 44 s for the float32 steps at 64 x 96 (x86_64, 2 cores, under load,
2026-12-07: ``pytest tests/test_coco_configs_step.py``). Ground-truth masks are
polygons, as COCO's are, and not rectangles (an L shape, a triangle, a hexagon), so that a mask
target cut from the mask differs from one cut from its box.
"""
import glob
import math
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from amp_emulation import HALF_SITES, cuda_like_autocast
from d2infra.engine import build_optimizer
from train_net import build_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_CONFIGS = sorted(
    os.path.relpath(p, os.path.join(REPO, "configs"))
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*_coco.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-"))
HEIGHT, WIDTH = 96, 128


def stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def test_every_method_has_a_coco_config():
    names = {stem(p) for p in COCO_CONFIGS}
    for name in ("faster_rcnn_pisa", "faster_rcnn_ohem", "faster_rcnn_ohem_mmdet",
                 "faster_rcnn_iou_balanced", "retinanet_ghmc", "retinanet_ghm",
                 "iou_aware_fcos", "iou_aware_retinanet", "offset_bin_faster_rcnn",
                 "r3cnn_naive", "r3cnn_L"):
        assert f"{name}_R_50_FPN_1x_coco" in names, name


def expected_losses(name: str, cfg) -> set:
    """The loss keys of the method ``name`` says: RPN + box head (+ mask) of the two-stage
    detectors, per cascade stage (``_stage{s}``) or per R^3-CNN loop (``_loop{t}``); RetinaNet's or
    FCOS's, plus the IoU branch's ``loss_iou`` (IoU-aware, Eq. 3); offset bins replace
    ``loss_box_reg`` by one ``loss_bin_stage{k}`` per focusing stage (Eq. 9, 11); PISA adds CARL."""
    if "fcos" in name:
        keys = {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
        return keys | {"loss_iou"} if "iou_aware" in name else keys
    if "retinanet" in name:
        keys = {"loss_cls", "loss_box_reg"}
        return keys | {"loss_iou"} if "iou_aware" in name else keys
    box = {"loss_cls"}
    if "offset_bin" in name:
        box |= {f"loss_bin_stage{k}" for k in range(cfg.MODEL.OFFSET_BIN.NUM_STAGES)}
    else:
        box |= {"loss_box_reg"}
    if "pisa" in name:
        box |= {"loss_carl"}
    mask = {"loss_mask"} if ("mask" in name or "r3cnn" in name) else set()
    if "cascade" in name:
        stages = range(len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS))
        heads = {f"{k}_stage{s}" for k in box for s in stages} | mask
    elif "r3cnn" in name:
        loops = range(len(cfg.MODEL.R3CNN.IOU_THRESHOLDS))
        heads = {f"{k}_loop{t}" for k in box | mask for t in loops}
        if "r3cnn_L_" in name:
            heads |= {"loss_maskiou"}
    else:
        heads = box | mask
    return {"loss_rpn_cls", "loss_rpn_loc"} | heads


def _instances(boxes, classes, polygons) -> Instances:
    inst = Instances((HEIGHT, WIDTH))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    inst.gt_masks = PolygonMasks([[[float(v) for v in p]] for p in polygons])
    return inst


def batch():
    """Two images of 96 x 128 px, objects of 40-50 px (the smallest COCO anchors are 32 px), COCO
    class ids; each box is its polygon's bounding box."""
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, HEIGHT, WIDTH), generator=g).to(torch.uint8)
              for _ in range(2)]
    ell = [8, 8, 24, 8, 24, 40, 48, 40, 48, 56, 8, 56]  # an L in [8, 8, 48, 56]
    triangle = [50, 50, 90, 50, 70, 10]  # in [50, 10, 90, 50]
    hexagon = [32, 12, 58, 12, 70, 36, 58, 60, 32, 60, 20, 36]  # in [20, 12, 70, 60]
    first = _instances([[8, 8, 48, 56], [50, 10, 90, 50]], [3, 17], [ell, triangle])
    second = _instances([[20, 12, 70, 60]], [0], [hexagon])
    return [{"image": im, "height": HEIGHT, "width": WIDTH, "instances": inst}
            for im, inst in zip(images, (first, second))]


@pytest.mark.parametrize("path", COCO_CONFIGS, ids=stem)
def test_one_training_step(path):
    name = stem(path)
    # The batch is made here at its size, so the INPUT sizes (a data-loader setting) stay. Depth 50
    # for time: R-101 becomes 32x8d the ResNeXt-50 32x8d of its groups and widths.
    cfg = build_cfg(os.path.join(REPO, "configs", path), [
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "50"])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    head = model.roi_heads if hasattr(model, "roi_heads") else model.head
    before = [p.detach().clone() for p in head.parameters() if p.requires_grad]

    with EventStorage(0):
        with cuda_like_autocast() as rules:  # as AMPTrainer: the forward and the losses' sum
            losses = model(batch())
            total = sum(losses.values())
        assert set(losses) == expected_losses(name, cfg)
        for key, value in losses.items():
            assert value.dim() == 0 and value.dtype == torch.float32, key
            assert math.isfinite(value.item()) and value.item() >= 0, key
        assert rules.half_sites() <= set(HALF_SITES), rules.half_sites() - set(HALF_SITES)
        optimizer.zero_grad()
        total.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        optimizer.step()

    after = [p.detach() for p in head.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
