#!/usr/bin/env python
"""Where a trained offset-bin model's boxes gain or lose: each focusing stage's bins, the decoded
boxes against smooth L1's, and the expectation decode against the argmax decode.

    python tools/offset_bin_stages.py --config-file OFFSET_BIN_CONFIG MODEL.WEIGHTS ob.pth \
        [--baseline-weights smooth_l1.pth] [--baseline-config BASELINE_CONFIG] \
        [--proposals {jitter,offset_bin,baseline}] [--max-images N] [--out DIR] [KEY VALUE ...]

On the images of ``cfg.DATASETS.TEST[0]`` both box heads see the same proposals, and only the
positive ones: a proposal is positive when its best IoU with a ground-truth box is at least
``--min-iou`` (default ``MODEL.ROI_HEADS.IOU_THRESHOLDS[-1]``, the threshold of the training's
positives); it is measured against that ground truth (max-IoU matching, as Detectron2's Matcher),
with the scores of its ground-truth class for class-specific heads. The images are resized once,
by ``INPUT`` of ``--config-file`` (the baseline's must be the same), and each model pools the boxes
from its own features. The proposals (``--proposals``):

- ``jitter`` (default): ``--per-gt`` boxes drawn around every ground-truth box (each with its own
  strength, centre shifted by up to ``--max-shift`` of the box's width and height, width and
  height scaled by up to ``--max-scale``; see :func:`jitter_boxes`), the first ones at IoU >=
  ``--min-iou``; seeded (``--seed``). They depend on neither model and are the same in every run.
  The table's first row gives their IoUs; with the defaults on the 300 images of shapes_val, 10624
  boxes at IoU quantiles 0.1 / 0.5 / 0.9 of 0.557 / 0.743 / 0.943, mean 0.746 (the boxes do not
  depend on the weights; x86_64, 2 cores, 2026-12-07, 41 s: ``python tools/offset_bin_stages.py
  --config-file configs/offset_bin/offset_bin_faster_rcnn_smallR_FPN_shapes.yaml
  --baseline-weights <a fresh Faster R-CNN> MODEL.WEIGHTS <a fresh offset-bin model>
  MODEL.DEVICE cpu``).
- ``offset_bin`` / ``baseline``: the RPN proposals of the offset-bin model / of the baseline, the
  boxes each box head sees at inference (``baseline`` needs ``--baseline-weights``).

Three measurements, on the positives:

1. per focusing stage k (section 3.2.4): the bin classification accuracy, per coordinate (dx, dy,
   dw, dh) and pooled, the predicted bin being the argmax of the stage's scores and the target bin
   that of the training (:meth:`offset_bin.OffsetBinCoder.encode`: stage 1 labels
   t* = ``get_deltas(proposal, gt)``, stage k + 1 the residual left by the representative of the
   ground-truth bin of stage k); also within one bin, the mean cross-entropy (Eq. 7) against
   log n (uniform scores), the share of targets in the two outer bins, and the share of
   coordinates whose offset left by the expectation decoding of stages 1..k-1, t* - sum_{j<k} t^j,
   lies in stage k's range (-a_k, a_k), i.e. that stage k could still correct.
2. the IoU of the decoded box (clipped to the image, as at inference) with its ground truth:
   quantiles, mean and histogram; for the proposals, the smooth-L1 model (``--baseline-weights``),
   and the offset-bin model decoded with the first k stages (k = 1..K), by expectation (Eqs. 10,
   11) and by argmax. The model's own decoding is the K-stage row of its ``EXPECTATION``.
3. per stage k, the error of each decoding of the stage's own offset against the stage's target
   (t* at stage 1, the residual r_k at stage k > 1), in units of the stage's bin width w_k; and of
   the sum of the first k stages (Eq. 11) against t*, in units of the RoI's size (dx / w, dy / h,
   and the log-ratio of the sizes for dw and dh: the offset divided by the Box2BoxTransform
   weight).

Prints three Markdown tables and writes ``offset_bin_stages.json`` (the numbers, the command, the
machine and the date) to ``--out`` (default ``OUTPUT_DIR/offset_bin_stages``). Works for
``OffsetBinROIHeads`` (Faster R-CNN); the baseline, any ``StandardROIHeads`` model.
"""
import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from train_net import Trainer, build_cfg  # noqa: E402

