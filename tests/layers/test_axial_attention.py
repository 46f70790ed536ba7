"""AxialAttention2d: shapes and strides, spans at any input size, batch norm over in-span pairs, backends."""
import pytest
import torch
from torch import nn

from sasa.functional.axial import axial_attention1d
from sasa.layers import AxialAttention2d
from sasa.layers.axial_attention import AxialConfig, AxialMixer2d, masked_batch_norm


@pytest.mark.parametrize("axis,stride,size,expected", [
    ("height", 1, (9, 6), (9, 6)), ("height", 2, (9, 6), (5, 6)), ("width", 2, (9, 6), (9, 3)), ("width", 3, (4, 7), (4, 3)),
])
def test_shapes_and_stride_pool_along_the_axis_only(axis, stride, size, expected):
    layer = AxialAttention2d(8, 16, axis=axis, num_heads=2, max_length=6, stride=stride)
    assert layer(torch.randn(2, 8, *size)).shape == (2, 16, *expected)


def test_parameter_count_follows_the_paper_layout():
    """q/k/v projection 2·C_out (q, k half a head each), embeddings (2·max_length − 1) × 2·head_dim shared by heads,
    BN on the projection (2·C_out), on the 3 logit terms per head and on the 2 output parts (2·C_out)."""
    layer = AxialAttention2d(32, 64, num_heads=8, max_length=56)
    head_dim = 8
    expected = 32 * 128 + 111 * 2 * head_dim + 2 * (128 + 3 * 8 + 128)
    assert sum(p.numel() for p in layer.parameters()) == expected
    assert sum(p.numel() for p in AxialAttention2d(32, 64, span=15).parameters()) == expected - 96 * 2 * head_dim


def test_local_span_with_a_longer_table_uses_its_central_rows():
    """span 5 with tables for ±6 (as Axial-DeepLab keeps 2·255 − 1 rows) = span 5 with a 5-row table."""
    torch.manual_seed(4)
    long_table = AxialAttention2d(4, 8, num_heads=2, span=5, max_length=7).eval()
    short_table = AxialAttention2d(4, 8, num_heads=2, span=5).eval()
    assert long_table.relative.shape[0] == 13 and short_table.relative.shape[0] == 5
    state = long_table.state_dict()
    state["relative"] = state["relative"][4:9]
    short_table.load_state_dict(state)
    x = torch.randn(2, 4, 9, 3)
    torch.testing.assert_close(long_table(x), short_table(x))


