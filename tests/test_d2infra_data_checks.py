"""Tests of d2infra.data.checks: a COCO-format dataset against the config, before the first step.

Each bad input is a tiny COCO json written here, with hand-known counts (categories, boxes, missing
files); what the degenerate-box warning says Detectron2 does with such boxes is checked against
Detectron2's own DatasetMapper."""
import copy
import dataclasses
import json
import os
import uuid

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog

import train_net
from cli_runs import run_script, train_net_main
from d2infra.data import checks, register_coco_format_datasets
from d2infra.data.checks import DataCheckError, check_datasets, summarize_coco_json

R3CNN = "configs/r3cnn/r3cnn_naive_smallR_FPN_shapes.yaml"  # Mask R-CNN-based, 6 classes
IOU_RETINANET = "configs/iou_aware/iou_aware_retinanet_smallR_FPN_shapes.yaml"
IOU_FCOS = "configs/iou_aware/iou_aware_fcos_smallR_FPN_shapes.yaml"


def _box(i, image_id, bbox, **extra):
    return {"id": i, "image_id": image_id, "category_id": 1, "bbox": bbox, "iscrowd": 0,
            "area": abs(bbox[2] * bbox[3]), **extra}


def box_only_coco():
    """One category ("widget"), three 40x60 images, four boxes, no segmentation."""
    return {
        "images": [{"id": i, "file_name": f"im{i}.png", "height": 40, "width": 60}
                   for i in (1, 2, 3)],
        "annotations": [_box(1, 1, [5, 5, 20, 10]), _box(2, 2, [10, 8, 30, 20]),
                        _box(3, 3, [1, 2, 15, 15]), _box(4, 3, [30, 20, 10, 12])],
        "categories": [{"id": 1, "name": "widget"}],
    }


@pytest.fixture
def write_dataset(tmp_path):
    """write_dataset(coco, missing=()) -> (name, json path, image root): the json and its images
    (except ``missing``), registered under a fresh name (removed afterwards)."""
    names = []

    def write(coco, missing=()):
        name = f"checks_{uuid.uuid4().hex[:8]}"
        root = tmp_path / name
        root.mkdir()
        for im in coco["images"]:
            if im["file_name"] not in missing:
                cv2.imwrite(str(root / im["file_name"]),
                            np.full((im["height"], im["width"], 3), 128, np.uint8))
        json_file = tmp_path / f"{name}.json"
        json_file.write_text(json.dumps(coco))
        names.append(name)
        return name, str(json_file), str(root)

    yield write
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def config(config_file, train, test=(), *opts):
    """The frozen config of ``config_file`` + ``opts`` (as train_net builds it), training on the
    datasets ``train`` and testing on ``test``, each a (name, json, root) registered here."""
    datasets = list(train) + [d for d in test if d not in train]
    cfg = train_net.build_cfg(config_file, [
        "DATASETS.COCO_FORMAT.NAMES", str([d[0] for d in datasets]),
        "DATASETS.COCO_FORMAT.JSON_FILES", str([d[1] for d in datasets]),
        "DATASETS.COCO_FORMAT.IMAGE_ROOTS", str([d[2] for d in datasets]),
        "DATASETS.TRAIN", str(tuple(d[0] for d in train)),
        "DATASETS.TEST", str(tuple(d[0] for d in test)), *opts])
    register_coco_format_datasets(cfg)
    return cfg


def error_of(cfg, training=True) -> str:
    with pytest.raises(DataCheckError) as e:
        check_datasets(cfg, training=training)
    return str(e.value)


def test_matching_box_only_data_passes_without_warning(write_dataset):
    data = write_dataset(box_only_coco())
    for cfg in (config(R3CNN, [data], [data], "MODEL.MASK_ON", "False",
                       "MODEL.ROI_HEADS.NUM_CLASSES", "1"),
                config(IOU_RETINANET, [data], [data], "MODEL.RETINANET.NUM_CLASSES", "1"),
                config(IOU_FCOS, [data], [data], "MODEL.FCOS.NUM_CLASSES", "1")):
        assert check_datasets(cfg) == []


