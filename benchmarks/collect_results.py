#!/usr/bin/env python
"""Markdown table of the final evaluation of finished train_net.py runs.

    python benchmarks/collect_results.py output/mask_rcnn_smallR_FPN_shapes output/r3cnn_naive ...

Reads each OUTPUT_DIR's ``metrics.json`` (written by train_net.py) and takes the last evaluation in
it: COCO box AP, AP50, AP75, AP at IoU 0.6/0.7/0.8/0.9 and the score-IoU Spearman correlation (from
the localization-quality evaluator), mask AP when present, and the last training iteration.
"""
import argparse
import json
import os
from typing import Dict, List, Optional

COLUMNS = [("box AP", "bbox/AP"), ("AP50", "bbox/AP50"), ("AP75", "bbox/AP75"),
           ("AP60", "loc_quality/AP60"), ("AP70", "loc_quality/AP70"),
           ("AP80", "loc_quality/AP80"), ("AP90", "loc_quality/AP90"),
           ("mask AP", "segm/AP"), ("Spearman(score, IoU)", "loc_quality/spearman")]


def final_evaluation(output_dir: str) -> Optional[Dict]:
    """The last metrics.json row with evaluation results, plus ``iteration`` of the last
    training row; None when the run has not been evaluated."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: is {output_dir} a train_net.py OUTPUT_DIR?")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in rows if "bbox/AP" in r]
    train = [r for r in rows if "total_loss" in r]
    if not evals:
        return None
    return dict(evals[-1], iteration=train[-1]["iteration"] + 1 if train else 0)


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
    print(table(p.parse_args().output_dirs))
