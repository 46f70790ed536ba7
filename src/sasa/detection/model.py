"""RetinaNet + FPN on our (attention) ResNets, assembled from torchvision's detection parts.

Anchors, box coding, matching, focal loss, NMS and the resize/normalise transform are
torchvision's (``torchvision.models.detection.RetinaNet``); this module only chooses the
backbone and which spatial layers of the FPN and the heads are attention.

``head="attention"`` (paper §4.2: spatial convolutions of the FPN and of the detection heads
replaced by self-attention) replaces, with the head mixer (LocalSelfAttention2d, 256 → 256, options from
``DetectorConfig.attention``):
  * the 3×3 output convs of the FPN at P3, P4 and P5 (``backbone.fpn.layer_blocks[i][0]``),
  * the four 3×3 convs of the classification subnet and the four of the box subnet
    (``head.{classification,regression}_head.conv[i][0]``), each still followed by
    GroupNorm + ReLU as in torchvision's RetinaNet v2 head.
With ``head_residual=True`` (the default) each of these 11 attention layers is wrapped as
``x + attn(x)`` (:class:`ResidualAttention`; no parameters, no counted FLOPs): a documented
departure from the paper's plain replacement, which trains far more slowly on the shapes set
(README, detection section). ``head_residual=False`` gives the plain replacement.
It keeps as convolutions, by decision:
  * the final 3×3 prediction convs (``cls_logits``, ``bbox_reg``): they are the linear read-out of
    the 9 anchors × classes, initialised with the focal-loss prior (bias −log((1−π)/π)); attention
    would replace a 256 → 9·K read-out with a 256 → 9·K attention whose values have no bias to
    carry that prior;
  * the stride-2 3×3 convs making P6 and P7 (``LastLevelP6P7``): they are downsamplers, not
    same-resolution spatial mixers, and each runs on ≤ 1/64 of the P3 pixels;
  * the 1×1 lateral convs (not spatial).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from sasa.detection.config import DETECTOR_CONFIGS, DetectorConfig, norm_groups
from sasa.detection.resize import ClampedResizeTransform
from sasa.layers import create_spatial_mixer
from sasa.models import create_model
from sasa.models.registry import resolve_config
from sasa.profile import count_flops, count_params
from sasa.registry import resolve

ANCHOR_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
ASPECT_RATIOS = (0.5, 1.0, 2.0)
PYRAMID_LEVELS = 5  # P3..P7


def list_detectors() -> list[str]:
    return sorted(DETECTOR_CONFIGS)


def resolve_detector_config(name: str, **overrides) -> DetectorConfig:
    """The registered config of ``name`` with ``overrides`` (None values dropped) applied and checked."""
    return resolve("detector", DETECTOR_CONFIGS, name, overrides)  # DetectorConfig checks itself


def build_anchor_generator(anchor_size: int) -> AnchorGenerator:
    """9 anchors per location on P3..P7; level i has base size anchor_size·2^i."""
    sizes = tuple(
        tuple(int(anchor_size * 2**level * scale) for scale in ANCHOR_SCALES) for level in range(PYRAMID_LEVELS)
    )
    return AnchorGenerator(sizes, (ASPECT_RATIOS,) * PYRAMID_LEVELS)


def build_backbone_with_fpn(config: DetectorConfig) -> BackboneWithFPN:
    """C3, C4, C5 of the ResNet (``layer2..layer4``) -> FPN P3..P5, plus P6, P7 from P5."""
    # the detector's attention options apply to the backbone too when its mixer takes the same options type
    shared = type(resolve_config(config.backbone).attention) is type(config.attention)
    resnet = create_model(config.backbone, num_classes=0, attention=config.attention if shared else None)
    channels = [width * resnet.config.expansion for width in resnet.config.widths[1:]]
    return BackboneWithFPN(
        resnet,
        return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=channels,
        out_channels=config.fpn_channels,
        extra_blocks=LastLevelP6P7(config.fpn_channels, config.fpn_channels),
    )


class ResidualAttention(nn.Module):
    """``x + attention(x)``: the attention layer of an FPN output or head block with an identity path.

    At init the 7×7 attention is near-uniform (a blur); without the identity, the 4 stacked head
    layers blur P3..P7 beyond what the 3×3 read-out can localise, and training stalls on the shapes
    set (README). The addition has no parameters and no counted FLOPs.
    """

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attention(x)


def _head_mixer(config: DetectorConfig) -> nn.Module:
    layer = create_spatial_mixer(config.head, config.fpn_channels, config.fpn_channels, config=config.attention)
    return ResidualAttention(layer) if config.head_residual else layer


def replace_head_mixers_(backbone: BackboneWithFPN, head: RetinaNetHead, config: DetectorConfig) -> None:
    """In place: the FPN's 3×3 output convs and the 4+4 head convs become the ``config.head`` mixer
    (each wrapped as ``x + mixer(x)`` when ``config.head_residual``)."""
    for block in backbone.fpn.layer_blocks:
        block[0] = _head_mixer(config)
    for subnet in (head.classification_head, head.regression_head):
        for block in subnet.conv:
            block[0] = _head_mixer(config)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels)


def build_detector(config: DetectorConfig, *, num_classes: int) -> RetinaNet:
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    backbone = build_backbone_with_fpn(config)
    anchor_generator = build_anchor_generator(config.anchor_size)
    norm_layer = _group_norm if config.head_norm == "group" else None
    head = RetinaNetHead(
        config.fpn_channels, anchor_generator.num_anchors_per_location()[0], num_classes, norm_layer=norm_layer
    )
    if config.head != "conv":
        replace_head_mixers_(backbone, head, config)
    detector = RetinaNet(
        backbone,
        num_classes,
        min_size=config.min_size,
        max_size=config.max_size,
        anchor_generator=anchor_generator,
        head=head,
        score_thresh=config.score_thresh,
        nms_thresh=config.nms_thresh,
        detections_per_img=config.detections_per_img,
    )
    # torchvision's transform resizes a 1000×5 image to 0 px; this one clamps each side to ≥ 1 px
    detector.transform = ClampedResizeTransform(
        config.min_size, config.max_size, detector.transform.image_mean, detector.transform.image_std
    )
    detector.config = config
    return detector


def create_detector(name: str, *, num_classes: int, **overrides) -> RetinaNet:
    """Build a registered detector, e.g. ``create_detector("retinanet_sa_resnet50", num_classes=80)``.

    ``overrides`` are DetectorConfig fields, e.g. ``backbone="sa_resnet26", min_size=128, max_size=128``.
    The model is torchvision's RetinaNet: ``model(images)`` in eval mode returns a list of
    ``{"boxes": (K, 4) xyxy, "scores": (K,), "labels": (K,) in [0, num_classes)}``; in train mode
    ``model(images, targets)`` returns ``{"classification": loss, "bbox_regression": loss}``.
    """
    return build_detector(resolve_detector_config(name, **overrides), num_classes=num_classes)


def profile_detector(name: str, *, img_size: int, num_classes: int = 80, full_forward: bool = False, **overrides) -> dict:
    """Parameters and FLOPs (docs/flops.md) for one img_size×img_size image, which the detector does not resize.

    FLOPs are counted by :func:`sasa.profile.count_flops`'s hooks (every Conv2d, plus ``extra_macs`` of
    the attention layers). By default the backbone + FPN and then the heads run on the meta device:
    only shapes are computed, so 1024×1024 attention models profile in seconds and without memory.
    The resize/normalise transform, anchors and post-processing have no conv or linear layer, so
    this equals ``count_flops(model, inputs=[image])`` (``full_forward=True`` runs that instead).
    """
    model = create_detector(name, num_classes=num_classes, min_size=img_size, max_size=img_size, **overrides)
    row = {"model": name, "params": count_params(model), "backbone_params": count_params(model.backbone.body)}
    divisor = model.transform.size_divisible  # the transform pads the batch to a multiple of this
    padded = math.ceil(img_size / divisor) * divisor
    if full_forward:
        flops = count_flops(model, inputs=[torch.zeros(3, img_size, img_size)])
        backbone_flops = count_flops(model.backbone.body, (3, padded, padded))
    else:
        model = model.to("meta")
        image = torch.zeros(1, 3, padded, padded, device="meta")
        backbone_flops = count_flops(model.backbone.body, inputs=image)
        features = list(model.backbone(image).values())
        flops = count_flops(model.backbone, inputs=image) + count_flops(model.head, inputs=features)
    return {**row, "flops": flops, "backbone_flops": backbone_flops, "img_size": img_size, "num_classes": num_classes}
