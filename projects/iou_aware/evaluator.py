"""An evaluator of what the IoU-aware paper is about: whether a detector's confidence ranks its boxes
by localization accuracy. Works for any detector that outputs ``Instances`` with ``pred_boxes``,
``scores`` and ``pred_classes``.

It reports, for the detections matched to a ground truth (greedy in score order, per image and class,
IoU >= 0.5, as COCO matches at that threshold), the Pearson and Spearman correlation between the
detection score and the IoU with its ground truth; and box AP at IoU 0.5, 0.6, 0.7, 0.8 and 0.9
(Table 4), read from COCOeval's precision array (Detectron2's C++ COCOeval where its compiled ops
are installed, pycocotools' otherwise: :func:`d2infra.evaluation.coco_eval_class`).
"""
import contextlib
import copy
import io
import itertools
import logging
import os
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO

from detectron2.data import MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from d2infra.evaluation import coco_eval_class

__all__ = [
    "LocalizationQualityEvaluator",
    "build_localization_evaluator",
    "pearson",
    "spearman",
    "greedy_match",
]

logger = logging.getLogger(__name__)

# The IoU thresholds of Table 4.
AP_IOU_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's correlation coefficient; NaN with fewer than 2 points or a constant input."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    if denom == 0:
        return float("nan")
    return float((dx * dy).sum() / denom)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    start = 0
    while start < len(x):
        end = start
        while end + 1 < len(x) and sorted_x[end + 1] == sorted_x[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's on the ranks (ties get average ranks)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return pearson(_average_ranks(x), _average_ranks(y))


def _iou_xywh(dets: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """(D, G) IoU of XYWH boxes (areas w * h, as COCO computes them)."""
    d = np.asarray(dets, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(gts, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(d[:, None, :2], g[None, :, :2])
    rb = np.minimum(d[:, None, :2] + d[:, None, 2:], g[None, :, :2] + g[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = (d[:, 2] * d[:, 3])[:, None] + (g[:, 2] * g[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def greedy_match(
    det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray, iou_thresh: float = 0.5
) -> List[tuple]:
    """Greedy matching of one image and class: detections in descending score order each take the
    still-unmatched ground truth of highest IoU, if that IoU >= ``iou_thresh``.

    Args:
        det_boxes: (D, 4) XYWH; det_scores: (D,); gt_boxes: (G, 4) XYWH.

    Returns:
        A list of (detection index, ground-truth index, IoU) for the matched detections.
    """
    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        return []
    ious = _iou_xywh(det_boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    matches = []
    for d in np.argsort(-np.asarray(det_scores), kind="mergesort"):
        candidates = np.where(taken, -1.0, ious[d])
        g = int(candidates.argmax())
        if candidates[g] >= iou_thresh:
            taken[g] = True
            matches.append((int(d), g, float(ious[d, g])))
    return matches


class LocalizationQualityEvaluator(DatasetEvaluator):
    """Confidence-IoU correlation of matched detections and AP at IoU 0.5:0.1:0.9 (Table 4).

    Results (under the key "loc_quality"): ``pearson``/``spearman`` (score vs true IoU),
    ``num_matched``, ``AP`` (COCO's 0.5:0.95), ``AP50``, ``AP60``, ``AP70``, ``AP80``, ``AP90``; and,
    when the detector outputs them (IoU-aware models), the same correlations of ``cls_scores``
    (``pearson_cls``, ``spearman_cls``) and of ``pred_ious`` (``pearson_pred_iou``,
    ``spearman_pred_iou``) with the true IoU.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        *,
        distributed: bool = True,
        max_dets_per_image: int = 100,
        match_iou_thresh: float = 0.5,
    ):
        """
        Args:
            dataset_name: a registered dataset; its ``json_file`` metadata (COCO format) is used,
                or it is converted to one in ``output_dir``.
            output_dir: where the converted json goes, if needed.
            distributed: gather the predictions of all processes before evaluating.
            max_dets_per_image: COCOeval's last maxDets.
            match_iou_thresh: IoU at which a detection counts as matched for the correlations.
        """
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._max_dets_per_image = max_dets_per_image
        self._match_iou_thresh = match_iou_thresh
        self._metadata = MetadataCatalog.get(dataset_name)
        if not hasattr(self._metadata, "json_file"):
            if output_dir is None:
                raise ValueError(f"output_dir is needed to convert {dataset_name} to COCO json")
            cache_path = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
            self._metadata.json_file = cache_path
            convert_to_coco_json(dataset_name, cache_path)
        json_file = PathManager.get_local_path(self._metadata.json_file)
        with contextlib.redirect_stdout(io.StringIO()):
            self._coco_api = COCO(json_file)
        mapping = getattr(self._metadata, "thing_dataset_id_to_contiguous_id", None)
        self._contiguous_to_dataset_id = (
            {v: k for k, v in mapping.items()} if mapping is not None else None
        )
        self.reset()

    def reset(self):
        self._predictions: List[Dict] = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            entry = {"image_id": inp["image_id"], "dets": []}
            if "instances" in out:
                instances = out["instances"].to(torch.device("cpu"))
                if len(instances) > 0:
                    boxes = BoxMode.convert(
                        instances.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS
                    )
                    extras = {
                        name: instances.get(name).tolist()
                        for name in ("cls_scores", "pred_ious")
                        if instances.has(name)
                    }
                    for i, (box, score, cls) in enumerate(
                        zip(boxes.tolist(), instances.scores.tolist(), instances.pred_classes.tolist())
                    ):
                        if self._contiguous_to_dataset_id is not None:
                            cls = self._contiguous_to_dataset_id[cls]
                        det = {"image_id": inp["image_id"], "category_id": cls, "bbox": box, "score": score}
                        det.update({name: values[i] for name, values in extras.items()})
                        entry["dets"].append(det)
            self._predictions.append(entry)

    def evaluate(self):
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        if len(predictions) == 0:
            logger.warning("[LocalizationQualityEvaluator] no predictions received")
            return {}
        img_ids = sorted({p["image_id"] for p in predictions})
        dets = [d for p in predictions for d in p["dets"]]
        results = self._correlations(dets, img_ids)
        results.update(self._ap_at_ious(dets, img_ids))
        logger.info(
            "Localization quality on %s: %s",
            self._dataset_name,
            ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items()),
        )
        return {"loc_quality": results}

    def _correlations(self, dets: List[Dict], img_ids: List[int]) -> Dict[str, float]:
        # image -> class -> detections: each image's work is over its own detections and
        # annotations only, whatever the number of images.
        by_image: Dict[int, Dict[int, List[Dict]]] = defaultdict(lambda: defaultdict(list))
        for d in dets:
            by_image[d["image_id"]][d["category_id"]].append(d)
        matched = []  # (det, true IoU)
        for img_id in img_ids:
            if img_id not in by_image:
                continue
            anns = self._coco_api.imgToAnns.get(img_id, [])
            gts_by_class = defaultdict(list)
            for a in anns:
                if not a.get("iscrowd", 0):
                    gts_by_class[a["category_id"]].append(a["bbox"])
            for cls, ds in by_image[img_id].items():
                for di, _, iou in greedy_match(
                    np.array([d["bbox"] for d in ds]),
                    np.array([d["score"] for d in ds]),
                    np.array(gts_by_class.get(cls, [])),
                    self._match_iou_thresh,
                ):
                    matched.append((ds[di], iou))
        true_ious = [iou for _, iou in matched]
        results = {"num_matched": len(matched)}
        for key, suffix in (("score", ""), ("cls_scores", "_cls"), ("pred_ious", "_pred_iou")):
            if matched and all(key in d for d, _ in matched):
                values = [d[key] for d, _ in matched]
                results["pearson" + suffix] = pearson(values, true_ious)
                results["spearman" + suffix] = spearman(values, true_ious)
            elif key == "score":
                results["pearson"] = results["spearman"] = float("nan")
        return results

    def _ap_at_ious(self, dets: List[Dict], img_ids: List[int]) -> Dict[str, float]:
        names = ["AP"] + [f"AP{int(round(t * 100))}" for t in AP_IOU_THRESHOLDS]
        if len(dets) == 0:
            logger.warning("[LocalizationQualityEvaluator] no detections: AP is 0")
            return {n: 0.0 for n in names}
        coco_dets = [
            {k: d[k] for k in ("image_id", "category_id", "bbox", "score")} for d in dets
        ]
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = self._coco_api.loadRes(copy.deepcopy(coco_dets))
            # Detectron2's C++ COCOeval where it is compiled, else pycocotools': the same numbers
            coco_eval = coco_eval_class()(self._coco_api, coco_dt, "bbox")
            coco_eval.params.imgIds = img_ids
            coco_eval.params.maxDets = [1, 10, self._max_dets_per_image]
            coco_eval.evaluate()
            coco_eval.accumulate()
        # precision: (T IoU thresholds, R recall points, K classes, A areas, M maxDets); area "all"
        # is index 0, maxDets=max the last, -1 marks classes without ground truth.
        precision = coco_eval.eval["precision"]
        iou_thrs = coco_eval.params.iouThrs

        def mean_precision(p: np.ndarray) -> float:
            p = p[p > -1]
            return float(p.mean() * 100) if p.size else float("nan")

        results = {"AP": mean_precision(precision[:, :, :, 0, -1])}
        for t in AP_IOU_THRESHOLDS:
            idx = int(np.argmin(np.abs(iou_thrs - t)))
            assert abs(iou_thrs[idx] - t) < 1e-6, f"IoU threshold {t} not in COCOeval's {iou_thrs}"
            results[f"AP{int(round(t * 100))}"] = mean_precision(precision[idx, :, :, 0, -1])
        return results


def build_localization_evaluator(cfg, dataset_name: str, output_dir: Optional[str] = None):
    """The evaluator for ``train_net.py`` to put beside COCOEvaluator in a DatasetEvaluators."""
    return LocalizationQualityEvaluator(
        dataset_name,
        output_dir=output_dir,
        distributed=True,
        max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
    )
