"""Detection checkpoints: the metadata a run stores and :func:`load_checkpoint`."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import nn

from sasa.detection.config import DetectorConfig
from sasa.detection.data import CocoDetection
from sasa.detection.model import create_detector
from sasa.engine.checkpoint import checkpoint_metadata, load_state_dict, read_checkpoint
from sasa.errors import UserError

TASK = "detection"


def detector_metadata(model_name: str, config: DetectorConfig, dataset: CocoDetection) -> dict[str, Any]:
    """The checkpoint metadata of a detector (common schema + num_classes and COCO category ids)."""
    return checkpoint_metadata(
        task=TASK, model=model_name, model_config=dataclasses.asdict(config), class_names=dataset.class_names,
        img_size=config.min_size, num_classes=dataset.num_classes, category_ids=dataset.label_to_category_id,
    )


def load_checkpoint(path: str | os.PathLike, *, device: torch.device | str = "cpu",
                    **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode on device, metadata)`` from a safetensors file written by ``sasa detect-train``;
    ``overrides`` (None dropped) replace values of the stored detector config, e.g. ``backend``."""
    state, meta = read_checkpoint(path, task=TASK)
    if len(meta.get("category_ids") or []) != len(meta["class_names"]):
        raise UserError(f"checkpoint {str(path)!r}: {len(meta.get('category_ids') or [])} category ids for "
                        f"{len(meta['class_names'])} class names")
    config = {**meta["model_config"], **{k: v for k, v in overrides.items() if v is not None}}
    try:
        model = create_detector(meta["model"], num_classes=len(meta["class_names"]), **config)
    except (ValueError, TypeError) as error:
        raise UserError(f"checkpoint {str(path)!r}: its metadata does not describe a detector ({error})") from None
    load_state_dict(model, state, path=path, what=f"detector {meta['model']!r} with {len(meta['class_names'])} classes")
    return model.to(device).eval(), meta
