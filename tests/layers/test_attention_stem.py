import pytest
import torch

from sasa.layers import AttentionStem


@pytest.mark.parametrize("size,expected", [((32, 32), (8, 8)), ((37, 45), (10, 12)), ((224, 224), (56, 56))])
def test_output_shape_stride_four(size, expected):
    stem = AttentionStem(3, 64)
    assert stem(torch.randn(1, 3, *size)).shape == (1, 64, *expected)


def test_mixture_weights_are_a_softmax_over_value_matrices():
    stem = AttentionStem(3, 16, num_value_mixtures=3)
    weights = stem.mixture_weights()
    assert weights.shape == (4, 4, 3)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 4))


def test_attention_stays_inside_each_block():
    """Changing a pixel changes the pre-pool output only inside its own 4×4 block."""
    stem = AttentionStem(3, 8, num_heads=2).eval()
    stem.pool = torch.nn.Identity()
    x = torch.randn(1, 3, 8, 8)
    y = x.clone()
    y[0, :, 1, 2] += 5.0
    diff = (stem(x) - stem(y)).abs().sum(1)[0]
    assert diff[:4, :4].min() > 0
    assert diff[4:, :].max() == 0 and diff[:, 4:].max() == 0


def test_padded_pixels_are_masked():
    """A 5×5 image is padded to 8×8; cropping must give the same result as if the padding did not exist."""
    stem = AttentionStem(3, 8).eval()
    stem.pool = torch.nn.Identity()
    x = torch.randn(1, 3, 5, 5)
    full = stem(torch.nn.functional.pad(x, (0, 3, 0, 3), value=100.0))[..., :4, :4]
    assert torch.allclose(stem(x)[..., :4, :4], full, atol=1e-5)  # the first block holds no padding
    ones = stem(x)
    assert torch.isfinite(ones).all() and ones.shape == (1, 8, 5, 5)


def test_gradients_reach_every_parameter():
    stem = AttentionStem(3, 16, num_heads=2)
    stem(torch.randn(2, 3, 12, 12)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stem.parameters())


def test_bad_options():
    with pytest.raises(ValueError, match=r"out_channels \(10\) must be even and divisible by num_heads \(4\)"):
        AttentionStem(3, 10, num_heads=4)
    with pytest.raises(ValueError, match="num_value_mixtures must be >= 1, got 0"):
        AttentionStem(3, 16, num_value_mixtures=0)


def test_patchify_init_starts_as_a_linear_patch_embedding():
    """init="patchify": every pixel of a block outputs Σ_(a,b) W_V^(a,b) x_ab / 16 (uniform attention, one value
    matrix per position up to p ≈ 0.985), so the pooled stem is BN + ReLU of a 4×4 stride-4 convolution."""
    torch.manual_seed(0)
    stem = AttentionStem(3, 16, num_value_mixtures=16, init="patchify").double().train()
    mix = stem.mixture_weights().reshape(16, 16)
    assert mix.diagonal().min() > 0.98
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    own_matrix = stem.values.detach()  # as if p were exactly one-hot: (16 positions, C_out, C_in)
    kernel = own_matrix.reshape(4, 4, 16, 3).permute(2, 3, 0, 1) / 16  # (C_out, C_in, a, b)
    patch_embedding = torch.nn.functional.conv2d(x, kernel, stride=4)
    attended = stem.attend(x)
    assert torch.equal(attended, attended[..., ::4, ::4].repeat_interleave(4, -2).repeat_interleave(4, -1))
    torch.testing.assert_close(attended[..., ::4, ::4], patch_embedding, atol=0.05 * patch_embedding.abs().max().item(), rtol=0)
    exact = torch.einsum("pm,moc->poc", mix, stem.values).reshape(4, 4, 16, 3).permute(2, 3, 0, 1) / 16
    torch.testing.assert_close(attended[..., ::4, ::4], torch.nn.functional.conv2d(x, exact, stride=4))
    bn = torch.nn.functional.batch_norm(attended, None, None, training=True, eps=stem.bn.eps)
    torch.testing.assert_close(stem(x), torch.relu(bn)[..., ::4, ::4], atol=1e-7, rtol=1e-7)


def test_patchify_init_needs_one_value_matrix_per_position():
    with pytest.raises(ValueError, match="num_value_mixtures=16.*got values='spatially-aware', num_value_mixtures=4"):
        AttentionStem(3, 16, init="patchify")
    with pytest.raises(ValueError, match="got values='plain'"):
        AttentionStem(3, 16, num_value_mixtures=16, values="plain", init="patchify")
    with pytest.raises(ValueError, match=r"init must be one of \('paper', 'patchify'\), got 'conv'"):
        AttentionStem(3, 16, init="conv")


