"""``create_model`` / ``list_models`` and registration of the attention models with timm."""
from __future__ import annotations

from torch import nn

from sasa.models.config import MODEL_CONFIGS, ResNetConfig
from sasa.registry import resolve, unknown_name_error
from sasa.models.resnet import ResNet

# timm passes these to every entry point; they mean nothing for weights we do not ship
_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def list_models() -> list[str]:
    return sorted(MODEL_CONFIGS)


def unknown_model_error(name: str) -> ValueError:
    return unknown_name_error("model", name, list_models())


def resolve_config(name: str, **overrides) -> ResNetConfig:
    """The registered config of ``name`` with ``overrides`` (None values dropped) applied."""
    return resolve("model", MODEL_CONFIGS, name, overrides)


def create_model(name: str, *, num_classes: int = 1000, in_chans: int = 3, **overrides) -> nn.Module:
    """Build a registered model, e.g. ``create_model("sa_resnet26", num_classes=10, kernel_size=5)``."""
    return ResNet(resolve_config(name, **overrides), num_classes=num_classes, in_chans=in_chans)


def _timm_entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs) -> nn.Module:
        if pretrained:
            raise ValueError(f"sasa ships no pretrained weights for {name!r}; load a safetensors checkpoint instead")
        for key in _TIMM_ONLY_KWARGS:
            kwargs.pop(key, None)
        return create_model(name, **kwargs)

    entrypoint.__name__ = name
    entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    return entrypoint


def register_with_timm() -> list[str]:
    """Register our models with timm, leaving timm's own models of the same name (resnet26/50) alone."""
    from timm.models import is_model, register_model

    registered = []
    for name in list_models():
        if not is_model(name):
            register_model(_timm_entrypoint(name))
            registered.append(name)
    return registered


TIMM_MODELS = register_with_timm()
