"""Dense and RoI heads of the imbalance toolkit: RetinaNet with GHM-C (``ImbalanceRetinaNet``) and a
Fast R-CNN predictor that honours per-RoI loss weights (``WeightedFastRCNNOutputLayers``)."""
from . import retinanet, weighted_fast_rcnn  # noqa: F401  registration
