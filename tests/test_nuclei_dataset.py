"""d2infra.data.nuclei: the real nuclei data (StarDist's 2D example), its spatial split, its masks
and the checks of its download."""
import json
import os
import shutil
import subprocess
import zipfile

import numpy as np
import pytest
from pycocotools import mask as mask_util

from d2infra.data import nuclei


# ---------------------------------------------------------------------------------------------
# Hand-made cases
# ---------------------------------------------------------------------------------------------
def test_the_cut_is_the_row_fewest_nuclei_cross():
    labels = np.zeros((20, 6), np.int32)
    labels[10:17, 0:2] = 1  # rows 10..16
    labels[13:15, 3:5] = 2  # rows 13..14
    labels[16:19, 4:6] = 3  # rows 16..18
    # rows 14..16 of the height (0.7 * 20 = 14, 0.8 * 20 = 16): a cut at y puts rows < y above.
    # y=14: nuclei 1 and 2 on both sides; y=15: 1 only; y=16: 1 only, and 3 is all below.
    # Equal counts: the row nearest 0.75 * 20 = 15.
    assert nuclei.choose_cut(labels) == (15, [1])
    labels[10:17, 0:2] = 0
    assert nuclei.choose_cut(labels) == (15, [])  # y=15 and 16 cut nothing: 15 is nearest


def test_tiles_cover_the_region_with_the_last_one_flush():
    assert nuclei._starts(379, 256, 128) == [0, 123]
    assert nuclei._starts(512, 256, 128) == [0, 128, 256]
    assert nuclei._starts(200, 256, 128) == [0]


def _fake_source(folder, wheel_bytes=None, files=None):
    os.makedirs(folder, exist_ok=True)
    if wheel_bytes is not None:
        with open(os.path.join(folder, nuclei.WHEEL), "wb") as f:
            f.write(wheel_bytes)
    for name, data in (files or {}).items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


def test_a_wheel_that_is_not_the_pinned_one_is_a_clear_error(tmp_path):
    _fake_source(tmp_path / "source", wheel_bytes=b"not the stardist wheel")
    with pytest.raises(nuclei.NucleiDataError,
                       match=r"not the pinned stardist 0\.9\.1 wheel: sha256 [0-9a-f]{64}, "
                             f"expected {nuclei.WHEEL_SHA256}"):
        nuclei.fetch_source(str(tmp_path))


def test_an_extracted_file_that_is_not_the_pinned_one_is_a_clear_error(tmp_path):
    _fake_source(tmp_path / "source", files={"img2d.tif": b"x", "mask2d.tif": b"y"})
    with pytest.raises(nuclei.NucleiDataError, match=r"img2d.tif is not stardist 0\.9\.1's "
                                                     r"stardist/data/images/img2d.tif: sha256"):
        nuclei.fetch_source(str(tmp_path))


def test_a_failed_download_names_the_command_and_the_way_around(tmp_path, monkeypatch):
    def fail(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(nuclei.subprocess, "run", fail)
    with pytest.raises(nuclei.NucleiDataError) as e:
        nuclei.fetch_source(str(tmp_path))
    text = str(e.value)
    assert "pip download --no-deps" in text and "stardist==0.9.1" in text
    assert "No matching distribution" in text and nuclei.WHEEL in text
    assert str(tmp_path / "source") in text


def test_a_wheel_without_the_files_is_a_clear_error(tmp_path, monkeypatch):
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("stardist/__init__.py", "")
    _fake_source(tmp_path / "source", wheel_bytes=wheel.read_bytes())
    monkeypatch.setattr(nuclei, "WHEEL_SHA256", nuclei._sha256(str(wheel)))
    with pytest.raises(nuclei.NucleiDataError, match="cannot extract"):
        nuclei.fetch_source(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# The real data (downloaded once into $DETECTRON2_DATASETS/nuclei, else datasets/nuclei)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    try:
        source = nuclei.fetch_source()  # cached in $DETECTRON2_DATASETS/nuclei
    except nuclei.NucleiDataError as e:
        pytest.skip(f"the nuclei source cannot be fetched here: {e}")
    root = tmp_path_factory.mktemp("datasets") / "nuclei"
    shutil.copytree(os.path.dirname(source["img2d"]), root / "source")
    paths = {s: nuclei.ensure_generated(s, str(root)) for s in ("train", "val")}
    data = {s: json.loads(open(p[0]).read()) for s, p in paths.items()}
    return nuclei.read_source(source), paths, data, root


def test_no_nucleus_is_in_both_splits(generated):
    (_, labels), _, data, _ = generated
    train = {a["nucleus"] for a in data["train"]["annotations"]}
    val = {a["nucleus"] for a in data["val"]["annotations"]}
    straddlers = set(data["train"]["info"]["straddlers_erased"])
    assert not train & val and not straddlers & (train | val)
    # every nucleus of the source is in exactly one split, or a straddler (the data: 125 nuclei)
    assert train | val | straddlers == set(np.unique(labels).tolist()) - {0}
    assert (len(train), len(val), len(straddlers)) == (89, 33, 3)
    cut = data["train"]["info"]["cut_row"]
    assert cut == 379 and round(cut / 512, 2) == 0.74
    # the train tiles lie above the cut, the val strip below it
    for im in data["train"]["images"]:
        assert im["y0"] + im["height"] <= cut and (im["height"], im["width"]) == (256, 256)
    (val_im,) = data["val"]["images"]
    assert (val_im["y0"], val_im["height"], val_im["width"]) == (cut, 512 - cut, 512)


def test_masks_decode_to_the_label_image_on_a_tile(generated):
    """Every annotation of a training tile, decoded by pycocotools, is exactly its nucleus'
    pixels in the source labels (cropped to the tile), and the tile holds no other nucleus."""
    (image, labels), paths, data, _ = generated
    straddlers = data["train"]["info"]["straddlers_erased"]
    im = data["train"]["images"][4]  # the tile at (y0, x0) = (123, 128)
    assert (im["y0"], im["x0"]) == (123, 128)
    crop = labels[123:379, 128:384]
    anns = [a for a in data["train"]["annotations"] if a["image_id"] == im["id"]]
    painted = np.zeros_like(crop)
    for a in anns:
        m = mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], 256, 256)))
        assert np.array_equal(m.astype(bool), crop == a["nucleus"]), a["nucleus"]
        assert a["area"] == int(m.sum())
        painted[m.astype(bool)] = a["nucleus"]
    assert np.array_equal(painted, np.where(np.isin(crop, straddlers), 0, crop))
    # the tile's pixels are the source's (8 bits, copied), but within 2 px (chessboard distance)
    # of a straddler, which are filled in
    import cv2

    tile = cv2.imread(os.path.join(paths["train"][1], im["file_name"]), cv2.IMREAD_UNCHANGED)
    away = cv2.distanceTransform((~np.isin(labels, straddlers)).astype(np.uint8), cv2.DIST_C, 3)
    keep = (away > 2)[123:379, 128:384]
    assert tile.dtype == np.uint8 and np.array_equal(tile[keep], image[123:379, 128:384][keep])
    assert keep.mean() > 0.95


def test_registered_and_generated_on_first_use(generated, monkeypatch):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    _, paths, _, root = generated
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root.parent))
    dicts = DatasetCatalog.get("nuclei_val")
    assert len(dicts) == 1 and len(dicts[0]["annotations"]) == 33
    assert dicts[0]["annotations"][0]["category_id"] == 0  # the one class, contiguous id 0
    assert MetadataCatalog.get("nuclei_val").json_file == paths["val"][0]
    assert MetadataCatalog.get("nuclei_val").thing_classes == ["nucleus"]
