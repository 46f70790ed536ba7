"""Backbone transfer: a `sasa train` classifier on shape crops -> `sasa detect-train --backbone-weights`."""
import json

import pytest
import torch

from sasa.cli.main import main
from sasa.detection import create_detector
from sasa.detection.model import load_backbone_weights_
from sasa.engine import load_weights

TINY_DET = ["--shapes-train", "4", "--shapes-val", "2", "--img-size", "64", "--fpn-channels", "32", "--anchor-size", "8",
            "--batch-size", "2", "--quiet"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A resnet26 classifier trained one epoch on a tiny shape-crop set, by the CLI of the README recipe."""
    root = tmp_path_factory.mktemp("transfer")
    crops = root / "crops"
    assert main(["detect-data", "shape-crops", "--out", str(crops), "--num-train", "6", "--num-val", "3"]) == 0
    assert {path.name for path in (crops / "train").iterdir()} == {"circle", "square", "triangle"}
    run = root / "cls"
    assert main(["train", "--model", "resnet26", "--data", str(crops), "--img-size", "32", "--epochs", "1",
                 "--batch-size", "8", "--opt", "adamw", "--lr", "1e-3", "--quiet", "--out", str(run)]) == 0
    return run / "last.safetensors"


def test_loaded_backbone_equals_the_checkpoint(classifier):
    state, _ = load_weights(classifier)
    detector = create_detector("retinanet_resnet26", num_classes=3, fpn_channels=32)
    body = detector.backbone.body
    assert any(not torch.equal(tensor, state[name]) for name, tensor in body.state_dict().items())  # not by chance
    load_backbone_weights_(detector, classifier)
    for name, tensor in body.state_dict().items():  # parameters and BatchNorm statistics
        assert torch.equal(tensor, state[name]), name
    assert not any(name.startswith("fc.") for name in body.state_dict())


def test_mismatched_backbone_names_both(classifier):
    with pytest.raises(ValueError, match=r"'resnet26' classifier.*backbone is 'sa_resnet26'"):
        load_backbone_weights_(create_detector("retinanet_sa_resnet26", num_classes=3, fpn_channels=32), classifier)
    with pytest.raises(ValueError, match=r"stem_channels=64.*stem_channels=32"):
        detector = create_detector("retinanet_resnet26", num_classes=3, fpn_channels=32)
        detector.backbone.body.config = type(detector.backbone.body.config)(
            **{**vars(detector.backbone.body.config), "stem_channels": 32})
        load_backbone_weights_(detector, classifier)


def test_detect_train_starts_from_the_classifier(classifier, tmp_path, monkeypatch, capsys):
    """End to end: with a vanishing lr, the trained detector's backbone parameters are still the classifier's."""
    monkeypatch.setenv("SASA_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "det"
    assert main(["detect-train", "--out", str(run), "--model", "retinanet_resnet26", *TINY_DET, "--epochs", "1",
                 "--lr", "1e-12", "--weight-decay", "0", "--backbone-weights", str(classifier),
                 "--scale-jitter", "0.8", "1.2"]) == 0  # jitter too: the pipeline runs with it
    assert json.loads((run / "config.json").read_text())["options"]["scale_jitter"] == [0.8, 1.2]
    detector, _ = load_weights(run / "last.safetensors")
    classifier_state, _ = load_weights(classifier)
    body = create_detector("retinanet_resnet26", num_classes=3, fpn_channels=32).backbone.body
    for name, parameter in body.named_parameters():
        assert torch.allclose(detector[f"backbone.body.{name}"], classifier_state[name], atol=1e-6), name
    assert main(["detect-train", "--out", str(tmp_path / "bad"), "--model", "retinanet_sa_resnet26", *TINY_DET,
                 "--epochs", "1", "--backbone-weights", str(classifier)]) == 2
    assert "backbone is 'sa_resnet26'" in capsys.readouterr().err


def test_option_comparison_is_flat_and_ignores_the_backend():
    """Checkpoints written before the attention options were grouped (flat keys, attention=None) still match."""
    from sasa.detection.model import _weight_options
    from sasa.models.registry import resolve_config

    grouped = _weight_options(resolve_config("sa_resnet26"))
    legacy = {key: value for key, value in grouped.items()}
    legacy.update({"attention": None, "backend": "reference"})
    assert _weight_options(legacy) == grouped
    assert grouped["kernel_size"] == 7 and "backend" not in grouped
    assert "stem_init" not in grouped  # an init does not change what loaded weights compute
