"""`sasa train / eval / predict` edge cases of issue 14: few classes, tiny images, a digits checkpoint on
an ImageFolder, and data in which no image is readable."""
import json

import numpy as np
import pytest
from PIL import Image

from sasa.cli.main import main

TINY = ["--img-size", "16", "--batch-size", "4", "--epochs", "1", "--workers", "0", "--device", "cpu", "--quiet"]


def make_image_folder(root, classes, per_class=4, size=16):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp("three") / "data", ("a", "b", "c"))
    out = root.parent / "run"
    assert main(["train", "--model", "resnet26", "--data", str(root), "--out", str(out), *TINY]) == 0
    return root, out / "last.safetensors"


def test_item18_predict_defaults_to_at_most_as_many_classes_as_the_checkpoint_has(capsys, three_classes):
    root, checkpoint = three_classes
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(checkpoint), str(root / "val" / "a" / "0.png"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert sorted(entry["class"] for entry in record["topk"]) == ["a", "b", "c"]


def test_item18_eval_reports_top5_only_for_more_than_five_classes(capsys, tmp_path, three_classes):
    root, checkpoint = three_classes
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(root), "--out", str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "top-5" not in printed
    result = json.loads((tmp_path / "e.json").read_text())
    assert "top1" in result and "top5" not in result
    rows = [json.loads(line) for line in (checkpoint.parent / "metrics.jsonl").read_text().splitlines()]
    assert "val_top1" in rows[0] and "val_top5" not in rows[0]


def test_item29_attention_models_train_at_8_pixels(tmp_path):
    out = tmp_path / "sa8"
    assert main(["train", "--model", "sa_resnet26", "--data", "digits", "--out", str(out), "--limit-train", "8",
                 "--limit-val", "8", *TINY[2:], "--img-size", "8"]) == 0
    assert (out / "last.safetensors").exists()


def test_item33_a_digits_checkpoint_evaluates_on_an_image_folder_of_the_digits(capsys, tmp_path):
    """The same 100 validation digits as arrays (--data digits) and as PNG files in an ImageFolder."""
    from sasa.classification.data import load_classification_data

    out = tmp_path / "digits"
    assert main(["train", "--model", "resnet26", "--data", "digits", "--out", str(out), "--limit-train", "512",
                 "--limit-val", "100", "--img-size", "16", "--batch-size", "32", "--epochs", "4", "--warmup-epochs", "0",
                 "--quiet"]) == 0
    from sasa.classification.data import subset

    val = subset(load_classification_data("digits", img_size=16).val, 100, seed=0)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    _, images, _, labels = train_test_split(digits.images, digits.target, test_size=0.2, random_state=0,
                                            stratify=digits.target)
    for position, index in enumerate(val.indices):
        folder = tmp_path / "folder" / "val" / str(labels[index])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((images[index] * 255 / 16).round().astype(np.uint8), mode="L").save(folder / f"{position}.png")
    checkpoint = str(out / "last.safetensors")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", checkpoint, "--data", "digits", "--limit-val", "100",
                 "--out", str(tmp_path / "arrays.json")]) == 0
    assert main(["eval", "--checkpoint", checkpoint, "--data", str(tmp_path / "folder"),
                 "--out", str(tmp_path / "files.json")]) == 0, capsys.readouterr().err
    arrays, files = (json.loads((tmp_path / name).read_text()) for name in ("arrays.json", "files.json"))
    assert files["images"] == arrays["images"] == 100
    assert arrays["top1"] > 20, arrays  # better than chance (10%): the comparison below means something
    assert files["top1"] == pytest.approx(arrays["top1"], abs=3), (files, arrays)


@pytest.mark.parametrize("command", ["train", "eval"])
def test_item16_data_with_no_readable_image_stops_with_an_error(capsys, tmp_path, three_classes, command):
    root = make_image_folder(tmp_path / "broken", ("a", "b"))
    for path in root.rglob("*.png"):
        path.write_bytes(b"")
    if command == "train":
        argv = ["train", "--model", "resnet26", "--data", str(root), "--out", str(tmp_path / "run"), *TINY]
    else:
        argv = ["eval", "--checkpoint", str(three_classes[1]), "--data", str(root)]
    capsys.readouterr()
    assert main(argv) == 2
    assert "none of the 8 image files" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
