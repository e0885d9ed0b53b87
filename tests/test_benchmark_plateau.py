"""The suite at the plateau (planning phase 7, the report's plateau section and its Markdown):
the noise rule's categories at their boundaries (``seed_noise.judge``), which seeds the planner
trains at the plateau (the first of every member, every seed of the seeded ones and of a member
whose verdict there differs from its verdict at the schedule), and the primary Results with the
paper's claims, all on hand-made records with hand-computed values."""
import math
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from coco_ap import METRICS  # noqa: E402
from planning import Planner, Run  # noqa: E402
from records import write_json  # noqa: E402
from report_aggregate import aggregate  # noqa: E402
from report_markdown import render_markdown  # noqa: E402
from seed_noise import GAIN, LOSS, NONE, judge  # noqa: E402
from suites import Claim, Curve, LRSweep, Model, Pair, Suite  # noqa: E402

GRID = (0.005, 0.01, 0.02)
CFG = "configs/baselines/faster_rcnn_smallR_FPN_shapes.yaml"
BOUND = 2 * math.sqrt(2)  # twice the noise of one run against another, for a seed std of 1.0


def _planner(tmp_path, names, metric="AP", seeded=(), claims=()) -> Planner:
    models = {m: Model(m, CFG, m.title()) for m in names}
    suite = Suite("t", models, (Pair("p", "P", tuple(names), "claim", metric=metric,
                                     seeded=tuple(seeded), timed=False),),
                  seeds=(1, 2, 3), lr_sweep=LRSweep(GRID, {"two_stage": (names[0],)}),
                  curves=(Curve("c", "Curve", tuple(names), seeded=tuple(seeded),
                                claims=tuple(claims)),),
                  curve_factor=6, curve_eval_period=1500)
    suite.check()
    return Planner(suite, [1, 2, 3], str(tmp_path / "records"), str(tmp_path / "work"))


def _record(planner: Planner, run: Run, metrics, curve=None) -> None:
    """A finished run: ``metrics`` a box AP or {metric: value} (the rest None)."""
    metrics = metrics if isinstance(metrics, dict) else {"AP": metrics}
    write_json(planner.record_path(run), {
        "run": run.name, "model": run.model, "seed": run.seed, "lr": run.lr, "diverged": None,
        "date": "2020-01-01", "machine": "machine A", "suite_command": "python benchmarks/run.py",
        "metrics": {k: metrics.get(k) for k in METRICS}, "curve": curve,
        "merged_config": planner.config_now(run), "config_digest": "d",
        "max_iter": 1500 * run.factor, "ims_per_batch": 4, "params_total": 2e6,
        "params_head": 1e6, "head_module": "roi_heads", "peak_rss_mb": 900,
        "train_dataset": ["shapes_train"], "test_dataset": ["shapes_val"]})


def _to_the_plateau(planner: Planner, short: dict) -> None:
    """The sweep (0.01 best: the baseline's first seed in ``short`` beats 10.0 and 15.0), the
    schedule's records ``short`` (model -> value per seed) and every member's learning curve;
    the baseline's flattens at 6000 iterations: 4x."""
    base = planner.suite.curves[0].models[0]
    _record(planner, Run(base, 1, 0.005), 10.0)
    _record(planner, Run(base, 1, 0.02), 15.0)
    for m, values in short.items():
        for seed, v in enumerate(values, 1):
            _record(planner, Run(m, seed, 0.01), v)
    flat = [{"iteration": 1500 * (i + 1), "AP": ap, "AP75": 0.0, "AP90": 0.0}
            for i, ap in enumerate((30.0, 38.0, 38.5, 38.6))]  # 38.6 - 38.0 = 0.6 < 1 at 6000
    for m in planner.suite.curves[0].models:
        _record(planner, Run(m, 1, 0.01, 6), 38.6, flat)
    assert planner.plateau(planner.suite.curves[0])[0] == 4


def _plateau_pieces(planner: Planner):
    return [(p.name, p.status) for p in planner.pieces() if "-x4-" in p.name]


