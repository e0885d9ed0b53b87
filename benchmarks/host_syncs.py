#!/usr/bin/env python
"""Host syncs per training step and per inference image of every method and its Detectron2
baseline, at 6 and 80 classes and 5 and 50 objects per image.

    python benchmarks/host_syncs.py [--out docs/host_syncs.md] [CONFIG ...]

A host sync is a point where the host must wait for the device: reading a tensor's value
(``item``, ``tolist``, ``numpy``, ``bool()``, ``int()``, ``float()``, ``index()``, printing),
moving it to the CPU (``.cpu()``, ``.to("cpu")``, a copy into a host tensor), or an op whose output
size depends on the values (``nonzero``, ``torch.where(mask)``, boolean-mask indexing, ``unique``,
``masked_select``, ``bincount``, ``repeat_interleave`` of tensor counts, torchvision's ``nms``)
or that returns a Python bool (``equal``, ``allclose``). They are counted on the CPU with a
``torch.overrides.TorchFunctionMode`` that tracks which tensors would live on the host on a GPU:

* the inputs (images and ground truth, as a data loader gives them) live on the host;
* ``.to(device)`` of a host tensor uploads it, except on a source line that names the CPU;
  ``.cpu()``, and ``.to(...)`` of a device tensor on a source line that names the CPU, download it
  (one sync); other ``.to(...)`` keep it where it is;
* a tensor made without tensor inputs lives on the host unless a ``device`` is given; any other
  op's output lives on the device if any of its tensor inputs does;
* only reads of device tensors count (Detectron2's polygon rasterisation reads its boxes on the
  host, after one download). ``torch.from_numpy`` is invisible to the mode: such tensors count as
  device tensors, which errs towards counting more.

The models are the embedded configs (``configs/*/*_smallR_FPN_shapes.yaml``) with untrained
weights and the number of classes set in every head; the inputs are synthesized: 2 images of
256 x 256 per training step, each with N objects of random classes, boxes and polygon masks (not
boxes: triangles). A step is the forward and backward pass (the counter starts after one untimed
step); inference is one image at a time, after one untimed image. The counts are exact, not
timed, and do not depend on the machine; they can depend on the data through the number of
detections (untrained models here). They, and the file:line places of ``--where``, depend on the
Detectron2 installed: the header names it (:func:`detectron2_description`).
"""
import argparse
import datetime
import hashlib
import importlib.util
import json
import linecache
import os
import platform
import sys
from collections import Counter
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# (method config, its Detectron2 baseline config); a baseline's own row has itself as baseline.
PAIRS: List[Tuple[str, str]] = [
    ("configs/baselines/faster_rcnn_smallR_FPN_shapes.yaml",) * 2,
    ("configs/baselines/cascade_rcnn_smallR_FPN_shapes.yaml",) * 2,
    ("configs/baselines/mask_rcnn_smallR_FPN_shapes.yaml",) * 2,
    ("configs/baselines/cascade_mask_rcnn_smallR_FPN_shapes.yaml",) * 2,
    ("configs/baselines/retinanet_smallR_FPN_shapes.yaml",) * 2,
    ("configs/iou_aware/fcos_smallR_FPN_shapes.yaml",) * 2,
    ("configs/r3cnn/r3cnn_naive_smallR_FPN_shapes.yaml",
     "configs/baselines/mask_rcnn_smallR_FPN_shapes.yaml"),
    ("configs/r3cnn/r3cnn_L_smallR_FPN_shapes.yaml",
     "configs/baselines/mask_rcnn_smallR_FPN_shapes.yaml"),
    ("configs/r3cnn/r3cnn_offset_bin_iou_balanced_smallR_FPN_shapes.yaml",
     "configs/baselines/mask_rcnn_smallR_FPN_shapes.yaml"),
    ("configs/iou_aware/iou_aware_retinanet_smallR_FPN_shapes.yaml",
     "configs/baselines/retinanet_smallR_FPN_shapes.yaml"),
    ("configs/iou_aware/iou_aware_fcos_smallR_FPN_shapes.yaml",
     "configs/iou_aware/fcos_smallR_FPN_shapes.yaml"),
    ("configs/offset_bin/offset_bin_faster_rcnn_smallR_FPN_shapes.yaml",
     "configs/baselines/faster_rcnn_smallR_FPN_shapes.yaml"),
    ("configs/offset_bin/offset_bin_cascade_rcnn_smallR_FPN_shapes.yaml",
     "configs/baselines/cascade_rcnn_smallR_FPN_shapes.yaml"),
    ("configs/samplers/faster_rcnn_iou_balanced_smallR_FPN_shapes.yaml",
     "configs/baselines/faster_rcnn_smallR_FPN_shapes.yaml"),
    ("configs/samplers/faster_rcnn_ohem_smallR_FPN_shapes.yaml",
     "configs/baselines/faster_rcnn_smallR_FPN_shapes.yaml"),
    ("configs/samplers/faster_rcnn_ohem_mmdet_smallR_FPN_shapes.yaml",
     "configs/baselines/faster_rcnn_smallR_FPN_shapes.yaml"),
    ("configs/samplers/faster_rcnn_pisa_smallR_FPN_shapes.yaml",
     "configs/baselines/faster_rcnn_smallR_FPN_shapes.yaml"),
    ("configs/samplers/retinanet_ghmc_smallR_FPN_shapes.yaml",
     "configs/baselines/retinanet_smallR_FPN_shapes.yaml"),
    ("configs/samplers/retinanet_ghm_smallR_FPN_shapes.yaml",
     "configs/baselines/retinanet_smallR_FPN_shapes.yaml"),
]
CLASSES = (6, 80)
OBJECTS = (5, 50)
IMAGE_SIZE = 256
IMAGES_PER_STEP = 2
INFERENCE_IMAGES = 2

