"""tools/offset_bin_stages.py against hand-computed values: a predictor whose bin scores are set by
hand (bias only) gives known accuracies, decoding errors and IoUs (Eqs. 5, 7, 10, 11 of Qiu et al.
by hand); a smooth-L1 predictor set by hand gives known IoUs; the IoU summary, the matching and the
jittered boxes by hand; and the command on freshly initialised embedded models (both legs)."""
import contextlib
import importlib.util
import io
import json
import math
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg

from cli_runs import SMALL, detectron2_log
from offset_bin import add_offset_bin_config
from test_offset_bin_decoding import small_roi_heads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location(
    "offset_bin_stages", os.path.join(ROOT, "tools", "offset_bin_stages.py"))
stages = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stages)
from train_net import Trainer, build_cfg  # noqa: E402

OFFSET_BIN = os.path.join(ROOT, "configs/offset_bin/offset_bin_faster_rcnn_smallR_FPN_shapes.yaml")
FASTER = os.path.join(ROOT, "configs/baselines/faster_rcnn_smallR_FPN_shapes.yaml")

# a = 3, n = 5 (m = 3 inner bins of width w_1 = 2): stage 1's bins (-inf, -3], [-3, -1), [-1, 1),
# [1, 3), [3, inf), representatives [-3, -2, 0, 2, 3] (Eq. 5). Stage 2: a_2 = w_1 / 2 = 1,
# w_2 = 2/3, bins (-inf, -1], [-1, -1/3), [-1/3, 1/3), [1/3, 1), [1, inf),
# representatives [-1, -2/3, 0, 2/3, 1].
PROBS = {
    "A": [0.1, 0.1, 0.2, 0.5, 0.1],  # argmax 3; Eq. 10: stage 1 0.8, stage 2 0.8 / 3
    "B": [0.5, 0.2, 0.1, 0.1, 0.1],  # argmax 0; stage 1 -1.4, stage 2 -0.4 - 0.2 / 3
    "C": [0.1, 0.6, 0.1, 0.1, 0.1],  # argmax 1; stage 1 -1.0, stage 2 -1 / 3
    "D": [0.1, 0.1, 0.6, 0.1, 0.1],  # argmax 2; stage 1 0, stage 2 0
}
# Target offsets t* = (dx, dy, dw, dh). Stage 1 labels: 0.5 -> 2, -1.5 -> 1, 2.5 -> 3, -0.2 -> 2;
# residuals t* - rep: 0.5, 0.5, 0.5, -0.2; stage 2 labels 3, 3, 3, 2.
T_STAR = (0.5, -1.5, 2.5, -0.2)
LABELS = [[2, 3], [1, 3], [3, 3], [2, 2]]  # (coordinate, stage)
# The ground-truth class's (1) vectors per coordinate at stages 1 and 2: predicted bins
# stage 1: 2, 1, 3, 0 (dh wrong, by 2 bins); stage 2: 3, 2, 0, 2 (dy wrong by 1, dw wrong by 3).
LAYOUT = {1: ("DCAB", "ADBD"), 0: ("BBBB", "BBBB"), 2: ("CCCC", "CCCC")}
PROPOSAL = [20.0, 20.0, 60.0, 50.0]  # w 40, h 30, centre (40, 35)
WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _box(box, deltas):
    """Eq. 1 inverted by hand (Box2BoxTransform weights 10, 10, 5, 5)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx, cy = x1 + w / 2 + deltas[0] / 10 * w, y1 + h / 2 + deltas[1] / 10 * h
    w, h = w * math.exp(deltas[2] / 5), h * math.exp(deltas[3] / 5)
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


GT = _box(PROPOSAL, T_STAR)  # inside the 100 x 100 image: no clipping anywhere below


def _heads(predictor: str, cls_agnostic: bool = False):
    cfg = get_cfg()
    add_offset_bin_config(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.NAME = "OffsetBinROIHeads" if predictor != "FastRCNNOutputLayers" \
        else "StandardROIHeads"
    cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = predictor
    cfg.MODEL.OFFSET_BIN.RANGE = 3.0
    cfg.MODEL.OFFSET_BIN.NUM_BINS = 5
    cfg.MODEL.OFFSET_BIN.NUM_STAGES = 2
    cfg.MODEL.OFFSET_BIN.CLS_AGNOSTIC = cls_agnostic
    return small_roi_heads(cfg)


def _hand_set_offset_bin_heads():
    """Bin scores from the bias alone: class c's coordinate i at stage k has log PROBS[...]."""
    heads = _heads("OffsetBinOutputLayers")
    logits = torch.empty(3, 4, 2, 5)
    for c, layout in LAYOUT.items():
        for k in range(2):
            for i in range(4):
                logits[c, i, k] = torch.tensor(PROBS[layout[k][i]]).log()
    with torch.no_grad():
        heads.box_predictor.bin_pred.weight.zero_()
        heads.box_predictor.bin_pred.bias.copy_(logits.reshape(-1))
    return heads


