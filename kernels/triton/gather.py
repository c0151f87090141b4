"""Row gather: out[i] = table[ids[i]]. The embedding lookup and the logits-row gather.

Reference twins: rustinfer.kernels.torch_ops.embedding / gather_rows (index_select).
The copy keeps the table's values exactly (a cast only if out's dtype differs).
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import check_rows, launch, next_pow2

_MAX_BLOCK = 1024


@triton.jit
def _gather_kernel(ids_ptr, table_ptr, out_ptr, n_cols, stride_table, stride_out,
                   BLOCK: tl.constexpr):
    # ids:   [R] int64 row indices into table (read on device: capture-safe)
    # table: [N, n_cols], row stride stride_table; out: [R, n_cols], row stride stride_out
    # grid:  (R, cdiv(n_cols, BLOCK))
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    src = tl.load(ids_ptr + row).to(tl.int64)
    vals = tl.load(table_ptr + src * stride_table + cols, mask=mask)
    tl.store(out_ptr + row.to(tl.int64) * stride_out + cols, vals.to(out_ptr.dtype.element_ty),
             mask=mask)


def gather_rows(table, ids, out) -> None:
    r, n = out.shape
    if ids.dim() != 1 or ids.shape[0] != r or ids.stride(0) != 1:
        raise ValueError(f"gather ids: expected contiguous [{r}], got {list(ids.shape)}")
    check_rows("gather table", table, n)
    check_rows("gather out", out, n, r)
    block = min(_MAX_BLOCK, next_pow2(n))
    launch(_gather_kernel, (r, triton.cdiv(n, block)), ids, table, out, n, table.stride(0),
           out.stride(0), BLOCK=block)
