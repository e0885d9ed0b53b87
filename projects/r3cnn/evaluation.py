"""COCO evaluation of masks ranked by Mask Scoring R-CNN's mask score (R^3-CNN-L's MaskIoU branch).

Detectron2's ``COCOEvaluator`` ranks boxes and masks by the same ``scores``. With
``MODEL.R3CNN.MASKIOU_ON`` the heads also predict ``mask_scores`` (class score x predicted mask IoU);
:class:`MaskScoringCOCOEvaluator` evaluates the masks with them, and the boxes keep ``scores``.
"""
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.structures import Instances

from d2infra.evaluation import fast_coco_eval_available


def with_mask_scores(instances: Instances) -> Instances:
    """A shallow copy of ``instances`` whose ``scores`` are its ``mask_scores`` (if it has them)."""
    if not instances.has("mask_scores"):
        return instances
    out = Instances(instances.image_size, **instances.get_fields())
    out.scores = instances.mask_scores
    return out


class MaskScoringCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator`` that ranks each prediction by its ``mask_scores``; use it for "segm"."""

    def process(self, inputs, outputs):
        outputs = [dict(o, instances=with_mask_scores(o["instances"])) if "instances" in o else o
                   for o in outputs]
        super().process(inputs, outputs)


def build_r3cnn_evaluator(dataset_name: str, mask_on: bool, maskiou_on: bool,
                          output_dir: str = None, **kwargs) -> DatasetEvaluators:
    """Box AP with ``scores``; mask AP with ``mask_scores`` when the MaskIoU branch is on
    (``kwargs`` go to both ``COCOEvaluator``). ``use_fast_impl`` defaults to Detectron2's fast C++
    COCOeval where its compiled ops are installed, else pycocotools'
    (:func:`d2infra.evaluation.fast_coco_eval_available`)."""
    kwargs.setdefault("use_fast_impl", fast_coco_eval_available())
    if not (mask_on and maskiou_on):
        tasks = ("bbox", "segm") if mask_on else ("bbox",)
        return DatasetEvaluators([COCOEvaluator(dataset_name, tasks=tasks, output_dir=output_dir,
                                                **kwargs)])
    return DatasetEvaluators([
        COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_dir, **kwargs),
        # its own results file would overwrite the box evaluator's: no output_dir
        MaskScoringCOCOEvaluator(dataset_name, tasks=("segm",), output_dir=None, **kwargs),
    ])
