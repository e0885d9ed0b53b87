"""Inference of the R^3-CNN + offset-bin configs (configs/r3cnn/r3cnn_offset_bin_*.yaml), built as
train_net.py builds them: the detections equal a hand recomposition of the loops from the model's
own modules (each loop decoding its boxes with the offset-bin predictor, the loops' class logits
averaged then softmaxed, Detectron2's NMS, one pass of the mask head on the final boxes)."""
import glob
import os

import pytest
import torch
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference
from detectron2.structures import Boxes, Instances

from offset_bin import OffsetBinOutputLayers
from r3cnn import R3CNNROIHeads
from train_net import Trainer, build_cfg

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "r3cnn", "r3cnn_offset_bin_*.yaml")))


def test_every_offset_bin_config_is_covered():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"r3cnn_offset_bin_smallR_FPN_shapes.yaml", "r3cnn_offset_bin_R_50_FPN_1x_coco.yaml",
            "r3cnn_offset_bin_iou_balanced_smallR_FPN_shapes.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_inference_is_the_loops_with_offset_bin_decoding(path):
    cfg = build_cfg(path, ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                           "MODEL.RPN.POST_NMS_TOPK_TEST", "30"])
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).eval()
    heads = model.roi_heads
    assert isinstance(heads, R3CNNROIHeads)
    predictor = heads.box_predictor
    assert isinstance(predictor, OffsetBinOutputLayers)
    assert predictor.coder.num_stages == cfg.MODEL.OFFSET_BIN.NUM_STAGES
    with torch.no_grad():  # a "trained" predictor: bin scores and classes that vary per RoI
        g = torch.Generator().manual_seed(1)
        predictor.bin_pred.weight.copy_(torch.randn(predictor.bin_pred.weight.shape, generator=g))
        predictor.cls_score.weight.copy_(torch.randn(predictor.cls_score.weight.shape, generator=g))
    image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(2)) * 255
    batch = [{"image": image, "height": 128, "width": 160}]
    with torch.no_grad():
        got = model.inference(batch, do_postprocess=False)[0]
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        feats = [features[f] for f in heads.box_in_features]
        props, logits = proposals, []
        loops = cfg.MODEL.R3CNN.NUM_LOOPS_TRAIN
        for t in range(loops):
            scores, bins = predictor(heads.box_head(heads.box_pooler(
                feats, [p.proposal_boxes for p in props])))
            logits.append(scores)
            boxes = predictor.predict_boxes((scores, bins), props)  # the bins' decoding
            if t < loops - 1:
                nxt = []
                for b, p in zip(boxes, props):
                    b = Boxes(b.clone())
                    b.clip(p.image_size)
                    nxt.append(Instances(p.image_size, proposal_boxes=b))
                props = nxt
        probs = torch.softmax(torch.stack(logits).mean(0), dim=-1)
        ref, _ = fast_rcnn_inference(boxes, [probs], [props[0].image_size],
                                     0.0, cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
                                     cfg.TEST.DETECTIONS_PER_IMAGE)
        ref = ref[0]
        masks = heads.mask_head.layers(heads.mask_pooler(
            [features[f] for f in heads.mask_in_features], [ref.pred_boxes]))
        mask_rcnn_inference(masks, [ref])
    assert len(got) > 0
    assert torch.allclose(got.pred_boxes.tensor, ref.pred_boxes.tensor, atol=1e-4)
    assert torch.allclose(got.scores, ref.scores, atol=1e-6)
    assert torch.equal(got.pred_classes, ref.pred_classes)
    assert torch.allclose(got.pred_masks, ref.pred_masks, atol=1e-6)
    # the loops moved the boxes: the final boxes are not one decoding of the RPN proposals
    first = predictor.predict_boxes(
        predictor(heads.box_head(heads.box_pooler(feats, [proposals[0].proposal_boxes]))),
        proposals)[0]
    assert not torch.allclose(first, boxes[0], atol=1e-3)
