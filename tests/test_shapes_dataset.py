"""Tests of the embedded shapes dataset (d2infra.data.shapes and its registration).

References are independent of the generator's own bookkeeping: pycocotools decodes the polygons,
numpy measures the decoded masks, and hand-built masks have hand-computed areas.
"""
import filecmp
import json
import os
import threading

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

import d2infra.data  # noqa: F401  registration
from d2infra.data import SHAPES_DATASETS, THING_CLASSES, ensure_generated
from d2infra.data import shapes

SAMPLE_SPLIT = "val"
SAMPLE_SIZE = 200  # images of the validity sample
IOU_EVERY = 4  # compare with the generator's visible masks on every 4th image


def _decode(segmentation, h, w):
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects(segmentation, h, w)))


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes_sample")
    json_path = shapes.build_split(SAMPLE_SPLIT, SAMPLE_SIZE, str(out))
    return COCO(json_path), str(out / "images")


# ------------------------------------------------------------------------------------------------
# Polygons of masks with holes (hand-built masks, hand-computed areas)
# ------------------------------------------------------------------------------------------------
def test_polygons_of_mask_with_hole_and_island_decode_exactly():
    m = np.zeros((40, 50), np.uint8)
    m[5:25, 10:30] = 1  # 20 x 20
    m[10:20, 15:25] = 0  # 10 x 10 hole
    m[14:16, 19:21] = 1  # 2 x 2 island in the hole
    m[30:33, 40:41] = 1  # 3 x 1 separate piece
    polys = shapes.mask_to_polygons(m)
    assert len(polys) == 3  # the annulus (one keyhole polygon), the island, the piece
    assert all(len(p) % 2 == 0 and len(p) >= 6 for p in polys)
    decoded = _decode(polys, 40, 50)
    assert decoded.sum() == 400 - 100 + 4 + 3
    np.testing.assert_array_equal(decoded, m)
    ann = shapes.annotate_mask(m.astype(bool))
    assert ann["area"] == 307
    assert ann["bbox"] == [10.0, 5.0, 31.0, 28.0]  # x 10..40, y 5..32


def test_polygons_of_ring_and_diagonal_shapes_decode_exactly():
    m = np.zeros((64, 64), np.uint8)
    cv2.circle(m, (30, 30), 20, 1, -1)
    cv2.circle(m, (30, 30), 11, 0, -1)
    tri = np.array([[50, 2], [62, 20], [44, 14]], np.int32)
    cv2.fillPoly(m, [tri], 1)
    m[60, 2] = 1  # a single pixel
    m[61, 3] = 1  # touching it diagonally only
    np.testing.assert_array_equal(_decode(shapes.mask_to_polygons(m), 64, 64), m)
    assert shapes.mask_to_polygons(np.zeros((8, 8), bool)) == []
    assert shapes.annotate_mask(np.zeros((8, 8), bool)) is None


# ------------------------------------------------------------------------------------------------
# Determinism
# ------------------------------------------------------------------------------------------------
def test_generation_is_byte_identical(tmp_path):
    a = shapes.ensure_split("mini_val", 8, root=str(tmp_path / "a"))
    b = shapes.ensure_split("mini_val", 8, root=str(tmp_path / "b"))
    assert filecmp.cmp(a[0], b[0], shallow=False)
    names = sorted(os.listdir(a[1]))
    assert len(names) == 8
    assert names == sorted(os.listdir(b[1]))
    for n in names:
        assert filecmp.cmp(os.path.join(a[1], n), os.path.join(b[1], n), shallow=False), n


def test_image_depends_only_on_split_and_index(tmp_path):
    json_path = shapes.build_split("mini_train", 4, str(tmp_path))
    img3 = cv2.imread(str(tmp_path / "images" / "000003.png"))[:, :, ::-1]
    again, instances = shapes.render_image("mini_train", 3)
    np.testing.assert_array_equal(img3, again)  # same pixels, drawn alone
    other, _ = shapes.render_image("mini_val", 3)
    assert not np.array_equal(again, other)
    assert not np.array_equal(again, shapes.render_image("mini_train", 2)[0])
    anns = [a for a in json.load(open(json_path))["annotations"] if a["image_id"] == 4]
    assert len(anns) == len(instances)


# ------------------------------------------------------------------------------------------------
# Validity of a few hundred images under pycocotools
# ------------------------------------------------------------------------------------------------
def test_sample_is_valid_coco(sample):
    coco, image_root = sample
    assert len(coco.getImgIds()) == SAMPLE_SIZE
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(THING_CLASSES)
    n = 0
    for img in coco.loadImgs(coco.getImgIds()):
        h, w = img["height"], img["width"]
        assert (h, w) == (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
        assert os.path.isfile(os.path.join(image_root, img["file_name"]))
        union = np.zeros((h, w), np.int32)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            assert ann["iscrowd"] == 0 and ann["category_id"] in range(1, 7)
            assert all(len(p) % 2 == 0 and len(p) >= 6 for p in ann["segmentation"])
            m = coco.annToMask(ann)  # pycocotools' own decoding
            ys, xs = np.nonzero(m)
            assert len(ys) > 0
            assert ann["area"] == m.sum()
            x, y, bw, bh = ann["bbox"]
            tight = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            np.testing.assert_allclose([x, y, bw, bh], tight, atol=1.0)
            union += m
            n += 1
        # Visible parts of the instances of one image never overlap.
        assert union.max() <= 1
    assert n > 3 * SAMPLE_SIZE  # a few objects per image on average


def test_decoded_polygons_match_visible_masks(sample):
    coco, _ = sample
    ious = []
    for index in range(0, SAMPLE_SIZE, IOU_EVERY):
        _, instances = shapes.render_image(SAMPLE_SPLIT, index)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=index + 1))
        assert len(anns) == len(instances)
        for ann, inst in zip(anns, instances):
            assert ann["category_id"] == inst.category + 1
            m = coco.annToMask(ann).astype(bool)
            ious.append((m & inst.mask).sum() / (m | inst.mask).sum())
    assert len(ious) > 100
    assert min(ious) > 0.9
    assert np.mean(ious) > 0.99  # the polygons are exact by construction


