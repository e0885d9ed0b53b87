"""Tests of iou_aware.evaluator on hand-built detections and ground truths (values by hand)."""
import json
import math

import pytest
import torch

from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances

from iou_aware.evaluator import LocalizationQualityEvaluator, greedy_match, pearson, spearman

# Image 1: category 1 (contiguous 0) has A = [0, 0, 10, 10] and B = [20, 20, 10, 10] (XYWH);
# category 2 (contiguous 1) has C = [0, 0, 20, 20]. Image 2 has no ground truth.
GT = {
    "images": [{"id": 1, "width": 40, "height": 40}, {"id": 2, "width": 40, "height": 40}],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 2, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
    ],
}
# Detections (XYXY, score, contiguous class) and their IoU with their ground truth:
#   d1 [0, 0, 10, 8.5]   0.9  cls 0: IoU 0.85 with A
#   d3 [0, 0, 10, 5.5]   0.8  cls 0: IoU 0.55 with A, taken by d1 -> unmatched (false positive)
#   d2 [20, 20, 30, 26.5] 0.7 cls 0: IoU 0.65 with B
#   d4 [0, 0, 20, 15]    0.3  cls 1: IoU 0.75 with C
#   d5 (image 2) [5, 5, 15, 15] 0.1 cls 1: no ground truth -> false positive
DETS_1 = (
    [[0, 0, 10, 8.5], [0, 0, 10, 5.5], [20, 20, 30, 26.5], [0, 0, 20, 15]],
    [0.9, 0.8, 0.7, 0.3],
    [0, 0, 0, 1],
)
DETS_2 = ([[5, 5, 15, 15]], [0.1], [1])


def instances(boxes, scores, classes, **extra):
    inst = Instances((40, 40))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.scores = torch.tensor(scores)
    inst.pred_classes = torch.tensor(classes)
    for k, v in extra.items():
        inst.set(k, torch.tensor(v))
    return inst


@pytest.fixture
def evaluator(tmp_path, request):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(GT))
    name = f"iou_aware_eval_test_{request.node.name}"
    MetadataCatalog.get(name).set(
        json_file=str(path), thing_dataset_id_to_contiguous_id={1: 0, 2: 1}, thing_classes=["a", "b"]
    )
    return LocalizationQualityEvaluator(name, distributed=True)


def test_correlations_and_ap_at_ious(evaluator):
    evaluator.reset()
    evaluator.process(
        [{"image_id": 1}, {"image_id": 2}],
        [
            {"instances": instances(*DETS_1, cls_scores=[0.5, 0.6, 0.7, 0.8])},
            {"instances": instances(*DETS_2, cls_scores=[0.2])},
        ],
    )
    res = evaluator.evaluate()["loc_quality"]
    # Matched (score, IoU): (0.9, 0.85), (0.7, 0.65), (0.3, 0.75).
    # Pearson: dx = (.2667, .0667, -.3333), dy = (.1, -.1, 0): .02 / sqrt(.18667 * .02) = 0.32733
    assert res["num_matched"] == 3
    assert res["pearson"] == pytest.approx(0.02 / math.sqrt(0.56 / 3 * 0.02), rel=1e-6)
    assert res["pearson"] == pytest.approx(0.32733, abs=1e-5)
    # Spearman: ranks (3, 2, 1) vs (3, 1, 2): 1 / 2
    assert res["spearman"] == pytest.approx(0.5)
    # cls_scores of the matched: (0.5, 0.7, 0.8) vs IoU (.85, .65, .75): ranks (1,2,3) vs (3,1,2)
    assert res["spearman_cls"] == pytest.approx(-0.5)
    assert "pearson_pred_iou" not in res

    # AP by hand (COCO, 101 recall points). Category 1, order d1, d3, d2 over 2 ground truths:
    #   IoU .5, .6: TP FP TP -> precision envelope 1 up to recall .5, 2/3 up to 1:
    #               (51 + 50 * 2/3) / 101
    #   IoU .7, .8: TP FP FP -> 1 up to recall .5, nothing after: 51 / 101;  IoU .9: 0
    # Category 2 (d4 TP, then d5 FP after full recall): 1 at IoU .5, .6, .7; 0 at .8, .9.
    c1_low, c1_high = (51 + 50 * 2 / 3) / 101, 51 / 101
    assert res["AP50"] == pytest.approx(100 * (c1_low + 1) / 2, rel=1e-6)
    assert res["AP60"] == pytest.approx(100 * (c1_low + 1) / 2, rel=1e-6)
    assert res["AP70"] == pytest.approx(100 * (c1_high + 1) / 2, rel=1e-6)
    assert res["AP80"] == pytest.approx(100 * c1_high / 2, rel=1e-6)
    assert res["AP90"] == pytest.approx(0.0)


