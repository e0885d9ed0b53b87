"""train_net.py end to end on the embedded dataset: train, --eval-only, --resume, errors, 2 processes."""
import json
import os
import subprocess
import sys

import pytest

from d2infra.data.shapes import split_paths

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/baselines/mask_rcnn_smallR_FPN_shapes.yaml"
SMALL = ["DATASETS.TRAIN", '("shapes_mini_train",)', "DATASETS.TEST", '("shapes_mini_val",)',
         "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "1"]


def run(datasets_dir, *args, check=True):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_dir), OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "train_net.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train_net.py {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


def iterations(output_dir):
    """Training iterations logged in metrics.json (evaluation results are logged too)."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["iteration"] for r in rows if "total_loss" in r]


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="module")
def trained(datasets_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    proc = run(datasets_dir, "--config-file", CONFIG, *SMALL, "SOLVER.MAX_ITER", "4",
               "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", str(out))
    return out, proc.stdout + proc.stderr


def test_train_writes_checkpoints_and_evaluates(trained):
    out, log = trained
    assert os.path.isfile(out / "model_final.pth") and os.path.isfile(out / "model_0000001.pth")
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert iterations(out)[-1] == 3
    # COCOEvaluator ran at the end, for boxes and masks, and printed AP tables.
    assert "Evaluation results for bbox" in log and "Evaluation results for segm" in log
    assert "eta:" in log  # progress with ETA


def test_eval_only_from_checkpoint(trained, datasets_dir, tmp_path):
    out, _ = trained
    proc = run(datasets_dir, "--config-file", CONFIG, "--eval-only", *SMALL,
               "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path))
    log = proc.stdout + proc.stderr
    assert "Evaluation results for bbox" in log and "Evaluation results for segm" in log
    assert os.path.isfile(tmp_path / "inference" / "shapes_mini_val" / "coco_instances_results.json")


def test_resume_continues_the_iteration_count(trained, datasets_dir):
    out, _ = trained
    proc = run(datasets_dir, "--config-file", CONFIG, "--resume", *SMALL, "SOLVER.MAX_ITER", "6",
               "OUTPUT_DIR", str(out))
    assert "Starting training from iteration 4" in proc.stdout + proc.stderr
    assert iterations(out)[-1] == 5


@pytest.mark.parametrize("weights,message", [("", "needs trained weights"),
                                             ("/no/such/model.pth", "does not exist")])
def test_eval_only_without_weights_is_a_clear_error(datasets_dir, tmp_path, weights, message):
    proc = run(datasets_dir, "--config-file", CONFIG, "--eval-only", *SMALL, "MODEL.WEIGHTS",
               weights, "OUTPUT_DIR", str(tmp_path), check=False)
    assert proc.returncode != 0 and message in proc.stderr


def test_unknown_dataset_is_a_clear_error(datasets_dir, tmp_path):
    proc = run(datasets_dir, "--config-file", CONFIG, "DATASETS.TRAIN", '("no_such_set",)',
               "OUTPUT_DIR", str(tmp_path), check=False)
    assert proc.returncode != 0 and "no_such_set" in proc.stderr


def test_two_cpu_processes(datasets_dir, tmp_path):
    """--num-gpus 2 without CUDA: gloo, a shared data split, one checkpoint, gathered evaluation."""
    proc = run(datasets_dir, "--config-file", CONFIG, "--num-gpus", "2", *SMALL,
               "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path))
    log = proc.stdout + proc.stderr
    assert "World size: 2" in log
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_final.pth"]
    # Each process evaluates half of the 16 val images; the evaluator gathers all of them.
    assert "Start inference on 8 batches" in log
    with open(tmp_path / "inference" / "shapes_mini_val" / "coco_instances_results.json") as f:
        image_ids = {d["image_id"] for d in json.load(f)}
    json_file, _ = split_paths("mini_val", root=os.path.join(datasets_dir, "shapes"))
    with open(json_file) as f:
        val = json.load(f)
    non_empty = {a["image_id"] for a in val["annotations"]}
    assert len(image_ids) > 8 and image_ids <= {im["id"] for im in val["images"]}
    assert non_empty  # the split has objects to find


@pytest.mark.parametrize("config", [
    "configs/r3cnn/r3cnn_naive_smallR_FPN_shapes.yaml",
    "configs/iou_aware/iou_aware_retinanet_smallR_FPN_shapes.yaml",
    "configs/offset_bin/offset_bin_faster_rcnn_smallR_FPN_shapes.yaml",
    "configs/offset_bin/offset_bin_cascade_rcnn_smallR_FPN_shapes.yaml",
    "configs/samplers/faster_rcnn_ohem_smallR_FPN_shapes.yaml",
])
def test_project_config_trains_then_evaluates_from_its_checkpoint(datasets_dir, tmp_path, config):
    """Each paper's head (and a sampler that needs the head's predictions) through train_net.py:
    a short training on shapes_mini_train, then --eval-only from the checkpoint it wrote. (Images
    without objects are exercised directly by each project's head tests.)"""
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    run(datasets_dir, "--config-file", config, *SMALL, "SOLVER.MAX_ITER", "2",
        "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False", "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(train_dir))
    assert iterations(train_dir)[-1] == 1
    proc = run(datasets_dir, "--config-file", config, "--eval-only", *SMALL,
               "MODEL.WEIGHTS", str(train_dir / "model_final.pth"), "OUTPUT_DIR", str(eval_dir))
    log = proc.stdout + proc.stderr
    assert "Evaluation results for bbox" in log or "No predictions from the model" in log
    assert "copypaste: Task: loc_quality" in log
