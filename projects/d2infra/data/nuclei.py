"""Real data: the nuclei of StarDist's 2D example image, split spatially into ``nuclei_train`` and
``nuclei_val``.

Source: the wheel of ``stardist==0.9.1`` ships ``stardist/data/images/img2d.tif`` (a 512x512
fluorescence-microscopy crop, uint16 with values 0..235) and ``mask2d.tif`` (its instance labels,
uint16: 125 nuclei, 0 is background). :func:`fetch_source` downloads that wheel with ``pip
download --no-deps`` (one fixed wheel file, whatever the machine: pinned by its sha256), checks it
and the two files' sha256 and extracts only them; stardist is not installed. Reading them needs only
OpenCV (``IMREAD_UNCHANGED`` keeps the 16-bit labels).

The split (:func:`build`), deterministic:

* A horizontal cut at the row of ``CUT_RANGE`` (70-80% of the height) that the fewest nuclei cross,
  the one nearest 75% among equals: row 379 here, crossed by 3 nuclei. Those 3 "straddlers" are in
  neither split: their pixels and a 2-px rim are filled in from the surrounding background
  (OpenCV's Telea inpainting) on both sides, so no image shows a nucleus without its annotation
  and no nucleus is in both splits. No other nucleus touches both sides. (No row in 70-80% is
  free of nuclei; the best vertical cut there is crossed by 3 as well.)
* ``nuclei_train``: rows above the cut, in 256x256 tiles (the embedded configs' image size) at a
  stride of 128 px, the last row and column of tiles flush with the region's edge: 6 tiles, 89
  nuclei. A nucleus cut by a tile's border is annotated by its part inside the tile.
* ``nuclei_val``: the rows below the cut as one 133x512 image, 33 nuclei.

Images are 8-bit grayscale PNGs (the values fit in 8 bits: the data are copied, not rescaled);
annotations are COCO json with polygon masks that decode to exactly the label pixels
(:func:`d2infra.data.shapes.annotate_mask`); each image records its ``x0``/``y0`` in the source.
Everything is generated on first use under ``$DETECTRON2_DATASETS/nuclei``.
"""
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from .shapes import _FileLock, annotate_mask

__all__ = ["NUCLEI_DATASETS", "NucleiDataError", "dataset_root", "fetch_source", "choose_cut",
           "build", "ensure_generated", "ensure_registered", "read_source",
           "register_nuclei_datasets"]

logger = logging.getLogger(__name__)

STARDIST_VERSION = "0.9.1"
# One wheel for every machine (pip --platform/--python-version select it): its sha256 is fixed.
WHEEL = "stardist-0.9.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
WHEEL_SHA256 = "1f2caf3a071c1ead1b0cbbf9614ff2c82967be1bd22764f097871fb9bbd2718f"
PIP_SELECT = ["--only-binary=:all:", "--platform", "manylinux2014_x86_64", "--python-version",
              "3.11", "--implementation", "cp", "--abi", "cp311"]
# Files of the wheel -> their sha256.
SOURCE_FILES = {
    "stardist/data/images/img2d.tif":
        "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
    "stardist/data/images/mask2d.tif":
        "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f",
}
# Registered name -> split.
NUCLEI_DATASETS = {"nuclei_train": "train", "nuclei_val": "val"}
THING_CLASSES = ("nucleus",)
TILE, STRIDE = 256, 128
CUT_RANGE = (0.70, 0.80)  # where the train/val cut may lie, as fractions of the height
GENERATOR_VERSION = 1


class NucleiDataError(RuntimeError):
    """The nuclei source files cannot be fetched, or are not the pinned ones."""


def dataset_root() -> str:
    """``$DETECTRON2_DATASETS/nuclei`` (default ``datasets/nuclei``), read at call time."""
    return os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "nuclei")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(folder: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *PIP_SELECT,
           f"stardist=={STARDIST_VERSION}", "-d", folder]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.isfile(os.path.join(folder, WHEEL)):
        raise NucleiDataError(
            f"Could not download the nuclei data (the stardist {STARDIST_VERSION} wheel) with\n  "
            + " ".join(cmd) + f"\n{(proc.stderr or proc.stdout).strip()[-800:]}\n"
            f"Without access to PyPI, put {WHEEL} (sha256 {WHEEL_SHA256}) into {folder}.")


