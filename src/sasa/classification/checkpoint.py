"""Classification checkpoints: the metadata a run stores and :func:`load_checkpoint`."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import nn

from sasa.classification.data import ClassificationData
from sasa.engine.checkpoint import checkpoint_metadata, load_state_dict, read_checkpoint
from sasa.errors import UserError
from sasa.models import create_model
from sasa.models.registry import resolve_config

TASK = "classification"


def classifier_metadata(model: str, data: ClassificationData, *, img_size: int,
                        model_opt: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint metadata of a classifier (common schema + in_chans, preprocess, num_classes);
    ``model_config`` is the full config with ``model_opt`` applied, so loading rebuilds the same model."""
    return checkpoint_metadata(
        task=TASK, model=model, model_config=dataclasses.asdict(resolve_config(model, **(model_opt or {}))), class_names=data.class_names,
        img_size=img_size, num_classes=len(data.class_names), in_chans=data.in_chans, preprocess=data.preprocess,
        data=data.name,
    )


def load_checkpoint(path: str | os.PathLike, *, device: torch.device | str = "cpu",
                    expect_model: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode on device, metadata)`` from a safetensors file written by ``sasa train``."""
    state, meta = read_checkpoint(path, task=TASK)
    for key in ("in_chans", "preprocess"):
        if key not in meta:
            raise UserError(f"checkpoint {str(path)!r}: metadata lacks {key}")
    name = meta["model"]
    if expect_model is not None and expect_model != name:
        raise UserError(f"checkpoint {str(path)!r} holds a {name!r} model, not {expect_model!r}")
    num_classes = len(meta["class_names"])
    try:
        defaults = dataclasses.asdict(resolve_config(name))
        overrides = {key: tuple(value) if isinstance(value, list) else value
                     for key, value in meta["model_config"].items() if key in defaults}
        overrides = {key: value for key, value in overrides.items() if value != defaults[key]}
        model = create_model(name, num_classes=num_classes, in_chans=int(meta["in_chans"]), **overrides)
    except (ValueError, TypeError) as error:
        raise UserError(f"checkpoint {str(path)!r}: its metadata does not describe a model ({error})") from None
    load_state_dict(model, state, path=path, what=f"model {name!r} with {num_classes} classes")
    return model.to(device).eval(), meta
