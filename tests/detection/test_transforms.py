"""Multiscale jitter + crop: image sizes, box geometry, and the detector not resizing jittered images."""
import pytest
import torch

from sasa.detection import create_detector, resolve_detector_config
from sasa.detection.transforms import ScaleJitterDataset, scale_jitter, skip_train_resize_


def _square_image(box, height=60, width=100):
    image = torch.zeros(3, height, width)
    x0, y0, x1, y1 = box
    image[:, y0:y1, x0:x1] = 1.0
    return image, {"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([2])}


def _bright_box(image):
    ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def test_scale_one_keeps_the_eval_scale():
    image, target = _square_image((10, 20, 40, 50))
    out, new = scale_jitter(image, target, size=100, scale=1.0)
    assert out.shape == (3, 60, 100)  # long side = size, nothing cropped
    assert torch.equal(new["boxes"], target["boxes"]) and torch.equal(new["labels"], target["labels"])


def test_boxes_follow_the_pixels_through_resize_and_crop():
    torch.manual_seed(0)
    for scale in (0.5, 0.8, 1.3, 2.0):
        for _ in range(5):
            image, target = _square_image((30, 12, 70, 44))
            out, new = scale_jitter(image, target, size=100, scale=scale)
            assert max(out.shape[-2:]) <= 100 and max(out.shape[-2:]) == min(100, round(100 * scale))
            if len(new["boxes"]):
                assert torch.allclose(new["boxes"][0], _bright_box(out), atol=1.0), (scale, new["boxes"])
                assert new["labels"].tolist() == [2]
            else:  # the square was cropped away entirely
                assert not (out[0] > 0.5).any()


def test_boxes_outside_the_crop_are_dropped():
    image = torch.zeros(3, 100, 100)
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [90.0, 90.0, 100.0, 100.0]]), "labels": torch.tensor([0, 1])}
    _, new = scale_jitter(image, target, size=50, scale=2.0)  # 100 px -> 100 px, a 50×50 window: one corner at most
    assert len(new["boxes"]) <= 1 and len(new["boxes"]) == len(new["labels"])
    assert (new["boxes"] >= 0).all() and (new["boxes"] <= 50).all()


