"""benchmarks/curves.py and the suite's learning-curve phase: the plateau rule on hand-made
curves, the curve runs' schedule, periodic evaluation and early stop, the seeded runs at the
baseline's plateau, and the plots and tables written from hand-made records."""
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from coco_ap import METRICS  # noqa: E402
from curves import evaluation_missing, plateau_factor, plateau_iteration, stop_reason  # noqa: E402
from planning import QUICK_OPTS, Planner, Run  # noqa: E402
from records import write_json  # noqa: E402
from suites import Curve, LRSweep, Model, Pair, Suite, get_suite  # noqa: E402

GRID = (0.005, 0.01, 0.02)


def _points(aps, period=1500):
    return [{"iteration": period * (i + 1), "AP": ap, "AP75": ap / 2, "AP90": ap / 4}
            for i, ap in enumerate(aps)]


def test_plateau_is_the_first_evaluation_gaining_less_than_one_ap_over_two():
    # gains over two evaluations: 15 (10 -> 25), 5.5 (20 -> 25.5), 0.7 (25 -> 25.7 < 1) -> the
    # 5th evaluation, 7500 iterations, 5x the schedule
    pts = _points([10.0, 20.0, 25.0, 25.5, 25.7, 31.0])
    assert plateau_iteration(pts) == (7500, True)
    factor, why = plateau_factor(pts, 1500, 6)
    assert factor == 5 and "25.0 at 4500 -> 25.7 at 7500" in why
    # one evaluation that gains less than 1.0 over the one before does not end the curve
    assert plateau_iteration(_points([10.0, 10.5, 14.0, 18.0])) == (6000, False)
    # a gain of exactly 1.0 over two is not "less than 1.0"; a loss is
    assert plateau_iteration(_points([10.0, 10.5, 11.0, 10.9])) == (6000, True)
    # order of the points does not matter
    assert plateau_iteration(list(reversed(pts))) == (7500, True)


def test_a_curve_that_never_flattens():
    rising = _points([10.0, 12.0, 14.0, 16.0, 18.0, 20.0])
    assert plateau_iteration(rising) == (9000, False)
    factor, why = plateau_factor(rising, 1500, 6)
    assert factor == 6 and "not flattened by 9000" in why
    # cut short (a diverged curve) without flattening: no plateau
    assert plateau_factor(rising[:3], 1500, 6)[0] is None
    assert plateau_iteration([]) == (None, False)
    assert plateau_iteration(rising[:2]) == (3000, False)  # two points cannot show a plateau


def test_a_run_stopped_during_an_evaluation_evaluates_when_resumed():
    pts = _points([10.0, 20.0])  # 1500, 3000
    # resumed at 4500 (the checkpoint written just before the evaluation at 4500): missing
    assert evaluation_missing(pts, 4500, 1500, 9000)
    # resumed at 3000 with its point, mid-way (4000), at the start, at the end, or no curve
    assert not evaluation_missing(pts, 3000, 1500, 9000)
    assert not evaluation_missing(pts, 4000, 1500, 9000)
    assert not evaluation_missing([], 0, 1500, 9000)
    assert not evaluation_missing(pts, 9000, 1500, 9000)  # the final one: EvalHook.after_train
    assert not evaluation_missing([], 3000, 0, 9000)


def test_a_curve_stops_by_the_rule():
    rising = _points([10.0, 20.0, 25.0, 31.0])
    flat = _points([10.0, 20.0, 25.0, 25.5])  # 25.5 - 20.0 = 5.5 over two: not yet
    # the baseline: once its own curve has flattened (25.7 - 25.0 = 0.7 < 1.0 at 7500)
    base_rule = {"rule": "plateau", "min_gain": 1.0}
    assert stop_reason(flat, base_rule) is None
    assert "at iteration 7500" in stop_reason(_points([10.0, 20.0, 25.0, 25.5, 25.7]), base_rule)
    assert stop_reason(rising, base_rule) is None
    # a member: at its baseline's plateau iteration, whatever its own curve does
    assert stop_reason(rising[:3], {"at": 6000}) is None
    assert "6000" in stop_reason(rising, {"at": 6000})
    assert stop_reason(rising, None) is None and stop_reason([], base_rule) is None


