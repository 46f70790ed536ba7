"""Position-sensitive axial attention along one axis (Axial-DeepLab eq. 4, SPEC §8).

For query position o and every key position p on the same axis with |p − o| ≤ radius:

    logit(o, p) = q_o·k_p + q_o·r^q_(p−o) + k_p·r^k_(p−o)
    y_o = Σ_p softmax_p(logit(o, ·)) · (v_p + r^v_(p−o))

The relative tables r^q, r^k (each (2·radius+1, Dq)) and r^v ((2·radius+1, Dv)) are shared by
all heads; row j holds offset j − radius. Keys outside the axis or beyond the radius are left
out of the softmax. Two optional hooks let a layer normalise the parts separately, as the paper
does with batch norm: ``logit_norm(terms, valid)`` receives the list of the three
logit terms [q·k, q·r^q, k·r^k] (B, N, L, S) — S keys per query, in the backend's layout — and the
(L, S) bool mask of the entries that are real keys within the radius (None when all are), and
returns them normalised; ``output_norm(parts)`` receives the list of the two
(B, N, L, Dv) parts [Σ softmax·v, Σ softmax·r^v] and returns them normalised. The parts are
summed after the hooks.

Backends: ``reference`` builds the (L, L, D) table of r_(p−o) for every pair and contracts it
with einsum, each line one term of the formula; ``matmul`` uses batched matmuls along the axis: with a
global reach, (B·N, D) @ (D, L) products per position against the (L, L, D) pair tables (which have no
batch dimension, so building them costs nothing); with a local span it works on
(L, 2·radius+1) banded logits over zero-padded key windows (memory and time grow with the span,
not the axis). The logit hooks see whichever layout the backend uses, with its validity mask
(None when nothing is masked); batch-norm statistics over the valid entries are the same in both.
``auto`` takes ``matmul``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from sasa.functional._amp import autocast_dtype, cast_to

LogitNorm = Callable[[list, "torch.Tensor | None"], list]
OutputNorm = Callable[[list], list]

__all__ = ["axial_attention1d", "axial_attention1d_reference", "axial_attention1d_macs", "AXIAL_BACKENDS"]


def _check_args(q, k, v, rel_q, rel_k, rel_v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v), ("rel_q", rel_q), ("rel_k", rel_k), ("rel_v", rel_v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
        if t.dtype != q.dtype or t.device != q.device:
            raise TypeError(f"{name} must have the dtype and device of q ({q.dtype}, {q.device}), got ({t.dtype}, {t.device})")
    if q.dim() != 4:
        raise ValueError(f"q must have 4 dimensions (B, N, L, Dq), got shape {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be (B, N, L, Dv) with (B, N, L) = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    if min(q.shape) == 0 or v.shape[-1] == 0:
        raise ValueError(f"q and v must have no empty dimension, got q {tuple(q.shape)} and v {tuple(v.shape)}")
    rows = rel_q.shape[0] if rel_q.dim() == 2 else -1
    if rows % 2 == 0 or rows < 1:
        raise ValueError(f"rel_q must be (2·radius+1, Dq), an odd number of rows, got shape {tuple(rel_q.shape)}")
    for name, t, dim in (("rel_q", rel_q, q.shape[-1]), ("rel_k", rel_k, q.shape[-1]), ("rel_v", rel_v, v.shape[-1])):
        if tuple(t.shape) != (rows, dim):
            raise ValueError(f"{name} must have shape {(rows, dim)} (one row per offset, shared by heads), got {tuple(t.shape)}")


def relative_offsets(length: int, radius: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, L) table index of r_(p−o) for query o (rows) and key p (columns), clamped; and the (L, L) in-radius mask."""
    positions = torch.arange(length, device=device)
    offset = positions[None, :] - positions[:, None]
    return (offset + radius).clamp(0, 2 * radius), offset.abs() <= radius


def _head_scaled(x: torch.Tensor, logit_scales: torch.Tensor | None, term: int) -> torch.Tensor:
    """x (B, N, L, D) times ``logit_scales[term]`` per head: scaling a term's factor scales the term."""
    return x if logit_scales is None else x * logit_scales[term].view(1, -1, 1, 1)


