"""The noise rule, in one place: whether a difference between two models is a real gain, a real
loss or none, against the seeds' noise. The Results sentences (``report_markdown``) word it; the
planner (``planning``: which models get more seeds at the plateau) and the report's plateau
section (``report_aggregate``) decide with it.

A difference ``d`` (a model's mean minus the other's) is real when it exceeds twice its noise:
sqrt(std_a^2 + std_b^2) when both sides have seeds; sqrt(2) times one std when one run stands
against another (``ref_std``, the seeded side's or a stand-in the caller names, else the model's
own); with no std at all it is not separable from noise (category "none").
"""
import math
import statistics
from typing import List, NamedTuple, Optional, Sequence, Tuple

__all__ = ["GAIN", "LOSS", "NONE", "Judgement", "judge", "mean_std", "first_std"]

GAIN, LOSS, NONE = "gain", "loss", "none"


class Judgement(NamedTuple):
    """``category``: GAIN, LOSS or NONE; ``noise``: the noise ``d`` was held against (None: no
    std to tell noise by); ``both_seeded``: both sides had seeds."""

    category: str
    noise: Optional[float]
    both_seeded: bool


def judge(d: float, std: Optional[float], base_std: Optional[float],
          ref_std: Optional[float] = None) -> Judgement:
    """The noise rule on a difference ``d`` of a model (seed std ``std``) to another
    (``base_std``): both stds -> noise sqrt(std^2 + base_std^2); else ``ref_std`` (the seed std
    standing in for one run against another), else the model's own ``std``, times sqrt(2); else
    no noise. Real (GAIN or LOSS) when |d| > 2 * noise."""
    if std is not None and base_std is not None:
        noise, both = math.sqrt(std ** 2 + base_std ** 2), True
    elif ref_std is not None or std is not None:
        noise, both = math.sqrt(2) * (ref_std if ref_std is not None else std), False
    else:
        return Judgement(NONE, None, False)
    category = GAIN if d > 2 * noise else LOSS if d < -2 * noise else NONE
    return Judgement(category, noise, both)


def mean_std(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float]]:
    """(mean, sample std) of the values that are not None; std None for fewer than two."""
    vals: List[float] = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def first_std(*candidates: Tuple[Optional[float], str]) -> Tuple[Optional[float], str]:
    """The first (std, where it comes from) whose std is known; (None, "") if none is."""
    return next(((s, src) for s, src in candidates if s is not None), (None, ""))
