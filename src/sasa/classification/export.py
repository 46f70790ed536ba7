"""Export of a classifier checkpoint written by ``sasa train`` (``sasa export``)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from sasa.classification.checkpoint import load_checkpoint
from sasa.errors import UserError

FORMATS = ("onnx",)


def export_classifier(checkpoint: str | os.PathLike, out: str | os.PathLike, *, format: str = "onnx") -> Path:
    """Write the checkpoint's model to ``out``: ONNX with input "images" (B, C, H, W), output "logits"
    (B, classes), any batch and image size; the class names and preprocessing go in its metadata_props."""
    if format not in FORMATS:
        raise UserError(f"--format must be one of {FORMATS}, got {format!r}")
    from sasa.export import export_onnx

    model, meta = load_checkpoint(checkpoint, device="cpu")
    metadata = {key: json.dumps(meta[key]) for key in ("model", "class_names", "preprocess") if key in meta}
    try:
        return export_onnx(model, out, img_size=int(meta.get("img_size") or 224), in_chans=int(meta["in_chans"]),
                           metadata=metadata)
    except ValueError as error:  # a layer that cannot be exported: the user's choice of model
        raise UserError(f"checkpoint {str(checkpoint)!r}: {error}") from None
    except ImportError as error:  # the optional dependency is missing
        raise UserError(str(error)) from None
