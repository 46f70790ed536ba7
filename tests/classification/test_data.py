import numpy as np
import pytest
import torch
from PIL import Image

from sasa.classification.data import build_eval_transform, collate_skipping, load_classification_data, subset
from sasa.errors import UserError


def make_image_folder(root, classes=("cat", "dog"), splits=("train", "val"), per_class=3, size=12):
    rng = np.random.default_rng(0)
    for split in splits:
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_digits_split_is_fixed_stratified_and_sized():
    data = load_classification_data("digits", img_size=32)
    assert (len(data.train), len(data.val)) == (1437, 360)
    image, label = data.val[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    counts = torch.bincount(data.val.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 36 ± 1 per class
    again = load_classification_data("digits", img_size=32)
    assert torch.equal(again.val.images, data.val.images)


def test_digits_augmentation_shifts_but_eval_does_not():
    data = load_classification_data("digits", img_size=32)
    torch.manual_seed(0)
    shifted = [data.train[0][0] for _ in range(8)]
    assert any(not torch.equal(shifted[0], s) for s in shifted[1:])
    assert torch.equal(data.val[0][0], data.val[0][0])


def test_digits_eval_transform_matches_the_dataset(tmp_path):
    """What `sasa predict` does to an image file is what training did to the array."""
    from sklearn.datasets import load_digits

    data = load_classification_data("digits", img_size=32)
    raw = load_digits().images[0]
    path = tmp_path / "digit.png"
    Image.fromarray((raw * 255 / 16).round().astype(np.uint8), mode="L").save(path)
    from sasa.classification.data import DigitsDataset

    reference = DigitsDataset(raw[None], np.array([0]), img_size=32, mean=data.val.mean, std=data.val.std, augment=False)[0][0]
    with Image.open(path) as image:
        produced = build_eval_transform(data.preprocess)(image.convert("RGB"))
    assert produced.shape == reference.shape
    assert (produced - reference).abs().mean() < 0.05


def test_image_folder_loads_classes_and_subsets(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=("a", "b", "c"))
    data = load_classification_data(str(root), img_size=8)
    assert data.class_names == ["a", "b", "c"]
    assert len(data.train) == 9
    image, label = data.val[0]
    assert image.shape == (3, 8, 8)
    small = subset(data.train, 4)
    assert len(small) == 4 and len({data.train.samples[i][1] for i in small.indices}) > 1


@pytest.mark.parametrize(
    "setup, error, message",
    [
        (lambda root: None, UserError, "neither 'digits' nor an existing folder"),
        (lambda root: root.mkdir(), UserError, "no train/ or val/"),
        (lambda root: make_image_folder(root, splits=("train",)), UserError, "no val/"),
        (lambda root: ((root / "train").mkdir(parents=True), (root / "val").mkdir()), UserError, "no class folders"),
        (lambda root: ((root / "train" / "a").mkdir(parents=True), (root / "val" / "a").mkdir(parents=True)),
         ValueError, "no image files"),
    ],
)
def test_bad_folders_are_clear_errors(tmp_path, setup, error, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(error, match=message):
        load_classification_data(str(root), img_size=8)


def test_train_and_val_with_different_classes(tmp_path):
    root = make_image_folder(tmp_path / "data", splits=("train",), classes=("a", "b"))
    make_image_folder(root, splits=("val",), classes=("a", "c"))
    with pytest.raises(ValueError, match=r"only in train: \['b'\], only in val: \['c'\]"):
        load_classification_data(str(root), img_size=8)


def test_item17_unreadable_training_images_are_replaced_within_their_class_and_counted(tmp_path):
    root = make_image_folder(tmp_path / "data")
    (root / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    (root / "val" / "dog" / "broken.png").write_bytes(b"")
    data = load_classification_data(str(root), img_size=8)
    with pytest.warns(RuntimeWarning, match="broken.png"):
        items = [data.train[i] for i in range(len(data.train))]
    images, labels, unreadable = collate_skipping(items)
    assert unreadable == 1 and images.shape[0] == len(data.train) == 7  # the batch keeps its size
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1]  # the broken cat became another cat
    with pytest.warns(RuntimeWarning, match="broken.png"):
        val_items = [data.val[i] for i in range(len(data.val))]
    images, labels, skipped = collate_skipping(val_items)  # evaluation skips, and counts
    assert skipped == 1 and images.shape[0] == len(data.val) - 1
    assert collate_skipping([None, None]) == (None, None, 2)


def test_item23_sixteen_bit_grayscale_pngs_load_like_their_eight_bit_copies(tmp_path):
    """ImageFolder items and the eval transform of both recipes (predict) scale 16-bit data, not clip it."""
    root = make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=1, size=12)
    eight = Image.open(root / "val" / "a" / "0.png").convert("L")
    eight.save(root / "val" / "a" / "0.png")
    Image.fromarray(np.asarray(eight, dtype=np.uint16) * 257).save(root / "val" / "b" / "0.png")  # mode I;16
    data = load_classification_data(str(root), img_size=8)
    (from_eight, _), (from_sixteen, _) = data.val[0], data.val[1]
    assert torch.equal(from_eight, from_sixteen)
    digits = load_classification_data("digits", img_size=8).preprocess
    with Image.open(root / "val" / "a" / "0.png") as a, Image.open(root / "val" / "b" / "0.png") as b:
        assert b.mode == "I;16"
        for preprocess in (data.preprocess, digits):
            transform = build_eval_transform(preprocess)
            assert torch.equal(transform(a), transform(b))


def test_item17_a_batch_of_only_unreadable_images_stays_full_and_counted(tmp_path):
    """Batches used to shrink (or vanish, uncounted, shortening the lr schedule); now every batch is full."""
    root = make_image_folder(tmp_path / "data", per_class=2)
    for i in range(4):
        (root / "train" / "dog" / f"empty{i}.png").write_bytes(b"")
    data = load_classification_data(str(root), img_size=8)
    with pytest.warns(RuntimeWarning):
        batch = collate_skipping([data.train[i] for i in range(4, 8)])  # the four empty dog files
    images, labels, unreadable = batch
    assert unreadable == 4 and images.shape[0] == 4 and labels.tolist() == [1, 1, 1, 1]


def _all_unreadable(root, splits=("train", "val")):
    make_image_folder(root, splits=splits)
    for path in root.rglob("*.png"):
        path.write_bytes(b"")
    return root


@pytest.mark.parametrize("train", [True, False])
def test_item16_data_with_no_readable_image_is_an_error(tmp_path, train):
    root = _all_unreadable(tmp_path / "data")
    split = "training" if train else "validation"
    with pytest.raises(UserError, match=f"{split} data: none of the 6 image files .* is readable"):
        load_classification_data(str(root), img_size=8, train=train)


def test_item16_evaluating_no_readable_image_is_an_error():
    from sasa.engine import DistributedContext
    from sasa.classification.task import ClassificationTask
    import contextlib

    loader = [(None, None, 3)]
    with pytest.raises(UserError, match="no readable image to evaluate: all 3 images are unreadable"):
        ClassificationTask(num_classes=2).evaluate(torch.nn.Identity(), loader, DistributedContext(), contextlib.nullcontext)


def test_item30_an_empty_training_class_folder_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "data")
    (root / "train" / "emu").mkdir()
    (root / "val" / "emu").mkdir()
    with pytest.raises(UserError, match="training data: class folder.* with no image file .*: emu .*cannot be learnt"):
        load_classification_data(str(root), img_size=8)


def test_item30_an_empty_validation_class_folder_is_warned_about(tmp_path):
    root = make_image_folder(tmp_path / "data")
    make_image_folder(root, classes=("emu",), splits=("train",))
    (root / "val" / "emu").mkdir()
    with pytest.warns(UserWarning, match="validation data: class folder.* with no image file .*: emu: .*never evaluated"):
        data = load_classification_data(str(root), img_size=8)
    assert data.class_names == ["cat", "dog", "emu"]
    with pytest.warns(UserWarning, match="emu: these classes are never evaluated"):
        load_classification_data(str(root), img_size=8, train=False)


def test_item30_a_class_with_no_readable_training_image_is_flagged(tmp_path):
    root = make_image_folder(tmp_path / "data")
    for path in (root / "train" / "dog").glob("*.png"):
        path.write_bytes(b"")
    with pytest.warns(UserWarning, match="training data: no readable image in class.* dog .*never learnt"):
        data = load_classification_data(str(root), img_size=8)
    with pytest.warns(RuntimeWarning):
        _, label, replaced = data.train[3]  # a dog file: replaced by a cat
    assert (label, replaced) == (0, 1)
