"""COCO loading: structural errors raise with the entry named; data problems are counted skips."""
import json

import pytest
import torch
from PIL import Image

from sasa.cli.main import main
from sasa.detection.data import CocoDetection, load_coco
from sasa.detection.shapes import generate_shapes
from sasa.errors import UserError


@pytest.fixture
def folder(tmp_path):
    """Three 40×30 images on disk (ids 1..3) and a helper to write an annotation file."""
    for i in (1, 2, 3):
        Image.new("RGB", (40, 30), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")

    def write(data):
        path = tmp_path / "ann.json"
        path.write_text(json.dumps(data) if not isinstance(data, str) else data)
        return path

    return tmp_path, write


def _valid():
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 30} for i in (1, 2, 3)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 12]},
            {"id": 2, "image_id": 2, "category_id": 9, "bbox": [20, 5, 15, 20], "iscrowd": 0},
        ],
        "categories": [{"id": 9, "name": "nine"}, {"id": 7, "name": "seven"}],
    }


def test_valid_file_and_image_without_annotations(folder):
    root, write = folder
    dataset = CocoDetection(root, write(_valid()))
    assert len(dataset) == 3 and dataset.report.num_annotations == 2 and not dataset.report.skipped
    assert dataset.class_names == ["seven", "nine"]  # sorted by category id -> labels 0, 1
    image, target = dataset[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert target["boxes"].tolist() == [[2, 3, 12, 15]] and target["labels"].tolist() == [0]
    _, empty = dataset[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("annotations"), "top-level 'annotations' must be a list, got missing"),
    (lambda d: d.update(images={}), "top-level 'images' must be a list"),
    (lambda d: d["images"][1].pop("file_name"), r"images\[1\]: missing key 'file_name'"),
    (lambda d: d["images"][0].update(width=0), r"images\[0\]: width must be a positive integer"),
    (lambda d: d["annotations"][1].pop("bbox"), r"annotations\[1\]: missing key 'bbox'"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotations\[0\]: bbox must be \[x, y, width, height\]"),
    (lambda d: d["annotations"][0].pop("category_id"), r"annotations\[0\]: missing key 'category_id'"),
    (lambda d: d["images"].append(dict(d["images"][0])), "duplicate image id 1"),
    (lambda d: d.update(categories=[]), "no categories"),
])
def test_malformed_files_raise_naming_the_entry(folder, mutate, message):
    _assert_refused(folder, mutate, message)


def _assert_refused(folder, mutate, message):
    """The valid file changed by ``mutate`` is refused with an error matching ``message``."""
    root, write = folder
    data = _valid()
    mutate(data)
    with pytest.raises(UserError, match=message):
        load_coco(write(data), root)


def test_not_json_and_missing_paths(folder):
    root, write = folder
    with pytest.raises(UserError, match="not valid JSON"):
        load_coco(write("{images: ["), root)
    with pytest.raises(UserError, match="annotation file"):
        load_coco(root / "nope.json", root)
    with pytest.raises(UserError, match="image folder"):
        load_coco(write(_valid()), root / "nope")


@pytest.mark.parametrize("bbox, reason, kept", [
    ([35, 25, 20, 20], "bbox clipped to the image", [[35, 25, 40, 30]]),
    ([-5, -5, 10, 10], "bbox clipped to the image", [[0, 0, 5, 5]]),
    ([50, 40, 10, 10], "bbox outside the image", []),
    ([5, 5, 0, 10], "zero-area bbox", []),
    ([5, 5, 10, -3], "negative-size bbox", []),
    ([5, 5, float("nan"), 3], "non-finite bbox", []),
])
def test_bad_boxes_are_clipped_or_skipped_and_counted(folder, bbox, reason, kept):
    root, write = folder
    data = _valid()
    data["annotations"][0]["bbox"] = bbox
    dataset = CocoDetection(root, write(data))
    assert dataset.report.skipped[reason] == 1
    assert dataset.target(0)["boxes"].tolist() == kept


def test_unknown_ids_are_skipped_and_counted(folder):
    root, write = folder
    data = _valid()
    data["annotations"][0]["category_id"] = 99
    data["annotations"][1]["image_id"] = 42
    dataset = CocoDetection(root, write(data))
    assert dataset.report.skipped == {"unknown category_id": 1, "unknown image_id": 1}
    assert dataset.report.num_annotations == 0
    assert "category_id 99" in dataset.report.summary()


