"""The one config that separates the RetinaNet variants (paper §4.2, SPEC §6).

A detector is a registered ResNet backbone (any of ``sasa.list_models()``) + FPN + RetinaNet
heads. ``head="attention"`` replaces the spatial convolutions of the FPN and of the heads
with LocalSelfAttention2d; see :mod:`sasa.detection.model` for exactly which ones.
"""
from __future__ import annotations

from dataclasses import dataclass

HEAD_MIXERS = ("conv", "attention")
HEAD_NORMS = ("group", "none")


@dataclass(frozen=True)
class DetectorConfig:
    """Everything a RetinaNet variant is made of; variants differ only in these values."""

    backbone: str = "resnet50"  # any registered classification model
    head: str = "conv"  # spatial mixer of the FPN output convs and the 4+4 head convs: "conv" or "attention"
    fpn_channels: int = 256
    # head="attention" only: each attention layer of the FPN and heads adds its input, x + attn(x)
    # (before the head's GroupNorm + ReLU), so that 4 stacked head layers start near the
    # identity instead of 4 near-uniform 7×7 averages; False: the paper's plain replacement
    head_residual: bool = True
    head_norm: str = "group"  # GroupNorm(32) after each head conv (torchvision's RetinaNet v2); "none": v1
    kernel_size: int = 7  # attention window, backbone and heads
    num_heads: int = 8
    backend: str = "auto"  # local_attention2d backend
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



def _detector_configs() -> dict[str, DetectorConfig]:
    configs = {}
    for depth in (26, 38, 50):
        configs[f"retinanet_resnet{depth}"] = DetectorConfig(backbone=f"resnet{depth}")
        for backbone in (f"sa_resnet{depth}", f"sa_resnet{depth}_convstem"):
            configs[f"retinanet_{backbone}"] = DetectorConfig(backbone=backbone)
            configs[f"retinanet_{backbone}_attnhead"] = DetectorConfig(backbone=backbone, head="attention")
    return configs


DETECTOR_CONFIGS: dict[str, DetectorConfig] = _detector_configs()
