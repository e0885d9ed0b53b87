"""Dataset registration in Detectron2's DatasetCatalog / MetadataCatalog.

* The embedded shapes dataset (``shapes_train``, ``shapes_val``, ``shapes_mini_train``,
  ``shapes_mini_val``): registered on import of :mod:`d2infra.data`; loading a split generates
  it first if needed (see :mod:`d2infra.data.shapes`), then reads it with Detectron2's
  ``load_coco_json``.
* Datasets in COCO format named on the command line (``DATASETS.COCO_FORMAT.NAMES / JSON_FILES /
  IMAGE_ROOTS``): :func:`register_coco_format_datasets`.
* :func:`check_dataset_names`: every name in ``DATASETS.TRAIN`` / ``DATASETS.TEST`` is known.
"""
import json
import os
from typing import Dict, List, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances

from . import nuclei, shapes

__all__ = [
    "SHAPES_DATASETS",
    "register_shapes_datasets",
    "ensure_generated",
    "register_coco_format_datasets",
    "check_dataset_names",
    "UnknownDatasetError",
]

# Registered name -> split of the generator (its number of images is shapes.SPLITS[split]).
SHAPES_DATASETS: Dict[str, str] = {
    "shapes_train": "train",
    "shapes_val": "val",
    "shapes_mini_train": "mini_train",
    "shapes_mini_val": "mini_val",
}

# Custom COCO-format names registered by register_coco_format_datasets in this process.
_CUSTOM_NAMES: List[str] = []

# Above this size a json is only scanned for its top-level keys, not parsed, at registration
# (a full parse of e.g. COCO train2017 takes tens of seconds); load_coco_json parses it anyway.
_FULL_CHECK_MAX_BYTES = 64 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# The embedded shapes dataset
# ---------------------------------------------------------------------------------------------
def _shapes_metadata(name: str) -> None:
    """Sets the metadata of shapes dataset ``name`` to the paths under the CURRENT dataset root.

    ``$DETECTRON2_DATASETS`` is read at call time; if it changed since the metadata was set, the
    entry is replaced (a Metadata attribute cannot be overwritten with another value).
    """
    json_file, image_root = shapes.split_paths(SHAPES_DATASETS[name])
    if MetadataCatalog.get(name).get("json_file", json_file) != json_file:
        MetadataCatalog.remove(name)
    MetadataCatalog.get(name).set(
        thing_classes=list(shapes.THING_CLASSES),
        # The json's category ids are 1..6; load_coco_json would set the same mapping.
        thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(shapes.THING_CLASSES))},
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
    )


def _load_shapes(name: str) -> List[dict]:
    json_file, image_root = ensure_generated(name)
    return load_coco_json(json_file, image_root, name)


def register_shapes_datasets() -> None:
    """Registers the four shapes datasets (idempotent)."""
    for name in SHAPES_DATASETS:
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, lambda name=name: _load_shapes(name))
        _shapes_metadata(name)


def ensure_generated(dataset_name: str) -> Tuple[str, str]:
    """Generates shapes (or nuclei) dataset ``dataset_name`` if not on disk yet; no-op for others.

    Call it before building a COCOEvaluator, which reads ``json_file`` from the metadata. Also
    refreshes the metadata paths if ``$DETECTRON2_DATASETS`` changed.

    Returns:
        (json_file, image_root) of a shapes dataset; for any other dataset its metadata's
        ``json_file`` and ``image_root`` (None where unset), untouched.
    """
    if dataset_name in nuclei.NUCLEI_DATASETS:
        return nuclei.ensure_registered(dataset_name)
    if dataset_name not in SHAPES_DATASETS:
        meta = MetadataCatalog.get(dataset_name)
        return meta.get("json_file"), meta.get("image_root")
    paths = shapes.ensure_split(SHAPES_DATASETS[dataset_name])
    _shapes_metadata(dataset_name)
    return paths


# ---------------------------------------------------------------------------------------------
# COCO-format datasets from the config
# ---------------------------------------------------------------------------------------------
def _check_coco_json(key: str, path: str) -> List[dict]:
    """Raises ValueError unless ``path`` is a COCO instances json; returns its categories.

    Small files are parsed; larger ones only scanned for the three top-level keys (categories
    then come back empty).
    """
    required = ("images", "annotations", "categories")
    if os.path.getsize(path) > _FULL_CHECK_MAX_BYTES:
        found = {k: False for k in required}
        with open(path, "rb") as f:
            chunk = f.read(1 << 22)
            head = chunk.lstrip()[:1]
            tail = b""
            while chunk:
                text = tail + chunk
                for k in required:
                    found[k] = found[k] or (f'"{k}"'.encode() in text)
                tail = text[-32:]
                chunk = f.read(1 << 22)
        if not head.startswith(b"{") or not all(found.values()):
            missing = [k for k, v in found.items() if not v]
            raise ValueError(
                f"{key} = {path!r} is not a COCO json"
                + (f": no key(s) {missing}" if missing else ": it is not a json object")
            )
        return []
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{key} = {path!r} is not valid json: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{key} = {path!r} is not a COCO json: the top level is not an object")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(
            f"{key} = {path!r} is not a COCO json: missing key(s) {missing} "
            f"(a COCO instances json has 'images', 'annotations' and 'categories')"
        )
    wrong = [k for k in required if not isinstance(data[k], list)]
    if wrong:
        raise ValueError(f"{key} = {path!r} is not a COCO json: {wrong} must be lists")
    return data["categories"]


