#!/usr/bin/env python
"""How well RetinaNet's anchors cover the ground truth of a dataset, with no training: for each
anchor setting, the share of ground-truth boxes whose best anchor reaches IoU 0.5 (RetinaNet's
foreground threshold, ``MODEL.RETINANET.IOU_THRESHOLDS``) and the number of foreground anchors per
box, from Detectron2's own anchor generator and Matcher at the config's input size; the positive
anchors per image as RetinaNet labels them, against the first value of its loss normaliser; and
the ground-truth sizes. A box whose best anchor stays below 0.5 is still matched to it
(``allow_low_quality_matches``), but it trains on one weak anchor.

    python benchmarks/retinanet_anchors.py \
        --config-file configs/baselines/retinanet_smallR_FPN_shapes.yaml
"""
import argparse
import os
import sys
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402


def coverage(cfg, sizes: List[List[float]], records: List[dict],
             fg_iou: float) -> Dict[str, float]:
    """Share of boxes with an anchor at IoU >= ``fg_iou``, and foreground anchors per box."""
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
    from detectron2.modeling.matcher import Matcher
    from detectron2.structures import BoxMode, Boxes, pairwise_iou

    strides = [8, 16, 32, 64, 128][: len(sizes)]
    gen = DefaultAnchorGenerator(sizes=sizes,
                                 aspect_ratios=cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
                                 strides=strides, offset=cfg.MODEL.ANCHOR_GENERATOR.OFFSET)
    # RetinaNet's own labelling (Detectron2's RetinaNet.label_anchors): IoU thresholds, labels and
    # the low-quality matches that give every box its best anchor
    matcher = Matcher(cfg.MODEL.RETINANET.IOU_THRESHOLDS, cfg.MODEL.RETINANET.IOU_LABELS,
                      allow_low_quality_matches=True)
    covered, per_box, n, pos_per_image = 0, [], 0, []
    cache = {}
    for r in records:
        h, w = r["height"], r["width"]
        scale = cfg.INPUT.MIN_SIZE_TEST / min(h, w)
        key = (round(h * scale), round(w * scale))
        if key not in cache:
            feats = [torch.zeros(1, 1, -(-key[0] // s), -(-key[1] // s)) for s in strides]
            cache[key] = Boxes.cat(gen(feats))
        anchors = cache[key]
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                 for a in r["annotations"]]
        if not boxes:
            continue
        b = torch.tensor(boxes, dtype=torch.float32) * scale
        iou = pairwise_iou(Boxes(b), anchors)
        pos_per_image.append(int((matcher(iou)[1] == 1).sum()))
        covered += int((iou.max(dim=1).values >= fg_iou).sum())
        per_box += (iou >= fg_iou).sum(dim=1).tolist()
        n += len(b)
    return {"boxes": n, "covered": covered / max(n, 1),
            "fg_anchors_per_box": float(np.mean(per_box)),
            "boxes_without_fg_anchor": n - covered,
            "positives_per_image": float(np.mean(pos_per_image))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", default="configs/baselines/retinanet_smallR_FPN_shapes.yaml")
    p.add_argument("--smallest", type=float, nargs="+", default=[4, 8, 16],
                   help="smallest anchor size (the level P3's octave base) of each setting")
    args = p.parse_args()
    from detectron2.data import DatasetCatalog

    from train_net import build_cfg
    from d2infra.data import ensure_generated

    cfg = build_cfg(args.config_file, [])
    name = cfg.DATASETS.TRAIN[0]
    ensure_generated(name)
    records = DatasetCatalog.get(name)
    from detectron2.structures import BoxMode

    xyxy = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                     for r in records for a in r["annotations"]])
    wh = xyxy[:, 2:] - xyxy[:, :2]
    side = np.sqrt(wh[:, 0] * wh[:, 1])
    print(f"{name}: {len(wh)} boxes; sqrt(w*h) in px at the input size: "
          + ", ".join(f"p{q} {np.percentile(side, q):.1f}" for q in (5, 25, 50, 75, 95)))
    fg = cfg.MODEL.RETINANET.IOU_THRESHOLDS[-1]
    now = [list(map(float, s)) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES]
    print(f"| anchors (P3..P7 octave bases) | boxes with an anchor at IoU >= {fg} | foreground "
          "anchors per box | positive anchors per image (RetinaNet's Matcher) |")
    print("|---|---:|---:|---:|")
    settings = {f"config's ({now[0][0]:g} ... {now[-1][0]:g})": now}
    for s in args.smallest:
        settings[f"{s:g} ... {s * 16:g}"] = [[s * 2 ** k * 2 ** (i / 3) for i in range(3)]
                                            for k in range(5)]
    for label, sizes in settings.items():
        c = coverage(cfg, sizes, records, fg)
        print(f"| {label} | {100 * c['covered']:.1f}% ({c['boxes_without_fg_anchor']} of "
              f"{c['boxes']} without) | {c['fg_anchors_per_box']:.2f} | "
              f"{c['positives_per_image']:.1f} |")
    # The focal loss is divided by an EMA of the batch's positive count (Detectron2's
    # RetinaNet.losses: momentum 0.9, first value 100); FCOS's normaliser is the same EMA.
    batch = cfg.SOLVER.IMS_PER_BATCH
    print(f"\nThe loss normaliser's EMA starts at 100; with the config's anchors a batch of "
          f"{batch} images has about {batch * coverage(cfg, now, records, fg)['positives_per_image']:.0f} "
          "positive anchors (the value the EMA moves to, 0.9 per iteration).")


if __name__ == "__main__":
    main()
