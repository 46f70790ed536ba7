"""Axial-ResNets (Axial-DeepLab, SPEC §8): sizes vs the paper, every model trains, any input size, timm, detection."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import sasa
from sasa.detection import create_detector
from sasa.layers import AxialAttention2d, AxialMixer2d
from sasa.models.resnet import Bottleneck
from sasa.profile import count_flops, count_params

AXIAL_MODELS = ["axial_resnet26_s", "axial_resnet50_s", "axial_resnet50_m", "axial_resnet50_l", "axial_resnet50_s_full"]
# SPEC §8 at 224×224, 1000 classes: (params M, GFLOPs = 2 × multiply-adds or None where the source gives none)
PAPER = {
    "axial_resnet26_s": (5.9, None),  # the public port's model zoo
    "axial_resnet50_s": (12.4, 5.6),  # Axial-DeepLab Table 1, Conv-Stem + Axial-Attention (2.8 B multiply-adds)
    "axial_resnet50_s_full": (12.5, 6.6),  # Axial-DeepLab Table 1, Full Axial-Attention (3.3 B multiply-adds)
}


def test_registered():
    assert set(AXIAL_MODELS) <= set(sasa.list_models())


@pytest.mark.parametrize("name", sorted(PAPER))
def test_params_and_flops_match_the_paper(name):
    params, gflops = PAPER[name]
    model = sasa.create_model(name)
    assert count_params(model) / 1e6 == pytest.approx(params, rel=0.02)
    if gflops is not None:
        assert count_flops(model, 224) / 1e9 == pytest.approx(gflops, rel=0.05)


def test_the_table_1_rows_are_the_half_width_layout():
    """12.4M / 2.8 B multiply-adds is the ×0.5 ("S") width: ×0.75 and ×1 are 2.1× and 3.6× that; ×1 has ~45M params."""
    flops = {size: count_flops(sasa.create_model(f"axial_resnet50_{size}"), 224) / 1e9 for size in "sml"}
    assert flops["s"] == pytest.approx(5.6, rel=0.05)
    assert flops["m"] / flops["s"] > 2 and flops["l"] / flops["s"] > 3.5
    assert count_params(sasa.create_model("axial_resnet50_l")) / 1e6 == pytest.approx(45, rel=0.02)


def test_paper_counts_include_the_255_offset_tables():
    """With tables sized to each layer's span the same network has 0.9M fewer parameters (7% below the paper)."""
    full = count_params(sasa.create_model("axial_resnet50_s_full"))
    trimmed = count_params(sasa.create_model("axial_resnet50_s_full", attention={"span": 15}))
    assert (full - trimmed) / 1e6 == pytest.approx(0.96, abs=0.05)


def test_layout():
    model = sasa.create_model("axial_resnet50_s", num_classes=5)
    assert type(model) is sasa.models.ResNet and model.config.expansion == 2
    mixer = model.layer2[0].conv2
    assert isinstance(mixer, AxialMixer2d) and mixer.stride == 2
    assert (mixer.height.axis, mixer.width.axis, mixer.height.num_heads, mixer.height.span) == ("height", "width", 8, None)
    assert [model.layer1[0].conv2.height.out_channels, model.layer4[0].conv2.height.out_channels] == [64, 512]
    full = sasa.create_model("axial_resnet50_s_full", num_classes=5)
    blocks = [m for m in full.stem if isinstance(m, Bottleneck)]
    assert len(blocks) == 3 and blocks[0].conv2.stride == 2 and isinstance(full.stem[3], torch.nn.MaxPool2d)
    assert {m.span for m in full.modules() if isinstance(m, AxialAttention2d)} == {15}


@pytest.mark.parametrize("name", AXIAL_MODELS)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = sasa.create_model(name, num_classes=7, zero_init_residual=False)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7)
    out.square().mean().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
        assert param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("size", [(32, 32), (224, 224), (96, 160)])
def test_timm_any_input_size(size):
    model = timm.create_model("axial_resnet26_s", num_classes=10).eval()
    assert isinstance(model, sasa.models.ResNet)
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 10)
    assert "sasa_axial_resnet50_s_full" in timm.list_models("sasa_axial*")


def test_larger_than_training_size_falls_back_to_the_embedded_span():
    """At 288×96 layer1's height axis (72) is longer than the 56 offsets axial_resnet26_s embeds: it runs, locally."""
    model = sasa.create_model("axial_resnet26_s", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 288, 96)).shape == (1, 3)


def test_detection_backbone():
    model = create_detector("retinanet_axial_resnet26_s", num_classes=3, min_size=64, max_size=64, fpn_channels=32, anchor_size=8)
    assert isinstance(model.backbone.body.layer3[0].conv2, AxialMixer2d)
    model.eval()
    with torch.no_grad():
        assert len(model([torch.rand(3, 64, 96)])) == 1


def _sasa_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(sasa.__file__).parents[1]), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "sasa", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_cli_profile_and_train(tmp_path):
    done = _sasa_cli("profile", "axial_resnet26_s", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert row["params"] == pytest.approx(6.01e6, rel=0.01)
    done = _sasa_cli(
        "train", "--model", "axial_resnet26_s", "--data", "digits", "--out", str(tmp_path / "run"), "--epochs", "1",
        "--limit-train", "64", "--limit-val", "32", "--batch-size", "32", "--img-size", "16", "--quiet", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "best.safetensors").exists()