def _features():
    return {"p2": torch.randn(1, 8, 25, 25, generator=torch.Generator().manual_seed(3))}


def test_hand_set_bins_accuracy_decoding_errors_and_ious():
    heads = _hand_set_offset_bin_heads()
    proposals, gt = torch.tensor([PROPOSAL]), torch.tensor([GT])
    predictions = stages.box_head_predictions(heads, _features(), proposals)
    rows = stages.measure_offset_bin(heads.box_predictor, predictions, proposals, gt,
                                     torch.tensor([1]), (100, 100))
    assert rows["label"][0].tolist() == LABELS
    assert rows["pred"][0].tolist() == [[2, 3], [1, 2], [3, 0], [0, 2]]
    # Eq. 7: -log of the target bin's probability.
    ce = [[-math.log(0.6), -math.log(0.5)], [-math.log(0.6), -math.log(0.1)],
          [-math.log(0.5), -math.log(0.1)], [-math.log(0.1), -math.log(0.6)]]
    torch.testing.assert_close(rows["ce"][0], torch.tensor(ce), atol=1e-5, rtol=0)
    # Stage 1 against t*, in units of w_1 = 2: Eq. 10 gives (0, -1, 0.8, -1.4), the argmax
    # (0, -2, 2, -3). Stage 2 against the residuals (0.5, 0.5, 0.5, -0.2), in units of w_2 = 2/3:
    # Eq. 10 gives (0.8/3, 0, -0.4 - 0.2/3, 0), the argmax (2/3, 0, -1, 0).
    stage_exp = [[0.5 / 2, (0.5 - 0.8 / 3) * 1.5], [0.5 / 2, 0.5 * 1.5],
                 [1.7 / 2, (0.5 + 0.4 + 0.2 / 3) * 1.5], [1.2 / 2, 0.2 * 1.5]]
    stage_arg = [[0.5 / 2, (2 / 3 - 0.5) * 1.5], [0.5 / 2, 0.5 * 1.5], [0.5 / 2, 1.5 * 1.5],
                 [2.8 / 2, 0.2 * 1.5]]
    torch.testing.assert_close(rows["stage_err_exp"][0], torch.tensor(stage_exp), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(rows["stage_err_arg"][0], torch.tensor(stage_arg), atol=1e-5,
                               rtol=0)
    # Eq. 11, the sums of the stages: expectation (0, -1, 0.8, -1.4) then
    # (0.8/3, -1, 0.8 - 0.4 - 0.2/3, -1.4); argmax (0, -2, 2, -3) then (2/3, -2, 1, -3).
    exp_sums = [[0.0, -1.0, 0.8, -1.4], [0.8 / 3, -1.0, 0.4 - 0.2 / 3, -1.4]]
    arg_sums = [[0.0, -2.0, 2.0, -3.0], [2 / 3, -2.0, 1.0, -3.0]]
    for name, sums in (("exp", exp_sums), ("arg", arg_sums)):
        roi_units = [[abs(s[i] - T_STAR[i]) / WEIGHTS[i] for s in sums] for i in range(4)]
        torch.testing.assert_close(rows[f"sum_err_{name}"][0], torch.tensor(roi_units),
                                   atol=1e-5, rtol=0)
        ious = [_iou(_box(PROPOSAL, s), GT) for s in sums]
        torch.testing.assert_close(rows[f"iou_{name}"][0], torch.tensor(ious), atol=1e-5, rtol=0)
    # What stage 1 leaves, t* - 0 (all in (-3, 3)) and t* - (0, -1, 0.8, -1.4) = (0.5, -0.5,
    # 1.7, 1.2): in stage 2's (-1, 1) for dx and dy only.
    assert rows["in_range"][0].tolist() == [[True, True], [True, True], [True, False],
                                            [True, False]]

    s = stages.summarize(heads.box_predictor.coder, rows, torch.tensor([_iou(PROPOSAL, GT)]),
                         None, True)
    first, second = s["stages"]
    assert first["accuracy"] == {"dx": 1.0, "dy": 1.0, "dw": 1.0, "dh": 0.0}
    assert second["accuracy"] == {"dx": 1.0, "dy": 0.0, "dw": 0.0, "dh": 1.0}
    assert (first["accuracy_all"], second["accuracy_all"]) == (0.75, 0.5)
    assert (first["within_one_bin"], second["within_one_bin"]) == (0.75, 0.75)
    assert (first["left_in_range"], second["left_in_range"]) == (1.0, 0.5)
    assert first["outer_bin_targets"] == second["outer_bin_targets"] == 0.0
    assert first["uniform_cross_entropy"] == pytest.approx(math.log(5))
    assert second["cross_entropy"] == pytest.approx(sum(c[1] for c in ce) / 4, abs=1e-6)
    assert first["stage_error"]["exp"]["mean"] == pytest.approx(
        sum(r[0] for r in stage_exp) / 4, abs=1e-6)
    assert second["stage_error"]["arg"]["per_coordinate"]["dw"] == pytest.approx(2.25, abs=1e-5)
    assert second["sum_error_roi_units"]["exp"]["per_coordinate"]["dh"] == pytest.approx(0.24,
                                                                                      abs=1e-6)
    assert s["model_decoding"] == "offset_bin_exp_stages1-2"
    assert s["ious"]["offset_bin_exp_stages1-2"]["mean"] == pytest.approx(
        _iou(_box(PROPOSAL, exp_sums[1]), GT), abs=1e-5)
    assert s["ious"]["proposals"]["mean"] == pytest.approx(_iou(PROPOSAL, GT))
    assert "smooth_l1" not in s["ious"]


def test_class_agnostic_bins_are_read_whatever_the_class():
    heads = _heads("OffsetBinOutputLayers", cls_agnostic=True)
    predictor = heads.box_predictor
    with torch.no_grad():  # one set of bins, 4 coordinates x 2 stages, all D
        predictor.bin_pred.weight.zero_()
        predictor.bin_pred.bias.copy_(torch.stack([torch.tensor(PROBS["D"]).log()] * 8).flatten())
    proposals, gt = torch.tensor([PROPOSAL] * 2), torch.tensor([GT] * 2)
    predictions = stages.box_head_predictions(heads, _features(), proposals)
    rows = stages.measure_offset_bin(predictor, predictions, proposals, gt, torch.tensor([2, 0]),
                                     (100, 100))
    assert (rows["pred"] == 2).all()  # D's argmax, for both classes


def test_smooth_l1_boxes_of_the_ground_truth_class():
    """Detectron2's predictor with hand-set deltas: class 1's are t* (IoU 1), class 0's are 0 (the
    proposal's IoU), class 2's (2, 2, 0, 0)."""
    heads = _heads("FastRCNNOutputLayers")
    with torch.no_grad():
        heads.box_predictor.bbox_pred.weight.zero_()
        heads.box_predictor.bbox_pred.bias.copy_(
            torch.tensor([0.0, 0.0, 0.0, 0.0, *T_STAR, 2.0, 2.0, 0.0, 0.0]))
    proposals, gt = torch.tensor([PROPOSAL] * 3), torch.tensor([GT] * 3)
    predictions = stages.box_head_predictions(heads, _features(), proposals)
    ious = stages.measure_baseline(heads.box_predictor, predictions, proposals, gt,
                                   torch.tensor([1, 0, 2]), (100, 100))
    expected = [1.0, _iou(PROPOSAL, GT), _iou(_box(PROPOSAL, (2.0, 2.0, 0.0, 0.0)), GT)]
    torch.testing.assert_close(ious, torch.tensor(expected), atol=1e-5, rtol=0)


def test_decoded_boxes_are_clipped_to_the_image():
    """Class 2's box (dx = 2: 8 px right of the 40-px proposal at x 50..90, as its ground truth)
    leaves the image 90 px wide: IoU 32 / 40 once clipped to 58..90 (32 / 48 unclipped)."""
    heads = _heads("FastRCNNOutputLayers")
    with torch.no_grad():
        heads.box_predictor.bbox_pred.weight.zero_()
        heads.box_predictor.bbox_pred.bias.copy_(torch.tensor([0.0] * 8 + [2.0, 0, 0, 0]))
    proposals = gt = torch.tensor([[50.0, 0.0, 90.0, 20.0]])
    predictions = stages.box_head_predictions(heads, _features(), proposals)
    ious = stages.measure_baseline(heads.box_predictor, predictions, proposals, gt,
                                   torch.tensor([2]), (100, 90))
    assert ious.tolist() == pytest.approx([32 / 40])


def test_iou_summary_hand_computed():
    s = stages.iou_summary(torch.tensor([0.52, 0.63, 0.71, 0.84, 0.93, 1.0]))
    assert s["n"] == 6 and s["mean"] == pytest.approx(4.63 / 6)
    # Linear interpolation between order statistics at position q * (6 - 1).
    assert s["quantiles"] == pytest.approx({"0.1": 0.52 + 0.5 * 0.11, "0.25": 0.63 + 0.25 * 0.08,
                                            "0.5": 0.775, "0.75": 0.84 + 0.75 * 0.09,
                                            "0.9": 0.93 + 0.5 * 0.07})
    assert s["at_least"] == pytest.approx({"0.5": 1.0, "0.7": 4 / 6, "0.8": 3 / 6, "0.9": 2 / 6})
    hist = [0] * 20
    for i in (10, 12, 14, 16, 18, 19):  # 0.52 in [0.50, 0.55), ..., 1.0 in the last bin
        hist[i] += 1
    assert s["histogram"] == hist
    empty = stages.iou_summary(torch.zeros(0))
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and sum(empty["histogram"]) == 0


def test_match_positives_hand_computed():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 70.0, 70.0]])
    proposals = torch.tensor([
        [0.0, 0.0, 10.0, 5.0],     # IoU 0.5 with gt 0
        [20.0, 20.0, 30.0, 30.0],  # no overlap
        [50.0, 50.0, 70.0, 65.0],  # IoU 0.75 with gt 1
        [0.0, 0.0, 10.0, 4.0],     # IoU 0.4
    ])
    keep, gt_index, best = stages.match_positives(proposals, gt, 0.5)
    assert keep.tolist() == [0, 2] and gt_index.tolist() == [0, 1]
    assert best.tolist() == pytest.approx([0.5, 0.75])
    assert stages.match_positives(proposals, gt[:0], 0.5)[0].numel() == 0


