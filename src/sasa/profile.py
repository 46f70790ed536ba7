"""Parameter and FLOP counts (convention: docs/flops.md).

Convention (reproduces the paper's Table 1): FLOPs = 2 × multiply-adds of every Conv2d and
Linear (1×1 shortcuts and the classifier included), plus each module's own ``extra_macs``
(attention: q·k, q·r and the weighted sum, k² each per output pixel and channel, border
windows counted in full; the attention stem also counts its value mixing). Normalisation,
activations, pooling and additions are not counted.
"""
from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _module_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kernel_macs = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        return output.numel() * kernel_macs
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if hasattr(module, "extra_macs"):
        return module.extra_macs(inputs[0].shape)
    return 0


@torch.no_grad()
def input_channels(model: nn.Module) -> int:
    """The channels a model's input has: its ``in_chans`` attribute, else the first layer's ``in_channels``."""
    channels = getattr(model, "in_chans", None)
    if channels is None:
        channels = next((m.in_channels for m in model.modules() if isinstance(getattr(m, "in_channels", None), int)), 3)
    return channels


def count_flops(model: nn.Module, input_size: tuple[int, ...] | int = 224, *, in_chans: int | None = None, inputs=None) -> int:
    """FLOPs (2 × multiply-adds) of one forward pass for a batch of one image.

    ``input_size``: an int (square image), (H, W) or (C, H, W). ``in_chans``: default the model's own
    (:func:`input_channels`). ``inputs``: anything the model's forward accepts, instead of a generated
    image (e.g. a list of images for a detector).
    """
    if inputs is None:
        in_chans = input_channels(model) if in_chans is None else in_chans
        if isinstance(input_size, int):
            input_size = (in_chans, input_size, input_size)
        elif len(input_size) == 2:
            input_size = (in_chans, *input_size)
        param = next(model.parameters())
        inputs = torch.zeros(1, *input_size, dtype=param.dtype, device=param.device)
    total = 0

    def hook(module, args, output):
        nonlocal total
        total += _module_macs(module, args, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        model(inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return 2 * total


def model_cost(name: str, *, img_size: int = 224, num_classes: int = 1000, **overrides) -> tuple[int, int]:
    """(parameters, FLOPs at img_size×img_size) of ``sasa.create_model(name, **overrides)``.

    Built on the meta device: the counts need shapes only, no arithmetic and no memory."""
    from sasa.models import create_model

    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **overrides)
    return count_params(model), count_flops(model, img_size)
