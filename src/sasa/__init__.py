"""sasa: stand-alone local self-attention vision models (Ramachandran et al., 2019)."""
from sasa import functional, layers
from sasa.functional import local_attention2d
from sasa.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "local_attention2d", "functional", "layers", "__version__"]
