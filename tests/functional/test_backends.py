"""Every backend against the reference oracle (values and gradients), plus dispatch.

The fused CPU kernel is JIT-compiled on first use (~30-60 s once per machine; cached in
~/.cache/sasa/torch_extensions). Tolerances: float64 1e-10 (values) / 1e-9 (grads);
float32 1e-4 absolute+relative; bfloat16 inputs are computed in float32 by every backend
(the reference included), so they are compared against the float32 reference of the
same bfloat16 inputs with atol = rtol = 3e-2 (bfloat16 has 8 bits of mantissa).
"""
from __future__ import annotations

import logging

import pytest
import torch

import sasa.functional as SF
from sasa.functional import chunked, cpu_fused
from sasa.functional.dispatch import select_backend
from sasa.functional.reference import local_attention2d_reference

CPU_BACKENDS = ["cpu_fused", "chunked"]

# (B, N, H, W, D, Dv, kernel_size, rel_pos mode)
CASES = [
    (2, 3, 5, 7, 4, 6, 3, "head"),  # odd sizes, H != W, Dv != D
    (1, 1, 1, 1, 3, 2, 5, "shared"),  # 1x1 image, kernel > image
    (2, 2, 9, 4, 8, 8, 7, None),  # kernel > width, no rel_pos
    (1, 2, 6, 11, 8, 8, 3, "head"),  # batch 1, D=8 specialisation
    (1, 2, 13, 6, 16, 16, 5, "shared"),  # D=16 specialisation
    (2, 1, 6, 6, 32, 32, 13, "shared"),  # one head, kernel > image, D=32
    (1, 1, 20, 9, 8, 8, 3, "head"),  # few images: backward splits rows into bands
    (1, 3, 17, 10, 5, 3, 5, None),  # generic D/Dv, bands with r=2
    (3, 2, 4, 19, 8, 4, 1, "head"),  # kernel 1
]


def _case_id(case):
    b, n, h, w, d, dv, ks, rel = case
    return f"B{b}N{n}_{h}x{w}_D{d}Dv{dv}_k{ks}_{rel}"


def _make(case, dtype, requires_grad=True, seed=0):
    b, n, h, w, d, dv, ks, rel = case
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, n, h, w, d, generator=gen, dtype=torch.float64).to(dtype)
    k = torch.randn(b, n, h, w, d, generator=gen, dtype=torch.float64).to(dtype)
    v = torch.randn(b, n, h, w, dv, generator=gen, dtype=torch.float64).to(dtype)
    rel_pos = None
    if rel == "shared":
        rel_pos = torch.randn(ks, ks, d, generator=gen, dtype=torch.float64).to(dtype)
    elif rel == "head":
        rel_pos = torch.randn(n, ks, ks, d, generator=gen, dtype=torch.float64).to(dtype)
    tensors = [t for t in (q, k, v, rel_pos) if t is not None]
    for t in tensors:
        t.requires_grad_(requires_grad)
    return q, k, v, rel_pos, ks


def _run(backend, q, k, v, rel_pos, ks):
    if backend == "reference":
        return local_attention2d_reference(q, k, v, kernel_size=ks, rel_pos=rel_pos)
    return SF.local_attention2d(q, k, v, kernel_size=ks, rel_pos=rel_pos, backend=backend)


def _values_and_grads(backend, q, k, v, rel_pos, ks, grad_out):
    inputs = [t for t in (q, k, v, rel_pos) if t is not None]
    out = _run(backend, q, k, v, rel_pos, ks)
    grads = torch.autograd.grad(out, inputs, grad_out)
    return out, grads


def _require(backend):
    if backend == "cpu_fused" and cpu_fused.extension_error() is not None:
        pytest.skip(f"fused CPU extension unavailable: {cpu_fused.extension_error()}")


