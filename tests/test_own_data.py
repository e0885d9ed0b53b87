"""The README's "Train on your own data" commands, as written, on a tiny COCO-format dataset.

The section's bash block is run by bash with `python` as a shell function that records each
command's arguments; only the dataset paths (`/data/mine`) are replaced by the tiny set's. Each
recorded `train_net.py` command then runs in this process (``train_net.main``, as in
``cli_runs.train_net_main``), from a scratch directory (its relative OUTPUT_DIR lands there), with
a few iterations of small images appended. The class count the README gives each
meta-architecture must reach the model: the trained checkpoint's classifier has one output per
class of the json (plus background for the two-stage models), an independent count.
"""
import json
import os
import re
import subprocess

import cv2
import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog

from cli_runs import REPO, readme_code_block, readme_section, train_net_main

HEADING = "## Train on your own data"
DATA_PREFIX = "/data/mine"
# Appended to every command: a few iterations of small images, one process without workers.
FAST = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
        "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN",
        "128", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128"]
RECORD = r'python() { printf "%s\0" "$@"; printf "\1\0"; }'


def recorded_commands(block: str) -> list:
    """The argument lists of the block's `python ...` commands, as bash expands them."""
    proc = subprocess.run(["bash", "-c", RECORD + "\n" + block], capture_output=True, check=True)
    out = proc.stdout.decode().split("\0")
    commands, current = [], []
    for arg in out[:-1]:
        if arg == "\1":
            commands.append(current)
            current = []
        else:
            current.append(arg)
    return commands


def _image(h: int, w: int, box) -> np.ndarray:
    rng = np.random.default_rng(h * w)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    x, y, bw, bh = box
    img[y:y + bh, x:x + bw] = (40, 200, 230)
    return img


def write_tiny_coco(root, split: str, n: int) -> None:
    """``root/<split>.json`` and ``root/<split>/``: n images, one or two boxes each, one class,
    no segmentation (box-only)."""
    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        h, w = 80 + 8 * i, 112 - 8 * i
        boxes = [(6 + 3 * i, 8, 30, 24)] + ([(50, 40, 20, 28)] if i % 2 else [])
        img = _image(h, w, boxes[0])
        for x, y, bw, bh in boxes[1:]:
            img[y:y + bh, x:x + bw] = (40, 200, 230)
        cv2.imwrite(str(root / split / f"{i:03d}.png"), img)
        images.append({"id": i + 1, "file_name": f"{i:03d}.png", "height": h, "width": w})
        for x, y, bw, bh in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1,
                                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    (root / f"{split}.json").write_text(json.dumps(
        {"images": images, "annotations": annotations,
         "categories": [{"id": 1, "name": "thing"}]}))


def test_the_section_names_each_class_count_key_and_mask_on():
    section = readme_section(HEADING)
    for key in ("MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.RETINANET.NUM_CLASSES",
                "MODEL.FCOS.NUM_CLASSES", "MODEL.MASK_ON False", "INPUT.MIN_SIZE_TRAIN",
                "SOLVER.MAX_ITER", "_smallR_FPN_shapes", "_R_50_FPN_1x_coco"):
        assert key in section, key


@pytest.fixture
def mine(tmp_path):
    data = tmp_path / "data"
    write_tiny_coco(data, "train", 4)
    write_tiny_coco(data, "val", 2)
    yield data
    for name in ("mine_train", "mine_val"):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def _classifier_outputs(checkpoint: str) -> dict:
    """Output sizes of the class-score layers in a checkpoint, by parameter name."""
    model = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    return {k: v.shape[0] for k, v in model.items()
            if re.search(r"(cls_score|cls_logits)\.weight$", k)}


def test_own_data_commands_run_as_written(mine, tmp_path, monkeypatch):
    block = readme_code_block(HEADING, "bash").replace(DATA_PREFIX, str(mine))
    commands = recorded_commands(block)
    assert len(commands) >= 4, commands
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the commands' relative OUTPUT_DIR
    configs = set()
    for argv in commands:
        assert argv[0] == "train_net.py", argv
        args = list(argv[1:])
        i = args.index("--config-file") + 1
        configs.add(args[i])
        args[i] = os.path.join(REPO, args[i])  # the commands run from the repository
        log = train_net_main(tmp_path, *args, *FAST)
        out = work / args[args.index("OUTPUT_DIR") + 1]
        assert "Evaluation results for bbox" in log or "No predictions from the model" in log
        if "--eval-only" in args:
            continue
        assert (out / "model_final.pth").is_file()
        sizes = _classifier_outputs(str(out / "model_final.pth"))
        arch = args[args.index("--config-file") + 1]
        if "retinanet" in arch:  # one sigmoid output per class and anchor (9 per location)
            assert sizes == {"head.cls_score.weight": 9}, sizes
        elif "fcos" in arch:     # one sigmoid output per class
            assert sizes == {"head.cls_score.weight": 1}, sizes
        else:                    # softmax over the class and background; no mask head
            assert sizes and set(sizes.values()) == {2}, sizes
            model = torch.load(str(out / "model_final.pth"), map_location="cpu",
                               weights_only=True)["model"]
            assert not any("mask_head" in k for k in model), "MASK_ON False built a mask head"
    assert {os.path.basename(c).split("_smallR")[0] for c in configs} >= {
        "r3cnn_naive", "iou_aware_retinanet", "iou_aware_fcos", "offset_bin_faster_rcnn"}
