"""Model families built from one config-driven ResNet builder."""
from sasa.models.config import MODEL_CONFIGS, ResNetConfig
from sasa.models.registry import create_model, list_models
from sasa.models.resnet import Bottleneck, ResNet

__all__ = ["MODEL_CONFIGS", "ResNetConfig", "ResNet", "Bottleneck", "create_model", "list_models"]