_HOST = "_host_syncs_on_host"  # attribute marking a tensor that lives on the host
_READS = {"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__",
          "__complex__", "__array__", "__format__", "__repr__", "__str__", "__contains__"}
_DATA_DEPENDENT = {"nonzero", "argwhere", "unique", "unique_consecutive", "masked_select",
                   "bincount", "equal", "allclose", "nms", "_unique2", "unique_dim"}
_TRANSFER = {"cpu", "to", "cuda"}
_TORCH_DIRS = tuple(os.path.dirname(m.__file__) + os.sep
                    for m in (torch, __import__("torchvision")))


def use_cuda_batched_nms_rule() -> None:
    """torchvision's ``batched_nms`` runs NMS class by class above 1000 boxes on the CPU, but in
    one kernel (class offsets) up to 25000 boxes on CUDA: apply CUDA's rule, as on a GPU."""
    from torchvision.ops import boxes as box_ops

    if getattr(box_ops, "_host_syncs_patched", False):
        return
    vanilla = box_ops._batched_nms_vanilla

    def by_cuda_rule(boxes, scores, idxs, iou_threshold):
        if boxes.numel() <= 100_000:
            return box_ops._batched_nms_coordinate_trick(boxes, scores, idxs, iou_threshold)
        return vanilla(boxes, scores, idxs, iou_threshold)

    box_ops._batched_nms_vanilla = by_cuda_rule
    box_ops._host_syncs_patched = True


def on_host(t) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, _HOST, False)


def mark_host(obj) -> None:
    """Mark every tensor in ``obj`` (nested lists, dicts, Instances, Boxes) as living on the host,
    as a data loader's output does."""
    from detectron2.structures import Boxes, Instances

    if isinstance(obj, torch.Tensor):
        setattr(obj, _HOST, True)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            mark_host(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            mark_host(x)
    elif isinstance(obj, Instances):
        mark_host(obj.get_fields())
    elif isinstance(obj, Boxes):
        mark_host(obj.tensor)


def _caller_names_cpu() -> bool:
    """Whether the Python line that called the op (two frames up) names the CPU."""
    frame = sys._getframe(3)
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    return "cpu" in line.lower()


def _has_device_target(args, kwargs) -> bool:
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(a, (torch.device, str)) for a in args[1:])


