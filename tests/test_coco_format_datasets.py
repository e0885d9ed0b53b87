"""Tests of COCO-format datasets registered from the config (d2infra.data.catalog)."""
import json
import os
import uuid

import cv2
import numpy as np
import pytest

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from imbalance.config import add_imbalance_config
from d2infra.data import (
    UnknownDatasetError,
    check_dataset_names,
    register_coco_format_datasets,
)
from d2infra.data import catalog

TINY_COCO = {
    "images": [
        {"id": 7, "file_name": "a.png", "height": 20, "width": 30},
        {"id": 9, "file_name": "b.png", "height": 20, "width": 30},
    ],
    "annotations": [
        {"id": 1, "image_id": 7, "category_id": 3, "bbox": [2, 3, 10, 5], "area": 50,
         "iscrowd": 0, "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]]},
        {"id": 2, "image_id": 9, "category_id": 5, "bbox": [0, 0, 4, 4], "area": 16,
         "iscrowd": 0, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
    ],
    "categories": [{"id": 5, "name": "dog"}, {"id": 3, "name": "cat"}],
}


@pytest.fixture
def tiny(tmp_path):
    """A valid COCO json, its image folder, and a fresh dataset name (removed afterwards)."""
    root = tmp_path / "images"
    root.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(root / name), np.zeros((20, 30, 3), np.uint8))
    json_file = tmp_path / "tiny.json"
    json_file.write_text(json.dumps(TINY_COCO))
    name = f"tiny_{uuid.uuid4().hex[:8]}"
    yield name, str(json_file), str(root)
    for n in list(DatasetCatalog.list()):
        if n.startswith(name):
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)


def _cfg(names, jsons, roots, train=(), test=()):
    cfg = get_cfg()
    add_imbalance_config(cfg)
    cfg.DATASETS.COCO_FORMAT.NAMES = list(names)
    cfg.DATASETS.COCO_FORMAT.JSON_FILES = list(jsons)
    cfg.DATASETS.COCO_FORMAT.IMAGE_ROOTS = list(roots)
    cfg.DATASETS.TRAIN = tuple(train)
    cfg.DATASETS.TEST = tuple(test)
    return cfg


def test_valid_dataset_registers_and_loads(tiny):
    name, json_file, root = tiny
    assert register_coco_format_datasets(_cfg([name], [json_file], [root])) == [name]
    dicts = DatasetCatalog.get(name)
    assert [os.path.basename(d["file_name"]) for d in dicts] == ["a.png", "b.png"]
    a = dicts[0]["annotations"][0]
    assert a["bbox"] == [2, 3, 10, 5] and a["bbox_mode"] == BoxMode.XYWH_ABS
    # Category ids 3 ("cat") and 5 ("dog") become contiguous 0 and 1, in id order.
    assert a["category_id"] == 0 and dicts[1]["annotations"][0]["category_id"] == 1
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["cat", "dog"]
    assert meta.json_file == json_file and meta.image_root == root
    assert meta.evaluator_type == "coco"
    check_dataset_names(_cfg([name], [json_file], [root], train=[name], test=["shapes_val"]))


def test_registration_is_idempotent_but_refuses_other_files(tiny, tmp_path):
    name, json_file, root = tiny
    cfg = _cfg([name], [json_file], [root])
    register_coco_format_datasets(cfg)
    register_coco_format_datasets(cfg)  # same name, same files: fine
    other = tmp_path / "other.json"
    other.write_text(json.dumps(TINY_COCO))
    with pytest.raises(ValueError, match=f"{name}.*already registered"):
        register_coco_format_datasets(_cfg([name], [str(other)], [root]))
    # A name the shapes dataset (or Detectron2) already uses is refused too.
    with pytest.raises(ValueError, match="'shapes_train' is already registered"):
        register_coco_format_datasets(_cfg(["shapes_train"], [json_file], [root]))


def test_list_lengths_must_match(tiny):
    name, json_file, root = tiny
    with pytest.raises(ValueError, match=r"same length, got 2, 1 and 1"):
        register_coco_format_datasets(_cfg([name, name + "_b"], [json_file], [root]))
    assert name not in DatasetCatalog.list()


def test_missing_json_names_key_and_path(tiny, tmp_path):
    name, _, root = tiny
    missing = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError) as e:
        register_coco_format_datasets(_cfg([name], [missing], [root]))
    assert "DATASETS.COCO_FORMAT.JSON_FILES[0]" in str(e.value) and missing in str(e.value)
    assert "does not exist" in str(e.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid json"),
        ("[1, 2]", "top level is not an object"),
        (json.dumps({k: v for k, v in TINY_COCO.items() if k != "annotations"}),
         r"missing key\(s\) \['annotations'\]"),
        (json.dumps({"images": [], "annotations": [], "categories": {}}), "must be lists"),
    ],
)
def test_invalid_json_names_the_problem(tiny, tmp_path, content, message):
    name, _, root = tiny
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(ValueError, match=message) as e:
        register_coco_format_datasets(_cfg([name], [str(bad)], [root]))
    assert "JSON_FILES[0]" in str(e.value) and str(bad) in str(e.value)
    assert name not in DatasetCatalog.list()


def test_large_json_is_scanned_for_its_keys(tiny, tmp_path, monkeypatch):
    name, json_file, root = tiny
    monkeypatch.setattr(catalog, "_FULL_CHECK_MAX_BYTES", 10)
    bad = tmp_path / "big_bad.json"
    bad.write_text(json.dumps({k: v for k, v in TINY_COCO.items() if k != "categories"}))
    with pytest.raises(ValueError, match=r"no key\(s\) \['categories'\]"):
        register_coco_format_datasets(_cfg([name], [str(bad)], [root]))
    register_coco_format_datasets(_cfg([name], [json_file], [root]))
    assert len(DatasetCatalog.get(name)) == 2


def test_image_root_must_be_an_existing_directory(tiny, tmp_path):
    name, json_file, _ = tiny
    missing = str(tmp_path / "no_images")
    with pytest.raises(FileNotFoundError) as e:
        register_coco_format_datasets(_cfg([name], [json_file], [missing]))
    assert "DATASETS.COCO_FORMAT.IMAGE_ROOTS[0]" in str(e.value) and missing in str(e.value)
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        register_coco_format_datasets(_cfg([name], [json_file], [json_file]))
    assert name not in DatasetCatalog.list()


def test_unknown_dataset_names_are_listed(tiny):
    name, json_file, root = tiny
    cfg = _cfg([name], [json_file], [root], train=["shapes_train", "my_typo"], test=["also_bad"])
    register_coco_format_datasets(cfg)
    with pytest.raises(UnknownDatasetError) as e:
        check_dataset_names(cfg)
    msg = str(e.value)
    assert "DATASETS.TRAIN: 'my_typo'" in msg and "DATASETS.TEST: 'also_bad'" in msg
    assert "shapes_train" in msg and "shapes_mini_val" in msg and name in msg
    assert "'shapes_train'" not in msg.split("Embedded")[0]  # a known name is not reported
    assert isinstance(e.value, KeyError)
