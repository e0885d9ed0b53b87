"""benchmarks/run.py: AP at one IoU from pycocotools' precision array, the protocol's suite, and a
--quick run end to end (the LR sweep, one pair and one eval-only ablation), resumed."""
import argparse
import contextlib
import datetime
import io
import json
import os
import shutil
import subprocess
import sys
from typing import Optional

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from coco_ap import METRICS, ap_at_iou, box_ap_at_ious  # noqa: E402
from lr_sweep import TIE_AP, choose_rate, own_best_rate  # noqa: E402
from planning import QUICK_OPTS, Planner, Run  # noqa: E402
from records import config_changes, config_dict, write_json  # noqa: E402
from report_aggregate import aggregate  # noqa: E402
from report_markdown import RESULTS_BEGIN, RESULTS_END, _verdict, render_markdown  # noqa: E402
from running import write_report  # noqa: E402
from suites import LRSweep, Model, Pair, Suite, get_suite  # noqa: E402
from train_child import check_resumable  # noqa: E402


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
def test_embedded_suite_follows_the_protocol():
    suite = get_suite("embedded")
    for m in suite.models.values():
        assert os.path.isfile(os.path.join(REPO, m.config)), m.config
    # the protocol: seeds 1-3 for these, the rest seed 1
    seeded = {m for p in suite.pairs for m in p.models_over_seeds()}
    # ... and decreasing R^3-CNN, which contradicts the paper's Table 1 at seed 1; and the
    # IoU-aware pair again on the normalised RetinaNet head (the RetinaNet diagnosis)
    assert seeded == {"mask_rcnn", "cascade_mask_rcnn", "r3cnn_naive", "r3cnn_naive_dec",
                      "retinanet", "iou_aware_retinanet", "faster_rcnn", "offset_bin_K1",
                      "offset_bin_K2",
                      "sampler_iou_balanced", "sampler_pisa", "nuclei_mask_rcnn",
                      "nuclei_cascade_mask_rcnn", "nuclei_r3cnn",
                      "retinanet_bn_head", "iou_aware_retinanet_bn_head"}
    # diagnoses have no speed piece
    assert {p.name for p in suite.pairs if not p.timed} == {
        "retinanet_causes", "retinanet_vs_iou_aware_bn_head"}
    assert suite.seeds == (1, 2, 3) and suite.max_iter is None  # the configs' 1500 iterations
    assert suite.lr_sweep.grid == (0.005, 0.01, 0.02)
    assert suite.lr_sweep.baselines == {"single_stage": ("retinanet",),
                                        "two_stage": ("faster_rcnn", "mask_rcnn")}
    assert suite.long_schedule == ("mask_rcnn", "r3cnn_naive") and suite.long_factor == 3
    with pytest.raises(ValueError, match="no_such_pair"):
        suite.select(["no_such_pair"])
    # --only keeps the LR sweep of the selected models' family
    sub = suite.select(["fcos_vs_iou_aware"])
    assert sub.lr_sweep.baselines == {"single_stage": ("retinanet",)}
    assert set(sub.models) == {"fcos", "iou_aware_fcos", "retinanet"}


def test_suite_check_rejects_mixed_families_and_stray_seeded_models():
    models = {"a": Model("a", "a.yaml", "A"), "b": Model("b", "b.yaml", "B", family="single_stage"),
              "c": Model("c", "c.yaml", "C")}
    with pytest.raises(ValueError, match="one family"):
        Suite("s", models, (Pair("p", "P", ("a", "b"), "claim"),)).check()
    Suite("s", models, (Pair("p", "P", ("a", "c"), "claim"),)).check()
    with pytest.raises(ValueError, match="noise_from 'a' is not a seeded model"):
        Suite("s", models, (Pair("p", "P", ("a", "c"), "claim", noise_from="a"),)).check()
    with pytest.raises(ValueError, match=r"seeded or contrasted models \['b'\]"):
        Suite("s", models, (Pair("p", "P", ("a", "c"), "c", seeded=("b",)),)).check()
    with pytest.raises(ValueError, match=r"seeded or contrasted models \['b'\]"):
        Suite("s", models, (Pair("p", "P", ("a", "c"), "c", contrasts=(("c", "b"),)),)).check()