TOL = {torch.float64: dict(atol=1e-10, rtol=1e-9), torch.float32: dict(atol=1e-4, rtol=1e-4)}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_cpu_backend_matches_reference(backend, dtype, case):
    _require(backend)
    q, k, v, rel_pos, ks = _make(case, dtype)
    grad_out = torch.randn(*q.shape[:4], v.shape[-1], dtype=dtype, generator=torch.Generator().manual_seed(1))
    ref_out, ref_grads = _values_and_grads("reference", q, k, v, rel_pos, ks, grad_out)
    out, grads = _values_and_grads(backend, q, k, v, rel_pos, ks, grad_out)
    assert out.shape == ref_out.shape and out.dtype == dtype
    torch.testing.assert_close(out, ref_out, **TOL[dtype])
    for name, g, rg in zip(["dq", "dk", "dv", "drel_pos"], grads, ref_grads):
        assert g.shape == rg.shape, name
        torch.testing.assert_close(g, rg, **TOL[dtype], msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_inputs(backend):
    _require(backend)
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(2, 7, 3, 6, 12, generator=gen, dtype=torch.float64)  # (B, H, N, W, 2D)
    q = base[..., :6].permute(0, 2, 1, 3, 4)  # (B, N, H, W, D) with odd strides
    k = base[..., 6:].permute(0, 2, 1, 3, 4)
    v = torch.randn(2, 3, 6, 7, 5, generator=gen, dtype=torch.float64).transpose(2, 3)  # (B, N, 7, 6, 5)
    rel = torch.randn(3, 5, 5, 12, generator=gen, dtype=torch.float64)[..., ::2]  # (N, k, k, 6)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous() or rel.is_contiguous())
    for t in (q, k, v, rel):
        t.requires_grad_(True)
    grad_out = torch.randn(2, 3, 7, 6, 5, generator=gen, dtype=torch.float64)
    ref_out, ref_grads = _values_and_grads("reference", q, k, v, rel, 5, grad_out)
    out, grads = _values_and_grads(backend, q, k, v, rel, 5, grad_out)
    torch.testing.assert_close(out, ref_out, **TOL[torch.float64])
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, **TOL[torch.float64])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("rel", ["head", "shared", None])
def test_gradcheck_float64(backend, rel):
    _require(backend)
    q, k, v, rel_pos, ks = _make((1, 2, 4, 5, 3, 2, 3, rel), torch.float64)
    inputs = tuple(t for t in (q, k, v, rel_pos) if t is not None)

    def fn(*args):
        qq, kk, vv = args[:3]
        rr = args[3] if len(args) > 3 else None
        return SF.local_attention2d(qq, kk, vv, kernel_size=ks, rel_pos=rr, backend=backend)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bfloat16(backend):
    _require(backend)
    case = (2, 2, 7, 6, 8, 8, 5, "head")
    q, k, v, rel_pos, ks = _make(case, torch.bfloat16)
    grad_out = torch.randn(2, 2, 7, 6, 8, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    out, grads = _values_and_grads(backend, q, k, v, rel_pos, ks, grad_out)
    assert out.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in grads)
    q32, k32, v32, r32 = (t.detach().float().requires_grad_(True) for t in (q, k, v, rel_pos))
    ref_out, ref_grads = _values_and_grads("reference", q32, k32, v32, r32, ks, grad_out.float())
    torch.testing.assert_close(out.float(), ref_out, atol=3e-2, rtol=3e-2)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g.float(), rg, atol=3e-2 * rg.abs().max().item(), rtol=3e-2)


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_cpu_fused_lower_isa_matches(isa):
    """The lower-ISA copies of the kernel (older CPUs; 8 lanes instead of AVX-512's 16) give the same results."""
    _require("cpu_fused")
    ext = cpu_fused.load_extension()
    case = (2, 2, 9, 19, 8, 8, 5, "head")  # W = 19: a partial vector at both lane widths
    q, k, v, rel_pos, ks = _make(case, torch.float32)
    grad_out = torch.randn(2, 2, 9, 19, 8, generator=torch.Generator().manual_seed(1))
    fast = _values_and_grads("cpu_fused", q, k, v, rel_pos, ks, grad_out)
    default = ext.isa()
    ext.limit_isa(isa)
    try:
        assert ext.isa() in (isa, "baseline")  # a CPU without AVX2 runs the baseline anyway
        slow = _values_and_grads("cpu_fused", q, k, v, rel_pos, ks, grad_out)
    finally:
        ext.limit_isa("avx512")
    assert ext.isa() == default
    torch.testing.assert_close(fast[0], slow[0], atol=1e-5, rtol=1e-5)
    for g, h in zip(fast[1], slow[1]):
        torch.testing.assert_close(g, h, atol=1e-5, rtol=1e-5)


