"""The detector's resize: torchvision's sizes for ordinary images, at least 1 px per side for extreme ones."""
import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from sasa.detection import create_detector
from sasa.detection.resize import ClampedResizeTransform

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.mark.parametrize("height, width", [(30, 40), (97, 13), (64, 64), (5, 300)])
def test_ordinary_images_resize_as_torchvision_does(height, width):
    image = torch.rand(3, height, width)
    boxes = torch.tensor([[1.0, 2.0, 4.0, 5.0]])
    ours = ClampedResizeTransform(64, 96, MEAN, STD).eval()
    theirs = GeneralizedRCNNTransform(64, 96, MEAN, STD).eval()
    (a, ta), (b, tb) = ours.resize(image, {"boxes": boxes}), theirs.resize(image, {"boxes": boxes})
    assert a.shape == b.shape and torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])


@pytest.mark.parametrize("height, width, expected", [(5, 1000, (1, 96)), (1000, 5, (96, 1)), (1, 97, (1, 96))])
def test_item7_very_wide_or_tall_images_resize_to_at_least_one_pixel(height, width, expected):
    transform = ClampedResizeTransform(64, 96, MEAN, STD).eval()
    resized, _ = transform.resize(torch.rand(3, height, width))
    assert tuple(resized.shape[-2:]) == expected


def test_item7_detector_runs_on_a_1000x5_image():
    model = create_detector("retinanet_resnet26", num_classes=2, min_size=64, max_size=64, fpn_channels=32,
                            anchor_size=8, score_thresh=0.0).eval()
    with torch.no_grad():
        wide, tall = model([torch.rand(3, 5, 1000), torch.rand(3, 1000, 5)])
    for output, (height, width) in ((wide, (5, 1000)), (tall, (1000, 5))):
        boxes = output["boxes"]
        assert boxes.shape[1] == 4 and len(boxes) > 0  # score_thresh 0: the untrained model returns boxes
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()  # mapped back to the input's size
