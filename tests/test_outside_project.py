"""Another Detectron2 project uses ours through `import <project>` and `add_<project>_config(cfg)`.

Runs in a fresh interpreter from an unrelated directory, once importing detectron2 first and once
importing our packages first, so registration and `detectron2._C` work in either order. Each run
then executes the README's snippet for other projects as written (extracted from README.md) and
one forward pass of the model it builds.
"""
import os
import subprocess
import sys
import textwrap

import pytest

from cli_runs import readme_code_block

README_HEADING = "## Using the heads from another Detectron2 project"

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
                 "SamplingStandardROIHeads", "SamplingCascadeROIHeads"):
        assert name in ROI_HEADS_REGISTRY, name
    for name in ("IoUAwareRetinaNet", "IoUAwareFCOS"):
        assert name in META_ARCH_REGISTRY, name
    assert "build_small_resnet_fpn_backbone" in BACKBONE_REGISTRY
    assert "shapes_train" in __import__("detectron2.data").data.DatasetCatalog.list()
    # the compiled-op replacement answers through Detectron2's public API
    keep = nms_rotated(torch.tensor([[5., 5., 4., 4., 0.], [5., 5., 4., 4., 0.]]),
                       torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0]
    del cfg

    # --- the README's snippet, as written ---
""")

# After the snippet: the model it built, by registry name, and one forward in eval mode.
SNIPPET_CHECK = textwrap.dedent("""

    # --- the test's checks ---
    assert type(model.backbone).__name__ == "FPN"
    assert type(model.roi_heads).__name__ == "R3CNNROIHeads"
    assert type(model.roi_heads.box_predictor).__name__ == "OffsetBinOutputLayers"
    assert model.roi_heads.box_predictor.cls_score.out_features == 2  # 1 class + background
    model.eval()
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8).float()
    with torch.no_grad():
        out = model([{"image": image.to(cfg.MODEL.DEVICE), "height": 96, "width": 128}])
    inst = out[0]["instances"]
    assert inst.image_size == (96, 128)
    boxes = inst.pred_boxes.tensor
    assert ((boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= 128)
            & (boxes[:, 3] <= 96)).all()
    assert inst.has("pred_masks") and set(inst.pred_classes.tolist()) <= {0}
    print("OUTSIDE-PROJECT-OK")
""")


@pytest.mark.parametrize("order", ["detectron2-first", "ours-first"])
def test_outside_project_runs_the_readme_snippet(tmp_path, order):
    script = tmp_path / "outside_project.py"
    script.write_text(OUTSIDE_PROJECT + readme_code_block(README_HEADING, "python") + SNIPPET_CHECK)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script), order], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "OUTSIDE-PROJECT-OK" in proc.stdout
