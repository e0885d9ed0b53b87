"""COCO AP of a trained model as the suite's tables report it: COCOEvaluator's AP, AP50, AP75 and
mask AP, and AP at IoU 0.6, 0.7, 0.8 and 0.9 recomputed from pycocotools' precision array."""
import json
import math
import os
from typing import Dict, Optional, Sequence

import numpy as np

__all__ = ["COCO_IOU_THRESHOLDS", "EXTRA_IOUS", "METRICS", "ap_at_iou", "box_ap_at_ious",
           "metrics_from_results"]

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
# AP at these IoUs is reported besides COCO's AP, AP50, AP75 (the papers' tables).
EXTRA_IOUS = (0.6, 0.7, 0.8, 0.9)
METRICS = ("AP", "AP50", "AP75", "AP60", "AP70", "AP80", "AP90", "mask_AP")


def ap_at_iou(coco_eval_or_precision, iou: float, iou_thresholds: Optional[Sequence[float]] = None,
              area_index: int = 0, max_dets_index: int = -1) -> float:
    """AP (in %) at IoU threshold ``iou``, from pycocotools.

    Args:
        coco_eval_or_precision: a ``COCOeval`` after ``accumulate()``, or its
            ``eval["precision"]`` array of shape (T IoU thresholds, R recall points, K classes,
            A area ranges, M maxDets), where -1 marks an empty cell (a class without ground truth).
        iou: one of the IoU thresholds of the array (COCO's are 0.5:0.05:0.95).
        iou_thresholds: the T thresholds of a bare array (default COCO's); read from the COCOeval's
            ``params.iouThrs`` otherwise.
        area_index, max_dets_index: area range "all" (0) and the largest maxDets (-1), as COCO's
            AP.

    Returns:
        the mean of the precision over recall points and classes, x100, as COCOeval's summarize()
        does; NaN when no class has ground truth.
    """
    if hasattr(coco_eval_or_precision, "eval"):
        precision = coco_eval_or_precision.eval["precision"]
        thresholds = coco_eval_or_precision.params.iouThrs
    else:
        precision = np.asarray(coco_eval_or_precision)
        thresholds = COCO_IOU_THRESHOLDS if iou_thresholds is None else iou_thresholds
    thresholds = np.asarray(thresholds, dtype=np.float64)
    matches = np.where(np.isclose(thresholds, iou, atol=1e-6))[0]
    if len(matches) == 0:
        raise ValueError(f"IoU {iou} is not one of the thresholds {thresholds.tolist()}")
    p = precision[matches[0], :, :, area_index, max_dets_index]
    p = p[p > -1]
    return float(p.mean() * 100) if p.size else float("nan")


def box_ap_at_ious(results_json: str, gt_json: str, ious: Sequence[float] = EXTRA_IOUS,
                   max_dets: int = 100) -> Dict[str, float]:
    """Box AP at each of ``ious`` (keys "AP60" ...) and at 0.5 ("AP50"), from a COCO results file
    (``coco_instances_results.json`` of Detectron2's COCOEvaluator) and the ground-truth json.
    No detection at all gives 0."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = [f"AP{int(round(t * 100))}" for t in (0.5, *ious)]
    with open(results_json) as f:
        dets = json.load(f)
    if not dets:
        return {n: 0.0 for n in names}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        coco_eval = COCOeval(gt, gt.loadRes(dets), "bbox")
        coco_eval.params.maxDets = [1, 10, max_dets]
        coco_eval.evaluate()
        coco_eval.accumulate()
    return {n: ap_at_iou(coco_eval, t) for n, t in zip(names, (0.5, *ious))}


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def metrics_from_results(results: dict, output_dir: str, test_dataset: str,
                         max_dets: int) -> dict:
    """The table's metrics from Trainer.test's results, and AP at 0.6..0.9 recomputed with
    :func:`ap_at_iou` from COCOEvaluator's results file (checked against the loc_quality ones)."""
    from detectron2.data import MetadataCatalog

    bbox = results.get("bbox", {})
    out = {k: _finite(bbox.get(k)) for k in ("AP", "AP50", "AP75")}
    # COCOEvaluator reports NaN when a model made no detection: its AP is 0.
    out = {k: (0.0 if v is None else v) for k, v in out.items()}
    res_file = os.path.join(output_dir, "inference", test_dataset, "coco_instances_results.json")
    gt_json = MetadataCatalog.get(test_dataset).json_file
    ours = box_ap_at_ious(res_file, gt_json, max_dets=max_dets)
    for k in ("AP60", "AP70", "AP80", "AP90"):
        out[k] = _finite(ours[k])
    loc = results.get("loc_quality", {})
    out["check_max_abs_diff_loc_quality"] = max(
        [abs(ours[k] - loc[k]) for k in ("AP60", "AP70", "AP80", "AP90")
         if k in loc and math.isfinite(loc[k]) and math.isfinite(ours[k])] or [0.0])
    out["mask_AP"] = _finite(results["segm"].get("AP", float("nan"))) if "segm" in results else None
    if "segm" in results and out["mask_AP"] is None:
        out["mask_AP"] = 0.0
    with open(res_file) as f:
        out["num_detections"] = len(json.load(f))
    for k in ("pearson", "spearman"):
        if k in loc:
            out[f"score_iou_{k}"] = _finite(loc[k])
    return out
