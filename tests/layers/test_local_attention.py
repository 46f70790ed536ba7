import numpy as np
import pytest
import torch

import sasa
from sasa.functional import local_attention2d
from sasa.layers import LocalSelfAttention2d, RelativePositionEmbedding2d, sinusoidal_position_2d


@pytest.mark.parametrize("stride,size,expected", [(1, 9, 9), (2, 8, 4), (2, 9, 5)])
def test_shapes_and_stride(stride, size, expected):
    layer = LocalSelfAttention2d(16, 32, kernel_size=3, num_heads=4, stride=stride)
    out = layer(torch.randn(2, 16, size, size + 1))
    assert out.shape == (2, 32, expected, (size + 1 + stride - 1) // stride)


def test_parameter_count_matches_spec():
    """Q, K, V are full 1×1 projections (3·C_in·C_out) plus k·C_out relative embeddings."""
    layer = LocalSelfAttention2d(64, 128, kernel_size=7, num_heads=8)
    assert sum(p.numel() for p in layer.parameters()) == 3 * 64 * 128 + 7 * 128


def test_layer_equals_op_on_projections():
    """The layer is: 1×1 projections, q scaled by 1/sqrt(D), op with the concatenated row/col table."""
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(6, 8, kernel_size=3, num_heads=2).double()
    x = torch.randn(1, 6, 5, 4, dtype=torch.float64)
    q, k, v = layer.qkv(x).chunk(3, dim=1)
    heads = lambda t: t.view(1, 2, 4, 5, 4).permute(0, 1, 3, 4, 2)  # noqa: E731
    out = local_attention2d(heads(q) / 2.0, heads(k), heads(v), kernel_size=3, rel_pos=layer.rel_pos(2), backend="reference")
    torch.testing.assert_close(layer(x), out.permute(0, 1, 4, 2, 3).reshape(1, 8, 5, 4))


def test_relative_embedding_is_row_then_column_concatenation():
    emb = RelativePositionEmbedding2d(8, 3)
    table = emb(num_heads=1)[0]  # (k, k, 8)
    for a in range(3):
        for c in range(3):
            torch.testing.assert_close(table[a, c], torch.cat([emb.row[a], emb.col[c]]))
    per_head = emb(num_heads=2)
    torch.testing.assert_close(per_head[0], table[..., :4])
    torch.testing.assert_close(per_head[1], table[..., 4:])


def test_relative_embedding_per_head_gives_each_head_rows_and_columns():
    """per_head: head n's embedding of (Δa, Δc) is cat(row[Δa], col[Δc]) over its own D/2-channel slices."""
    emb = RelativePositionEmbedding2d(16, 3, per_head=True)
    table = emb(num_heads=2)  # (2, k, k, 8): each head takes 4 row and 4 column channels
    for head in range(2):
        for a in range(3):
            for c in range(3):
                torch.testing.assert_close(table[head, a, c],
                                           torch.cat([emb.row[a, 4 * head:4 * head + 4], emb.col[c, 4 * head:4 * head + 4]]))
    sliced = RelativePositionEmbedding2d(16, 3)
    sliced.load_state_dict(emb.state_dict())  # the same parameters, laid out differently
    assert torch.equal(sliced(num_heads=1), emb(num_heads=1)) and not torch.equal(sliced(num_heads=2), table)


def test_rel_pos_per_head_layer_uses_the_per_head_table():
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(6, 16, kernel_size=3, num_heads=2, rel_pos_per_head=True).double()
    assert layer.rel_pos.per_head and "rel_pos_per_head=True" in repr(layer)
    x = torch.randn(1, 6, 5, 4, dtype=torch.float64)
    q, k, v, rel = layer.attention_inputs(x)
    torch.testing.assert_close(rel, layer.rel_pos(2))
    out = local_attention2d(q, k, v, kernel_size=3, rel_pos=rel, backend="reference")
    torch.testing.assert_close(layer(x), out.permute(0, 1, 4, 2, 3).reshape(1, 16, 5, 4))
    with pytest.raises(ValueError, match="rel_pos_per_head needs an even head width"):
        LocalSelfAttention2d(6, 6, num_heads=2, rel_pos_per_head=True)


def test_point_heads_at_starts_each_head_on_its_offset():
    """With W_Q zero only the bias speaks: head n's logits q·r peak on offsets[n], `logit` above the offsets
    sharing no coordinate with it and logit/2 above those sharing one."""
    torch.manual_seed(0)
    offsets = [(-1, 0), (1, 1)]
    layer = LocalSelfAttention2d(4, 16, kernel_size=5, num_heads=2, content=False, qkv_bias=True, rel_pos_per_head=True)
    layer.point_heads_at_(offsets, logit=8.0)
    with torch.no_grad():
        layer.qkv.weight[:16].zero_()  # q = its bias
        q, k, v, rel = layer.attention_inputs(torch.randn(1, 4, 7, 7))
    assert not k.any()  # content=False: the logit is q·r alone
    centre = torch.einsum("nd,nxyd->nxy", q[0, :, 3, 3], rel)  # (N, k, k) logits of one pixel
    for head, (dy, dx) in enumerate(offsets):
        logits = centre[head]
        assert logits.flatten().argmax() == (2 + dy) * 5 + (2 + dx)
        torch.testing.assert_close(logits[2 + dy, 2 + dx] - logits[2 + dy, (2 + dx + 2) % 5], torch.tensor(4.0))
        torch.testing.assert_close(logits[2 + dy, 2 + dx] - logits[(2 + dy + 2) % 5, (2 + dx + 2) % 5], torch.tensor(8.0))
    with pytest.raises(ValueError, match="needs qkv_bias=True"):
        LocalSelfAttention2d(4, 16, num_heads=2).point_heads_at_(offsets)
    with pytest.raises(ValueError, match="qkv_norm=False"):
        LocalSelfAttention2d(4, 16, num_heads=2, qkv_bias=True, rel_pos_per_head=True, qkv_norm=True).point_heads_at_(offsets)
    with pytest.raises(ValueError, match=r"offset \(3, 0\) lies outside the 5x5 window"):
        layer.point_heads_at_([(3, 0)])
    with pytest.raises(ValueError, match="at least one offset"):
        layer.point_heads_at_([])


def test_positional_variants():
    x = torch.randn(2, 8, 6, 6)
    for options in ({"positional": "none"}, {"positional": "absolute"}, {"content": False}):
        layer = LocalSelfAttention2d(8, 16, kernel_size=3, num_heads=2, **options)
        out = layer(x)
        out.sum().backward()
        assert out.shape == (2, 16, 6, 6)
    assert LocalSelfAttention2d(8, 16, positional="none").rel_pos is None


def test_content_false_has_no_key_projection():
    """q·r only (paper Table 6): the projection makes [q | v]; the value half changes the output, nothing else
    is a key (tests/models/test_ablation_options.py checks it equals the layer with zero keys)."""
    layer = LocalSelfAttention2d(4, 8, kernel_size=3, num_heads=2, content=False)
    assert layer.qkv.out_channels == 16
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        base = layer(x)
        layer.qkv.weight[8:16].normal_()  # the value projection
        assert not torch.allclose(layer(x), base)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(out_channels=30, num_heads=8), ValueError, r"out_channels \(30\) must be divisible by num_heads \(8\)"),
        (dict(out_channels=9, num_heads=3), ValueError, "out_channels must be even"),
        (dict(kernel_size=4), ValueError, "kernel_size must be a positive odd integer, got 4"),
        (dict(stride=3), ValueError, "stride must be 1 or 2, got 3"),
        (dict(positional="sinusoid"), ValueError, "positional must be one of"),
        (dict(out_channels=18, num_heads=2, positional="absolute"), ValueError, "divisible by 4"),
        (dict(num_heads=0), ValueError, "num_heads must be positive, got 0"),
        (dict(kernel_size=3.0), TypeError, "kernel_size must be an integer, got float"),
        (dict(backend="fast"), ValueError, "backend must be 'auto' or one of .*got 'fast'"),
        (dict(content=1), TypeError, "content must be a bool, got 1"),
        (dict(positional="none", content=False), ValueError, "content=False leaves only the q·r logit"),
        (dict(rel_pos_per_head="yes"), TypeError, "rel_pos_per_head must be a bool, got 'yes'"),
    ],
)
def test_bad_options(kwargs, error, match):
    options = dict(in_channels=8, out_channels=16, num_heads=2) | kwargs
    with pytest.raises(error, match=match):
        LocalSelfAttention2d(options.pop("in_channels"), options.pop("out_channels"), **options)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", [{}, {"positional": "none"}, {"content": False}, {"positional": "absolute"},
                                     {"rel_pos_per_head": True, "qkv_bias": True}])
