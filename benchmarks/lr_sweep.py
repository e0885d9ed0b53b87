"""The protocol's learning-rate rule: which BASE_LR of the grid a family trains at, from the sweep
of its baselines, and which rate is a diverged member's own best.

The rule (benchmarks/README.md, "Protocol"):

* A rate at which any baseline of the family diverged (Detectron2's Inf/NaN check) is out, with
  any seed: ``Planner.sweep_results`` reports a first-seed result as diverged when a later seed of
  the same baseline diverged at that rate.
* Of the others, the family takes the rate with the highest box AP averaged over its baselines
  (two-stage: Faster R-CNN and Mask R-CNN, whose box branches are the same network; single-stage:
  RetinaNet alone). When one rate is the best of every baseline, it is also the best of the mean,
  so the mean only decides where the baselines disagree, and then it weighs both equally, as the
  family holds as many box-only pairs (offset bins, samplers) as mask pairs (R^3-CNN).
* Means within ``TIE_AP`` of the best are a tie, settled for the lowest rate: one seed cannot
  tell such rates apart, and the lower one is further from divergence.
"""
from typing import Dict, Mapping, Optional, Sequence, Tuple

__all__ = ["TIE_AP", "choose_rate", "own_best_rate"]

# Box AP points (the tables' last digit) below which two rates' means count as equal.
TIE_AP = 0.05

# (model, rate) -> box AP, or None when that training diverged. A missing key: not trained yet.
SweepResults = Mapping[Tuple[str, float], Optional[float]]


def choose_rate(grid: Sequence[float], baselines: Sequence[str],
                results: SweepResults) -> Tuple[Optional[float], str]:
    """The family's BASE_LR and why (a sentence for the report).

    Returns (None, what is missing) until every baseline has a result at every rate of ``grid``;
    raises ValueError when every rate of the grid made some baseline diverge.
    """
    missing = [f"{m} at {lr:g}" for lr in grid for m in baselines if (m, lr) not in results]
    if missing:
        return None, f"the sweep has not finished ({len(missing)} to train: {', '.join(missing)})"
    means: Dict[float, float] = {}
    diverged = []
    for lr in grid:
        aps = [results[(m, lr)] for m in baselines]
        if any(ap is None for ap in aps):
            diverged.append(lr)
        else:
            means[lr] = sum(aps) / len(aps)
    if not means:
        raise ValueError(f"every BASE_LR of the grid {list(grid)} made a baseline of "
                         f"{list(baselines)} diverge: widen the grid downwards")
    best = max(means.values())
    lr = min(r for r, v in means.items() if v >= best - TIE_AP)
    what = "box AP" if len(baselines) == 1 else f"mean box AP of {' and '.join(baselines)}"
    why = (f"BASE_LR {lr:g}: highest {what} ("
           + ", ".join(f"{r:g}: {v:.1f}" for r, v in sorted(means.items()))
           + (f"; diverged at {', '.join(f'{r:g}' for r in diverged)}" if diverged else "")
           + (")" if lr == max(means, key=means.get) else
              f"; within {TIE_AP} AP of the highest, the lowest such rate)"))
    return lr, why


def own_best_rate(grid: Sequence[float], model: str,
                  results: SweepResults) -> Tuple[Optional[float], str]:
    """A diverged member's own best rate of ``grid``: the same rule with the model alone.
    (None, why) while some rate is untrained or when it diverged at every rate."""
    try:
        return choose_rate(grid, [model], results)
    except ValueError:
        return None, f"{model} diverged at every BASE_LR of the grid"
