"""Bad input to `sasa train / eval / predict`: exit code 2, one line naming the problem, nothing lost."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sasa.cli.main import main

SMALL = ["--limit-train", "32", "--limit-val", "16", "--img-size", "16", "--batch-size", "16", "--epochs", "1",
         "--quiet"]


def make_image_folder(root, classes=("cat", "dog"), splits=("train", "val"), per_class=3, size=12):
    rng = np.random.default_rng(0)
    for split in splits:
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


def run_main(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def run_argparse(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return exit_info.value.code, err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r26"
    assert main(["train", "--model", "resnet26", "--data", "digits", "--out", str(out), *SMALL]) == 0
    return out / "best.safetensors"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "abc"], "--epochs: expected a positive integer, got 'abc'"),
        (["--epochs", "0"], "--epochs: expected a positive integer, got 0"),
        (["--lr", "-1"], "--lr: expected a finite positive number, got -1.0"),
        (["--lr", "nan"], "--lr: expected a finite positive number, got nan"),
        (["--label-smoothing", "1.5"], "--label-smoothing: expected a number in [0, 1)"),
        (["--opt", "lamb"], "--opt: invalid choice: 'lamb'"),
        (["--device", "tpu"], "--device: invalid choice: 'tpu'"),
    ],
)
def test_bad_option_values(capsys, tmp_path, argv, message):
    code, err = run_argparse(capsys, "train", "--model", "resnet26", "--data", "digits", "--out", str(tmp_path / "r"), *argv)
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "r").exists()


def test_unknown_model_suggests_close_names(capsys, tmp_path):
    code, err = run_main(capsys, "train", "--model", "sa_resnet62", "--data", "digits", "--out", str(tmp_path / "r"))
    assert code == 2 and len(err) == 1
    assert "unknown model 'sa_resnet62'" in err[0] and "did you mean" in err[0] and "sa_resnet26" in err[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", "neither 'digits' nor an existing folder"),
        ("empty", "has no train/ or val/"),
        ("no-images", "no image files"),
        ("mismatch", "different classes: only in train: ['dog'], only in val: ['owl']"),
    ],
)
def test_bad_data_folders(capsys, tmp_path, layout, message):
    root = tmp_path / "data"
    if layout == "empty":
        root.mkdir()
    elif layout == "no-images":
        (root / "train" / "a").mkdir(parents=True)
        (root / "val" / "a").mkdir(parents=True)
    elif layout == "mismatch":
        make_image_folder(root, classes=("cat", "dog"), splits=("train",))
        make_image_folder(root, classes=("cat", "owl"), splits=("val",))
    code, err = run_main(capsys, "train", "--model", "resnet26", "--data", str(root), "--out", str(tmp_path / "r"), *SMALL)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r").exists()


def test_existing_run_is_not_overwritten_without_force(capsys, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").write_text("precious")
    code, err = run_main(capsys, "train", "--model", "resnet26", "--data", "digits", "--out", str(out), *SMALL)
    assert code == 2 and len(err) == 1 and "--force" in err[0]
    assert (out / "config.json").read_text() == "precious"


def test_item32_resume_hint_only_when_state_exists(capsys, tmp_path, checkpoint):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a run that failed before its first epoch: no state.pt
    code, err = run_main(capsys, "train", "--model", "resnet26", "--data", "digits", "--out", str(out), *SMALL)
    assert code == 2 and len(err) == 1 and "--force" in err[0] and "--resume" not in err[0]
    code, err = run_main(capsys, "train", "--model", "resnet26", "--data", "digits", "--out", str(checkpoint.parent),
                         *SMALL)
    assert code == 2 and len(err) == 1 and f"--resume {checkpoint.parent}" in err[0]


def test_resume_errors(capsys, tmp_path, checkpoint):
    code, err = run_main(capsys, "train", "--resume", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in err[0]
    code, err = run_main(capsys, "train", "--resume", str(checkpoint.parent), "--lr", "0.5")
    assert code == 2 and len(err) == 1 and "--lr cannot change on --resume" in err[0]
    code, err = run_main(capsys, "train", "--resume", str(checkpoint.parent), "--force")
    assert code == 2 and "exclude each other" in err[0]


def test_unreadable_training_image_is_skipped_and_counted(capsys, tmp_path):
    root = make_image_folder(tmp_path / "data", classes=("cat", "dog"), per_class=4, size=20)
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "r"
    with pytest.warns(RuntimeWarning, match="broken.jpg"):
        code = main(["train", "--model", "resnet26", "--data", str(root), "--out", str(out), "--img-size", "16",
                     "--batch-size", "9", "--epochs", "1", "--workers", "0", "--quiet"])
    assert code == 0
    assert "train_skipped_images 1" in capsys.readouterr().out
    assert '"train_skipped_images": 1' in (out / "metrics.jsonl").read_text()


def test_eval_refuses_another_model_or_class_count(capsys, tmp_path, checkpoint):
    code, err = run_main(capsys, "eval", "--checkpoint", str(checkpoint), "--data", "digits", "--model", "sa_resnet26")
    assert code == 2 and len(err) == 1 and "holds a 'resnet26' model, not 'sa_resnet26'" in err[0]
    root = make_image_folder(tmp_path / "data", classes=("a", "b", "c"))
    code, err = run_main(capsys, "eval", "--checkpoint", str(checkpoint), "--data", str(root))
    assert code == 2 and len(err) == 1 and "checkpoint classes (10" in err[0] and "(3: a, b, c)" in err[0]


def test_eval_refuses_weights_that_do_not_fit_their_metadata(capsys, tmp_path, checkpoint):
    from sasa.engine import load_weights, save_weights

    weights, meta = load_weights(checkpoint)
    names = [str(i) for i in range(7)]
    save_weights(tmp_path / "lying.safetensors", weights, {**meta, "num_classes": 7, "class_names": names})
    code, err = run_main(capsys, "eval", "--checkpoint", str(tmp_path / "lying.safetensors"), "--data", "digits")
    assert code == 2 and len(err) == 1 and "do not fit model 'resnet26' with 7 classes" in err[0]
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    code, err = run_main(capsys, "eval", "--checkpoint", str(tmp_path / "junk.safetensors"), "--data", "digits")
    assert code == 2 and "not a readable safetensors file" in err[0]
    code, err = run_main(capsys, "eval", "--checkpoint", str(tmp_path / "none.safetensors"), "--data", "digits")
    assert code == 2 and "does not exist" in err[0]


def test_predict_bad_inputs(capsys, tmp_path, checkpoint):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    code, err = run_main(capsys, "predict", "--checkpoint", str(checkpoint), str(bad))
    assert code == 2 and len(err) == 1 and "cannot read image" in err[0] and "bad.png" in err[0]
    code, err = run_main(capsys, "predict", "--checkpoint", str(checkpoint), str(tmp_path / "missing.png"))
    assert code == 2 and "does not exist" in err[0]
    code, err = run_main(capsys, "predict", "--checkpoint", str(checkpoint), str(bad), "--topk", "11")
    assert code == 2 and "--topk 11 exceeds the checkpoint's 10 classes" in err[0]


def test_real_command_line_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sasa", "train", "--model", "resnet26", "--data", str(tmp_path / "missing"),
         "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("sasa train: error: data")
