"""Atomic file writes, safetensors weights with metadata, and the resumable training state.

Every file the engine writes goes through :func:`atomic_write_bytes`: the bytes land in a
temporary file in the same directory, are fsync'ed, and replace the target with
``os.replace``. A reader (or a resumed run after SIGKILL) therefore sees either the old
file or the new one, never a torn one.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from sasa.errors import UserError


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: str | os.PathLike) -> None:
    """Refuse, before any work, an output folder that cannot be made: an existing file, a path
    under a file, or a place without write permission."""
    path = Path(path)
    existing = _first_existing(path)
    if existing == Path(os.path.abspath(path)) and not existing.is_dir():
        raise UserError(f"output {str(path)!r} is an existing file, not a directory")
    if not existing.is_dir():
        raise UserError(f"output {str(path)!r} cannot be created: {str(existing)!r} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output {str(path)!r} cannot be written: no write permission in {str(existing)!r}")


def check_output_file(path: str | os.PathLike) -> None:
    """Refuse, before any work, an output file that cannot be written (a folder, a missing or
    read-only parent, a parent that is a file)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"output {str(path)!r} is a directory; give a file name")
    if not path.parent.is_dir():
        raise UserError(f"output {str(path)!r} cannot be written: folder {str(path.parent)!r} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"output {str(path)!r} cannot be written: permission denied")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a partial one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    # makes the rename itself durable; not every platform allows opening a directory
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


# ---------------------------------------------------------------------------------------------
# weights: safetensors with JSON-encoded metadata


def save_weights(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> None:
    """Save tensors to a ``.safetensors`` file; every metadata value is stored JSON-encoded.

    ``metadata`` should say how to rebuild the model (e.g. model name, num_classes, in_chans,
    img_size, class names); :func:`load_weights` decodes it back to Python values.
    """
    tensors = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in state_dict.items()}
    encoded = {str(key): json.dumps(value) for key, value in metadata.items()}
    atomic_write_bytes(path, safetensors_save(tensors, metadata=encoded))


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, metadata)`` of a file written by :func:`save_weights`.

    Raises :class:`~sasa.errors.UserError` naming the path for a missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    data = path.read_bytes()
    try:
        tensors = safetensors_load(data)
        header_len = int.from_bytes(data[:8], "little")
        raw_metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, UnicodeDecodeError) as error:
        raise UserError(f"checkpoint {str(path)!r} is not a readable safetensors file ({error})") from None
    metadata = {}
    for key, value in raw_metadata.items():
        try:
            metadata[key] = json.loads(value)
        except json.JSONDecodeError:
            metadata[key] = value  # written by another tool: keep the raw string
    return tensors, metadata


# ---------------------------------------------------------------------------------------------
# training state: optimizer, scheduler, epoch, RNG, ... (torch.save, loadable with weights_only)


def save_state(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """``torch.save`` a state dict atomically. Keep it to tensors, numbers, strings, lists and dicts."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"training state {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises a zoo of types for corrupt pickles
        raise UserError(f"training state {str(path)!r} is not readable ({type(error).__name__}: {error})") from None
