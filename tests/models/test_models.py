import pytest
import timm
import torch

import sasa
from sasa.profile import count_flops, count_params

# Paper Table 1 (SPEC §4): GFLOPs and params (M) at 224×224, 1000 classes.
TABLE_1 = {
    "resnet26": (4.7, 13.7), "sa_resnet26_convstem": (4.5, 10.3), "sa_resnet26": (4.7, 10.3),
    "resnet38": (6.5, 19.6), "sa_resnet38_convstem": (5.7, 14.1), "sa_resnet38": (6.1, 14.1),
    "resnet50": (8.2, 25.6), "sa_resnet50_convstem": (7.0, 18.0), "sa_resnet50": (7.2, 18.0),
}


def test_registry_lists_the_nine_paper_models():
    assert set(TABLE_1) <= set(sasa.list_models())
    assert all(name in TABLE_1 or name.startswith("axial_") for name in sasa.list_models())


@pytest.mark.parametrize("name", sorted(TABLE_1))
def test_params_and_flops_match_table_1(name):
    flops, params = TABLE_1[name]
    model = sasa.create_model(name)
    assert count_params(model) / 1e6 == pytest.approx(params, rel=0.01)
    assert count_flops(model, 224) / 1e9 == pytest.approx(flops, rel=0.05)


@pytest.mark.parametrize("name", sorted(TABLE_1))
@pytest.mark.parametrize("size", [32, 64])
def test_forward_backward_every_parameter_gets_a_gradient(name, size):
    model = sasa.create_model(name, num_classes=7, zero_init_residual=False)
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    out.square().mean().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name
        # at 32×32 layer4 sees a 1×1 map, where attention returns v and rel_pos has no effect
        if size > 32:
            assert param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("size", [(33, 47), (40, 40)])
def test_odd_input_sizes(size):
    model = sasa.create_model("sa_resnet26", num_classes=3).eval()
    assert model(torch.randn(1, 3, *size)).shape == (1, 3)


def test_families_differ_only_in_config():
    base, conv_stem, full = (type(sasa.create_model(n, num_classes=2)) for n in ("resnet26", "sa_resnet26_convstem", "sa_resnet26"))
    assert base is conv_stem is full is sasa.models.ResNet


def test_canonical_attribute_names():
    model = sasa.create_model("sa_resnet26_convstem", num_classes=5)
    for name in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"):
        assert hasattr(model, name)
    assert isinstance(model.layer2[0].conv2, sasa.layers.LocalSelfAttention2d)
    assert isinstance(sasa.create_model("sa_resnet26", num_classes=5).stem, sasa.layers.AttentionStem)


def test_overrides_and_in_chans():
    model = sasa.create_model("sa_resnet26", num_classes=4, in_chans=1, kernel_size=5, num_heads=4).eval()
    assert model.layer1[0].conv2.kernel_size == 5 and model.layer1[0].conv2.num_heads == 4
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 4)


def test_timm_registration():
    model = timm.create_model("sa_resnet26", num_classes=10)
    assert isinstance(model, sasa.models.ResNet) and model.fc.out_features == 10
    assert "sa_resnet50_convstem" in timm.list_models("sa_resnet*")
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("sa_resnet26", pretrained=True)


def test_all_nine_paper_models_in_timm_as_sasa_prefixed_names():
    assert timm.list_models("sasa_*") == sorted("sasa_" + name for name in sasa.list_models())
    assert set("sasa_" + name for name in TABLE_1) <= set(timm.list_models("sasa_*"))
    ours = timm.create_model("sasa_resnet26", num_classes=10)
    assert isinstance(ours, sasa.models.ResNet) and ours.config.layers == (1, 2, 4, 1)
    theirs = timm.create_model("resnet26", num_classes=10)  # timm's own (2, 2, 2, 2) ResNet-26 stays timm's
    assert not isinstance(theirs, sasa.models.ResNet) and len(theirs.layer1) == 2


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match="unknown model .sa_resnet25.; did you mean .*sa_resnet26"):
        sasa.create_model("sa_resnet25")


def test_unknown_override():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['kernel'\]"):
        sasa.create_model("sa_resnet26", kernel=5)


def test_item1_bf16_autocast_forward_backward_sa_resnet26():
    model = sasa.create_model("sa_resnet26", num_classes=4, zero_init_residual=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    loss = torch.nn.functional.cross_entropy(out.float(), torch.tensor([0, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        half = model(x)
    with torch.no_grad():
        full = model(x)
    torch.testing.assert_close(half.float(), full, atol=0.1 * full.abs().max().item(), rtol=0.05)


def test_item33_empty_batch_gives_empty_output():
    for name in ("resnet26", "sa_resnet26_convstem", "sa_resnet26"):
        model = sasa.create_model(name, num_classes=3).eval()
        assert model(torch.randn(0, 3, 32, 32)).shape == (0, 3), name


def test_item13_positional_absolute_model_runs_at_any_size():
    """create_model(..., positional="absolute") builds (no input_size needed) and runs at two image sizes."""
    model = sasa.create_model("sa_resnet26", num_classes=3, positional="absolute").eval()
    relative = sasa.create_model("sa_resnet26", num_classes=3)
    assert sasa.count_params(relative) - sasa.count_params(model) == sum(
        p.numel() for n, p in relative.named_parameters() if "rel_pos" in n and not n.startswith("stem")
    )
    for size in (32, 48):
        assert model(torch.randn(1, 3, size, size)).shape == (1, 3)


def test_downsample_hooks_fire_in_eager_mode():
    """The shortcut's Sequential is called as a module in eager mode (its matmul form is compile-only)."""
    model = sasa.create_model("resnet26", num_classes=3)
    block = model.layer2[0]
    seen = []
    block.downsample.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    model(torch.randn(2, 3, 32, 32))
    assert seen == [torch.Size([2, 512, 4, 4])]