def test_which_curve_runs_stop_early(tmp_path):
    planner = _planner(tmp_path)
    for lr, ap in zip(GRID, (20.0, 30.0, 25.0)):
        _record(planner, Run("base", 1, lr), ap)
    assert planner.curve_stop(Run("base", 1, 0.01, 6)) == {"rule": "plateau", "min_gain": 1.0}
    # the member trains its whole schedule until the baseline's curve has flattened
    assert planner.curve_stop(Run("other", 1, 0.01, 6)) is None
    # the baseline flattened at 6000: 38.6 - 38.0 = 0.6 over two evaluations (38.5 - 30.0 = 8.5
    # at 4500 was not)
    _record(planner, Run("base", 1, 0.01, 6), 38.6, _points([30.0, 38.0, 38.5, 38.6]))
    assert planner.curve_stop(Run("other", 1, 0.01, 6)) == {"at": 6000}
    # other seeds, the plateau schedule and the 1x runs train their whole schedule
    assert planner.curve_stop(Run("other", 2, 0.01, 6)) is None
    assert planner.curve_stop(Run("other", 1, 0.01, 3)) is None
    assert planner.curve_stop(Run("other", 1, 0.01)) is None


def test_a_training_stopped_by_the_rule_records_its_last_evaluation(tmp_path):
    """A real (few-iteration) training child evaluated every iteration, with a plateau rule that
    any curve meets at its third evaluation (a gain under 1000 AP): it stops there, out of
    Detectron2's loop, and its record holds that evaluation's metrics."""
    opts = QUICK_OPTS + ["SOLVER.MAX_ITER", "5", "TEST.EVAL_PERIOD", "1",
                         "SOLVER.BASE_LR", "0.01", "SEED", "1"]
    out = tmp_path / "curve"
    spec = {"run": "r", "suite": "t", "why": "test", "model": "fcos", "seed": 1, "lr": 0.01,
            "factor": 6, "config": "configs/iou_aware/fcos_smallR_FPN_shapes.yaml", "opts": opts,
            "suite_command": "cmd", "output_dir": str(out),
            "stop": {"rule": "plateau", "min_gain": 1000.0}}
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "datasets"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--child", "train",
                           json.dumps(spec)], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert [p["iteration"] for p in result["curve"]] == [1, 2, 3]
    assert result["stopped"]["iteration"] == 3 and "1000" in result["stopped"]["why"]
    last = {k: v for k, v in result["curve"][-1].items() if k != "iteration"}
    assert result["metrics"] == last and result["max_iter"] == 5
    # its weights: those of its last trained iteration, index 2 (iterations 4 and 5 never ran)
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 2


def _planner(tmp_path) -> Planner:
    cfg = "configs/baselines/faster_rcnn_smallR_FPN_shapes.yaml"
    models = {"base": Model("base", cfg, "Base"), "other": Model("other", cfg, "Other")}
    suite = Suite("t", models, (Pair("p", "P", ("base", "other"), "claim", timed=False),),
                  seeds=(1, 2, 3), lr_sweep=LRSweep(GRID, {"two_stage": ("base",)}),
                  curves=(Curve("c", "Curve", ("base", "other"), seeded=("base", "other")),),
                  curve_factor=6, curve_eval_period=1500)
    suite.check()
    return Planner(suite, [1, 2, 3], str(tmp_path / "records"), str(tmp_path / "work"))


def _record(planner: Planner, run: Run, ap: float, curve=None) -> None:
    write_json(planner.record_path(run), {
        "run": run.name, "model": run.model, "seed": run.seed, "lr": run.lr, "diverged": None,
        "date": "2020-01-01", "machine": "machine A", "suite_command": "python benchmarks/run.py",
        "metrics": {k: ap if k == "AP" else None for k in METRICS}, "curve": curve,
        "merged_config": planner.config_now(run), "max_iter": 1500 * run.factor})


