import pytest
import torch
from torch import nn

from sasa.layers.projection import _applies, project

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN")


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


def test_weight_only_and_input_only_gradients():
    conv = nn.Conv2d(4, 6, 1, bias=False)
    x = torch.randn(2, 4, 3, 5)
    (g,) = torch.autograd.grad(project(conv, x).sum(), [conv.weight])
    torch.testing.assert_close(g, torch.autograd.grad(conv(x).sum(), [conv.weight])[0])
    conv.weight.requires_grad_(False)
    x.requires_grad_()
    (g,) = torch.autograd.grad(project(conv, x).sum(), [x])
    torch.testing.assert_close(g, torch.autograd.grad(conv(x).sum(), [x])[0])


def test_other_convs_and_dtypes_take_the_plain_conv():
    x = torch.randn(1, 4, 3, 3)
    assert not _applies(nn.Conv2d(4, 8, 1), x.double())
    assert not _applies(nn.Conv2d(4, 8, 1, stride=2), x)
    assert not _applies(nn.Conv2d(4, 8, 3, padding=1), x)
    conv = nn.Conv2d(4, 8, 1).double()
    out = project(conv, x.double().requires_grad_())
    assert "Convolution" in type(out.grad_fn).__name__


def test_forward_hooks_on_the_conv_still_fire():
    """The oneDNN path bypasses conv.forward; a hooked conv (FLOP counting, users' hooks) takes the plain one."""
    conv = nn.Conv2d(8, 24, 1, bias=False)
    x = torch.randn(2, 8, 5, 5)
    seen = []
    handle = conv.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    torch.testing.assert_close(project(conv, x), conv(x))
    handle.remove()
    assert seen == [torch.Size([2, 24, 5, 5])] * 2