def test_the_noise_rule_at_its_boundaries():
    # one run against another, std 1.0: real beyond 2 * sqrt(2) = 2.828
    assert judge(2.83, None, None, 1.0) == (GAIN, math.sqrt(2), False)
    assert judge(2.82, None, None, 1.0).category == NONE
    assert judge(-2.83, None, None, 1.0).category == LOSS
    assert judge(-2.82, None, None, 1.0).category == NONE
    # the model's own std when nothing stands in (0.5: beyond 1.414), a stand-in before it
    assert judge(1.42, 0.5, None).category == GAIN and judge(1.41, 0.5, None).category == NONE
    assert judge(1.42, 0.5, None, 1.0).category == NONE
    # both sides seeded: sqrt(1.0 + 0.25) = 1.118, real beyond 2.236, whatever stands in
    assert judge(2.24, 1.0, 0.5, 100.0) == (GAIN, math.sqrt(1.25), True)
    assert judge(-2.23, 1.0, 0.5).category == NONE and judge(-2.24, 1.0, 0.5).category == LOSS
    # no std at all: not separable
    assert judge(50.0, None, None) == (NONE, None, False)
    # the claims: "beats" needs a real gain, "close" no real loss, "within" |d| <= margin
    beats, close = Claim("", "a", "b", "beats"), Claim("", "a", "b", "close")
    within = Claim("", "a", "b", "within", margin=0.5)
    assert beats.holds(3.0, GAIN) and not beats.holds(3.0, NONE)
    assert close.holds(-1.0, NONE) and close.holds(5.0, GAIN) and not close.holds(-5.0, LOSS)
    assert within.holds(-0.5, LOSS) and not within.holds(0.51, NONE)


def test_the_seeds_at_the_plateau_follow_the_verdicts(tmp_path):
    """Pair metric AP80 (box AP is 20.0 everywhere: read on it, no verdict would change).
    Base: seeds 30, 31, 32 at the schedule (std 1.0: a single seed is real beyond 2.828).
    "Flip": +1.0 at the schedule (none), +2.9 at the plateau (gain): its seeds 2-3 are trained.
    "Stay": +1.0 at the schedule (none), +2.8 at the plateau (none): seed 1 only."""
    names = ("base", "s", "flip", "stay")
    planner = _planner(tmp_path, names, metric="AP80", seeded=("base", "s"))
    ap80 = lambda v: {"AP": 20.0, "AP80": v}  # noqa: E731
    _to_the_plateau(planner, {"base": [ap80(30.0), ap80(31.0), ap80(32.0)],
                              "s": [ap80(31.0)] * 3, "flip": [ap80(32.0)],
                              "stay": [ap80(32.0)]})
    wait = ("waiting (seed 1 of it and of base at the plateau decide: more seeds only if a "
            "verdict there differs from the schedule's)")
    # before seed 1 at the plateau: seed 1 of every member, seeds 2-3 of the seeded ones, and
    # seeds 2-3 of the others waiting for the verdict
    assert _plateau_pieces(planner) == (
        [(f"{m}-lr0.01-x4-seed1", "todo") for m in names]
        + [x for s in (2, 3) for x in ((f"base-lr0.01-x4-seed{s}", "todo"),
                                        (f"s-lr0.01-x4-seed{s}", "todo"),
                                        (f"flip-lr0.01-x4-seed{s}", wait),
                                        (f"stay-lr0.01-x4-seed{s}", wait))])
    for m, v in (("base", 40.0), ("s", 40.0), ("flip", 42.9), ("stay", 42.8)):
        _record(planner, Run(m, 1, 0.01, 4), ap80(v))
    assert 42.9 - 40.0 > BOUND > 42.8 - 40.0
    verdict = planner.member_verdict(planner.suite.curves[0], "flip", 4, [1])
    assert (verdict["short"], verdict["plateau"], verdict["metric"]) == (NONE, GAIN, "AP80")
    assert verdict["ref_source"] == "the baseline's 3 seeds at 1500 iterations (a stand-in)"
    todo = [(p.name, p.why) for p in planner.pieces() if p.status == "todo"]
    assert todo == [(f"{m}-lr0.01-x4-seed{s}", f"seed {s} at the plateau (4x) of c" + why)
                    for s in (2, 3) for m, why in
                    (("base", ""), ("s", ""),
                     ("flip", ": its verdict there differs (none at the schedule, gain there)"))]
    # the selection of the curve alone (no pair selected) reads the verdicts on the same pair
    sub = Planner(planner.suite.select(["c"]), [1, 2, 3], planner.records_dir, planner.work)
    assert [p.name for p in sub.pieces() if p.status == "todo"] == [p for p, _ in todo]
    # the report: entries at the plateau, categories, what is missing
    members = {m["model"]: m for m in aggregate(planner, "cmd", False)["plateau"][0]["members"]}
    assert members["flip"]["entry"]["mean"]["AP80"] == 42.9
    assert (members["flip"]["short"], members["flip"]["plateau"], members["flip"]["differs"],
            members["flip"]["seeds_missing"]) == (NONE, GAIN, True, [2, 3])
    assert (members["stay"]["plateau"], members["stay"]["differs"],
            members["stay"]["seeds_missing"]) == (NONE, False, [])
    # the seeds come in: Base 40, 41, 39 (mean 40.0, std 1.0), Flip 42.9, 40.1, 40.1 (mean
    # 41.03, std 1.62): +1.03 within 2 * sqrt(1.0 + 2.61) = 3.8, none over all seeds. The
    # decision stays with seed 1: the seeds trained stay in the plan, done
    for seed, (b, f) in ((2, (41.0, 40.1)), (3, (39.0, 40.1))):
        _record(planner, Run("base", seed, 0.01, 4), ap80(b))
        _record(planner, Run("s", seed, 0.01, 4), ap80(40.0))
        _record(planner, Run("flip", seed, 0.01, 4), ap80(f))
    assert [(n, s) for n, s in _plateau_pieces(planner) if n.startswith("flip")] == [
        (f"flip-lr0.01-x4-seed{s}", "done") for s in (1, 2, 3)]
    members = {m["model"]: m for m in aggregate(planner, "cmd", False)["plateau"][0]["members"]}
    assert (members["flip"]["plateau"], members["flip"]["differs"],
            members["flip"]["seeds_missing"]) == (NONE, False, [])