def test_curve_runs_and_the_seeds_at_the_plateau(tmp_path):
    planner = _planner(tmp_path)
    for lr, ap in zip(GRID, (20.0, 30.0, 25.0)):
        _record(planner, Run("base", 1, lr), ap)
    _record(planner, Run("other", 1, 0.01), 31.0)
    todo = [(p.name, p.why) for p in planner.pieces() if p.status == "todo"]
    # no speed piece for an untimed pair; the curves at 6x, the baseline first
    assert todo == [("base-lr0.01-x6-seed1", "learning curve c"),
                    ("other-lr0.01-x6-seed1", "learning curve c")]
    opts = planner.opts(Run("base", 1, 0.01, 6))
    pairs = dict(zip(opts[::2], opts[1::2]))
    # the configs' 1500 iterations, steps (1100, 1350) and warm-up 100, scaled to 6x
    assert pairs["SOLVER.MAX_ITER"] == "9000" and pairs["SOLVER.STEPS"] == "(6600, 8100)"
    assert pairs["SOLVER.WARMUP_ITERS"] == "100" and pairs["TEST.EVAL_PERIOD"] == "1500"
    assert "TEST.EVAL_PERIOD" not in planner.opts(Run("base", 1, 0.01, 3))
    # the baseline flattens at 6000 (38.6 - 38.0 = 0.6 over two evaluations): seeds 1-3 of both
    # seeded models at 4x
    _record(planner, Run("base", 1, 0.01, 6), 40.0, _points([30.0, 38.0, 38.5, 38.6, 42.0, 43.0]))
    assert planner.plateau(planner.suite.curves[0])[0] == 4
    todo = [p.name for p in planner.pieces() if p.status == "todo"]
    assert todo == ["other-lr0.01-x6-seed1"] + [f"{m}-lr0.01-x4-seed{s}" for s in (1, 2, 3)
                                                for m in ("base", "other")]


def test_curves_are_written_from_the_records(tmp_path):
    planner = _planner(tmp_path)
    for lr, ap in zip(GRID, (20.0, 30.0, 25.0)):
        _record(planner, Run("base", 1, lr), ap)
    _record(planner, Run("base", 1, 0.01, 6), 40.0, _points([30.0, 38.0, 38.5, 38.6, 42.0, 43.0]))
    _record(planner, Run("other", 1, 0.01, 6), 45.0, _points([33.0, 41.0, 44.0, 44.5, 45.0, 46.0]))
    from running import write_curves

    class Args:
        results_dir = str(tmp_path / "results")

    md_path = write_curves(planner, Args, written_by="python benchmarks/run.py --curves",
                           docs_dir=str(tmp_path / "docs"))
    text = open(md_path).read()
    assert "Plateau schedule: 4x (6000 iterations)" in text
    assert "| Base | 30.0 | 38.0 | 38.5 | 38.6 | 42.0 | 43.0 | 21.5 / 10.8 |" in text
    assert "| Other | 33.0 | 41.0 | 44.0 | 44.5 | 45.0 | 46.0 | 23.0 / 11.5 |" in text
    assert "![Curve](../docs/t-c.png)" in text
    with open(tmp_path / "docs" / "t-c.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_embedded_suite_has_the_curves_of_every_pair_asked():
    suite = get_suite("embedded")
    groups = {c.name: c.models for c in suite.curves}
    assert groups["curve_mask_rcnn_vs_r3cnn"][0] == "mask_rcnn"
    assert set(groups["curve_mask_rcnn_vs_r3cnn"]) == {
        "mask_rcnn", "cascade_mask_rcnn", "r3cnn_naive", "r3cnn_naive_dec"}
    # the RetinaNet pair on its normalised head (pair retinanet_causes), both members alike
    assert groups["curve_retinanet_vs_iou_aware"] == ("retinanet_bn_head",
                                                      "iou_aware_retinanet_bn_head")
    for m in groups["curve_retinanet_vs_iou_aware"]:
        opts = suite.models[m].opts
        assert dict(zip(opts[::2], opts[1::2]))["MODEL.RETINANET.NORM"] == "BN"
    assert groups["curve_faster_vs_offset_bin"] == (
        "faster_rcnn", "offset_bin_K1", "offset_bin_K2", "sampler_pisa")
    assert groups["curve_nuclei"][0] == "nuclei_mask_rcnn"
    assert suite.curve_factor * 1500 == 9000 and suite.curve_eval_period == 1500
    with pytest.raises(ValueError, match="not members"):
        Suite("t", suite.models, (), lr_sweep=suite.lr_sweep,
              curves=(Curve("c", "C", ("mask_rcnn",), seeded=("retinanet",)),)).check()
