"""RetinaNet + FPN on our (attention) ResNets, assembled from torchvision's detection parts.

Anchors, box coding, matching, focal loss, NMS and the resize/normalise transform are
torchvision's (``torchvision.models.detection.RetinaNet``); this module only chooses the
backbone and which spatial layers of the FPN and the heads are attention.

``head="attention"`` is the paper's attention detector (appendix A.3, SPEC §6): every spatial
convolution of the FPN and of the class and box subnets becomes the head mixer (LocalSelfAttention2d,
options from ``DetectorConfig.attention``, by default k=7, 8 heads) of the same width (C → C):
  * the 3×3 output convs of the FPN at P3, P4, P5 (``backbone.fpn.layer_blocks[i][0]``);
  * the stride-2 3×3 convs making P6 and P7 (``backbone.fpn.extra_blocks.p6/p7``): attention at the
    input resolution, then a 2×2 average pool with stride 2 (as strided attention in the backbone);
  * the four 3×3 convs of each subnet (``head.{classification,regression}_head.conv[i][0]``), each
    still followed by GroupNorm + ReLU (torchvision's RetinaNet v2 head);
  * the last layer of each subnet (``cls_logits``, ``bbox_reg``): attention C → C followed by the
    pointwise conv that mixes the heads into the 9·K class logits or 9·4 box deltas
    (:class:`AttentionReadout`).
Initialisation: the subnets' W_V from N(0, 0.01²) as RetinaNet initialises its head convs, W_Q and
W_K fan-in normal (the q·k logits start O(1), as in the backbone); the read-out's pointwise conv
N(0, 0.01²) with the bias of the conv it replaces, so the class prior bias −log((1−π)/π) is kept.
The FPN's attention keeps the fan-in init throughout. The 1×1 lateral convs stay (not spatial).
Another registered mixer as ``head`` takes the same places with its own init.

Two more named options change the head attention alone (the backbone keeps ``attention``), for local
attention heads: ``head_content=False`` drops q·k (logits q·r, Table 6's "qr" form), and
``head_init="neighbours"`` gives every FPN/head attention layer per-head row/column embeddings and a q
bias, and starts head n attending to the n-th neighbour of a 3×3 window (a conv-like start,
:meth:`LocalSelfAttention2d.point_heads_at_`).

``head_residual=True`` (a named option, off by default) wraps the FPN output and the 4+4 subnet
attention layers as ``x + attn(x)`` (:class:`ResidualAttention`; no parameters, no counted FLOPs);
``readout_residual=True`` does the same for the read-outs' attention (``mix(x + attn(x))``), and
``fpn_norm="group"`` adds GroupNorm after every FPN layer. None is the paper's form; the shapes
training recipe turns them on: there the plain form did not learn in budget (README).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from sasa.detection.config import DETECTOR_CONFIGS, DetectorConfig, norm_groups
from sasa.detection.resize import ClampedResizeTransform
from sasa.engine.io import load_weights
from sasa.layers import LocalSelfAttention2d, create_spatial_mixer
from sasa.models import create_model
from sasa.models.registry import resolve_config
from sasa.profile import count_flops, count_params
from sasa.errors import UserError
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
    resnet = create_model(config.backbone, num_classes=0, attention=config.attention if shared else None,
                          **(config.backbone_options or {}))
    channels = [width * resnet.config.expansion for width in resnet.config.widths[1:]]
    extra = LastLevelP6P7(config.fpn_channels, config.fpn_channels)
    backbone = BackboneWithFPN(
        resnet,
        return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=channels,
        out_channels=config.fpn_channels,
        extra_blocks=extra,
        norm_layer=_group_norm if config.fpn_norm == "group" else None,  # after the laterals and P3-P5 outputs
    )
    extra.p6, extra.p7 = _fpn_extra(extra.p6, config), _fpn_extra(extra.p7, config)
    backbone.body.config = resnet.config  # what load_backbone_weights_ checks a classifier against
    return backbone


def _fpn_extra(layer: nn.Module, config: DetectorConfig) -> nn.Module:
    """P6 or P7's layer, followed by GroupNorm under ``fpn_norm="group"``."""
    return nn.Sequential(layer, _group_norm(config.fpn_channels)) if config.fpn_norm == "group" else layer


class ResidualAttention(nn.Module):
    """``x + mixer(x)``: an FPN output or subnet layer with an identity path (``head_residual``).

    Not the paper's form; kept as an option. The addition has no parameters and no counted FLOPs.
    """

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attention(x)


class AttentionReadout(nn.Module):
    """The last layer of a subnet in the paper's attention head: (B, C, H, W) -> (B, out_channels, H, W).

    The head mixer C → C, then a 1×1 conv mixing its heads into the outputs (9·K logits or 9·4 deltas).
    """

    def __init__(self, attention: nn.Module, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.attention = attention
        self.mix = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.attention(x))