def fetch_source(root: Optional[str] = None) -> Dict[str, str]:
    """The two source files under ``root/source`` (downloaded and extracted if needed), each
    checked against its sha256; returns {"img2d": path, "mask2d": path}.

    Raises:
        NucleiDataError: the download failed, or the wheel or a file is not the pinned one.
    """
    folder = os.path.join(root or dataset_root(), "source")
    os.makedirs(folder, exist_ok=True)
    paths = {os.path.splitext(os.path.basename(m))[0]: os.path.join(folder, os.path.basename(m))
             for m in SOURCE_FILES}
    if all(os.path.isfile(p) for p in paths.values()):
        _check_files(paths)
        return paths
    wheel = os.path.join(folder, WHEEL)
    if not os.path.isfile(wheel):
        _download_wheel(folder)
    got = _sha256(wheel)
    if got != WHEEL_SHA256:
        raise NucleiDataError(f"{wheel} is not the pinned stardist {STARDIST_VERSION} wheel: "
                              f"sha256 {got}, expected {WHEEL_SHA256}. Delete it to download it "
                              "again.")
    try:
        with zipfile.ZipFile(wheel) as z:
            for member in SOURCE_FILES:
                with z.open(member) as src, open(os.path.join(folder, os.path.basename(member)),
                                                 "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, KeyError) as e:
        raise NucleiDataError(f"{wheel}: cannot extract {list(SOURCE_FILES)}: {e}") from e
    _check_files(paths)
    return paths


def _check_files(paths: Dict[str, str]) -> None:
    for member, want in SOURCE_FILES.items():
        path = paths[os.path.splitext(os.path.basename(member))[0]]
        got = _sha256(path)
        if got != want:
            raise NucleiDataError(f"{path} is not stardist {STARDIST_VERSION}'s {member}: sha256 "
                                  f"{got}, expected {want}. Delete it to extract it again.")


def read_source(paths: Dict[str, str]) -> Tuple[np.ndarray, np.ndarray]:
    """(image uint8 HxW, labels int32 HxW) from the two TIFFs."""
    image = cv2.imread(paths["img2d"], cv2.IMREAD_UNCHANGED)
    labels = cv2.imread(paths["mask2d"], cv2.IMREAD_UNCHANGED)
    if image is None or labels is None or image.shape != labels.shape or image.ndim != 2:
        raise NucleiDataError(f"cannot read a 2D image and its labels of one size from {paths}")
    if image.max() > 255:
        raise NucleiDataError(f"{paths['img2d']}: values up to {image.max()} do not fit 8 bits")
    return image.astype(np.uint8), labels.astype(np.int32)


def choose_cut(labels: np.ndarray, cut_range=CUT_RANGE) -> Tuple[int, List[int]]:
    """The row ``y`` in ``cut_range`` of the height (rows above: train) crossed by the fewest
    nuclei, nearest 75% among equals; returns (y, the ids of the nuclei on both sides)."""
    h = labels.shape[0]
    best = None
    for y in range(round(cut_range[0] * h), round(cut_range[1] * h) + 1):
        both = sorted(set(np.unique(labels[:y]).tolist()) & set(np.unique(labels[y:]).tolist())
                      - {0})
        key = (len(both), abs(y - 0.75 * h), y)
        if best is None or key < best[0]:
            best = (key, y, both)
    return best[1], best[2]


def _starts(length: int, tile: int, stride: int) -> List[int]:
    """Tile origins covering [0, length): every ``stride``, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile] if starts[-1] != length - tile else starts


def _annotations(labels: np.ndarray, image_id: int, next_id: int) -> List[dict]:
    anns = []
    for nucleus in np.unique(labels).tolist():
        if nucleus == 0:
            continue
        ann = annotate_mask(labels == nucleus)
        if ann is not None:
            anns.append({"id": next_id + len(anns), "image_id": image_id, "category_id": 1,
                         "iscrowd": 0, "nucleus": nucleus, **ann})
    return anns


def build(source: Dict[str, str], out_dir: str) -> Dict[str, str]:
    """Writes both splits (images and COCO json) into ``out_dir``; returns split -> json path."""
    image, labels = read_source(source)
    cut, straddlers = choose_cut(labels)
    erase = np.isin(labels, straddlers)
    # The straddlers' pixels and their 2-px rim (the blur of their edge), filled in from the
    # surrounding background.
    rim = cv2.dilate(erase.astype(np.uint8), np.ones((5, 5), np.uint8))
    image = cv2.inpaint(image, rim, 3, cv2.INPAINT_TELEA)
    labels = np.where(erase, 0, labels)
    h, w = labels.shape
    regions = {"train": [(y, x, TILE, TILE) for y in _starts(cut, TILE, STRIDE)
                         for x in _starts(w, TILE, STRIDE)],
               "val": [(cut, 0, h - cut, w)]}
    info = {"source": f"stardist=={STARDIST_VERSION}: " + ", ".join(SOURCE_FILES),
            "generator_version": GENERATOR_VERSION, "cut_row": cut,
            "straddlers_erased": straddlers}
    out = {}
    for split, boxes in regions.items():
        os.makedirs(os.path.join(out_dir, split, "images"), exist_ok=True)
        images, anns = [], []
        for i, (y0, x0, th, tw) in enumerate(boxes, 1):
            name = f"{i:03d}.png"
            cv2.imwrite(os.path.join(out_dir, split, "images", name), image[y0:y0 + th, x0:x0 + tw])
            images.append({"id": i, "file_name": name, "height": th, "width": tw, "x0": x0,
                           "y0": y0})
            anns += _annotations(labels[y0:y0 + th, x0:x0 + tw], i, len(anns) + 1)
        data = {"info": {**info, "split": split}, "images": images, "annotations": anns,
                "categories": [{"id": 1, "name": THING_CLASSES[0], "supercategory": "cell"}]}
        out[split] = os.path.join(out_dir, split, f"instances_{split}.json")
        with open(out[split], "w") as f:
            json.dump(data, f)
    return out


def split_paths(split: str, root: Optional[str] = None) -> Tuple[str, str]:
    """(json_file, image_root) of ``split`` ("train" or "val") under ``root``."""
    d = os.path.join(root or dataset_root(), "generated", split)
    return os.path.join(d, f"instances_{split}.json"), os.path.join(d, "images")


def ensure_generated(split: str, root: Optional[str] = None) -> Tuple[str, str]:
    """Fetches the source and generates both splits under ``root`` unless a complete copy of
    this generator version is there; returns (json_file, image_root) of ``split``."""
    root = root or dataset_root()
    final = os.path.join(root, "generated")
    marker = os.path.join(final, "COMPLETE")
    if _read(marker) != str(GENERATOR_VERSION):
        os.makedirs(root, exist_ok=True)
        with _FileLock(os.path.join(root, ".generate.lock")):
            if _read(marker) != str(GENERATOR_VERSION):
                source = fetch_source(root)
                logger.info("Generating nuclei_train / nuclei_val in %s", final)
                tmp = tempfile.mkdtemp(prefix=".generated.tmp-", dir=root)
                build(source, tmp)
                with open(os.path.join(tmp, "COMPLETE"), "w") as f:
                    f.write(str(GENERATOR_VERSION))
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    return split_paths(split, root)


def _set_metadata(name: str) -> Tuple[str, str]:
    """Points the metadata of ``name`` at the files under the CURRENT dataset root."""
    from detectron2.data import MetadataCatalog

    json_file, image_root = split_paths(NUCLEI_DATASETS[name])
    if MetadataCatalog.get(name).get("json_file", json_file) != json_file:
        MetadataCatalog.remove(name)  # $DETECTRON2_DATASETS changed
    MetadataCatalog.get(name).set(thing_classes=list(THING_CLASSES), json_file=json_file,
                                  image_root=image_root, evaluator_type="coco",
                                  thing_dataset_id_to_contiguous_id={1: 0})
    return json_file, image_root


def ensure_registered(name: str) -> Tuple[str, str]:
    """Generates the data of dataset ``name`` if needed and refreshes its metadata paths."""
    ensure_generated(NUCLEI_DATASETS[name])
    return _set_metadata(name)


def register_nuclei_datasets() -> None:
    """Registers ``nuclei_train`` and ``nuclei_val`` (idempotent); generated on first load."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import load_coco_json

    for name in NUCLEI_DATASETS:
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(
                name, lambda name=name: load_coco_json(*ensure_registered(name), name))
        _set_metadata(name)


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


if __name__ == "__main__":
    # python -m d2infra.data.nuclei: fetch and generate (e.g. from scripts/setup.sh).
    logging.basicConfig(level=logging.INFO)
    print(ensure_generated("train")[0], ensure_generated("val")[0])
