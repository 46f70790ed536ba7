"""``sasa attention-map``: a PNG per call from a classifier checkpoint."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from sasa.cli.main import main
from sasa.engine.checkpoint import checkpoint_metadata
from sasa.engine.io import save_weights
from sasa.models import create_model

SMALL = dict(layers=(1, 1, 1, 1), widths=(16, 16, 16, 32), stem_channels=16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("attn")
    model = create_model("sa_resnet26", num_classes=3, **SMALL)
    preprocess = {"kind": "folder", "img_size": 64, "resize": 73, "mean": [0.485, 0.456, 0.406],
                  "std": [0.229, 0.224, 0.225], "grayscale": False}
    meta = checkpoint_metadata(task="classification", model="sa_resnet26", model_config=dataclasses.asdict(model.config),
                               class_names=["a", "b", "c"], img_size=64, num_classes=3, in_chans=3, preprocess=preprocess)
    save_weights(directory / "model.safetensors", model.state_dict(), meta)
    image = directory / "image.png"
    Image.fromarray((np.random.default_rng(0).random((80, 90, 3)) * 255).astype("uint8")).save(image)
    return directory / "model.safetensors", image


def test_attention_map_writes_png(checkpoint, tmp_path, capsys):
    ckpt, image = checkpoint
    out = tmp_path / "map.png"
    assert main(["attention-map", "--checkpoint", str(ckpt), str(image), "--pixel", "20,40", "--out", str(out)]) == 0
    picture = Image.open(out)
    assert picture.size[0] > 300 and "layer1.0.conv2" in capsys.readouterr().out


def test_attention_map_errors(checkpoint, tmp_path, capsys):
    ckpt, image = checkpoint
    args = ["attention-map", "--checkpoint", str(ckpt), str(image), "--out", str(tmp_path / "m.png")]
    assert main([*args, "--pixel", "64,0"]) == 2
    assert "lies outside the 64x64 image" in capsys.readouterr().err
    assert main([*args, "--pixel", "1,1", "--layer", "nope"]) == 2
    assert "choices: layer1.0.conv2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--pixel", "1"])
    assert not (tmp_path / "m.png").exists()
