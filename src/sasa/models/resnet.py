"""One bottleneck-ResNet builder for the conv baseline and the attention models.

Attribute names follow torchvision (``conv1/bn1/layer1..layer4/fc``) so feature
extractors and FPN backbones work unchanged; the attention stem is ``stem``.
"""
from __future__ import annotations

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torch.utils.checkpoint import checkpoint

from sasa.layers import AttentionStem, create_spatial_mixer
from sasa.layers.projection import conv1x1
from sasa.models.config import ResNetConfig


def init_conv_bn_(module: nn.Module) -> None:
    """torchvision's init (conv: kaiming fan_out; BN: 1, 0) for the convs and BNs of ``module``, except inside
    layers that own their initialisation (a ``reset_parameters`` of their own, e.g. attention mixers)."""
    for child in module.children():
        if isinstance(child, nn.Conv2d):
            nn.init.kaiming_normal_(child.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(child, nn.BatchNorm2d):
            nn.init.ones_(child.weight)
            nn.init.zeros_(child.bias)
        elif not hasattr(child, "reset_parameters"):
            init_conv_bn_(child)


class Bottleneck(nn.Module):
    """1×1 reduce -> spatial mixer (3×3 conv, local attention or an axial pair) -> 1×1 expand, plus shortcut."""

    def __init__(self, in_channels: int, width: int, *, stride: int, config: ResNetConfig, spatial: str) -> None:
        super().__init__()
        out_channels = width * config.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = create_spatial_mixer(spatial, width, width, stride=stride, config=config.attention)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # conv1x1: the 1×1 convs as matmuls under torch.compile (dynamic sizes; sasa.layers.projection)
        identity = x if self.downsample is None else self._shortcut(x)
        out = self.relu(self.bn1(conv1x1(self.conv1, x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(conv1x1(self.conv3, out))
        return self.relu(out + identity)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """The projection shortcut; in eager mode the Sequential itself, so hooks on it fire."""
        if not torch.compiler.is_compiling():
            return self.downsample(x)
        conv, norm = self.downsample
        return norm(conv1x1(conv, x))


class ResNet(nn.Module):
    """(B, in_chans, H, W) -> (B, num_classes) logits. ``forward_features`` gives (B, 2048, H/32, W/32)."""

    def __init__(self, config: ResNetConfig, *, num_classes: int = 1000, in_chans: int = 3) -> None:
        super().__init__()
        if num_classes < 0 or in_chans <= 0:
            raise ValueError(f"num_classes must be >= 0 and in_chans > 0, got {num_classes} and {in_chans}")
        self.config = config
        self.num_classes, self.in_chans = num_classes, in_chans
        if config.stem == "conv":
            self.conv1 = nn.Conv2d(in_chans, config.stem_channels, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(config.stem_channels)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        elif config.stem == "attention":
            self.stem = AttentionStem(
                in_chans, config.stem_channels, num_heads=config.stem_heads,
                num_value_mixtures=config.stem_value_mixtures, values=config.stem_values, init=config.stem_init,
            )
        else:  # "blocks": the stand-alone stem of Full Axial-Attention (SPEC §8)
            width, out = config.stem_channels, config.stem_channels * config.expansion
            self.stem = nn.Sequential(
                Bottleneck(in_chans, width, stride=2, config=config, spatial=config.spatial),
                Bottleneck(out, width, stride=1, config=config, spatial=config.spatial),
                Bottleneck(out, width, stride=1, config=config, spatial=config.spatial),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        channels = config.stem_channels * (config.expansion if config.stem == "blocks" else 1)
        for index, (blocks, width) in enumerate(zip(config.layers, config.widths)):
            stride = 1 if index == 0 else 2
            spatial = config.spatial if index + 1 in config.mixer_stages else "conv"
            stage = []
            for block in range(blocks):
                stage.append(
                    Bottleneck(channels, width, stride=stride if block == 0 else 1, config=config, spatial=spatial)
                )
                channels = width * config.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.num_features = channels
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(config.drop_rate)
        self.fc = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        self.feature_info = self._feature_info()
        self.pretrained_cfg = self.default_cfg = pretrained_cfg(num_classes=num_classes, in_chans=in_chans, config=config)
        self._init_weights()

    def _feature_info(self) -> list[dict]:
        """timm's feature metadata: the stem's output and each stage's (channels, stride, module name)."""
        stem_channels = self.config.stem_channels * (self.config.expansion if self.config.stem == "blocks" else 1)
        stem = dict(num_chs=stem_channels, reduction=2, module="relu") if self.config.stem == "conv" else (
            dict(num_chs=stem_channels, reduction=4, module="stem"))
        stages = [
            dict(num_chs=width * self.config.expansion, reduction=4 * 2**index, module=f"layer{index + 1}")
            for index, width in enumerate(self.config.widths)
        ]
        return [stem, *stages]

    def _init_weights(self) -> None:
        init_conv_bn_(self)
        if self.config.zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.stem == "blocks":  # bottlenecks at 1/2 resolution: checkpointed as the stages' are
            return self._run_blocks(self.stem, x)
        if self.config.stem != "conv":
            return self.stem(x)
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def _run_blocks(self, blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            if self.grad_checkpointing and torch.is_grad_enabled() and isinstance(block, Bottleneck):
                # activations inside the block are recomputed in backward (BN running stats then
                # see the batch twice, as with timm's checkpoint_seq)
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H/32, W/32)."""
        x = self.forward_stem(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = self._run_blocks(stage, x)
        return x

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """(B, num_features, h, w) -> pooled (B, num_features) if ``pre_logits`` else logits (B, num_classes)."""
        x = self.drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # timm's model API
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh (zero-bias, default-init) linear head for ``num_classes`` (0: identity, features only)."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool must be 'avg' (the only pooling of these models), got {global_pool!r}")
        self.num_classes = num_classes
        self.pretrained_cfg = self.default_cfg = {**self.pretrained_cfg, "num_classes": num_classes}
        device = next(self.parameters()).device
        self.fc = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each bottleneck block's activations (the stages' and a "blocks" stem's) in backward
        instead of keeping them (same gradients); only each block's input is saved."""
        self.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^(conv1|bn1|stem)", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")


def pretrained_cfg(*, num_classes: int, in_chans: int, config: ResNetConfig) -> dict:
    """timm's pretrained_cfg: the input the models are trained and evaluated at (``sasa train`` on folders:
    ImageNet mean/std, 224 centre crop of the image resized to 256). No weights are shipped."""
    return dict(
        input_size=(in_chans, 224, 224), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, crop_pct=0.875,
        crop_mode="center", interpolation="bilinear", num_classes=num_classes, pool_size=(7, 7),
        first_conv="conv1" if config.stem == "conv" else "stem", classifier="fc", url="",
    )
