"""Model options of the paper's ablations: attention groups, q·r-only logits, stem values, zero padding."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sasa
from sasa.layers import AttentionStem, LocalSelfAttention2d
from sasa.models.resnet import Bottleneck


def _mixers(model):
    return [type(block.conv2) for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for block in stage]


@pytest.mark.parametrize("stages", ["34", (1, 4), ""])
def test_mixer_stages_choose_attention_per_group(stages):
    model = sasa.create_model("sa_resnet26_convstem", num_classes=10, mixer_stages=stages)
    wanted = {int(s) for s in stages}
    for index, stage in enumerate((model.layer1, model.layer2, model.layer3, model.layer4), start=1):
        kinds = {type(block.conv2) for block in stage if isinstance(block, Bottleneck)}
        assert kinds == ({LocalSelfAttention2d} if index in wanted else {nn.Conv2d})


@pytest.mark.parametrize("bad", ["5", (0, 1), (2, 2), 0, 1.5])
def test_bad_mixer_stages_are_named(bad):
    with pytest.raises((ValueError, TypeError), match="mixer_stages"):
        sasa.create_model("sa_resnet26", mixer_stages=bad)


def test_qr_only_layer_has_no_key_projection():
    with_keys = LocalSelfAttention2d(16, 16, num_heads=2)
    qr_only = LocalSelfAttention2d(16, 16, num_heads=2, content=False)
    assert with_keys.qkv.out_channels == 48 and qr_only.qkv.out_channels == 32
    x = torch.randn(2, 16, 9, 7, requires_grad=True)
    qr_only(x).sum().backward()
    assert all(p.grad is not None for p in qr_only.parameters())


def test_qr_only_equals_zero_keys():
    """content=False is the layer whose keys are zero: the same q, v and embeddings give the same output."""
    torch.manual_seed(0)
    qr_only = LocalSelfAttention2d(8, 8, num_heads=2, kernel_size=3, content=False).double()
    full = LocalSelfAttention2d(8, 8, num_heads=2, kernel_size=3).double()
    with torch.no_grad():
        q, v = qr_only.qkv.weight.chunk(2)
        full.qkv.weight.copy_(torch.cat([q, torch.zeros_like(q), v]))
        full.rel_pos.load_state_dict(qr_only.rel_pos.state_dict())
    x = torch.randn(1, 8, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(qr_only(x), full(x))


@pytest.mark.parametrize("values", ["plain", "conv", "spatially-aware"])
def test_stem_values_variants_train(values):
    stem = AttentionStem(3, 16, num_heads=2, values=values)
    x = torch.randn(2, 3, 12, 16)
    out = stem(x)
    assert out.shape == (2, 16, 3, 4)
    out.square().mean().backward()
    assert all(p.grad is not None for p in stem.parameters())
    assert (stem.value_mix is not None) == (values == "spatially-aware")
    assert (stem.value_conv is not None) == (values == "conv")


def test_conv_values_come_from_a_4x4_convolution():
    """With one block of 4×4 pixels and zero logits the attention averages the values: the output is the mean of
    the conv's values over the block."""
    torch.manual_seed(0)
    stem = AttentionStem(3, 8, num_heads=1, values="conv").double().eval()
    with torch.no_grad():
        stem.query.zero_()
        stem.rel_pos.row.zero_(), stem.rel_pos.col.zero_()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    attended = stem.attend(x)
    expected = stem.value_conv(x).mean(dim=(2, 3), keepdim=True).expand_as(attended)
    torch.testing.assert_close(attended, expected)


def test_zero_padding_option_reaches_the_op():
    torch.manual_seed(0)
    masked = sasa.create_model("sa_resnet26_convstem", num_classes=4, zero_init_residual=False).eval()
    zeros = sasa.create_model("sa_resnet26_convstem", num_classes=4, zero_init_residual=False, padding="zeros").eval()
    zeros.load_state_dict(masked.state_dict())
    x = torch.randn(1, 3, 32, 32)
    assert zeros.layer1[0].conv2.config.padding == "zeros"
    assert not torch.allclose(masked(x), zeros(x))


def test_model_opt_flag_parses_values_and_refuses_unknown_keys(capsys):
    from sasa.cli.main import main

    assert main(["profile", "sa_resnet26_convstem", "--json", "--model-opt", "mixer_stages=34",
                 "--model-opt", "content=False", "--model-opt", "positional=relative"]) == 0
    record = __import__("json").loads(capsys.readouterr().out)
    assert record["model_opt"] == {"mixer_stages": 34, "content": False, "positional": "relative"}
    plain = sasa.profile.count_params(sasa.create_model("sa_resnet26_convstem"))
    assert record["params"] < plain
    assert main(["profile", "sa_resnet26", "--model-opt", "kernel_sise=5"]) == 2
    assert "valid options" in capsys.readouterr().err


@pytest.mark.parametrize("text, value", [("true", True), ("False", False), (" TRUE", True), ("3", 3), ("", ""),
                                         ("(1, 2)", (1, 2)), ("relative", "relative")])
def test_model_opt_values_parse_booleans_in_any_case(text, value):
    from sasa.cli.options import parse_value

    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_model_opt_reaches_training_and_the_checkpoint(tmp_path):
    from sasa.classification import load_checkpoint, resolve_options, train

    options = resolve_options({"model": "sa_resnet26_convstem", "data": "digits", "epochs": 1, "limit_train": 32,
                               "limit_val": 16, "batch_size": 16, "device": "cpu", "quiet": True,
                               "model_opt": {"kernel_size": 3, "mixer_stages": "4"}})
    train(options, out=tmp_path / "run")
    model, meta = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert model.config.attention.kernel_size == 3 and model.config.mixer_stages == (4,)
    assert isinstance(model.layer1[0].conv2, nn.Conv2d) and isinstance(model.layer4[0].conv2, LocalSelfAttention2d)


def test_model_opt_unknown_key_is_a_user_error():
    from sasa.classification import resolve_options
    from sasa.errors import UserError

    with pytest.raises(UserError, match="unknown option.*kernel_sise.*valid options"):
        resolve_options({"model": "sa_resnet26", "data": "digits", "model_opt": {"kernel_sise": 5}})
