"""``sasa export CHECKPOINT --format onnx --out model.onnx`` on a classifier checkpoint."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime
import torch

from sasa.classification.checkpoint import load_checkpoint
from sasa.cli.main import main
from sasa.engine.checkpoint import checkpoint_metadata
from sasa.engine.io import save_weights
from sasa.models import create_model

SMALL = dict(layers=(1, 1, 1, 1), widths=(8, 8, 8, 16), stem_channels=16, num_heads=2, kernel_size=3)
PREPROCESS = {"kind": "folder", "img_size": 64, "resize": 73, "mean": [0.485, 0.456, 0.406],
              "std": [0.229, 0.224, 0.225], "grayscale": False}


def _checkpoint(path, name: str, **overrides):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **overrides)
    for module in model.modules():  # non-trivial BN (zero-init residual would hide the blocks)
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    meta = checkpoint_metadata(task="classification", model=name, model_config=dataclasses.asdict(model.config),
                               class_names=["a", "b", "c"], img_size=64, num_classes=3, in_chans=3, preprocess=PREPROCESS)
    save_weights(path, model.state_dict(), meta)
    return path


def test_export_onnx_runs_at_two_sizes(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "model.safetensors", "sa_resnet26", **SMALL)
    out = tmp_path / "out" / "model.onnx"
    assert main(["export", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    assert "output 'logits'" in capsys.readouterr().out
    props = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert props["class_names"] == ["a", "b", "c"] and props["preprocess"] == PREPROCESS
    model, _ = load_checkpoint(ckpt)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 64, 64), (1, 3, 72, 50)]:  # one file, two image sizes and batch sizes
        x = torch.randn(*shape)
        with torch.no_grad():
            want = model(x).numpy()
        np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0], want, atol=1e-4, rtol=1e-4)


def test_export_errors(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "axial.safetensors", "axial_resnet26_s", layers=(1, 1, 1, 1))
    out = tmp_path / "model.onnx"
    assert main(["export", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "sasa export: error:" in err and "'layer1.0.conv2' (AxialMixer2d)" in err
    assert main(["export", str(tmp_path / "missing.safetensors"), "--out", str(out)]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    assert not out.exists()
