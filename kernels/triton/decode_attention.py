"""Paged GQA decode attention (one new token per sequence), flash-decoding style.

Sequence b's query row is row b of q; its keys are the first context_lens[b]
tokens of the paged cache, found through block_table[b] (both read on device,
so a CUDA graph replays with new lengths). Two kernels, because they are one op:

    _decode_attention_kernel  grid (B, KV_HEADS, splits): the GROUP query heads that share
                   one KV head attend to one contiguous chunk of the context, with an
                   online softmax; writes the chunk's output and log-sum-exp (base 2)
    _merge_kernel  grid (B, HEADS): out = sum_s exp2(lse_s - m) o_s / sum_s exp2(lse_s - m)

With one split, _decode_attention_kernel writes `out` itself (DIRECT) and the merge is skipped.
A row with context_len 0 (a padded row) outputs zeros.

The number of splits is chosen on the host from (batch, kv heads, SM count), never
from the lengths, so it is fixed per CUDA-graph bucket; each program computes its
chunk from the length on device. Reference twins: torch_ops.cached_attention
(decode branch) and the interpreter's `paged_attention`.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

from . import INTERPRET, check_contiguous, check_rows, launch, next_pow2, pdl_capable

LOG2E = 1.4426950408889634
# NOTE: 64 keys per tile = 4 cache blocks of 16: each tile's loads are 64 x 128 B rows.
BLOCK_N = 64
# Two warps, not four: faster at every batch (1-128) and context (512, 4096) that
# bench/gpu_attention.py timed in a graph on an H200 (2026-11-26: bs 32 at 512 tokens
# 15.0 vs 15.7 us a layer, bs 128 36.8 vs 43.1).
NUM_WARPS = 2
# Programmatic dependent launch (Hopper+; RUSTINFER_ATTENTION_PDL=0 turns it off). Both
# kernels launch early and gdc_wait before reading what the kernel before them wrote, and
# let their own dependents launch at once: at bs=1 the o projection's GEMV is then resident
# while attention still runs. Only grids of at most PDL_PROGRAMS programs (one wave of
# these small programs on an H100 / H200) launch so: waiting dependents must not take SM
# slots from a grid's later programs. Measured on an H200, 2026-11-27: 1B bs=1 (with the
# GEMVs' PDL) graph replay 0.841 -> 0.808 ms, overlapped TPOT 0.859 -> 0.829 (bench/
# gpu_gemv.py); at batch 8 and 32 (bench/gpu.py, PDL on every grid then) replay unchanged,
# 1.141 and 1.306 ms, while the step timed with the host's launch and read-back grew from
# 1.506 to 1.813 ms at batch 32.
PDL = os.environ.get("RUSTINFER_ATTENTION_PDL", "1") == "1"
PDL_PROGRAMS = 256


@triton.jit
def _decode_attention_kernel(q_ptr, kc_ptr, vc_ptr, bt_ptr, ctx_ptr, out_ptr, po_ptr, plse_ptr,
                             stride_q, stride_out, stride_bt, qk_scale, num_splits,
                             KV_HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                             BLOCK_SIZE: tl.constexpr, G_PAD: tl.constexpr, D_PAD: tl.constexpr,
                             BLOCK_N: tl.constexpr, DIRECT: tl.constexpr, DOT_FP32: tl.constexpr,
                             PDL: tl.constexpr = False):
    # q:      [B, HEADS * HEAD_DIM], row stride stride_q; HEADS = KV_HEADS * GROUP
    # kc, vc: [blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM] contiguous
    # bt:     [B, max_blocks] block table, row stride stride_bt; ctx: [B] context lengths
    # out:    [B, HEADS * HEAD_DIM] (DIRECT), row stride stride_out
    # po:     [B, HEADS, num_splits, HEAD_DIM] fp32 partial outputs; plse: [B, HEADS, num_splits]
    # qk_scale = softmax scale * log2(e): scores are in base 2 (exp2 is one instruction)
    # PDL: launched early, and lets its own dependents launch at once
    seq = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()          # q and the new token's k / v come from the GEMV
    ctx = tl.load(ctx_ptr + seq)
    chunk = tl.cdiv(tl.cdiv(ctx, num_splits), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, ctx)

    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D_PAD)
    gmask = g < GROUP
    dmask = d < HEAD_DIM
    heads = kvh * GROUP + g
    q = tl.load(q_ptr + seq * stride_q + heads[:, None] * HEAD_DIM + d[None, :],
                mask=gmask[:, None] & dmask[None, :], other=0.0).to(tl.float32) * qk_scale
    if DOT_FP32:
        q_op = q
    else:
        q_op = q.to(kc_ptr.dtype.element_ty)

    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D_PAD], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < end
        block = tl.load(bt_ptr + seq * stride_bt + n // BLOCK_SIZE, mask=nmask, other=0)
        row = (block.to(tl.int64) * BLOCK_SIZE + n % BLOCK_SIZE) * KV_HEADS + kvh
        kv_off = row[:, None] * HEAD_DIM + d[None, :]
        kv_mask = nmask[:, None] & dmask[None, :]
        k = tl.load(kc_ptr + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(vc_ptr + kv_off, mask=kv_mask, other=0.0)
        if DOT_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q_op, tl.trans(k), input_precision="ieee")           # [G_PAD, BLOCK_N]
        s = tl.where(nmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new

    empty = l_i == 0.0
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    omask = gmask[:, None] & dmask[None, :]
    if DIRECT:
        tl.store(out_ptr + seq * stride_out + heads[:, None] * HEAD_DIM + d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=omask)
    else:
        part = (seq * (KV_HEADS * GROUP) + heads) * num_splits + split      # [G_PAD]
        tl.store(po_ptr + part[:, None] * HEAD_DIM + d[None, :], o, mask=omask)
        lse = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
        tl.store(plse_ptr + part, lse, mask=gmask)


@triton.jit
def _merge_kernel(po_ptr, plse_ptr, out_ptr, stride_out, num_splits,
                  HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, S_PAD: tl.constexpr,
                  D_PAD: tl.constexpr, PDL: tl.constexpr = False):
    # po: [B, HEADS, num_splits, HEAD_DIM] fp32; plse: [B, HEADS, num_splits] fp32 (base 2)
    # out: [B, HEADS * HEAD_DIM], row stride stride_out; grid: (B, HEADS)
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()          # the partials come from the attention kernel
    s = tl.arange(0, S_PAD)
    d = tl.arange(0, D_PAD)
    smask = s < num_splits
    base = (seq * HEADS + head) * num_splits
    lse = tl.load(plse_ptr + base + s, mask=smask, other=float("-inf"))
    m = tl.max(lse, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)             # every split empty: weights all 0
    w = tl.exp2(lse - m)                                  # empty splits weigh exp2(-inf) = 0
    o = tl.load(po_ptr + (base + s)[:, None] * HEAD_DIM + d[None, :],
                mask=smask[:, None] & (d < HEAD_DIM)[None, :], other=0.0)
    total = tl.sum(w, axis=0)
    res = tl.sum(w[:, None] * o, axis=0) / tl.where(total == 0.0, 1.0, total)
    tl.store(out_ptr + seq * stride_out + head * HEAD_DIM + d, res.to(out_ptr.dtype.element_ty),
             mask=d < HEAD_DIM)


def num_splits(batch: int, kv_heads: int, max_context: int, num_sms: int) -> int:
    """Splits per (sequence, kv head): enough programs for ~2 waves over the SMs, no more
    than the longest context has key tiles. Host ints only: fixed per graph bucket."""
    want = triton.cdiv(2 * num_sms, max(1, batch * kv_heads))
    return max(1, min(want, triton.cdiv(max_context, BLOCK_N), 64))


def decode_attention(q, k_cache, v_cache, block_table, context_lens, out, partial_out,
                     partial_lse, *, heads: int, kv_heads: int, head_dim: int, scale: float,
                     splits: int, block_n: int = BLOCK_N, num_warps: int = NUM_WARPS,
                     num_stages: int | None = None, pdl: bool | None = None) -> None:
    """partial_out / partial_lse: fp32 scratch of at least B * heads * splits (* head_dim).
    block_n (keys per tile), num_warps and num_stages (the software pipeline's depth over
    the key tiles; None: Triton's default): defaults the plan uses (bench/gpu_attention.py
    sweeps them); pdl overrides the module's PDL switch (tests, benchmarks)."""
    b = q.shape[0]
    check_rows("decode q", q, heads * head_dim, b)
    check_rows("decode out", out, heads * head_dim, b)
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_contiguous(name, c)
        if c.dim() != 4 or tuple(c.shape[2:]) != (kv_heads, head_dim):
            raise ValueError(f"{name}: expected [blocks, block_size, {kv_heads}, {head_dim}], "
                             f"got {list(c.shape)}")
    if block_table.dim() != 2 or block_table.shape[0] < b or block_table.stride(1) != 1:
        raise ValueError(f"block table: expected [>= {b}, blocks] with contiguous rows, "
                         f"got {list(block_table.shape)}")
    if context_lens.shape[0] < b or heads % kv_heads:
        raise ValueError(f"context_lens [{context_lens.shape[0]}] for {b} rows, "
                         f"heads {heads} / kv_heads {kv_heads}")
    group = heads // kv_heads
    direct = splits == 1
    if not direct and (partial_out.numel() < b * heads * splits * head_dim
                       or partial_lse.numel() < b * heads * splits):
        raise ValueError("decode attention scratch too small for "
                         f"{b} rows x {heads} heads x {splits} splits")
    if pdl is None:
        pdl = PDL and pdl_capable(q.device) and b * heads <= PDL_PROGRAMS \
            and b * kv_heads * splits <= PDL_PROGRAMS
    launch(_decode_attention_kernel, (b, kv_heads, splits), q, k_cache, v_cache, block_table,
           context_lens, out,
           partial_out, partial_lse, q.stride(0), out.stride(0), block_table.stride(0),
           float(scale) * LOG2E, splits,
           KV_HEADS=kv_heads, GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=k_cache.shape[1],
           G_PAD=max(16, next_pow2(group)), D_PAD=max(16, next_pow2(head_dim)),
           BLOCK_N=block_n, DIRECT=direct, DOT_FP32=INTERPRET, num_warps=num_warps,
           num_stages=num_stages, PDL=pdl, launch_pdl=pdl)
    if not direct:
        launch(_merge_kernel, (b, heads), partial_out, partial_lse, out, out.stride(0), splits,
               HEADS=heads, HEAD_DIM=head_dim, S_PAD=max(2, next_pow2(splits)),
               D_PAD=next_pow2(head_dim), PDL=pdl, launch_pdl=pdl)
