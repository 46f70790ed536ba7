"""sasa: stand-alone local self-attention vision models (Ramachandran et al., 2019)."""
from sasa import functional, layers, profile
from sasa.functional import local_attention2d
from sasa.models import create_model, list_models
from sasa.profile import count_flops, count_params

__version__ = "0.1.0"
__all__ = [
    "count_flops", "count_params", "create_model", "list_models", "local_attention2d", "functional", "layers", "profile",
    "__version__",
]