def test_a_baseline_that_is_not_seeded_gets_the_seeds_of_a_member_that_flips(tmp_path):
    """No seeded model (box AP): with the baseline's single seed at the schedule there is no
    std to tell noise by, at the schedule or at the plateau (none and none): seed 1 only, once
    both are in. With the baseline's three seeds at the schedule (std 1.0) the same member is a
    gain there and none at the plateau: its seeds 2-3 and the baseline's are trained."""
    names = ("base", "flip")
    planner = _planner(tmp_path, names)
    _to_the_plateau(planner, {"base": [30.0], "flip": [40.0]})
    wait = [(n, s) for n, s in _plateau_pieces(planner) if s.startswith("waiting")]
    assert [n for n, _ in wait] == [f"{m}-lr0.01-x4-seed{s}" for s in (2, 3)
                                    for m in ("base", "flip")]
    _record(planner, Run("base", 1, 0.01, 4), 40.0)
    _record(planner, Run("flip", 1, 0.01, 4), 50.0)
    assert _plateau_pieces(planner) == [("base-lr0.01-x4-seed1", "done"),
                                        ("flip-lr0.01-x4-seed1", "done")]
    # the baseline's seeds at the schedule: 30, 31, 29 (mean 30.0, std 1.0): "flip" is a gain
    # there (+10.0 > 2.828) and none at the plateau (+0.5): the baseline's seeds 2-3 with its own
    for seed, v in ((2, 31.0), (3, 29.0)):
        _record(planner, Run("base", seed, 0.01), v)
    _record(planner, Run("flip", 1, 0.01, 4), 40.5)
    assert [(n, s) for n, s in _plateau_pieces(planner) if s == "todo"] == [
        (f"{m}-lr0.01-x4-seed{s}", "todo") for s in (2, 3) for m in ("base", "flip")]


