"""The one config that separates the baseline, conv-stem + attention, and full-attention ResNets (docs/models.md)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sasa.functional._checks import check_integer
from sasa.layers import SPATIAL_MIXERS, AttentionConfig, get_spatial_mixer

BLOCKS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3)}
STEMS = ("conv", "attention")


def _positive_ints(name: str, values: Any, count: int) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != count:
        raise ValueError(f"{name} must be {count} positive integers, got {values!r}")
    result = tuple(check_integer(name, value) for value in values)
    if min(result) <= 0:
        raise ValueError(f"{name} must be {count} positive integers, got {values!r}")
    return result


def _is_default_of_other_type(options: Any, config_type: type) -> bool:
    return (
        dataclasses.is_dataclass(options) and not isinstance(options, config_type) and options == type(options)()
    )


@dataclass(frozen=True)
class ResNetConfig:
    """Everything a bottleneck ResNet variant is made of; models differ only in these values.

    Checked at construction: a bad value raises a ValueError/TypeError naming the field.
    """

    layers: tuple[int, int, int, int]
    stem: str = "conv"  # "conv": 7×7/2 conv + 3×3/2 max pool; "attention": AttentionStem
    spatial: str = "conv"  # the bottleneck's spatial mixer: a name registered in sasa.layers.spatial
    # options of the spatial mixer (its registered config type; AttentionConfig for "conv", which ignores it);
    # None: the mixer's defaults; a dict (e.g. read back from JSON) is converted
    attention: Any = None
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    expansion: int = 4
    stem_channels: int = 64
    stem_heads: int = 1
    stem_value_mixtures: int = 4
    zero_init_residual: bool = False
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("layers", _positive_ints("layers", self.layers, 4))
        set_("widths", _positive_ints("widths", self.widths, 4))
        for name in ("expansion", "stem_channels", "stem_heads", "stem_value_mixtures"):
            value = check_integer(name, getattr(self, name))
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
            set_(name, value)
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.spatial not in SPATIAL_MIXERS:
            raise ValueError(f"spatial must be one of {sorted(SPATIAL_MIXERS)}, got {self.spatial!r}")
        mixer = get_spatial_mixer(self.spatial)
        if mixer.config_type is None:  # the options stay available to overrides and to a later switch of mixer
            set_("attention", get_spatial_mixer("attention").resolve_config(self.attention))
        else:
            if _is_default_of_other_type(self.attention, mixer.config_type):  # e.g. spatial switched by an override
                set_("attention", None)
            set_("attention", mixer.resolve_config(self.attention))
            if hasattr(self.attention, "check_channels"):
                for width in self.widths:
                    self.attention.check_channels(width)
        if self.stem == "attention" and (self.stem_channels % self.stem_heads or self.stem_channels % 2):
            raise ValueError(
                f"stem_channels ({self.stem_channels}) must be even and divisible by stem_heads ({self.stem_heads})"
            )
        if not isinstance(self.zero_init_residual, bool):
            raise TypeError(f"zero_init_residual must be a bool, got {self.zero_init_residual!r}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")


def _depth_configs() -> dict[str, ResNetConfig]:
    configs = {}
    for depth, layers in BLOCKS.items():
        configs[f"resnet{depth}"] = ResNetConfig(layers=layers)
        configs[f"sa_resnet{depth}_convstem"] = ResNetConfig(layers=layers, spatial="attention", zero_init_residual=True)
        configs[f"sa_resnet{depth}"] = ResNetConfig(
            layers=layers, stem="attention", spatial="attention", zero_init_residual=True
        )
    return configs


MODEL_CONFIGS: dict[str, ResNetConfig] = _depth_configs()

# kept for type checkers and readers: the options object of the attention models
__all__ = ["AttentionConfig", "BLOCKS", "MODEL_CONFIGS", "ResNetConfig", "STEMS"]
