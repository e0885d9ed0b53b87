"""The embedded "shapes" dataset: a deterministic synthetic instance-segmentation dataset.

Each image is about 256x256 pixels and shows up to eight shapes of six classes (square, circle,
triangle, ellipse, star, ring) on a textured, noisy background with clutter (lines and soft blobs
that are not objects). Object sizes span COCO's three area buckets (small < 32^2, medium, large >
96^2 pixels). Shapes placed later occlude earlier ones; every annotation describes the VISIBLE part
of its instance (mask, box and area). About 2% of the images hold no object at all.

Determinism: image ``i`` of split ``s`` is drawn from a random generator seeded by ``(s, i)`` only,
so every image (and the json) is byte-identical across runs and independent of the other images.

Masks are written as COCO polygons that decode (with pycocotools) to exactly the visible mask:
each polygon runs along pixel borders (see :func:`mask_to_polygons`) and a mask with holes (a ring,
or a shape lying on top of another) becomes one "keyhole" polygon per connected component, each hole
joined to its outer contour by a zero-width bridge. pycocotools rasterises a polygon with the
even-odd rule and the two directions of a bridge cancel, so the holes stay empty; holes cannot be
separate polygons, because the polygons of one instance are unioned.

The files are generated on first use into ``$DETECTRON2_DATASETS/shapes/<split>/`` (default
``./datasets/shapes``) by :func:`ensure_split`: into a temporary directory that is renamed into
place when complete, so concurrent processes never see (or leave) a half-written split.
"""
import json
import logging
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_util

logger = logging.getLogger(__name__)

__all__ = [
    "THING_CLASSES",
    "SPLITS",
    "IMAGE_SIZE",
    "VisibleInstance",
    "render_image",
    "mask_to_polygons",
    "annotate_mask",
    "build_split",
    "dataset_root",
    "split_paths",
    "is_split_complete",
    "ensure_split",
]

# Bumped whenever the drawing changes: a cached split of another version is regenerated.
GENERATOR_VERSION = 2

THING_CLASSES: Tuple[str, ...] = ("square", "circle", "triangle", "ellipse", "star", "ring")

# split -> number of images.
SPLITS: Dict[str, int] = {"train": 2000, "val": 300, "mini_train": 32, "mini_val": 16}

IMAGE_SIZE = 256  # height and width of every image

# Every EMPTY_PERIOD-th image (index % EMPTY_PERIOD == EMPTY_OFFSET) shows no object: 2%.
EMPTY_PERIOD = 50
EMPTY_OFFSET = 5
MAX_OBJECTS = 8
# sqrt(area) of a whole shape is drawn log-uniformly in [MIN_SIDE[c], MAX_SIDE]: small (< 32),
# medium and large (> 96) instances all occur.
MAX_SIDE = 150.0
MIN_SIDE = {"square": 10.0, "circle": 10.0, "triangle": 12.0, "ellipse": 12.0, "star": 16.0,
            "ring": 20.0}
# An instance whose visible part is below MIN_VISIBLE_AREA pixels or below MIN_VISIBLE_FRACTION
# of the whole shape ("mostly hidden" by later shapes or by the image border) is never kept: the
# placement that would cause it is rejected, so no unannotated object is ever drawn.
MIN_VISIBLE_AREA = 40
MIN_VISIBLE_FRACTION = 0.45
PLACEMENT_TRIES = 30
# Minimum L1 distance (sum over RGB, 0..765) between a shape's colour and what it covers.
MIN_CONTRAST = 120.0

_SUBPIXEL_SHIFT = 4  # cv2.fillPoly fixed-point bits: vertices at 1/16 pixel
_SEED_SALT = 0x5A4E5


@dataclass
class VisibleInstance:
    """One object of a rendered image: its class and its visible mask (H x W bool)."""

    category: int  # 0-based index into THING_CLASSES
    mask: np.ndarray


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------
def _rng_for(split: str, index: int) -> np.random.Generator:
    """The random generator of image ``index`` of ``split``: depends on (split, index) only."""
    return np.random.default_rng([_SEED_SALT, zlib.crc32(split.encode("utf-8")), int(index)])


