"""RMSNorm, and residual add + RMSNorm fused: one program per row, fp32 math.

    rms_norm(x)          out = x / sqrt(mean(x^2) + eps) * (weight + offset)
                         (heads > 1: per head, each [D] slice of a [T, H*D] row: QK-norm)
    add_rms_norm(a, b)   h = a + b (rounded to the storage dtype, as an unfused add
                         would leave it); out = rms_norm(h); res = h when wanted

Reference twins: rustinfer.kernels.torch_ops.rms_norm / add_rms_norm and the
interpreter's float32 `rms_norm`. A row is read whole before anything is
written, so `out` or `res` may alias `a` (the plan reuses arena bytes).
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import check_rows, launch, next_pow2, num_warps_for


@triton.jit
def _rms_norm_kernel(a_ptr, b_ptr, w_ptr, out_ptr, res_ptr, n_cols, stride_a, stride_b, stride_out,
                     stride_res, eps, offset,
                     BLOCK: tl.constexpr, HAS_B: tl.constexpr, STORE_RES: tl.constexpr):
    # a, b:  [T, heads * n_cols], row strides stride_a / stride_b, columns contiguous
    # w:     [n_cols]; normalized: each n_cols slice (heads = 1: the whole row)
    # out:   [T, heads * n_cols] normed; res: the sum a + b (STORE_RES only; heads = 1)
    # grid:  (T, heads): BLOCK >= n_cols holds one slice
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * n_cols + tl.arange(0, BLOCK)
    mask = cols < (tl.program_id(1) + 1) * n_cols
    h = tl.load(a_ptr + row * stride_a + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        h += tl.load(b_ptr + row * stride_b + cols, mask=mask, other=0.0).to(tl.float32)
        # Round the sum to the residual stream's dtype first: the next layer adds onto the
        # stored (rounded) value, so the norm must see that same value.
        h = h.to(res_ptr.dtype.element_ty).to(tl.float32)
        if STORE_RES:
            tl.store(res_ptr + row * stride_res + cols, h.to(res_ptr.dtype.element_ty), mask=mask)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols - tl.program_id(1) * n_cols, mask=mask, other=0.0)
    w = w.to(tl.float32) + offset
    tl.store(out_ptr + row * stride_out + cols, (h * rstd * w).to(out_ptr.dtype.element_ty),
             mask=mask)


def rms_norm(x, weight, out, *, eps: float, offset: float = 0.0, heads: int = 1) -> None:
    _launch(x, None, weight, out, None, eps, offset, heads)


def add_rms_norm(a, b, weight, out, residual=None, *, eps: float, offset: float = 0.0) -> None:
    """out = rms_norm(a + b); residual = a + b when given (else the sum is not stored)."""
    _launch(a, b, weight, out, residual, eps, offset)


def _launch(a, b, weight, out, res, eps, offset, heads=1) -> None:
    t, width = a.shape
    n = width // heads
    check_rows("rms_norm input", a, width)
    check_rows("rms_norm out", out, width, t)
    if b is not None:
        check_rows("add_rms_norm second input", b, n, t)
    if res is not None:
        check_rows("add_rms_norm residual", res, n, t)
    if weight.shape != (n,) or weight.stride(0) != 1:
        raise ValueError(f"rms_norm weight: expected contiguous [{n}], got {list(weight.shape)}")
    block = next_pow2(n)
    launch(_rms_norm_kernel, (t, heads), a, a if b is None else b, weight, out,
           out if res is None else res,
           n, a.stride(0), (a if b is None else b).stride(0), out.stride(0),
           (out if res is None else res).stride(0), float(eps), float(offset),
           BLOCK=block, HAS_B=b is not None, STORE_RES=res is not None,
           num_warps=num_warps_for(block))