def test_more_classes_than_categories_names_the_key_the_counts_and_the_json(write_dataset):
    name, json_file, _ = data = write_dataset(box_only_coco())
    msg = error_of(config(R3CNN, [data], (), "MODEL.MASK_ON", "False",
                          "MODEL.ROI_HEADS.NUM_CLASSES", "2"))
    assert "MODEL.ROI_HEADS.NUM_CLASSES = 2 (the class count of GeneralizedRCNN's head)" in msg
    assert f"{json_file} (dataset '{name}' of DATASETS.TRAIN" in msg
    assert "has 1 category ['widget']: set MODEL.ROI_HEADS.NUM_CLASSES 1" in msg
    assert "extra classes would never see an example" in msg


def test_fewer_classes_than_categories_is_an_error(write_dataset):
    coco = box_only_coco()
    coco["categories"] += [{"id": 2, "name": "gadget"}, {"id": 3, "name": "gizmo"}]
    coco["annotations"][0]["category_id"] = 3
    _, json_file, _ = data = write_dataset(coco)
    msg = error_of(config(IOU_FCOS, [data], (), "MODEL.FCOS.NUM_CLASSES", "2"))
    assert "MODEL.FCOS.NUM_CLASSES = 2 (the class count of IoUAwareFCOS's head)" in msg
    assert f"{json_file} " in msg and "has 3 categories ['widget', 'gadget', 'gizmo']" in msg
    assert "some annotations are out of the head's range" in msg


def test_the_key_of_another_meta_architecture_is_named_as_the_likely_mistake(write_dataset):
    """IoU-aware RetinaNet reads MODEL.RETINANET.NUM_CLASSES (6 in the shapes config), not the
    MODEL.ROI_HEADS.NUM_CLASSES the user set to the data's one class."""
    data = write_dataset(box_only_coco())
    msg = error_of(config(IOU_RETINANET, [data], (), "MODEL.ROI_HEADS.NUM_CLASSES", "1"))
    assert "MODEL.RETINANET.NUM_CLASSES = 6 (the class count of IoUAwareRetinaNet's head)" in msg
    assert "set MODEL.RETINANET.NUM_CLASSES 1" in msg
    assert ("MODEL.ROI_HEADS.NUM_CLASSES = 1 is set, but IoUAwareRetinaNet does not read it"
            in msg)
    # Keys left at their default (FCOS's 80 here) are not named.
    assert "MODEL.FCOS" not in msg


def test_test_json_is_checked_against_the_class_count_too(write_dataset):
    train = write_dataset(box_only_coco())
    coco = box_only_coco()
    coco["categories"].append({"id": 2, "name": "gadget"})
    name, json_file, _ = test = write_dataset(coco)
    cfg = config(IOU_RETINANET, [train], [test], "MODEL.RETINANET.NUM_CLASSES", "1")
    for training in (True, False):
        msg = error_of(cfg, training=training)
        assert "1 problem" in msg and f"{json_file} (dataset '{name}' of DATASETS.TEST" in msg
        assert "has 2 categories" in msg


def test_mask_on_with_box_only_data(write_dataset):
    name, json_file, _ = data = write_dataset(box_only_coco())
    msg = error_of(config(R3CNN, [data], (), "MODEL.ROI_HEADS.NUM_CLASSES", "1"))
    assert "MODEL.MASK_ON is True, but no annotation in " + json_file in msg
    assert "set MODEL.MASK_ON False" in msg and f"dataset '{name}' of DATASETS.TRAIN" in msg


def test_mask_on_with_some_annotations_without_segmentation(write_dataset):
    coco = box_only_coco()
    for a in coco["annotations"][:3]:  # a square polygon in each of the first three
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    # A crowd annotation without a mask does not count (Detectron2 drops crowds in training).
    coco["annotations"].append(dict(_box(5, 1, [0, 0, 5, 5]), iscrowd=1))
    _, json_file, _ = data = write_dataset(coco)
    msg = error_of(config(R3CNN, [data], (), "MODEL.ROI_HEADS.NUM_CLASSES", "1"))
    assert f"1 of 4 annotations in {json_file}" in msg and "have no segmentation" in msg
    assert "MODEL.MASK_ON False" in msg
    # With masks on all four, it passes.
    coco["annotations"][3]["segmentation"] = [[30, 20, 40, 20, 40, 32, 30, 32]]
    data = write_dataset(coco)
    assert check_datasets(config(R3CNN, [data], (), "MODEL.ROI_HEADS.NUM_CLASSES", "1")) == []