def brute_force_stem_attention(stem: AttentionStem, x: torch.Tensor) -> torch.Tensor:
    """The definition, pixel by pixel: spatially-aware values, q·k + q·cat(row[Δa], col[Δc]), in-image keys only."""
    s, heads, dim = stem.block_size, stem.num_heads, stem.head_dim
    batch, _, height, width = x.shape
    mix = stem.mixture_weights()
    out = torch.zeros(batch, stem.out_channels, height, width, dtype=x.dtype)
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                q = stem.query @ x[b, :, i, j] * dim**-0.5
                keys = [(a, c) for a in range(i - i % s, i - i % s + s) for c in range(j - j % s, j - j % s + s)
                        if a < height and c < width]
                for n in range(heads):
                    part = slice(n * dim, (n + 1) * dim)
                    logits, values = [], []
                    for a, c in keys:
                        k = stem.key @ x[b, :, a, c]
                        r = torch.cat([stem.rel_pos.row[a - i + s - 1], stem.rel_pos.col[c - j + s - 1]])
                        logits.append(q[part] @ (k[part] + r[part]))
                        weight = sum(mix[a % s, c % s, m] * stem.values[m] for m in range(stem.num_value_mixtures))
                        values.append((weight @ x[b, :, a, c])[part])
                    probs = torch.stack(logits).softmax(0)
                    out[b, part, i, j] = sum(p * v for p, v in zip(probs, values))
    return out


@pytest.mark.parametrize("heads,size", [(1, (4, 8)), (2, (6, 5)), (4, (3, 3))])
def test_blocked_attention_matches_the_definition(heads, size):
    stem = AttentionStem(3, 8, num_heads=heads, num_value_mixtures=3).double()
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    torch.testing.assert_close(stem.attend(x), brute_force_stem_attention(stem, x))


