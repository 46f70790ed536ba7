"""The one config that separates the baseline, conv-stem + attention, and full-attention ResNets."""
from __future__ import annotations

from dataclasses import dataclass

BLOCKS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3)}


@dataclass(frozen=True)
class ResNetConfig:
    """Everything a bottleneck ResNet variant is made of; models differ only in these values."""

    layers: tuple[int, int, int, int]
    stem: str = "conv"  # "conv": 7×7/2 conv + 3×3/2 max pool; "attention": AttentionStem
    spatial: str = "conv"  # the bottleneck's spatial mixer: "conv" (3×3) or "attention"
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    expansion: int = 4
    stem_channels: int = 64
    kernel_size: int = 7
    num_heads: int = 8
    positional: str = "relative"
    content: bool = True
    stem_heads: int = 1
    stem_value_mixtures: int = 4
    zero_init_residual: bool = False
    drop_rate: float = 0.0
    backend: str = "auto"



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
