from dataclasses import dataclass

import pytest
import torch
from torch import nn

import sasa
from sasa.layers import AttentionConfig, LocalSelfAttention2d, create_spatial_mixer, spatial


def test_registry_builds_conv_and_attention():
    conv = create_spatial_mixer("conv", 8, 16, stride=2)
    assert isinstance(conv, nn.Conv2d) and conv.stride == (2, 2) and conv.kernel_size == (3, 3)
    attention = create_spatial_mixer("attention", 8, 16, stride=2, config=AttentionConfig(kernel_size=5, num_heads=4))
    assert isinstance(attention, LocalSelfAttention2d)
    assert (attention.kernel_size, attention.num_heads, attention.stride) == (5, 4, 2)
    assert create_spatial_mixer("attention", 8, 16, config={"num_heads": 2}).num_heads == 2


def test_unknown_mixer_and_wrong_config_type():
    with pytest.raises(ValueError, match="spatial mixer must be one of .*got 'axial2'"):
        create_spatial_mixer("axial2", 8, 8)
    with pytest.raises(TypeError, match="takes a AttentionConfig, got int"):
        create_spatial_mixer("attention", 8, 8, config=3)


@dataclass(frozen=True)
class _BlurConfig:
    size: int = 3


class _Blur(nn.Module):
    def __init__(self, in_channels, out_channels, *, stride, config):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1)
        self.pool = nn.AvgPool2d(config.size, stride, padding=config.size // 2)

    def forward(self, x):
        return self.pool(self.proj(x))


def test_new_mixer_is_one_module_plus_one_entry(monkeypatch):
    """A model picks up a newly registered mixer and its own options type through the config alone."""
    monkeypatch.setitem(spatial.SPATIAL_MIXERS, "blur", spatial.SpatialMixer("blur", _Blur, _BlurConfig))
    model = sasa.create_model("resnet26", spatial="blur", attention=_BlurConfig(size=5), num_classes=3)
    assert isinstance(model.layer2[0].conv2, _Blur) and model.layer2[0].conv2.pool.kernel_size == 5
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert sasa.create_model("resnet26", spatial="blur", size=7).layer1[0].conv2.pool.kernel_size == 7