def test_sample_covers_classes_sizes_holes_and_empty_images(sample):
    coco, _ = sample
    anns = coco.loadAnns(coco.getAnnIds())
    per_class = np.bincount([a["category_id"] - 1 for a in anns], minlength=6)
    assert (per_class > 0.1 * len(anns)).all(), per_class  # all six, roughly balanced
    areas = np.array([a["area"] for a in anns])
    small, large = (areas < 32**2).sum(), (areas > 96**2).sum()
    medium = len(areas) - small - large
    assert small > 0.1 * len(areas) and medium > 0.1 * len(areas) and large > 0.02 * len(areas)
    empty = [i for i in coco.getImgIds() if not coco.getAnnIds(imgIds=i)]
    assert 1 <= len(empty) <= 0.05 * SAMPLE_SIZE
    # Masks with holes exist (rings, shapes on top of others) and decode with their holes.
    with_holes = 0
    for ann in anns:
        m = coco.annToMask(ann)
        _, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        with_holes += int((hierarchy[0, :, 3] != -1).any())
    assert with_holes > 10


# ------------------------------------------------------------------------------------------------
# Cache: atomic, regenerated when partial; registration in Detectron2
# ------------------------------------------------------------------------------------------------
def test_partial_or_outdated_cache_is_regenerated(tmp_path):
    root = str(tmp_path)
    split_dir = tmp_path / "mini_val"
    (split_dir / "images").mkdir(parents=True)
    (split_dir / "images" / "000000.png").write_bytes(b"truncated")
    assert not shapes.is_split_complete("mini_val", 3, root)
    json_file, image_root = shapes.ensure_split("mini_val", 3, root=root)
    assert shapes.is_split_complete("mini_val", 3, root)
    assert cv2.imread(os.path.join(image_root, "000000.png")) is not None
    assert len(os.listdir(image_root)) == 3
    # A cache of another generator version (or size) counts as incomplete.
    assert not shapes.is_split_complete("mini_val", 4, root)
    (split_dir / "COMPLETE").write_text('{"version": -1}')
    assert not shapes.is_split_complete("mini_val", 3, root)
    shapes.ensure_split("mini_val", 3, root=root)
    assert shapes.is_split_complete("mini_val", 3, root)
    assert sorted(p for p in os.listdir(root) if not p.endswith(".lock")) == ["mini_val"]


@pytest.mark.parametrize("with_lock", [True, False])
def test_racing_generators_leave_one_complete_split(tmp_path, monkeypatch, with_lock):
    if not with_lock:  # the atomic rename alone must keep it consistent
        monkeypatch.setattr(shapes._FileLock, "__enter__", lambda self: self)
    root = str(tmp_path)
    errors = []

    def run():
        try:
            shapes.ensure_split("mini_train", 3, root=root)
        except Exception as e:  # pragma: no cover (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert shapes.is_split_complete("mini_train", 3, root)
    assert sorted(p for p in os.listdir(root) if not p.endswith(".lock")) == ["mini_train"]
    coco = COCO(os.path.join(root, "mini_train", "instances_mini_train.json"))
    assert len(coco.getImgIds()) == 3


def test_detectron2_catalog_loads_shapes_mini_train(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert set(SHAPES_DATASETS) <= set(DatasetCatalog.list())
    dicts = DatasetCatalog.get("shapes_mini_train")
    assert len(dicts) == 32
    assert os.path.isdir(tmp_path / "shapes" / "mini_train" / "images")
    meta = MetadataCatalog.get("shapes_mini_train")
    assert meta.json_file == str(tmp_path / "shapes" / "mini_train" / "instances_mini_train.json")
    assert meta.evaluator_type == "coco" and meta.thing_classes == list(THING_CLASSES)
    n_anns = 0
    for d in dicts:
        assert os.path.isfile(d["file_name"]) and d["file_name"].startswith(str(tmp_path))
        assert (d["height"], d["width"]) == (256, 256)
        for a in d["annotations"]:
            assert a["bbox_mode"] == BoxMode.XYWH_ABS
            assert a["category_id"] in range(6)  # contiguous ids
            assert isinstance(a["segmentation"], list) and isinstance(a["segmentation"][0], list)
            n_anns += 1
    assert n_anns > 32
    assert any(len(d["annotations"]) == 0 for d in dicts)  # index 5 is an empty image


def test_ensure_generated_refreshes_paths_and_ignores_other_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "one"))
    json_file, _ = ensure_generated("shapes_mini_val")
    assert MetadataCatalog.get("shapes_mini_val").json_file == json_file
    assert os.path.isfile(json_file) and json_file.startswith(str(tmp_path / "one"))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "two"))
    json_file2, _ = ensure_generated("shapes_mini_val")
    assert json_file2.startswith(str(tmp_path / "two")) and os.path.isfile(json_file2)
    assert MetadataCatalog.get("shapes_mini_val").json_file == json_file2
    # Another dataset: nothing generated, nothing changed.
    before = sorted(os.listdir(tmp_path))
    ensure_generated("coco_2017_val")
    assert sorted(os.listdir(tmp_path)) == before