def test_degenerate_boxes_are_counted_and_what_detectron2_does_is_what_the_warning_says(
        write_dataset):
    coco = box_only_coco()
    coco["annotations"] += [_box(5, 1, [40, 10, 0, 12]),    # zero width
                            _box(6, 2, [30, 10, -12, 8]),   # negative width: x from 18 to 30
                            _box(7, 3, [20, 30, 6, -10])]   # negative height: y from 20 to 30
    name, json_file, _ = data = write_dataset(coco)
    cfg = config(R3CNN, [data], [data], "MODEL.MASK_ON", "False", "MODEL.ROI_HEADS.NUM_CLASSES",
                 "1", "INPUT.MIN_SIZE_TRAIN", "(40,)", "INPUT.RANDOM_FLIP", "none")
    warnings = check_datasets(cfg)
    assert len(warnings) == 1
    w = warnings[0]
    assert f"3 of 7 boxes in {json_file} (dataset '{name}' of DATASETS.TRAIN and DATASETS.TEST" in w
    assert "(1 with a zero side, 2 with a negative one)" in w
    assert "id 5 in im1.png: bbox [40, 10, 0, 12]" in w
    assert "removes a box with a zero side" in w and "from x+w to x (y+h to y)" in w
    assert "no detection can match them" in w
    # Detectron2's own loader (its DatasetMapper, scale 1 here): the zero-width box is gone; the
    # negative ones train as their corner-swapped boxes.
    mapper = DatasetMapper(cfg, is_train=True)
    boxes = {d["image_id"]: mapper(copy.deepcopy(d))["instances"].gt_boxes.tensor.tolist()
             for d in DatasetCatalog.get(name)}
    assert boxes[1] == [[5, 5, 25, 15]]
    assert boxes[2] == [[10, 8, 40, 28], [18, 10, 30, 18]]
    assert boxes[3] == [[1, 2, 16, 17], [30, 20, 40, 32], [20, 20, 26, 30]]


def test_missing_images_name_the_files_their_count_and_the_json(write_dataset):
    coco = box_only_coco()
    coco["images"] += [{"id": i, "file_name": f"more/im{i}.png", "height": 40, "width": 60}
                       for i in range(4, 12)]
    missing = ["im2.png"] + [f"more/im{i}.png" for i in range(4, 12)]
    name, json_file, root = data = write_dataset(coco, missing=missing)
    msg = error_of(config(IOU_RETINANET, [data], (), "MODEL.RETINANET.NUM_CLASSES", "1"))
    assert (f"9 of the 11 images that {json_file} (dataset '{name}' of DATASETS.TRAIN, "
            "DATASETS.COCO_FORMAT.NAMES[0]) lists are missing under the image root") in msg
    # The first five, in json order.
    shown = ", ".join(os.path.join(root, f) for f in missing[:5]) + ", ..."
    assert shown in msg


def test_eval_only_checks_the_test_datasets_only(write_dataset):
    train = write_dataset(box_only_coco(), missing=["im1.png"])
    _, test_json, _ = test = write_dataset(box_only_coco(), missing=["im3.png"])
    cfg = config(IOU_RETINANET, [train], [test], "MODEL.RETINANET.NUM_CLASSES", "1")
    msg = error_of(cfg, training=True)
    assert "2 problems" in msg and "im1.png" in msg and "im3.png" in msg
    msg = error_of(cfg, training=False)
    assert "1 problem" in msg and f"1 of the 3 images that {test_json}" in msg
    assert "im1.png" not in msg


