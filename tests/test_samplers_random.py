"""``random`` is Detectron2's biased mini-batch sampling, bit for bit."""
import torch
from detectron2.config import get_cfg
from detectron2.modeling.sampling import subsample_labels

import imbalance
from imbalance.samplers import Candidates, RandomSampler, build_roi_sampler


def test_random_equals_subsample_labels_bit_for_bit():
    cfg = get_cfg()
    imbalance.add_imbalance_config(cfg)
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    sampler = build_roi_sampler(cfg)
    assert isinstance(sampler, RandomSampler)
    num_classes = 5
    g = torch.Generator().manual_seed(3)
    for trial in range(5):
        labels = torch.randint(-1, num_classes + 1, (200,), generator=g)
        labels[torch.rand(200, generator=g) < 0.6] = num_classes  # mostly background
        torch.manual_seed(trial)
        fg, bg = subsample_labels(labels, 16, cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION, num_classes)
        torch.manual_seed(trial)
        sampled = sampler(Candidates(labels, torch.zeros(200), torch.zeros(200, dtype=torch.long),
                                     num_classes))
        assert torch.equal(sampled.indices, torch.cat([fg, bg]))
        assert torch.equal(sampled.weights, torch.ones(len(fg) + len(bg)))
        # the 1:3 split of the default config
        assert len(fg) <= 4 and len(fg) + len(bg) == 16