def test_dataset_and_detector_keep_the_jittered_size():
    images = [_square_image((10, 20, 40, 50)) for _ in range(4)]
    dataset = ScaleJitterDataset(images, size=64, scale_range=(0.8, 1.2))
    sizes = {max(dataset[i][0].shape[-2:]) for i in range(4) for _ in range(5)}
    assert all(52 <= size <= 64 for size in sizes) and len(sizes) > 1
    detector = create_detector("retinanet_resnet26", num_classes=3, fpn_channels=32, min_size=64, max_size=64)
    skip_train_resize_(detector)
    image = torch.rand(3, 40, 52)
    detector.train()
    batch, _ = detector.transform([image], [{"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([0])}])
    assert batch.image_sizes == [(40, 52)]
    detector.eval()  # evaluation still resizes: long side 64
    assert detector.transform([image])[0].image_sizes == [(49, 64)]


def test_coco_recipe_jitters_and_bad_ranges_fail():
    from sasa.detection.options import resolve_options

    paths = {"images": "i", "ann": "a.json", "val_images": "v", "val_ann": "v.json"}
    assert resolve_options({"data": "coco", **paths}).scale_jitter == [0.8, 1.2]
    assert resolve_options({"data": "shapes"}).scale_jitter is None
    with pytest.raises(ValueError, match="scale_jitter"):
        resolve_options({"data": "shapes", "scale_jitter": [1.2, 0.8]})


def test_shapes_recipe_trains_attention_heads_with_the_identity_path():
    from sasa.cli.main import build_parser
    from sasa.detection.options import resolve_options

    assert resolve_options({"data": "shapes"}).head_residual is True
    paths = {"images": "i", "ann": "a.json", "val_images": "v", "val_ann": "v.json"}
    assert resolve_options({"data": "coco", **paths}).head_residual is None  # the paper's form
    args = build_parser().parse_args(["detect-train", "--out", "r", "--no-head-residual"])
    assert args.head_residual is False
    assert resolve_options({"data": "shapes", "head_residual": False}).head_residual is False
    detector = create_detector("retinanet_sa_resnet26_attnhead", num_classes=3,
                               **resolve_options({"data": "shapes"}).detector_overrides())
    assert detector.config.head_residual


def test_shapes_recipe_changes_for_attention_heads():
    """On shapes, detectors with attention FPN/heads take ATTENTION_HEAD_RECIPES; conv heads, the coco recipe
    and given values are untouched."""
    from sasa.detection.options import ATTENTION_HEAD_RECIPES, resolve_options

    changes = ATTENTION_HEAD_RECIPES["shapes"]
    conv = resolve_options({"data": "shapes"})
    for given in ({"model": "retinanet_sa_resnet26_attnhead"}, {"model": "retinanet_sa_resnet26", "head": "attention"}):
        options = resolve_options({"data": "shapes", **given})
        assert {key: getattr(options, key) for key in changes} == changes
        assert options.head_residual and options.batch_size == conv.batch_size
        detector = resolve_detector_config(options.model, **options.detector_overrides())
        assert not detector.head_content and detector.head_init == "neighbours"
    assert conv.head_init is None and conv.lr == 1e-3 and conv.epochs == 12
    mine = resolve_options({"data": "shapes", "model": "retinanet_sa_resnet26_attnhead", "lr": 1e-3, "head_init": "paper"})
    assert mine.lr == 1e-3 and mine.head_init == "paper" and mine.epochs == changes["epochs"]
    paths = {"images": "i", "ann": "a.json", "val_images": "v", "val_ann": "v.json"}
    coco = resolve_options({"data": "coco", **paths})
    assert coco.model == "retinanet_sa_resnet50_attnhead" and coco.head_init is None and coco.lr == 0.12


def test_head_options_from_flags_to_checkpoint(tmp_path):
    """--readout-residual, --fpn-norm, --no-head-content and --head-init reach the detector, its checkpoint
    metadata and load_checkpoint (which must rebuild the q biases of the neighbour init to load the weights)."""
    from sasa.cli.main import build_parser
    from sasa.detection.checkpoint import detector_metadata, load_checkpoint
    from sasa.detection.data import CocoDetection
    from sasa.detection.options import resolve_options
    from sasa.detection.shapes import generate_shapes
    from sasa.engine import save_weights

    args = build_parser().parse_args(["detect-train", "--out", "r", "--readout-residual", "--fpn-norm", "group",
                                      "--no-head-content", "--head-init", "neighbours"])
    assert args.readout_residual is True and args.fpn_norm == "group"
    assert args.head_content is False and args.head_init == "neighbours"
    options = resolve_options({"data": "shapes", "model": "retinanet_sa_resnet26_attnhead", "readout_residual": True,
                               "fpn_norm": "group", "head_content": False, "head_init": "neighbours",
                               "img_size": 32, "fpn_channels": 32, "anchor_size": 8})
    default = resolve_options({"data": "shapes"})
    assert default.readout_residual is None and default.fpn_norm is None  # the recipe leaves them at the paper's form
    root = generate_shapes(tmp_path / "shapes", num_train=0, num_val=1, img_size=32)
    dataset = CocoDetection(root / "val", root / "annotations" / "instances_val.json")
    model = create_detector(options.model, num_classes=3, **options.detector_overrides())
    save_weights(tmp_path / "w.safetensors", model.state_dict(), detector_metadata(options.model, model.config, dataset))
    loaded, metadata = load_checkpoint(tmp_path / "w.safetensors")
    assert metadata["model_config"]["readout_residual"] and metadata["model_config"]["fpn_norm"] == "group"
    assert loaded.config.readout_residual and loaded.config.fpn_norm == "group"
    assert not loaded.config.head_content and loaded.config.head_init == "neighbours"
    for got, want in zip(loaded.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(got, want)


def test_shapes_recipe_starts_attention_stems_as_patch_embeddings():
    """On shapes, detectors whose backbone has the attention stem take ATTENTION_STEM_RECIPES (from scratch only);
    conv stems, the coco recipe, --backbone-weights and a given --backbone-opt are untouched."""
    from sasa.detection.options import ATTENTION_STEM_RECIPES, resolve_options

    patchify = ATTENTION_STEM_RECIPES["shapes"]["backbone_opt"]
    for given in ({"model": "retinanet_sa_resnet26_attnhead"}, {"model": "retinanet_sa_resnet26"},
                  {"model": "retinanet_resnet26", "backbone": "sa_resnet38"}):
        options = resolve_options({"data": "shapes", **given})
        assert options.backbone_opt == patchify
        detector = create_detector(options.model, num_classes=3, **{**options.detector_overrides(), "fpn_channels": 32})
        stem = detector.backbone.body.stem
        assert stem.init == "patchify" and stem.num_value_mixtures == 16
        assert detector.backbone.body.config.stem_init == "patchify"
    for given in ({"model": "retinanet_resnet26"}, {"model": "retinanet_sa_resnet26_convstem_attnhead"},
                  {"model": "retinanet_sa_resnet26", "backbone_weights": "cls.safetensors"}):
        options = resolve_options({"data": "shapes", **given})
        assert options.backbone_opt is None and "backbone_options" not in options.detector_overrides()
    mine = resolve_options({"data": "shapes", "model": "retinanet_sa_resnet26", "backbone_opt": {"stem_init": "paper"}})
    assert mine.detector_overrides()["backbone_options"] == {"stem_init": "paper"}
    unset = resolve_options({"model": "retinanet_sa_resnet26", "model_opt": {"backbone_options": None},
                             "backbone_opt": {"stem_init": "paper"}})
    assert unset.detector_overrides()["backbone_options"] == {"stem_init": "paper"}
    paths = {"images": "i", "ann": "a.json", "val_images": "v", "val_ann": "v.json"}
    assert resolve_options({"data": "coco", **paths}).backbone_opt is None  # the paper's stem


def test_backbone_options_are_checked_and_rebuilt_from_the_stored_config():
    import dataclasses

    from sasa.cli.main import build_parser
    from sasa.detection.options import resolve_options
    from sasa.errors import UserError

    args = build_parser().parse_args(["detect-train", "--out", "r", "--backbone-opt", "stem_init=paper",
                                      "--backbone-opt", "stem_value_mixtures=8"])
    assert args.backbone_opt == {"stem_init": "paper", "stem_value_mixtures": 8}
    with pytest.raises(ValueError, match="backbone_options of 'sa_resnet26': stem_init='patchify' needs"):
        resolve_detector_config("retinanet_sa_resnet26", backbone_options={"stem_init": "patchify"})
    with pytest.raises(ValueError, match="other than attention"):
        resolve_detector_config("retinanet_sa_resnet26", backbone_options={"attention": {"kernel_size": 5}})
    with pytest.raises(TypeError, match="backbone_options of 'resnet26'.*no_such_field"):
        resolve_detector_config("retinanet_resnet26", backbone_options={"no_such_field": 1})
    with pytest.raises(UserError, match="stem_init must be one of"):
        resolve_options({"model": "retinanet_sa_resnet26", "backbone_opt": {"stem_init": "nope"}})
    # checkpoints store dataclasses.asdict(config) and load_checkpoint rebuilds the detector from it
    config = resolve_detector_config("retinanet_sa_resnet26", fpn_channels=32,
                                     backbone_options={"stem_init": "patchify", "stem_value_mixtures": 16})
    stored = dataclasses.asdict(config)
    assert stored["backbone_options"] == {"stem_init": "patchify", "stem_value_mixtures": 16}
    assert create_detector("retinanet_sa_resnet26", num_classes=3, **stored).backbone.body.stem.num_value_mixtures == 16
