"""Classification data: the embedded ``digits`` set and ImageFolder trees, with their preprocessing.

``DATA`` is either ``digits`` (scikit-learn's bundled 8×8 handwritten digits, 1797 images, no
download) or a folder in ImageFolder layout::

    DATA/train/CLASS_NAME/*.jpg|png|...      DATA/val/CLASS_NAME/*.jpg|png|...

Unreadable image files (truncated, not an image) are **counted with a warning**, so one bad file
does not end a long run: in training each is replaced by a readable image of the same class (of
another class if its class has none), so every batch stays full and every process takes part in every
step (``train_skipped_images`` in the metrics); in evaluation they are skipped (``val_skipped_images``,
``skipped_images`` in ``sasa eval``). Up front, one image per class is decoded: a folder with no
class folder, a training class folder with no image file, or a split with no readable image is an
error; a validation class with no image file and a class with no readable image are warned about.

Every bundle carries a ``preprocess`` dict (stored in checkpoints) from which
:func:`build_eval_transform` rebuilds the evaluation transform for ``sasa predict``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset

from sasa.errors import UserError
from sasa.images import open_rgb, to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_PCT = 0.875  # resize 256 → centre crop 224
DIGITS_SPLIT_SEED = 0  # the train/val split of digits is fixed, whatever --seed says
DIGITS_VAL_FRACTION = 0.2
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class ClassificationData:
    """Datasets of one source and what a checkpoint must remember to preprocess like them."""

    name: str  # "digits" or the folder path
    kind: str  # "digits" or "folder"
    train: Dataset | None
    val: Dataset
    class_names: list[str]
    in_chans: int
    img_size: int
    preprocess: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# digits


class DigitsDataset(Dataset):
    """8×8 digits upsampled (bilinear) to ``img_size``, normalised, replicated to 3 channels.

    ``augment`` shifts each image by up to ``img_size // 8`` pixels (zero background) -- a digit
    moved by one original pixel, the only augmentation that suits centred handwritten digits.
    Items: ``(image (3, S, S) float32, label int)``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, img_size: int, mean: float, std: float,
                 augment: bool) -> None:
        pixels = torch.from_numpy(images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
        self.images = F.interpolate(pixels, size=(img_size, img_size), mode="bilinear", align_corners=False)
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.mean, self.std, self.augment = mean, std, augment
        self.shift = max(1, img_size // 8)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.augment:
            size, s = image.shape[-1], self.shift
            padded = F.pad(image, (s, s, s, s))
            dy, dx = torch.randint(0, 2 * s + 1, (2,)).tolist()
            image = padded[:, dy : dy + size, dx : dx + size]
        image = (image - self.mean) / self.std
        return image.expand(3, -1, -1).contiguous(), int(self.labels[index])


def load_digits_data(*, img_size: int) -> ClassificationData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_val, y_train, y_val = train_test_split(
        digits.images, digits.target, test_size=DIGITS_VAL_FRACTION, random_state=DIGITS_SPLIT_SEED,
        stratify=digits.target,
    )
    pixels = x_train.astype(np.float64) / 16.0
    mean, std = float(pixels.mean()), float(pixels.std())
    options = dict(img_size=img_size, mean=mean, std=std)
    return ClassificationData(
        name="digits", kind="digits",
        train=DigitsDataset(x_train, y_train, augment=True, **options),
        val=DigitsDataset(x_val, y_val, augment=False, **options),
        class_names=[str(i) for i in range(10)], in_chans=3, img_size=img_size,
        preprocess={"kind": "digits", "img_size": img_size, "mean": [mean] * 3, "std": [std] * 3, "grayscale": True},
    )


# ---------------------------------------------------------------------------------------------
# ImageFolder


def _read_rgb(path: str, *, what: str) -> Image.Image | None:
    """The image as RGB, or None (with a warning) if the file cannot be decoded."""
    try:
        return open_rgb(path)  # 16-bit images scaled to 8 bits, not clipped
    except (OSError, UnidentifiedImageError, ValueError) as error:
        warnings.warn(f"unreadable image {path} ({what}): {error}", RuntimeWarning, stacklevel=2)
        return None


class SkippingImageFolder(Dataset):
    """ImageFolder that survives unreadable files (each warned about once per process).

    ``replace_unreadable`` (training): an unreadable item is replaced by the next readable image of
    its class (else of any class) and the item is ``(image, label, 1)``, readable ones
    ``(image, label, 0)``; batches never shrink, so under DDP every rank runs every step. Otherwise
    (evaluation) an unreadable item is ``None``. :func:`collate_skipping` counts both kinds.
    """

    def __init__(self, samples: list[tuple[str, int]], transform, *, replace_unreadable: bool = False) -> None:
        self.samples, self.transform, self.replace_unreadable = samples, transform, replace_unreadable
        self.class_indices: dict[int, list[int]] = {}
        for index, (_, label) in enumerate(samples):
            self.class_indices.setdefault(label, []).append(index)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = _read_rgb(path, what="replaced in training" if self.replace_unreadable else "skipped")
        if image is not None:
            return (self.transform(image), label, 0) if self.replace_unreadable else (self.transform(image), label)
        if not self.replace_unreadable:
            return None
        for candidate in self._replacements(index):
            image = _read_rgb(self.samples[candidate][0], what="replaced in training")
            if image is not None:
                return self.transform(image), self.samples[candidate][1], 1
        raise RuntimeError(f"no image of the {len(self)} training images is readable any more (first: {self.samples[0][0]})")

    def _replacements(self, index: int):
        """Same-class indices after ``index`` (wrapping round), then every other index: deterministic,
        so a resumed run replaces like an uninterrupted one."""
        same = self.class_indices[self.samples[index][1]]
        start = same.index(index)
        yield from same[start + 1 :] + same[:start]
        others = set(same)
        yield from (i for i in range(len(self)) if i not in others)


def collate_skipping(batch: Sequence[Any]) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """``(images, labels, unreadable)``: default collate of the items that are not None, and how many
    images were unreadable (items that are None, and replaced items ``(image, label, 1)``)."""
    kept = [item for item in batch if item is not None]
    skipped = len(batch) - len(kept) + sum(int(item[2]) for item in kept if len(item) > 2)
    if not kept:
        return None, None, skipped
    images, labels = torch.utils.data.default_collate([item[:2] for item in kept])
    return images, labels, skipped


def _class_dirs(root: Path) -> list[str]:
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def _samples(root: Path, class_names: list[str]) -> list[tuple[str, int]]:
    samples = []
    for label, name in enumerate(class_names):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                samples.append((str(path), label))
    return samples


def _decodable(path: str) -> bool:
    try:
        with Image.open(path) as image:
            image.draft("RGB", (16, 16))  # JPEG: decode at 1/8 scale, enough to find a broken file
            image.load()
        return True
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def _names(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _check_classes(root: Path, classes: list[str], samples: list[tuple[str, int]], *, what: str, training: bool) -> None:
    """Class folders with no image file (an error in training: a class that cannot be learnt; a warning
    in validation: never evaluated), and classes whose files are all unreadable (found by decoding each
    class's files until one works, usually the first): warned about; no readable image at all is an error."""
    paths: dict[int, list[str]] = {label: [] for label in range(len(classes))}
    for path, label in samples:
        paths[label].append(path)
    empty = [classes[label] for label, files in paths.items() if not files]
    if empty:
        message = f"{what}: class folder(s) of {str(root)!r} with no image file {IMAGE_EXTENSIONS}: {_names(empty)}"
        if training:
            raise UserError(f"{message} (a class without training images cannot be learnt: remove the folder or add images)")
        warnings.warn(f"{message}: these classes are never evaluated", UserWarning, stacklevel=3)
    unreadable = [classes[label] for label, files in paths.items() if files and not any(map(_decodable, files))]
    if len(unreadable) + len(empty) == len(classes):
        raise UserError(f"{what}: none of the {len(samples)} image files in {str(root)!r} is readable")
    if unreadable:
        effect = "never learnt (their images are replaced by other classes')" if training else "never evaluated"
        warnings.warn(f"{what}: no readable image in class(es) {_names(unreadable)} of {str(root)!r}: {effect}",
                      UserWarning, stacklevel=3)


def _check_split(root: Path, what: str) -> list[str]:
    if not root.is_dir():
        raise UserError(f"{what}: folder {str(root)!r} does not exist")
    classes = _class_dirs(root)
    if not classes:
        raise UserError(f"{what}: folder {str(root)!r} has no class folders (expected {root}/CLASS_NAME/IMAGE)")
    return classes


def folder_transforms(img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Standard ResNet augmentation (random-resized crop + flip) and eval (resize 256/224 × S, centre crop S)."""
    from torchvision import transforms as T

    train = T.Compose([
        T.RandomResizedCrop(img_size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std),
    ])
    return train, build_eval_transform(folder_preprocess(img_size, mean, std))


def folder_preprocess(img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> dict[str, Any]:
    return {"kind": "folder", "img_size": img_size, "resize": int(round(img_size / EVAL_CROP_PCT)),
            "mean": list(mean), "std": list(std), "grayscale": False}


def load_folder_data(root: str | Path, *, img_size: int, train: bool = True) -> ClassificationData:
    """``root/train`` and ``root/val`` (``train=False``: only ``val``; ``root`` itself if it has no ``val``)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data {str(root)!r} is neither 'digits' nor an existing folder")
    train_tf, eval_tf = folder_transforms(img_size)
    layout = f"expected ImageFolder layout {root}/train/CLASS/IMAGE and {root}/val/CLASS/IMAGE"
    if train:
        if not (root / "train").is_dir() or not (root / "val").is_dir():
            missing = [name for name in ("train", "val") if not (root / name).is_dir()]
            raise UserError(f"data folder {str(root)!r} has no {' or '.join(m + '/' for m in missing)} ({layout})")
        classes = _check_split(root / "train", "training data")
        val_classes = _check_split(root / "val", "validation data")
        if classes != val_classes:
            only_train = sorted(set(classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(classes))
            raise UserError(
                f"train/ and val/ of {str(root)!r} have different classes: only in train: {only_train}, only in val: {only_val}"
            )
        train_samples = _samples(root / "train", classes)
        if not train_samples:
            raise UserError(f"training data: {str(root / 'train')!r} has class folders but no image files {IMAGE_EXTENSIONS}")
        _check_classes(root / "train", classes, train_samples, what="training data", training=True)
        train_set = SkippingImageFolder(train_samples, train_tf, replace_unreadable=True)
    else:
        classes = _check_split(root / "val" if (root / "val").is_dir() else root, "evaluation data")
        train_set = None
    val_root = root / "val" if (root / "val").is_dir() else root
    val_samples = _samples(val_root, classes)
    if not val_samples:
        raise UserError(f"validation data: {str(val_root)!r} has class folders but no image files {IMAGE_EXTENSIONS}")
    _check_classes(val_root, classes, val_samples, what="validation data", training=False)
    return ClassificationData(
        name=str(root), kind="folder", train=train_set, val=SkippingImageFolder(val_samples, eval_tf),
        class_names=classes, in_chans=3, img_size=img_size, preprocess=folder_preprocess(img_size),
    )


# ---------------------------------------------------------------------------------------------


def load_classification_data(spec: str, *, img_size: int, train: bool = True) -> ClassificationData:
    """``"digits"`` or an ImageFolder path; see the module docstring."""
    if spec == "digits":
        return load_digits_data(img_size=img_size)
    return load_folder_data(spec, img_size=img_size, train=train)


def subset(dataset: Dataset, limit: int | None, *, seed: int = 0) -> Dataset:
    """The first ``limit`` items of a fixed seeded permutation (classes stay mixed); all if None."""
    if limit is None or limit >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit]
    return Subset(dataset, sorted(order.tolist()))


def build_eval_transform(preprocess: dict[str, Any]):
    """PIL image → normalised (3, S, S) tensor, as the model saw its validation images."""
    from torchvision import transforms as T

    size = int(preprocess["img_size"])
    mean, std = preprocess["mean"], preprocess["std"]
    if preprocess.get("kind") == "digits":
        return T.Compose([
            T.Lambda(_to_rgb), T.Grayscale(1), T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR), T.ToTensor(),
            T.Normalize(mean[:1], std[:1]), T.Lambda(_to_three_channels),
        ])
    return T.Compose([
        T.Lambda(_to_rgb), T.Resize(int(preprocess["resize"])), T.CenterCrop(size),
        T.ToTensor(), T.Normalize(mean, std),
    ])


def _to_rgb(image: Image.Image) -> Image.Image:  # module-level functions pickle into DataLoader workers
    return to_rgb(image)  # 16-bit images scaled to 8 bits, not clipped


def _to_three_channels(image: torch.Tensor) -> torch.Tensor:
    return image.expand(3, -1, -1).contiguous()
