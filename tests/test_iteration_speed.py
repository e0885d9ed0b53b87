"""benchmarks/iteration_speed.py: inference timing on a hand-made loader and model."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))


def test_inference_timing_goes_through_a_short_test_set_again():
    """nuclei_val has one image: with one warm-up image and 3 to time, the loader is gone through
    4 times (the speed piece of the nuclei pair failed on an empty list before)."""
    import torch

    from iteration_speed import time_inference

    calls = []
    model = torch.nn.Module()
    model.forward = lambda batch: calls.append(batch)
    assert len(time_inference(model, [["image 1"]], images=3, warmup=1)) == 3
    assert calls == [["image 1"]] * 4
    with pytest.raises(ValueError, match="yields no batch"):
        time_inference(model, [], images=2)
