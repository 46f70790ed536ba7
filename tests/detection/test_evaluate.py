"""COCO mAP: perfect predictions score 1, perturbed ones less, none 0 (where defined)."""
import pytest

from sasa.detection.evaluate import coco_evaluate
from sasa.errors import UserError


def _ground_truth():
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in (1, 2, 3)]
    boxes = {1: [(10, 10, 30, 30, 1), (50, 50, 40, 20, 2)], 2: [(5, 60, 20, 20, 1)], 3: []}
    annotations = [
        {"image_id": i, "category_id": c, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
        for i, image_boxes in boxes.items() for (x, y, w, h, c) in image_boxes
    ]
    for index, ann in enumerate(annotations):
        ann["id"] = index + 1
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def _as_results(gt, shift=0.0):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
             "bbox": [a["bbox"][0] + shift, a["bbox"][1] + shift, a["bbox"][2], a["bbox"][3]]} for a in gt["annotations"]]


def test_perfect_predictions_score_one():
    gt = _ground_truth()
    metrics = coco_evaluate(gt, _as_results(gt))
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(1.0)


def test_perturbed_predictions_score_lower():
    gt = _ground_truth()
    shifted = coco_evaluate(gt, _as_results(gt, shift=4.0))
    assert shifted["AP"] < 1.0
    wrong_class = [{**r, "category_id": 3 - r["category_id"]} for r in _as_results(gt)]
    assert coco_evaluate(gt, wrong_class)["AP"] == pytest.approx(0.0)
    false_positive = _as_results(gt) + [{"image_id": 3, "category_id": 1, "bbox": [0, 0, 50, 50], "score": 0.95}]
    assert coco_evaluate(gt, false_positive)["AP"] < 1.0


def test_detection_task_evaluates_real_detections(tmp_path):
    """An untrained detector with score_thresh 0 outputs many boxes: the whole eval path runs on them."""
    from torch.utils.data import DataLoader

    from sasa.detection import create_detector
    from sasa.detection.data import CocoDetection, collate_detection
    from sasa.detection.shapes import generate_shapes
    from sasa.detection.task import DetectionTask
    from sasa.engine import DistributedContext
    from sasa.engine.trainer import autocast_factory

    root = generate_shapes(tmp_path, num_train=0, num_val=2, img_size=64)
    dataset = CocoDetection(root / "val", root / "annotations" / "instances_val.json")
    model = create_detector("retinanet_resnet26", num_classes=3, min_size=64, max_size=64, fpn_channels=32,
                            anchor_size=8, score_thresh=0.0)
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate_detection)
    ctx = DistributedContext()
    metrics = DetectionTask(dataset).evaluate(model, loader, ctx, autocast_factory(ctx.device, True))
    assert set(metrics) == {"val_AP", "val_AP50", "val_AP75", "val_APs", "val_APm", "val_APl"}
    assert all(-1.0 <= value <= 1.0 for value in metrics.values())


def test_item21_no_predictions_leave_undefined_metrics_undefined():
    """Ground truth is all small: with no detections APs/AP are 0 (defined), APm/APl stay -1 (no such boxes)."""
    metrics = coco_evaluate(_ground_truth(), [])
    assert metrics == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0, "APm": -1.0, "APl": -1.0}
    with_results = coco_evaluate(_ground_truth(), _as_results(_ground_truth()))
    assert with_results["APm"] == -1.0 and with_results["APl"] == -1.0  # the same convention either way
    no_boxes = {**_ground_truth(), "annotations": []}
    assert set(coco_evaluate(no_boxes, []).values()) == {-1.0}


def test_item21_no_images_is_an_error(tmp_path):
    gt = _ground_truth()
    with pytest.raises(UserError, match="no images to evaluate"):
        coco_evaluate(gt, _as_results(gt), image_ids=[])
    with pytest.raises(UserError, match="no images to evaluate"):
        coco_evaluate({**gt, "images": [], "annotations": []}, [])


def test_item21_detect_eval_on_a_set_whose_images_were_all_dropped_is_an_error(tmp_path, capsys):
    import json

    from PIL import Image

    from sasa.cli.main import main
    from sasa.detection import create_detector
    from sasa.detection.data import CocoDetection
    from sasa.detection.shapes import generate_shapes
    from sasa.detection.checkpoint import detector_metadata
    from sasa.engine import save_weights

    root = generate_shapes(tmp_path / "shapes", num_train=0, num_val=2, img_size=32)
    ann = root / "annotations" / "instances_val.json"
    dataset = CocoDetection(root / "val", ann)
    model = create_detector("retinanet_resnet26", num_classes=3, min_size=32, max_size=32, fpn_channels=32,
                            anchor_size=8)
    metadata = detector_metadata("retinanet_resnet26", model.config, dataset)
    save_weights(tmp_path / "w.safetensors", model.state_dict(), metadata)
    for path in (root / "val").glob("*.png"):  # every image now differs in size from the json: all dropped
        Image.new("RGB", (33, 32)).save(path)
    out = tmp_path / "metrics.json"
    assert main(["detect-eval", "--checkpoint", str(tmp_path / "w.safetensors"), "--images", str(root / "val"),
                 "--ann", str(ann), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no usable images" in err and "image size differs from json: 2" in err
    assert not out.exists()
    json.loads(ann.read_text())  # untouched
