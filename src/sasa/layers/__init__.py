"""Reusable building blocks. A layer never imports a model."""
from sasa.layers.attention_stem import AttentionStem
from sasa.layers.axial_attention import AxialAttention2d
from sasa.layers.local_attention import LocalSelfAttention2d
from sasa.layers.relative_position import RelativePositionEmbedding2d
from sasa.layers.spatial import create_spatial_mixer

__all__ = ["AttentionStem", "AxialAttention2d", "LocalSelfAttention2d", "RelativePositionEmbedding2d", "create_spatial_mixer"]
