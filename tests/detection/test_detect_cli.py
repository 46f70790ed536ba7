"""sasa detect / detect-eval / detect-train / detect-data: inputs and outputs checked up front."""
import json

import numpy as np
import pytest
from PIL import Image

from sasa.cli.main import main
from sasa.errors import UserError

TINY = ["--shapes-train", "2", "--shapes-val", "1", "--img-size", "32", "--fpn-channels", "32", "--anchor-size", "8",
        "--batch-size", "2", "--epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch shapes run: (checkpoint path, shapes val folder)."""
    root = tmp_path_factory.mktemp("detect_cli")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SASA_CACHE", str(root / "cache"))
        assert main(["detect-train", "--out", str(root / "run"), *TINY]) == 0
    return root / "run" / "last.safetensors", next((root / "cache").glob("detection/*/val"))


def test_item3_detect_outputs_are_unique_and_never_an_input(trained, tmp_path, monkeypatch, capsys):
    checkpoint, val = trained
    picture = Image.open(val / "000000.png")
    for name in ("a/x.png", "a/x.jpg", "b/x.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        picture.save(tmp_path / name)
    inputs = [str(tmp_path / name) for name in ("a/x.png", "a/x.jpg", "b/x.png")]
    assert main(["detect", *inputs, "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]) == 0
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    outputs = [record["output"] for record in records]
    assert [record["image"] for record in records] == inputs and len(set(outputs)) == 3
    assert all((tmp_path / "out" / name).is_file() for name in ("x.png", "x_jpg.png", "x_png.png"))

    monkeypatch.chdir(tmp_path / "a")
    before = (tmp_path / "a" / "x.png").read_bytes()
    assert main(["detect", "x.png", "--checkpoint", str(checkpoint), "--out", "."]) == 0
    assert (tmp_path / "a" / "x.png").read_bytes() == before and (tmp_path / "a" / "x_png.png").is_file()


def test_item7_detect_on_very_wide_and_tall_images(trained, tmp_path):
    checkpoint, _ = trained
    Image.new("RGB", (1000, 5), (200, 30, 30)).save(tmp_path / "wide.png")
    Image.new("RGB", (5, 1000), (30, 200, 30)).save(tmp_path / "tall.png")
    assert main(["detect", str(tmp_path / "wide.png"), str(tmp_path / "tall.png"), "--checkpoint", str(checkpoint),
                 "--out", str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "wide.png").size == (1000, 5)


def test_item22_score_thresh_below_the_model_threshold_lowers_it(trained, tmp_path):
    """The detector drops scores under its built-in 0.05; --score-thresh 0.001 must see the lower ones."""
    checkpoint, val = trained
    assert main(["detect", str(val / "000000.png"), "--checkpoint", str(checkpoint), "--out", str(tmp_path),
                 "--score-thresh", "0.001"]) == 0
    scores = [d["score"] for d in json.loads((tmp_path / "detections.json").read_text())[0]["detections"]]
    assert scores and min(scores) >= 0.001 and min(scores) < 0.05


def test_item23_detect_sixteen_bit_png_like_its_eight_bit_copy(trained, tmp_path):
    checkpoint, val = trained
    gray = np.asarray(Image.open(val / "000000.png").convert("L"))
    Image.fromarray(gray).save(tmp_path / "g8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert main(["detect", str(tmp_path / "g8.png"), str(tmp_path / "g16.png"), "--checkpoint", str(checkpoint),
                 "--out", str(tmp_path / "out"), "--score-thresh", "0.01"]) == 0
    eight, sixteen = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert eight["detections"] == sixteen["detections"]


def test_item6_detect_eval_out_checked_before_evaluating(trained, tmp_path, capsys):
    """A bad --out is refused before the data is even read (here the image folder does not exist)."""
    checkpoint, _ = trained
    (tmp_path / "file").write_text("")
    bad = {str(tmp_path): "is a directory", str(tmp_path / "file" / "m.json"): "does not exist",
           str(tmp_path / "missing" / "m.json"): "does not exist"}
    for out, message in bad.items():
        assert main(["detect-eval", "--checkpoint", str(checkpoint), "--images", str(tmp_path / "nope"), "--ann",
                     str(tmp_path / "nope.json"), "--out", out]) == 2
        err = capsys.readouterr().err
        assert message in err and "nope" not in err and len(err.strip().splitlines()) == 1
    out = tmp_path / "metrics.json"
    assert main(["detect-eval", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["num_images"] == 1


def test_item2_coco_paths_without_data_coco_are_not_ignored(tmp_path, capsys):
    from sasa.detection.options import resolve_options

    coco = {"images": "i", "ann": "a.json", "val_images": "v", "val_ann": "v.json"}
    assert resolve_options(coco).data == "coco"  # was: the shapes recipe, the paths silently unused
    with pytest.raises(UserError, match="--shapes-val does not apply to --data coco"):
        resolve_options({**coco, "shapes_val": 5})
    run = tmp_path / "run"
    # the paths imply --data coco: all four are needed, and they are used (not the generated shapes)
    assert main(["detect-train", "--out", str(run), "--ann", str(tmp_path / "a.json")]) == 2
    assert "--data coco needs" in capsys.readouterr().err
    paths = ["--images", str(tmp_path / "i"), "--ann", str(tmp_path / "a.json"), "--val-images", str(tmp_path / "v"),
             "--val-ann", str(tmp_path / "v.json")]
    assert main(["detect-train", "--out", str(run), *paths]) == 2
    assert "a.json' does not exist" in capsys.readouterr().err
    assert main(["detect-train", "--out", str(run), "--data", "shapes", *paths]) == 2
    err = capsys.readouterr().err
    assert "--data shapes" in err and "--images" in err
    assert main(["detect-train", "--out", str(run), "--data", "coco", *paths, "--shapes-train", "5"]) == 2
    assert "--shapes-train" in capsys.readouterr().err
    assert not (run / "config.json").exists()


def test_item25_detect_data_shapes_out_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "some.png").write_bytes(b"")
    for kind in ("shapes", "shape-crops"):
        for out in ("some.png", "some.png/sub"):
            assert main(["detect-data", kind, "--out", str(tmp_path / out), "--num-train", "1", "--num-val", "1"]) == 2
            err = capsys.readouterr().err
            assert "some.png" in err and len(err.strip().splitlines()) == 1