@pytest.mark.parametrize("case", ["clean", "box_only", "missing", "degenerate", "mixed"])
def test_the_fast_scan_agrees_with_the_parse(write_dataset, monkeypatch, case):
    """The scan of the bytes either concludes what the parse finds, or hands over to the parse."""
    coco = box_only_coco()
    coco["images"][1]["file_name"] = 'we"ird.png'  # an escaped quote in a file name
    coco["categories"] = [{"id": 7, "name": "b"}, {"id": 2, "name": "a"}]
    if case != "box_only":
        for a in coco["annotations"]:
            a["segmentation"] = [[0, 0, 4, 0, 4, 4]]
    if case == "mixed":
        coco["annotations"][2]["segmentation"] = []
    if case == "degenerate":
        coco["annotations"][1]["bbox"] = [3, 3, 0.0, 5]
    _, json_file, root = write_dataset(coco, missing=["im3.png"] if case == "missing" else ())
    with open(json_file, "rb") as f:
        data = f.read()
    scanned, parsed = checks._scan(data, json_file, root), checks._parse(data, json_file, root)
    # The scan concludes only when there is nothing to report, and then as the parse does.
    assert (scanned is None) == (case in ("missing", "degenerate", "mixed"))
    if scanned is not None:
        assert dataclasses.replace(scanned, parsed=True) == parsed
    s = summarize_coco_json(json_file, root)
    assert s == (scanned or parsed)
    assert s.categories == ["a", "b"] and s.num_images == 3 and s.num_annotations == 4
    assert s.missing_images == ([os.path.join(root, "im3.png")] if case == "missing" else [])
    assert s.without_segmentation == {"box_only": 4, "mixed": 1}.get(case, 0)
    assert [d[0] for d in s.degenerate] == ([2] if case == "degenerate" else [])


def test_train_net_stops_before_the_model_is_built(write_dataset, datasets_dir, tmp_path,
                                                   monkeypatch):
    """The user's first try: a box-only one-class json with R^3-CNN's shapes config as it is
    (MASK_ON True, 6 classes): train_net.py stops in setup with both problems."""
    name, json_file, root = write_dataset(box_only_coco())

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(train_net.Trainer, "build_model", classmethod(no_model))
    with pytest.raises(DataCheckError) as e:
        train_net_main(datasets_dir, "--config-file", R3CNN,
                       "DATASETS.COCO_FORMAT.NAMES", f"['{name}']",
                       "DATASETS.COCO_FORMAT.JSON_FILES", f"['{json_file}']",
                       "DATASETS.COCO_FORMAT.IMAGE_ROOTS", f"['{root}']",
                       "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()",
                       "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out"))
    msg = str(e.value)
    assert "2 problems" in msg and "MODEL.ROI_HEADS.NUM_CLASSES = 6" in msg
    assert "set MODEL.MASK_ON False" in msg
    assert not os.path.exists(tmp_path / "out" / "metrics.json")


def test_several_processes_stop_before_they_are_launched(write_dataset, datasets_dir, tmp_path):
    """With --num-gpus 2 the data is checked before launch(): setup()'s check runs on rank 0
    only, and would stop no other rank (or machine)."""
    name, json_file, root = write_dataset(box_only_coco())
    proc = run_script(datasets_dir, "train_net.py", "--num-gpus", "2", "--config-file", R3CNN,
                      "DATASETS.COCO_FORMAT.NAMES", f"['{name}']",
                      "DATASETS.COCO_FORMAT.JSON_FILES", f"['{json_file}']",
                      "DATASETS.COCO_FORMAT.IMAGE_ROOTS", f"['{root}']",
                      "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()",
                      "MODEL.MASK_ON", "False", "OUTPUT_DIR", str(tmp_path / "out"),
                      check=False)
    assert proc.returncode != 0
    assert "DataCheckError" in proc.stderr and "MODEL.ROI_HEADS.NUM_CLASSES = 6" in proc.stderr
    assert "Rank of current process" not in proc.stdout + proc.stderr  # no process launched
    assert not os.path.exists(tmp_path / "out")


def test_datasets_without_a_json_on_disk_are_left_to_detectron2(write_dataset):
    """Detectron2's builtin coco_2017_val (its json is not under this $DETECTRON2_DATASETS) is not
    checked here: loading it fails with Detectron2's own error."""
    data = write_dataset(box_only_coco())
    cfg = config(IOU_RETINANET, [data], (), "MODEL.RETINANET.NUM_CLASSES", "1").clone()
    cfg.defrost()
    cfg.DATASETS.TEST = ("coco_2017_val",)
    assert not os.path.isfile(MetadataCatalog.get("coco_2017_val").json_file)
    assert check_datasets(cfg) == []
