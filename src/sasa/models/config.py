"""The one config that separates the baseline, conv-stem + attention, and full-attention ResNets (docs/models.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sasa.functional._checks import check_integer
from sasa.layers import SPATIAL_MIXERS, AttentionConfig, AxialConfig, get_spatial_mixer
from sasa.layers.attention_stem import STEM_INITS, check_stem_init
from sasa.layers.spatial import resolve_mixer_options

BLOCKS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3)}
STEMS = ("conv", "attention", "blocks")
STEM_VALUES = ("spatially-aware", "plain", "conv")  # paper Table 7: the attention stem's values


def _positive_ints(name: str, values: Any, count: int) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != count:
        raise ValueError(f"{name} must be {count} positive integers, got {values!r}")
    result = tuple(check_integer(name, value) for value in values)
    if min(result) <= 0:
        raise ValueError(f"{name} must be {count} positive integers, got {values!r}")
    return result


def _stages(values: Any) -> tuple[int, ...]:
    """A subset of the stages 1..4, as a sorted tuple; a string of digits ("234", as in the ablation rows) is accepted."""
    if isinstance(values, int) and not isinstance(values, bool) and values > 0:
        values = str(values)  # --model-opt mixer_stages=34 parses as the number 34
    if isinstance(values, str):
        if not all(ch in "1234" for ch in values):
            raise ValueError(f"mixer_stages must name stages among 1, 2, 3, 4, got {values!r}")
        values = [int(ch) for ch in values]
    if isinstance(values, (int, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"mixer_stages must be a collection of stages among 1, 2, 3, 4, got {values!r}")
    stages = [check_integer("mixer_stages", value) for value in values]
    if any(stage not in (1, 2, 3, 4) for stage in stages) or len(set(stages)) != len(stages):
        raise ValueError(f"mixer_stages must be distinct stages among 1, 2, 3, 4, got {values!r}")
    return tuple(sorted(stages))


@dataclass(frozen=True)
class ResNetConfig:
    """Everything a bottleneck ResNet variant is made of; models differ only in these values.

    Checked at construction: a bad value raises a ValueError/TypeError naming the field.
    """

    layers: tuple[int, int, int, int]
    # "conv": 7×7/2 conv + 3×3/2 max pool; "attention": AttentionStem; "blocks": three bottlenecks of the
    # spatial mixer (width stem_channels, the first with stride 2) + 3×3/2 max pool (Full Axial-Attention)
    stem: str = "conv"
    spatial: str = "conv"  # the bottleneck's spatial mixer: a name registered in sasa.layers.spatial
    # the stages (1..4) whose bottlenecks use ``spatial``; the others keep the 3×3 conv (paper Table 3)
    mixer_stages: tuple[int, ...] = (1, 2, 3, 4)
    # options of the spatial mixer (its registered config type; AttentionConfig for "conv", which ignores it);
    # None: the mixer's defaults; a dict (e.g. read back from JSON) is converted
    attention: Any = None
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    expansion: int = 4
    stem_channels: int = 64
    stem_heads: int = 1
    stem_value_mixtures: int = 4
    # attention stem only: "spatially-aware" (m value matrices mixed by position), "plain" (one value
    # projection) or "conv" (values from a 4×4 convolution) — paper Table 7
    stem_values: str = "spatially-aware"
    # attention stem only: "paper" (random init) or "patchify" (not the paper's; needs stem_value_mixtures=16):
    # the stem starts as a linear 4×4 stride-4 patch embedding (AttentionStem.patchify_)
    stem_init: str = "paper"
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
        set_("mixer_stages", _stages(self.mixer_stages))
        if self.stem_values not in STEM_VALUES:
            raise ValueError(f"stem_values must be one of {STEM_VALUES}, got {self.stem_values!r}")
        if self.stem_init not in STEM_INITS:
            raise ValueError(f"stem_init must be one of {STEM_INITS}, got {self.stem_init!r}")
        if self.stem == "attention":
            check_stem_init(self.stem_init, values=self.stem_values, num_value_mixtures=self.stem_value_mixtures,
                            name="stem_init")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.spatial not in SPATIAL_MIXERS:
            raise ValueError(f"spatial must be one of {sorted(SPATIAL_MIXERS)}, got {self.spatial!r}")
        set_("attention", resolve_mixer_options(self.spatial, self.attention))
        if get_spatial_mixer(self.spatial).config_type is not None:
            if hasattr(self.attention, "check_channels"):
                for width in self.widths + ((self.stem_channels,) if self.stem == "blocks" else ()):
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


# Axial-ResNets (Axial-DeepLab, SPEC §8): the "L" layout has bottleneck widths 128/256/512/1024 with
# expansion 2 and a 64-channel stem; S, M, L scale every width by 0.5, 0.75, 1 (8 heads throughout).
AXIAL_WIDTHS = (128, 256, 512, 1024)
AXIAL_SCALES = {"s": 0.5, "m": 0.75, "l": 1.0}
# Axial-DeepLab's implementation keeps relative embeddings for offsets up to ±254 in every layer (MAX_SPAN 255);
# the paper's parameter counts include them, and a global layer then stays global on axes up to 255 pixels.
PAPER_MAX_LENGTH = 255
# the public port (Axial-ResNet-26-S, 5.9M) sizes each global layer's table to its feature map at 224; we give
# every layer the first stage's length, 56, so that layers 2-4 stay global up to 2-8× the training size
PORT_MAX_LENGTH = 56


def _axial_config(layers: tuple[int, ...], scale: float, attention: AxialConfig, **fields) -> ResNetConfig:
    return ResNetConfig(
        layers=layers, spatial="axial", attention=attention, widths=tuple(int(w * scale) for w in AXIAL_WIDTHS),
        expansion=2, stem_channels=int(64 * scale), zero_init_residual=True, **fields,
    )


def _axial_configs() -> dict[str, ResNetConfig]:
    global_span = AxialConfig(max_length=PAPER_MAX_LENGTH)
    configs = {f"axial_resnet50_{size}": _axial_config(BLOCKS[50], scale, global_span) for size, scale in AXIAL_SCALES.items()}
    configs["axial_resnet26_s"] = _axial_config(BLOCKS[26], 0.5, AxialConfig(max_length=PORT_MAX_LENGTH))
    configs["axial_resnet50_s_full"] = _axial_config(
        BLOCKS[50], 0.5, AxialConfig(span=15, max_length=PAPER_MAX_LENGTH), stem="blocks"
    )
    return configs


MODEL_CONFIGS: dict[str, ResNetConfig] = _depth_configs() | _axial_configs()

# kept for type checkers and readers: the options object of the attention models
__all__ = ["AttentionConfig", "AxialConfig", "BLOCKS", "MODEL_CONFIGS", "ResNetConfig", "STEMS", "STEM_VALUES"]
