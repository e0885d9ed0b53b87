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
