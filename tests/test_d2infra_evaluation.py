"""d2infra.evaluation: the fast C++ COCOeval is chosen exactly where Detectron2's compiled ops are
installed (the Detectron2-main leg), and COCOEvaluator's numbers with the chosen implementation
equal pycocotools' and a hand computation on a tiny set."""
import importlib.machinery
import json
import math
import os

import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, Instances
from pycocotools.cocoeval import COCOeval

from d2infra.evaluation import coco_eval_class, fast_coco_eval_available

# One 40x40 image, one category: A = [0, 0, 10, 10] and B = [20, 20, 10, 10] (XYWH).
GT = {
    "images": [{"id": 1, "width": 40, "height": 40}],
    "categories": [{"id": 1, "name": "a"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
         "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10], "area": 100,
         "iscrowd": 0},
    ],
}
# Detections (XYXY, score): A itself (IoU 1), a box inside A (IoU 0.55, A taken: a false positive
# at every threshold), a box inside B (IoU 0.68).
BOXES = [[0, 0, 10, 10], [0, 0, 10, 5.5], [20, 20, 30, 26.8]]
SCORES = [0.9, 0.8, 0.7]


def compiled_extension() -> bool:
    """Whether ``detectron2._C`` was loaded from a compiled extension file (.so), not Python."""
    import detectron2._C as ops

    return str(ops.__file__).endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


@pytest.fixture
def dataset(tmp_path, request):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(GT))
    name = f"d2infra_eval_test_{request.node.name}"
    MetadataCatalog.get(name).set(json_file=str(path), thing_dataset_id_to_contiguous_id={1: 0},
                                  thing_classes=["a"])
    yield name
    MetadataCatalog.remove(name)


def evaluate(dataset: str, use_fast_impl: bool) -> dict:
    evaluator = COCOEvaluator(dataset, tasks=("bbox",), distributed=False, output_dir=None,
                              use_fast_impl=use_fast_impl)
    evaluator.reset()
    inst = Instances((40, 40))
    inst.pred_boxes = Boxes(torch.tensor(BOXES))
    inst.scores = torch.tensor(SCORES)
    inst.pred_classes = torch.zeros(3, dtype=torch.int64)
    evaluator.process([{"image_id": 1}], [{"instances": inst}])
    return evaluator.evaluate()["bbox"]


def test_choice_follows_the_compiled_extension():
    assert fast_coco_eval_available() == compiled_extension()
    if fast_coco_eval_available():
        from detectron2.evaluation.fast_eval_api import COCOeval_opt

        assert coco_eval_class() is COCOeval_opt
    else:
        assert coco_eval_class() is COCOeval


def test_chosen_impl_equals_pycocotools_and_the_hand_computation(dataset):
    """By hand (101 recall points, 2 ground truths): at IoU 0.5-0.65 the ranking is TP FP TP:
    precision envelope 1 up to recall 0.5, 2/3 up to 1; at 0.7-0.95 TP FP FP: 1 up to 0.5."""
    chosen = evaluate(dataset, use_fast_impl=fast_coco_eval_available())
    reference = evaluate(dataset, use_fast_impl=False)  # pycocotools' COCOeval
    low, high = (51 + 50 * 2 / 3) / 101, 51 / 101
    assert chosen["AP50"] == pytest.approx(100 * low, rel=1e-6)
    assert chosen["AP75"] == pytest.approx(100 * high, rel=1e-6)
    assert chosen["AP"] == pytest.approx(100 * (4 * low + 6 * high) / 10, rel=1e-6)
    assert chosen.keys() == reference.keys()
    for key, value in reference.items():
        assert (math.isnan(value) and math.isnan(chosen[key])) or chosen[key] == pytest.approx(
            value, abs=1e-9), key


def test_fast_impl_fails_where_it_is_not_chosen(dataset):
    """Where the choice is pycocotools, Detectron2's fast COCOeval indeed does not run (the
    replacement ops' entry points raise, naming the fix)."""
    if fast_coco_eval_available():
        pytest.skip("the compiled fast COCOeval is installed: covered by the equality test")
    with pytest.raises(RuntimeError, match="use_fast_impl=False"):
        evaluate(dataset, use_fast_impl=True)


def test_train_net_evaluator_uses_the_choice(dataset, tmp_path):
    from train_net import Trainer, build_cfg

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = os.path.join(repo, "configs", "baselines", "faster_rcnn_smallR_FPN_shapes.yaml")
    cfg = build_cfg(config, ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path)])
    MetadataCatalog.get(dataset).evaluator_type = "coco"
    evaluators = Trainer.build_evaluator(cfg, dataset)._evaluators
    coco = [e for e in evaluators[0]._evaluators if isinstance(e, COCOEvaluator)]
    assert coco and all(e._use_fast_impl == fast_coco_eval_available() for e in coco)