def test_jittered_boxes_overlap_their_ground_truth_and_repeat_with_the_seed():
    from detectron2.structures import Boxes, pairwise_iou

    gt = torch.tensor([[10.0, 10.0, 50.0, 40.0], [60.0, 5.0, 95.0, 90.0]])
    boxes = stages.jitter_boxes(gt, (96, 100), 50, torch.Generator().manual_seed(0), 0.5)
    again = stages.jitter_boxes(gt, (96, 100), 50, torch.Generator().manual_seed(0), 0.5)
    assert torch.equal(boxes, again) and boxes.shape == (100, 4)  # 50 per box
    ious = pairwise_iou(Boxes(boxes), Boxes(gt))
    own = torch.cat([ious[:50, 0], ious[50:, 1]])
    assert (own >= 0.5).all() and (own < 1).all()
    assert (own > 0.9).any() and (own < 0.6).any()  # spread over 0.5-1
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= 100).all()
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= 96).all()
    assert stages.jitter_boxes(gt[:0], (96, 100), 5, torch.Generator()).shape == (0, 4)


def test_main_on_fresh_models(tmp_path, datasets_dir):
    """The command end to end on shapes_mini_val, both models freshly initialised: their boxes
    are the proposals' to within 0.01 IoU on average (zero-mean bin scores of std 0.01 give an
    expectation near 0; smooth L1's deltas of std 0.001). The fresh RPN's proposals reach IoU 0.1
    (not 0.5) on these images; with none positive the command prints empty tables."""
    opts = ["MODEL.DEVICE", "cpu", *SMALL, "OUTPUT_DIR", str(tmp_path / "out")]
    weights = {}
    for name, config in (("offset_bin", OFFSET_BIN), ("baseline", FASTER)):
        torch.manual_seed(0)
        model = Trainer.build_model(build_cfg(config, opts))
        DetectionCheckpointer(model, save_dir=str(tmp_path)).save(name)
        weights[name] = str(tmp_path / f"{name}.pth")
    argv = ["--config-file", OFFSET_BIN, "--baseline-config", FASTER, "--baseline-weights",
            weights["baseline"], "--max-images", "2", "MODEL.WEIGHTS", weights["offset_bin"],
            *opts]
    printed = io.StringIO()
    with detectron2_log(datasets_dir), contextlib.redirect_stdout(printed):
        got = stages.main(argv)
        empty = stages.main(["--proposals", "offset_bin", "--min-iou", "0.95", *argv])
        from_rpn = stages.main(["--proposals", "baseline", "--min-iou", "0.1", *argv])
    with open(tmp_path / "out" / "offset_bin_stages" / "offset_bin_stages.json") as f:
        written = json.load(f)
    assert written["proposals"] == "baseline" and written["date"].startswith("20")
    assert written["command"].startswith("python tools/offset_bin_stages.py --proposals baseline")
    assert written["machine"].endswith("cores, cpu")
    assert got["images"] == 2 and got["positives"] > 0 and from_rpn["positives"] > 0
    assert {r["n"] for r in got["ious"].values()} == {got["positives"]}
    assert len(got["stages"]) == 2 and got["model_decoding"] == "offset_bin_exp_stages1-2"
    for result in (got, from_rpn):
        proposals = result["ious"]["proposals"]["mean"]
        assert proposals >= result["min_iou"]
        for row in ("smooth_l1", "offset_bin_exp_stages1-1", "offset_bin_exp_stages1-2"):
            assert result["ious"][row]["mean"] == pytest.approx(proposals, abs=0.01), row
        for s in result["stages"]:
            assert 0 <= s["accuracy_all"] <= 1
    assert empty["positives"] == 0 and empty["ious"]["smooth_l1"]["n"] == 0
    text = printed.getvalue()
    assert "| offset_bin_exp_stages1-2 (the model's) |" in text and "| smooth_l1 |" in text