def test_a_resumed_run_is_fed_the_batches_of_an_uninterrupted_one(tmp_path):
    """Detectron2's resume restarts the loader's stream; the suite's training child skips the
    batches the checkpoint has trained on, so a run cut after its checkpoint at iteration 2 and
    resumed is fed the uninterrupted run's batches: the same digest of image ids and boxes."""
    opts = QUICK_OPTS + ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
                         "DATALOADER.NUM_WORKERS", "1", "SOLVER.BASE_LR", "0.01", "SEED", "1"]
    spec = {"run": "r", "suite": "t", "why": "test", "model": "fcos", "seed": 1, "lr": 0.01,
            "factor": 1, "config": "configs/iou_aware/fcos_smallR_FPN_shapes.yaml", "opts": opts,
            "suite_command": "cmd"}
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "datasets"), "OMP_NUM_THREADS": "1"}

    def train(out):
        proc = subprocess.run([sys.executable, "benchmarks/run.py", "--child", "train",
                               json.dumps({**spec, "output_dir": str(out)})],
                              cwd=REPO, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((out / "result.json").read_text()), proc.stderr

    whole, _ = train(tmp_path / "whole")
    assert whole["resumed_from_iter"] == 0 and whole["data_digest"]
    # the same run, stopped after its checkpoint at iteration 2 (model_0000001.pth)
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", cut)
    for name in ("model_final.pth", "result.json"):
        (cut / name).unlink()
    (cut / "last_checkpoint").write_text("model_0000001.pth")
    resumed, log = train(cut)
    assert resumed["resumed_from_iter"] == 2 and "skipping the 2 batches" in log
    assert resumed["data_digest"] == whole["data_digest"]


def test_interrupted_run_resumes_only_with_its_own_configuration(tmp_path):
    spec = {"config": "configs/x.yaml", "opts": ["SOLVER.BASE_LR", "0.01", "SEED", "1"]}
    out = str(tmp_path / "m-seed1")
    check_resumable(out, spec)
    check_resumable(out, spec)  # same configuration: resumes
    with pytest.raises(SystemExit, match="another configuration"):
        check_resumable(out, {**spec, "opts": ["SOLVER.BASE_LR", "0.02", "SEED", "1"]})
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "last_checkpoint").write_text("model_0000499.pth")
    with pytest.raises(SystemExit, match="unknown configuration"):
        check_resumable(str(tmp_path / "old"), spec)


def test_a_finished_run_whose_config_changed_is_reported_stale():
    from train_net import build_cfg

    config = os.path.join(REPO, "configs/iou_aware/iou_aware_fcos_smallR_FPN_shapes.yaml")
    now = config_dict(build_cfg(config, ["SEED", "1"]))
    # what the run saved when it was trained: the same config then, with the old target gradient
    trained = config_dict(build_cfg(config, ["SEED", "1", "OUTPUT_DIR", "/elsewhere",
                                             "MODEL.IOU_AWARE.TARGET_GRADIENT", "True"]))
    assert config_changes(trained, now) == ["MODEL.IOU_AWARE.TARGET_GRADIENT: True -> False"]
    # a key added since (a new option, whose default keeps the old behaviour) is not a change
    older = json.loads(json.dumps(now))
    del older["MODEL"]["IOU_AWARE"]["TARGET_GRADIENT"]
    assert config_changes(older, now) == []
    assert config_changes(now, json.loads(json.dumps(now))) == []  # json round trip: lists


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
    # contrasts between members, by the same rule: one seed against a seeded member borrows the
    # seeded side's std, whichever side it is on (sqrt(2) * 0.5 = 0.71; 1.0 < 1.41), two single
    # seeds the baseline's or noise_from's
    text = _verdict(report, {**pair, "models": ["base", "far", "near", "seeded"],
                             "noise_from": "seeded",
                             "contrasts": [["far", "seeded"], ["seeded", "far"], ["far", "near"]]})
    assert text.endswith(" Between members: Far against Seeded +1.0 AP (one seed; within twice "
                         "the noise Seeded's 3 seeds show); Seeded against Far -1.0 AP (one seed; "
                         "within twice the noise its 3 seeds show); Far against Near +2.0 AP (one "
                         "seed; beyond twice the noise Seeded's 3 seeds show).")
    # ... on box AP whatever the pair's metric, and a diverged side is named as such
    for m, ap80 in (("base", 30.0), ("far", 20.0), ("seeded", 31.0)):
        report["models"][m]["mean"]["AP80"], report["models"][m]["std"]["AP80"] = ap80, None
    report["models"]["near"]["diverged"] = {"1": {"iteration": 7}}
    text = _verdict(report, {**pair, "metric": "AP80", "models": ["base", "far"],
                             "noise_from": "seeded", "contrasts": [["far", "seeded"],
                                                                   ["far", "near"]]})
    assert text.endswith(" Between members: Far against Seeded +1.0 AP (one seed; within twice "
                         "the noise Seeded's 3 seeds show); Far against Near: Near diverged (seed "
                         "1 at iteration 7).")