def test_score_ranking_changes_ap_at_high_iou(evaluator):
    """Re-ranking by localization quality (d3 scored above d1's poorly localized twin) changes the
    numbers the way the paper's Table 4 is about."""
    boxes, _, classes = DETS_1
    # Swap: the IoU-0.55 box now outranks the IoU-0.85 box. At IoU .5 d3 takes A first, d1 becomes
    # a FP: TP FP TP again; at IoU .7 d3 is a FP, d1 a TP at rank 2: precision 1/2 at recall .5.
    evaluator.reset()
    evaluator.process([{"image_id": 1}], [{"instances": instances(boxes, [0.8, 0.9, 0.7, 0.3], classes)}])
    res = evaluator.evaluate()["loc_quality"]
    assert res["AP70"] == pytest.approx(100 * (51 * 0.5 / 101 + 1) / 2, rel=1e-6)
    # d3 (0.9) now matches A at IoU 0.55; d1 finds A taken and B at IoU 0: unmatched.
    assert res["num_matched"] == 3


def test_empty_detections(evaluator):
    evaluator.reset()
    evaluator.process([{"image_id": 1}], [{"instances": instances(torch.zeros(0, 4).tolist(), [], [])}])
    res = evaluator.evaluate()["loc_quality"]
    assert res["num_matched"] == 0 and math.isnan(res["pearson"])
    assert res["AP50"] == 0.0


def test_helpers_by_hand():
    # Spearman with ties: x ranks (1, 2.5, 2.5, 4), y ranks (1, 3, 2, 4): 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    # Greedy: the higher-scored detection takes the ground truth even at a lower IoU.
    m = greedy_match(
        [[0, 0, 10, 10], [0, 0, 10, 9]], [0.1, 0.9], [[0, 0, 10, 10]], iou_thresh=0.5
    )
    assert m == [(1, 0, pytest.approx(0.9))]



def test_each_image_matches_only_its_own_ground_truth(evaluator):
    """Detections are grouped by image, then class. Image 2's detection exactly at A (image 1's
    ground truth of the same class; image 2 has none), ranked first, matches nothing: d1, d2, d4
    match as in the first test, (0.9, .85), (0.7, .65), (0.3, .75), Pearson 0.32733. (Taking A,
    it would leave d1 unmatched.) AP50 by hand: category 1 ranks FP (image 2), TP, TP over 2
    ground truths: precision envelope 2/3 at every recall; category 2: d4, 1."""
    boxes, scores, classes = DETS_1
    keep = [0, 2, 3]  # d1, d2, d4
    evaluator.reset()
    evaluator.process(
        [{"image_id": 2}, {"image_id": 1}],
        [{"instances": instances([[0, 0, 10, 10]], [0.95], [0])},
         {"instances": instances([boxes[i] for i in keep], [scores[i] for i in keep],
                                 [classes[i] for i in keep])}],
    )
    res = evaluator.evaluate()["loc_quality"]
    assert res["num_matched"] == 3
    assert res["pearson"] == pytest.approx(0.02 / math.sqrt(0.56 / 3 * 0.02), rel=1e-6)
    assert res["AP50"] == pytest.approx(100 * (2 / 3 + 1) / 2, rel=1e-6)