def register_coco_format_datasets(cfg: CfgNode) -> List[str]:
    """Registers each dataset of ``cfg.DATASETS.COCO_FORMAT`` with ``register_coco_instances``.

    Idempotent: a name registered before with the same json file and image root is left as is;
    the same name with other files (or a name Detectron2 or the shapes dataset already uses) is
    an error. Checks, with an error naming the config key and the path: the three lists have
    equal lengths, the json exists and is a COCO json, the image root is a directory.

    Returns:
        the names, in config order.
    """
    node = cfg.DATASETS.COCO_FORMAT
    names, jsons, roots = list(node.NAMES), list(node.JSON_FILES), list(node.IMAGE_ROOTS)
    if not (len(names) == len(jsons) == len(roots)):
        raise ValueError(
            "DATASETS.COCO_FORMAT.NAMES, JSON_FILES and IMAGE_ROOTS must have the same length, "
            f"got {len(names)}, {len(jsons)} and {len(roots)}: NAMES={names}, "
            f"JSON_FILES={jsons}, IMAGE_ROOTS={roots}"
        )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"DATASETS.COCO_FORMAT.NAMES lists {dup} more than once: {names}")
    for i, (name, json_file, image_root) in enumerate(zip(names, jsons, roots)):
        json_key = f"DATASETS.COCO_FORMAT.JSON_FILES[{i}] (dataset {name!r})"
        root_key = f"DATASETS.COCO_FORMAT.IMAGE_ROOTS[{i}] (dataset {name!r})"
        if not os.path.isfile(json_file):
            what = "is not a file" if os.path.exists(json_file) else "does not exist"
            raise FileNotFoundError(f"{json_key} = {json_file!r} {what}")
        if not os.path.exists(image_root):
            raise FileNotFoundError(f"{root_key} = {image_root!r} does not exist")
        if not os.path.isdir(image_root):
            raise NotADirectoryError(f"{root_key} = {image_root!r} is not a directory")
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            same = (
                meta.get("json_file") is not None
                and os.path.abspath(meta.get("json_file")) == os.path.abspath(json_file)
                and meta.get("image_root") is not None
                and os.path.abspath(meta.get("image_root")) == os.path.abspath(image_root)
            )
            if not same:
                raise ValueError(
                    f"DATASETS.COCO_FORMAT.NAMES[{i}] = {name!r} is already registered with "
                    f"json_file={meta.get('json_file')!r}, image_root={meta.get('image_root')!r}; "
                    f"cannot register it again with json_file={json_file!r}, "
                    f"image_root={image_root!r}. Pick another name."
                )
            if name not in _CUSTOM_NAMES:
                _CUSTOM_NAMES.append(name)
            continue
        categories = _check_coco_json(json_key, json_file)
        metadata = {}
        if categories:
            # What load_coco_json will set, known early (e.g. to check MODEL.*.NUM_CLASSES).
            metadata["thing_classes"] = [
                c["name"] for c in sorted(categories, key=lambda c: c["id"])
            ]
        register_coco_instances(name, metadata, json_file, image_root)
        _CUSTOM_NAMES.append(name)
    return names


class UnknownDatasetError(KeyError):
    """A dataset name in the config that is not registered."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0])


def check_dataset_names(cfg: CfgNode) -> None:
    """Raises UnknownDatasetError (a KeyError) unless DATASETS.TRAIN / TEST are all registered.

    The message lists the unknown names and the shapes and COCO-format names one can use.
    """
    registered = set(DatasetCatalog.list())
    unknown = []
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS.get(key, ()):
            if name not in registered:
                unknown.append(f"DATASETS.{key}: {name!r}")
    if unknown:
        custom = [n for n in _CUSTOM_NAMES if n in registered]
        cfg_custom = list(cfg.DATASETS.get("COCO_FORMAT", {}).get("NAMES", []))
        raise UnknownDatasetError(
            "Unknown dataset name(s): " + ", ".join(unknown) + ". "
            f"Embedded: {list(SHAPES_DATASETS) + list(nuclei.NUCLEI_DATASETS)}. "
            f"COCO-format datasets registered: {custom or 'none'}"
            + (f" (DATASETS.COCO_FORMAT.NAMES = {cfg_custom})" if cfg_custom != custom else "")
            + ". Register your own with DATASETS.COCO_FORMAT.NAMES / JSON_FILES / IMAGE_ROOTS."
        )
