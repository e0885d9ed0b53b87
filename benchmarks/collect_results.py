#!/usr/bin/env python
"""Markdown table of the final evaluation of finished train_net.py runs, or of their training
metrics at the end of training.

    python benchmarks/collect_results.py output/mask_rcnn_smallR_FPN_shapes output/r3cnn_naive ...
    python benchmarks/collect_results.py --train fast_rcnn/fg_cls_accuracy loss_cls --last 200 \
        benchmarks/work/embedded/faster_rcnn-lr0.01-seed1 ...

Reads each OUTPUT_DIR's ``metrics.json`` (written by train_net.py) and takes the last evaluation in
it: COCO box AP, AP50, AP75, AP at IoU 0.6/0.7/0.8/0.9 and the score-IoU Spearman correlation (from
the localization-quality evaluator), mask AP when present, and the last training iteration. With
``--train KEY ...``: the mean of each key over the training rows Detectron2's writer logged in the
last ``--last`` iterations (one row every 20 iterations; a scalar stored with EventStorage's
smoothing hint, the default, is the median of its last 20 values).
"""
import argparse
import json
import os
from typing import Dict, List, Optional

COLUMNS = [("box AP", "bbox/AP"), ("AP50", "bbox/AP50"), ("AP75", "bbox/AP75"),
           ("AP60", "loc_quality/AP60"), ("AP70", "loc_quality/AP70"),
           ("AP80", "loc_quality/AP80"), ("AP90", "loc_quality/AP90"),
           ("mask AP", "segm/AP"), ("Spearman(score, IoU)", "loc_quality/spearman")]


def _metrics_rows(output_dir: str) -> List[Dict]:
    """The rows of ``OUTPUT_DIR/metrics.json``, one JSON object per line."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: is {output_dir} a train_net.py "
                                "OUTPUT_DIR?")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def final_evaluation(output_dir: str) -> Optional[Dict]:
    """The last metrics.json row with evaluation results, plus ``iteration`` of the last
    training row; None when the run has not been evaluated."""
    rows = _metrics_rows(output_dir)
    evals = [r for r in rows if "bbox/AP" in r]
    train = [r for r in rows if "total_loss" in r]
    if not evals:
        return None
    return dict(evals[-1], iteration=train[-1]["iteration"] + 1 if train else 0)


def training_means(output_dir: str, keys: List[str], last: int) -> Dict[str, Optional[float]]:
    """Mean of each key over the logged training rows of the last ``last`` iterations (None: the
    key is in none of them)."""
    train = [r for r in _metrics_rows(output_dir) if "total_loss" in r]
    if not train:
        raise ValueError(f"{os.path.join(output_dir, 'metrics.json')} has no training row")
    end = max(r["iteration"] for r in train)
    tail = [r for r in train if r["iteration"] > end - last]
    means = {}
    for k in keys:
        values = [r[k] for r in tail if k in r]
        means[k] = sum(values) / len(values) if values else None
    return means


def training_table(output_dirs: List[str], keys: List[str], last: int) -> str:
    lines = [f"| run (mean over the last {last} iterations) | " + " | ".join(keys) + " |",
             "|---" * (len(keys) + 1) + "|"]
    for d in output_dirs:
        m = training_means(d, keys, last)
        lines.append(f"| {os.path.basename(d.rstrip('/'))} | "
                     + " | ".join("–" if v is None else f"{v:.3f}" for v in m.values()) + " |")
    return "\n".join(lines)


def table(output_dirs: List[str]) -> str:
    lines = ["| run | iterations | " + " | ".join(c for c, _ in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for d in output_dirs:
        r = final_evaluation(d)
        if r is None:
            lines.append(f"| {os.path.basename(d.rstrip('/'))} | not evaluated |")
            continue
        cells = [f"{r[k]:.1f}" if k in r and "spearman" not in k else
                 (f"{r[k]:.3f}" if k in r else "–") for _, k in COLUMNS]
        lines.append(f"| {os.path.basename(d.rstrip('/'))} | {r['iteration']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dirs", nargs="+")
    p.add_argument("--train", nargs="+", metavar="KEY", default=None,
                   help="training metrics (e.g. fast_rcnn/fg_cls_accuracy loss_cls) instead of "
                        "the final evaluation")
    p.add_argument("--last", type=int, default=200,
                   help="with --train: the iterations at the end of training to average over")
    args = p.parse_args()
    print(training_table(args.output_dirs, args.train, args.last) if args.train else
          table(args.output_dirs))