class HostSyncCounter(TorchFunctionMode):
    """Counts the host syncs a GPU run would make, by kind (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()
        self.where: Counter = Counter()  # (kind, "file:line" of the first caller outside torch)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        flat, _ = tree_flatten((args, kwargs))
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        subject = args[0] if args and isinstance(args[0], torch.Tensor) else None
        out_host = self._classify(func, name, args, kwargs, tensors, subject)
        out = func(*args, **kwargs)
        if name in _TRANSFER and out is subject:
            # A transfer to the tensor's own (CPU) device returns the tensor itself: give it a
            # new alias, so that marking where the result lives does not move the original.
            out = out.view_as(out)
            setattr(out, _HOST, out_host)
        elif out_host:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    setattr(t, _HOST, True)
        return out

    def _count(self, kind: str) -> None:
        self.counts[kind] += 1
        frame = sys._getframe(2)
        while frame is not None and (frame.f_code.co_filename.startswith(_TORCH_DIRS)
                                     or frame.f_code.co_filename == __file__):
            frame = frame.f_back
        if frame is not None:
            path = frame.f_code.co_filename
            for root in (REPO + os.sep, os.path.dirname(os.path.dirname(os.__file__)) + os.sep):
                path = path.replace(root, "")
            if "site-packages" + os.sep in path:
                path = path.split("site-packages" + os.sep, 1)[1]
            self.where[kind, f"{path}:{frame.f_lineno}"] += 1

    def _classify(self, func, name, args, kwargs, tensors, subject) -> bool:
        """Count a sync if ``func`` makes one; return whether its outputs live on the host."""
        if subject is not None and name in _TRANSFER:
            if name == "cpu":
                if not on_host(subject):
                    self._count("cpu")
                return True
            if name == "cuda":
                return False
            if not _has_device_target(args, kwargs):
                others = [t for t in tensors if t is not subject]
                if others:  # .to(other_tensor): where the other tensor is
                    return on_host(others[0])
                return on_host(subject)  # a dtype change only
            names_cpu = _caller_names_cpu()
            if on_host(subject):
                return names_cpu  # an upload, unless the line asks for the CPU
            if names_cpu:
                self._count(".to(cpu)")
                return True
            return False
        device_inputs = [t for t in tensors if not on_host(t)]
        if name in _READS:
            if subject is not None and not on_host(subject):
                self._count(name)
            return True
        if name in _DATA_DEPENDENT or (name == "where" and len(args) + len(kwargs) == 1) or (
                name == "repeat_interleave" and len(args) > 1
                and isinstance(args[1], torch.Tensor) and "output_size" not in kwargs):
            if device_inputs:
                self._count(name)
        elif name in ("__getitem__", "__setitem__") and device_inputs:
            index = args[1] if len(args) > 1 else None
            parts = index if isinstance(index, tuple) else (index,)
            boolean = any(isinstance(p, torch.Tensor) and p.dtype in (torch.bool, torch.uint8)
                          for p in parts)
            scalar_value = name == "__setitem__" and (
                not isinstance(args[2], torch.Tensor) or args[2].dim() == 0)
            if boolean and not scalar_value:  # x[mask] = scalar is a masked_fill, no sync
                self._count(f"{name}[bool]")
        elif name == "copy_" and on_host(subject) and len(tensors) > 1 and not on_host(tensors[1]):
            self._count("copy_ to host")
        if not tensors:  # a factory: on the host unless a device is given
            return kwargs.get("device") is None
        return not device_inputs


def synthesize_batch(num_images: int, num_objects: int, num_classes: int, seed: int
                     ) -> List[Dict]:
    """Detectron2's training input (``image`` uint8 CHW, ``instances`` with ``gt_boxes``,
    ``gt_classes``, ``gt_masks`` as polygons), as the data loader gives it: random images with
    ``num_objects`` random triangles (their boxes bound them) of random classes each."""
    from detectron2.structures import Boxes, Instances, PolygonMasks

    rng = np.random.default_rng(seed)
    batch = []
    for _ in range(num_images):
        image = torch.from_numpy(rng.integers(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8))
        polygons, boxes = [], []
        for _ in range(num_objects):
            w, h = rng.uniform(12, 80, 2)
            x0, y0 = rng.uniform(0, IMAGE_SIZE - w), rng.uniform(0, IMAGE_SIZE - h)
            apex = x0 + rng.uniform(0, w)
            polygons.append([np.array([x0, y0 + h, x0 + w, y0 + h, apex, y0], dtype=np.float64)])
            boxes.append([x0, y0, x0 + w, y0 + h])
        inst = Instances((IMAGE_SIZE, IMAGE_SIZE))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.gt_classes = torch.as_tensor(rng.integers(0, num_classes, num_objects),
                                          dtype=torch.int64)
        inst.gt_masks = PolygonMasks(polygons)
        batch.append({"image": image, "height": IMAGE_SIZE, "width": IMAGE_SIZE,
                      "instances": inst})
    return batch


def build_model(config: str, num_classes: int):
    from train_net import Trainer, build_cfg

    opts = ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes),
            "MODEL.RETINANET.NUM_CLASSES", str(num_classes), "MODEL.FCOS.NUM_CLASSES",
            str(num_classes)]
    cfg = build_cfg(os.path.join(REPO, config), opts)
    torch.manual_seed(0)
    return Trainer.build_model(cfg)


def count_config(config: str, num_classes: int, num_objects: int
                 ) -> Tuple[Counter, Counter, Counter]:
    """(syncs of one training step, syncs per inference image, the places of both by kind) of
    ``config``."""
    from detectron2.utils.events import EventStorage

    use_cuda_batched_nms_rule()
    where: Counter = Counter()

    model = build_model(config, num_classes)
    model.train()
    with EventStorage(0) as storage:
        for it in range(2):
            storage.iter = it
            batch = synthesize_batch(IMAGES_PER_STEP, num_objects, num_classes, seed=it)
            mark_host(batch)
            counter = HostSyncCounter()
            with counter if it == 1 else _nothing():
                losses = model(batch)
                sum(losses.values()).backward()
            model.zero_grad(set_to_none=True)
        train = counter.counts
        where.update({("train",) + k: v for k, v in counter.where.items()})
    model.eval()
    infer: Counter = Counter()
    with torch.no_grad():
        for k in range(1 + INFERENCE_IMAGES):
            image = synthesize_batch(1, num_objects, num_classes, seed=100 + k)[0]
            del image["instances"]
            mark_host(image)
            counter = HostSyncCounter()
            with counter if k > 0 else _nothing():
                model([image])
            if k > 0:
                infer.update(counter.counts)
                where.update({("inference",) + k: v / INFERENCE_IMAGES
                              for k, v in counter.where.items()})
    return train, Counter({k: v / INFERENCE_IMAGES for k, v in infer.items()}), where


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def sources_digest(root: str) -> str:
    """The first 12 hex digits of the SHA-256 of every ``.py`` file under ``root``: its path
    relative to ``root`` (with ``/``), a NUL byte, its bytes; in the sorted order of the paths."""
    paths = sorted(os.path.relpath(os.path.join(d, name), root).replace(os.sep, "/")
                   for d, _, names in os.walk(root) for name in names if name.endswith(".py"))
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.encode() + b"\0")
        with open(os.path.join(root, path), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:12]


def detectron2_description() -> str:
    """The Detectron2 whose code is counted (its sync points and the file:line places are its
    code's): its version, whether its ops ``detectron2._C`` are the compiled extension or
    d2infra's PyTorch replacement, the commit pip installed it from if pip recorded one, and
    :func:`sources_digest` of its package (Detectron2 main also calls itself 0.6)."""
    from importlib import metadata

    import detectron2

    spec = importlib.util.find_spec("detectron2._C")
    if spec is None or spec.origin is None:
        ops = "no ops (no detectron2._C)"
    elif spec.origin.endswith(".py"):
        ops = "ops not compiled (detectron2._C is d2infra's PyTorch replacement)"
    else:
        ops = "ops compiled (detectron2._C is the C++ extension)"
    parts = [f"Detectron2 {detectron2.__version__}", ops]
    try:
        url = json.loads(metadata.distribution("detectron2").read_text("direct_url.json") or "{}")
    except (metadata.PackageNotFoundError, ValueError):
        url = {}
    commit = url.get("vcs_info", {}).get("commit_id")
    if commit:
        parts.append(f"commit {commit[:12]}")
    parts.append("sha256 of its .py files " + sources_digest(os.path.dirname(detectron2.__file__)))
    return ", ".join(parts)


def _short(config: str) -> str:
    return os.path.basename(config).replace("_smallR_FPN_shapes.yaml", "")


def _fmt(x: float) -> str:
    return f"{x:g}" if x == int(x) else f"{x:.1f}"


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("configs", nargs="*", help="method configs of PAIRS to count (default: all)")
    p.add_argument("--out", default=os.path.join(REPO, "docs", "host_syncs.md"))
    p.add_argument("--where", action="store_true",
                   help="also list where each sync is made (file:line of the first caller)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    pairs = [pr for pr in PAIRS if not a.configs or pr[0] in a.configs
             or _short(pr[0]) in a.configs]
    if not pairs:
        p.error(f"no config of PAIRS among {a.configs}")
    needed = sorted({c for pr in pairs for c in pr}, key=[c for pr in PAIRS for c in pr].index)
    results: Dict[Tuple[str, int, int], Tuple[Counter, Counter, Counter]] = {}
    for config in needed:
        for k in CLASSES:
            for n in OBJECTS:
                results[config, k, n] = count_config(config, k, n)
                train, infer, _ = results[config, k, n]
                print(f"{_short(config)} classes={k} objects={n}: train {sum(train.values())} "
                      f"{dict(train.most_common(6))}; inference {_fmt(sum(infer.values()))} "
                      f"{dict(infer.most_common(4))}", flush=True)

    settings = [(k, n) for k in CLASSES for n in OBJECTS]
    head = " | ".join(f"{k} cls, {n} obj" for k, n in settings)
    lines = [
        "# Host syncs per training step and per inference image",
        "",
        "Command: `" + " ".join(["python", "benchmarks/host_syncs.py"]
                                + list(argv or sys.argv[1:])) + "`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"(counts do not depend on the machine)  ",
        f"{detectron2_description()}: the counts and the file:line places are of this code  ",
        f"Date: {datetime.date.today().isoformat()}",
        "",
        "What is counted, and how (on the CPU, as a GPU run would sync): see the docstring of "
        "`benchmarks/host_syncs.py`. Untrained models of the embedded configs, synthesized inputs "
        f"({IMAGES_PER_STEP} images of {IMAGE_SIZE} px per step; triangles with polygon masks); "
        "the number of classes is set in every head. \"growth\" is the largest difference "
        "between the four settings; \"vs baseline\" is the method's count minus its Detectron2 "
        "baseline's, at 80 classes and 50 objects. A difference between the settings can come "
        "from a data-dependent branch (an image with or without detections, a stage with or "
        "without negatives) as well as from a loop; a loop over classes or objects grows by "
        "tens between 6 and 80 classes or 5 and 50 objects.",
        "",
        "## Training step (forward + backward)",
        "",
        f"| config | baseline | {head} | growth | vs baseline |",
        "|---|---|" + "---|" * (len(settings) + 2),
    ]
    for which, title in ((0, None), (1, "## Inference, per image")):
        if title:
            lines += ["", title, "", f"| config | baseline | {head} | growth | vs baseline |",
                      "|---|---|" + "---|" * (len(settings) + 2)]
        for method, base in pairs:
            counts = [sum(results[method, k, n][which].values()) for k, n in settings]
            base_count = sum(results[base, CLASSES[-1], OBJECTS[-1]][which].values())
            cells = " | ".join(_fmt(c) for c in counts)
            diff = "-" if method == base else f"{counts[-1] - base_count:+g}"
            lines.append(f"| {_short(method)} | {_short(base)} | {cells} | "
                         f"{_fmt(max(counts) - min(counts))} | {diff} |")
    growth = {which: max((max(c) - min(c), _short(m)) for m, _ in pairs for c in [
        [sum(results[m, k, n][which].values()) for k, n in settings]]) for which in (0, 1)}
    lines += ["", f"Largest growth between the settings: {_fmt(growth[0][0])} syncs per training "
              f"step ({growth[0][1]}), {_fmt(growth[1][0])} per inference image ({growth[1][1]}).",
              "", "## Largest kinds (80 classes, 50 objects)", "",
              "| config | training step | inference image |", "|---|---|---|"]
    for method, _ in pairs:
        train, infer, _ = results[method, CLASSES[-1], OBJECTS[-1]]
        lines.append(
            f"| {_short(method)} | "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in train.most_common(5)) + " | "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in infer.most_common(5)) + " |")
    if a.where:
        lines += ["", "## Where (80 classes, 50 objects): the first caller outside torch, the "
                  "8 most frequent places", ""]
        for method, _ in pairs:
            where = results[method, CLASSES[-1], OBJECTS[-1]][2]
            lines.append(f"- {_short(method)}: " + "; ".join(
                f"{phase} {kind} `{place}` x{_fmt(v)}"
                for (phase, kind, place), v in sorted(where.items(), key=lambda kv: -kv[1])[:8]))
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
