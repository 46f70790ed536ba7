"""Factory for the spatial mixer of a bottleneck: which layer replaces the 3×3 conv is a config value."""
from __future__ import annotations

from torch import nn

from sasa.layers.local_attention import LocalSelfAttention2d

SPATIAL_MIXERS = ("conv", "attention")


def create_spatial_mixer(
    kind: str, in_channels: int, out_channels: int, *, stride: int = 1, **attention_options
) -> nn.Module:
    """``"conv"``: 3×3 conv (stride on the conv); ``"attention"``: LocalSelfAttention2d (stride by 2×2 avg pool)."""
    if kind == "conv":
        return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
    if kind == "attention":
        return LocalSelfAttention2d(in_channels, out_channels, stride=stride, **attention_options)
    raise ValueError(f"spatial mixer must be one of {SPATIAL_MIXERS}, got {kind!r}")
