"""The decode GEMV's block sizes (kernels/triton/gemv.py): a fixed function of the shape.

Never autotuned: the cuda target captures CUDA graphs, and capture must not compile or
benchmark. bench/gpu_gemv.py (single calls) and bench/gpu_gemv_graph.py (in a graph)
time the choices and their neighbours.
"""
from __future__ import annotations

from typing import NamedTuple

import triton

from . import next_pow2

MAX_ROWS = 32
# Up to FMA_ROWS rows, each row of x is applied to the weight tile with FMAs (the measured
# bs=1 path; at 8 and 16 rows it was 2-5x slower than cuBLAS); from FMA_ROWS + 1 rows on
# tensor cores instead, tl.dot of the [BLOCK_N, BLOCK_K] tile with x's [BLOCK_K, 16..32]
# (DOT configs). Plans send more than one row here only with RUSTINFER_TRITON_GEMV_ROWS
# (kernels/triton_ops.py): measured slower than cuBLAS at 8-32 rows (bench/RESULTS.md).
FMA_ROWS = 4
# NOTE: measured on an H200, 2026-11-26 (bench/gpu_gemv.py --sweep, Llama-3.2-1B, rows=1):
# these defaults beat cuBLAS 1.02-1.23x per linear; num_stages=1 was as fast or faster than
# 2 for every shape (gate_up 25.8 vs 26.8 us, down 16.0 vs 17.5, lm_head 129.3 vs 134.0).
# 512 programs is ~4 per SM on a 132-SM H100/H200: enough resident warps to keep loads in
# flight. A tile of 8192 weights (16 KB of bf16) per iteration keeps each program's loads
# wide without spilling registers.
_MIN_PROGRAMS = 512
_DOT_MIN_PROGRAMS = 256
_TILE = 8192


class GemvConfig(NamedTuple):
    block_n: int      # output columns per program (swiglu: gate rows, and as many up rows)
    block_k: int      # K elements per W tile
    num_warps: int
    num_stages: int   # software-pipelined K tiles in flight (1: no pipelining)
    dot: bool = False  # tensor cores (tl.dot) instead of a per-row FMA loop


def gemv_config(n: int, k: int, m: int, *, swiglu: bool = False) -> GemvConfig:
    """Block sizes for out[m, n] = x[m, k] @ W[n, k]^T: a deterministic function of the shape.

    BLOCK_N shrinks (16 -> 1) until there are >= 512 programs (Llama-3.2-1B's N = 2048
    gets 4 rows per program, its 16384 and 128256 get 16); BLOCK_K then fills a tile of
    8192 weights (halved from 8 rows of x up: each row adds a product per weight). No
    block exceeds the next power of 2 of its dimension. No software pipelining
    (num_stages=1): measured as fast or faster than 2 on an H200 (see the NOTE above).

    swiglu: `n` is F, the output width, and each program reads BLOCK_N gate rows and
    BLOCK_N up rows (gemv_rope_kv: dims j and j + head_dim / 2). The blocks are chosen as
    for the unfused [2F, K] weight, then BLOCK_K is halved: a tile still holds 8192
    weights, as 2 x BLOCK_N rows of BLOCK_K / 2, and the grid has half the unfused
    GEMV's programs, each with twice the K steps. NOTE measured on an H200, 2026-11-26
    (bench/gpu_gemv_graph.py, 16 launches in a CUDA graph): 1B's gate_up+norm+swiglu
    18.2 us with 16 + 16 rows x 256 K against 19.6-20.1 with 8 + 8 rows x 512 (the
    unfused tile halved by rows, this function's rule before); qkv+norm+rope 6.7 us with
    4 + 4 x 1024 against 8.6 with 2 + 2 x 2048."""
    if not 1 <= m <= MAX_ROWS:
        raise ValueError(f"gemv: {m} rows; the GEMV serves 1..{MAX_ROWS} (use torch.mm)")
    if m > FMA_ROWS:
        return _dot_config(n, k, swiglu)
    rows = 2 * n if swiglu else n          # W rows the grid covers
    block_n = 16
    while block_n > 1 and triton.cdiv(rows, block_n) < _MIN_PROGRAMS:
        block_n //= 2
    block_n = min(block_n, next_pow2(rows))
    tile = _TILE if m <= 4 else _TILE // 2
    block_k = min(max(16, tile // block_n), next_pow2(k))
    num_warps = 8 if block_n * block_k >= _TILE else 4
    if swiglu:
        block_n = min(block_n, next_pow2(n))              # per half: no all-masked rows
        block_k = max(min(16, block_k), block_k // 2)      # not below 16 (or K's pow2)
    return GemvConfig(block_n, block_k, num_warps, 1)


def _dot_config(n: int, k: int, swiglu: bool) -> GemvConfig:
    """More than FMA_ROWS rows, on tensor cores: tiles of >= 16 W rows (tl.dot's minimum),
    halved from 64 until the grid has >= 256 programs (2 per SM on an H100 / H200), 4
    warps, 3 tiles in flight. K in steps of 128, or of 256 where the rows stop at 16 (N
    too small for 256 programs): each program then has more of W to stream. NOTE measured
    on an H200, 2026-11-27 (bench/gpu_gemv.py --rows 32 --sweep, single calls, us): 1B's
    qkv 13.4 -> 11.5, o 12.6 -> 10.0, down 36.4 -> 26.7 with K steps of 256 (cuBLAS 10.6,
    9.8, 19.5); gate_up (64 rows a tile) 26.5 with 128, 28.2 with 256 (cuBLAS 27.2)."""
    rows = 2 * n if swiglu else n
    block_n = 64
    while block_n > 16 and triton.cdiv(rows, block_n) < _DOT_MIN_PROGRAMS:
        block_n //= 2
    block_k = min(128 if block_n > 16 else 256, max(16, next_pow2(k)))
    if swiglu:
        block_n = max(16, block_n // 2)   # per half: the unfused program count
    return GemvConfig(block_n, block_k, 4, 3, dot=True)
