"""R^3-CNN-L's evaluator through train_net.py: box AP ranked by the class scores, mask AP by the
MaskIoU mask scores (class score x predicted mask IoU); plain COCO evaluation without MaskIoU."""
import os

import pytest
import torch
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.structures import Boxes, Instances

from r3cnn.evaluation import MaskScoringCOCOEvaluator
from train_net import Trainer, build_cfg

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _coco_evaluators(evaluator):
    if isinstance(evaluator, DatasetEvaluators):
        return [e for sub in evaluator._evaluators for e in _coco_evaluators(sub)]
    return [evaluator] if isinstance(evaluator, COCOEvaluator) else []


def _build(config, tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    cfg = build_cfg(os.path.join(ROOT, "configs", "r3cnn", config),
                    ["DATASETS.TEST", '("shapes_mini_val",)', "OUTPUT_DIR", str(tmp_path / "out")])
    return _coco_evaluators(Trainer.build_evaluator(cfg, "shapes_mini_val"))


def _prediction():
    h, w = 256, 256
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 10:40, 10:40] = True
    masks[1, 50:90, 60:120] = True
    return Instances((h, w), pred_boxes=Boxes(torch.tensor([[10.0, 10, 40, 40], [60, 50, 120, 90]])),
                     scores=torch.tensor([0.9, 0.5]), pred_classes=torch.tensor([0, 1]),
                     pred_masks=masks, mask_scores=torch.tensor([0.2, 0.4]))


def test_train_net_ranks_r3cnn_L_masks_by_mask_scores(tmp_path, monkeypatch):
    evaluators = _build("r3cnn_L_smallR_FPN_shapes.yaml", tmp_path, monkeypatch)
    by_task = {tuple(e._tasks): e for e in evaluators}
    assert set(by_task) == {("bbox",), ("segm",)}
    assert isinstance(by_task[("segm",)], MaskScoringCOCOEvaluator)
    assert not isinstance(by_task[("bbox",)], MaskScoringCOCOEvaluator)
    for e in evaluators:
        e.reset()
        e.process([{"image_id": 1}], [{"instances": _prediction()}])
    box_scores = [d["score"] for d in by_task[("bbox",)]._predictions[0]["instances"]]
    mask_scores = [d["score"] for d in by_task[("segm",)]._predictions[0]["instances"]]
    assert box_scores == pytest.approx([0.9, 0.5])
    assert mask_scores == pytest.approx([0.2, 0.4])


def test_train_net_without_maskiou_evaluates_boxes_and_masks_by_scores(tmp_path, monkeypatch):
    evaluators = _build("r3cnn_naive_smallR_FPN_shapes.yaml", tmp_path, monkeypatch)
    assert len(evaluators) == 1 and not isinstance(evaluators[0], MaskScoringCOCOEvaluator)
    assert set(evaluators[0]._tasks) == {"bbox", "segm"}
