"""Classification options (one dataclass) and its recipes (instances of it).

imagenet: the paper's appendix (SPEC §5; docs/recipes.md): 130 epochs, SGD with Nesterov momentum,
lr 0.1 per 256 images (1.6 at its batch of 4096), linear warm-up over 10 epochs then cosine decay, an
exponential moving average of the weights with decay 0.9999. Not stated by the paper, and our
assumptions: momentum 0.9, label smoothing 0.1, weight decay 1e-4, random-resized crop 224 + flip,
resize 256 + centre crop 224 for evaluation, a batch of 256 per run. The paper's batch-norm decay of
0.9999 is not reproduced (torch's BatchNorm momentum 0.1 is kept).
digits: the same structure scaled down to 1437 8×8 images on a CPU: AdamW (robust without a tuned lr
sweep on so few steps), per-step cosine with one warm-up epoch, random shifts instead of crops.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from sasa.engine.options import FRACTION, POSITIVE, option
from sasa.engine.trainer import TrainConfig
from sasa.errors import UserError
from sasa.models.registry import resolve_config



@dataclass(kw_only=True)
class ClassificationOptions(TrainConfig):
    """Everything a classification run is made of (saved as the run's config.json ``options``)."""

    model: str | None = option(None, "model name (see `sasa models`)")
    data: str | None = option(None, "'digits' or an ImageFolder root with train/ and val/ (stored as an absolute path)")
    img_size: int = option(224, "training and evaluation image size", check=POSITIVE)
    label_smoothing: float = option(0.0, "label smoothing of the training loss", check=FRACTION)
    limit_train: int | None = option(None, "use a fixed random subset of N training images", check=POSITIVE, metavar="N")
    limit_val: int | None = option(None, "use a fixed random subset of N validation images", check=POSITIVE, metavar="N")
    model_opt: dict | None = option(
        None, "model config override, repeatable: --model-opt kernel_size=5 --model-opt mixer_stages=34 "
              "(any ResNetConfig/AttentionConfig field, docs/models.md, docs/ablations.md)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.data is not None and self.data != "digits":
            self.data = os.path.abspath(self.data)  # a resumed run or eval may start in another folder
        if self.model is not None:
            # no minimum image size: every model runs on any size (pooling of a 1×1 map gives 1×1)
            try:
                resolve_config(self.model, **(self.model_opt or {}))
            except (ValueError, TypeError) as error:
                raise UserError(str(error)) from None

    def check_ready(self) -> None:
        missing = [f"--{name}" for name in ("model", "data") if getattr(self, name) is None]
        if missing:
            raise UserError(f"{', '.join(missing)} required (or --resume DIR)")


RECIPES: dict[str, ClassificationOptions] = {
    "imagenet": ClassificationOptions(
        epochs=130, batch_size=256, lr_per_256=0.1, warmup_epochs=10.0, ema=True, ema_decay=0.9999, opt="sgd",
        weight_decay=1e-4, label_smoothing=0.1,  # our assumptions: the paper does not state them
        img_size=224, workers=min(8, os.cpu_count() or 1),
    ),
    "digits": ClassificationOptions(
        data="digits", epochs=10, batch_size=64, lr=2e-3, weight_decay=0.05, warmup_epochs=1.0,
        label_smoothing=0.0, img_size=32, opt="adamw", workers=0,
    ),
}


def recipe_for(data: str | None) -> str:
    """The recipe of a ``--data`` value: ``digits`` for the embedded set, ``imagenet`` for a folder."""
    return "digits" if data == "digits" else "imagenet"


def resolve_options(given: dict) -> ClassificationOptions:
    """The recipe of ``given["data"]`` with every given (non-None) value."""
    return ClassificationOptions.from_recipe(RECIPES[recipe_for(given.get("data"))], given)
