"""The spatial mixers: what replaces a bottleneck's (or a detector head's) 3×3 conv, as a registry table.

A mixer is one module plus one entry here: ``build(in_channels, out_channels, *, stride, config)``
returns the layer, and ``config_type`` is the frozen dataclass of its options (``None``: it takes
none and ignores ``config``). Models carry the options object and pass it through; they never name
its fields. A config type may define ``check_channels(channels)`` so that a model config refuses
widths the mixer cannot take at construction (see ``sasa.models.config``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import nn

from sasa.layers.axial_attention import AxialConfig, AxialMixer2d
from sasa.layers.local_attention import AttentionConfig, LocalSelfAttention2d


@dataclass(frozen=True)
class SpatialMixer:
    name: str
    build: Callable[..., nn.Module]  # build(in_channels, out_channels, *, stride, config) -> nn.Module
    config_type: type | None  # the dataclass of its options; None: it takes none

    def resolve_config(self, config: Any) -> Any:
        """``config`` as this mixer's options object: None -> defaults, a mapping -> the dataclass built from it."""
        if self.config_type is None:
            return config
        if config is None:
            return self.config_type()
        if isinstance(config, Mapping):
            return self.config_type(**config)
        if not isinstance(config, self.config_type):
            raise TypeError(
                f"spatial mixer {self.name!r} takes a {self.config_type.__name__}, got {type(config).__name__}"
            )
        return config


SPATIAL_MIXERS: dict[str, SpatialMixer] = {}


def register_spatial_mixer(name: str, build: Callable[..., nn.Module], *, config_type: type | None = None) -> None:
    SPATIAL_MIXERS[name] = SpatialMixer(name, build, config_type)


def get_spatial_mixer(name: str) -> SpatialMixer:
    if name not in SPATIAL_MIXERS:
        raise ValueError(f"spatial mixer must be one of {sorted(SPATIAL_MIXERS)}, got {name!r}")
    return SPATIAL_MIXERS[name]


def resolve_mixer_options(name: str, options: Any) -> Any:
    """``options`` as the options object of mixer ``name`` (None: its defaults; a mapping: converted).

    A mixer that takes none (the conv) keeps local-attention options, so that overrides and a later
    switch of mixer still apply; default options of another mixer's type (left over when an override
    switched the mixer) become this mixer's defaults.
    """
    mixer = get_spatial_mixer(name)
    owner = mixer if mixer.config_type is not None else get_spatial_mixer("attention")
    if dataclasses.is_dataclass(options) and not isinstance(options, owner.config_type) and options == type(options)():
        options = None
    return owner.resolve_config(options)


def create_spatial_mixer(name: str, in_channels: int, out_channels: int, *, stride: int = 1, config: Any = None) -> nn.Module:
    """The registered mixer ``name`` mapping (B, in_channels, H, W) -> (B, out_channels, H/stride, W/stride)."""
    mixer = get_spatial_mixer(name)
    return mixer.build(in_channels, out_channels, stride=stride, config=mixer.resolve_config(config))


def _conv3x3(in_channels: int, out_channels: int, *, stride: int, config: Any = None) -> nn.Module:
    """The baseline: a 3×3 conv with the stride on the conv (its options object, if any, is ignored)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


register_spatial_mixer("conv", _conv3x3)
register_spatial_mixer("attention", LocalSelfAttention2d.from_config, config_type=AttentionConfig)
# Axial-DeepLab (SPEC §8): height-axis then width-axis position-sensitive attention
register_spatial_mixer("axial", AxialMixer2d.from_config, config_type=AxialConfig)