def test_missing_unreadable_and_resized_images_are_skipped(folder):
    root, write = folder
    (root / "2.png").unlink()
    (root / "3.png").write_bytes(b"not a png")
    Image.new("RGB", (41, 30)).save(root / "1.png")
    data = _valid()
    data["images"].append({"id": 4, "file_name": "4.png", "width": 40, "height": 30})
    Image.new("RGB", (40, 30)).save(root / "4.png")
    dataset = CocoDetection(root, write(data))
    assert dataset.report.skipped == {"image missing on disk": 1, "image unreadable": 1, "image size differs from json": 1}
    assert [image["id"] for image in dataset.images] == [4]
    assert dataset.report.num_annotations == 0  # their annotations went with them, not counted twice


def test_all_images_missing_is_an_error(folder, tmp_path):
    _, write = folder
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="none of the 3 images"):
        load_coco(write(_valid()), empty)


def test_crowd_regions_are_eval_ground_truth_not_targets(folder):
    root, write = folder
    data = _valid()
    data["annotations"][1]["iscrowd"] = 1
    dataset = CocoDetection(root, write(data))
    assert dataset.target(1)["boxes"].shape == (0, 4)
    assert [a["iscrowd"] for a in dataset.coco["annotations"]] == [0, 1]


def test_train_flip_moves_boxes(folder):
    root, write = folder
    dataset = CocoDetection(root, write(_valid()), train=True)
    flipped = [dataset[0][1]["boxes"].tolist() for _ in range(20)]
    assert [[2, 3, 12, 15]] in flipped and [[28, 3, 38, 15]] in flipped


def test_cli_check_reports_and_rejects(folder, capsys):
    root, write = folder
    data = _valid()
    data["annotations"][0]["bbox"] = [50, 40, 10, 10]
    assert main(["detect-data", "check", "--images", str(root), "--ann", str(write(data))]) == 0
    assert "bbox outside the image: 1" in capsys.readouterr().out
    data["annotations"][0].pop("image_id")
    assert main(["detect-data", "check", "--images", str(root), "--ann", str(write(data))]) == 2
    assert "missing key 'image_id'" in capsys.readouterr().err


def test_shapes_are_deterministic_and_valid(tmp_path):
    a = generate_shapes(tmp_path / "a", num_train=4, num_val=2, img_size=48, seed=3)
    b = generate_shapes(tmp_path / "b", num_train=4, num_val=2, img_size=48, seed=3)
    c = generate_shapes(tmp_path / "c", num_train=4, num_val=2, img_size=48, seed=4)
    read = lambda root, name: (root / name).read_bytes()  # noqa: E731
    assert read(a, "train/000002.png") == read(b, "train/000002.png")
    assert read(a, "annotations/instances_train.json") == read(b, "annotations/instances_train.json")
    assert read(a, "annotations/instances_train.json") != read(c, "annotations/instances_train.json")
    for split in ("train", "val"):
        dataset = CocoDetection(a / split, a / "annotations" / f"instances_{split}.json")
        assert not dataset.report.skipped and dataset.class_names == ["circle", "square", "triangle"]
        assert dataset.report.num_annotations >= len(dataset)


# --- issue 14 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["annotations"][0].update(image_id=[1]), r"annotations\[0\]: image_id must be an integer, got \[1\]"),
    (lambda d: d["annotations"][1].update(category_id=[9]), r"annotations\[1\]: category_id must be an integer"),
    (lambda d: d["annotations"][0].update(category_id="7"), r"annotations\[0\]: category_id must be an integer"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 10**400, 3]), r"annotations\[0\]: bbox must be .*characters"),
    (lambda d: d["images"][0].update(width=10**400), r"images\[0\]: width must be a positive integer"),
    (lambda d: d["images"][0].update(id=[1]), r"images\[0\]: id must be an integer"),
    (lambda d: d["categories"][0].update(id=[9]), r"categories\[0\]: needs an integer 'id'"),
])
def test_item8_malformed_values_raise_naming_the_entry(folder, mutate, message):
    _assert_refused(folder, mutate, message)


