"""Decode-sized GEMM (a GEMV with a few rows): out = x @ weight^T (+ bias), fp32 accumulation.

    x:      [M, K] with M <= 16 (a decode batch, or the LM head's last-token rows)
    weight: [N, K] row-major, as torch.nn.Linear stores it
    out:    [M, N] in its own dtype (the fp32 sum is cast once, at the store)

At these sizes the op is a stream over the weight: M * N * K multiply-adds on
N * K weights read once. One program owns BLOCK_N output columns, i.e. BLOCK_N
contiguous rows of W, and walks them along K in [BLOCK_N, BLOCK_K] tiles (16-byte
vector loads along K); all M rows of x are applied to each tile while it sits in
registers, so W crosses HBM exactly once whatever M is. No split-K: each output
is one program's sum, so results are deterministic and there is no reduce launch.

The block sizes come from `gemv_config(N, K, M)`, a fixed function of the shape
(never autotuned: the cuda target captures CUDA graphs, and capture must not
compile or benchmark). Opt-in from triton_ops.linear (RUSTINFER_TRITON_GEMV=1)
until a GPU run has measured it against cuBLAS (bench/gpu_gemv.py).

Reference twins: rustinfer.kernels.torch_ops.linear (torch.mm / addmm) and the
interpreter's float32 `linear`. Like torch.mm, `out` must not overlap `x`: every
program reads all of x while the others write their columns.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import check_rows, launch, next_pow2

MAX_ROWS = 16
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# NOTE: not measured yet. 512 programs is ~4 per SM on a 132-SM H100/H200: enough
# resident warps to keep loads in flight. A tile of 8192 weights (16 KB of bf16) per
# iteration keeps each program's loads wide without spilling registers.
_MIN_PROGRAMS = 512
_TILE = 8192


class GemvConfig(NamedTuple):
    block_n: int      # output columns (= W rows) per program
    block_k: int      # K elements per W tile
    num_warps: int
    num_stages: int   # software-pipelined K tiles in flight (1: no pipelining)


def gemv_config(n: int, k: int, m: int) -> GemvConfig:
    """Block sizes for out[m, n] = x[m, k] @ W[n, k]^T: a deterministic function of the shape.

    BLOCK_N shrinks (16 -> 1) until there are >= 512 programs (Llama-3.2-1B's N = 2048
    gets 4 rows per program, its 16384 and 128256 get 16); BLOCK_K then fills a tile of
    8192 weights (halved from 8 rows of x up: each row adds a product per weight); more
    K tiles than one are pipelined two deep. No block exceeds the next power of 2 of
    its dimension."""
    if not 1 <= m <= MAX_ROWS:
        raise ValueError(f"gemv: {m} rows; the GEMV serves 1..{MAX_ROWS} (use torch.mm)")
    block_n = 16
    while block_n > 1 and triton.cdiv(n, block_n) < _MIN_PROGRAMS:
        block_n //= 2
    block_n = min(block_n, next_pow2(n))
    tile = _TILE if m <= 4 else _TILE // 2
    block_k = min(max(16, tile // block_n), next_pow2(k))
    num_warps = 8 if block_n * block_k >= _TILE else 4
    num_stages = 2 if k > block_k else 1
    return GemvConfig(block_n, block_k, num_warps, num_stages)


@triton.jit
def _kernel(x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, stride_x, stride_w, stride_out,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
            STAGES: tl.constexpr, HAS_BIAS: tl.constexpr):
    # x:    [M, K], row stride stride_x, columns contiguous; M <= BLOCK_M <= 16
    # w:    [N, K], row stride stride_w, columns contiguous (nn.Linear's layout)
    # b:    [N] (HAS_BIAS only); out: [M, N], row stride stride_out
    # grid: (cdiv(N, BLOCK_N),): program p computes out[:, p*BLOCK_N : (p+1)*BLOCK_N]
    #       = sum over K tiles of x[:, tile] @ w[p*BLOCK_N : ..., tile]^T
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    rows = tl.arange(0, BLOCK_M)
    # The accumulator is out's tile transposed, [BLOCK_N, BLOCK_M]: a row's partial sums
    # come out of the K reduction along W's rows, so they add in without a layout change.
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < K
        w = tl.load(w_ptr + n[:, None] * stride_w + k[None, :],
                    mask=nmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
        # x is tiny (<= 16 rows, L1/L2 resident): one row at a time against the tile in registers
        for m in tl.static_range(BLOCK_M):
            xm = tl.load(x_ptr + m * stride_x + k, mask=kmask & (m < M), other=0.0)
            part = tl.sum(w * xm.to(tl.float32)[None, :], axis=1)            # [BLOCK_N]
            acc = tl.where(rows[None, :] == m, acc + part[:, None], acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + n, mask=nmask, other=0.0).to(tl.float32)[:, None]
    tl.store(out_ptr + rows[None, :] * stride_out + n[:, None], acc.to(out_ptr.dtype.element_ty),
             mask=nmask[:, None] & (rows[None, :] < M))


def gemv(x, weight, out, bias=None, *, config: GemvConfig | None = None) -> None:
    """out = x @ weight^T (+ bias) for x with <= 16 rows. `config` overrides gemv_config
    (benchmarks and tests; plans always take the default)."""
    if x.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"gemv: expected x [M, K] and weight [N, K], got {list(x.shape)} "
                         f"and {list(weight.shape)}")
    m, k = x.shape
    n = weight.shape[0]
    check_rows("gemv x", x, k)
    check_rows("gemv weight", weight, k, n)
    check_rows("gemv out", out, n, m)
    if x.dtype not in _DTYPES or weight.dtype != x.dtype:
        raise ValueError(f"gemv: x and weight must share one of {_DTYPES}, got {x.dtype} "
                         f"and {weight.dtype}")
    if out.dtype not in _DTYPES:
        raise ValueError(f"gemv out: dtype {out.dtype} is not one of {_DTYPES}")
    if bias is not None and (bias.shape != (n,) or bias.stride(0) != 1
                             or bias.dtype not in _DTYPES):
        raise ValueError(f"gemv bias: expected contiguous float [{n}], got {list(bias.shape)} "
                         f"{bias.dtype}")
    if m == 0:
        return
    cfg = config or gemv_config(n, k, m)
    launch(_kernel, (triton.cdiv(n, cfg.block_n),), x, weight,
           weight if bias is None else bias, out, m, n, k, x.stride(0), weight.stride(0),
           out.stride(0), BLOCK_M=next_pow2(m), BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
           STAGES=cfg.num_stages, HAS_BIAS=bias is not None, num_warps=cfg.num_warps)
