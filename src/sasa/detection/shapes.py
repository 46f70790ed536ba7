"""A procedurally generated detection set: circles, squares and triangles, written as COCO + PNGs.

Each image has a random background colour with mild noise and 1..max_objects shapes of random
class, size, colour and position; shapes may overlap (box IoU up to 0.3; a later shape is drawn
over an earlier one). Deterministic: image i of split s depends only on (seed, s, i).

Layout of ``out``::

    train/000000.png ...   val/000000.png ...
    annotations/instances_train.json   annotations/instances_val.json
    COMPLETE  (written last: the set is whole and can be reused)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sasa.engine.io import check_output_dir
from sasa.errors import UserError

from sasa import env

CLASSES = ("circle", "square", "triangle")
SPLITS = ("train", "val")
MAX_OVERLAP_IOU = 0.3


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _colour(rng: np.random.Generator, avoid: np.ndarray) -> tuple[int, int, int]:
    """A random colour that differs clearly from ``avoid`` (the background)."""
    while True:
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - avoid).sum() > 200:
            return tuple(int(c) for c in colour)


def render_image(rng: np.random.Generator, img_size: int, max_objects: int):
    """One image and its objects: (PIL RGB image, [(class index, (x0, y0, x1, y1))])."""
    background = rng.integers(0, 256, 3)
    noise = rng.normal(0, 8, (img_size, img_size, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    objects = []
    min_size, max_size = max(6, img_size // 10), max(8, int(img_size * 0.45))
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            size = int(rng.integers(min_size, max_size + 1))
            x0, y0 = (int(v) for v in rng.integers(0, img_size - size + 1, 2))
            box = (x0, y0, x0 + size, y0 + size)
            if all(_iou(box, other) <= MAX_OVERLAP_IOU for _, other in objects):
                break
        else:
            continue
        label = int(rng.integers(len(CLASSES)))
        colour = _colour(rng, background)
        x1, y1 = x0 + size - 1, y0 + size - 1  # PIL's shape extents are inclusive
        if CLASSES[label] == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif CLASSES[label] == "square":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([(x0 + (size - 1) / 2, y0), (x0, y1), (x1, y1)], fill=colour)
        objects.append((label, box))
    return image, objects


def generate_shapes(
    out: str | os.PathLike,
    *,
    num_train: int = 1000,
    num_val: int = 200,
    img_size: int = 128,
    seed: int = 0,
    max_objects: int = 4,
) -> Path:
    """Write the shapes set to ``out`` (see module docstring) and return ``out``."""
    if img_size < 16:
        raise UserError(f"img_size must be at least 16, got {img_size}")
    if num_train < 0 or num_val < 0 or max_objects < 1:
        raise UserError(f"need num_train, num_val >= 0 and max_objects >= 1, got {num_train}, {num_val}, {max_objects}")
    out = Path(out)
    check_output_dir(out)  # a file, or a path under one, is a one-line error, not a NotADirectoryError
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "COMPLETE").unlink(missing_ok=True)
    categories = [{"id": index + 1, "name": name, "supercategory": "shape"} for index, name in enumerate(CLASSES)]
    for split_index, (split, count) in enumerate(zip(SPLITS, (num_train, num_val))):
        (out / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            rng = np.random.default_rng([seed, split_index, index])
            image, objects = render_image(rng, img_size, max_objects)
            file_name = f"{index:06d}.png"
            image.save(out / split / file_name)
            images.append({"id": index + 1, "file_name": file_name, "width": img_size, "height": img_size})
            for label, (x0, y0, x1, y1) in objects:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": index + 1, "category_id": label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                })
        info = {"description": "sasa shapes", "seed": seed, "img_size": img_size, "split": split}
        data = {"info": info, "images": images, "annotations": annotations, "categories": categories}
        target = out / "annotations" / f"instances_{split}.json"
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, target)
    (out / "COMPLETE").write_text(json.dumps({"num_train": num_train, "num_val": num_val, "img_size": img_size,
                                              "seed": seed, "max_objects": max_objects}))
    return out


def shapes_cache_dir(*, num_train: int, num_val: int, img_size: int, seed: int, max_objects: int = 4) -> Path:
    """Where ``--data shapes`` keeps a generated set: $SASA_CACHE (default ~/.cache/sasa)/detection/shapes-…"""
    root = env.cache_dir()
    return root / "detection" / f"shapes-train{num_train}-val{num_val}-{img_size}px-max{max_objects}-seed{seed}"


def ensure_shapes(**options) -> Path:
    """The cached shapes set for these options, generated first if it is not complete."""
    out = shapes_cache_dir(**options)
    if not (out / "COMPLETE").is_file():
        generate_shapes(out, **options)
    return out


def generate_shape_crops(
    out: str | os.PathLike,
    *,
    num_train: int = 1000,
    num_val: int = 200,
    img_size: int = 96,
    crop_size: int = 32,
    seed: int = 0,
    max_objects: int = 4,
) -> Path:
    """A classification set for backbone pre-training: one crop per shape, as an ImageFolder tree.

    Renders ``num_train`` + ``num_val`` shapes images (as :func:`generate_shapes`, but from streams
    of ``seed`` that the detection splits do not use), cuts a square around each object (side
    1.3–1.8× the object's, centre shifted by up to 15% of it, clipped to the image) and resizes it
    to ``crop_size``. Layout: ``out/{train,val}/{circle,square,triangle}/NNNNNN_K.png`` + ``COMPLETE``.
    ``sasa train --data out`` trains a classifier on it (README: two-step detection recipe).
    """
    if img_size < 16 or crop_size < 8:
        raise UserError(f"need img_size >= 16 and crop_size >= 8, got {img_size}, {crop_size}")
    if num_train <= 0 or num_val <= 0 or max_objects < 1:
        raise UserError(f"need num_train, num_val >= 1 and max_objects >= 1, got {num_train}, {num_val}, {max_objects}")
    out = Path(out)
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "COMPLETE").unlink(missing_ok=True)
    for split_index, (split, count) in enumerate(zip(SPLITS, (num_train, num_val))):
        for name in CLASSES:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            # streams 2 and 3: images the detection splits (streams 0 and 1) never show
            rng = np.random.default_rng([seed, 2 + split_index, index])
            image, objects = render_image(rng, img_size, max_objects)
            for number, (label, (x0, y0, x1, y1)) in enumerate(objects):
                size = x1 - x0
                side = max(8.0, size * rng.uniform(1.3, 1.8))
                cx, cy = (x0 + x1) / 2 + rng.uniform(-0.15, 0.15) * size, (y0 + y1) / 2 + rng.uniform(-0.15, 0.15) * size
                box = [max(0.0, cx - side / 2), max(0.0, cy - side / 2),
                       min(float(img_size), cx + side / 2), min(float(img_size), cy + side / 2)]
                crop = image.crop(tuple(round(v) for v in box)).resize((crop_size, crop_size), Image.BILINEAR)
                crop.save(out / split / CLASSES[label] / f"{index:06d}_{number}.png")
    (out / "COMPLETE").write_text(json.dumps({"num_train": num_train, "num_val": num_val, "img_size": img_size,
                                              "crop_size": crop_size, "seed": seed, "max_objects": max_objects}))
    return out
