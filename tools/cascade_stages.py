#!/usr/bin/env python
"""Where a trained cascade's accuracy comes from: its stages' scores or its stages' boxes.

    python tools/cascade_stages.py --config-file CONFIG MODEL.WEIGHTS path/to/model_final.pth \
        [--out DIR] [KEY VALUE ...]

At inference Detectron2's ``CascadeROIHeads._forward_box`` ranks the boxes of the last stage by the
mean of every stage's class probabilities. On the same weights and the same proposals, this tool
evaluates ``cfg.DATASETS.TEST[0]`` with every combination of

- scores: the mean over the stages (``mean``, Detectron2's) or one stage's alone (``stage0``, ...);
- boxes: the regressed boxes of one stage (``stage0``, ... ; the last is Detectron2's),

and prints each combination's box AP, AP50, AP75 and AP90 (COCOEvaluator; AP90 from pycocotools'
precision array, as the benchmark tables). A second table measures the boxes alone, without any
score: for the RPN proposals whose IoU with a ground-truth box is at least 0.5, the mean IoU of
each stage's regressed box with that same ground truth.

Works for Detectron2's ``CascadeROIHeads`` and its subclasses with class-agnostic boxes (every
Cascade config of this project).
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from coco_ap import box_ap_at_ious  # noqa: E402
from train_net import Trainer, build_cfg  # noqa: E402

__all__ = ["StageOutputs", "combine", "main", "run_stages", "tracked_ious"]

StageOutputs = Tuple[List, List[List[torch.Tensor]], List[List[torch.Tensor]]]


def _cascade_heads(model):
    from detectron2.modeling.roi_heads import CascadeROIHeads

    heads = getattr(model, "roi_heads", None)
    if not isinstance(heads, CascadeROIHeads):
        raise ValueError(f"tools/cascade_stages.py needs a model whose ROI heads are a "
                         f"CascadeROIHeads; this config builds {type(heads).__name__} "
                         f"(MODEL.ROI_HEADS.NAME)")
    return heads


@torch.no_grad()
def run_stages(model, batched_inputs: List[dict]) -> Tuple[object, List, StageOutputs]:
    """Runs the model's backbone, RPN and every cascade stage as ``CascadeROIHeads._forward_box``
    does at inference (stage k > 0 takes stage k-1's clipped boxes, none dropped, so the rows of
    all stages stay aligned with the RPN's proposals).

    Returns:
        (images, proposals, (image_sizes, scores, boxes)): the preprocessed ImageList, the RPN's
        proposals per image, and per stage the class probabilities (R x (K+1)) and regressed
        boxes (R x 4) of each image.
    """
    heads = _cascade_heads(model)
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    box_features = [features[f] for f in heads.box_in_features]
    image_sizes = [p.image_size for p in proposals]
    scores, boxes, stage_proposals = [], [], proposals
    for k in range(heads.num_cascade_stages):
        if k > 0:
            stage_proposals = heads._create_proposals_from_boxes(boxes[-1], image_sizes)
        predictions = heads._run_stage(box_features, stage_proposals, k)
        predictor = heads.box_predictor[k]
        boxes.append(list(predictor.predict_boxes(predictions, stage_proposals)))
        scores.append(list(predictor.predict_probs(predictions, stage_proposals)))
        if boxes[-1] and boxes[-1][0].shape[1] != 4:
            raise ValueError("tools/cascade_stages.py needs class-agnostic boxes "
                             "(MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True, as Cascade R-CNN)")
    return images, proposals, (image_sizes, scores, boxes)


def combine(model, outputs: StageOutputs, score_from: str, box_from: int) -> List:
    """Detections per image (Instances, network input size) from the scores of ``score_from``
    ("mean" or "stage<k>") and the boxes of stage ``box_from``, with the last predictor's score
    threshold, NMS and detections per image (Detectron2's ``fast_rcnn_inference``)."""
    from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference

    heads = _cascade_heads(model)
    image_sizes, scores, boxes = outputs
    if score_from == "mean":
        # The expression of CascadeROIHeads._forward_box, so the default combination is its output.
        chosen = [sum(list(per_image)) * (1.0 / heads.num_cascade_stages)
                  for per_image in zip(*scores)]
    elif score_from.startswith("stage") and score_from[5:].isdigit() \
            and int(score_from[5:]) < len(scores):
        chosen = scores[int(score_from[5:])]
    else:
        raise ValueError(f"scores from {score_from!r}: expected 'mean' or 'stage0'.."
                         f"'stage{len(scores) - 1}'")
    if not 0 <= box_from < len(boxes):
        raise ValueError(f"boxes from stage {box_from}: the model has {len(boxes)} stages")
    last = heads.box_predictor[-1]
    instances, _ = fast_rcnn_inference(boxes[box_from], chosen, image_sizes,
                                       last.test_score_thresh, last.test_nms_thresh,
                                       last.test_topk_per_image)
    return instances


def tracked_ious(proposal_boxes: torch.Tensor, stage_boxes: Sequence[torch.Tensor],
                 gt_boxes: torch.Tensor, min_iou: float = 0.5) -> Tuple[List[float], int]:
    """Mean IoU after each stage, for the proposals that overlap a ground-truth box.

    Args:
        proposal_boxes: R x 4 (XYXY) boxes of the RPN.
        stage_boxes: per stage, the R x 4 boxes it regressed from row i of the proposals (aligned).
        gt_boxes: G x 4 ground-truth boxes, in the same coordinates.
        min_iou: a proposal is tracked when its best IoU with a ground truth is at least this.

    Returns:
        (the tracked proposals' mean IoU with their ground truth, then after each stage;
        the number of tracked proposals). Each proposal keeps the ground truth it matched
        first, so a stage is measured on the object its proposal was for.
    """
    from detectron2.structures import Boxes, pairwise_iou
    from detectron2.structures.boxes import matched_pairwise_iou

    if len(gt_boxes) == 0 or len(proposal_boxes) == 0:
        return [float("nan")] * (1 + len(stage_boxes)), 0
    best, gt_index = pairwise_iou(Boxes(proposal_boxes), Boxes(gt_boxes)).max(dim=1)
    keep = best >= min_iou
    n = int(keep.sum())
    if n == 0:
        return [float("nan")] * (1 + len(stage_boxes)), 0
    gt = gt_boxes[gt_index[keep]]
    means = [float(best[keep].mean())]
    for boxes in stage_boxes:
        ious = matched_pairwise_iou(Boxes(boxes[keep]), Boxes(gt))
        means.append(float(ious.mean()))
    return means, n


def _gt_boxes(dataset_dict: dict) -> torch.Tensor:
    from detectron2.structures import BoxMode

    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
             for a in dataset_dict.get("annotations", []) if not a.get("iscrowd", 0)]
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Evaluates every combination and prints two Markdown tables; returns
    ``{"ap": {(scores, boxes): {"AP": .., "AP50": .., "AP75": .., "AP90": ..}},
    "ious": [proposals, stage0, ...], "tracked": N}``."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog
    from detectron2.evaluation import COCOEvaluator
    from detectron2.modeling import GeneralizedRCNN
    from detectron2.structures import Boxes

    from d2infra.data import ensure_generated, register_coco_format_datasets

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--out", default=None,
                   help="where the COCO results files go (default OUTPUT_DIR/cascade_stages)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs, MODEL.WEIGHTS first")
    args = p.parse_args(argv)
    cfg = build_cfg(args.config_file, args.opts)
    if not cfg.MODEL.WEIGHTS or not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise FileNotFoundError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r} does not exist: this tool "
                                f"evaluates trained weights")
    register_coco_format_datasets(cfg)
    dataset = cfg.DATASETS.TEST[0]
    json_file, _ = ensure_generated(dataset)
    model = Trainer.build_model(cfg)
    _cascade_heads(model)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    out = args.out or os.path.join(cfg.OUTPUT_DIR, "cascade_stages")
    os.makedirs(out, exist_ok=True)
    num_stages = model.roi_heads.num_cascade_stages
    combos = [(s, b) for s in ["mean"] + [f"stage{k}" for k in range(num_stages)]
              for b in range(num_stages)]
    dirs = {(s, b): os.path.join(out, f"scores-{s}_boxes-stage{b}") for s, b in combos}
    evaluators = {}
    for combo in combos:
        evaluators[combo] = COCOEvaluator(dataset, tasks=("bbox",), distributed=False,
                                          output_dir=dirs[combo], use_fast_impl=False)
        evaluators[combo].reset()
    gts = {d["image_id"]: _gt_boxes(d) for d in DatasetCatalog.get(dataset)}
    iou_sums, tracked = [0.0] * (1 + num_stages), 0
    for inputs in Trainer.build_test_loader(cfg, dataset):
        images, proposals, outputs = run_stages(model, inputs)
        for s, b in combos:
            detections = GeneralizedRCNN._postprocess(combine(model, outputs, s, b), inputs,
                                                      images.image_sizes)
            evaluators[s, b].process(inputs, detections)
        _, _, boxes = outputs
        for i, x in enumerate(inputs):
            h, w = proposals[i].image_size
            scale = torch.tensor([x["width"] / w, x["height"] / h] * 2)
            stage_boxes = [Boxes(per_stage[i].detach().cpu().clone()) for per_stage in boxes]
            for sb in stage_boxes:  # clipped, as the next stage and the final detections see them
                sb.clip((h, w))
            means, n = tracked_ious(proposals[i].proposal_boxes.tensor.cpu() * scale,
                                    [sb.tensor * scale for sb in stage_boxes], gts[x["image_id"]])
            if n:
                iou_sums = [a + m * n for a, m in zip(iou_sums, means)]
                tracked += n
    ap = {}
    for (s, b), evaluator in evaluators.items():
        bbox = evaluator.evaluate().get("bbox", {})
        results = os.path.join(dirs[s, b], "coco_instances_results.json")
        extra = box_ap_at_ious(results, json_file, ious=(0.9,),
                               max_dets=cfg.TEST.DETECTIONS_PER_IMAGE)
        ap[s, b] = {"AP": bbox.get("AP", 0.0), "AP50": bbox.get("AP50", 0.0),
                    "AP75": bbox.get("AP75", 0.0), "AP90": extra["AP90"]}
    ious = [a / tracked if tracked else float("nan") for a in iou_sums]

    print(f"\nBox AP of {dataset} (weights {cfg.MODEL.WEIGHTS}); Detectron2's output is scores "
          f"'mean', boxes of stage {num_stages - 1}.\n")
    print("| scores | boxes | AP | AP50 | AP75 | AP90 |\n|---|---|---|---|---|---|")
    for (s, b), m in ap.items():
        print(f"| {s} | stage{b} | {m['AP']:.1f} | {m['AP50']:.1f} | {m['AP75']:.1f} | "
              f"{m['AP90']:.1f} |")
    print(f"\nMean IoU with their ground truth of the {tracked} RPN proposals at IoU >= 0.5, "
          f"before and after each stage's regression:\n")
    print("| boxes | mean IoU |\n|---|---|")
    for name, v in zip(["proposals"] + [f"stage{k}" for k in range(num_stages)], ious):
        print(f"| {name} | {v:.3f} |")
    with open(os.path.join(out, "cascade_stages.json"), "w") as f:
        json.dump({"weights": cfg.MODEL.WEIGHTS, "dataset": dataset, "tracked": tracked,
                   "ious": ious, "ap": [{"scores": s, "boxes": f"stage{b}", **m}
                                        for (s, b), m in ap.items()]}, f, indent=1)
    return {"ap": ap, "ious": ious, "tracked": tracked}


if __name__ == "__main__":
    main()
