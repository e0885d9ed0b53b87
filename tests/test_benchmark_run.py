"""benchmarks/run.py: AP at one IoU from pycocotools' precision array, and a --quick run end to end
(one pair and one eval-only ablation), resumed."""
import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from run import (METRICS, RESULTS_BEGIN, RESULTS_END, _check_resumable, _verdict,  # noqa: E402
                 aggregate, ap_at_iou, box_ap_at_ious, config_changes, render_markdown)
from suites import Model, Pair, Suite, get_suite, models_to_train  # noqa: E402


# ---------------------------------------------------------------------------------------------
# ap_at_iou on a hand-built case
# ---------------------------------------------------------------------------------------------
def _gt() -> dict:
    """One image, two 100x100 ground truths of class 1; class 2 exists but has no ground truth."""
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 10000,
             "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [200, 200, 100, 100],
             "area": 10000, "iscrowd": 0}]
    return {"images": [{"id": 1, "width": 400, "height": 400}], "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


# IoU 0.85 (score 0.9) with the first, 0.65 (score 0.8) with the second; a class-2 detection
# with no ground truth of its class (its precision cells are -1 and must be ignored).
DETS = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 85], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [200, 200, 100, 65], "score": 0.8},
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 50, 50], "score": 0.7}]
# Hand-computed, COCO's 101 recall points: both boxes match up to IoU 0.65 -> AP 100; from 0.7 to
# 0.85 only the first (recall 0.5, precision 1 at recall points 0, 0.01, ..., 0.5: 51 of 101)
# -> 5100/101; above 0.85 none -> 0.
EXPECTED = {0.5: 100.0, 0.6: 100.0, 0.65: 100.0, 0.7: 5100 / 101, 0.75: 5100 / 101,
            0.8: 5100 / 101, 0.85: 5100 / 101, 0.9: 0.0, 0.95: 0.0}


