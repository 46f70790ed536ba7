"""Issue 14 items of the launcher, options, run directory and checkpoints: each a one-line error before any
work, nothing half-written, and runs that can be continued or evaluated from any folder."""
import json
import os
import subprocess
import sys

import pytest

from sasa.cli.main import main
from sasa.engine import load_weights, save_weights

SMALL = ["--data", "digits", "--limit-train", "32", "--limit-val", "16", "--img-size", "16", "--batch-size", "16",
         "--quiet"]
DET_SMALL = ["--img-size", "64", "--fpn-channels", "32", "--anchor-size", "8", "--batch-size", "3", "--lr", "1e-3",
             "--quiet"]  # --data coco refuses the --shapes-* flags (item 2)
DET_TINY = ["--shapes-train", "6", "--shapes-val", "3", *DET_SMALL]


def run_main(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SASA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cls"
    assert main(["train", "--model", "resnet26", "--out", str(out), "--epochs", "2", "--stop-after", "1", *SMALL]) == 0
    return out


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    previous = os.environ.get("SASA_CACHE")
    os.environ["SASA_CACHE"] = str(root / "cache")
    try:
        assert main(["detect-train", "--out", str(root / "run"), *DET_TINY, "--epochs", "1"]) == 0
    finally:
        if previous is None:
            os.environ.pop("SASA_CACHE")
        else:
            os.environ["SASA_CACHE"] = previous
    return root / "run"


# -- item 4: every option checked before the run directory or the data; recipe defaults fit --epochs


def test_item4_coco_recipe_warmup_is_scaled_to_a_short_run():
    from sasa.detection.options import resolve_options

    options = resolve_options({"data": "coco", "epochs": 1})
    assert 0 < options.warmup_epochs < 1  # the recipe's 1 of 150 epochs, scaled; was: "must be in [0, 1)"
    from sasa.classification.options import resolve_options as resolve_classification

    assert resolve_classification({"data": "digits", "epochs": 1, "model": "resnet26"}).warmup_epochs == pytest.approx(0.1)
    with pytest.raises(ValueError, match="warmup_epochs 2.0 must be smaller than epochs 1"):
        resolve_options({"epochs": 1, "warmup_epochs": 2.0})  # given by the user: refused, not changed


def test_item4_bad_backend_fails_before_the_run_directory(capsys, tmp_path, cache):
    code, err = run_main(capsys, "detect-train", "--out", tmp_path / "r", *DET_TINY, "--backend", "nope")
    assert code == 2 and len(err) == 1 and "backend must be 'auto' or one of" in err[0]
    assert not (tmp_path / "r").exists() and not cache.exists()  # no run folder, no data generated


def test_item4_failure_in_the_first_epoch_leaves_no_run_directory(capsys, tmp_path, monkeypatch):
    from sasa.classification.task import ClassificationTask

    def broken_step(self, model, batch, device):
        raise RuntimeError("simulated failure in the first step (e.g. an --amp dtype error)")

    monkeypatch.setattr(ClassificationTask, "train_step", broken_step)
    with pytest.raises(RuntimeError, match="simulated failure"):  # a bug keeps its traceback ...
        main(["train", "--model", "resnet26", "--out", str(tmp_path / "r"), "--epochs", "1", *SMALL])
    assert not (tmp_path / "r").exists()  # ... and leaves nothing to --force away


# -- items 5 and 15: absolute data paths in config.json


def _image_folder(root):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


def test_item15_relative_data_path_is_stored_absolute_and_resumes_elsewhere(capsys, tmp_path, monkeypatch):
    _image_folder(tmp_path / "work" / "data")
    monkeypatch.chdir(tmp_path / "work")
    assert main(["train", "--model", "resnet26", "--data", "data", "--out", "run", "--img-size", "16", "--batch-size",
                 "4", "--epochs", "2", "--stop-after", "1", "--workers", "0", "--quiet"]) == 0
    config = json.loads((tmp_path / "work" / "run" / "config.json").read_text())
    assert config["options"]["data"] == str(tmp_path / "work" / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", "work/run"]) == 0
    assert len((tmp_path / "work" / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_item5_detection_paths_are_stored_absolute_and_evaluate_elsewhere(capsys, tmp_path, monkeypatch):
    from sasa.detection.shapes import generate_shapes

    generate_shapes(tmp_path / "work" / "coco", num_train=6, num_val=3, img_size=64)
    monkeypatch.chdir(tmp_path / "work")
    coco = ["--data", "coco", "--images", "coco/train", "--ann", "coco/annotations/instances_train.json",
            "--val-images", "coco/val", "--val-ann", "coco/annotations/instances_val.json"]
    assert main(["detect-train", "--out", "run", *coco, *DET_SMALL, "--epochs", "1"]) == 0
    config = json.loads((tmp_path / "work" / "run" / "config.json").read_text())
    assert config["options"]["val_ann"] == str(tmp_path / "work" / "coco" / "annotations" / "instances_val.json")
    assert config["data"]["val_images"] == str(tmp_path / "work" / "coco" / "val")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["detect-eval", "--checkpoint", "work/run/last.safetensors"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 3


# -- item 14: --epochs on --resume


def test_item14_extended_epochs_are_saved_for_the_next_resume(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(["train", "--model", "resnet26", "--out", str(out), "--epochs", "1", *SMALL]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "3", "--stop-after", "2"]) == 0
    assert json.loads((out / "config.json").read_text())["options"]["epochs"] == 3
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0  # was: "epoch 2/1", nothing trained
    assert "epoch 3/3" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]


def test_item14_shrinking_below_the_completed_epochs_is_refused(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(["train", "--model", "resnet26", "--out", str(out), "--epochs", "2", *SMALL]) == 0
    code, err = run_main(capsys, "train", "--resume", out, "--epochs", "1")
    assert code == 2 and len(err) == 1 and "--epochs 1 is fewer than the 2 epochs" in err[0]
    assert json.loads((out / "config.json").read_text())["options"]["epochs"] == 2


# -- item 19: one-line errors instead of tracebacks


def test_item19_nan_loss_is_one_line_and_leaves_no_run_directory(capsys, tmp_path):
    code, err = run_main(capsys, "train", "--model", "resnet26", "--out", tmp_path / "r", "--epochs", "1",
                         "--lr", "1e30", "--opt", "sgd", *SMALL)
    assert code == 2 and len(err) == 1 and "loss is" in err[0] and "lower --lr" in err[0]
    assert "was removed" in err[0] and not (tmp_path / "r").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: no read-only folder to refuse")
def test_item19_read_only_out_is_refused_before_the_data(capsys, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        code, err = run_main(capsys, "train", "--model", "resnet26", "--out", parent / "r", *SMALL)
    finally:
        parent.chmod(0o700)
    assert code == 2 and len(err) == 1 and "no write permission" in err[0]


def test_item19_read_only_check_names_the_folder(monkeypatch, tmp_path):
    """The permission check itself (root passes every access check, so the CLI test above is skipped there)."""
    from sasa.engine import check_output_dir

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ValueError, match=f"no write permission in '{tmp_path}'"):
        check_output_dir(tmp_path / "run")


def test_item19_out_under_a_file_and_item25_out_an_existing_file(capsys, tmp_path):
    (tmp_path / "file").write_text("mine")
    code, err = run_main(capsys, "train", "--model", "resnet26", "--out", tmp_path / "file" / "sub", *SMALL)
    assert code == 2 and len(err) == 1 and "is a file, not a directory" in err[0]
    code, err = run_main(capsys, "train", "--model", "resnet26", "--out", tmp_path / "file", *SMALL)
    assert code == 2 and len(err) == 1 and "is an existing file, not a directory" in err[0]
    code, err = run_main(capsys, "detect-train", "--out", tmp_path / "file" / "sub", *DET_TINY)
    assert code == 2 and len(err) == 1 and "is a file, not a directory" in err[0]
    assert (tmp_path / "file").read_text() == "mine"


def test_item19_eval_out_directory_is_refused_before_evaluating(capsys, tmp_path, classification_run, monkeypatch):
    import sasa.classification.evaluate as evaluate

    def never(*args, **kwargs):
        raise AssertionError("evaluated before checking --out")

    monkeypatch.setattr(evaluate, "load_checkpoint", never)
    checkpoint = classification_run / "last.safetensors"
    code, err = run_main(capsys, "eval", "--checkpoint", checkpoint, "--data", "digits", "--out", tmp_path)
    assert code == 2 and len(err) == 1 and "is a directory" in err[0]
    code, err = run_main(capsys, "eval", "--checkpoint", checkpoint, "--data", "digits", "--out",
                         tmp_path / "missing" / "r.json")
    assert code == 2 and len(err) == 1 and "does not exist" in err[0]


def test_item19_resume_of_the_other_tasks_run(capsys, classification_run, detection_run):
    code, err = run_main(capsys, "train", "--resume", detection_run)
    assert code == 2 and len(err) == 1 and "is a detection run" in err[0] and "detect-train --resume" in err[0]
    code, err = run_main(capsys, "detect-train", "--resume", classification_run)
    assert code == 2 and len(err) == 1 and "is a classification run" in err[0] and "sasa train --resume" in err[0]


# -- item 26: checkpoints of the other task, inconsistent metadata


def test_item26_checkpoint_of_the_other_task(capsys, tmp_path, classification_run, detection_run):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    code, err = run_main(capsys, "detect", tmp_path / "x.png", "--checkpoint", classification_run / "last.safetensors",
                         "--out", tmp_path / "drawn")
    assert code == 2 and len(err) == 1 and "is a classification checkpoint, not a detection one" in err[0]
    code, err = run_main(capsys, "detect-eval", "--checkpoint", classification_run / "last.safetensors")
    assert code == 2 and len(err) == 1 and "is a classification checkpoint" in err[0]
    code, err = run_main(capsys, "eval", "--checkpoint", detection_run / "last.safetensors", "--data", "digits")
    assert code == 2 and len(err) == 1 and "is a detection checkpoint, not a classification one" in err[0]


@pytest.mark.parametrize("change, message", [
    ({"class_names": ["a", "b"]}, "num_classes 10 differs from its 2 class names"),
    ({"model_config": {"layers": [1]}}, "metadata does not describe a model"),
    ({"model_config": {"stem": "nope"}}, "metadata does not describe a model"),
    ({"model_config": "junk"}, "model_config must be a dict"),
    ({"class_names": []}, "class_names must be a non-empty list"),
])
def test_item26_inconsistent_classifier_metadata_is_one_line(capsys, tmp_path, classification_run, change, message):
    weights, meta = load_weights(classification_run / "last.safetensors")
    save_weights(tmp_path / "bad.safetensors", weights, {**meta, **change})
    code, err = run_main(capsys, "eval", "--checkpoint", tmp_path / "bad.safetensors", "--data", "digits")
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_item26_inconsistent_detector_metadata_is_one_line(capsys, tmp_path, detection_run):
    weights, meta = load_weights(detection_run / "last.safetensors")
    save_weights(tmp_path / "ids.safetensors", weights, {**meta, "category_ids": [1]})
    code, err = run_main(capsys, "detect-eval", "--checkpoint", tmp_path / "ids.safetensors")
    assert code == 2 and len(err) == 1 and "1 category ids for 3 class names" in err[0]
    save_weights(tmp_path / "cfg.safetensors", weights, {**meta, "model_config": {**meta["model_config"],
                                                                                "fpn_channels": 64}})
    code, err = run_main(capsys, "detect-eval", "--checkpoint", tmp_path / "cfg.safetensors")
    assert code == 2 and len(err) == 1 and "do not fit detector" in err[0]


# -- item 32: torchrun errors once, corrupt metrics.jsonl, profile's one line


def test_item32_torchrun_prints_a_user_error_once(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sasa", "train",
         "--model", "resnet26", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode != 0
    assert result.stderr.count("sasa train: error:") == 1, result.stderr[-2000:]


def test_item32_corrupt_metrics_jsonl_names_the_file(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(["train", "--model", "resnet26", "--out", str(out), "--epochs", "2", "--stop-after", "1", *SMALL]) == 0
    (out / "metrics.jsonl").write_text("{not json\n")
    code, err = run_main(capsys, "train", "--resume", out)
    assert code == 2 and len(err) == 1 and "metrics.jsonl' line 1 is not JSON" in err[0]


def test_item32_profile_bad_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "--img-size", "abc"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "--img-size" in err[0] and "usage" not in err[0]
