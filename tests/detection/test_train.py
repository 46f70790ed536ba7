"""Detection training set-up: what is checked before the first step."""
import json

import pytest
from PIL import Image

from sasa.detection.options import resolve_options
from sasa.detection.train import train
from sasa.errors import UserError


def _coco_split(root, name, category_ids):
    folder = root / name
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(folder / "1.png")
    data = {"images": [{"id": 1, "file_name": "1.png", "width": 32, "height": 32}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": category_ids[0], "bbox": [4, 4, 12, 12]}],
            "categories": [{"id": cid, "name": name} for cid, name in zip(category_ids, ("a", "b", "c"))]}
    (root / f"{name}.json").write_text(json.dumps(data))
    return str(folder), str(root / f"{name}.json")


def test_item9_train_and_val_category_ids_must_match_not_only_names(tmp_path):
    images, ann = _coco_split(tmp_path, "train", [1, 2, 3])
    val_images, val_ann = _coco_split(tmp_path, "val", [11, 12, 13])  # same names, other ids
    options = resolve_options({"data": "coco", "images": images, "ann": ann, "val_images": val_images,
                               "val_ann": val_ann, "img_size": 32, "fpn_channels": 32, "anchor_size": 8,
                               "epochs": 2, "warmup_epochs": 0.0, "quiet": True})
    with pytest.raises(UserError, match=r"categories \(id, name\) differ: .*\(1, 'a'\).*\(11, 'a'\)"):
        train(options, out=str(tmp_path / "run"))
    assert not (tmp_path / "run" / "last.safetensors").exists()
