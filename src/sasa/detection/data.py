"""COCO-format detection data: validate the whole annotation file up front, then serve images.

Policy for bad input (checked once, at load time, so nothing fails mid-epoch):

errors (:class:`sasa.errors.UserError` naming the entry, e.g. ``annotations[12]: missing key 'bbox'``):
  * the file is not JSON, or lacks a top-level ``images``, ``annotations`` or ``categories`` list;
  * an image without an integer ``id``, a ``file_name``, or positive integer ``width``/``height``;
  * an annotation without an integer ``image_id`` or ``category_id``, or a 4-number ``bbox`` (numbers
    a float can hold); an ``iscrowd`` other than the integers 0 and 1;
  * a category without an integer ``id``; duplicate image or category ids; no categories at all;
  * every image missing on disk (the image folder is almost certainly wrong).
counted skips (reported in :class:`LoadReport`, printed by the CLI):
  * ``image missing on disk`` / ``image unreadable`` / ``image size differs from json``: the image
    and its annotations are dropped (the size and decodability check opens every image header; it
    runs by default for up to 20 000 images, and with ``verify_images=True`` always);
  * ``unknown image_id`` / ``unknown category_id``: the annotation is dropped;
  * ``non-finite bbox``, ``negative-size bbox`` (width or height < 0), ``bbox outside the image``,
    ``zero-area bbox`` (width or height < 1 px after clipping to the image): the annotation is dropped;
  * ``bbox clipped to the image``: kept, clipped (counted, not dropped);
  * ``crowd``: ``iscrowd=1`` regions are not training targets, but stay in the evaluation ground
    truth, where pycocotools treats them as ignore regions.
Images without annotations are kept: they are negatives (empty targets are fine for RetinaNet).

Labels: COCO category ids (any integers) map to contiguous labels 0..K-1 in the order of sorted ids.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from sasa.errors import UserError
from sasa.images import open_rgb

VERIFY_IMAGES_UP_TO = 20_000


@dataclass
class LoadReport:
    """What was loaded and what was skipped or changed, with reasons."""

    ann_file: str
    num_images: int = 0
    num_annotations: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count (images or annotations)
    examples: dict = field(default_factory=dict)  # reason -> first offending entry, for the message

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, example)

    def summary(self) -> str:
        text = f"{self.ann_file}: {self.num_images} images, {self.num_annotations} boxes"
        for reason, count in sorted(self.skipped.items()):
            text += f"\n  {reason}: {count} (first: {self.examples[reason]})"
        return text

    def to_dict(self) -> dict:
        return {"ann_file": self.ann_file, "num_images": self.num_images, "num_annotations": self.num_annotations,
                "skipped": dict(self.skipped), "examples": self.examples}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """An int or float that converts to a float (a 400-digit JSON integer does not)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _check_structure(data, ann_file: str) -> None:
    """Raise one UserError listing (up to 5 of) every structural problem in the file."""
    if not isinstance(data, dict):
        raise UserError(f"{ann_file}: expected a JSON object with images/annotations/categories, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            got = "missing" if key not in data else type(data[key]).__name__
            raise UserError(f"{ann_file}: top-level {key!r} must be a list, got {got}")
    problems = []
    for index, image in enumerate(data["images"]):
        where = f"images[{index}]"
        if not isinstance(image, dict):
            problems.append(f"{where}: expected an object")
            continue
        for key in ("id", "file_name", "width", "height"):
            if key not in image:
                problems.append(f"{where}: missing key {key!r}")
        if "id" in image and not _is_int(image["id"]):
            problems.append(f"{where}: id must be an integer, got {image['id']!r}")
        if "file_name" in image and not isinstance(image["file_name"], str):
            problems.append(f"{where}: file_name must be a string, got {image['file_name']!r}")
        for key in ("width", "height"):
            if key in image and not (_is_int(image[key]) and image[key] > 0 and _is_number(image[key])):
                problems.append(f"{where}: {key} must be a positive integer, got {_short(image[key])}")
    for index, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            problems.append(f"categories[{index}]: needs an integer 'id', got {category!r}")
    for index, ann in enumerate(data["annotations"]):
        where = f"annotations[{index}]"
        if not isinstance(ann, dict):
            problems.append(f"{where}: expected an object")
            continue
        for key in ("image_id", "category_id", "bbox"):
            if key not in ann:
                problems.append(f"{where}: missing key {key!r}")
        for key in ("image_id", "category_id"):  # ids are integers (a list or a string can never match one)
            if key in ann and not _is_int(ann[key]):
                problems.append(f"{where}: {key} must be an integer, got {_short(ann[key])}")
        bbox = ann.get("bbox")
        if "bbox" in ann and not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            problems.append(f"{where}: bbox must be [x, y, width, height] numbers, got {_short(bbox)}")
        if "iscrowd" in ann and not (_is_int(ann["iscrowd"]) and ann["iscrowd"] in (0, 1)):  # "0" is not 0
            problems.append(f"{where}: iscrowd must be the integer 0 or 1, got {_short(ann['iscrowd'])}")
    image_ids = Counter(image["id"] for image in data["images"] if isinstance(image, dict) and _is_int(image.get("id")))
    category_ids = Counter(c["id"] for c in data["categories"] if isinstance(c, dict) and _is_int(c.get("id")))
    problems += [f"duplicate image id {i}" for i, n in image_ids.items() if n > 1]
    problems += [f"duplicate category id {i}" for i, n in category_ids.items() if n > 1]
    if not data["categories"]:
        problems.append("no categories")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise UserError(f"{ann_file}: malformed COCO annotations: {'; '.join(problems[:5])}{more}")


def _short(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a 400-digit number should not fill the message)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _image_problem(path: Path, width: int, height: int) -> str | None:
    try:
        with Image.open(path) as image:
            size = image.size
    except (OSError, UnidentifiedImageError):
        return "image unreadable"
    return None if size == (width, height) else "image size differs from json"


def load_coco(ann_file: str | os.PathLike, images_dir: str | os.PathLike, *, verify_images: bool | None = None):
    """Validate and clean a COCO detection file. Returns (clean COCO dict, LoadReport).

    The clean dict has only the kept images, categories sorted by id, and annotations with
    bboxes clipped to their image and an ``area`` (given if valid, else w·h) and ``iscrowd``.
    """
    ann_file, images_dir = Path(ann_file), Path(images_dir)
    if ann_file.is_dir():
        raise UserError(f"annotation file {str(ann_file)!r} is a folder; give the COCO .json file")
    if not ann_file.is_file():
        raise UserError(f"annotation file {str(ann_file)!r} does not exist")
    if images_dir.exists() and not images_dir.is_dir():
        raise UserError(f"image folder {str(images_dir)!r} is a file; give the folder holding the images")
    if not images_dir.is_dir():
        raise UserError(f"image folder {str(images_dir)!r} does not exist")
    try:
        data = json.loads(ann_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{ann_file}: not valid JSON ({error})") from None
    _check_structure(data, str(ann_file))
    report = LoadReport(str(ann_file))
    if verify_images is None:
        verify_images = len(data["images"]) <= VERIFY_IMAGES_UP_TO

    images, missing = {}, 0
    for image in data["images"]:
        path = images_dir / image["file_name"]
        if not path.is_file():
            missing += 1
            report.skip("image missing on disk", str(path))
            continue
        problem = _image_problem(path, image["width"], image["height"]) if verify_images else None
        if problem:
            report.skip(problem, str(path))
            continue
        images[image["id"]] = {key: image[key] for key in ("id", "file_name", "width", "height")}
    if data["images"] and missing == len(data["images"]):
        raise UserError(
            f"none of the {missing} images of {ann_file} is in {images_dir} (first: {data['images'][0]['file_name']!r})"
        )
    categories = sorted(({"id": c["id"], "name": str(c.get("name", c["id"]))} for c in data["categories"]),
                        key=lambda c: c["id"])
    category_ids = {c["id"] for c in categories}
    original_ids = {image["id"] for image in data["images"]}

    annotations = []
    for index, ann in enumerate(data["annotations"]):
        where = f"annotations[{index}]"
        image = images.get(ann["image_id"])
        if image is None:
            if ann["image_id"] not in original_ids:
                report.skip("unknown image_id", f"{where}: image_id {ann['image_id']!r}")
            continue  # its image was skipped (already counted)
        if ann["category_id"] not in category_ids:
            report.skip("unknown category_id", f"{where}: category_id {ann['category_id']!r}")
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            report.skip("non-finite bbox", f"{where}: {ann['bbox']}")
            continue
        if w < 0 or h < 0:
            report.skip("negative-size bbox", f"{where}: {ann['bbox']}")
            continue
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(image["width"])), min(y + h, float(image["height"]))
        if w >= 1 and h >= 1 and (x1 - x0 < 1 or y1 - y0 < 1):
            report.skip("bbox outside the image", f"{where}: {ann['bbox']} in {image['width']}x{image['height']}")
            continue
        if x1 - x0 < 1 or y1 - y0 < 1:
            report.skip("zero-area bbox", f"{where}: {ann['bbox']}")
            continue
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            report.skip("bbox clipped to the image", f"{where}: {ann['bbox']} in {image['width']}x{image['height']}")
        crowd = ann.get("iscrowd", 0)  # 0 or 1 (checked above)
        if crowd:
            report.skip("crowd", where)
        area = ann.get("area")
        if not (_is_number(area) and math.isfinite(area) and area > 0):
            area = (x1 - x0) * (y1 - y0)
        annotations.append({
            "id": len(annotations) + 1, "image_id": image["id"], "category_id": ann["category_id"],
            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(area), "iscrowd": crowd,
        })
    report.num_images = len(images)
    report.num_annotations = sum(1 for ann in annotations if not ann["iscrowd"])
    clean = {"images": list(images.values()), "annotations": annotations, "categories": categories}
    return clean, report


class CocoDetection(Dataset):
    """A validated COCO detection set: item i -> (image (3, H, W) float in [0, 1], target).

    target: ``boxes`` (N, 4) float xyxy in pixels, ``labels`` (N,) int64 in [0, K), ``image_id`` (int64
    scalar). Crowd regions are not targets. ``train=True`` adds a random horizontal flip.
    """

    def __init__(self, images_dir, ann_file, *, train: bool = False, verify_images: bool | None = None) -> None:
        self.images_dir = Path(images_dir)
        self.coco, self.report = load_coco(ann_file, images_dir, verify_images=verify_images)
        self.train = train
        self.categories = self.coco["categories"]
        self.class_names = [c["name"] for c in self.categories]
        self.label_to_category_id = [c["id"] for c in self.categories]
        self.category_id_to_label = {cid: label for label, cid in enumerate(self.label_to_category_id)}
        self.images = self.coco["images"]
        self.boxes_by_image: dict[int, list] = {image["id"]: [] for image in self.images}
        for ann in self.coco["annotations"]:
            if not ann["iscrowd"]:
                self.boxes_by_image[ann["image_id"]].append(ann)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, index: int) -> torch.Tensor:
        """(3, H, W) uint8 RGB."""
        return pil_to_tensor(open_rgb(self.images_dir / self.images[index]["file_name"]))

    def target(self, index: int) -> dict:
        image = self.images[index]
        anns = self.boxes_by_image[image["id"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                             dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self.category_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64)
        return {"boxes": boxes, "labels": labels, "image_id": torch.tensor(image["id"])}

    def __getitem__(self, index: int):
        image = self.load_image(index).float().div_(255)
        target = self.target(index)
        if self.train and torch.rand(()) < 0.5:
            image = image.flip(-1)
            width = image.shape[-1]
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
            target["boxes"] = boxes
        return image, target


def collate_detection(batch):
    """Detection batches are lists: images differ in size and targets in box count."""
    images, targets = zip(*batch)
    return list(images), list(targets)
