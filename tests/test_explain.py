"""sasa.explain.attention_maps: exact per-head weights of chosen pixels."""
from __future__ import annotations

import pytest
import torch
from einops import rearrange

from sasa.explain import attention_layers, attention_maps
from sasa.functional import local_attention2d_reference
from sasa.functional.reference import inside_image_mask, neighbourhoods
from sasa.models import create_model

SMALL = dict(layers=(1, 1, 1, 1), widths=(16, 16, 16, 32), stem_channels=16, num_heads=2, kernel_size=5)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("sa_resnet26", num_classes=3, **SMALL).eval()


def _layer_input(model, name, images):
    captured = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    with torch.no_grad():
        model(images)
    handle.remove()
    return captured[0]


@pytest.mark.parametrize("layer_index", [0, -1])
def test_weights_equal_reference_softmax_and_reproduce_output(model, layer_index):
    name = attention_layers(model)[layer_index]
    images = torch.randn(2, 3, 64, 96)
    pixels = [(0, 0), (31, 50), (63, 95)]  # a corner (clipped window), the middle, the opposite corner
    maps = attention_maps(model, images, layer=name, pixels=pixels)
    layer = model.get_submodule(name)
    ks, heads = layer.kernel_size, layer.num_heads
    assert maps.weights.shape == (2, 3, heads, ks, ks) and maps.layer == name
    x = _layer_input(model, name, images)
    with torch.no_grad():
        q, k, v, rel = layer.attention_inputs(x)
        # the reference's softmax, written out over every pixel
        logits = torch.einsum("bnhwd,bnhwxyd->bnhwxy", q, neighbourhoods(k, ks) + rel[None, :, None, None])
        inside = inside_image_mask(q.shape[2], q.shape[3], ks, q.device)
        reference = logits.masked_fill(~inside, float("-inf")).flatten(-2).softmax(-1).view_as(logits)
        out = local_attention2d_reference(q, k, v, kernel_size=ks, rel_pos=rel)
    for p, (y, x_) in enumerate(maps.positions):
        got = maps.weights[:, p]
        torch.testing.assert_close(got, reference[:, :, y, x_])
        assert torch.all(got[:, :, ~inside[y, x_]] == 0)
        torch.testing.assert_close(got.sum(dim=(-1, -2)), torch.ones(2, heads))
        # the weights applied to the value window give the op's output at that pixel
        mixed = torch.einsum("bnxy,bnxyd->bnd", got, neighbourhoods(v, ks)[:, :, y, x_])
        torch.testing.assert_close(mixed, out[:, :, y, x_], atol=1e-5, rtol=1e-5)
    assert maps.positions[0] == (0, 0) and maps.positions[-1] == (q.shape[2] - 1, q.shape[3] - 1)


def test_layer_output_matches_attention_inputs(model):
    name = attention_layers(model)[0]
    layer = model.get_submodule(name)
    x = _layer_input(model, name, torch.randn(1, 3, 64, 64))
    with torch.no_grad():
        q, k, v, rel = layer.attention_inputs(x)
        want = rearrange(local_attention2d_reference(q, k, v, kernel_size=layer.kernel_size, rel_pos=rel), "b n h w d -> b (n d) h w")
        if layer.stride == 2:
            want = torch.nn.functional.avg_pool2d(want, 2, 2, ceil_mode=True)
        torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)


def test_bad_arguments(model):
    images = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="layer must name a local self-attention layer, got 'fc'"):
        attention_maps(model, images, layer="fc", pixels=[(0, 0)])
    with pytest.raises(ValueError, match=r"pixel \(y, x\) = \(32, 0\) lies outside the 32x32 image"):
        attention_maps(model, images, pixels=[(32, 0)])
    with pytest.raises(ValueError, match="has no local self-attention layer"):
        attention_maps(create_model("resnet26", layers=(1, 1, 1, 1)), images, pixels=[(0, 0)])
