"""The one config that separates the RetinaNet variants (paper §4.2, SPEC §6).

A detector is a registered ResNet backbone (any of ``sasa.list_models()``) + FPN + RetinaNet
heads. ``head`` names the spatial mixer (``sasa.layers.spatial``) that replaces every spatial
convolution of the FPN and of the heads ("attention": the paper's attention detector); see
:mod:`sasa.detection.model` for exactly which ones.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sasa.functional._checks import check_integer
from sasa.layers import SPATIAL_MIXERS, AttentionConfig, get_spatial_mixer
from sasa.layers.spatial import resolve_mixer_options
from sasa.models import list_models
from sasa.models.registry import resolve_config
from sasa.registry import unknown_name_error

HEAD_NORMS = ("group", "none")
HEAD_INITS = ("paper", "neighbours")
FPN_NORMS = ("none", "group")


def norm_groups(channels: int) -> int:
    """32 groups as in torchvision's RetinaNet v2; narrow heads keep 2 channels per group, so that a
    1×1 P7 map of a single image still normalises over more than one value."""
    return 32 if channels >= 64 else max(1, channels // 2)


@dataclass(frozen=True)
class DetectorConfig:
    """Everything a RetinaNet variant is made of; variants differ only in these values.

    Checked at construction: a bad value raises a ValueError/TypeError naming the field.
    """

    backbone: str = "resnet50"  # any registered classification model
    # ResNetConfig fields of the backbone other than its attention options (e.g. stem_init); None: the model's
    backbone_options: Any = None
    head: str = "conv"  # spatial mixer of the FPN output convs and the 4+4 head convs ("conv", "attention", ...)
    # options of every local-attention layer of the detector: the heads' (when head uses them) and the
    # backbone's (when its spatial mixer takes the same options type); None: defaults; a dict is converted
    attention: Any = None
    fpn_channels: int = 256
    # head != "conv" only, not the paper's form: the FPN output and 4+4 subnet layers add their input,
    # x + mixer(x) (before the subnet's GroupNorm + ReLU)
    head_residual: bool = False
    # head != "conv" only, not the paper's form: the read-out's attention adds its input too, mix(x + attn(x)),
    # so each anchor's logits/deltas see its own position's features, not only a softmax average of its window
    readout_residual: bool = False
    # local-attention heads only, not the paper's form: False drops q·k from the FPN/head attention logits,
    # leaving q·r (the paper's Table 6 "qr" row, there for the backbone); the backbone keeps `attention`
    head_content: bool = True
    # local-attention heads only: "neighbours" gives each FPN/head attention layer per-head row/column
    # embeddings and a q bias, and starts head n attending to the n-th of the 8 neighbours of a 3×3 window
    # (LocalSelfAttention2d.point_heads_at_: a conv-like start); "paper": the layer's own init
    head_init: str = "paper"
    head_norm: str = "group"  # GroupNorm(32) after each head conv (torchvision's RetinaNet v2); "none": v1
    # "group": GroupNorm after each FPN lateral, output and P6/P7 layer (torchvision's FPN norm_layer), so the
    # heads see unit-scale features; not in the paper nor in RetinaNet v1/v2, hence "none" by default
    fpn_norm: str = "none"
    # GeneralizedRCNNTransform resizes so the short side is min_size, the long side at most max_size.
    # 640: the paper trained RetinaNet on crops with a max dimension of 640 (§4.2).
    min_size: int = 640
    max_size: int = 640
    # anchors of pyramid level P3..P7 have base sizes anchor_size·2^i (torchvision default: 32),
    # each at scales 2^0, 2^(1/3), 2^(2/3) and aspect ratios 0.5, 1, 2 (9 anchors per location)
    anchor_size: int = 32
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100

    def __post_init__(self) -> None:
        if self.backbone not in list_models():
            raise ValueError(f"backbone: {unknown_name_error('model', self.backbone, list_models())}")
        if self.head not in SPATIAL_MIXERS:
            raise ValueError(f"head must be one of {sorted(SPATIAL_MIXERS)}, got {self.head!r}")
        mixer = get_spatial_mixer(self.head)
        attention = resolve_mixer_options(self.head, self.attention)
        object.__setattr__(self, "attention", attention)
        for name in ("fpn_channels", "min_size", "max_size", "anchor_size", "detections_per_img"):
            value = check_integer(name, getattr(self, name))
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
            object.__setattr__(self, name, value)
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got {self.head_init!r}")
        if self.head != "conv" and isinstance(attention, AttentionConfig):
            head_only = not self.head_content or self.head_init == "neighbours"
            if head_only and attention.positional != "relative":
                raise ValueError(f"head_content=False and head_init='neighbours' need positional='relative', "
                                 f"got {attention.positional!r}")
            if self.head_init == "neighbours" and attention.qkv_norm:
                raise ValueError("head_init='neighbours' needs qkv_norm=False (its batch norm would subtract the q bias)")
        if self.head_norm not in HEAD_NORMS:
            raise ValueError(f"head_norm must be one of {HEAD_NORMS}, got {self.head_norm!r}")
        if self.fpn_norm not in FPN_NORMS:
            raise ValueError(f"fpn_norm must be one of {FPN_NORMS}, got {self.fpn_norm!r}")
        if self.max_size < self.min_size:
            raise ValueError(f"need min_size <= max_size, got min_size={self.min_size}, max_size={self.max_size}")
        if self.fpn_channels < 2 or ("group" in (self.head_norm, self.fpn_norm) and self.fpn_channels % norm_groups(self.fpn_channels)):
            raise ValueError(
                f"fpn_channels must be even, and a multiple of 32 from 64 on (GroupNorm groups), got {self.fpn_channels}"
            )
        if mixer.config_type is not None and hasattr(attention, "check_channels"):
            attention.check_channels(self.fpn_channels)
        for name in ("score_thresh", "nms_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("head_residual", "readout_residual", "head_content"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.backbone_options is not None:
            if not isinstance(self.backbone_options, dict) or "attention" in self.backbone_options:
                raise ValueError(f"backbone_options must be a dict of ResNetConfig fields other than attention "
                                 f"(the detector's attention options reach the backbone), got {self.backbone_options!r}")
            try:
                resolve_config(self.backbone, **self.backbone_options)
            except (ValueError, TypeError) as error:
                raise type(error)(f"backbone_options of {self.backbone!r}: {error}") from None


    def head_attention(self) -> Any:
        """The options of the FPN/head mixers: ``attention`` with the head-only changes applied."""
        if not isinstance(self.attention, AttentionConfig):
            return self.attention
        changes = {}
        if not self.head_content:
            changes["content"] = False
        if self.head_init == "neighbours":
            changes.update(rel_pos_per_head=True, qkv_bias=True)
        return dataclasses.replace(self.attention, **changes)


def _detector_configs() -> dict[str, DetectorConfig]:
    configs = {}
    for depth in (26, 38, 50):
        configs[f"retinanet_resnet{depth}"] = DetectorConfig(backbone=f"resnet{depth}")
        for backbone in (f"sa_resnet{depth}", f"sa_resnet{depth}_convstem"):
            configs[f"retinanet_{backbone}"] = DetectorConfig(backbone=backbone)
            configs[f"retinanet_{backbone}_attnhead"] = DetectorConfig(backbone=backbone, head="attention")
    for backbone in ("axial_resnet26_s", "axial_resnet50_s"):  # Axial-DeepLab backbones (SPEC §8), conv heads
        configs[f"retinanet_{backbone}"] = DetectorConfig(backbone=backbone)
    return configs


DETECTOR_CONFIGS: dict[str, DetectorConfig] = _detector_configs()
