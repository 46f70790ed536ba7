"""Detection options (one dataclass) and its recipes (instances of it)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sasa.detection.config import DETECTOR_CONFIGS, HEAD_INITS
from sasa.detection.model import resolve_detector_config
from sasa.detection.transforms import DEFAULT_SCALE_RANGE
from sasa.engine.options import NON_NEGATIVE, POSITIVE, flag_name, option
from sasa.engine.trainer import TrainConfig
from sasa.errors import UserError
from sasa.models import list_models
from sasa.models.registry import resolve_config

COCO_PATHS = ("images", "ann", "val_images", "val_ann")
SHAPES_FIELDS = ("shapes_train", "shapes_val", "shapes_seed")
DETECTOR_FIELDS = ("backbone", "head", "head_residual", "readout_residual", "head_content", "head_init", "fpn_norm", "kernel_size", "num_heads", "backend",
                   "fpn_channels", "anchor_size")


@dataclass(kw_only=True)
class DetectionOptions(TrainConfig):
    """Everything a detection run is made of (saved as the run's config.json ``options``)."""

    data: str = option("shapes", "shapes (generated) or coco (--images/--ann/--val-images/--val-ann)",
                       choices=("shapes", "coco"))
    images: str | None = option(None, "training image folder (--data coco)")
    ann: str | None = option(None, "training COCO annotation json (--data coco)")
    val_images: str | None = option(None, "validation image folder (--data coco)")
    val_ann: str | None = option(None, "validation COCO annotation json (--data coco)")
    shapes_train: int = option(1000, "generated training images (--data shapes)", check=POSITIVE)
    shapes_val: int = option(200, "generated validation images (--data shapes)", check=POSITIVE)
    shapes_seed: int = option(0, "seed of the generated shapes", check=NON_NEGATIVE)
    model: str = option("retinanet_resnet26", "detector name, see `sasa detectors`")
    backbone: str | None = option(None, "override the backbone: any `sasa models` name, e.g. sa_resnet26")
    head: str | None = option(None, "spatial layers of the FPN and heads", choices=("conv", "attention"))
    head_residual: bool | None = option(None, "--head attention: x + attn(x) in the FPN and subnets (not the paper's "
                                        "form; --no-head-residual: the paper's plain form)")
    readout_residual: bool | None = option(None, "--head attention: the class/box read-outs mix x + attn(x) (not the "
                                           "paper's form; --no-readout-residual: the paper's)")
    head_content: bool | None = option(None, "--head attention: --no-head-content drops q·k from the FPN/head "
                                        "attention logits, leaving q·r (not the paper's detector)")
    head_init: str | None = option(None, "--head attention: neighbours starts head n of each FPN/head attention "
                                   "attending to the n-th neighbour of a 3x3 window (not the paper's); paper",
                                   choices=HEAD_INITS)
    fpn_norm: str | None = option(None, "GroupNorm after each FPN layer (group; not the paper's form) or none",
                                  choices=("none", "group"))
    kernel_size: int | None = option(None, "attention window of backbone and heads", check=POSITIVE)
    num_heads: int | None = option(None, "attention heads", check=POSITIVE)
    backend: str | None = option(None, "local_attention2d backend (default auto)")
    model_opt: dict | None = option(
        None, "detector config override, repeatable: --model-opt head_residual=True (any DetectorConfig or "
              "AttentionConfig field)")
    backbone_opt: dict | None = option(
        None, "backbone config override, repeatable: --backbone-opt stem_init=paper (any ResNetConfig field but "
              "attention; docs/models.md)")
    img_size: int = option(96, "shapes image size and default --min/--max-size", check=POSITIVE)
    min_size: int | None = option(None, "resize so the short side is this (default --img-size)", check=POSITIVE)
    max_size: int | None = option(None, "... and the long side at most this (default --img-size)", check=POSITIVE)
    fpn_channels: int = option(64, "FPN/head width", check=POSITIVE)
    anchor_size: int = option(12, "P3 anchor base size", check=POSITIVE)
    backbone_weights: str | None = option(None, "start the backbone from a `sasa train` checkpoint of the same model "
                                          "and options", metavar="CKPT")
    scale_jitter: list[float] | None = option(
        None, "multiscale jitter: long side max-size x U(MIN, MAX), then a random crop to max-size (the coco "
        "recipe's 0.8 1.2 is a range the paper does not state)", check=POSITIVE, nargs=2, metavar=("MIN", "MAX"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale_jitter is not None and self.scale_jitter[0] > self.scale_jitter[1]:
            raise UserError(f"scale_jitter must be [min, max] with min <= max, got {self.scale_jitter}")
        for key in (*COCO_PATHS, "backbone_weights"):  # absolute: eval and --resume may start in another folder
            if getattr(self, key) is not None:
                setattr(self, key, os.path.abspath(getattr(self, key)))
        if self.backend is not None:
            from sasa.functional import available_backends

            if self.backend != "auto" and self.backend not in available_backends():
                raise UserError(f"backend must be 'auto' or one of {available_backends()}, got {self.backend!r}")
        try:
            resolve_detector_config(self.model, **self.detector_overrides())
        except (ValueError, TypeError) as error:
            raise UserError(str(error)) from None

    def fit_recipe(self, given: dict[str, Any]) -> dict[str, Any]:
        """The recipe's changes for detectors whose FPN and heads are attention (:data:`ATTENTION_HEAD_RECIPES`);
        given values still win."""
        fitted = super().fit_recipe(given)
        config = DETECTOR_CONFIGS.get(given.get("model", self.model))  # an unknown name is refused later
        head = given.get("head") or (config.head if config else "conv")
        if head != "conv":
            fitted.update(ATTENTION_HEAD_RECIPES.get(self.data, {}))
        backbone = given.get("backbone") or (config.backbone if config else None)
        # with --backbone-weights the classifier's stem (and its options) is what the detector starts from
        if backbone in list_models() and resolve_config(backbone).stem == "attention" and not given.get("backbone_weights"):
            fitted.update(ATTENTION_STEM_RECIPES.get(self.data, {}))
        return fitted

    def detector_overrides(self) -> dict[str, Any]:
        """The :class:`~sasa.detection.DetectorConfig` values these options set (flags over --model-opt)."""
        flags = {key: getattr(self, key) for key in DETECTOR_FIELDS if getattr(self, key) is not None}
        if self.backbone_opt is not None:
            flags["backbone_options"] = {**((self.model_opt or {}).get("backbone_options") or {}), **self.backbone_opt}
        return {**(self.model_opt or {}), **flags,
                "min_size": self.min_size or self.img_size, "max_size": self.max_size or self.img_size}

    def check_ready(self) -> None:
        missing = [key for key in COCO_PATHS if self.data == "coco" and not getattr(self, key)]
        if missing:
            flag = "--" + missing[0].replace("_", "-")
            raise UserError(f"--data coco needs --images, --ann, --val-images and --val-ann (missing {flag})")


# The embedded default, sized for ~15 CPU minutes: generated shapes, a ResNet-26 RetinaNet with a
# 64-channel FPN and heads, 96×96 images, anchors from 12 px, AdamW from scratch (no pretrained
# weights exist). 12 epochs, not 6: the attention backbone needs about twice the steps of the conv one
# (6 epochs: sa_resnet26 AP50 0.23, conv 0.65; 12 epochs: sa_resnet26 0.52). Measured numbers: see the README.
# head_residual: attention heads (``_attnhead``) train with the identity path x + attn(x) here: in the paper's
# plain form they did not learn in this budget (AP50 0.007 after 2 epochs, 0.014 after 5; with it: 0.039 after 2).
# Detectors with attention FPN/heads also take ATTENTION_HEAD_RECIPES below (README: what made them learn).
# Real COCO, the paper's appendix A.3 (SPEC §5): 150 epochs, global batch 64, lr warmed up linearly from 0 to
# 0.12 over 1 epoch then cosine, multiscale jitter, crop to a maximum dimension of 640, flip with p=0.5 (always on
# in training). Assumptions (not stated in the paper): SGD with Nesterov momentum 0.9, weight decay 1e-4 (the
# usual RetinaNet value), no gradient clipping, jitter scales 0.8–1.2 (sasa.detection.transforms).
RECIPES: dict[str, DetectionOptions] = {
    "shapes": DetectionOptions(
        data="shapes", model="retinanet_resnet26", shapes_train=1000, shapes_val=200, img_size=96, fpn_channels=64,
        anchor_size=12, head_residual=True, epochs=12, batch_size=8, opt="adamw", lr=1e-3, weight_decay=0.05, warmup_epochs=0.5,
        grad_clip=10.0,
    ),
    "coco": DetectionOptions(
        data="coco", model="retinanet_sa_resnet50_attnhead", img_size=640, fpn_channels=256, anchor_size=32,
        epochs=150, batch_size=64, opt="sgd", lr=0.12, weight_decay=1e-4, warmup_epochs=1.0, sync_bn=True,
        scale_jitter=list(DEFAULT_SCALE_RANGE),
    ),
}


# On shapes, attention FPN/heads (head != "conv") learn only with these changes (none is the paper's; README
# "what made the attention heads learn"): q·r logits without q·k, the conv-like neighbour start, 3× the lr
# (conv heads: no change at 3e-3) and a longer schedule that still fits 30 CPU minutes: 36 epochs, because the
# full-attention detector (16-matrix patchify stem) takes about 40 s per epoch on the idle 2-core machine.
ATTENTION_HEAD_RECIPES: dict[str, dict[str, Any]] = {
    "shapes": dict(head_content=False, head_init="neighbours", lr=3e-3, epochs=36),
}


# On shapes, attention-stem backbones (sa_resnet*) start their stem as a linear 4×4 patch embedding
# (AttentionStem.patchify_, 16 value matrices; not the paper's init): README "what made the full-attention
# detector learn". From scratch only: with --backbone-weights the classifier's stem is loaded.
ATTENTION_STEM_RECIPES: dict[str, dict[str, Any]] = {
    "shapes": dict(backbone_opt={"stem_init": "patchify", "stem_value_mixtures": 16}),
}


def resolve_options(given: dict[str, Any]) -> DetectionOptions:
    """The recipe of ``given["data"]`` with every given (non-None) value. Without ``data``, COCO paths
    imply ``coco`` (else ``shapes``); options of the other data source are refused, not ignored."""
    data = given.get("data") or ("coco" if any(given.get(key) for key in COCO_PATHS) else "shapes")
    other = [key for key in (COCO_PATHS if data == "shapes" else SHAPES_FIELDS) if given.get(key) is not None]
    if other:
        flags = ", ".join(flag_name(key) for key in other)
        raise UserError(f"{flags} {'does' if len(other) == 1 else 'do'} not apply to --data {data}; "
                        f"{'give --data coco with all four COCO paths' if data == 'shapes' else 'drop it'}")
    return DetectionOptions.from_recipe(RECIPES[data], {**given, "data": data})