__all__ = ["box_head_predictions", "iou_summary", "jitter_boxes", "main", "match_positives",
           "measure_baseline", "measure_offset_bin", "summarize"]

BASELINE = "configs/baselines/faster_rcnn_smallR_FPN_shapes.yaml"
COORDS = ("dx", "dy", "dw", "dh")
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
THRESHOLDS = (0.5, 0.7, 0.8, 0.9)
HIST_BINS = 20  # IoU histograms over [0, 1] in steps of 0.05


def _standard_heads(model, role: str):
    from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads

    heads = getattr(model, "roi_heads", None)
    if not isinstance(heads, StandardROIHeads) or isinstance(heads, CascadeROIHeads):
        raise ValueError(f"tools/offset_bin_stages.py needs a {role} whose ROI heads are "
                         f"StandardROIHeads (not a cascade); this config builds "
                         f"{type(heads).__name__} (MODEL.ROI_HEADS.NAME)")
    return heads


def _offset_bin_predictor(model):
    from offset_bin import OffsetBinOutputLayers

    predictor = _standard_heads(model, "offset-bin model").box_predictor
    if not isinstance(predictor, OffsetBinOutputLayers):
        raise ValueError(f"--config-file must build an OffsetBinOutputLayers box predictor "
                         f"(MODEL.ROI_BOX_HEAD.PREDICTOR); it builds {type(predictor).__name__}")
    return predictor


# ------------------------------------------------------------------------------------------------
# Proposals
# ------------------------------------------------------------------------------------------------
def jitter_boxes(gt_boxes: Tensor, image_size: Tuple[int, int], per_gt: int,
                 generator: torch.Generator, min_iou: float = 0.5, max_shift: float = 0.4,
                 max_scale: float = 1.6) -> Tensor:
    """Up to ``per_gt`` boxes around each ground-truth box, each at IoU >= ``min_iou`` with it.

    For each box, ``10 * per_gt`` candidates are drawn, each with a strength s uniform in [0, 1]:
    the centre moved by s * u * max_shift times the box's width (height), the width (height)
    multiplied by ``max_scale ** (s * v)``, u and v uniform in [-1, 1] and drawn per axis; the
    candidate clipped to ``image_size`` (h, w). The first ``per_gt`` candidates at IoU >=
    ``min_iou`` with their box are kept, in drawing order.

    Returns:
        (M, 4) XYXY boxes, M <= G * per_gt, grouped by ground-truth box.
    """
    from detectron2.structures import Boxes
    from detectron2.structures.boxes import matched_pairwise_iou

    g, n = len(gt_boxes), 10 * per_gt
    if g == 0 or per_gt <= 0:
        return gt_boxes.new_zeros((0, 4))
    gt = gt_boxes.float().cpu()
    centre, size = (gt[:, :2] + gt[:, 2:]) / 2, gt[:, 2:] - gt[:, :2]
    strength = torch.rand(g, n, 1, generator=generator)
    shift = strength * (torch.rand(g, n, 2, generator=generator) * 2 - 1) * max_shift
    shift = shift * size[:, None]
    scale = max_scale ** (strength * (torch.rand(g, n, 2, generator=generator) * 2 - 1))
    c, s = centre[:, None] + shift, size[:, None] * scale
    boxes = Boxes(torch.cat([c - s / 2, c + s / 2], dim=-1).reshape(-1, 4))
    boxes.clip(image_size)
    ious = matched_pairwise_iou(boxes, Boxes(gt.repeat_interleave(n, dim=0))).view(g, n)
    ok = ious >= min_iou
    keep = ok & (ok.cumsum(dim=1) <= per_gt)
    return boxes.tensor.view(g, n, 4)[keep].to(gt_boxes.device)