def test_cpu_fused_no_double_backward():
    _require("cpu_fused")
    q, k, v, rel_pos, ks = _make((1, 1, 4, 4, 2, 2, 3, "shared"), torch.float64)
    out = SF.local_attention2d(q, k, v, kernel_size=ks, rel_pos=rel_pos, backend="cpu_fused")
    grad_out = torch.ones_like(out, requires_grad=True)
    (dq,) = torch.autograd.grad(out, q, grad_out, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        dq.sum().backward()


def test_chunked_many_bands(monkeypatch):
    """A tiny band budget forces one row per band; still exact, with gradients."""
    monkeypatch.setenv("SASA_CHUNK_ELEMENTS", "1")
    case = (1, 2, 7, 5, 3, 4, 5, "head")
    q, k, v, rel_pos, ks = _make(case, torch.float64)
    grad_out = torch.randn(1, 2, 7, 5, 4, dtype=torch.float64)
    ref = _values_and_grads("reference", q, k, v, rel_pos, ks, grad_out)
    got = _values_and_grads("chunked", q, k, v, rel_pos, ks, grad_out)
    for a, b in zip([got[0], *got[1]], [ref[0], *ref[1]]):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


# ----------------------------------------------------------------------------- dispatch
def _small(dtype=torch.float32):
    q, k, v, rel_pos, ks = _make((1, 2, 5, 5, 4, 4, 3, "head"), dtype, requires_grad=False)
    return q, k, v, rel_pos, ks


def test_all_backends_registered():
    names = SF.registered_backends()
    for name in ("flex", "cpu_fused", "chunked", "reference"):
        assert name in names
    assert names.index("cpu_fused") < names.index("chunked") < names.index("reference")


def test_item33_available_backends_lists_only_what_runs_here(monkeypatch):
    """On a machine without CUDA, flex is registered but not listed as available, and backend_status says why."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert SF.available_backends() == ["cpu_fused", "chunked", "reference"]
    status = SF.backend_status()
    assert "flex" in status and status["flex"] == "needs a CUDA device; this machine has cpu"
    assert status["reference"] is None


ALL_BACKENDS = ["reference", *CPU_BACKENDS]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_item1_large_logits_finite_and_equal_to_float64(backend, dtype):
    """Logits of magnitude ~1e4 accumulate in float32 in every backend: finite, equal to the float64 reference."""
    _require(backend)
    gen = torch.Generator().manual_seed(5)
    shape = (2, 2, 6, 7, 4)
    q, k, v = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale for scale in (60.0, 60.0, 1.0))
    rel = torch.randn(2, 5, 5, 4, generator=gen, dtype=torch.float64) * 60.0
    q, k, v, rel = (t.to(dtype) for t in (q, k, v, rel))
    logits = torch.einsum("bnhwd,bnhwd->bnhw", q.double(), k.double())
    assert logits.abs().max() > 1e4
    out = _run(backend, q, k, v, rel, 5)
    assert out.dtype == dtype and torch.isfinite(out).all()
    expected = local_attention2d_reference(q.double(), k.double(), v.double(), kernel_size=5, rel_pos=rel.double())
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out.double(), expected, **tol)


def test_auto_picks_cpu_fused_on_cpu():
    _require("cpu_fused")
    q, k, v, rel_pos, ks = _small()
    chosen = select_backend(q, k, v, kernel_size=ks, rel_pos=rel_pos, backend="auto")
    assert chosen.name == "cpu_fused"
    reasons = dict(SF.explain_backend(q, k, v, kernel_size=ks, rel_pos=rel_pos))
    assert reasons["cpu_fused"] is None and reasons["chunked"] is None
    if not torch.cuda.is_available():
        assert "CUDA" in reasons["flex"] and "backward on CPU" in reasons["flex"]


def test_explicit_backend_that_cannot_run_raises():
    q, k, v, rel_pos, ks = _small()
    with pytest.raises(RuntimeError, match="flex.*cannot run.*CUDA"):
        SF.local_attention2d(q, k, v, kernel_size=ks, rel_pos=rel_pos, backend="flex")
    with pytest.raises(ValueError, match="backend must be"):
        SF.local_attention2d(q, k, v, kernel_size=ks, rel_pos=rel_pos, backend="no_such_backend")


def test_log_backend_reports_choice_and_rejections(monkeypatch, caplog):
    _require("cpu_fused")
    monkeypatch.setenv("SASA_LOG_BACKEND", "1")
    q, k, v, rel_pos, ks = _small()
    with caplog.at_level(logging.WARNING, logger="sasa.functional"):
        SF.local_attention2d(q, k, v, kernel_size=ks, rel_pos=rel_pos)
    text = caplog.text
    assert "using 'cpu_fused'" in text
    if not torch.cuda.is_available():
        assert "flex: needs CUDA tensors" in text


def test_fallback_to_chunked_when_extension_unavailable(monkeypatch):
    monkeypatch.setattr(cpu_fused, "_EXT", None)
    monkeypatch.setattr(cpu_fused, "_EXT_ERROR", "RuntimeError: simulated: no compiler")
    q, k, v, rel_pos, ks = _small(torch.float64)
    reason = cpu_fused.why_not(q, k, v, ks, rel_pos)
    assert reason is not None and reason.startswith("compiler/extension unavailable: ")
    chosen = select_backend(q, k, v, kernel_size=ks, rel_pos=rel_pos, backend="auto")
    assert chosen.name == "chunked"
    with pytest.raises(RuntimeError, match="compiler/extension unavailable"):
        SF.local_attention2d(q, k, v, kernel_size=ks, rel_pos=rel_pos, backend="cpu_fused")
    torch.testing.assert_close(
        SF.local_attention2d(q, k, v, kernel_size=ks, rel_pos=rel_pos),
        local_attention2d_reference(q, k, v, kernel_size=ks, rel_pos=rel_pos),
    )


def test_build_failure_is_caught_and_logged(monkeypatch, caplog):
    monkeypatch.setattr(cpu_fused, "_EXT", None)
    monkeypatch.setattr(cpu_fused, "_EXT_ERROR", None)
    monkeypatch.setenv("SASA_DISABLE_CPU_EXT", "1")
    with caplog.at_level(logging.WARNING, logger="sasa.functional"):
        assert cpu_fused.load_extension() is None
    assert "SASA_DISABLE_CPU_EXT" in cpu_fused.extension_error()
    assert "falls back" in caplog.text


def test_cpu_fused_rejects_non_cpu_tensors():
    q, k, v, rel_pos = (t.to("meta") for t in _small()[:4])
    ks = 3
    assert "needs CPU tensors" in cpu_fused.why_not(q, k, v, ks, rel_pos)


# ----------------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cuda_case(case, requires_grad):
    q, k, v, rel_pos, ks = _make(case, torch.float32, requires_grad=False)
    tensors = [None if t is None else t.cuda().requires_grad_(requires_grad) for t in (q, k, v, rel_pos)]
    return (*tensors, ks)


@cuda
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3], CASES[5]], ids=_case_id)
def test_flex_matches_reference(case):
    q, k, v, rel_pos, ks = _cuda_case(case, requires_grad=True)
    why = dict(SF.explain_backend(q, k, v, kernel_size=ks, rel_pos=rel_pos))["flex"]
    if why is not None:
        pytest.skip(f"flex cannot run: {why}")
    grad_out = torch.randn(*q.shape[:4], v.shape[-1], device="cuda")
    ref = _values_and_grads("reference", q, k, v, rel_pos, ks, grad_out)
    got = _values_and_grads("flex", q, k, v, rel_pos, ks, grad_out)
    for a, b in zip([got[0], *got[1]], [ref[0], *ref[1]]):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)


@cuda
def test_auto_on_cuda_is_not_a_cpu_backend():
    q, k, v, rel_pos, ks = _cuda_case(CASES[0], requires_grad=False)
    chosen = select_backend(q, k, v, kernel_size=ks, rel_pos=rel_pos, backend="auto")
    assert chosen.name != "cpu_fused"
    assert "needs CPU tensors" in cpu_fused.why_not(q, k, v, ks, rel_pos)


@cuda
@pytest.mark.parametrize("backend", ["flex", "natten", "chunked", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
def test_item1_cuda_large_logits_equal_to_float64(backend, dtype):
    """The CUDA backends keep float32 logits too: logits ~1e4 give the float64 reference's output."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, 6, 7, 16, generator=gen, dtype=torch.float64) * s for s in (30.0, 30.0, 1.0))
    rel = None if backend == "natten" else torch.randn(2, 5, 5, 16, generator=gen, dtype=torch.float64) * 30.0
    q, k, v, rel = (None if t is None else t.to(dtype) for t in (q, k, v, rel))
    args = [None if t is None else t.cuda() for t in (q, k, v, rel)]
    if backend not in SF.registered_backends() or dict(SF.explain_backend(*args[:3], kernel_size=5, rel_pos=args[3]))[backend]:
        pytest.skip(f"{backend} cannot run here")
    out = SF.local_attention2d(*args[:3], kernel_size=5, rel_pos=args[3], backend=backend).cpu()
    assert torch.isfinite(out).all()
    expected = local_attention2d_reference(q.double(), k.double(), v.double(), kernel_size=5,
                                           rel_pos=None if rel is None else rel.double())
    assert out.dtype == dtype
    tol = dict(atol=1e-3, rtol=1e-3) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out.double(), expected, **tol)