def _finish(terms, valid, v_mix, logit_norm, output_norm):
    """Shared tail of both backends: normalise and sum the logit terms, softmax, weighted sums, normalise, sum.

    ``valid`` is None when every pair is in the radius (nothing to mask).
    """
    if logit_norm is not None:
        terms = logit_norm(terms, valid)
    logits = terms[0] + terms[1]
    logits += terms[2]  # in place: a sum's value is not needed by autograd, and the (L, S) logits are the big tensors
    if valid is not None:
        logits.masked_fill_(~valid, float("-inf"))
    parts = v_mix(logits.softmax(dim=-1))
    if output_norm is not None:
        parts = output_norm(parts)
    return parts[0] + parts[1]


def axial_attention1d_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, rel_q: torch.Tensor, rel_k: torch.Tensor, rel_v: torch.Tensor,
    logit_norm: LogitNorm | None = None, output_norm: OutputNorm | None = None, logit_scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """The formula term by term, with the (L, L, D) table of embeddings for every (query, key) pair. Shapes as the module doc."""
    _check_args(q, k, v, rel_q, rel_k, rel_v)
    index, valid = relative_offsets(q.shape[-2], rel_q.shape[0] // 2, q.device)
    pair_q, pair_k, pair_v = rel_q[index], rel_k[index], rel_v[index]  # (L query, L key, D): r_(p−o)
    terms = [
        torch.einsum("bnod,bnpd->bnop", q, k),
        torch.einsum("bnod,opd->bnop", q, pair_q),
        torch.einsum("bnpd,opd->bnop", k, pair_k),
    ]
    if logit_scales is not None:
        terms = [term * logit_scales[index].view(1, -1, 1, 1) for index, term in enumerate(terms)]

    def v_mix(weights):
        return [torch.einsum("bnop,bnpd->bnod", weights, v), torch.einsum("bnop,opd->bnod", weights, pair_v)]

    return _finish(terms, None if bool(valid.all()) else valid, v_mix, logit_norm, output_norm)


def _axial_global(q, k, v, *, rel_q, rel_k, rel_v, logit_norm=None, output_norm=None, logit_scales=None) -> torch.Tensor:
    """Radius = L − 1 (tables trimmed to the axis, every key in reach): (L, L) logits from batched matmuls
    along the axis. The (L, L, D) pair tables r_(p−o) are small (no batch dimension), so q·r^q is one
    (B·N, D) @ (D, L) product per query position o, k·r^k one per key position p, and Σ w·r^v one per o."""
    batch, heads, length, _ = q.shape
    index, _ = relative_offsets(length, length - 1, q.device)
    pair_q, pair_k, pair_v = rel_q[index], rel_k[index], rel_v[index]  # (L query, L key, D)
    lines = lambda t: t.flatten(0, 1).transpose(0, 1)  # noqa: E731  (B, N, L, D) -> (L, B·N, D)
    qr = torch.bmm(lines(_head_scaled(q, logit_scales, 1)), pair_q.transpose(1, 2))  # (o, B·N, p)
    kr = torch.bmm(lines(_head_scaled(k, logit_scales, 2)), pair_k.permute(1, 2, 0))  # (p, B·N, o)
    terms = [
        _head_scaled(q, logit_scales, 0) @ k.transpose(-1, -2),
        qr.transpose(0, 1).unflatten(0, (batch, heads)),
        kr.permute(1, 2, 0).unflatten(0, (batch, heads)),
    ]

    def v_mix(weights):
        positional = torch.bmm(weights.flatten(0, 1).transpose(0, 1), pair_v)  # (o, B·N, Dv)
        return [weights @ v, positional.transpose(0, 1).unflatten(0, (batch, heads))]

    return _finish(terms, None, v_mix, logit_norm, output_norm)


def _windows(x: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, N, L, D) -> (B, N, L, 2·radius+1, D): the zero-padded keys at offsets −radius..radius of each position."""
    return F.pad(x, (0, 0, radius, radius)).unfold(-2, 2 * radius + 1, 1).transpose(-1, -2)


def _axial_banded(q, k, v, *, rel_q, rel_k, rel_v, logit_norm=None, output_norm=None, logit_scales=None) -> torch.Tensor:
    """Radius < L − 1 (a local span): (L, 2·radius+1) logits, one column per offset, so the cost grows with
    the span, not the axis; keys past the ends are zero-padded and masked out."""
    length, radius = q.shape[-2], rel_q.shape[0] // 2
    key_windows, value_windows = _windows(k, radius), _windows(v, radius)  # (B, N, L, m, D)
    key_pos = torch.arange(length, device=q.device)[:, None] + torch.arange(-radius, radius + 1, device=q.device)
    valid = (key_pos >= 0) & (key_pos < length)  # (L, m)
    terms = [
        (_head_scaled(q, logit_scales, 0).unsqueeze(-2) @ key_windows.transpose(-1, -2)).squeeze(-2),
        _head_scaled(q, logit_scales, 1) @ rel_q.T,  # column j is offset j − radius: already the banded layout
        (key_windows * rel_k).sum(-1),
    ]
    if logit_scales is not None:
        terms[2] = terms[2] * logit_scales[2].view(1, -1, 1, 1)

    def v_mix(weights):
        return [(weights.unsqueeze(-2) @ value_windows).squeeze(-2), weights @ rel_v]

    return _finish(terms, valid, v_mix, logit_norm, output_norm)


def _axial_matmul(q, k, v, **tables_and_hooks) -> torch.Tensor:
    """(L, L) logits when the radius reaches the whole axis, (L, 2·radius+1) banded logits otherwise."""
    if tables_and_hooks["rel_q"].shape[0] // 2 >= q.shape[-2] - 1:
        return _axial_global(q, k, v, **tables_and_hooks)
    return _axial_banded(q, k, v, **tables_and_hooks)


AXIAL_BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "matmul": _axial_matmul,
    "reference": axial_attention1d_reference,
}


def axial_attention1d(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, rel_q: torch.Tensor, rel_k: torch.Tensor, rel_v: torch.Tensor,
    logit_norm: LogitNorm | None = None, output_norm: OutputNorm | None = None,
    logit_scales: torch.Tensor | None = None, backend: str = "auto",
) -> torch.Tensor:
    """q, k: (B, N, L, Dq); v: (B, N, L, Dv); rel_q, rel_k: (2·radius+1, Dq); rel_v: (2·radius+1, Dv) -> (B, N, L, Dv).

    Under ``torch.autocast`` every float32/16 input is cast to the autocast dtype first (float32 tables
    meet half-precision projections there). No implicit scaling. ``logit_scales`` (3, N): multiply the
    three logit terms of head n by ``logit_scales[:, n]`` — applied to q or k before the products, so it
    costs nothing on the (L, S) logits; with it a layer folds an evaluation-mode batch norm of the terms (its shift is
    the same for every key of a query, so the softmax ignores it). Offsets beyond L − 1 cannot
    occur, so tables longer than the axis are trimmed to the rows it uses (same result, less work).
    """
    if backend != "auto" and backend not in AXIAL_BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(AXIAL_BACKENDS)}, got {backend!r}")
    amp = autocast_dtype(q.device) if isinstance(q, torch.Tensor) else None
    if amp is not None:  # bf16/fp16 projections meet the float32 tables: run in the autocast dtype, as matmuls do
        q, k, v, rel_q, rel_k, rel_v, logit_scales = cast_to(amp, q, k, v, rel_q, rel_k, rel_v, logit_scales)
    _check_args(q, k, v, rel_q, rel_k, rel_v)
    if logit_scales is not None and tuple(logit_scales.shape) != (3, q.shape[1]):
        raise ValueError(f"logit_scales must have shape (3, N) = {(3, q.shape[1])}, got {tuple(logit_scales.shape)}")
    radius, reach = rel_q.shape[0] // 2, q.shape[-2] - 1
    if radius > reach:
        rows = slice(radius - reach, radius + reach + 1)
        rel_q, rel_k, rel_v = rel_q[rows], rel_k[rows], rel_v[rows]
    run = AXIAL_BACKENDS["matmul" if backend == "auto" else backend]
    return run(
        q, k, v, rel_q=rel_q, rel_k=rel_k, rel_v=rel_v, logit_norm=logit_norm, output_norm=output_norm, logit_scales=logit_scales
    )


def axial_attention1d_macs(*, batch: int, heads: int, length: int, radius: int, dim: int, value_dim: int) -> int:
    """Multiply-adds of one call as the paper counts them: per query and head, for each of the min(2·radius+1, L)
    keys of its span, Dq each for q·k, q·r^q and k·r^k and Dv each for the two weighted sums (border spans counted in full)."""
    span = min(2 * radius + 1, length)
    return batch * heads * length * span * (3 * dim + 2 * value_dim)