@pytest.fixture(scope="module")
def coco_eval():
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = _gt()
        gt.createIndex()
        e = COCOeval(gt, gt.loadRes(DETS), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


@pytest.mark.parametrize("iou", sorted(EXPECTED))
def test_ap_at_iou_hand_computed(coco_eval, iou):
    assert ap_at_iou(coco_eval, iou) == pytest.approx(EXPECTED[iou], abs=1e-9)


def test_ap_at_iou_matches_pycocotools_precision_and_summary(coco_eval):
    precision = coco_eval.eval["precision"]
    assert precision.shape[2] == 2 and (precision[:, :, 1, 0, -1] == -1).all()  # class 2: no GT
    for t_index, iou in enumerate(coco_eval.params.iouThrs):
        # the bare array gives the same as the COCOeval
        assert ap_at_iou(precision, float(iou)) == ap_at_iou(coco_eval, float(iou))
        # pycocotools' own cell of class 1 (the only class with ground truth), area all, maxDets 100
        assert ap_at_iou(precision, float(iou)) == pytest.approx(
            precision[t_index, :, 0, 0, 2].mean() * 100)
    # COCOeval.summarize()'s AP50 and AP75
    assert ap_at_iou(coco_eval, 0.5) == pytest.approx(coco_eval.stats[1] * 100)
    assert ap_at_iou(coco_eval, 0.75) == pytest.approx(coco_eval.stats[2] * 100)


def test_ap_at_iou_rejects_a_threshold_not_in_the_array(coco_eval):
    with pytest.raises(ValueError, match="0.62"):
        ap_at_iou(coco_eval, 0.62)


def test_box_ap_at_ious_from_files(tmp_path):
    (tmp_path / "gt.json").write_text(json.dumps(_gt()))
    (tmp_path / "dets.json").write_text(json.dumps(DETS))
    got = box_ap_at_ious(str(tmp_path / "dets.json"), str(tmp_path / "gt.json"))
    assert got == pytest.approx({"AP50": 100.0, "AP60": 100.0, "AP70": 5100 / 101,
                                 "AP80": 5100 / 101, "AP90": 0.0})
    (tmp_path / "none.json").write_text("[]")
    assert set(box_ap_at_ious(str(tmp_path / "none.json"), str(tmp_path / "gt.json")).values()) \
        == {0.0}


# ---------------------------------------------------------------------------------------------
# The suite definitions
# ---------------------------------------------------------------------------------------------
def test_embedded_suite_configs_exist_and_headlines_repeat():
    suite = get_suite("embedded")
    for m in suite.models.values():
        assert os.path.isfile(os.path.join(REPO, m.config)), m.config
    order = models_to_train(suite, list(suite.seeds))
    assert len(order) == len(set(order))
    assert {m for m, _ in order} == set(suite.models)
    seeded = {"retinanet", "iou_aware_retinanet", "faster_rcnn", "offset_bin_K1"}
    assert {m for m, s in order if s == 2} == {m for m, s in order if s == 3} == seeded
    assert suite.seeds == (1, 2, 3)
    for p in suite.pairs:  # a pair's members share one schedule
        assert len({suite.schedule(m) for m in p.models}) == 1, p.name
    assert suite.schedule("faster_rcnn") == 600 and suite.schedule("retinanet") == 1500
    with pytest.raises(ValueError, match="no_such_pair"):
        suite.select(["no_such_pair"])


def test_suite_check_rejects_mixed_schedules_and_stray_seeded_models():
    models = {"a": Model("a", "a.yaml", "A"), "b": Model("b", "b.yaml", "B", max_iter=100)}
    with pytest.raises(ValueError, match="share one schedule"):
        Suite("s", models, (Pair("p", "P", ("a", "b"), "claim"),), max_iter=50).check()
    Suite("s", models, (Pair("p", "P", ("a", "b"), "claim"),), max_iter=100).check()
    with pytest.raises(ValueError, match="noise_from 'a' is not a seeded model"):
        Suite("s", models, (Pair("p", "P", ("a", "b"), "claim", noise_from="a"),),
              max_iter=100).check()
    with pytest.raises(ValueError, match=r"seeded models \['c'\]"):
        Suite("s", models, (Pair("p", "P", ("a", "b"), "c", headline=True, seeded=("c",)),),
              max_iter=100).check()


def test_interrupted_run_resumes_only_with_its_own_configuration(tmp_path):
    spec = {"model": "m", "config": "configs/x.yaml", "model_opts": [], "quick": False,
            "schedule_opts": ["SOLVER.MAX_ITER", "600"], "seed": 1}
    out = str(tmp_path / "m-seed1")
    _check_resumable(out, spec)
    _check_resumable(out, spec)  # same configuration: resumes
    with pytest.raises(SystemExit, match="another configuration"):
        _check_resumable(out, {**spec, "schedule_opts": ["SOLVER.MAX_ITER", "1500"]})
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "last_checkpoint").write_text("model_0000499.pth")
    with pytest.raises(SystemExit, match="unknown configuration"):
        _check_resumable(str(tmp_path / "old"), spec)


def test_a_finished_run_whose_config_changed_is_reported_stale(tmp_path):
    from train_net import build_cfg

    config = "configs/iou_aware/iou_aware_fcos_smallR_FPN_shapes.yaml"
    spec = {"model": "m", "config": config, "model_opts": [], "quick": False,
            "schedule_opts": ["SOLVER.MAX_ITER", "600"], "seed": 1}
    out = tmp_path / "m-seed1"
    out.mkdir()
    assert config_changes(spec, 1, str(out)) == []  # no saved config: nothing to compare
    # what the run saved when it was trained: the same config then, with the old target gradient
    trained = build_cfg(os.path.join(REPO, config), ["SOLVER.MAX_ITER", "600", "SEED", "1",
                                                     "OUTPUT_DIR", "/elsewhere",
                                                     "MODEL.IOU_AWARE.TARGET_GRADIENT", "True"])
    (out / "config.yaml").write_text(trained.dump())
    assert config_changes(spec, 1, str(out)) == ["MODEL.IOU_AWARE.TARGET_GRADIENT: True -> False"]
    trained = build_cfg(os.path.join(REPO, config), ["SOLVER.MAX_ITER", "600", "SEED", "1"])
    (out / "config.yaml").write_text(trained.dump())
    assert config_changes(spec, 1, str(out)) == []


