"""tools/cascade_stages.py: its default combination is Detectron2's CascadeROIHeads inference on the
same weights, one stage's scores are what Detectron2's mean implies when the other stages are
uniform, and the tracked IoUs are the hand-computed ones."""
import contextlib
import importlib.util
import io
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer

from cli_runs import SMALL, detectron2_log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location(
    "cascade_stages", os.path.join(ROOT, "tools", "cascade_stages.py"))
cascade_stages = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cascade_stages)
from train_net import Trainer, build_cfg  # noqa: E402

CASCADE = os.path.join(ROOT, "configs/baselines/cascade_mask_rcnn_smallR_FPN_shapes.yaml")
FASTER = os.path.join(ROOT, "configs/baselines/faster_rcnn_smallR_FPN_shapes.yaml")


def _model(*opts):
    cfg = build_cfg(CASCADE, ["MODEL.DEVICE", "cpu", *opts])
    torch.manual_seed(0)
    return Trainer.build_model(cfg).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    return [{"image": torch.randint(0, 256, (3, 96, 128), generator=g, dtype=torch.uint8),
             "height": 96, "width": 128},
            {"image": torch.randint(0, 256, (3, 128, 96), generator=g, dtype=torch.uint8),
             "height": 128, "width": 96}]


def _detectron2_and_ours(model, scores_from):
    """(Detectron2's inference, the tool's scores of ``scores_from`` on the last stage's boxes) per
    image, before rescaling to the input size."""
    inputs = _inputs()
    with torch.no_grad():
        reference = model.inference(inputs, do_postprocess=False)
    _, _, outputs = cascade_stages.run_stages(model, inputs)
    return zip(reference, cascade_stages.combine(model, outputs, scores_from, 2))


def test_mean_scores_last_boxes_is_detectron2_inference():
    for r, o in _detectron2_and_ours(_model(), "mean"):
        assert len(r) > 0
        assert torch.equal(r.pred_boxes.tensor, o.pred_boxes.tensor)
        assert torch.equal(r.scores, o.scores)
        assert torch.equal(r.pred_classes, o.pred_classes)


def test_one_stage_scores_from_detectron2_mean_with_uniform_stages():
    """Stages 0 and 1 give every class 1 / (K + 1) (zero classifier), so Detectron2's mean is
    s = (p2 + 2 / (K + 1)) / 3 and stage 2 alone must score p2 = 3 s - 2 / (K + 1), ranking the
    same boxes in the same order (score threshold 0: no cut that the scale would move)."""
    model = _model("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    heads = model.roi_heads
    with torch.no_grad():
        for k in (0, 1):
            heads.box_predictor[k].cls_score.weight.zero_()
            heads.box_predictor[k].cls_score.bias.zero_()
        heads.box_predictor[2].cls_score.weight.mul_(50)  # spread stage 2's scores: no near-ties
    num_classes = heads.box_predictor[2].num_classes
    for r, o in _detectron2_and_ours(model, "stage2"):
        assert len(o) == len(r) > 0
        torch.testing.assert_close(o.scores, 3 * r.scores - 2 / (num_classes + 1),
                                   rtol=0, atol=1e-6)
        assert torch.equal(r.pred_boxes.tensor, o.pred_boxes.tensor)
        assert torch.equal(r.pred_classes, o.pred_classes)


def test_tracked_ious_hand_computed():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 70.0, 70.0]])
    proposals = torch.tensor([
        [0.0, 0.0, 10.0, 5.0],     # IoU 0.5 with gt 0: tracked
        [20.0, 20.0, 30.0, 30.0],  # no overlap: not tracked
        [50.0, 50.0, 70.0, 65.0],  # IoU 0.75 with gt 1: tracked
    ])
    stage0 = torch.tensor([[0.0, 0.0, 10.0, 8.0], [0.0, 0.0, 1.0, 1.0], [50.0, 50.0, 70.0, 70.0]])
    # stage 1 moves the first box onto gt 1's place: measured against gt 0 still (IoU 0)
    stage1 = torch.tensor([[50.0, 50.0, 70.0, 70.0], [20.0, 20.0, 30.0, 30.0],
                           [55.0, 50.0, 70.0, 70.0]])
    means, n = cascade_stages.tracked_ious(proposals, [stage0, stage1], gt)
    assert n == 2
    assert means == pytest.approx([(0.5 + 0.75) / 2, (0.8 + 1.0) / 2, (0.0 + 0.75) / 2])
    assert cascade_stages.tracked_ious(proposals, [stage0], gt[:0])[1] == 0


def test_refuses_a_model_without_cascade():
    cfg = build_cfg(FASTER, ["MODEL.DEVICE", "cpu"])
    model = Trainer.build_model(cfg).eval()
    with pytest.raises(ValueError, match="CascadeROIHeads"):
        cascade_stages.run_stages(model, _inputs())
    with pytest.raises(ValueError, match="'stage3'"):
        cascade_stages.combine(_model(), ([], [[]] * 3, [[]] * 3), "stage3", 0)


def test_main_default_row_is_detectron2_evaluation(tmp_path, datasets_dir):
    """The table's Detectron2 row (mean scores, last boxes) has the AP of train_net.py's own
    evaluation (Trainer.test) of the same weights on shapes_mini_val."""
    weights = str(tmp_path / "model.pth")
    opts = ["MODEL.DEVICE", "cpu", *SMALL, "OUTPUT_DIR", str(tmp_path / "out")]
    with detectron2_log(datasets_dir):
        cfg = build_cfg(CASCADE, opts)
        from d2infra.data import register_coco_format_datasets
        register_coco_format_datasets(cfg)
        torch.manual_seed(0)
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
        reference = Trainer.test(cfg, model)["bbox"]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            got = cascade_stages.main(["--config-file", CASCADE, "MODEL.WEIGHTS", weights, *opts])
    assert len(got["ap"]) == 4 * 3
    for key in ("AP", "AP50", "AP75"):
        assert got["ap"]["mean", 2][key] == pytest.approx(reference[key], abs=1e-9, nan_ok=True)
    assert got["tracked"] > 0 and 0.5 <= got["ious"][0] <= 1
    assert "| mean | stage2 |" in printed.getvalue()
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS"):
        cascade_stages.main(["--config-file", CASCADE, "MODEL.WEIGHTS", str(tmp_path / "no.pth")])