def match_positives(proposal_boxes: Tensor, gt_boxes: Tensor,
                    min_iou: float) -> Tuple[Tensor, Tensor, Tensor]:
    """The proposals whose best IoU with a ground-truth box is >= ``min_iou``.

    Returns:
        (indices of the positive proposals, index of each one's best ground truth, that IoU).
    """
    from detectron2.structures import Boxes, pairwise_iou

    empty = torch.zeros(0, dtype=torch.long, device=proposal_boxes.device)
    if len(gt_boxes) == 0 or len(proposal_boxes) == 0:
        return empty, empty, proposal_boxes.new_zeros(0)
    best, gt_index = pairwise_iou(Boxes(proposal_boxes), Boxes(gt_boxes)).max(dim=1)
    keep = torch.nonzero(best >= min_iou).flatten()
    return keep, gt_index[keep], best[keep]


# ------------------------------------------------------------------------------------------------
# Measurements on one image's positives
# ------------------------------------------------------------------------------------------------
def box_head_predictions(heads, features: Dict[str, Tensor], proposal_boxes: Tensor):
    """The box predictor's outputs for the boxes of one image, as ``_forward_box`` computes them
    (pooler, box head, predictor)."""
    from detectron2.structures import Boxes

    x = heads.box_pooler([features[f] for f in heads.box_in_features], [Boxes(proposal_boxes)])
    return heads.box_predictor(heads.box_head(x))