def test_refuses_bad_input(tmp_path):
    opts = ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="--out comes after the KEY VALUE pairs"):
        stages.main(["--config-file", OFFSET_BIN, "MODEL.WEIGHTS", "ob.pth", "--out", "x"])
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS"):
        stages.main(["--config-file", OFFSET_BIN, "MODEL.WEIGHTS", str(tmp_path / "no.pth"),
                     *opts])
    torch.manual_seed(0)
    model = Trainer.build_model(build_cfg(FASTER, opts))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("faster")
    faster = str(tmp_path / "faster.pth")
    with pytest.raises(ValueError, match="MODEL.ROI_BOX_HEAD.PREDICTOR"):
        stages.main(["--config-file", FASTER, "MODEL.WEIGHTS", faster, *opts])
    with pytest.raises(ValueError, match="--baseline-weights"):
        stages.main(["--config-file", OFFSET_BIN, "--proposals", "baseline", "MODEL.WEIGHTS",
                     faster, *opts])
    smaller = tmp_path / "smaller.yaml"  # the baseline's images at 128 px, the offset bins' at 256
    smaller.write_text(f'_BASE_: "{FASTER}"\nINPUT:\n  MIN_SIZE_TEST: 128\n  MAX_SIZE_TEST: 128\n')
    with pytest.raises(ValueError, match="INPUT.MIN_SIZE_TEST differs"):
        stages.main(["--config-file", OFFSET_BIN, "--baseline-config", str(smaller),
                     "--baseline-weights", faster, "MODEL.WEIGHTS", faster, *opts])
