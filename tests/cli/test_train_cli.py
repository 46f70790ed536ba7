"""`sasa train / eval / predict` end to end on small digits subsets (resnet26 at 16 px: seconds)."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from sasa.cli.main import main
from sasa.engine import load_weights

SMALL = ["--data", "digits", "--limit-train", "96", "--limit-val", "48", "--img-size", "16", "--batch-size", "32",
         "--quiet"]


def train(out, *extra, model="resnet26", epochs="1"):
    return main(["train", "--model", model, "--out", str(out), "--epochs", epochs, *SMALL, *extra])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r26"
    assert train(out) == 0
    return out


def test_train_writes_the_run_directory(run_dir):
    names = {p.name for p in run_dir.iterdir()} - {".lock"}
    assert names == {"config.json", "metrics.csv", "metrics.jsonl", "curves.png", "last.safetensors",
                     "best.safetensors", "state.pt"}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["task"] == "classification" and config["options"]["model"] == "resnet26"
    assert config["model_config"]["layers"] == [1, 2, 4, 1]
    assert config["recipe"] == "digits" and config["options"]["lr"] > 0 and config["train_images"] == 96
    (row,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "lr", "images_per_s",
                "epoch_seconds"):
        assert key in row
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["epoch", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5"]
    _, meta = load_weights(run_dir / "best.safetensors")
    assert meta["model"] == "resnet26" and meta["num_classes"] == 10 and meta["in_chans"] == 3
    assert meta["img_size"] == 16 and meta["class_names"] == [str(i) for i in range(10)]


def test_eval_reproduces_the_best_top1(run_dir, tmp_path, capsys):
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    out = tmp_path / "result.json"
    assert main(["eval", "--checkpoint", str(run_dir / "best.safetensors"), "--data", "digits", "--limit-val", "48",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"top-1 [\d.]+%  top-5 [\d.]+%", printed)
    result = json.loads(out.read_text())
    assert result["top1"] == pytest.approx(row["val_top1"], abs=1e-6)
    assert result["top5"] == pytest.approx(row["val_top5"], abs=1e-6)
    assert result["images"] == 48


def test_predict_prints_topk_per_image(run_dir, tmp_path, capsys):
    from sklearn.datasets import load_digits

    digits = load_digits()
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), mode="L").save(path)
        paths.append(str(path))
    assert main(["predict", "--checkpoint", str(run_dir / "last.safetensors"), *paths, "--topk", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all(re.fullmatch(r".*digit\d\.png: (\d [\d.]+%, ){2}\d [\d.]+%", line) for line in lines)
    assert main(["predict", "--checkpoint", str(run_dir / "last.safetensors"), paths[0], "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["topk"]) == 5 and abs(sum(t["prob"] for t in record["topk"]) - 1) < 1.0


def test_resume_equals_an_uninterrupted_run(tmp_path):
    assert train(tmp_path / "full", epochs="2") == 0
    assert train(tmp_path / "split", "--stop-after", "1", epochs="2") == 0
    assert len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 1
    assert main(["train", "--resume", str(tmp_path / "split"), "--quiet"]) == 0
    full = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    split = [json.loads(l) for l in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in split] == [1, 2]
    for a, b in zip(full, split):
        for key in ("train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-4), key
    wa, _ = load_weights(tmp_path / "full" / "last.safetensors")
    wb, _ = load_weights(tmp_path / "split" / "last.safetensors")
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < 1e-4


def test_sa_resnet26_trains_one_small_epoch(tmp_path, capsys):
    out = tmp_path / "sa"
    assert main(["train", "--model", "sa_resnet26", "--out", str(out), "--epochs", "1", "--data", "digits",
                 "--limit-train", "16", "--limit-val", "16", "--img-size", "32", "--batch-size", "16", "--quiet"]) == 0
    _, meta = load_weights(out / "last.safetensors")
    assert meta["model"] == "sa_resnet26" and meta["model_config"]["stem"] == "attention"
    assert "epoch 1/1" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet26", "sa_resnet26"])
def test_digits_recipe_reaches_95_percent(tmp_path, model):
    """The `make demo` settings (digits recipe defaults): >= 95% val top-1 on the 360 held-out digits."""
    out = tmp_path / model
    assert main(["train", "--model", model, "--data", "digits", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_top1"] >= 95.0, rows[-1]


def test_eval_batch_size_sets_the_validation_batch(tmp_path, monkeypatch):
    """--eval-batch-size (a TrainConfig field, read by the launcher): the val loader's batch, not --batch-size's."""
    import importlib

    launch = importlib.import_module("sasa.engine.launch")  # the module, not the function sasa.engine.launch

    sizes = []
    real = launch.make_loader

    def spy(dataset, *, batch_size, train, **kwargs):
        sizes.append((train, batch_size))
        return real(dataset, batch_size=batch_size, train=train, **kwargs)

    monkeypatch.setattr(launch, "make_loader", spy)
    assert train(tmp_path / "r", "--eval-batch-size", "48") == 0
    assert sizes == [(True, 32), (False, 48)]
    assert json.loads((tmp_path / "r" / "config.json").read_text())["options"]["eval_batch_size"] == 48
