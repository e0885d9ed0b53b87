"""Every config under configs/ builds its model and runs one training-mode forward pass."""
import glob
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from train_net import setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"),
                                               recursive=True)
    if not os.path.basename(p).startswith("Base-"))


class _Args:
    def __init__(self, config_file):
        self.config_file = os.path.join(REPO, config_file)
        self.opts = ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", "/tmp/test_configs_out"]
        self.eval_only = False
        self.resume = False


def _batch(num_classes: int):
    g = torch.Generator().manual_seed(0)
    batch = []
    for n in (2, 0):  # one image with two objects, one without ground truth
        inst = Instances((64, 64))
        boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [20.0, 10.0, 60.0, 30.0]])[:n]
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.arange(n) % num_classes
        masks = torch.zeros(n, 64, 64, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst.gt_masks = BitMasks(masks)
        batch.append({"image": torch.randint(0, 256, (3, 64, 64), generator=g).float(),
                      "instances": inst, "height": 64, "width": 64})
    return batch


def test_configs_were_found():
    assert any("baselines" in c for c in CONFIGS) and any("coco" in c for c in CONFIGS)


@pytest.mark.parametrize("config_file", CONFIGS)
def test_config_builds_and_trains_one_step(config_file):
    cfg = setup(_Args(config_file))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    num_classes = (cfg.MODEL.RETINANET.NUM_CLASSES if "RetinaNet" in cfg.MODEL.META_ARCHITECTURE
                   else cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    with EventStorage(0):
        losses = model(_batch(num_classes))
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