def test_item8_huge_area_falls_back_to_the_box_area(folder):
    root, write = folder
    data = _valid()
    data["annotations"][0]["area"] = 10**400
    clean, _ = load_coco(write(data), root)
    assert clean["annotations"][0]["area"] == 10 * 12


@pytest.mark.parametrize("value", ["0", "1", 0.0, True, 2, None])
def test_item24_iscrowd_must_be_the_integer_0_or_1(folder, value):
    root, write = folder
    data = _valid()
    data["annotations"][1]["iscrowd"] = value
    with pytest.raises(UserError, match=r"annotations\[1\]: iscrowd must be the integer 0 or 1, got " + repr(value)):
        load_coco(write(data), root)


def test_item27_negative_size_box_is_not_called_zero_area(folder):
    root, write = folder
    data = _valid()
    data["annotations"][0]["bbox"] = [20, 10, -5, 8]
    data["annotations"][1]["bbox"] = [20, 5, 0.5, 20]
    _, report = load_coco(write(data), root)
    assert report.skipped == {"negative-size bbox": 1, "zero-area bbox": 1}
    assert "negative-size bbox: 1 (first: annotations[0]" in report.summary()


def test_item27_folder_as_ann_and_file_as_images_are_named_as_such(folder, capsys):
    root, write = folder
    ann = write(_valid())
    with pytest.raises(UserError, match="annotation file .* is a folder"):
        load_coco(root, root)
    with pytest.raises(UserError, match="image folder .*1.png' is a file"):
        load_coco(ann, root / "1.png")
    assert main(["detect-data", "check", "--images", str(root), "--ann", str(root)]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "does not exist" not in err


def _sixteen_bit_copy(path, out):
    """A 16-bit grayscale PNG (mode I;16) holding the same picture as the 8-bit ``path``."""
    import numpy as np

    gray = np.asarray(Image.open(path).convert("L"), dtype=np.uint16) * 257  # 255 -> 65535
    Image.fromarray(gray).save(out)
    assert Image.open(out).mode == "I;16"


def test_item23_sixteen_bit_grayscale_png_is_scaled_not_white(folder):
    root, write = folder
    Image.new("RGB", (40, 30), (0, 0, 0)).save(root / "1.png")
    Image.new("RGB", (10, 30), (200, 200, 200)).save(root / "stripe.png")
    with Image.open(root / "1.png") as base, Image.open(root / "stripe.png") as stripe:
        canvas = base.copy()
        canvas.paste(stripe, (30, 0))
        canvas.save(root / "1.png")
    _sixteen_bit_copy(root / "1.png", root / "1.png")
    dataset = CocoDetection(root, write(_valid()))
    image = dataset.load_image(0)
    assert image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    assert image[:, :, :30].max() == 0 and (image[:, :, 30:] == 200).all()


def test_item7_wide_image_in_a_coco_file_evaluates(tmp_path):
    """A 1000×5 image passes the up-front check and is resized (not to 0 px) in training and evaluation."""
    from torch.utils.data import DataLoader

    from sasa.detection import create_detector
    from sasa.detection.data import collate_detection
    from sasa.detection.evaluate import evaluate_detector

    Image.new("RGB", (1000, 5), (90, 20, 20)).save(tmp_path / "wide.png")
    Image.new("RGB", (5, 1000), (20, 90, 20)).save(tmp_path / "tall.png")
    data = {"images": [{"id": 1, "file_name": "wide.png", "width": 1000, "height": 5},
                       {"id": 2, "file_name": "tall.png", "width": 5, "height": 1000}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 1, 200, 3]},
                            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 10, 3, 200]}],
            "categories": [{"id": 1, "name": "bar"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    dataset = CocoDetection(tmp_path, tmp_path / "ann.json", train=True)
    assert len(dataset) == 2 and not dataset.report.skipped
    model = create_detector("retinanet_resnet26", num_classes=1, min_size=64, max_size=64, fpn_channels=32,
                            anchor_size=8, score_thresh=0.0)
    images, targets = collate_detection([dataset[0], dataset[1]])
    losses = model.train()(images, targets)
    assert all(torch.isfinite(loss) for loss in losses.values())
    metrics = evaluate_detector(model, dataset, DataLoader(dataset, batch_size=2, collate_fn=collate_detection),
                                device=torch.device("cpu"))
    assert 0.0 <= metrics["AP"] <= 1.0
