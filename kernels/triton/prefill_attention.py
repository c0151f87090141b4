"""Varlen causal flash attention with GQA over the paged KV cache (prefill and chunked prefill).

Sequence b owns query rows query_start[b]:query_start[b+1] (n rows), the last n
of its context_lens[b] tokens. rope_kv_write has already stored this step's k/v
in the cache, so every key (a cached prefix from earlier steps or a shared
prefix-cache block, and the new tokens) is read from the paged cache through
block_table[b]. Query i (0-based within the sequence's rows) sees keys
0 .. ctx - n + i. Any mix of prompt chunks and single decode tokens works; a
sequence with no rows (a padded entry) launches programs that return at once.

Reference twins: torch_ops.cached_attention (prefill branch) and the
interpreter's `paged_attention`.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import INTERPRET, check_contiguous, check_rows, launch, next_pow2

LOG2E = 1.4426950408889634
# NOTE: 64 x 64 tiles with 4 warps: the FlashAttention-2 Triton tutorial's choice for
# head_dim 64-128 on Hopper; not autotuned (autotune during capture would sync).
BLOCK_M = 64
BLOCK_N = 64


@triton.jit
def _prefill_attention_kernel(q_ptr, kc_ptr, vc_ptr, bt_ptr, qs_ptr, ctx_ptr, out_ptr,
                              stride_q, stride_out, stride_bt, qk_scale,
                              KV_HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                              BLOCK_SIZE: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr):
    # q:      [T, HEADS * HEAD_DIM], row stride stride_q; HEADS = KV_HEADS * GROUP
    # kc, vc: [blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM] contiguous
    # bt:     [B, max_blocks], row stride stride_bt; qs: [B + 1] row offsets; ctx: [B]
    # out:    [T, HEADS * HEAD_DIM], row stride stride_out
    # grid:   (cdiv(max rows of a sequence, BLOCK_M), B, HEADS)
    tile = tl.program_id(0)
    seq = tl.program_id(1).to(tl.int64)
    head = tl.program_id(2)
    q0 = tl.load(qs_ptr + seq).to(tl.int64)
    n_rows = tl.load(qs_ptr + seq + 1).to(tl.int64) - q0
    if tile * BLOCK_M >= n_rows:
        return
    ctx = tl.load(ctx_ptr + seq).to(tl.int64)
    prefix = ctx - n_rows                                   # tokens cached before this step
    kvh = head // GROUP

    i = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    imask = i < n_rows
    d = tl.arange(0, D_PAD)
    dmask = d < HEAD_DIM
    q = tl.load(q_ptr + (q0 + i)[:, None] * stride_q + head * HEAD_DIM + d[None, :],
                mask=imask[:, None] & dmask[None, :], other=0.0).to(tl.float32) * qk_scale
    if DOT_FP32:
        q_op = q
    else:
        q_op = q.to(kc_ptr.dtype.element_ty)
    q_pos = prefix + i                                      # each query's own position

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    hi = tl.minimum(ctx, prefix + (tile + 1) * BLOCK_M)     # the tile's last query sees < hi
    for n0 in range(0, hi, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < hi
        block = tl.load(bt_ptr + seq * stride_bt + n // BLOCK_SIZE, mask=nmask, other=0)
        row = (block.to(tl.int64) * BLOCK_SIZE + n % BLOCK_SIZE) * KV_HEADS + kvh
        kv_off = row[:, None] * HEAD_DIM + d[None, :]
        kv_mask = nmask[:, None] & dmask[None, :]
        k = tl.load(kc_ptr + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(vc_ptr + kv_off, mask=kv_mask, other=0.0)
        if DOT_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q_op, tl.trans(k), input_precision="ieee")             # [BLOCK_M, BLOCK_N]
        s = tl.where(nmask[None, :] & (n[None, :] <= q_pos[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # Rows past the sequence's end see no key: keep their m at a finite value so
        # exp2(-inf - m) stays 0 instead of NaN; they are never stored.
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new

    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(out_ptr + (q0 + i)[:, None] * stride_out + head * HEAD_DIM + d[None, :],
             o.to(out_ptr.dtype.element_ty), mask=imask[:, None] & dmask[None, :])


def prefill_attention(q, k_cache, v_cache, block_table, query_start, context_lens, out, *,
                      heads: int, kv_heads: int, head_dim: int, scale: float,
                      num_seqs: int, max_rows: int) -> None:
    """max_rows: the most query rows any one sequence has in this step (a host int)."""
    t = q.shape[0]
    check_rows("prefill q", q, heads * head_dim, t)
    check_rows("prefill out", out, heads * head_dim, t)
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_contiguous(name, c)
        if c.dim() != 4 or tuple(c.shape[2:]) != (kv_heads, head_dim):
            raise ValueError(f"{name}: expected [blocks, block_size, {kv_heads}, {head_dim}], "
                             f"got {list(c.shape)}")
    if block_table.dim() != 2 or block_table.shape[0] < num_seqs or block_table.stride(1) != 1:
        raise ValueError(f"block table: expected [>= {num_seqs}, blocks], "
                         f"got {list(block_table.shape)}")
    if query_start.shape[0] < num_seqs + 1 or heads % kv_heads:
        raise ValueError(f"query_start [{query_start.shape[0]}] for {num_seqs} sequences, "
                         f"heads {heads} / kv_heads {kv_heads}")
    launch(_prefill_attention_kernel, (triton.cdiv(max_rows, BLOCK_M), num_seqs, heads), q,
           k_cache, v_cache,
           block_table, query_start, context_lens, out, q.stride(0), out.stride(0),
           block_table.stride(0), float(scale) * LOG2E,
           KV_HEADS=kv_heads, GROUP=heads // kv_heads, HEAD_DIM=head_dim,
           BLOCK_SIZE=k_cache.shape[1], D_PAD=max(16, next_pow2(head_dim)),
           BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, DOT_FP32=INTERPRET)