def _ious(boxes: Tensor, gt_boxes: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """IoU of each box, clipped to the image (as ``fast_rcnn_inference``), with its row's gt."""
    from detectron2.structures import Boxes
    from detectron2.structures.boxes import matched_pairwise_iou

    b = Boxes(boxes.float().clone())
    b.clip(image_size)
    return matched_pairwise_iou(b, Boxes(gt_boxes.float()))


@torch.no_grad()
def measure_offset_bin(predictor, predictions, proposal_boxes: Tensor, gt_boxes: Tensor,
                       gt_classes: Tensor, image_size: Tuple[int, int]) -> Dict[str, Tensor]:
    """Per positive RoI, the bins, decodings and IoUs of an ``OffsetBinOutputLayers``.

    Args:
        predictions: the predictor's outputs on the P rows of ``proposal_boxes``.
        proposal_boxes, gt_boxes: (P, 4), row i's proposal and its ground truth.
        gt_classes: (P,) the ground truth's class (selects class-specific bin scores).
        image_size: (h, w), to clip the decoded boxes.

    Returns (K focusing stages, n bins), on the CPU:
        ``label``, ``pred`` (P, 4, K): target bin (:meth:`OffsetBinCoder.encode`) and argmax bin;
        ``ce`` (P, 4, K): Eq. 7; ``stage_err_exp``, ``stage_err_arg`` (P, 4, K): |t^k - r_k| / w_k
        of the expectation (Eq. 10) and argmax decodings of stage k, r_k its target;
        ``sum_err_exp``, ``sum_err_arg`` (P, 4, K): |sum_{j<=k} t^j - t*| / (Box2BoxTransform
        weight), the first k stages' offset (Eq. 11) in RoI units;
        ``in_range`` (P, 4, K): whether what stages 1..k-1 leave of t* (expectation decoding)
        lies in stage k's range (-a_k, a_k);
        ``iou_exp``, ``iou_arg`` (P, K): IoU with the gt of the box decoded from the first k stages.
    """
    coder, transform = predictor.coder, predictor.box2box_transform
    _, bin_logits = predictions
    p = len(proposal_boxes)
    logits = predictor.bin_logits_view(bin_logits).float()  # (P, C or 1, 4, K, n)
    rows = torch.arange(p, device=logits.device)
    cls = torch.zeros_like(gt_classes) if logits.shape[1] == 1 else gt_classes
    logits = logits[rows, cls]  # (P, 4, K, n)
    probs = logits.softmax(dim=-1)
    t_star = transform.get_deltas(proposal_boxes.float(), gt_boxes.float())  # (P, 4)
    label = coder.encode(t_star)  # (P, 4, K)
    weights = torch.tensor(transform.weights, dtype=t_star.dtype, device=t_star.device)
    out = {"label": label, "pred": probs.argmax(dim=-1), "ce": coder.loss(logits, label)}
    residual = t_star
    sums = {"exp": torch.zeros_like(t_star), "arg": torch.zeros_like(t_star)}
    keys = ("stage_err_exp", "stage_err_arg", "sum_err_exp", "sum_err_arg", "in_range",
            "iou_exp", "iou_arg")
    for key in keys:
        out[key] = []
    for k in range(coder.num_stages):
        out["in_range"].append((t_star - sums["exp"]).abs() < coder.ranges[k])
        for name, expectation in (("exp", True), ("arg", False)):
            t_k = coder.decode_stage(probs[:, :, k], k, expectation)  # (P, 4)
            out[f"stage_err_{name}"].append((t_k - residual).abs() / coder.widths[k])
            sums[name] = sums[name] + t_k  # Eq. 11
            out[f"sum_err_{name}"].append((sums[name] - t_star).abs() / weights)
            boxes = transform.apply_deltas(sums[name], proposal_boxes.float())
            out[f"iou_{name}"].append(_ious(boxes, gt_boxes, image_size))
        residual = residual - coder.representatives(k, t_star.device, t_star.dtype)[label[:, :, k]]
    for key in keys:
        out[key] = torch.stack(out[key], dim=-1)
    return {k: v.detach().cpu() for k, v in out.items()}


@torch.no_grad()
def measure_baseline(predictor, predictions, proposal_boxes: Tensor, gt_boxes: Tensor,
                     gt_classes: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """(P,) IoU with its ground truth of each RoI's box for its ground-truth class
    (``predict_boxes_for_gt_classes``), clipped to the image; on the CPU."""
    from detectron2.structures import Boxes, Instances

    inst = Instances(image_size)
    inst.proposal_boxes = Boxes(proposal_boxes)
    inst.gt_classes = gt_classes
    (boxes,) = predictor.predict_boxes_for_gt_classes(predictions, [inst])
    return _ious(boxes, gt_boxes, image_size).cpu()


# ------------------------------------------------------------------------------------------------
# Summaries
# ------------------------------------------------------------------------------------------------
def iou_summary(ious: Tensor) -> Dict:
    """Count, mean, quantiles (linear interpolation, as ``torch.quantile``), the share at or above
    each of THRESHOLDS, and a histogram over [0, 1] in HIST_BINS equal bins (1.0 in the last)."""
    ious = ious.double().flatten()
    if ious.numel() == 0:
        nan = float("nan")
        return {"n": 0, "mean": nan, "quantiles": {str(q): nan for q in QUANTILES},
                "at_least": {str(t): nan for t in THRESHOLDS}, "histogram": [0] * HIST_BINS}
    q = torch.quantile(ious, torch.tensor(QUANTILES, dtype=ious.dtype))
    index = (ious * HIST_BINS).floor().clamp(0, HIST_BINS - 1).long()
    return {"n": ious.numel(), "mean": float(ious.mean()),
            "quantiles": {str(k): float(v) for k, v in zip(QUANTILES, q)},
            "at_least": {str(t): float((ious >= t).double().mean()) for t in THRESHOLDS},
            "histogram": torch.bincount(index, minlength=HIST_BINS).tolist()}


def _mean(x: Tensor) -> float:
    return float(x.double().mean()) if x.numel() else float("nan")


def _median(x: Tensor) -> float:
    return float(torch.quantile(x.double().flatten(), 0.5)) if x.numel() else float("nan")


def summarize(coder, rows: Dict[str, Tensor], proposal_ious: Tensor,
              baseline_ious: Optional[Tensor], expectation: bool) -> Dict:
    """The numbers of the three tables from the per-RoI values of :func:`measure_offset_bin`
    (concatenated over the images), the proposals' IoUs and the baseline's (or None)."""
    n = coder.num_bins
    label, pred = rows["label"], rows["pred"]
    stages = []
    for k in range(coder.num_stages):
        lk, pk = label[:, :, k], pred[:, :, k]
        stages.append({
            "stage": k + 1, "range": coder.ranges[k], "width": coder.widths[k],
            "accuracy": {c: _mean((lk[:, i] == pk[:, i]).double()) for i, c in enumerate(COORDS)},
            "accuracy_all": _mean((lk == pk).double()),
            "within_one_bin": _mean(((lk - pk).abs() <= 1).double()),
            "cross_entropy": _mean(rows["ce"][:, :, k]), "uniform_cross_entropy": math.log(n),
            "outer_bin_targets": _mean(((lk == 0) | (lk == n - 1)).double()),
            "left_in_range": _mean(rows["in_range"][:, :, k].double()),
            "stage_error": {
                name: {"mean": _mean(rows[f"stage_err_{name}"][:, :, k]),
                       "median": _median(rows[f"stage_err_{name}"][:, :, k]),
                       "per_coordinate": {c: _mean(rows[f"stage_err_{name}"][:, i, k])
                                          for i, c in enumerate(COORDS)}}
                for name in ("exp", "arg")},
            "sum_error_roi_units": {
                name: {"mean": _mean(rows[f"sum_err_{name}"][:, :, k]),
                       "median": _median(rows[f"sum_err_{name}"][:, :, k]),
                       "per_coordinate": {c: _mean(rows[f"sum_err_{name}"][:, i, k])
                                          for i, c in enumerate(COORDS)}}
                for name in ("exp", "arg")},
        })
    ious = {"proposals": iou_summary(proposal_ious)}
    if baseline_ious is not None:
        ious["smooth_l1"] = iou_summary(baseline_ious)
    for k in range(coder.num_stages):
        for name in ("exp", "arg"):
            ious[f"offset_bin_{name}_stages1-{k + 1}"] = iou_summary(rows[f"iou_{name}"][:, k])
    model_row = f"offset_bin_{'exp' if expectation else 'arg'}_stages1-{coder.num_stages}"
    return {"positives": int(label.shape[0]), "stages": stages, "ious": ious,
            "model_decoding": model_row}


def _tables(summary: Dict) -> str:
    lines = [f"\nBin classification of the {summary['positives']} positive RoIs, per focusing "
             "stage (target: the training's bin):\n",
             "| stage | a_k | w_k | acc dx | acc dy | acc dw | acc dh | acc all | within 1 bin | "
             "cross-entropy (uniform) | targets in outer bins | t* left in (-a_k, a_k) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary["stages"]:
        acc = " | ".join(f"{s['accuracy'][c]:.3f}" for c in COORDS)
        lines.append(f"| {s['stage']} | {s['range']:.4g} | {s['width']:.4g} | {acc} | "
                     f"{s['accuracy_all']:.3f} | {s['within_one_bin']:.3f} | "
                     f"{s['cross_entropy']:.3f} ({s['uniform_cross_entropy']:.3f}) | "
                     f"{s['outer_bin_targets']:.3f} | {s['left_in_range']:.3f} |")
    lines += ["\nIoU with its ground truth of the decoded box (clipped to the image):\n",
              "| boxes | n | mean | q10 | q25 | median | q75 | q90 | "
              + " | ".join(f">= {t}" for t in THRESHOLDS) + " |",
              "|---|---|---|---|---|---|---|---|" + "---|" * len(THRESHOLDS)]
    for name, r in summary["ious"].items():
        label = name + (" (the model's)" if name == summary["model_decoding"] else "")
        q = " | ".join(f"{r['quantiles'][str(x)]:.3f}" for x in QUANTILES)
        t = " | ".join(f"{r['at_least'][str(x)]:.3f}" for x in THRESHOLDS)
        lines.append(f"| {label} | {r['n']} | {r['mean']:.3f} | {q} | {t} |")
    lines += ["\nDecoding errors: stage k's own offset against its target (t* at stage 1, the "
              "residual r_k after), in bin widths w_k; the sum of stages 1..k (Eq. 11) against "
              "t*, in RoI units x 100 (dx/w, dy/h, log-ratio of w, h). Mean (median):\n",
              "| stage | expectation, w_k | argmax, w_k | stages 1..k expectation, RoI % | "
              "stages 1..k argmax, RoI % |", "|---|---|---|---|---|"]
    for s in summary["stages"]:
        e, a = s["stage_error"]["exp"], s["stage_error"]["arg"]
        se, sa = s["sum_error_roi_units"]["exp"], s["sum_error_roi_units"]["arg"]
        lines.append(f"| {s['stage']} | {e['mean']:.3f} ({e['median']:.3f}) | "
                     f"{a['mean']:.3f} ({a['median']:.3f}) | "
                     f"{100 * se['mean']:.2f} ({100 * se['median']:.2f}) | "
                     f"{100 * sa['mean']:.2f} ({100 * sa['median']:.2f}) |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------
def _load(cfg, role: str):
    from detectron2.checkpoint import DetectionCheckpointer

    if not cfg.MODEL.WEIGHTS or not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise FileNotFoundError(f"{role} {cfg.MODEL.WEIGHTS!r} does not exist: this tool "
                                f"measures trained weights")
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def _mapper(cfg):
    """Detectron2's DatasetMapper with the test resizing but the annotations kept (its training
    path, without the training augmentations): ground truth at the network's input size."""
    from detectron2.data import DatasetMapper
    from detectron2.data import detection_utils as utils

    return DatasetMapper(True, augmentations=utils.build_augmentation(cfg, False),
                         image_format=cfg.INPUT.FORMAT)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Measures, prints the three tables, writes the json; returns the json's content."""
    from detectron2.data import DatasetCatalog

    from d2infra.data import ensure_generated, register_coco_format_datasets

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="the offset-bin model's config")
    p.add_argument("--baseline-config", default=os.path.join(ROOT, BASELINE),
                   help=f"the smooth-L1 model's config (default {BASELINE})")
    p.add_argument("--baseline-weights", default=None,
                   help="the smooth-L1 model's weights; without them, no smooth-L1 row")
    p.add_argument("--proposals", choices=("jitter", "offset_bin", "baseline"), default="jitter")
    p.add_argument("--min-iou", type=float, default=None,
                   help="positives' IoU (default MODEL.ROI_HEADS.IOU_THRESHOLDS[-1])")
    p.add_argument("--per-gt", type=int, default=8, help="jittered boxes per ground truth")
    p.add_argument("--max-shift", type=float, default=0.4)
    p.add_argument("--max-scale", type=float, default=1.6)
    p.add_argument("--seed", type=int, default=0, help="of the jittered boxes")
    p.add_argument("--max-images", type=int, default=None, help="the first N images only")
    p.add_argument("--out", default=None,
                   help="where the json goes (default OUTPUT_DIR/offset_bin_stages)")
    p.add_argument("opts", nargs=argparse.REMAINDER,
                   help="KEY VALUE pairs for both configs, MODEL.WEIGHTS the offset-bin model's")
    args = p.parse_args(argv)
    late = [o for o in args.opts if o.startswith("--")]
    if late:  # argparse reads everything after the first KEY as a KEY VALUE pair
        raise ValueError(f"{late[0]} comes after the KEY VALUE pairs: put the options first")
    if args.per_gt < 1 or args.max_shift < 0 or args.max_scale < 1:
        raise ValueError("--per-gt must be >= 1, --max-shift >= 0 and --max-scale >= 1")
    if args.proposals == "baseline" and args.baseline_weights is None:
        raise ValueError("--proposals baseline needs --baseline-weights")
    cfg = build_cfg(args.config_file, args.opts)
    model = _load(cfg, "MODEL.WEIGHTS")
    predictor = _offset_bin_predictor(model)
    baseline = None
    if args.baseline_weights is not None:
        bcfg = build_cfg(args.baseline_config,
                         list(args.opts) + ["MODEL.WEIGHTS", args.baseline_weights])
        for key in ("MIN_SIZE_TEST", "MAX_SIZE_TEST", "FORMAT"):  # one image for both models
            if bcfg.INPUT[key] != cfg.INPUT[key]:
                raise ValueError(f"INPUT.{key} differs: {cfg.INPUT[key]!r} in --config-file, "
                                 f"{bcfg.INPUT[key]!r} in --baseline-config; both models see "
                                 f"the same resized images")
        baseline = _load(bcfg, "--baseline-weights")
        _standard_heads(baseline, "baseline")
    min_iou = args.min_iou if args.min_iou is not None else cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[-1]

    register_coco_format_datasets(cfg)
    dataset = cfg.DATASETS.TEST[0]
    ensure_generated(dataset)
    dicts = DatasetCatalog.get(dataset)[:args.max_images]
    mapper = _mapper(cfg)
    generator = torch.Generator().manual_seed(args.seed)
    rows: Dict[str, List[Tensor]] = {}
    proposal_ious, baseline_ious = [], []
    device = model.device
    with torch.no_grad():
        for d in dicts:
            inputs = [mapper(d)]
            gt = inputs[0]["instances"].to(device)
            legs = [(model, model.roi_heads)] + ([(baseline, baseline.roi_heads)]
                                                 if baseline is not None else [])
            images = [m.preprocess_image(inputs) for m, _ in legs]
            features = [m.backbone(im.tensor) for (m, _), im in zip(legs, images)]
            sizes = [im.image_sizes[0] for im in images]
            image_size = sizes[0]
            if args.proposals == "jitter":
                boxes = jitter_boxes(gt.gt_boxes.tensor, image_size, args.per_gt, generator,
                                     min_iou, args.max_shift, args.max_scale)
            else:
                i = 0 if args.proposals == "offset_bin" else 1
                proposals, _ = legs[i][0].proposal_generator(images[i], features[i], None)
                boxes = proposals[0].proposal_boxes.tensor
            keep, gt_index, best = match_positives(boxes, gt.gt_boxes.tensor, min_iou)
            if len(keep) == 0:
                continue
            boxes, gt_boxes = boxes[keep], gt.gt_boxes.tensor[gt_index]
            gt_classes = gt.gt_classes[gt_index]
            proposal_ious.append(best.cpu())
            predictions = box_head_predictions(model.roi_heads, features[0], boxes)
            for k, v in measure_offset_bin(predictor, predictions, boxes, gt_boxes, gt_classes,
                                           image_size).items():
                rows.setdefault(k, []).append(v)
            if baseline is not None:
                predictions = box_head_predictions(baseline.roi_heads, features[1], boxes)
                baseline_ious.append(measure_baseline(baseline.roi_heads.box_predictor,
                                                      predictions, boxes, gt_boxes, gt_classes,
                                                      sizes[1]))
    coder = predictor.coder
    if not rows:  # no positive RoI: empty tensors of the right shapes
        empty = torch.zeros(0, 4, coder.num_stages)
        rows = {k: [empty] for k in ("label", "pred", "ce", "stage_err_exp", "stage_err_arg",
                                     "sum_err_exp", "sum_err_arg", "in_range")}
        rows.update({k: [torch.zeros(0, coder.num_stages)] for k in ("iou_exp", "iou_arg")})
    summary = summarize(coder, {k: torch.cat(v) for k, v in rows.items()},
                        torch.cat(proposal_ious) if proposal_ious else torch.zeros(0),
                        (torch.cat(baseline_ious) if baseline_ious else torch.zeros(0))
                        if baseline is not None else None, predictor.expectation)
    command = "python tools/offset_bin_stages.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    result = {
        "command": command,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {device}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "weights": cfg.MODEL.WEIGHTS, "config": args.config_file,
        "baseline_weights": args.baseline_weights,
        "baseline_config": args.baseline_config if baseline is not None else None,
        "dataset": dataset, "images": len(dicts), "proposals": args.proposals,
        "min_iou": min_iou, "coder": repr(coder), "expectation": predictor.expectation,
        **({"jitter": {"per_gt": args.per_gt, "max_shift": args.max_shift,
                       "max_scale": args.max_scale, "seed": args.seed}}
           if args.proposals == "jitter" else {}),
        **summary,
    }
    print(f"\nOffset-bin model {cfg.MODEL.WEIGHTS} ({coder}, "
          f"{'expectation' if predictor.expectation else 'argmax'} decoding); smooth L1: "
          f"{args.baseline_weights or 'not given'}; {len(dicts)} images of {dataset}; proposals: "
          f"{args.proposals}; positives at IoU >= {min_iou}.")
    print(_tables(summary))
    out = args.out or os.path.join(cfg.OUTPUT_DIR, "offset_bin_stages")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "offset_bin_stages.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
