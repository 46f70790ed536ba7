"""The one checkpoint metadata schema of every task (stored JSON-encoded in the safetensors header).

    format        "sasa.checkpoint/1"
    task          "classification" or "detection"
    model         the registered name the model was built from
    model_config  the full config dataclass as a dict (name + these values rebuild the model)
    class_names   one name per output class
    img_size      the training image size
    + task entries (classification: in_chans, preprocess; detection: category_ids)
    + the epoch and its metrics row, added by the trainer

Each task's ``load_checkpoint`` reads it through :func:`read_checkpoint`, which refuses, in one line,
a file of the other task or with inconsistent metadata.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from sasa.engine.io import load_weights
from sasa.errors import UserError

FORMAT = "sasa.checkpoint/1"
REQUIRED = ("task", "model", "model_config", "class_names", "img_size")
COMMANDS = {"classification": "sasa eval / sasa predict", "detection": "sasa detect-eval / sasa detect"}


def checkpoint_metadata(*, task: str, model: str, model_config: dict[str, Any], class_names: list[str],
                        img_size: int, **extra: Any) -> dict[str, Any]:
    return {"format": FORMAT, "task": task, "model": model, "model_config": model_config,
            "class_names": list(class_names), "img_size": int(img_size), **extra}


def _upgrade(meta: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints written before the common schema (sasa.classifier/1; detection without a format)."""
    if meta.get("format") == "sasa.classifier/1":
        return {**meta, "format": FORMAT, "task": "classification"}
    if "format" not in meta and meta.get("task") == "detection" and "detector_config" in meta:
        config = meta["detector_config"]
        return {**meta, "format": FORMAT, "model_config": config, "img_size": config.get("min_size")}
    return meta


def read_checkpoint(path: str | os.PathLike, *, task: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, metadata)`` of a ``task`` checkpoint; a one-line :class:`UserError` for anything else."""
    state, meta = load_weights(path)
    meta = _upgrade(meta)
    name = str(path)
    if meta.get("format") != FORMAT:
        raise UserError(f"checkpoint {name!r} was not written by sasa (format {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("task") != task:
        use = COMMANDS.get(meta.get("task"), "the command of its task")
        raise UserError(f"checkpoint {name!r} is a {meta.get('task')} checkpoint, not a {task} one (use it with {use})")
    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise UserError(f"checkpoint {name!r}: metadata lacks {', '.join(missing)}")
    names = meta["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UserError(f"checkpoint {name!r}: class_names must be a non-empty list of strings, got {names!r}")
    if not isinstance(meta["model_config"], dict):
        raise UserError(f"checkpoint {name!r}: model_config must be a dict, got {meta['model_config']!r}")
    if "num_classes" in meta and meta["num_classes"] != len(names):
        raise UserError(f"checkpoint {name!r}: num_classes {meta['num_classes']!r} differs from its "
                        f"{len(names)} class names")
    return state, meta


def load_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], *, path: str | os.PathLike,
                    what: str) -> None:
    """``model.load_state_dict(state)`` with a one-line error when the weights do not fit ``what``."""
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        lines = str(error).splitlines()
        first = lines[1].strip() if len(lines) > 1 else lines[0]
        raise UserError(f"weights in {str(path)!r} do not fit {what}: {first}") from None