def test_verdict_against_the_seed_noise():
    def entry(label, mean, std, seeds):
        return {"label": label, "mean": {"AP": mean}, "std": {"AP": std}, "seeds": seeds}

    report = {"quick": False, "models": {
        "base": entry("Base", 40.0, 1.0, [1, 2, 3]), "far": entry("Far", 44.0, None, [1]),
        "near": entry("Near", 42.0, None, [1]), "seeded": entry("Seeded", 43.0, 0.5, [1, 2, 3])}}
    pair = {"metric": "AP", "baseline": "base", "models": ["base", "far", "near", "seeded"],
            "claim": "it helps"}
    text = _verdict(report, pair)
    # one seed: noise = sqrt(2) * 1.0; 4.0 > 2 * 1.414 > 2.0
    assert "Far +4.0 AP (one seed; beyond twice" in text
    assert "Near +2.0 AP (one seed; within twice" in text
    # seeds on both sides: noise = sqrt(1 + 0.25) = 1.118; 3.0 > 2.236
    assert "Seeded +3.0 AP (a real gain, 3 seeds)" in text
    # a single-seed baseline borrows the noise of another model's seeds (noise_from)
    report["models"]["base"] = entry("Base", 40.0, None, [1])
    text = _verdict(report, {**pair, "models": ["base", "far", "near"], "noise_from": "seeded"})
    assert "Far +4.0 AP (one seed; beyond twice the noise Seeded's 3 seeds show)" in text  # 4>1.41
    assert "Near +2.0 AP (one seed; beyond" in text  # 2.0 > 2 * sqrt(2) * 0.5 = 1.41
    assert "not separable" in _verdict(report, {**pair, "models": ["base", "far"]})


# ---------------------------------------------------------------------------------------------
# --quick end to end
# ---------------------------------------------------------------------------------------------
ONLY = ["fcos_vs_iou_aware", "iou_aware_alpha"]


def _run(tmp_path, *extra):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "benchmarks/run.py", "--suite", "embedded", "--quick", "--only", *ONLY,
           "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results"),
           *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    log = _run(tmp)
    results = sorted((tmp / "results").glob("embedded-quick-*.json"))
    assert len(results) == 1
    return tmp, log, results[0]


def test_quick_writes_well_formed_json(quick):
    _, log, path = quick
    report = json.loads(path.read_text())  # strict JSON: no NaN
    assert report["quick"] and report["seeds"] == [1, 2, 3]  # the suite's default
    assert report["schedule"]["max_iter"] == [3] and report["schedule"]["train"] == [
        "shapes_mini_train"]
    assert set(report["models"]) == {"fcos", "iou_aware_fcos", "iou_aware_retinanet"}
    for name, entry in report["models"].items():
        run = entry["runs"]["1"]
        for k in METRICS:
            v = entry["mean"][k]
            assert v is None if k == "mask_AP" else 0.0 <= v <= 100.0, (name, k, v)
        assert run["metrics"]["check_max_abs_diff_loc_quality"] < 1e-6
        assert entry["params_total"] > entry["params_head"] > 0 and entry["head_module"] == "head"
        assert entry["peak_rss_mb"] > 50 and run["train_s_per_iter_median"] > 0
    (pair,) = report["pairs"]
    assert pair["baseline"] == "fcos" and pair["same_data_order"]
    assert pair["speed"]["fcos"]["train_ratio"] == 1.0 and pair["speed"]["fcos"]["infer_ratio"] == 1.0
    assert pair["speed"]["iou_aware_fcos"]["train_s_per_iter"] > 0
    (ab,) = report["ablations"]
    assert ab["key"] == "MODEL.IOU_AWARE.ALPHA"
    assert [r["value"] for r in ab["rows"]] == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1,
                                                0.0, -1.0]
    assert "iter: 2" in log and "eta:" in log  # Detectron2's progress line


