"""Row-wise argmax of logits [R, V] (greedy sampling), in two short passes.

torch's argmax reduces each row in one block of threads: 37 us for one row of Llama 3's
128,256 logits on an H200 (bench/gpu_profile.py, 2026-11-26), 4% of a 1B decode step.
Here each row is cut into chunks of BLOCK logits, one program per chunk:

    _argmax_chunks_kernel  grid (R, chunks): each chunk's maximum and its first index
    _argmax_rows_kernel    grid (R,): the row's maximum over its chunks and its first index

Ties go to the lowest id, as torch.argmax's (the reference twin): a chunk keeps its
first maximal index, and the row the lowest index among the chunks that hold the maximum.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch, next_pow2

BLOCK = 2048          # logits per program: 63 programs for a row of 128,256


@triton.jit
def _argmax_chunks_kernel(x_ptr, stride_x, n_cols, pv_ptr, pi_ptr, num_chunks,
                          BLOCK: tl.constexpr):
    # x: [R, n_cols], row stride stride_x; pv / pi: [R, num_chunks] chunk max / first index
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x_ptr + row * stride_x + cols, mask=cols < n_cols,
                other=float("-inf")).to(tl.float32)
    m = tl.max(v, axis=0)
    # masked lanes (-inf) sit after every real one: a chunk of real -inf still names one
    first = tl.min(tl.where(v == m, cols, 2147483647), axis=0)
    tl.store(pv_ptr + row * num_chunks + chunk, m)
    tl.store(pi_ptr + row * num_chunks + chunk, first)


@triton.jit
def _argmax_rows_kernel(pv_ptr, pi_ptr, out_ptr, num_chunks, C_PAD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, C_PAD)
    cmask = c < num_chunks
    v = tl.load(pv_ptr + row * num_chunks + c, mask=cmask, other=float("-inf"))
    i = tl.load(pi_ptr + row * num_chunks + c, mask=cmask, other=2147483647)
    m = tl.max(v, axis=0)
    first = tl.min(tl.where(v == m, i, 2147483647), axis=0)
    tl.store(out_ptr + row, first.to(tl.int64))


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """[R] int64: the first index of each row's maximum (NaN-free rows)."""
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"argmax: expected [rows, vocab] with contiguous rows, "
                         f"got {list(x.shape)} strides {x.stride()}")
    rows, n = x.shape
    chunks = triton.cdiv(n, BLOCK)
    pv = torch.empty(rows, chunks, dtype=torch.float32, device=x.device)
    pi = torch.empty(rows, chunks, dtype=torch.int32, device=x.device)
    out = torch.empty(rows, dtype=torch.int64, device=x.device)
    launch(_argmax_chunks_kernel, (rows, chunks), x, x.stride(0), n, pv, pi, chunks,
           BLOCK=BLOCK, num_warps=8)
    launch(_argmax_rows_kernel, (rows,), pv, pi, out, chunks, C_PAD=max(16, next_pow2(chunks)))
    return out
