"""Every registered detector builds, runs forward/backward, and uses every parameter; sizes vs the paper."""
import pytest
import torch
from torch import nn

from sasa.detection import create_detector, list_detectors, resolve_detector_config
from sasa.layers import LocalSelfAttention2d
from sasa.profile import count_params

TINY = dict(min_size=64, max_size=64, fpn_channels=32, anchor_size=8)


def _batch():
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [30.0, 30.0, 60.0, 62.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without objects
    ]
    return images, targets


# every variant kind at depth 26 in the normal run; the same kinds at depth 38 and 50 are slow twins
VARIANTS = [pytest.param(name, marks=[] if "26" in name else pytest.mark.slow) for name in list_detectors()]


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_backward_every_parameter_used(name):
    model = create_detector(name, num_classes=3, **TINY)
    images, targets = _batch()
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression"}
    sum(losses.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters without gradient: {unused[:5]}"
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "scores", "labels"}


def test_backbone_override_and_attention_head_layout():
    model = create_detector("retinanet_resnet26", num_classes=3, backbone="sa_resnet26", head="attention", **TINY)
    assert model.config.backbone == "sa_resnet26"
    assert hasattr(model.backbone.body, "stem")  # the attention stem
    attention = [name for name, module in model.named_modules()
                 if isinstance(module, LocalSelfAttention2d) and not name.startswith("backbone.body")]
    # 3 FPN output convs + 4 classification + 4 box-regression convs; prediction convs stay convs
    assert len(attention) == 11
    assert isinstance(model.head.classification_head.cls_logits, nn.Conv2d)
    assert isinstance(model.head.regression_head.bbox_reg, nn.Conv2d)
    assert isinstance(model.backbone.fpn.extra_blocks.p6, nn.Conv2d)


def test_bad_names_and_options():
    with pytest.raises(ValueError, match="did you mean"):
        create_detector("retinanet_sa_resnet5", num_classes=3)
    with pytest.raises(TypeError, match="unknown option"):
        create_detector("retinanet_resnet26", num_classes=3, colour="red")
    with pytest.raises(ValueError, match="head must be"):
        resolve_detector_config("retinanet_resnet26", head="mlp")
    with pytest.raises(ValueError, match="unknown model"):
        create_detector("retinanet_resnet26", num_classes=3, backbone="resnet99")


# paper §4.2 (SPEC §6), 80 COCO classes: params in millions
PAPER_PARAMS = {
    "retinanet_resnet50": 33.4,
    "retinanet_sa_resnet50_convstem": 25.9,
    "retinanet_sa_resnet50": 25.9,
    "retinanet_sa_resnet50_convstem_attnhead": 22.0,
    "retinanet_sa_resnet50_attnhead": 22.0,
}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_param_counts_near_the_paper(name):
    params = count_params(create_detector(name, num_classes=80)) / 1e6
    # within 2%: torchvision's RetinaNet has 0.4M more than the paper's conv baseline (see README)
    assert abs(params - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.02, params


def test_meta_profile_equals_full_forward():
    """Profiling on the meta device counts exactly what count_flops(model, inputs=[image]) counts."""
    from sasa.detection import profile_detector

    fast = profile_detector("retinanet_sa_resnet26_attnhead", img_size=80, num_classes=3, fpn_channels=32)
    full = profile_detector("retinanet_sa_resnet26_attnhead", img_size=80, num_classes=3, fpn_channels=32,
                            full_forward=True)  # 80 is padded to 96 by the transform, in both
    assert fast == full


def test_attention_head_residual_option():
    """head_residual wraps each head/FPN attention as x + attn(x) (no parameters); False: plain replacement."""
    from sasa.detection.model import ResidualAttention

    residual = create_detector("retinanet_sa_resnet26_attnhead", num_classes=3, **TINY)
    plain = create_detector("retinanet_sa_resnet26_attnhead", num_classes=3, head_residual=False, **TINY)
    assert residual.config.head_residual and not plain.config.head_residual
    assert isinstance(residual.head.classification_head.conv[0][0], ResidualAttention)
    assert isinstance(residual.backbone.fpn.layer_blocks[0][0], ResidualAttention)
    assert isinstance(plain.head.regression_head.conv[3][0], LocalSelfAttention2d)
    assert count_params(residual) == count_params(plain)
    x = torch.randn(1, 32, 8, 8)
    block = residual.head.classification_head.conv[0][0]
    assert torch.allclose(block(x), x + block.attention(x))