def test_quick_writes_the_markdown_table(quick):
    tmp, _, path = quick
    md = path.with_suffix(".md").read_text()
    assert md.startswith("## Results") and "- Command: `python benchmarks/run.py" in md
    assert "- Machine: " in md and "- Date: " in md
    assert get_suite("embedded").note in md  # what a reader must know about the suite
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    pair_rows = [r for r in rows if r.startswith("| FCOS") or r.startswith("| IoU-aware FCOS")]
    assert len(pair_rows) == 2 and all(r.count("|") == 15 for r in pair_rows)
    assert "(x1.00)" in pair_rows[0]
    alpha_rows = [r for r in rows if r.split("|")[1].strip().lstrip("-").replace(".", "").isdigit()]
    assert len(alpha_rows) == 12
    assert "not separable from noise" in md and "Quick run" in md
    # --readme renders the same text from the json, and --into puts it between the markers
    assert render_markdown(json.loads(path.read_text())) == md
    readme = tmp / "README.md"
    readme.write_text(f"# Title\n\n{RESULTS_BEGIN}\nold text\n{RESULTS_END}\n\n## Next\n")
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--readme", str(path), "--into",
                           str(readme)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert readme.read_text() == (f"# Title\n\n{RESULTS_BEGIN}\n{md.rstrip()}\n{RESULTS_END}"
                                  "\n\n## Next\n")
    readme.write_text("# no markers\n")
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--readme", str(path), "--into",
                           str(readme)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and "needs the lines" in proc.stderr
    assert readme.read_text() == "# no markers\n"


def test_quick_resumes_without_retraining(quick):
    tmp, _, path = quick
    before = {p: p.stat().st_mtime for p in (tmp / "work").rglob("*.json")}
    log = _run(tmp)
    assert log.count("done, skipped") >= 3 + 1 + 12  # 3 trainings, 1 speed pair, 12 alpha values
    assert "Starting training" not in log
    assert {p: p.stat().st_mtime for p in before} == before


def test_speed_is_timed_again_when_the_pair_gained_a_member(quick):
    """A speed file that lacks a member of its pair (a model added to the pair after the speed
    phase ran) is not "done": the pair is timed again, every member in one process."""
    tmp, _, _ = quick
    (path,) = (tmp / "work").rglob("speed-fcos_vs_iou_aware.json")
    speed = json.loads(path.read_text())
    del speed["models"]["iou_aware_fcos"]
    path.write_text(json.dumps(speed))
    log = _run(tmp)
    assert "[speed] fcos_vs_iou_aware: done, skipped" not in log
    assert set(json.loads(path.read_text())["models"]) == {"fcos", "iou_aware_fcos"}
    assert "Starting training" not in log


def test_a_diverged_run_does_not_count_as_other_data(quick, tmp_path):
    """The data-order check compares the digests of the runs that trained to the end: a run that
    diverged saw only the first batches (another digest) and must not raise the warning."""
    tmp, _, _ = quick
    (src,) = {p.parent.parent for p in (tmp / "work").rglob("fcos-seed1/result.json")}
    work = tmp_path / "work"
    shutil.copytree(src, work)
    args = argparse.Namespace(quick=True, argv=["--quick"])
    suite = get_suite("embedded").select(["fcos_vs_iou_aware"])
    result = work / "iou_aware_fcos-seed1" / "result.json"
    run = json.loads(result.read_text())
    run["data_digest"] = "a prefix of the batches"
    result.write_text(json.dumps(run))
    assert not aggregate(suite, str(work), [1], args)["pairs"][0]["same_data_order"]
    run["diverged"] = {"iteration": 2, "error": "Loss became infinite or NaN at iteration=2!"}
    result.write_text(json.dumps(run))
    assert aggregate(suite, str(work), [1], args)["pairs"][0]["same_data_order"]


def test_a_diverged_model_is_reported_not_hidden(quick):
    """A training that hit Detectron2's Inf/NaN check is a result: its row says where it diverged
    (no metrics, no speed) and the pair's sentence says it diverged."""
    _, _, path = quick
    report = json.loads(path.read_text())
    e = report["models"]["iou_aware_fcos"]
    e["diverged"] = {"1": {"iteration": 152, "error": "Predicted boxes ... contain Inf/NaN."}}
    e["mean"] = {k: None for k in METRICS}
    e["std"] = {k: None for k in METRICS}
    del report["pairs"][0]["speed"]["iou_aware_fcos"]
    md = render_markdown(report)
    (row,) = [r for r in md.splitlines() if r.startswith("| IoU-aware FCOS")]
    assert "(seed 1 diverged at iteration 152)" in row and row.count("|") == 15
    assert "| - | - |" in row  # no speed
    assert "IoU-aware FCOS diverged (seed 1 at iteration 152)" in md
