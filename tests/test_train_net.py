"""train_net.py end to end on the embedded dataset: train, --eval-only, --resume, errors, 2 processes.

The command line runs as a fresh process once: the training on two CPU processes that the other
cases start from (the session fixture ``mask_rcnn_trained``, conftest.py); the other cases call
``train_net.main`` on the arguments the command line parses, in this process (cli_runs.py)."""
import json
import os
import shutil

import pytest

from cli_runs import MASK_RCNN as CONFIG
from cli_runs import SMALL, train_net_main
from d2infra.checkpoint import CheckpointReadError
from d2infra.data.catalog import UnknownDatasetError
from d2infra.data.shapes import split_paths


def iterations(output_dir):
    """Training iterations logged in metrics.json (evaluation results are logged too)."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["iteration"] for r in rows if "total_loss" in r]


def test_train_writes_checkpoints_and_evaluates(mask_rcnn_trained):
    out, log = mask_rcnn_trained
    assert os.path.isfile(out / "model_final.pth") and os.path.isfile(out / "model_0000001.pth")
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert iterations(out)[-1] == 3
    # COCOEvaluator ran at the end, for boxes and masks, and printed AP tables.
    assert "Evaluation results for bbox" in log and "Evaluation results for segm" in log
    assert "eta:" in log  # progress with ETA


def test_eval_only_from_checkpoint(mask_rcnn_trained, datasets_dir, tmp_path):
    out, _ = mask_rcnn_trained
    log = train_net_main(datasets_dir, "--config-file", CONFIG, "--eval-only", *SMALL,
                         "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path))
    assert "Evaluation results for bbox" in log and "Evaluation results for segm" in log
    assert os.path.isfile(tmp_path / "inference" / "shapes_mini_val" / "coco_instances_results.json")


def test_resume_continues_the_iteration_count(mask_rcnn_trained, datasets_dir, tmp_path):
    out = tmp_path / "train"
    shutil.copytree(mask_rcnn_trained[0], out)  # the fixture is shared: resume a copy
    log = train_net_main(datasets_dir, "--config-file", CONFIG, "--resume", *SMALL,
                         "SOLVER.MAX_ITER", "6", "OUTPUT_DIR", str(out))
    assert "Starting training from iteration 4" in log
    assert iterations(out)[-1] == 5


def _truncated_copy(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 3])
    return dst


def test_eval_only_with_a_truncated_checkpoint_names_it(mask_rcnn_trained, datasets_dir,
                                                        tmp_path):
    bad = _truncated_copy(mask_rcnn_trained[0] / "model_final.pth", tmp_path / "model_final.pth")
    with pytest.raises(CheckpointReadError) as e:
        train_net_main(datasets_dir, "--config-file", CONFIG, "--eval-only", *SMALL,
                       "MODEL.WEIGHTS", str(bad), "OUTPUT_DIR", str(tmp_path / "eval"))
    assert f"cannot read the checkpoint '{bad}'" in str(e.value)
    assert "truncated or corrupt" in str(e.value)


def test_resume_from_a_truncated_checkpoint_names_it(mask_rcnn_trained, datasets_dir, tmp_path):
    out = tmp_path / "train"
    shutil.copytree(mask_rcnn_trained[0], out)
    _truncated_copy(mask_rcnn_trained[0] / "model_final.pth", out / "model_final.pth")
    with pytest.raises(CheckpointReadError) as e:
        train_net_main(datasets_dir, "--config-file", CONFIG, "--resume", *SMALL,
                       "SOLVER.MAX_ITER", "6", "OUTPUT_DIR", str(out))
    assert f"cannot read the checkpoint '{out / 'model_final.pth'}'" in str(e.value)
    assert str(out / "last_checkpoint") in str(e.value)  # the file that named it


def test_log_files_are_plain_text(mask_rcnn_trained):
    """Detectron2 logs the config highlighted for a terminal (pygments' colour codes, as its own
    _highlight gives them); the log files of both processes hold it as plain text."""
    from detectron2.engine.defaults import _highlight

    out, _ = mask_rcnn_trained
    assert "\x1b[" in _highlight("SOLVER:\n  MAX_ITER: 4\n", ".yaml")  # what would be written
    for name in ("log.txt", "log.txt.rank1"):
        text = (out / name).read_text()
        assert "\x1b[" not in text, name
    text = (out / "log.txt").read_text()
    assert "Running with full config:" in text and "  MAX_ITER: 4\n" in text


@pytest.mark.parametrize("weights,error,message", [
    ("", ValueError, "needs trained weights"),
    ("/no/such/model.pth", FileNotFoundError, "/no/such/model.pth' does not exist")])
def test_eval_only_without_weights_is_a_clear_error(datasets_dir, tmp_path, weights, error,
                                                    message):
    with pytest.raises(error, match=message):
        train_net_main(datasets_dir, "--config-file", CONFIG, "--eval-only", *SMALL,
                       "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path))


def test_unknown_dataset_is_a_clear_error(datasets_dir, tmp_path):
    with pytest.raises(UnknownDatasetError, match="no_such_set"):
        train_net_main(datasets_dir, "--config-file", CONFIG, "DATASETS.TRAIN",
                       '("no_such_set",)', "OUTPUT_DIR", str(tmp_path))


def test_two_cpu_processes(mask_rcnn_trained, datasets_dir):
    """--num-gpus 2 without CUDA: gloo, a shared data split, one set of checkpoints, gathered
    evaluation."""
    out, log = mask_rcnn_trained
    assert "World size: 2" in log
    # every 2 iterations, and the final one; written once (by the main process)
    assert sorted(p.name for p in out.glob("model_*.pth")) == [
        "model_0000001.pth", "model_0000003.pth", "model_final.pth"]
    # Each process evaluates half of the 16 val images; the evaluator gathers all of them.
    assert "Start inference on 8 batches" in log
    with open(out / "inference" / "shapes_mini_val" / "coco_instances_results.json") as f:
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
    train_net_main(datasets_dir, "--config-file", config, *SMALL, "SOLVER.MAX_ITER", "2",
                   "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False", "DATASETS.TEST", "()",
                   "OUTPUT_DIR", str(train_dir))
    assert iterations(train_dir)[-1] == 1
    log = train_net_main(datasets_dir, "--config-file", config, "--eval-only", *SMALL,
                         "MODEL.WEIGHTS", str(train_dir / "model_final.pth"),
                         "OUTPUT_DIR", str(eval_dir))
    assert "Evaluation results for bbox" in log or "No predictions from the model" in log
    assert "copypaste: Task: loc_quality" in log
