#!/usr/bin/env python
"""Plot the imbalance diagnostics of a training run from its ``metrics.json``.

    python tools/plot_imbalance.py OUTPUT_DIR [--out DIR]

Writes into ``DIR`` (default ``OUTPUT_DIR``):

- ``imbalance_iou_hist.png``: per stage or loop, the histogram of the IoUs of the positive RoIs
  (or anchors) the head trained on, 10 bins over [0.5, 1.0] (the R^3-CNN paper's Figure 2), with
  the stages side by side and their sum;
- ``imbalance_fg_bg.png``: the fg:bg ratio of the sampled RoIs (positive:negative anchors for
  dense heads) of each stage over the iterations.

The keys come from :mod:`imbalance.diagnostics`. With ``ImbalanceStatsHook`` registered, the
running totals ``imbalance_cum/<stage>/...`` count every iteration; without it, only the
``imbalance/<stage>/...`` values of the iterations that Detectron2's writer recorded (one every 20)
are available, and the plots say so in their titles.
"""
import argparse
import json
import os
import re
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_BIN = re.compile(r"^(imbalance|imbalance_cum)/(.+)/iou_(\d\.\d\d)$")
_COUNT = re.compile(r"^(imbalance|imbalance_cum)/(.+)/(num_fg|num_bg)$")


def read_metrics(path: str) -> List[Dict]:
    """The rows of a Detectron2 ``metrics.json`` (one JSON object per line), by iteration."""
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by an interrupted write
    return sorted((r for r in rows if "iteration" in r), key=lambda r: r["iteration"])


def _stage_order(stages) -> List[str]:
    def key(s):
        m = re.search(r"(\d+)$", s)
        return (re.sub(r"\d+$", "", s), int(m.group(1)) if m else -1)
    return sorted(stages, key=key)


def iou_histograms(rows: List[Dict]) -> Tuple[Dict[str, Dict[str, float]], bool]:
    """Per stage, the counts per IoU bin (lower edge -> count) and whether they cover every
    iteration (the hook's running totals) or only the recorded ones (sum of their values)."""
    cumulative: Dict[str, Dict[str, float]] = defaultdict(dict)
    sampled: Dict[str, Dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        for key, value in row.items():
            m = _BIN.match(key)
            if not m:
                continue
            kind, stage, edge = m.groups()
            if kind == "imbalance_cum":
                cumulative[stage][edge] = value  # rows are in order: the last total wins
            else:
                sampled[stage][edge] += value
    if cumulative:
        return dict(cumulative), True
    return {s: dict(v) for s, v in sampled.items()}, False


def fg_bg_series(rows: List[Dict]) -> Tuple[Dict[str, Tuple[List[int], List[float]]], bool]:
    """Per stage, (iterations, fg:bg ratios): between consecutive writes from the running totals
    when present, else the ratio of each recorded iteration."""
    totals: Dict[str, Dict[int, Dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    single: Dict[str, Dict[int, Dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        for key, value in row.items():
            m = _COUNT.match(key)
            if m:
                kind, stage, name = m.groups()
                target = totals if kind == "imbalance_cum" else single
                target[stage][row["iteration"]][name] = value
    series = {}
    if totals:
        for stage, by_iter in totals.items():
            iters, ratios, prev = [], [], {"num_fg": 0.0, "num_bg": 0.0}
            for it in sorted(by_iter):
                cur = by_iter[it]
                if "num_fg" not in cur or "num_bg" not in cur:
                    continue
                dfg, dbg = cur["num_fg"] - prev["num_fg"], cur["num_bg"] - prev["num_bg"]
                if dfg + dbg > 0:
                    iters.append(it)
                    ratios.append(dfg / max(dbg, 1.0))
                prev = cur
            series[stage] = (iters, ratios)
        return series, True
    for stage, by_iter in single.items():
        pts = [(it, v["num_fg"] / max(v["num_bg"], 1.0)) for it, v in sorted(by_iter.items())
               if "num_fg" in v and "num_bg" in v]
        series[stage] = ([p[0] for p in pts], [p[1] for p in pts])
    return series, False


def plot_iou_histograms(hists: Dict[str, Dict[str, float]], complete: bool, path: str) -> None:
    """Grouped bars: one group per IoU bin, one bar per stage (RoI stages and anchors apart)."""
    roi_stages = _stage_order(s for s in hists if s != "anchors")
    panels = [("RoI heads", roi_stages)] if roi_stages else []
    if "anchors" in hists:
        panels.append(("dense head (anchors)", ["anchors"]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.6 * len(panels)), squeeze=False)
    edges = sorted({e for h in hists.values() for e in h}, key=float)
    for ax, (title, stages) in zip(axes[:, 0], panels):
        n = len(stages) + (1 if len(stages) > 1 else 0)
        width = 0.8 / n
        for i, stage in enumerate(stages):
            counts = [hists[stage].get(e, 0.0) for e in edges]
            ax.bar([k + (i - (n - 1) / 2) * width for k in range(len(edges))], counts, width,
                   label=stage)
        if len(stages) > 1:
            total = [sum(hists[s].get(e, 0.0) for s in stages) for e in edges]
            ax.bar([k + (n - 1 - (n - 1) / 2) * width for k in range(len(edges))], total, width,
                   label="sum", color="0.6")
        ax.set_xticks(range(len(edges)))
        ax.set_xticklabels([f"{float(e):.2f}" for e in edges])
        ax.set_xlabel("IoU with the matched ground truth (bin lower edge)")
        ax.set_ylabel("positive samples")
        ax.set_title(f"{title}: IoU histogram of positives"
                     + ("" if complete else " (recorded iterations only)"))
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_fg_bg(series: Dict[str, Tuple[List[int], List[float]]], complete: bool, path: str) -> None:
    """One line per stage: fg:bg of the sampled RoIs (pos:neg anchors) over iterations."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for stage in _stage_order(series):
        iters, ratios = series[stage]
        ax.plot(iters, ratios, marker=".", label=stage)
    ax.set_xlabel("iteration")
    ax.set_ylabel("fg : bg")
    if any(series[s][1] and min(series[s][1]) > 0 for s in series):
        ax.set_yscale("log")
    ax.set_title("fg:bg of the training samples"
                 + (" (per write interval)" if complete else " (recorded iterations only)"))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> List[str]:
    """Run the command; returns the paths of the PNGs written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="a training OUTPUT_DIR containing metrics.json")
    parser.add_argument("--out", default=None, help="where to write the PNGs (default OUTPUT_DIR)")
    args = parser.parse_args(argv)
    metrics = os.path.join(args.output_dir, "metrics.json")
    if not os.path.isfile(metrics):
        parser.error(f"{metrics} does not exist")
    rows = read_metrics(metrics)
    out = args.out or args.output_dir
    os.makedirs(out, exist_ok=True)
    written = []
    hists, complete = iou_histograms(rows)
    if hists:
        path = os.path.join(out, "imbalance_iou_hist.png")
        plot_iou_histograms(hists, complete, path)
        written.append(path)
    series, complete = fg_bg_series(rows)
    if series:
        path = os.path.join(out, "imbalance_fg_bg.png")
        plot_fg_bg(series, complete, path)
        written.append(path)
    if not written:
        print(f"no imbalance/... keys in {metrics}; was the model built with this project's heads?",
              file=sys.stderr)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