def _unfused(stem: AttentionStem, x: torch.Tensor) -> torch.Tensor:
    return stem.pool(stem.relu(stem.bn(stem.attend(x))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("heads,size,train,momentum", [(1, (8, 12), True, 0.1), (2, (12, 8), True, None), (2, (4, 4), False, 0.1)])
def test_fused_bn_relu_pool_matches_the_module_chain(dtype, heads, size, train, momentum):
    """The fused path (statistics from y's moments, max pool before BN/ReLU with sign(γ) folded in, chunked
    recomputing backward) gives the values, gradients and running statistics of pool(relu(bn(attend(x))))."""
    import copy

    torch.manual_seed(0)
    stem = AttentionStem(3, 16, num_heads=heads, num_value_mixtures=3).to(dtype)
    stem.bn.momentum = momentum
    with torch.no_grad():  # negative γ exercise the min side of the pool; β shifts ReLU's cut
        stem.bn.weight.copy_(torch.randn(16))
        stem.bn.bias.copy_(torch.randn(16))
        stem.bn.running_mean.normal_()
        stem.bn.running_var.uniform_(0.5, 2.0)
    reference = copy.deepcopy(stem)
    stem.train(train)
    reference.train(train)
    x = torch.randn(3, 3, *size, dtype=dtype, requires_grad=True)
    assert stem._fused_pool_applies(x) and not reference._fused_pool_applies(torch.randn(1, 3, 5, 5))
    fused, expected = stem(x), _unfused(reference, x)
    tol = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {}
    torch.testing.assert_close(fused, expected, **tol)
    grad = torch.randn_like(fused)
    got = torch.autograd.grad(fused, [x, *stem.parameters()], grad)
    want = torch.autograd.grad(expected, [x, *reference.parameters()], grad)
    for name, g, w in zip(["x"] + [n for n, _ in stem.named_parameters()], got, want):
        torch.testing.assert_close(g, w, **tol, msg=lambda m, name=name: f"{name}: {m}")
    for buffer in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(stem.bn, buffer), getattr(reference.bn, buffer), **tol)


def test_fused_path_runs_in_chunks(monkeypatch):
    """Several chunks (the 224×224 case) give the single-chunk result."""
    from sasa.layers import attention_stem

    stem = AttentionStem(3, 8).double().train()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    whole = stem(x)
    monkeypatch.setattr(attention_stem, "_STEM_CHUNK_PIXELS", 48)  # 3 blocks per chunk, 32 blocks
    torch.testing.assert_close(stem(x), whole)
    torch.testing.assert_close(stem.eval()(x), _unfused(stem, x))


def _peaks_inputs(dtype, heads, dim, mixtures, blocks=70, block=16, constant_blocks=3):
    """Random _StemPeaks inputs; the first blocks are black (out = 0 exactly: all pixels tie in every channel's max)."""
    pixels = torch.randn(blocks, block, 3, dtype=dtype)
    pixels[:constant_blocks] = 0
    params = [
        torch.randn(heads, 3, 3, dtype=dtype), torch.randn(heads, block, block, 3, dtype=dtype),
        torch.randn(block, mixtures, dtype=dtype).softmax(-1), torch.randn(heads, dim, mixtures * 3, dtype=dtype),
    ]
    return [t.requires_grad_() for t in (pixels, *params)]


@pytest.mark.parametrize("isa", ["native", "baseline"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("heads,dim,mixtures,stats", [(1, 64, 4, True), (1, 64, 4, False), (2, 8, 3, True), (3, 5, 1, False), (1, 64, 16, True)])
def test_cpu_kernel_matches_the_chunked_stem(isa, dtype, heads, dim, mixtures, stats):
    """The C++ stem kernel (stem_peaks_forward; (1, 64, 4) is its specialised default stem) gives _StemPeaks' values
    and gradients, ties of the max pool included (split evenly as amax's backward)."""
    from sasa.functional import cpu_fused
    from sasa.layers import attention_stem

    ext = cpu_fused.load_extension()
    if ext is None:
        pytest.skip("no C++ extension")
    torch.manual_seed(0)
    inputs = _peaks_inputs(dtype, heads, dim, mixtures)
    if isa == "baseline":
        ext.limit_isa("baseline")
    try:
        got = attention_stem.stem_peaks_forward(*inputs, stats)
    finally:
        ext.limit_isa("avx512")
    want = attention_stem._StemPeaks.apply(*inputs, stats)
    tol = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {}
    for g, w in zip(got[: 1 + 2 * int(stats)], want):
        torch.testing.assert_close(g, w, **tol)
    grads = [torch.randn_like(t) for t in want[: 1 + 2 * int(stats)]]
    if isa == "baseline":
        ext.limit_isa("baseline")
    try:
        got_grads = torch.autograd.grad(got[: len(grads)], inputs, grads)
    finally:
        ext.limit_isa("avx512")
    want_grads = torch.autograd.grad(want[: len(grads)], inputs, grads)
    if dtype == torch.float32:  # sums of ~10^3 float32 terms in another order (float64 checks the formulas)
        tol = {"atol": 1e-4, "rtol": 1e-3}
    for name, g, w in zip(["pixels", "bilinear", "rel", "mix", "w"], got_grads, want_grads):
        torch.testing.assert_close(g, w, **tol, msg=lambda m, name=name: f"{name}: {m}")


def test_compiled_sizes_have_no_modulo():
    """With dynamic sizes the stem's sizes reach BatchNorm's n/(n-1) factor as a symbolic float, and inductor
    (torch 2.14) cannot turn a modulo there into a tensor expression: the padding uses ceiling division."""
    stem = AttentionStem(3, 16, num_heads=2).train()
    sizes = []

    def backend(gm, example_inputs):
        values = (node.meta.get("example_value") for node in gm.graph.nodes)
        sizes.extend(str(size) for value in values if isinstance(value, torch.Tensor) for size in value.shape)
        return gm

    torch._dynamo.reset()
    torch.compile(stem, fullgraph=True, dynamic=True, backend=backend)(torch.randn(2, 3, 10, 13))
    torch._dynamo.reset()
    assert sizes and not any("Mod" in size for size in sizes)


@pytest.mark.parametrize("stats", [True, False])
def test_stem_kernel_custom_ops_pass_opcheck(stats):
    """The C++ stem kernel as custom ops: fake shapes, schema and autograd registration agree with the kernel."""
    from sasa.functional import cpu_fused
    from sasa.layers import attention_stem

    if cpu_fused.load_extension() is None:
        pytest.skip("no C++ extension")
    torch.manual_seed(0)
    inputs = _peaks_inputs(torch.float64, 2, 8, 3, blocks=9)
    torch.library.opcheck(attention_stem.stem_peaks_forward, (*inputs, stats))
    peak, y_sum, y_gram = attention_stem.stem_peaks_forward(*(t.detach() for t in inputs), stats)
    grads = (torch.randn_like(peak), torch.randn_like(y_sum), torch.randn_like(y_gram))
    torch.library.opcheck(attention_stem.stem_peaks_backward,
                          (*grads, *(t.detach() for t in inputs), stats, True))


def test_compiled_stem_runs_the_fused_kernel_with_eager_values_and_gradients():
    """Under torch.compile (fullgraph, dynamic sizes) the stem's graph holds the kernel's custom op, not the
    full-resolution attention; values, gradients and BN running statistics equal eager ones."""
    from sasa.functional import cpu_fused

    if cpu_fused.load_extension() is None:
        pytest.skip("no C++ extension")
    torch.manual_seed(0)
    eager, compiled_stem = AttentionStem(3, 16, num_heads=2).train(), AttentionStem(3, 16, num_heads=2).train()
    compiled_stem.load_state_dict(eager.state_dict())
    targets = []

    def backend(gm, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm

    torch._dynamo.reset()
    compiled = torch.compile(compiled_stem, fullgraph=True, dynamic=True, backend=backend)
    for shape in [(2, 3, 16, 20), (3, 3, 24, 12)]:
        x = torch.randn(*shape, dtype=torch.float64)
        eager.double(), compiled_stem.double()
        want = eager(x)
        want.square().sum().backward()
        got = compiled(x)
        got.square().sum().backward()
        torch.testing.assert_close(got, want)
        for (name, a), b in zip(compiled_stem.named_parameters(), eager.parameters()):
            torch.testing.assert_close(a.grad, b.grad, msg=lambda m, name=name: f"{name}: {m}")
        torch.testing.assert_close(compiled_stem.bn.running_var, eager.bn.running_var)
    torch._dynamo.reset()
    assert "sasa.stem_peaks_forward.default" in targets
    assert not any("softmax" in target for target in targets)
