"""Each project configures itself: ``add_<project>_config(cfg)`` alone, after ``import <project>``
alone, builds the project's embedded model and trains it one step (as a PointRend user would).

Each case runs in a fresh interpreter from an unrelated directory, so no other project's import or
add function can have registered a part or added a key for it. The loss names each model must
return are the ones its paper adds to the Detectron2 baseline.
"""
import os
import subprocess
import sys
import textwrap

import pytest

from d2infra import add_d2infra_config
from detectron2.config import get_cfg
from imbalance import add_imbalance_config
from iou_aware import add_iou_aware_config
from offset_bin import add_offset_bin_config
from r3cnn import add_r3cnn_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ONE_STEP = textwrap.dedent("""
    import sys
    import torch
    project, add_name, config_file, expected = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    package = __import__(project)
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    cfg = get_cfg()
    getattr(package, add_name)(cfg)
    cfg.merge_from_file(config_file)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).train()

    size = 128
    inst = Instances((size, size))
    boxes = torch.tensor([[10., 12., 60., 70.], [70., 40., 120., 100.]])
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.tensor([0, 1])
    masks = torch.zeros(2, size, size, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        masks[i, y0:y1, x0:x1] = True
    inst.gt_masks = BitMasks(masks)
    image = torch.rand(3, size, size) * 255
    batch = [{"image": image, "height": size, "width": size, "instances": inst}]

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    with EventStorage(0):
        losses = model(batch)
    missing = [k for k in expected if k not in losses]
    assert not missing, f"missing losses {missing}; got {sorted(losses)}"
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert changed > 0, "one SGD step changed no parameter"
    print("ONE-STEP-OK", sorted(losses))
""")

CASES = {
    # Each of the three loops has its own losses, named by the loop's index (R^3-CNN, Sec. 3).
    "r3cnn": ("add_r3cnn_config", "configs/r3cnn/r3cnn_naive_smallR_FPN_shapes.yaml",
              [f"loss_{name}_loop{t}" for name in ("cls", "box_reg", "mask") for t in range(3)]
              + ["loss_rpn_cls"]),
    # L_IoU of Eq. 3 beside RetinaNet's focal and box losses.
    "iou_aware": ("add_iou_aware_config", "configs/iou_aware/iou_aware_retinanet_smallR_FPN_shapes.yaml",
                  ["loss_cls", "loss_box_reg", "loss_iou"]),
    # The bin loss L_bin of Eq. 7 replaces the smooth-L1 box loss.
    "offset_bin": ("add_offset_bin_config",
                   "configs/offset_bin/offset_bin_faster_rcnn_smallR_FPN_shapes.yaml",
                   ["loss_cls", "loss_bin_stage0", "loss_rpn_cls"]),
}


@pytest.mark.parametrize("project", sorted(CASES))
def test_project_trains_with_its_own_add_function_alone(tmp_path, project):
    add_name, config_file, expected = CASES[project]
    script = tmp_path / "one_step.py"
    script.write_text(ONE_STEP)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(script), project, add_name, os.path.join(REPO, config_file), *expected],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "ONE-STEP-OK" in proc.stdout


ADD_FUNCTIONS = [add_d2infra_config, add_imbalance_config, add_r3cnn_config, add_iou_aware_config,
                 add_offset_bin_config]


def test_add_functions_commute_and_are_idempotent():
    forward = get_cfg()
    for add in ADD_FUNCTIONS:
        add(forward)
    backward = get_cfg()
    for add in reversed(ADD_FUNCTIONS):
        add(backward)
        add(backward)
    assert forward.dump() == backward.dump()


def test_second_add_keeps_values_already_set():
    cfg = get_cfg()
    add_r3cnn_config(cfg)
    add_offset_bin_config(cfg)
    cfg.MODEL.R3CNN.NUM_LOOPS_TRAIN = 2
    cfg.MODEL.ROI_HEADS.SAMPLER = "ohem"
    cfg.MODEL.SMALL_RESNET.NORM = "GN"
    cfg.MODEL.OFFSET_BIN.NUM_BINS = 7
    for add in ADD_FUNCTIONS:
        add(cfg)
    assert (cfg.MODEL.R3CNN.NUM_LOOPS_TRAIN, cfg.MODEL.ROI_HEADS.SAMPLER,
            cfg.MODEL.SMALL_RESNET.NORM, cfg.MODEL.OFFSET_BIN.NUM_BINS) == (2, "ohem", "GN", 7)