# torchvision's init of the head convs (RetinaNet): N(0, 0.01²), applied to the subnets' W_V
HEAD_INIT_STD = 0.01
# head_init="neighbours": head n starts on the n-th of these window offsets (dy, dx), the 3×3 ring
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _head_mixer(in_channels: int, config: DetectorConfig, *, stride: int = 1,
                value_std: float | None = None) -> nn.Module:
    """The ``config.head`` mixer in_channels → fpn_channels; given ``value_std``, a local attention's
    W_V is drawn from N(0, value_std²) (W_Q, W_K keep the layer's fan-in init)."""
    layer = create_spatial_mixer(config.head, in_channels, config.fpn_channels, stride=stride,
                                 config=config.head_attention())
    if isinstance(layer, LocalSelfAttention2d) and config.head_init == "neighbours":
        layer.point_heads_at_(NEIGHBOURS)
    if isinstance(layer, LocalSelfAttention2d) and value_std is not None:
        with torch.no_grad():  # qkv's output channels are [q | k | v]
            layer.qkv.weight[2 * layer.out_channels :].normal_(0.0, value_std)
    return layer


def _same_width_layer(config: DetectorConfig, *, value_std: float | None = None) -> nn.Module:
    layer = _head_mixer(config.fpn_channels, config, value_std=value_std)
    return ResidualAttention(layer) if config.head_residual else layer


def _readout(conv: nn.Conv2d, config: DetectorConfig) -> AttentionReadout:
    """The read-out replacing prediction conv ``conv``, keeping its bias init (the class prior)."""
    mixer = _head_mixer(conv.in_channels, config, value_std=HEAD_INIT_STD)
    if config.readout_residual:
        mixer = ResidualAttention(mixer)
    readout = AttentionReadout(mixer, config.fpn_channels, conv.out_channels)
    nn.init.normal_(readout.mix.weight, std=HEAD_INIT_STD)
    with torch.no_grad():
        readout.mix.bias.copy_(conv.bias)
    return readout


def replace_head_mixers_(backbone: BackboneWithFPN, head: RetinaNetHead, config: DetectorConfig) -> None:
    """In place: every spatial conv of the FPN and of the class/box subnets becomes the ``config.head``
    mixer (module docstring)."""
    for block in backbone.fpn.layer_blocks:
        block[0] = _same_width_layer(config)
    extra = backbone.fpn.extra_blocks
    extra.p6 = _fpn_extra(_head_mixer(config.fpn_channels, config, stride=2), config)
    extra.p7 = _fpn_extra(_head_mixer(config.fpn_channels, config, stride=2), config)
    for subnet in (head.classification_head, head.regression_head):
        for block in subnet.conv:
            block[0] = _same_width_layer(config, value_std=HEAD_INIT_STD)
    head.classification_head.cls_logits = _readout(head.classification_head.cls_logits, config)
    head.regression_head.bbox_reg = _readout(head.regression_head.bbox_reg, config)


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


def _weight_options(options) -> dict:
    """Backbone options as flat JSON values: nested option objects (``attention``) merged in, unset (None)
    values, ``backend`` (how attention runs, not what it computes) and ``stem_init`` (loaded weights replace
    the init) left out. Flat, so that checkpoints written before the options were grouped compare equal."""
    if dataclasses.is_dataclass(options):
        options = json.loads(json.dumps(dataclasses.asdict(options)))
    flat = {}
    for key, value in options.items():
        if isinstance(value, dict):
            flat.update(_weight_options(value))
        elif value is not None and key not in ("backend", "stem_init"):
            flat[key] = value
    return flat


def load_backbone_weights_(detector: RetinaNet, checkpoint: str | Path) -> dict:
    """In place: the detector's ResNet backbone takes the weights of a ``sasa train`` classifier checkpoint.

    The classifier must be the same registered model with the same options as the backbone (the
    attention backend aside); otherwise a UserError names both. The classifier's ``fc`` is dropped.
    Returns the checkpoint's metadata.
    """
    state, metadata = load_weights(checkpoint)
    if "model_config" not in metadata or metadata.get("task") == "detection":
        raise UserError(f"--backbone-weights {str(checkpoint)!r} is not a classifier checkpoint written by `sasa train`")
    body = detector.backbone.body
    backbone = detector.config.backbone
    if metadata["model"] != backbone:
        raise UserError(f"--backbone-weights {str(checkpoint)!r} holds a {metadata['model']!r} classifier; "
                         f"the detector's backbone is {backbone!r}")
    ours, theirs = _weight_options(body.config), _weight_options(metadata["model_config"])
    # an option only one side names (added or removed since the checkpoint) counts at its default
    differ = sorted(key for key in ours.keys() & theirs.keys() if ours[key] != theirs[key])
    if differ:
        raise UserError(
            f"--backbone-weights {str(checkpoint)!r}: its {metadata['model']!r} was built with "
            + ", ".join(f"{key}={theirs.get(key)!r}" for key in differ) + "; the detector's backbone has "
            + ", ".join(f"{key}={ours.get(key)!r}" for key in differ)
        )
    if int(metadata.get("in_chans", 3)) != 3:
        raise UserError(f"--backbone-weights {str(checkpoint)!r} takes {metadata['in_chans']}-channel images; "
                         "detectors take RGB (3)")
    wanted = body.state_dict()
    missing = sorted(key for key in wanted if key not in state)
    if missing:
        raise UserError(f"--backbone-weights {str(checkpoint)!r} lacks backbone tensors, e.g. {missing[:3]}")
    body.load_state_dict({key: state[key] for key in wanted})
    return metadata

