"""ResNetConfig and DetectorConfig check themselves at construction, naming the bad value."""
import dataclasses

import numpy as np
import pytest

import sasa
from sasa.detection import DetectorConfig, create_detector, resolve_detector_config
from sasa.layers import AttentionConfig, LocalSelfAttention2d
from sasa.models import ResNetConfig
from sasa.models.registry import resolve_config


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(layers=(1, 2, 4)), ValueError, r"layers must be 4 positive integers, got \(1, 2, 4\)"),
        (dict(layers=(1, 0, 4, 1)), ValueError, "layers must be 4 positive integers"),
        (dict(stem="patchify"), ValueError, "stem must be one of .*got 'patchify'"),
        (dict(spatial="atention"), ValueError, "spatial must be one of .*got 'atention'"),
        (dict(spatial="attention", attention=AttentionConfig(num_heads=3)), ValueError,
         r"out_channels \(64\) must be divisible by num_heads \(3\)"),
        (dict(widths=(64, 128, 256, 0)), ValueError, "widths must be 4 positive integers"),
        (dict(stem="attention", stem_heads=3), ValueError, r"stem_channels \(64\) must be even and divisible by stem_heads \(3\)"),
        (dict(stem_value_mixtures=0), ValueError, "stem_value_mixtures must be positive, got 0"),
        (dict(drop_rate=1.0), ValueError, r"drop_rate must be in \[0, 1\), got 1.0"),
        (dict(expansion=2.5), TypeError, "expansion must be an integer, got float"),
    ],
)
def test_resnet_config_refuses_bad_values(kwargs, error, match):
    with pytest.raises(error, match=match):
        ResNetConfig(**{"layers": (1, 2, 4, 1)} | kwargs)


@pytest.mark.parametrize(
    "overrides,error,match",
    [
        (dict(backend="nope"), ValueError, "backend must be 'auto' or one of .*got 'nope'"),
        (dict(kernel_size=4), ValueError, "kernel_size must be a positive odd integer, got 4"),
        (dict(kernel_size=0), ValueError, "kernel_size must be a positive odd integer, got 0"),
        (dict(num_heads=6), ValueError, r"out_channels \(64\) must be divisible by num_heads \(6\)"),
        (dict(positional="learned"), ValueError, "positional must be one of"),
    ],
)
def test_create_model_refuses_bad_attention_options(overrides, error, match):
    with pytest.raises(error, match=match):
        sasa.create_model("sa_resnet26", **overrides)


def test_attention_options_are_one_object_set_whole_or_flat():
    config = resolve_config("sa_resnet26", kernel_size=np.int64(5), backend="reference")
    assert config.attention == AttentionConfig(kernel_size=5, backend="reference")
    whole = resolve_config("sa_resnet26", attention=AttentionConfig(num_heads=4), kernel_size=3)
    assert whole.attention == AttentionConfig(kernel_size=3, num_heads=4)
    # a config written as JSON (nested dict, lists) reads back as the same config
    as_json = {key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(config).items()}
    assert ResNetConfig(**as_json) == config


@pytest.mark.parametrize(
    "overrides,error,match",
    [
        (dict(backbone="resnet51"), ValueError, "backbone: unknown model 'resnet51'; did you mean"),
        (dict(head="attn"), ValueError, "head must be one of .*got 'attn'"),
        (dict(head_norm="batch"), ValueError, "head_norm must be one of"),
        (dict(min_size=0), ValueError, "min_size must be positive, got 0"),
        (dict(min_size=512, max_size=256), ValueError, "need min_size <= max_size"),
        (dict(fpn_channels=100), ValueError, "fpn_channels must be even, and a multiple of 32"),
        (dict(head="attention", num_heads=5, fpn_channels=96), ValueError, r"out_channels \(96\) must be divisible by num_heads \(5\)"),
        (dict(backend="fast"), ValueError, "backend must be 'auto' or one of .*got 'fast'"),
        (dict(kernel_size=2), ValueError, "kernel_size must be a positive odd integer, got 2"),
        (dict(score_thresh=1.5), ValueError, r"score_thresh must be in \[0, 1\], got 1.5"),
    ],
)
def test_detector_config_refuses_bad_values(overrides, error, match):
    with pytest.raises(error, match=match):
        resolve_detector_config("retinanet_resnet26", **overrides)


def test_detector_config_checks_when_built_directly():
    with pytest.raises(ValueError, match="kernel_size must be a positive odd integer, got 4"):
        DetectorConfig(backbone="resnet26", attention={"kernel_size": 4})
    with pytest.raises(TypeError, match="spatial mixer 'attention' takes a AttentionConfig, got str"):
        DetectorConfig(head="attention", attention="k7")


def test_detector_attention_options_reach_backbone_and_heads():
    model = create_detector("retinanet_sa_resnet26_attnhead", num_classes=2, kernel_size=5, num_heads=4,
                            fpn_channels=64, min_size=64, max_size=64)
    assert model.backbone.body.layer2[0].conv2.kernel_size == 5
    head_layers = [m for m in model.head.modules() if isinstance(m, LocalSelfAttention2d)]
    assert head_layers and all((m.kernel_size, m.num_heads) == (5, 4) for m in head_layers)
    fpn_layer = next(m for m in model.backbone.fpn.modules() if isinstance(m, LocalSelfAttention2d))
    assert fpn_layer.qkv.weight[:128].std().item() == pytest.approx(64**-0.5, rel=0.1)  # q, k: the layer's own init
