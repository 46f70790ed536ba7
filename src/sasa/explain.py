"""Attention maps: the k×k attention weights of chosen query pixels, per head, read from a model's layer.

The weights are computed exactly from the layer's own q, k and relative embeddings for the input
the layer receives when ``model(images)`` runs (captured with a forward pre-hook), so they are the
softmax the op applies: over the in-image part of the window, zero outside it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sasa.layers import LocalSelfAttention2d


@dataclass(frozen=True)
class AttentionMaps:
    """weights (B, P, N, k, k): head n of query pixel p attends to offset (dy - r, dx - r) with weights[:, p, n, dy, dx].

    ``positions``: each query pixel in the layer's input grid (``feature_size``); ``layer``: the module name.
    """

    weights: torch.Tensor
    positions: list[tuple[int, int]]
    feature_size: tuple[int, int]
    layer: str


def attention_layers(model: nn.Module) -> list[str]:
    """Names of the local self-attention layers of ``model``, in forward order."""
    return [name for name, module in model.named_modules() if isinstance(module, LocalSelfAttention2d)]


def _layer(model: nn.Module, layer: str | None) -> tuple[str, LocalSelfAttention2d]:
    names = attention_layers(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no local self-attention layer (LocalSelfAttention2d)")
    name = names[0] if layer is None else layer
    if name not in names:
        raise ValueError(f"layer must name a local self-attention layer, got {layer!r}; choices: {', '.join(names)}")
    return name, model.get_submodule(name)


def _layer_input(model: nn.Module, module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    captured = []
    handle = module.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return captured[0]


def _feature_position(pixel: tuple[int, int], image_size: tuple[int, int], feature_size: tuple[int, int]) -> tuple[int, int]:
    """Image pixel (y, x) -> the feature-map pixel whose receptive-field grid cell contains it."""
    y, x = pixel
    height, width = image_size
    if not (0 <= y < height and 0 <= x < width):
        raise ValueError(f"pixel (y, x) = {pixel} lies outside the {height}x{width} image")
    return y * feature_size[0] // height, x * feature_size[1] // width


def attention_maps(
    model: nn.Module,
    images: torch.Tensor,
    *,
    pixels: list[tuple[int, int]],
    layer: str | None = None,
) -> AttentionMaps:
    """Each head's k×k attention weights at ``pixels`` (image coordinates (y, x)) in ``layer``.

    images (B, C, H, W); ``layer``: a name from :func:`attention_layers` (default: the first).
    Returns :class:`AttentionMaps` with weights (B, P, N, k, k); out-of-image neighbours get weight 0.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if not pixels:
        raise ValueError("pixels must list at least one (y, x) pixel")
    name, module = _layer(model, layer)
    x = _layer_input(model, module, images)
    with torch.no_grad():
        q, k, _, rel_pos = module.attention_inputs(x)
    size = (q.shape[2], q.shape[3])
    positions = [_feature_position(tuple(int(c) for c in pixel), tuple(images.shape[-2:]), size) for pixel in pixels]
    ks, r = module.kernel_size, module.kernel_size // 2
    padded = F.pad(k, (0, 0, r, r, r, r))  # (B, N, H + 2r, W + 2r, D); zeros stand for out-of-image keys
    offsets = torch.arange(-r, r + 1, device=q.device)
    maps = []
    for y, x_ in positions:
        window = padded[:, :, y:y + ks, x_:x_ + ks]  # (B, N, k, k, D): the window centred on (y, x)
        if rel_pos is not None:
            window = window + rel_pos
        logits = torch.einsum("bnd,bnxyd->bnxy", q[:, :, y, x_], window)
        if module.config.padding == "mask":  # the op's default: only in-image neighbours take part
            inside = (((y + offsets) >= 0) & ((y + offsets) < size[0]))[:, None] & (
                ((x_ + offsets) >= 0) & ((x_ + offsets) < size[1]))[None, :]
            logits = logits.masked_fill(~inside, float("-inf"))
        maps.append(logits.flatten(-2).softmax(dim=-1).view_as(logits))
    return AttentionMaps(weights=torch.stack(maps, dim=1), positions=positions, feature_size=size, layer=name)


def draw_attention_maps(maps: AttentionMaps, image: torch.Tensor, *, pixel: tuple[int, int], out: str) -> None:
    """PNG with the image and, per head, the k×k weights of the first query pixel drawn over it (written atomically).

    image (3, H, W) in [0, 1]; the window is drawn over the image area it covers, the query pixel marked.
    """
    import os
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = maps.weights[0, 0].float().cpu()  # (N, k, k)
    heads, ks = weights.shape[0], weights.shape[-1]
    height, width = image.shape[-2:]
    cell_y, cell_x = height / maps.feature_size[0], width / maps.feature_size[1]
    y, x = maps.positions[0]
    r = ks // 2
    extent = ((x - r) * cell_x, (x + r + 1) * cell_x, (y + r + 1) * cell_y, (y - r) * cell_y)  # left, right, bottom, top
    picture = image.permute(1, 2, 0).cpu().numpy()
    columns = min(heads + 1, 5)
    rows = -(-(heads + 1) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index > heads:
            continue
        axis.imshow(picture)
        if index > 0:
            axis.imshow(weights[index - 1].numpy(), cmap="magma", alpha=0.6, extent=extent, vmin=0,
                        vmax=float(weights[index - 1].max()))
            axis.set_title(f"head {index - 1} (max {float(weights[index - 1].max()):.2f})", fontsize=9)
        else:
            axis.set_title(f"{maps.layer}\nquery (y, x) = {pixel}", fontsize=9)
        axis.plot([pixel[1]], [pixel[0]], marker="x", color="cyan", markersize=8, mew=2)
        axis.set_xlim(-0.5, width - 0.5)
        axis.set_ylim(height - 0.5, -0.5)
    figure.tight_layout()
    directory = os.path.dirname(os.path.abspath(out))
    handle, temporary = tempfile.mkstemp(suffix=".png", dir=directory)
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=100)
        os.replace(temporary, out)
    finally:
        plt.close(figure)
        if os.path.exists(temporary):
            os.remove(temporary)