def _claims_report(tmp_path) -> dict:
    """R beats Base, R close to Casc, Dec within 0.5 of R; seeds 1-3 of Base, R and Casc at the
    plateau, Dec seed 1."""
    names = ("base", "r", "casc", "dec")
    claims = (Claim("R beats Base", "r", "base", "beats"),
              Claim("R comes close to Casc", "r", "casc", "close"),
              Claim("Dec is within 0.5 AP of R", "dec", "r", "within", margin=0.5))
    planner = _planner(tmp_path, names, seeded=("base", "r", "casc"), claims=claims)
    _to_the_plateau(planner, {"base": [30.0, 31.0, 32.0], "r": [33.0, 34.0, 35.0],
                              "casc": [34.0, 35.0, 36.0], "dec": [36.0]})
    for m, values in (("base", (40.0, 41.0, 42.0)), ("r", (44.0, 45.0, 46.0)),
                      ("casc", (45.0, 46.0, 47.0)), ("dec", (46.0,))):
        for seed, v in enumerate(values, 1):
            _record(planner, Run(m, seed, 0.01, 4), v)
    return aggregate(planner, "cmd", False)


def test_the_claims_are_stated_on_the_plateau(tmp_path):
    report = _claims_report(tmp_path)
    md = render_markdown(report)
    primary, sweep = md.index("### At the plateau (primary)"), md.index("### Learning-rate sweep")
    short = md.index("### Short-budget comparison: 1500 iterations")
    assert primary < sweep < short < md.index("### P, 1500 iterations, BASE_LR 0.01")
    assert "#### Curve: 4x the schedule, 6000 iterations, BASE_LR 0.01" in md
    assert "| Base | 1, 2, 3 | 41.0 ± 1.0 |" + " - |" * 7 + " baseline | baseline |" in md
    # Dec at the schedule: 36.0 - 31.0 = +5.0 > 2.828 (gain); at the plateau 46.0 - 41.0 = +5.0
    # against the baseline's 3 seeds there (std 1.0): gain; seed 1 alone decides: no more seeds
    assert "| Dec | 1 | 46.0 |" + " - |" * 7 + " gain | gain |" in md
    # means 41, 45, 46 (std 1.0 each): +4.0 and +5.0 beyond 2 * sqrt(2) = 2.83
    assert ("Here, against Base: R +4.0 AP (a real gain, 3 seeds); Casc +5.0 AP (a real gain, 3 "
            "seeds); Dec +5.0 AP (one seed; beyond twice the noise the baseline's 3 seeds show).")\
        in md
    assert "Still to train" not in md
    # R - Base = +4.0 (gain: holds); R - Casc = -1.0 within 2.83 (no real loss: holds);
    # Dec - R = +1.0, one seed against R's three (std 1.0): within noise, but |1.0| > 0.5
    assert ("- Paper: R beats Base. At the plateau: R against Base +4.0 AP (a real gain, 3 "
            "seeds): holds.") in md
    assert ("- Paper: R comes close to Casc. At the plateau: R against Casc -1.0 AP (within seed "
            "noise, 3 seeds): holds.") in md
    assert ("- Paper: Dec is within 0.5 AP of R. At the plateau: Dec against R +1.0 AP (one "
            "seed; within twice the noise R's 3 seeds show); |d| 1.0 > 0.5: does not hold.") in md
    assert [(c["d"], c["category"], c["holds"]) for c in report["plateau"][0]["claims"]] == [
        (4.0, GAIN, True), (-1.0, NONE, True), (1.0, NONE, False)]


def test_without_a_plateau_the_results_are_unchanged(tmp_path):
    """Before any plateau is known the report has no plateau group and the Markdown neither the
    primary part nor the short-budget heading (the text of before)."""
    names = ("base", "r")
    planner = _planner(tmp_path, names, seeded=("base",))
    for lr, ap in zip(GRID, (20.0, 30.0, 25.0)):
        _record(planner, Run("base", 1, lr), ap)
    _record(planner, Run("r", 1, 0.01), 31.0)
    report = aggregate(planner, "cmd", False)
    assert report["plateau"] == []
    md = render_markdown(report)
    assert "plateau" not in md and "Short-budget" not in md
    del report["plateau"]  # a report written before the plateau section
    assert render_markdown(report) == md