def test_layer_fast_path_matches_reference_backend(dtype, options):
    """The layout-native kernel call (backend auto) gives the values and gradients of the reference backend."""
    import copy

    torch.manual_seed(0)
    fast = LocalSelfAttention2d(6, 16, kernel_size=5, num_heads=2, **options).to(dtype)
    slow = copy.deepcopy(fast)
    slow.backend = "reference"
    x = torch.randn(2, 6, 7, 5, dtype=dtype, requires_grad=True)
    out, expected = fast(x), slow(x)
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {}
    torch.testing.assert_close(out, expected, **tol)
    grad = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, [x, *fast.parameters()], grad),
                    torch.autograd.grad(expected, [x, *slow.parameters()], grad)):
        torch.testing.assert_close(g, w, **tol)


def test_item13_absolute_positional_is_sinusoidal_at_any_size():
    """positional="absolute": the 2-D sinusoids of the key pixel's position are added to the keys; no per-pixel table."""
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(6, 8, kernel_size=3, num_heads=2, positional="absolute").double()
    assert not any("pos" in name for name, _ in layer.named_parameters())
    for height, width in ((5, 4), (9, 11)):
        x = torch.randn(1, 6, height, width, dtype=torch.float64)
        q, k, v = layer.qkv(x).chunk(3, dim=1)
        k = k + sinusoidal_position_2d(8, height, width, dtype=torch.float64)
        heads = lambda t: t.view(1, 2, 4, height, width).permute(0, 1, 3, 4, 2)  # noqa: E731
        out = local_attention2d(heads(q) / 2.0, heads(k), heads(v), kernel_size=3, backend="reference")
        torch.testing.assert_close(layer(x), out.permute(0, 1, 4, 2, 3).reshape(1, 8, height, width))


