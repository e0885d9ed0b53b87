import difflib
import re
from typing import Iterator, Sequence

from detectron2.config import CfgNode as CN


def add_d2infra_config(cfg: CN) -> None:
    """Config keys of the shared infrastructure: datasets from files, the small CPU backbone, the
    CPU fallback of MODEL.DEVICE and the box-predictor registry. Safe to call more than once, in
    any order with the projects' own add functions: keys already present are left as they are."""
    if "COCO_FORMAT" not in cfg.DATASETS:
        # Datasets in COCO format (a json plus an image folder), registered by name at setup, so
        # that one's own data trains and evaluates from the command line. Three lists of equal
        # length.
        cfg.DATASETS.COCO_FORMAT = CN()
        cfg.DATASETS.COCO_FORMAT.NAMES = []
        cfg.DATASETS.COCO_FORMAT.JSON_FILES = []
        cfg.DATASETS.COCO_FORMAT.IMAGE_ROOTS = []

    if "SMALL_RESNET" not in cfg.MODEL:
        # The small ResNet of the embedded CPU configs (d2infra.modeling.backbone); from scratch.
        cfg.MODEL.SMALL_RESNET = CN()
        # Output channels of the stem (7x7 conv + max-pool, stride 4) and of res2..res5 (strides
        # 4..32).
        cfg.MODEL.SMALL_RESNET.STEM_OUT_CHANNELS = 32
        cfg.MODEL.SMALL_RESNET.STAGE_OUT_CHANNELS = [32, 64, 128, 256]
        # Basic residual blocks per stage.
        cfg.MODEL.SMALL_RESNET.BLOCKS_PER_STAGE = [1, 1, 1, 1]
        # Normalisation of every conv: "BN", "GN" or "SyncBN" (not FrozenBN: trained from scratch).
        cfg.MODEL.SMALL_RESNET.NORM = "BN"

    if "ALLOW_CPU_FALLBACK" not in cfg.MODEL:
        # Whether MODEL.DEVICE "cuda" may run on the CPU, with a warning, when torch cannot use
        # CUDA (d2infra.engine.device). True in the embedded configs (Base-Shapes-*.yaml), which
        # are sized to run anywhere; False otherwise: build_cfg stops with an error naming the fix.
        cfg.MODEL.ALLOW_CPU_FALLBACK = False

    if "PREDICTOR" not in cfg.MODEL.ROI_BOX_HEAD:
        # Name of the RoI box predictor in ROI_BOX_PREDICTOR_REGISTRY, for heads built by this
        # project.
        cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = "FastRCNNOutputLayers"


class UnknownConfigKeyError(KeyError):
    """A key of a config file or of the command-line opts that the config does not have."""

    def __str__(self) -> str:  # KeyError's own str() would print the message quoted
        return str(self.args[0])


def config_keys(cfg: CN, prefix: str = "") -> Iterator[str]:
    """The full dotted name of every node and leaf of ``cfg`` (``MODEL``, ``MODEL.R3CNN``,
    ``MODEL.R3CNN.NUM_LOOPS_TRAIN``, ...)."""
    for name, value in cfg.items():
        key = prefix + name
        yield key
        if isinstance(value, CN):
            yield from config_keys(value, key + ".")


def unknown_key_message(cfg: CN, key: str, source: str) -> str:
    """``key`` is unknown (in ``source``): the message, with the keys of ``cfg`` closest to it."""
    ancestors = {key.rsplit(".", i)[0] for i in range(1, key.count(".") + 1)}
    keys = [k for k in config_keys(cfg) if k not in ancestors]
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.8)
    if close:
        hint = "did you mean " + " or ".join(close) + "?"
    else:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = cfg
        for part in parent.split(".") if parent else []:
            node = node.get(part) if isinstance(node, CN) else None
        if isinstance(node, CN) and parent:
            hint = f"the keys of {parent} are: {', '.join(sorted(node))}"
        else:
            hint = "no key of the config is close to it"
    return f"{source}: unknown config key {key}; {hint}"


_NON_EXISTENT = re.compile(r"Non-existent (?:config )?key: ([\w.]+)")


def _reraise_unknown_key(cfg: CN, error: Exception, source: str) -> None:
    """Raise :class:`UnknownConfigKeyError` if ``error`` is yacs's error for an unknown key."""
    found = _NON_EXISTENT.search(str(error.args[0]) if error.args else "")
    if found:
        raise UnknownConfigKeyError(unknown_key_message(cfg, found.group(1), source)) from error


def merge_from_file(cfg: CN, config_file: str) -> None:
    """``cfg.merge_from_file(config_file)``; a key the config does not have (in the file or a
    ``_BASE_`` it includes) raises :class:`UnknownConfigKeyError` naming the file, the key and the
    closest existing keys (yacs says only ``Non-existent config key: <key>``)."""
    try:
        cfg.merge_from_file(config_file)
    except KeyError as e:
        _reraise_unknown_key(cfg, e, config_file)
        raise


def merge_from_list(cfg: CN, opts: Sequence[str]) -> None:
    """``cfg.merge_from_list(opts)``; a key the config does not have raises
    :class:`UnknownConfigKeyError` naming the key and the closest existing keys (yacs asserts
    ``Non-existent key: <key>``)."""
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError) as e:
        _reraise_unknown_key(cfg, e, "command-line opts")
        raise