# ---------------------------------------------------------------------------------------------
# --quick end to end
# ---------------------------------------------------------------------------------------------
ONLY = ["fcos_vs_iou_aware", "iou_aware_alpha"]


@contextlib.contextmanager
def _output_to(f):
    """This process's stdout and stderr, and those of the processes it starts (its file
    descriptors 1 and 2), go to the file ``f``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            yield
    finally:
        f.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _run(tmp_path, *extra):
    """``benchmarks/run.py --quick ...``: its main in this process (planning, records, report;
    an interpreter start-up less), the trainings, speed and ablation as its child processes, as
    on the command line. Returns what all of them printed."""
    import run

    argv = ["--suite", "embedded", "--quick", "--only", *ONLY, "--work-dir", str(tmp_path / "work"),
            "--results-dir", str(tmp_path / "results"), *extra]
    env = {"DETECTRON2_DATASETS": str(tmp_path / "datasets"), "OMP_NUM_THREADS": "1"}
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    log_path = tmp_path / "run.log"
    try:
        with open(log_path, "w") as f, _output_to(f):
            run.main(argv)
    except BaseException as e:  # SystemExit of a failed child included
        log = log_path.read_text()
        raise AssertionError(f"run.py {' '.join(argv)} failed: {e!r}\n{log[-8000:]}") from e
    finally:
        for k, v in old_env.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
    return log_path.read_text()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    log = _run(tmp)
    results = sorted((tmp / "results").glob("embedded-quick-*.json"))
    assert len(results) == 1
    return tmp, log, results[0]


def test_quick_writes_well_formed_json(quick):
    tmp, log, path = quick
    report = json.loads(path.read_text())  # strict JSON: no NaN
    assert report["quick"] and report["seeds"] == [1, 2, 3]  # the suite's default
    assert report["complete"] and report["missing"] == []
    assert report["schedule"]["max_iter"] == [3] and report["schedule"]["datasets"] == [
        {"train": ["shapes_mini_train"], "test": ["shapes_mini_val"]}]
    # the LR sweep of the single-stage family ran first and chose its rate
    sweep = report["lr_sweep"]["families"]
    assert list(sweep) == ["single_stage"] and set(sweep["single_stage"]["rows"]) == {"retinanet"}
    rate = report["rates"]["single_stage"]["rate"]
    assert rate in (0.005, 0.01, 0.02)
    assert set(report["models"]) == {"fcos", "iou_aware_fcos", "iou_aware_retinanet", "retinanet"}
    for name, entry in report["models"].items():
        run = entry["runs"]["1"]
        assert entry["lr"] == rate and run["base_lr"] == rate  # every member at the family's rate
        for k in METRICS:
            v = entry["mean"][k]
            assert v is None if k == "mask_AP" else 0.0 <= v <= 100.0, (name, k, v)
        assert run["metrics"]["check_max_abs_diff_loc_quality"] < 1e-6
        assert entry["params_total"] > entry["params_head"] > 0 and entry["head_module"] == "head"
        assert entry["peak_rss_mb"] > 50 and run["train_s_per_iter_median"] > 0
        assert run["command"].startswith("python train_net.py --config-file configs/")
    # one record per training, in the records dir, with what a fresh clone needs to skip it
    records = {p.name for p in (tmp / "work" / "records").glob("*-seed1.json")}
    assert records == ({f"{m}-lr{rate:g}-seed1.json" for m in ("fcos", "iou_aware_fcos",
                                                               "iou_aware_retinanet")}
                       | {f"retinanet-lr{g}-seed1.json" for g in ("0.005", "0.01", "0.02")})
    rec = json.loads((tmp / "work" / "records" / f"fcos-lr{rate:g}-seed1.json").read_text())
    for k in ("metrics", "config_digest", "merged_config", "data_digest", "command", "machine",
              "date", "git_commit"):
        assert rec.get(k) is not None, k
    (pair,) = report["pairs"]
    assert pair["baseline"] == "fcos" and pair["same_data_order"]
    assert pair["speed"]["fcos"]["train_ratio"] == pair["speed"]["fcos"]["infer_ratio"] == 1.0
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
    assert "### Learning-rate sweep" in md and "| single-stage | RetinaNet |" in md
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
    before = {p: p.stat().st_mtime for p in (tmp / "work" / "records").rglob("*.json")}
    log = _run(tmp)
    assert "Left: 0 trainings, 0 speed comparisons, 0 ablations" in log
    assert "Starting training" not in log
    assert {p: p.stat().st_mtime for p in before} == before


def test_report_writes_the_records_report_and_runs_nothing(quick, tmp_path):
    tmp, _, path = quick
    before = {p: p.stat().st_mtime for p in (tmp / "work" / "records").rglob("*.json")}
    log = _run(tmp, "--report", "--results-dir", str(tmp_path))
    assert "Starting training" not in log and "[1/" not in log
    assert {p: p.stat().st_mtime for p in before} == before
    (written,) = tmp_path.glob("embedded-quick-*.md")
    md = written.read_text()
    # the records' command (the fixture's run), then the one that wrote this text
    assert "\n- Command: `python benchmarks/run.py --suite embedded --quick --only " in md
    assert " (the records); this text: `python benchmarks/run.py --suite embedded --quick " in md
    assert f"--report --results-dir {tmp_path}`\n" in md
    # the same tables as the run's own report
    assert md.split("\n- Machine:")[1] == path.with_suffix(".md").read_text().split(
        "\n- Machine:")[1]


def test_a_fresh_clone_resumes_from_the_records(quick, tmp_path):
    """The work dir (checkpoints) stays on its machine; the records are committed. From the
    records alone no training is repeated, except one that a speed piece needs the weights of."""
    tmp, _, _ = quick
    shutil.copytree(tmp / "work" / "records", tmp_path / "work" / "records")
    suite = get_suite("embedded").select(ONLY)
    planner = Planner(suite, [1, 2, 3], str(tmp_path / "work" / "records"),
                      str(tmp_path / "work"), quick=True)
    assert all(p.status == "done" for p in planner.pieces())
    speed = tmp_path / "work" / "records" / "speed-fcos_vs_iou_aware.json"
    speed.unlink()  # a pair whose speed was not timed yet: its members' weights are needed
    todo = [(p.kind, p.name, p.why) for p in planner.pieces() if p.status != "done"]
    rate = planner.rates()["single_stage"][0]
    assert todo == [("train", f"fcos-lr{rate:g}-seed1", "weights for speed-fcos_vs_iou_aware"),
                    ("train", f"iou_aware_fcos-lr{rate:g}-seed1",
                     "weights for speed-fcos_vs_iou_aware"),
                    ("speed", "speed-fcos_vs_iou_aware", "pair fcos_vs_iou_aware")]


def test_speed_is_timed_again_when_the_pair_gained_a_member(quick):
    """A speed record that lacks a member of its pair (a model added to the pair after the speed
    phase ran) is not "done": the pair is timed again, every member in one process."""
    tmp, _, _ = quick
    path = tmp / "work" / "records" / "speed-fcos_vs_iou_aware.json"
    speed = json.loads(path.read_text())
    del speed["runs"]["iou_aware_fcos"]
    path.write_text(json.dumps(speed))
    log = _run(tmp)
    assert "speed speed-fcos_vs_iou_aware (pair fcos_vs_iou_aware)" in log
    assert set(json.loads(path.read_text())["models"]) == {"fcos", "iou_aware_fcos"}
    assert "Starting training" not in log


def test_a_diverged_run_does_not_count_as_other_data(quick, tmp_path):
    """The data-order check compares the digests of the runs that trained to the end: a run that
    diverged saw only the first batches (another digest) and must not raise the warning."""
    tmp, _, _ = quick
    shutil.copytree(tmp / "work" / "records", tmp_path / "records")
    planner = Planner(get_suite("embedded").select(["fcos_vs_iou_aware"]), [1],
                      str(tmp_path / "records"), str(tmp / "work"), quick=True)
    rate = planner.rates()["single_stage"][0]
    result = tmp_path / "records" / f"iou_aware_fcos-lr{rate:g}-seed1.json"
    run = json.loads(result.read_text())
    run["data_digest"] = "a prefix of the batches"
    result.write_text(json.dumps(run))
    assert not aggregate(planner, "cmd", True)["pairs"][0]["same_data_order"]
    run["diverged"] = {"iteration": 2, "error": "Loss became infinite or NaN at iteration=2!"}
    result.write_text(json.dumps(run))
    assert aggregate(planner, "cmd", True)["pairs"][0]["same_data_order"]


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


# ---------------------------------------------------------------------------------------------
# The protocol's learning-rate rule and plan, on hand-made sweep results
# ---------------------------------------------------------------------------------------------
GRID = (0.005, 0.01, 0.02)


def test_the_family_rate_is_the_best_mean_box_ap_of_its_baselines():
    two = ("faster", "mask")
    # incomplete: no rate yet, and it says what is missing
    rate, why = choose_rate(GRID, two, {("faster", 0.005): 20.0})
    assert rate is None and "5 to train" in why and "mask at 0.005" in why
    # both baselines best at 0.01: 0.01
    agree = {("faster", 0.005): 20.0, ("faster", 0.01): 30.0, ("faster", 0.02): 25.0,
             ("mask", 0.005): 22.0, ("mask", 0.01): 31.0, ("mask", 0.02): 24.0}
    assert choose_rate(GRID, two, agree)[0] == 0.01
    # they disagree: means 0.005: (20+40)/2 = 30, 0.01: (30+28)/2 = 29, 0.02: (35+20)/2 = 27.5
    disagree = {("faster", 0.005): 20.0, ("faster", 0.01): 30.0, ("faster", 0.02): 35.0,
                ("mask", 0.005): 40.0, ("mask", 0.01): 28.0, ("mask", 0.02): 20.0}
    rate, why = choose_rate(GRID, two, disagree)
    assert rate == 0.005 and "0.005: 30.0, 0.01: 29.0, 0.02: 27.5" in why
    # a rate where one baseline diverged is out, however good the other was there
    diverged = {**disagree, ("mask", 0.005): None}
    rate, why = choose_rate(GRID, two, diverged)
    assert rate == 0.01 and "diverged at 0.005" in why
    # means within TIE_AP: the lowest rate
    tie = {("faster", 0.005): 30.0, ("faster", 0.01): 30.0 + TIE_AP / 2, ("faster", 0.02): 10.0}
    assert choose_rate(GRID, ("faster",), tie)[0] == 0.005
    assert choose_rate(GRID, ("faster",), {**tie, ("faster", 0.01): 30.2})[0] == 0.01
    with pytest.raises(ValueError, match="every BASE_LR"):
        choose_rate(GRID, ("faster",), {("faster", lr): None for lr in GRID})
    assert own_best_rate(GRID, "x", {("x", lr): None for lr in GRID})[0] is None


def _planner(tmp_path) -> Planner:
    models = {"base": Model("base", "configs/baselines/faster_rcnn_smallR_FPN_shapes.yaml", "Base"),
              "other": Model("other",
                             "configs/offset_bin/offset_bin_K1_faster_rcnn_smallR_FPN_shapes.yaml",
                             "Other")}
    suite = Suite("t", models, (Pair("p", "P", ("base", "other"), "claim", seeded=("base",)),),
                  seeds=(1, 2), lr_sweep=LRSweep(GRID, {"two_stage": ("base",)}))
    suite.check()
    return Planner(suite, [1, 2], str(tmp_path / "records"), str(tmp_path / "work"))


def _record(planner: Planner, run: Run, ap: Optional[float], date: str = "2020-01-01",
            machine: str = "machine A") -> None:
    """A hand-made record of a finished run (box AP ``ap``; None: diverged)."""
    write_json(planner.record_path(run), {
        "run": run.name, "model": run.model, "seed": run.seed, "lr": run.lr, "date": date,
        "machine": machine,
        "diverged": {"iteration": 50, "error": "NaN"} if ap is None else None,
        "metrics": {k: ap if k == "AP" else None for k in METRICS},
        "merged_config": planner.config_now(run), "config_digest": "d", "max_iter": 1500,
        "ims_per_batch": 4, "params_total": 2e6, "params_head": 1e6, "head_module": "roi_heads",
        "peak_rss_mb": 900, "train_dataset": ["shapes_train"], "test_dataset": ["shapes_val"]})


def test_the_plan_follows_the_sweep(tmp_path):
    planner = _planner(tmp_path)
    status = lambda: [(p.name, p.status) for p in planner.pieces()]  # noqa: E731
    first = status()
    assert first[:3] == [(f"base-lr{g}-seed1", "todo") for g in ("0.005", "0.01", "0.02")]
    assert ("other-lr?-seed1", "waiting (its family's rate: after the LR sweep)") in first
    # the sweep: 0.02 diverged, 0.01 best -> every member of the family at 0.01, and the sweep's
    # run of the baseline at 0.01 is its first seed (not trained twice)
    for lr, ap, day, machine in ((0.005, 20.0, "2020-01-03", "machine B"),
                                 (0.01, 30.0, "2020-01-01", "machine A"),
                                 (0.02, None, "2020-01-02", "machine A")):
        _record(planner, Run("base", 1, lr), ap, day, machine)
    assert planner.rates()["two_stage"][0] == 0.01
    md = render_markdown(aggregate(planner, "cmd", False))  # the sweep's report
    # the machines and days of the records shown, not those of the process that wrote the report
    assert "\n- Machine: machine A; machine B\n" in md
    today = datetime.date.today().isoformat()
    assert f"\n- Date: 2020-01-01 to 2020-01-03 (report written {today})\n" in md
    assert "| two-stage | Base | 20.0 | 30.0 | diverged |" in md
    assert ("- two-stage: BASE_LR 0.01; BASE_LR 0.01: highest box AP (0.005: 20.0, 0.01: 30.0; "
            "diverged at 0.02).") in md
    assert "at batch 4 (trained on shapes_train, evaluated on shapes_val)" in md
    assert [(p.kind, p.name, p.status) for p in planner.pieces()[3:]] == [
        ("train", "other-lr0.01-seed1", "todo"), ("speed", "speed-p", "waiting (its trainings)"),
        ("train", "base-lr0.01-seed2", "todo")]
    assert planner.opts(Run("other", 1, 0.01))[-4:] == ["SOLVER.BASE_LR", "0.01", "SEED", "1"]
    # the member diverges at its family's rate: it is trained at the other rates of the grid,
    # and its best one is its extra row
    _record(planner, Run("other", 1, 0.01), None)
    extra = [(p.name, p.why) for p in planner.pieces() if p.why.startswith("own rate")]
    assert extra == [("other-lr0.005-seed1", "own rate (diverged at its family's)"),
                     ("other-lr0.02-seed1", "own rate (diverged at its family's)")]
    _record(planner, Run("other", 1, 0.005), 12.0)
    assert planner.own_rate("other")[0] is None  # 0.02 not trained yet
    _record(planner, Run("other", 1, 0.02), 15.0)
    assert planner.own_rate("other")[0] == 0.02
    # a record whose config is not what the suite would train now is stale
    rec = json.loads(open(planner.record_path(Run("base", 1, 0.005))).read())
    rec["merged_config"]["MODEL"]["ROI_HEADS"]["BATCH_SIZE_PER_IMAGE"] = 512
    write_json(planner.record_path(Run("base", 1, 0.005)), rec)
    assert dict(status())["base-lr0.005-seed1"] == (
        "stale (MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE: 512 -> 64)")


def test_other_seeds_come_pair_by_pair_cheapest_first(tmp_path):
    """Seeds 2.. of a pair run together, so a run that stops mid-suite leaves whole pairs
    (every seeded member over every seed), the cheapest pair (its seeded models' estimated time
    per seed, from the records' s/iteration) first, whatever the order the suite lists them in."""
    models = {m: Model(m, "configs/baselines/faster_rcnn_smallR_FPN_shapes.yaml", m.title())
              for m in ("base", "slow", "quick")}
    suite = Suite("t", models,
                  (Pair("big", "Big", ("base", "slow"), "claim", seeded=("base", "slow")),
                   Pair("small", "Small", ("base", "quick"), "claim", seeded=("quick",))),
                  seeds=(1, 2, 3), lr_sweep=LRSweep(GRID, {"two_stage": ("base",)}))
    suite.check()
    planner = Planner(suite, [1, 2, 3], str(tmp_path / "records"), str(tmp_path / "work"))
    for lr, ap in zip(GRID, (20.0, 30.0, 25.0)):
        _record(planner, Run("base", 1, lr), ap)
    # measured: base and slow 1 s/iteration, quick 1.2 (1500 iterations, 60 s besides)
    for m in ("slow", "quick"):
        _record(planner, Run(m, 1, 0.01), 30.0)
    for m, s in (("base", 1.0), ("slow", 1.0), ("quick", 1.2)):
        rec = json.loads(open(planner.record_path(Run(m, 1, 0.01))).read())
        rec.update(train_s_per_iter_median=s, train_and_eval_wall_s=1500 * s + 60)
        write_json(planner.record_path(Run(m, 1, 0.01)), rec)
    # big costs 1560 + 1560 s a seed, small 1860 s: small's seeds 2 and 3 first
    assert [p.name for p in planner.pieces() if p.why.startswith("seed")] == [
        "quick-lr0.01-seed2", "quick-lr0.01-seed3", "base-lr0.01-seed2", "slow-lr0.01-seed2",
        "base-lr0.01-seed3", "slow-lr0.01-seed3"]
    # big's seed 2, trained fast (a quiet machine), does not reorder the pairs (with it the
    # medians would make big 2 x 810 s, below small's 1860): the estimate that orders them reads
    # the first seed's records
    for m in ("base", "slow"):
        _record(planner, Run(m, 2, 0.01), 30.0)
        rec = json.loads(open(planner.record_path(Run(m, 2, 0.01))).read())
        rec.update(train_s_per_iter_median=0.001, train_and_eval_wall_s=1.5 + 60)
        write_json(planner.record_path(Run(m, 2, 0.01)), rec)
    assert [p.name for p in planner.pieces() if p.why.startswith("seed") and p.status != "done"] == [
        "quick-lr0.01-seed2", "quick-lr0.01-seed3", "base-lr0.01-seed3", "slow-lr0.01-seed3"]


def test_a_rate_a_baseline_diverges_at_with_a_later_seed_is_out(tmp_path):
    """The sweep (seed 1) picks 0.02; the seeded baseline then diverges there with seed 2: the
    family moves to the best remaining rate, 0.01, and its members are planned there."""
    planner = _planner(tmp_path)
    for lr, ap in zip(GRID, (20.0, 30.0, 35.0)):
        _record(planner, Run("base", 1, lr), ap)
    assert planner.rates()["two_stage"][0] == 0.02
    _record(planner, Run("base", 2, 0.02), None)
    rate, why = planner.rates()["two_stage"]
    assert rate == 0.01
    assert why == ("BASE_LR 0.01: highest box AP (0.005: 20.0, 0.01: 30.0; diverged at 0.02); a "
                   "rate is out when a baseline diverges there with any seed: base at 0.02 with "
                   "seed 2")
    md = render_markdown(aggregate(planner, "cmd", False))
    assert "| two-stage | Base | 20.0 | 30.0 | 35.0 (seed 2 diverged) |" in md
    assert [(p.name, p.status) for p in planner.pieces()[3:]] == [
        ("other-lr0.01-seed1", "todo"), ("speed-p", "waiting (its trainings)"),
        ("base-lr0.01-seed2", "todo")]


def test_report_of_the_records_so_far(tmp_path):
    """``run.py --report`` between two parts of a suite: the records' own suite command, the
    command that wrote the text, and the pieces still missing."""
    planner = _planner(tmp_path)
    # the sweep's later runs came from a second command
    for lr, ap, day, flags in ((0.02, 25.0, "2020-01-02", "--commit"),
                               (0.005, 20.0, "2020-01-01", "--only lr_sweep"),
                               (0.01, 30.0, "2020-01-02", "--commit")):
        _record(planner, Run("base", 1, lr), ap, day)
        rec = json.loads(open(planner.record_path(Run("base", 1, lr))).read())
        rec["suite_command"] = f"python benchmarks/run.py --suite t {flags}"
        write_json(planner.record_path(Run("base", 1, lr)), rec)
    args = argparse.Namespace(results_dir=str(tmp_path / "results"), quick=False, only=[])
    path = write_report(planner, args, written_by="python benchmarks/run.py --report")
    assert os.path.basename(path) == f"t-{datetime.date.today().isoformat()}.json"
    report = json.loads(open(path).read())
    assert not report["complete"] and report["missing"] == [
        "train other-lr0.01-seed1 (pair p): todo", "speed speed-p (pair p): waiting (its trainings)",
        "train base-lr0.01-seed2 (seed 2 of pair p): todo"]
    md = open(path[:-len(".json")] + ".md").read()
    assert ("\n- Command: `python benchmarks/run.py --suite t --only lr_sweep`, then "
            "`python benchmarks/run.py --suite t --commit` (the records); this text: "
            "`python benchmarks/run.py --report`\n") in md
    assert "Partial report: 3 pieces of the suite are missing" in md


def test_extra_rows_and_the_schedule_check_are_rendered(quick):
    """A diverged member's own-rate run is an extra, marked row of its pair; the 3x check says
    how far each model moved against its seed noise and whether the order of the two holds."""
    _, _, path = quick
    report = json.loads(path.read_text())
    fcos, iou = report["models"]["fcos"], report["models"]["iou_aware_fcos"]
    report["extras"] = {"iou_aware_fcos": {**iou, "lr": 0.005, "why": "hand-made"}}
    report["pairs"][0]["extras"] = ["iou_aware_fcos"]
    fcos["runs"]["1"]["metrics"]["AP"], fcos["std"]["AP"] = 10.0, 1.0
    iou["runs"]["1"]["metrics"]["AP"], iou["std"]["AP"] = 12.0, None
    report["long_schedule"] = {"factor": 3, "rows": [
        {"model": "fcos", "label": "FCOS", "max_iter": 9, "long": {"AP": 14.0, "mask_AP": None},
         "diverged": None, "command": "c"},
        {"model": "iou_aware_fcos", "label": "IoU-aware FCOS", "max_iter": 9,
         "long": {"AP": 13.0, "mask_AP": None}, "diverged": None, "command": "c"}]}
    md = render_markdown(report)
    (extra,) = [r for r in md.splitlines() if r.startswith("| (extra) IoU-aware FCOS")]
    assert "at BASE_LR 0.005, its own best rate of the grid" in extra and extra.count("|") == 15
    assert "### Schedule check: 3x the iterations, seed 1" in md
    assert "| FCOS | 9 | 14.0 | - | 10.0 |" in md
    # FCOS +4.0 > 2 * sqrt(2) * 1.0 = 2.83: beyond; IoU-aware FCOS one seed: noise unknown;
    # at the suite's schedule FCOS < IoU-aware FCOS (10 < 12), at 3x not (14 > 13): changes
    assert ("From the suite's schedule to 3x: FCOS +4.0 AP (beyond twice the seed noise); "
            "IoU-aware FCOS +1.0 AP (one seed: noise unknown); the order of the two changes."
            ) in md
