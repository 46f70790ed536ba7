"""Reusable building blocks. A layer never imports a model."""
from sasa.layers.absolute_position import sinusoidal_position_2d
from sasa.layers.attention_stem import AttentionStem
from sasa.layers.axial_attention import AxialAttention2d, AxialConfig, AxialMixer2d
from sasa.layers.local_attention import AttentionConfig, LocalSelfAttention2d
from sasa.layers.relative_position import RelativePositionEmbedding2d
from sasa.layers.spatial import SPATIAL_MIXERS, create_spatial_mixer, get_spatial_mixer, register_spatial_mixer

__all__ = [
    "AttentionConfig", "AttentionStem", "AxialAttention2d", "AxialConfig", "AxialMixer2d", "LocalSelfAttention2d", "RelativePositionEmbedding2d",
    "SPATIAL_MIXERS", "create_spatial_mixer", "get_spatial_mixer", "register_spatial_mixer", "sinusoidal_position_2d",
]