def _attend_manually(layer: AxialAttention2d, x: torch.Tensor, backend: str) -> torch.Tensor:
    """The layer without BN (normalize=False) written directly with the op on each column."""
    qkv = layer.qkv(x)  # (B, 2C, H, W)
    batch, _, height, width = qkv.shape
    n, d = layer.num_heads, layer.head_dim
    cols = qkv.view(batch, n, 2 * d, height, width).permute(0, 4, 1, 3, 2).reshape(batch * width, n, height, 2 * d)
    q, k, v = cols.split([d // 2, d // 2, d], dim=-1)
    rq, rk, rv = layer.relative.split([d // 2, d // 2, d], dim=-1)
    out = axial_attention1d(q * (d // 2) ** -0.5, k, v, rel_q=rq, rel_k=rk * (d // 2) ** -0.5, rel_v=rv,
                            backend=backend)
    return out.view(batch, width, n, height, d).permute(0, 2, 4, 3, 1).reshape(batch, n * d, height, width)


def test_height_layer_is_the_op_on_columns_and_width_layer_on_rows():
    torch.manual_seed(0)
    layer = AxialAttention2d(6, 8, axis="height", num_heads=2, max_length=5, normalize=False).double()
    x = torch.randn(2, 6, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _attend_manually(layer, x, "reference"))
    width_layer = AxialAttention2d(6, 8, axis="width", num_heads=2, max_length=5, normalize=False).double()
    width_layer.load_state_dict(layer.state_dict())
    torch.testing.assert_close(width_layer(x.transpose(-1, -2)), layer(x).transpose(-1, -2))


@pytest.mark.parametrize("span", [None, 3])
@pytest.mark.parametrize("size", [(7, 5), (1, 4), (12, 3)])
def test_backends_agree_in_training_mode_with_batch_norm(span, size):
    torch.manual_seed(1)
    layers = {b: AxialAttention2d(8, 16, axis="height", num_heads=4, span=span, max_length=6, backend=b).double()
              for b in ("reference", "matmul")}
    layers["matmul"].load_state_dict(layers["reference"].state_dict())
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    outs, grads = {}, {}
    for name, layer in layers.items():
        out = layer(x)
        out.square().sum().backward()
        outs[name], grads[name] = out, {k: p.grad for k, p in layer.named_parameters()}
    torch.testing.assert_close(outs["matmul"], outs["reference"])
    for key in grads["reference"]:
        torch.testing.assert_close(grads["matmul"][key], grads["reference"][key], msg=key)
    for key, buffer in layers["reference"].state_dict().items():  # running statistics too
        torch.testing.assert_close(layers["matmul"].state_dict()[key], buffer, msg=key)


def test_global_span_on_a_longer_axis_falls_back_to_the_local_span_it_has_embeddings_for():
    """A global layer learned at length 4 (offsets ±3) on a length-10 axis = a local layer of span 7, same weights."""
    torch.manual_seed(2)
    global_layer = AxialAttention2d(4, 8, num_heads=2, max_length=4).eval()
    local_layer = AxialAttention2d(4, 8, num_heads=2, span=7).eval()
    local_layer.load_state_dict(global_layer.state_dict())
    x = torch.randn(1, 4, 10, 3)
    torch.testing.assert_close(global_layer(x), local_layer(x))
    # ... and on its training length it attends to the whole axis: every output mixes every position
    x = torch.randn(1, 4, 4, 1, requires_grad=True)
    global_layer(x)[0, :, 0, 0].sum().backward()
    assert (x.grad[0].abs().sum(0)[:, 0] > 0).all()


def test_global_span_on_a_shorter_axis_uses_the_central_embeddings():
    torch.manual_seed(3)
    big = AxialAttention2d(4, 8, num_heads=2, max_length=9, normalize=False)
    small = AxialAttention2d(4, 8, num_heads=2, max_length=3, normalize=False)
    small.qkv.weight.data.copy_(big.qkv.weight.data)
    small.relative.data.copy_(big.relative.data[6:11])  # offsets −2..2 of the ±8 table
    x = torch.randn(2, 4, 3, 5)
    torch.testing.assert_close(big(x), small(x))


def test_masked_batch_norm_uses_in_span_pairs_only():
    bn = nn.BatchNorm2d(2, momentum=1.0)
    x = torch.randn(3, 2, 5, 5)
    valid = (torch.arange(5)[None, :] - torch.arange(5)[:, None]).abs() <= 1
    out = masked_batch_norm(bn, x, valid)
    inside = x[..., valid]  # (3, 2, V)
    mean, var = inside.mean(dim=(0, 2)), inside.var(dim=(0, 2), unbiased=False)
    expected = (inside - mean[None, :, None]) / (var[None, :, None] + bn.eps).sqrt()
    torch.testing.assert_close(out[..., valid], expected)
    torch.testing.assert_close(bn.running_mean, mean)
    assert (out[..., ~valid] == 0).all()
    bn_full = nn.BatchNorm2d(2)
    torch.testing.assert_close(masked_batch_norm(bn_full, x, torch.ones(5, 5, dtype=torch.bool)), nn.BatchNorm2d(2)(x))


def test_every_parameter_gets_a_gradient_and_eval_is_deterministic():
    layer = AxialAttention2d(8, 16, axis="width", num_heads=2, span=5, stride=2)
    x = torch.randn(2, 8, 6, 9)
    layer(x).square().mean().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))


def test_extra_macs():
    layer = AxialAttention2d(16, 32, axis="width", num_heads=4, span=5)
    # B·H lines × 4 heads × W queries × 5 keys × (3·4 + 2·8)
    assert layer.extra_macs(torch.Size((2, 16, 3, 7))) == 2 * 3 * 4 * 7 * 5 * (3 * 4 + 2 * 8)
    global_layer = AxialAttention2d(16, 32, axis="height", num_heads=4, max_length=56)
    assert global_layer.extra_macs(torch.Size((1, 16, 6, 2))) == 2 * 4 * 6 * 6 * 28


@pytest.mark.parametrize("kwargs,match", [
    (dict(axis="depth"), "axis must be one of"),
    (dict(num_heads=3), r"out_channels \(16\) must split into num_heads \(3\)"),
    (dict(num_heads=16), "heads of even width"),
    (dict(span=4), "span must be None .* got 4"),
    (dict(max_length=0), "max_length must be positive, got 0"),
    (dict(span=7, max_length=3), "max_length must be >= 4 to embed the offsets of span 7, got 3"),
    (dict(stride=0), "stride must be positive, got 0"),
])
def test_constructor_errors_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AxialAttention2d(8, 16, **kwargs)


@pytest.mark.parametrize("stride,size,expected", [(1, (7, 5), (7, 5)), (2, (8, 8), (4, 4)), (2, (9, 5), (5, 3))])
def test_mixer_is_height_then_width_then_pool(stride, size, expected):
    torch.manual_seed(5)
    mixer = AxialMixer2d(8, 16, stride=stride, config=AxialConfig(num_heads=2, span=5)).eval()
    assert (mixer.height.axis, mixer.width.axis) == ("height", "width")
    assert (mixer.height.in_channels, mixer.width.in_channels) == (8, 16)
    x = torch.randn(2, 8, *size)
    out = mixer(x)
    assert out.shape == (2, 16, *expected)
    direct = mixer.width(mixer.height(x))
    torch.testing.assert_close(out, torch.nn.functional.avg_pool2d(direct, stride, stride, ceil_mode=True))


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_heads=0), "num_heads must be a positive int, got 0"),
    (dict(span=6), "span must be None .global. or odd, got 6"),
    (dict(span=0), "span must be a positive int or None, got 0"),
    (dict(span=15, max_length=5), "max_length must be >= 8 to embed the offsets of span 15, got 5"),
    (dict(backend="flex"), "backend must be 'auto' or one of"),
])
def test_axial_config_errors_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AxialConfig(**kwargs)


def test_axial_config_check_channels():
    AxialConfig(num_heads=8).check_channels(64)
    with pytest.raises(ValueError, match=r"out_channels \(24\) must split into num_heads \(8\)"):
        AxialConfig(num_heads=8).check_channels(24)


@pytest.mark.parametrize("span", [None, 3])
def test_evaluation_mode_folds_the_logit_batch_norm_into_scales(span):
    """In eval the logit BN is an affine map per term and head; its shift cancels in the softmax, so the folded
    scales give what the BN hook gives."""
    torch.manual_seed(6)
    layer = AxialAttention2d(8, 16, num_heads=4, span=span, max_length=6).double()
    x = torch.randn(2, 8, 7, 5, dtype=torch.float64)
    for _ in range(3):  # give the running statistics and affine parameters non-trivial values
        layer(x)
    with torch.no_grad():
        layer.bn_logits.weight.uniform_(0.5, 2.0)
        layer.bn_logits.bias.normal_()
    layer.eval()
    folded = layer(x)
    assert layer._folded_logit_scales() is not None
    layer._folded_logit_scales = lambda: None  # force the hook path: BN applied to the (L, S) logits
    torch.testing.assert_close(layer(x), folded)
