"""``create_model`` / ``list_models`` and registration of the models with timm.

In ``sasa.create_model`` the models keep the paper's names (``resnet26``, ``sa_resnet26_convstem``,
``sa_resnet26``, ...). timm has its own ``resnet26``/``resnet50`` (other layouts), so in timm every
paper model is ``sasa_`` + its name (``timm.create_model("sasa_resnet26")`` is the paper's baseline).
The attention models (``sa_*``, ``axial_*``) are also registered under their bare names, which clash
with nothing in timm.
"""
from __future__ import annotations

from torch import nn

from sasa.models.config import MODEL_CONFIGS, ResNetConfig
from sasa.registry import resolve
from sasa.models.resnet import ResNet

# timm passes these to every entry point; they mean nothing for weights we do not ship
_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def list_models() -> list[str]:
    return sorted(MODEL_CONFIGS)


def resolve_config(name: str, **overrides) -> ResNetConfig:
    """The registered config of ``name`` with ``overrides`` (None values dropped) applied."""
    return resolve("model", MODEL_CONFIGS, name, overrides)


def create_model(name: str, *, num_classes: int = 1000, in_chans: int = 3, **overrides) -> nn.Module:
    """Build a registered model, e.g. ``create_model("sa_resnet26", num_classes=10, kernel_size=5)``."""
    return ResNet(resolve_config(name, **overrides), num_classes=num_classes, in_chans=in_chans)


TIMM_PREFIX = "sasa_"


def _timm_entrypoint(name: str, timm_name: str):
    def entrypoint(pretrained: bool = False, **kwargs) -> nn.Module:
        if pretrained:
            raise ValueError(f"sasa ships no pretrained weights for {name!r}; load a safetensors checkpoint instead")
        for key in _TIMM_ONLY_KWARGS:
            kwargs.pop(key, None)
        features_only = kwargs.pop("features_only", False)
        out_indices = kwargs.pop("out_indices", (0, 1, 2, 3, 4))
        model = create_model(name, **kwargs)
        if features_only:  # a list of stage outputs, as timm's own backbones give (detection/segmentation)
            from timm.models import FeatureListNet

            return FeatureListNet(model, out_indices=out_indices)
        return model

    entrypoint.__name__ = timm_name
    entrypoint.__qualname__ = timm_name
    entrypoint.__module__ = __name__
    return entrypoint


def timm_names() -> dict[str, str]:
    """timm name -> sasa name: ``sasa_<name>`` for every model, and the bare names that timm does not use."""
    from timm.models import is_model, model_entrypoint

    def free(timm_name: str) -> bool:
        return not is_model(timm_name) or model_entrypoint(timm_name).__module__ == __name__

    names = {TIMM_PREFIX + name: name for name in list_models()}
    names.update({name: name for name in list_models() if not name.startswith("resnet") and free(name)})
    return names


def register_with_timm() -> list[str]:
    """Register our models with timm (once per process); returns the timm names."""
    from timm.models import is_model, register_model

    names = timm_names()
    for timm_name, name in names.items():
        if not is_model(timm_name):
            register_model(_timm_entrypoint(name, timm_name))
    return sorted(names)


TIMM_MODELS = register_with_timm()
