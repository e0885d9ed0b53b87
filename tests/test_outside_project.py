"""Another Detectron2 project uses ours through `import <project>` and `add_<project>_config(cfg)`.

Runs in a fresh interpreter from an unrelated directory, once importing detectron2 first and once
importing our packages first, so registration and `detectron2._C` work in either order.
"""
import os
import re
import subprocess
import sys
import textwrap

import pytest

OUTSIDE_PROJECT = textwrap.dedent("""
    import sys
    if sys.argv[1] == "detectron2-first":
        import detectron2.modeling  # noqa: F401
    import imbalance, iou_aware, offset_bin, r3cnn
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import (BACKBONE_REGISTRY, META_ARCH_REGISTRY, ROI_HEADS_REGISTRY,
                                     build_model)
    from detectron2.layers import nms_rotated

    cfg = get_cfg()
    imbalance.add_imbalance_config(cfg)
    r3cnn.add_r3cnn_config(cfg)
    iou_aware.add_iou_aware_config(cfg)
    offset_bin.add_offset_bin_config(cfg)
    for name in ("R3CNNROIHeads", "OffsetBinROIHeads", "OffsetBinCascadeROIHeads",
                 "SamplingStandardROIHeads"):
        assert name in ROI_HEADS_REGISTRY, name
    assert "IoUAwareRetinaNet" in META_ARCH_REGISTRY
    assert "build_small_resnet_fpn_backbone" in BACKBONE_REGISTRY
    assert "shapes_train" in __import__("detectron2.data").data.DatasetCatalog.list()

    # Build this outside project's own model with our R^3-CNN heads, by registry name.
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_small_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NAME = "R3CNNROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model([{"image": torch.zeros(3, 64, 64), "height": 64, "width": 64}])
    assert len(out) == 1 and "instances" in out[0]
    # the compiled-op replacement answers through Detectron2's public API
    keep = nms_rotated(torch.tensor([[5., 5., 4., 4., 0.], [5., 5., 4., 4., 0.]]),
                       torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0]
    print("OUTSIDE-PROJECT-OK")
""")


@pytest.mark.parametrize("order", ["detectron2-first", "ours-first"])
def test_outside_project_uses_our_heads(tmp_path, order):
    script = tmp_path / "outside_project.py"
    script.write_text(OUTSIDE_PROJECT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script), order], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "OUTSIDE-PROJECT-OK" in proc.stdout


README_HEADING = "## Using the heads from another Detectron2 project"
# Run after the README's snippet: one forward in eval mode on a random image.
SNIPPET_CHECK = textwrap.dedent("""

    # --- the test's part ---
    assert type(model.roi_heads).__name__ == "R3CNNROIHeads"
    assert type(model.roi_heads.box_predictor).__name__ == "OffsetBinOutputLayers"
    assert model.roi_heads.box_predictor.cls_score.out_features == 2  # NUM_CLASSES + background
    assert type(model.backbone).__name__ == "FPN"
    model.eval()
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8).float()
    with torch.no_grad():
        out = model([{"image": image.to(cfg.MODEL.DEVICE), "height": 96, "width": 128}])
    inst = out[0]["instances"]
    assert inst.image_size == (96, 128)
    boxes = inst.pred_boxes.tensor
    assert ((boxes[:, 0] >= 0) & (boxes[:, 2] <= 128) & (boxes[:, 1] >= 0)
            & (boxes[:, 3] <= 96)).all()
    assert inst.has("pred_masks") and set(inst.pred_classes.tolist()) <= {0}
    print("README-SNIPPET-OK")
""")


def readme_snippet() -> str:
    """The first ```python block under the README's heading for other projects."""
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert README_HEADING + "\n" in text, f"README.md has no heading {README_HEADING!r}"
    section = text.split(README_HEADING + "\n", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"^```python\n(.*?)^```", section, re.M | re.S)
    assert m, f"no ```python block under {README_HEADING!r}"
    return m.group(1)


def test_readme_snippet_builds_and_runs_outside_the_repository(tmp_path):
    """The README's snippet as written (Detectron2's model-zoo FPN config, our heads by registry
    name), from a file outside the repository, then one forward pass."""
    script = tmp_path / "their_project.py"
    script.write_text(readme_snippet() + SNIPPET_CHECK)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "README-SNIPPET-OK" in proc.stdout
