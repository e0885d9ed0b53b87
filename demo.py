#!/usr/bin/env python
"""Draw a model's predictions (boxes, masks, class names and scores) onto images.

    python demo.py --config-file configs/r3cnn/r3cnn_naive_smallR_FPN_shapes.yaml \
        --input img1.png img2.jpg --output demo_out/ \
        --opts MODEL.WEIGHTS benchmarks/work/embedded/r3cnn_naive-seed1/model_final.pth

Runs Detectron2's ``DefaultPredictor`` (the config's test resize, input format and device; the
weights read by ``D2InfraCheckpointer``) and draws with Detectron2's ``Visualizer``, with the class names of the config's first test dataset. Writes
one PNG per input, of the input's size, named after it (``<output>/<input stem>.png``), and
nothing else: the config's ``OUTPUT_DIR`` (a training run's, for its ``config.yaml``) is left as
it is; messages go to the console.
"""
import argparse
import os
import sys
from typing import List, Optional

import cv2
import numpy as np


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--input", nargs="+", required=True, metavar="IMG", help="image files")
    p.add_argument("--output", required=True, metavar="DIR", help="directory for the PNGs")
    p.add_argument("--confidence-threshold", type=float, default=None,
                   help="minimum score of a drawn prediction (default: the config's test "
                        "threshold); predictions below it are not drawn")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="config KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth")
    return p.parse_args(argv)


def read_image(path: str) -> np.ndarray:
    """The image as BGR uint8 (H, W, 3); a clear error if it is missing or unreadable."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--input {path!r} does not exist")
    if not os.path.isfile(path):
        raise IsADirectoryError(f"--input {path!r} is not a file")
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"--input {path!r} is not an image OpenCV can read")
    return img


class DeviceUnavailableError(RuntimeError):
    """The config asks for CUDA, which is unavailable here, and does not allow the CPU."""


def _raised_by(error: BaseException, function) -> bool:
    """Whether ``error`` was raised in ``function`` itself (its traceback's innermost frame)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code is function.__code__


def setup_cfg(args: argparse.Namespace):
    """The config of ``--config-file`` and ``--opts``, with its datasets registered (for the class
    names), logging to the console only. Unlike ``train_net.py``, no Detectron2 ``default_setup``:
    that writes ``config.yaml`` and ``log.txt`` into the config's ``OUTPUT_DIR``, which for a
    training run's ``config.yaml`` is that run's own directory. A demo writes only to ``--output``.
    """
    from detectron2.utils.logger import setup_logger

    from d2infra.data import check_dataset_names, register_coco_format_datasets
    from d2infra.engine import device_fallback_warning, resolve_device
    from train_net import build_cfg

    try:
        cfg = build_cfg(args.config_file, list(args.opts))
    except RuntimeError as e:
        if not _raised_by(e, resolve_device):
            raise
        # MODEL.DEVICE cuda, no CUDA here, and the config does not allow the CPU: e.g. the
        # config.yaml of a GPU training run, on a CPU machine.
        raise DeviceUnavailableError(
            f"{e} For the demo: add MODEL.DEVICE cpu to --opts.") from e
    register_coco_format_datasets(cfg)
    check_dataset_names(cfg)
    setup_logger(name="fvcore")
    logger = setup_logger()
    if device_fallback_warning():  # MODEL.DEVICE cuda, no CUDA here, the config allows the CPU
        logger.warning(device_fallback_warning())
    if not cfg.MODEL.WEIGHTS:
        print("demo.py: warning: no MODEL.WEIGHTS given: the model is randomly initialised",
              file=sys.stderr)
    return cfg


def build_predictor(cfg):
    """Detectron2's ``DefaultPredictor`` of ``cfg``, its ``MODEL.WEIGHTS`` read by
    ``D2InfraCheckpointer``: a truncated or corrupt file is an error naming it
    (:class:`d2infra.checkpoint.CheckpointReadError`), not torch's bare error."""
    import logging

    from detectron2.engine import DefaultPredictor

    from d2infra.checkpoint import D2InfraCheckpointer

    weightless = cfg.clone()
    weightless.defrost()
    weightless.MODEL.WEIGHTS = ""
    weightless.freeze()
    # Without weights, the checkpointer logs "No checkpoint found. Initializing model from
    # scratch": not true here (setup_cfg warns when there really are no weights).
    checkpoint_logger = logging.getLogger("fvcore.common.checkpoint")
    level = checkpoint_logger.level
    checkpoint_logger.setLevel(logging.WARNING)
    try:
        predictor = DefaultPredictor(weightless)
    finally:
        checkpoint_logger.setLevel(level)
    predictor.cfg = cfg.clone()
    D2InfraCheckpointer(predictor.model).load(cfg.MODEL.WEIGHTS)
    return predictor


def visualize(predictions: dict, image_bgr: np.ndarray, metadata,
              threshold: Optional[float] = None) -> np.ndarray:
    """RGB (H, W, 3) drawing of ``predictions["instances"]`` (boxes, masks if any, labels with
    scores) on the image, with Detectron2's Visualizer."""
    import torch
    from detectron2.utils.visualizer import ColorMode, Visualizer

    instances = predictions["instances"].to(torch.device("cpu"))
    if threshold is not None:
        instances = instances[instances.scores >= threshold]
    vis = Visualizer(image_bgr[:, :, ::-1], metadata, scale=1.0, instance_mode=ColorMode.IMAGE)
    return vis.draw_instance_predictions(instances).get_image()


def main(argv: Optional[List[str]] = None) -> List[str]:
    args = parse_args(argv)
    # Check every input before building the model: a typo fails at once.
    images = [read_image(p) for p in args.input]
    from detectron2.data import MetadataCatalog

    from d2infra.data import ensure_generated

    cfg = setup_cfg(args)
    dataset = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None
    if dataset:
        ensure_generated(dataset)
    metadata = MetadataCatalog.get(dataset if dataset else "__unused")
    predictor = build_predictor(cfg)
    os.makedirs(args.output, exist_ok=True)
    written = []
    for path, img in zip(args.input, images):
        drawing = visualize(predictor(img), img, metadata, args.confidence_threshold)
        out = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png")
        # The Visualizer draws at the input's size (scale 1); keep it exact.
        if drawing.shape[:2] != img.shape[:2]:
            drawing = cv2.resize(drawing, (img.shape[1], img.shape[0]))
        cv2.imwrite(out, drawing[:, :, ::-1])
        written.append(out)
        print(f"{path} -> {out}", flush=True)
    return written


def cli(argv: Optional[List[str]] = None) -> int:
    """:func:`main` as the command line runs it: its exit status, 2 with a one-line message for
    bad input (a file, a config key, a device or a checkpoint), 0 otherwise."""
    from d2infra.checkpoint import CheckpointReadError
    from d2infra.config import UnknownConfigKeyError

    try:
        main(argv)
    except (FileNotFoundError, IsADirectoryError, ValueError, UnknownConfigKeyError,
            DeviceUnavailableError, CheckpointReadError) as e:
        print(f"demo.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