def _regular_polygon(n: int, radius: float, phase: float) -> np.ndarray:
    t = phase + 2.0 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _poly_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _shape_outline(
    name: str, side: float, rng: np.random.Generator
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Vertices (N x 2, centred at 0) of a shape whose area is about ``side**2``.

    Returns the outer contour and, for a ring, the inner contour (the hole).
    """
    area = side * side
    theta = rng.uniform(0.0, 2.0 * np.pi)
    if name == "square":
        return _regular_polygon(4, side / np.sqrt(2.0), theta), None
    if name == "circle":
        return _regular_polygon(72, np.sqrt(area / np.pi), 0.0), None
    if name == "triangle":
        # Isosceles with a random apex angle (aspect), rotated.
        apex = rng.uniform(np.radians(40), np.radians(100))
        base = np.array([[0.0, -1.0], [-np.tan(apex / 2), 1.0], [np.tan(apex / 2), 1.0]])
        base -= base.mean(axis=0)
        base *= np.sqrt(area / _poly_area(base))
        c, s = np.cos(theta), np.sin(theta)
        return base @ np.array([[c, s], [-s, c]]), None
    if name == "ellipse":
        aspect = rng.uniform(0.35, 0.7)  # minor / major axis
        a = np.sqrt(area / (np.pi * aspect))
        t = 2.0 * np.pi * np.arange(72) / 72
        pts = np.stack([a * np.cos(t), a * aspect * np.sin(t)], axis=1)
        c, s = np.cos(theta), np.sin(theta)
        return pts @ np.array([[c, s], [-s, c]]), None
    if name == "star":
        points = int(rng.integers(5, 7))
        inner = rng.uniform(0.4, 0.55)
        r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
        t = theta + np.pi * np.arange(2 * points) / points
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
        return pts * np.sqrt(area / _poly_area(pts)), None
    if name == "ring":
        inner = rng.uniform(0.45, 0.65)  # hole radius / outer radius
        outer_r = np.sqrt(area / (np.pi * (1.0 - inner * inner)))
        return (_regular_polygon(72, outer_r, 0.0), _regular_polygon(72, outer_r * inner, 0.0))
    raise ValueError(f"Unknown shape {name!r}")


def _fill(canvas: np.ndarray, pts: np.ndarray, offset: np.ndarray, value: int) -> None:
    """Fills polygon ``pts + offset`` into ``canvas`` with sub-pixel vertex precision."""
    # Pixel (i, j) covers [j, j+1] x [i, i+1]; cv2 puts pixel centres at integer coordinates.
    fixed = np.round((pts + offset - 0.5) * (1 << _SUBPIXEL_SHIFT)).astype(np.int32)
    cv2.fillPoly(canvas, [fixed], value, lineType=cv2.LINE_8, shift=_SUBPIXEL_SHIFT)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A gradient between two random colours, low-frequency texture and clutter (float32 RGB)."""
    # Gradient and low-frequency texture on a coarse grid, smoothly upsampled (cubic
    # interpolation keeps a linear gradient linear).
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    phi = rng.uniform(0, 2 * np.pi)
    cells = int(rng.integers(4, 12))
    u = (np.arange(cells) + 0.5) / cells
    t = np.cos(phi) * u[None, :] + np.sin(phi) * u[:, None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    coarse = c0 + t[..., None] * (c1 - c0) + rng.normal(0.0, rng.uniform(8, 25), (cells, cells, 3))
    img = cv2.resize(coarse.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    # Clutter lines: not objects.
    for _ in range(int(rng.integers(0, 7))):
        p0 = tuple(int(v) for v in rng.integers(-20, size + 20, 2))
        p1 = tuple(int(v) for v in rng.integers(-20, size + 20, 2))
        color = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.line(img, p0, p1, color, int(rng.integers(1, 4)), lineType=cv2.LINE_AA)
    # Clutter blobs: soft-edged, semi-transparent irregular smudges (drawn in a local window).
    for _ in range(int(rng.integers(0, 5))):
        n = 12
        radius = rng.uniform(6, 30) * rng.uniform(0.6, 1.0, n)
        t = 2 * np.pi * np.arange(n) / n
        pts = np.stack([radius * np.cos(t), radius * np.sin(t)], 1)
        center = rng.uniform(0, size, 2)
        sigma = rng.uniform(3, 7)
        opacity = rng.uniform(0.3, 0.6)
        color = rng.uniform(0, 255, 3).astype(np.float32)
        margin = int(np.ceil(radius.max() + 3 * sigma)) + 1
        x0, y0 = (np.floor(center).astype(int) - margin).tolist()
        x1, y1 = x0 + 2 * margin, y0 + 2 * margin
        blob = np.zeros((2 * margin, 2 * margin), np.float32)
        _fill(blob, pts, center - np.array([x0, y0]), 1)
        blob = cv2.GaussianBlur(blob, (0, 0), sigma) * np.float32(opacity)
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        b = blob[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0, None]
        sub = img[cy0:cy1, cx0:cx1]
        sub += b * (color - sub)
    return img


_NOISE_TILE: Optional[np.ndarray] = None


def _noise(rng: np.random.Generator, shape: Tuple[int, int]) -> np.ndarray:
    """Unit Gaussian pixel noise (float32, shape + (3,)): a random window of a fixed noise tile.

    Much cheaper than drawing fresh noise per image; the tile comes from a constant seed, so the
    result still depends on ``rng`` only.
    """
    global _NOISE_TILE
    h, w = shape
    if _NOISE_TILE is None or _NOISE_TILE.shape[0] < 2 * h or _NOISE_TILE.shape[1] < 2 * w:
        tile_rng = np.random.default_rng([_SEED_SALT, 0])
        _NOISE_TILE = tile_rng.standard_normal((2 * h, 2 * w, 3), dtype=np.float32)
    y, x = (int(v) for v in rng.integers(0, [h, w]))
    window = _NOISE_TILE[y : y + h, x : x + w]
    return window[::-1] if rng.integers(2) else window


def _pick_color(
    rng: np.random.Generator, covered: Sequence[np.ndarray]
) -> np.ndarray:
    """A random colour far (L1 >= MIN_CONTRAST) from each mean colour it will cover."""
    best, best_d = None, -1.0
    for _ in range(20):
        color = rng.uniform(0, 255, 3)
        d = min((float(np.abs(color - c).sum()) for c in covered), default=765.0)
        if d >= MIN_CONTRAST:
            return color
        if d > best_d:
            best, best_d = color, d
    return best


def render_image(split: str, index: int) -> Tuple[np.ndarray, List[VisibleInstance]]:
    """Draws image ``index`` of ``split``.

    Returns:
        image: (H, W, 3) uint8 RGB.
        instances: the objects, in drawing order, each with its class and VISIBLE mask.
    """
    rng = _rng_for(split, index)
    size = IMAGE_SIZE
    img = _background(rng, size)
    # id_map[y, x] = index of the shape visible at (y, x), or -1 for background.
    id_map = np.full((size, size), -1, np.int32)
    full_areas: List[int] = []
    visible_areas: List[int] = []
    categories: List[int] = []

    n_objects = 0 if index % EMPTY_PERIOD == EMPTY_OFFSET else int(rng.integers(1, MAX_OBJECTS + 1))
    target = n_objects
    tries = 0
    while len(categories) < target and tries < target * PLACEMENT_TRIES:
        tries += 1
        cat = int(rng.integers(len(THING_CLASSES)))
        name = THING_CLASSES[cat]
        side = float(np.exp(rng.uniform(np.log(MIN_SIDE[name]), np.log(MAX_SIDE))))
        outer, hole = _shape_outline(name, side, rng)
        center = rng.uniform(-0.1 * size, 1.1 * size, 2)
        # Rasterise on a local canvas holding the whole shape, then clip to the image.
        x0, y0 = np.floor(outer.min(axis=0) + center).astype(int) - 1
        x1, y1 = np.ceil(outer.max(axis=0) + center).astype(int) + 1
        local = np.zeros((y1 - y0, x1 - x0), np.uint8)
        off = center - np.array([x0, y0], dtype=np.float64)
        _fill(local, outer, off, 1)
        if hole is not None:
            _fill(local, hole, off, 0)
        full = int(local.sum())
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
        if full == 0 or cx1 <= cx0 or cy1 <= cy0:
            continue
        local_in = local[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0].astype(bool)
        own = int(local_in.sum())
        if own < max(MIN_VISIBLE_AREA, MIN_VISIBLE_FRACTION * full):
            continue  # mostly outside the image
        below = id_map[cy0:cy1, cx0:cx1][local_in]
        covered_ids, covered_counts = np.unique(below, return_counts=True)
        ok = True
        for j, lost in zip(covered_ids.tolist(), covered_counts.tolist()):
            if j < 0:
                continue
            left = visible_areas[j] - lost
            if left < max(MIN_VISIBLE_AREA, MIN_VISIBLE_FRACTION * full_areas[j]):
                ok = False  # would leave shape j too small or mostly hidden
                break
        if not ok:
            continue
        # Colour contrasting with each region it covers (background and each shape below).
        region = img[cy0:cy1, cx0:cx1][local_in]
        covered = [region[below == j].mean(axis=0) for j in covered_ids.tolist()
                   if (below == j).sum() * 20 >= below.size]
        color = _pick_color(rng, covered or [region.mean(axis=0)])
        # Mild shading across the shape (a linear ramp of up to +-25%) so it is not flat.
        ramp_dir = rng.uniform(0, 2 * np.pi)
        strength = rng.uniform(0.0, 0.25) / max(side, 1.0)
        ys, xs = np.nonzero(local_in)
        ramp = 1.0 + strength * (np.cos(ramp_dir) * (xs + cx0 - center[0])
                                 + np.sin(ramp_dir) * (ys + cy0 - center[1]))
        # ramp > 0: the shapes extend less than 2 * side from their centre.
        paint = np.minimum(color[None, :] * ramp[:, None], 255.0).astype(np.float32)
        img[ys + cy0, xs + cx0] = paint
        for j, lost in zip(covered_ids.tolist(), covered_counts.tolist()):
            if j >= 0:
                visible_areas[j] -= lost
        id_map[cy0:cy1, cx0:cx1][local_in] = len(categories)
        categories.append(cat)
        full_areas.append(full)
        visible_areas.append(own)

    # Sensor-like blur and noise over the whole picture.
    img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.3, 0.8))
    img += _noise(rng, img.shape[:2]) * np.float32(rng.uniform(2, 7))
    image = cv2.convertScaleAbs(cv2.max(img, 0.0))  # rounds and saturates to 0..255
    instances = [VisibleInstance(cat, id_map == k) for k, cat in enumerate(categories)]
    return image, instances


# ---------------------------------------------------------------------------------------------
# Masks to COCO polygons
# ---------------------------------------------------------------------------------------------
def _signed_area(p: np.ndarray) -> float:
    return float(cv2.contourArea(p.astype(np.float32), oriented=True))


def mask_to_polygons(mask: np.ndarray) -> List[List[float]]:
    """COCO polygons (one flat [x0, y0, x1, y1, ...] list per connected component) of a mask.

    The contour is traced on the mask upsampled 2x (nearest), whose border sub-pixel centres lie a
    quarter pixel inside the border of each original pixel: every pixel centre of the mask is
    strictly inside the polygon and every other pixel centre strictly outside, so pycocotools
    decodes it back to exactly ``mask``. Holes are joined to their outer contour by a zero-width
    bridge (out to the hole and back along the same segment), traversed in the opposite direction
    to the outer contour, so both the even-odd rasterisation of pycocotools and the shoelace area
    count them out.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if not mask.any():
        return []
    up = cv2.resize(mask, (mask.shape[1] * 2, mask.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    hierarchy = hierarchy.reshape(-1, 4)  # next, previous, first child, parent
    polygons: List[List[float]] = []
    for i, contour in enumerate(contours):
        if hierarchy[i, 3] != -1:
            continue  # a hole: handled with its parent
        outer = (contour.reshape(-1, 2).astype(np.float64) + 0.5) / 2.0
        orientation = np.sign(_signed_area(outer))
        pieces = [outer]
        child = hierarchy[i, 2]
        while child != -1:
            hole = (contours[child].reshape(-1, 2).astype(np.float64) + 0.5) / 2.0
            if np.sign(_signed_area(hole)) == orientation:
                hole = hole[::-1]
            pieces.append(hole)
            child = hierarchy[child, 0]
        poly = pieces[0]
        for hole in pieces[1:]:
            # Bridge between the nearest vertices a (outer) and b (hole):
            # poly[..a] -> hole[b..] -> hole[..b] -> poly[a..]
            d = ((poly[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
            a, b = np.unravel_index(int(np.argmin(d)), d.shape)
            hole_loop = np.concatenate([hole[b:], hole[: b + 1]])
            poly = np.concatenate([poly[: a + 1], hole_loop, poly[a:]])
        if len(poly) >= 3:
            # Multiples of 1/4: exact in binary floating point and in json.
            polygons.append(poly.reshape(-1).tolist())
    return polygons


def annotate_mask(mask: np.ndarray) -> Optional[Dict]:
    """COCO ``segmentation``, ``bbox`` (XYWH) and ``area`` of a visible mask.

    Box and area are those of the polygon as pycocotools decodes it, so they agree with what any
    COCO tool computes from the segmentation. Returns None for an empty mask.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    x0, y0, bw, bh = cv2.boundingRect(mask)  # tight box of the nonzero pixels
    if bw == 0 or bh == 0:
        return None
    crop = mask[y0 : y0 + bh, x0 : x0 + bw]
    polygons = [
        (np.asarray(p).reshape(-1, 2) + [x0, y0]).reshape(-1).tolist()
        for p in mask_to_polygons(crop)
    ]
    if not polygons:
        return None
    h, w = mask.shape
    rle = mask_util.merge(mask_util.frPyObjects(polygons, h, w))
    area = int(mask_util.area(rle))
    if area == 0:
        return None
    bbox = [float(v) for v in mask_util.toBbox(rle)]
    return {"segmentation": polygons, "bbox": bbox, "area": area}


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def _categories() -> List[Dict]:
    return [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(THING_CLASSES)]


def build_split(split: str, num_images: int, out_dir: str) -> str:
    """Writes ``num_images`` images of ``split`` and their COCO json into ``out_dir``.

    Not atomic by itself (see :func:`ensure_split`). Returns the json path.
    """
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        image, instances = render_image(split, index)
        file_name = f"{index:06d}.png"
        ok = cv2.imwrite(os.path.join(image_dir, file_name), image[:, :, ::-1])
        if not ok:
            raise OSError(f"Could not write {os.path.join(image_dir, file_name)}")
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": image.shape[0],
                       "width": image.shape[1]})
        for inst in instances:
            ann = annotate_mask(inst.mask)
            if ann is None:
                continue
            ann.update(id=len(annotations) + 1, image_id=image_id,
                       category_id=inst.category + 1, iscrowd=0)
            annotations.append(ann)
    coco = {
        "info": {"description": f"shapes {split}: synthetic instance segmentation",
                 "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": _categories(),
    }
    json_path = os.path.join(out_dir, _json_name(split))
    text = json.dumps(coco, separators=(",", ":"))  # the C encoder: much faster than json.dump
    with open(json_path, "w") as f:
        f.write(text)
    return json_path


def _json_name(split: str) -> str:
    return f"instances_{split}.json"


_MARKER = "COMPLETE"


def dataset_root() -> str:
    """``$DETECTRON2_DATASETS/shapes`` (default ``datasets/shapes``), read at call time."""
    return os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "shapes")


