"""Dense and RoI heads of the imbalance toolkit: RetinaNet with GHM-C and GHM-R
(``ImbalanceRetinaNet``), a Fast R-CNN predictor that honours per-RoI loss weights
(``WeightedFastRCNNOutputLayers``) and PISA's (``PISAFastRCNNOutputLayers``)."""
from . import retinanet, weighted_fast_rcnn  # noqa: F401  registration
