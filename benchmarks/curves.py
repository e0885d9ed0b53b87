"""Learning curves: the plateau rule, and the curves' plots and table.

A curve is a model trained once at ``curve_factor`` times the schedule (the LR steps scaled) and
evaluated every 1x of the schedule (``planning.Planner.opts``); each point holds the metrics of
``coco_ap.metrics_from_results`` at that iteration (``train_child``).

The plateau rule (read off the group's baseline): training has flattened at the first evaluation
whose box AP gained less than ``MIN_GAIN`` (1.0) over its last two evaluations, i.e. over the one
two evaluations before it (AP[n] - AP[n-2] < 1.0, n >= 2: one noisy evaluation alone does not end
the curve); the plateau schedule is that evaluation's iteration, as a multiple of the base
schedule. A curve that never flattens has its plateau at its last evaluation, and says so.
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["MIN_GAIN", "CURVE_METRICS", "plateau_iteration", "plateau_factor", "plot_curves",
           "curves_markdown", "evaluation_missing", "stop_reason"]

MIN_GAIN = 1.0
CURVE_METRICS = ("AP", "AP75", "AP90")


def plateau_iteration(points: Sequence[dict], min_gain: float = MIN_GAIN,
                      metric: str = "AP") -> Tuple[Optional[int], bool]:
    """(the iteration where the curve has flattened, whether it did): the first point, from the
    third on, whose ``metric`` gained less than ``min_gain`` over its last two evaluations (over
    the point two before it); else (the last point's iteration, False). (None, False) for no
    point."""
    pts = sorted(points, key=lambda p: p["iteration"])
    for before, cur in zip(pts, pts[2:]):
        if cur[metric] is not None and before[metric] is not None and \
                cur[metric] - before[metric] < min_gain:
            return cur["iteration"], True
    return (pts[-1]["iteration"], False) if pts else (None, False)


def plateau_factor(points: Sequence[dict], period: int, max_factor: int,
                   min_gain: float = MIN_GAIN) -> Tuple[Optional[int], str]:
    """(the plateau schedule as a multiple of the ``period`` iterations of the base schedule,
    why), by :func:`plateau_iteration`; a curve cut short of ``max_factor`` (diverged) that never
    flattened gives (None, why)."""
    it, flat = plateau_iteration(points, min_gain)
    if it is None:
        return None, "no evaluation yet"
    pts = {p["iteration"]: p["AP"] for p in points}
    factor = max(1, round(it / period))
    if flat:
        before = sorted(i for i in pts if i < it)[-2]
        return factor, (f"box AP {pts[before]:.1f} at {before} -> {pts[it]:.1f} at {it}: gained "
                        f"less than {min_gain:g} over two evaluations")
    if factor < max_factor:
        return None, f"the curve stops at {it} iterations without flattening"
    return factor, (f"not flattened by {it} iterations (every evaluation gained {min_gain:g} or "
                    "more): its last one")


def stop_reason(points: Sequence[dict], stop: Optional[dict]) -> Optional[str]:
    """Why a learning-curve run stops after its latest evaluation, or None to train on. The
    curve's stopping rule ("train up to 6x, or until the baseline's box AP gains less than 1.0
    over its last two evaluations"): ``stop`` {"rule": "plateau", "min_gain": g} for the group's
    baseline (its own curve has flattened, :func:`plateau_iteration`), {"at": N} for the other
    members once the baseline's plateau is known (they stop at the same iteration N), None for a
    run that trains its whole schedule."""
    if not stop or not points:
        return None
    last = max(p["iteration"] for p in points)
    if stop.get("at") is not None and last >= stop["at"]:
        return f"the group's baseline flattened at iteration {stop['at']}"
    if stop.get("rule") == "plateau":
        min_gain = stop.get("min_gain", MIN_GAIN)
        it, flat = plateau_iteration(points, min_gain)
        if flat:
            return (f"its box AP gained less than {min_gain:g} over its last two evaluations at "
                    f"iteration {it}")
    return None


def evaluation_missing(points: Sequence[dict], start_iter: int, period: int,
                       max_iter: int) -> bool:
    """Whether a curve run resumed at ``start_iter`` must evaluate before it trains on: its last
    checkpoint (written at the step before an evaluation) is at an evaluation's iteration that
    has no point, i.e. the run stopped during that evaluation. The final evaluation is not
    concerned: Detectron2's EvalHook runs it after training, resumed or not."""
    return (period > 0 and 0 < start_iter < max_iter and start_iter % period == 0
            and all(p["iteration"] != start_iter for p in points))


def plot_curves(title: str, curves: Dict[str, List[dict]], plateau_at: Optional[int],
                path: str, metrics: Sequence[str] = CURVE_METRICS) -> str:
    """One PNG: ``metrics`` against iteration, a panel each, one line per model (label ->
    points), the plateau schedule marked with a vertical line. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, pts in curves.items():
            pts = sorted(pts, key=lambda p: p["iteration"])
            ax.plot([p["iteration"] for p in pts], [p[metric] for p in pts], marker="o", ms=3,
                    label=label)
        if plateau_at is not None:
            ax.axvline(plateau_at, color="grey", ls="--", lw=1)
            ax.text(plateau_at, ax.get_ylim()[0], " plateau", color="grey", fontsize=8,
                    va="bottom")
        ax.set_title(f"box {metric}")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    # one legend under the panels, where it hides no point
    handles, labels = axes[0][0].get_legend_handles_labels()
    rows = (len(labels) + 1) // 2
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07 * rows, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def curves_markdown(rows: List[dict]) -> str:
    """A Markdown table per curve group: ``rows`` of {"title", "plot", "plateau", "why",
    "models": {label: points}} -> the box AP of each model at each evaluation."""
    out = []
    for r in rows:
        out.append(f"### {r['title']}\n")
        out.append(f"![{r['title']}]({r['plot']})\n")
        out.append(f"Plateau schedule: {r['plateau']} ({r['why']}).\n")
        iters = sorted({p["iteration"] for pts in r["models"].values() for p in pts})
        out.append("| model | " + " | ".join(f"AP @{i}" for i in iters) + " | AP75 / AP90 last |")
        out.append("|---|" + "---:|" * (len(iters) + 1))
        for label, pts in r["models"].items():
            by = {p["iteration"]: p for p in pts}
            last = by[max(by)] if by else None
            cells = [f"{by[i]['AP']:.1f}" if i in by else "" for i in iters]
            tail = f"{last['AP75']:.1f} / {last['AP90']:.1f}" if last else ""
            out.append(f"| {label} | " + " | ".join(cells) + f" | {tail} |")
        out.append("")
    return "\n".join(out)