def split_paths(split: str, root: Optional[str] = None) -> Tuple[str, str]:
    """(json_file, image_root) of ``split`` under ``root`` (default :func:`dataset_root`)."""
    d = os.path.join(root if root is not None else dataset_root(), split)
    return os.path.join(d, _json_name(split)), os.path.join(d, "images")


def _marker_content(split: str, num_images: int) -> str:
    return json.dumps({"version": GENERATOR_VERSION, "split": split, "num_images": num_images})


def is_split_complete(split: str, num_images: int, root: Optional[str] = None) -> bool:
    """Whether ``root/split`` holds a complete split of this generator version."""
    d = os.path.join(root if root is not None else dataset_root(), split)
    try:
        with open(os.path.join(d, _MARKER)) as f:
            return f.read() == _marker_content(split, num_images)
    except OSError:
        return False


def ensure_split(split: str, num_images: Optional[int] = None, root: Optional[str] = None
                 ) -> Tuple[str, str]:
    """Generates ``split`` under ``root`` unless a complete copy is there; returns its paths.

    The split is written into a temporary directory next to its final place and renamed into
    place once complete (a marker file is its last file), so a reader never sees a partial split
    and two processes racing both end with the same complete split. An existing directory
    without the marker (an interrupted copy, another generator version) is replaced. A lock file,
    where the platform has one, keeps racing processes from generating the same split twice.
    """
    if num_images is None:
        num_images = SPLITS[split]
    root = root if root is not None else dataset_root()
    paths = split_paths(split, root)
    if is_split_complete(split, num_images, root):
        return paths
    os.makedirs(root, exist_ok=True)
    with _FileLock(os.path.join(root, f".{split}.lock")):
        if is_split_complete(split, num_images, root):  # done by another process meanwhile
            return paths
        logger.info("Generating the shapes dataset split %r (%d images) in %s", split, num_images,
                    root)
        tmp = tempfile.mkdtemp(prefix=f".{split}.tmp-", dir=root)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
        try:
            build_split(split, num_images, tmp)
            with open(os.path.join(tmp, _MARKER), "w") as f:
                f.write(_marker_content(split, num_images))
            final = os.path.join(root, split)
            for _ in range(5):
                if os.path.lexists(final):
                    if is_split_complete(split, num_images, root):
                        break  # another process won the race
                    stale = tempfile.mkdtemp(prefix=f".{split}.stale-", dir=root)
                    try:
                        os.replace(final, os.path.join(stale, split))
                    except OSError:
                        pass
                    shutil.rmtree(stale, ignore_errors=True)
                try:
                    os.rename(tmp, final)
                    break
                except OSError:
                    continue  # appeared in between: look again
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not is_split_complete(split, num_images, root):
        raise RuntimeError(f"Could not generate the shapes split {split!r} in {root}")
    return paths


class _FileLock:
    """An exclusive advisory lock on a file (POSIX ``flock``); a no-op where that is missing."""

    def __init__(self, path: str):
        self.path = path
        self._fd: Optional[int] = None

    def __enter__(self) -> "_FileLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover (Windows): the atomic rename alone keeps it safe
            return self
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
