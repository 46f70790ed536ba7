"""ONNX export of the models: every attention layer written as standard ONNX ops (README "ONNX export").

:func:`onnx_ready` copies a model and swaps each layer whose forward uses a custom op or a hand-written
autograd function for a module computing the same values from plain tensor ops:

* :class:`~sasa.layers.LocalSelfAttention2d`: the op as k² shifted slices
  (:func:`sasa.functional.shifts.local_attention2d_shifts`), no unfold;
* :class:`~sasa.layers.AttentionStem`: its plain (unfused) block attention, BN, ReLU and max pool, with the
  padded-pixel mask always built so that the graph is right at every image size.

The graph is traced by PyTorch's TorchScript-based exporter (``dynamo=False``) with batch, height and width
as dynamic axes: every size in the attention is read from the tensors, so one file runs at any image
size (the dynamo exporter guards H and W to multiples of 32). Layers whose graph would depend on the
traced size are refused by name (:data:`UNSUPPORTED`).
"""
from __future__ import annotations

import copy
import importlib.util
import os
import tempfile
import warnings
from pathlib import Path

import torch
from einops import rearrange
from torch import nn
import torch.nn.functional as F

from sasa.functional.shifts import local_attention2d_shifts
from sasa.layers import AttentionStem, AxialMixer2d, LocalSelfAttention2d

OPSET = 17
# the axial mixer picks global (L, L) or banded (L, 2·radius+1) logits from the axis length, and trims
# its tables to it: a traced graph would only be right at the traced size
UNSUPPORTED = {AxialMixer2d: "the axial mixer chooses its computation from the feature-map size"}


class ShiftLocalAttention2d(nn.Module):
    """``layer``'s forward with the op computed by k² shifted slices (same parameters, same values)."""

    def __init__(self, layer: LocalSelfAttention2d) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        q, k, v, rel_pos = layer.attention_inputs(x)
        out = local_attention2d_shifts(q, k, v, kernel_size=layer.kernel_size, rel_pos=rel_pos, padding=layer.config.padding)
        out = rearrange(out, "b n h w d -> b (n d) h w")
        return F.avg_pool2d(out, 2, 2, ceil_mode=True) if layer.stride == 2 else out


class PlainAttentionStem(nn.Module):
    """``stem``'s forward through its unfused path: pool(relu(bn(attend(x)))), the mask always built."""

    def __init__(self, stem: AttentionStem) -> None:
        super().__init__()
        self.stem = stem

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem
        return stem.pool(stem.relu(stem.bn(stem.attend(x, always_mask=True))))


def check_exportable(model: nn.Module) -> None:
    """Raise ValueError naming the first layer that cannot be exported to ONNX."""
    for name, module in model.named_modules():
        for kind, why in UNSUPPORTED.items():
            if isinstance(module, kind):
                raise ValueError(f"cannot export layer {name!r} ({type(module).__name__}) to ONNX: {why}")


def onnx_ready(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with its attention layers computed by plain tensor ops (same values)."""
    check_exportable(model)
    model = copy.deepcopy(model).eval()
    swaps = {LocalSelfAttention2d: ShiftLocalAttention2d, AttentionStem: PlainAttentionStem}
    for name, module in list(model.named_modules()):
        swap = swaps.get(type(module))
        if swap is not None and name:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, swap(module))
    return model


def export_onnx(model: nn.Module, out: str | os.PathLike, *, img_size: int = 224, in_chans: int | None = None,
                metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` (images (B, C, H, W) -> (B, classes)) as ONNX: input "images", output "logits",
    batch, height and width dynamic; traced at ``img_size``. ``metadata`` goes to the model's metadata_props.
    Written to a temporary file, then renamed: ``out`` is never left half-written."""
    if importlib.util.find_spec("onnx") is None:
        raise ImportError("ONNX export needs the onnx package: pip install 'sasa[onnx]'")
    out = Path(out)
    in_chans = in_chans or getattr(model, "in_chans", 3)
    ready = onnx_ready(model)
    example = torch.randn(2, in_chans, img_size, img_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".onnx.tmp", dir=out.parent)
    os.close(handle)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter is deprecated in favour of dynamo=True, which cannot keep H, W free here
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                ready, (example,), temporary, input_names=["images"], output_names=["logits"], opset_version=OPSET,
                dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}, dynamo=False,
            )
        if metadata:
            import onnx

            proto = onnx.load(temporary)
            onnx.helper.set_model_props(proto, metadata)
            onnx.save(proto, temporary)
        os.replace(temporary, out)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return out
