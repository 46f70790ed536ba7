"""timm's model API on every registered model: head/feature split, classifier reset, gradient
checkpointing, pretrained_cfg, and ``timm.create_model(..., features_only=True)``."""
from __future__ import annotations

import pytest
import timm
import torch

from sasa.models import create_model, list_models

SMALL = dict(layers=(1, 1, 1, 1), widths=(16, 16, 16, 32), stem_channels=16)


def _small(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **SMALL, **kwargs)
    for module in model.modules():  # zero-init residual BN would hide the blocks from the gradients
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    return model


@pytest.mark.parametrize("name", list_models())
def test_head_features_classifier(name):
    model = _small(name).eval()
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    assert features.shape == (2, model.num_features, 2, 2)
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    torch.testing.assert_close(model.forward_head(features), model(x))
    assert model.get_classifier() is model.fc
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.num_classes == 7 and model.pretrained_cfg["num_classes"] == 7
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    with pytest.raises(ValueError, match="num_classes must be >= 0, got -1"):
        model.reset_classifier(-1)


@pytest.mark.parametrize("name", list_models())
def test_pretrained_cfg(name):
    cfg = _small(name).pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["classifier"] == "fc" and cfg["num_classes"] == 3


@pytest.mark.parametrize("name", ["sa_resnet26", "sa_resnet26_convstem", "resnet26", "axial_resnet26_s"])
def test_grad_checkpointing_same_gradients(name):
    model = _small(name).train()
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        model(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain, atol=1e-5, rtol=1e-4)
    assert model.grad_checkpointing


def _saved_activation_bytes(model, x) -> int:
    """Bytes of the non-parameter tensors autograd saves for backward during model(x) (distinct storages)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(saved.values())


@pytest.mark.parametrize("name", ["sa_resnet26", "axial_resnet50_s_full"])
def test_grad_checkpointing_saves_only_block_inputs(name):
    """Checkpointed blocks keep only their inputs for backward: far fewer activation bytes than without
    (sa_resnet26 at 64: 0.30 of them; a no-op flag gives 1.0)."""
    model = _small(name).train()
    x = torch.randn(2, 3, 64, 64)
    plain = _saved_activation_bytes(model, x)
    model.set_grad_checkpointing(True)
    checkpointed = _saved_activation_bytes(model, x)
    assert checkpointed < 0.5 * plain, (checkpointed, plain)  # the stem (not a block) is kept in both


def test_grad_checkpointing_recomputes_blocks():
    """Each block's forward runs again during backward (the activations were not kept)."""
    model = _small("sa_resnet26").train()
    calls = []
    model.layer2[0].conv1.register_forward_hook(lambda *_: calls.append(1))
    model.set_grad_checkpointing(True)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert len(calls) == 2


@pytest.mark.parametrize("timm_name", ["sa_resnet26", "sasa_resnet26", "sa_resnet50_convstem"])
def test_timm_features_only(timm_name):
    backbone = timm.create_model(timm_name, features_only=True, out_indices=(1, 2, 3, 4), **SMALL)
    features = backbone(torch.randn(2, 3, 64, 96))
    assert [f.shape[1] for f in features] == backbone.feature_info.channels() == [64, 64, 64, 128]
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    assert [tuple(f.shape[-2:]) for f in features] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    model = create_model(timm_name.removeprefix("sasa_"), **SMALL)
    backbone.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")})
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(torch.ones(1, 3, 64, 64))[-1], model.eval().forward_features(torch.ones(1, 3, 64, 64)))


def test_timm_features_only_stem_index():
    backbone = timm.create_model("sasa_resnet26", features_only=True, out_indices=(0,), **SMALL)
    (stem,) = backbone(torch.randn(1, 3, 64, 64))
    assert stem.shape == (1, 16, 32, 32) and backbone.feature_info.reduction() == [2]