def test_sinusoidal_position_2d_rows_then_columns():
    enc = sinusoidal_position_2d(8, 3, 5)  # rows in channels 0..3, columns in 4..7; 2 frequencies each
    assert enc.shape == (8, 3, 5)
    torch.testing.assert_close(enc[0], torch.arange(3.0)[:, None].sin().expand(3, 5))
    torch.testing.assert_close(enc[2], torch.arange(3.0)[:, None].cos().expand(3, 5))
    torch.testing.assert_close(enc[5], (torch.arange(5.0) * 0.01).sin()[None, :].expand(3, 5))
    with pytest.raises(ValueError, match=r"multiple of 4 .*got 6"):
        sinusoidal_position_2d(6, 2, 2)


def test_reset_parameters_owns_the_init():
    """A layer built alone is initialised as one built inside a model or a detector (fan-in q/k/v projections)."""
    alone = LocalSelfAttention2d(256, 256)
    inside = sasa.create_model("sa_resnet50_convstem").layer3[0].conv2
    for layer in (alone, inside):
        assert layer.qkv.weight.std().item() == pytest.approx(256**-0.5, rel=0.05)
    torch.manual_seed(3)
    alone.reset_parameters()
    first = [p.clone() for p in alone.parameters()]
    torch.manual_seed(3)
    alone.reset_parameters()
    for before, after in zip(first, alone.parameters()):
        torch.testing.assert_close(before, after)


def test_item33_kernel_size_any_integral():
    layer = LocalSelfAttention2d(8, 16, kernel_size=np.int64(5), num_heads=np.int32(2))
    assert type(layer.kernel_size) is int and layer.kernel_size == 5 and layer.num_heads == 2
    assert layer(torch.randn(1, 8, 6, 6)).shape == (1, 16, 6, 6)
    out = local_attention2d(*(torch.randn(1, 1, 4, 4, 2) for _ in range(3)), kernel_size=np.int64(3))
    assert out.shape == (1, 1, 4, 4, 2)


def test_qkv_norm_is_batch_norm_of_the_projection_before_the_op():
    """qkv_norm=True: the layer equals the op on BN([q|k|v]) (q then scaled by 1/sqrt(D)); off, no BN exists."""
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(6, 8, kernel_size=3, num_heads=2, qkv_norm=True).double()
    assert LocalSelfAttention2d(6, 8, kernel_size=3, num_heads=2).qkv_norm is None
    with torch.no_grad():  # non-trivial affine so the reference must apply it
        layer.qkv_norm.weight.uniform_(0.5, 2.0)
        layer.qkv_norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(3, 6, 5, 4, dtype=torch.float64, requires_grad=True)
    projected = layer.qkv(x)
    mean, var = projected.mean(dim=(0, 2, 3), keepdim=True), projected.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    w, b = layer.qkv_norm.weight.view(1, -1, 1, 1), layer.qkv_norm.bias.view(1, -1, 1, 1)
    q, k, v = ((projected - mean) / (var + layer.qkv_norm.eps).sqrt() * w + b).chunk(3, dim=1)
    heads = lambda t: t.view(3, 2, 4, 5, 4).permute(0, 1, 3, 4, 2)  # noqa: E731
    ref = local_attention2d(heads(q) / 2.0, heads(k), heads(v), kernel_size=3, rel_pos=layer.rel_pos(2), backend="reference")
    out = layer(x)
    torch.testing.assert_close(out, ref.permute(0, 1, 4, 2, 3).reshape(3, 8, 5, 4))
    grad = torch.randn_like(out)
    torch.testing.assert_close(
        torch.autograd.grad(out, x, grad, retain_graph=True)[0],
        torch.autograd.grad(ref.permute(0, 1, 4, 2, 3).reshape(3, 8, 5, 4), x, grad)[0],
    )


@pytest.mark.parametrize("options", [{}, {"content": False}, {"positional": "absolute"}])
def test_qkv_norm_trains_every_parameter(options):
    layer = LocalSelfAttention2d(8, 16, kernel_size=3, num_heads=2, stride=2, qkv_norm=True, **options)
    layer(torch.randn(2, 8, 7, 7)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    layer.eval()  # running statistics in evaluation
    assert layer(torch.randn(1, 8, 7, 7)).shape == (1, 16, 4, 4)


def test_qkv_norm_reaches_models_and_is_checked():
    model = sasa.create_model("sa_resnet26", num_classes=10, attention={"qkv_norm": True})
    assert model.layer1[0].conv2.qkv_norm is not None
    with pytest.raises(TypeError, match="qkv_norm must be a bool, got 1"):
        LocalSelfAttention2d(8, 16, qkv_norm=1)
