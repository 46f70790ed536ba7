import pytest
import torch
from torch import nn

from sasa.layers.projection import _applies, conv1x1, project

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN")


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 8, 1, 1), (3, 16, 9, 12)])
def test_onednn_projection_matches_the_conv(bias, shape):
    """Values and gradients (input, weight, bias) of the oneDNN path equal nn.Conv2d's; also without autograd
    and for a non-contiguous input."""
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], 3 * shape[1] + 1, 1, bias=bias)
    x = torch.randn(*shape, requires_grad=True)
    assert _applies(conv, x)
    got, want = project(conv, x), conv(x)
    assert "Convolution" not in type(got.grad_fn).__name__
    torch.testing.assert_close(got, want)
    grad = torch.randn_like(want)
    params = [x, *conv.parameters()]
    for g, w in zip(torch.autograd.grad(got, params, grad), torch.autograd.grad(want, params, grad)):
        torch.testing.assert_close(g, w)
    with torch.no_grad():
        torch.testing.assert_close(project(conv, x), want)
        x_t = torch.randn(shape[0], shape[1], shape[3], shape[2]).transpose(2, 3)
        torch.testing.assert_close(project(conv, x_t), conv(x_t))


@needs_onednn
def test_weight_only_and_input_only_gradients():
    conv = nn.Conv2d(4, 6, 1, bias=False)
    x = torch.randn(2, 4, 3, 5)
    (g,) = torch.autograd.grad(project(conv, x).sum(), [conv.weight])
    torch.testing.assert_close(g, torch.autograd.grad(conv(x).sum(), [conv.weight])[0])
    conv.weight.requires_grad_(False)
    x.requires_grad_()
    (g,) = torch.autograd.grad(project(conv, x).sum(), [x])
    torch.testing.assert_close(g, torch.autograd.grad(conv(x).sum(), [x])[0])


@needs_onednn
def test_other_convs_and_dtypes_take_the_plain_conv():
    x = torch.randn(1, 4, 3, 3)
    assert not _applies(nn.Conv2d(4, 8, 1), x.double())
    assert not _applies(nn.Conv2d(4, 8, 1, stride=2), x)
    assert not _applies(nn.Conv2d(4, 8, 3, padding=1), x)
    conv = nn.Conv2d(4, 8, 1).double()
    out = project(conv, x.double().requires_grad_())
    assert "Convolution" in type(out.grad_fn).__name__


@needs_onednn
def test_forward_hooks_on_the_conv_still_fire():
    """The oneDNN path bypasses conv.forward; a hooked conv (FLOP counting, users' hooks) takes the plain one."""
    conv = nn.Conv2d(8, 24, 1, bias=False)
    x = torch.randn(2, 8, 5, 5)
    seen = []
    handle = conv.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    torch.testing.assert_close(project(conv, x), conv(x))
    handle.remove()
    assert seen == [torch.Size([2, 24, 5, 5])] * 2


def _compiled_targets(fn, *args):
    """fn(*args) through torch.compile (fullgraph, dynamic sizes, eager backend): its output and the graph's ops."""
    targets = []

    def backend(gm, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    try:
        return torch.compile(fn, backend=backend, fullgraph=True, dynamic=True)(*args), targets
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("stride, bias", [(1, False), (2, True)])
def test_conv1x1_compiles_to_a_matmul(stride, bias):
    """While compiling, the 1×1 conv is a matmul (inductor specializes conv graphs to one image size): same values
    and gradients as the conv, odd sizes, stride 2; in eager it is the conv itself."""
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 1, stride=stride, bias=bias)
    x = torch.randn(3, 5, 9, 6, requires_grad=True)
    got, targets = _compiled_targets(lambda t: conv1x1(conv, t), x)
    assert any("matmul" in t for t in targets) and not any("conv" in t for t in targets), targets
    want = conv(x)
    torch.testing.assert_close(got, want)
    grad = torch.randn_like(want)
    params = [x, *conv.parameters()]
    for g, w in zip(torch.autograd.grad(got, params, grad), torch.autograd.grad(want, params, grad)):
        torch.testing.assert_close(g, w)
    assert "Convolution" in type(conv1x1(conv, x).grad_fn).__name__


def test_conv1x1_keeps_hooked_and_other_convs_while_compiling():
    x = torch.randn(2, 4, 5, 5)
    for conv in (nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 1, groups=2)):
        _, targets = _compiled_targets(lambda t: conv1x1(conv, t), x)
        assert any("conv" in t for t in targets), targets
    conv = nn.Conv2d(4, 6, 1)
    seen = []
    conv.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    _compiled_targets(lambda t: conv1x1(conv, t), x)
    assert seen == [torch.Size([2, 6, 5, 5])]