def test_flex_block_mask_cached_under_inference_mode_is_usable_in_training():
    """The cached window mask is built from normal tensors even when the first call runs under inference_mode
    (an evaluation), else the next training step fails: 'Inference tensors cannot be saved for backward'."""
    from sasa.functional import flex

    flex._window_block_mask.cache_clear()
    try:
        with torch.inference_mode():
            mask = flex._window_block_mask(5, 6, 3, "cpu")
        tensors = [t for t in mask.as_tuple() if isinstance(t, torch.Tensor)]
        assert tensors and not any(t.is_inference() for t in tensors)
    finally:
        flex._window_block_mask.cache_clear()


def test_flex_compiles_with_a_recompile_limit_that_fits_a_network(monkeypatch):
    """Past dynamo's default limit (8 graphs) flex_attention silently runs unfused (41 GB for one 56x56 layer on
    an H200): every call outside the user's own torch.compile raises the limit, and restores it."""
    from sasa.functional import flex

    seen, before = [], torch._dynamo.config.recompile_limit
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: lambda *a, **k: seen.append(torch._dynamo.config.recompile_limit))
    flex._compiled_flex_attention.cache_clear()
    try:
        flex._compiled_flex_attention()()
    finally:
        flex._compiled_flex_attention.cache_clear()
    assert seen == [max(flex.FLEX_RECOMPILE_LIMIT, before)] and torch._dynamo.config.recompile_limit == before
