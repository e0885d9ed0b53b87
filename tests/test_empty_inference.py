"""Inference with nothing to detect, in every kind of head: the model returns, for each image, an
empty ``Instances`` of the image's size with the same fields (and per-row shapes) as a non-empty
result, instead of crashing.

Zero detections: score thresholds above 1 (every score is a probability). Zero proposals (two-stage
heads): an RPN minimum box size larger than the image, so every proposal is dropped before the ROI
heads. The non-empty reference is the same model with its score threshold at 0.
"""
import os

import pytest
import torch
from detectron2.modeling import build_model

from train_net import build_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOXES = {"pred_boxes", "scores", "pred_classes"}
# config, the key of its test score threshold, fields it promises beyond BOXES, two-stage?
CASES = [
    ("iou_aware/iou_aware_retinanet_smallR_FPN_shapes.yaml", "MODEL.RETINANET.SCORE_THRESH_TEST",
     {"cls_scores", "pred_ious"}, False),
    ("iou_aware/fcos_smallR_FPN_shapes.yaml", "MODEL.FCOS.SCORE_THRESH_TEST", set(), False),
    ("iou_aware/iou_aware_fcos_smallR_FPN_shapes.yaml", "MODEL.FCOS.SCORE_THRESH_TEST",
     {"cls_scores", "pred_ious", "centerness"}, False),
    ("offset_bin/offset_bin_faster_rcnn_smallR_FPN_shapes.yaml",
     "MODEL.ROI_HEADS.SCORE_THRESH_TEST", set(), True),
    ("offset_bin/offset_bin_cascade_rcnn_smallR_FPN_shapes.yaml",
     "MODEL.ROI_HEADS.SCORE_THRESH_TEST", set(), True),
    ("baselines/cascade_mask_rcnn_smallR_FPN_shapes.yaml", "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
     {"pred_masks"}, True),
    ("baselines/mask_rcnn_smallR_FPN_shapes.yaml", "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
     {"pred_masks"}, True),
]
SIZES = [(64, 80), (48, 48)]  # (height, width) of the two images of the batch


def infer(config, opts):
    # Few detections and proposals keep the non-empty reference fast (masks are pasted on the CPU).
    cfg = build_cfg(os.path.join(REPO, "configs", config), [
        "MODEL.DEVICE", "cpu", "TEST.DETECTIONS_PER_IMAGE", "5", "MODEL.RPN.POST_NMS_TOPK_TEST",
        "50", *opts])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    batch = [{"image": torch.randint(0, 256, (3, h, w), generator=g).float(), "height": h,
              "width": w} for h, w in SIZES]
    with torch.no_grad():
        return [out["instances"] for out in model(batch)]


def schema(instances):
    return {name: tuple(value.tensor.shape[1:] if hasattr(value, "tensor") else value.shape[1:])
            for name, value in instances.get_fields().items()}


@pytest.mark.parametrize("config, thresh_key, extra, two_stage", CASES,
                         ids=[os.path.basename(c[0]).replace("_FPN_shapes.yaml", "")
                              for c in CASES])
def test_nothing_detected_gives_empty_instances(config, thresh_key, extra, two_stage):
    reference = infer(config, [thresh_key, "0.0"])
    assert all(len(r) > 0 for r in reference), "the reference must detect something"
    expected = [schema(r) for r in reference]
    assert set(expected[0]) == BOXES | extra
    assert expected[0]["pred_boxes"] == (4,)
    if "pred_masks" in extra:  # pasted into each image: (height, width)
        assert [e["pred_masks"] for e in expected] == SIZES

    empty_cases = {"no detection": [thresh_key, "1.01"]}
    if two_stage:  # every RPN box is smaller than 1000 px: no proposal reaches the ROI heads
        empty_cases["no proposal"] = ["MODEL.PROPOSAL_GENERATOR.MIN_SIZE", "1000"]
    for case, opts in empty_cases.items():
        results = infer(config, opts)
        assert len(results) == len(SIZES), case
        for result, size, fields in zip(results, SIZES, expected):
            assert result.image_size == size, case
            assert len(result) == 0, case
            assert schema(result) == fields, case
            assert result.scores.dtype == reference[0].scores.dtype
            assert result.pred_classes.dtype == torch.int64
