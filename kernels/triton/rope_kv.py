"""Fused RoPE for q and k, with k and v written into the paged KV cache.

Per token t at position p (rotate-half layout, Llama / HF "non-interleaved"):
    x1, x2 = x[:D/2], x[D/2:]
    rot(x) = [x1 * cos[p] - x2 * sin[p],  x2 * cos[p] + x1 * sin[p]]
    out[t] = rot(q[t]);  k_cache[slot[t]] = rot(k[t]);  v_cache[slot[t]] = v[t]
A token whose slot is negative (a padded row) writes nothing to the cache.

cos/sin are [max_pos, D/2] float32 tables built once from
rustinfer.kernels.rope_tables (Llama 3 scaling included), so every target rotates
by the same numbers. Reference twins: torch_ops.rope_kv_write / rope and
compiler.fused_ops.rope_kv_write.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import check_contiguous, check_rows, launch, next_pow2


@triton.jit
def _rope_kv_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, slot_ptr, cos_ptr, sin_ptr, out_ptr, kc_ptr,
                    vc_ptr, stride_q, stride_k, stride_v, stride_out,
                    HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                    H_PAD: tl.constexpr, KVH_PAD: tl.constexpr, HALF_PAD: tl.constexpr,
                    WRITE_KV: tl.constexpr):
    # q:   [T, HEADS * HEAD_DIM], row stride stride_q (a column view of the fused qkv buffer)
    # k,v: [T, KV_HEADS * HEAD_DIM], row strides stride_k / stride_v
    # pos, slot: [T] int64; cos, sin: [max_pos, HEAD_DIM // 2] fp32, contiguous
    # out: [T, HEADS * HEAD_DIM] rotated q, row stride stride_out
    # kc, vc: [blocks, block_size, KV_HEADS, HEAD_DIM] contiguous = [slots, KV_HEADS * HEAD_DIM]
    # grid: (T,): one token, all its heads, per program
    HALF: tl.constexpr = HEAD_DIM // 2
    tok = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    d = tl.arange(0, HALF_PAD)
    dmask = d < HALF
    cos = tl.load(cos_ptr + pos * HALF + d, mask=dmask, other=0.0)[None, :]
    sin = tl.load(sin_ptr + pos * HALF + d, mask=dmask, other=0.0)[None, :]

    h = tl.arange(0, H_PAD)[:, None]
    col = h * HEAD_DIM + d[None, :]
    m = (h < HEADS) & dmask[None, :]
    x1 = tl.load(q_ptr + tok * stride_q + col, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(q_ptr + tok * stride_q + col + HALF, mask=m, other=0.0).to(tl.float32)
    out_ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + tok * stride_out + col, (x1 * cos - x2 * sin).to(out_ty), mask=m)
    tl.store(out_ptr + tok * stride_out + col + HALF, (x2 * cos + x1 * sin).to(out_ty), mask=m)

    if WRITE_KV:
        slot = tl.load(slot_ptr + tok).to(tl.int64)
        kh = tl.arange(0, KVH_PAD)[:, None]
        kcol = kh * HEAD_DIM + d[None, :]
        km = (kh < KV_HEADS) & dmask[None, :] & (slot >= 0)
        k1 = tl.load(k_ptr + tok * stride_k + kcol, mask=km, other=0.0).to(tl.float32)
        k2 = tl.load(k_ptr + tok * stride_k + kcol + HALF, mask=km, other=0.0).to(tl.float32)
        v1 = tl.load(v_ptr + tok * stride_v + kcol, mask=km, other=0.0)
        v2 = tl.load(v_ptr + tok * stride_v + kcol + HALF, mask=km, other=0.0)
        base = slot * (KV_HEADS * HEAD_DIM) + kcol
        cache_ty = kc_ptr.dtype.element_ty
        tl.store(kc_ptr + base, (k1 * cos - k2 * sin).to(cache_ty), mask=km)
        tl.store(kc_ptr + base + HALF, (k2 * cos + k1 * sin).to(cache_ty), mask=km)
        tl.store(vc_ptr + base, v1.to(vc_ptr.dtype.element_ty), mask=km)
        tl.store(vc_ptr + base + HALF, v2.to(vc_ptr.dtype.element_ty), mask=km)


def _check_table(cos, sin, head_dim):
    for name, t in (("cos", cos), ("sin", sin)):
        check_contiguous(f"rope {name} table", t)
        if t.dim() != 2 or t.shape[1] != head_dim // 2:
            raise ValueError(f"rope {name} table: expected [max_pos, {head_dim // 2}], "
                             f"got {list(t.shape)}")


def rope_kv_write(q, k, v, positions, slots, cos, sin, out, k_cache, v_cache, *, heads: int,
                  kv_heads: int, head_dim: int) -> None:
    t = q.shape[0]
    check_rows("rope q", q, heads * head_dim, t)
    check_rows("rope k", k, kv_heads * head_dim, t)
    check_rows("rope v", v, kv_heads * head_dim, t)
    check_rows("rope out", out, heads * head_dim, t)
    _check_table(cos, sin, head_dim)
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_contiguous(name, c)
        if c.dim() != 4 or tuple(c.shape[2:]) != (kv_heads, head_dim):
            raise ValueError(f"{name}: expected [blocks, block_size, {kv_heads}, {head_dim}], "
                             f"got {list(c.shape)}")
    if positions.shape != (t,) or slots.shape != (t,):
        raise ValueError(f"rope: positions {list(positions.shape)} / slots {list(slots.shape)} "
                         f"must be [{t}]")
    launch(_rope_kv_kernel, (t,), q, k, v, positions, slots, cos, sin, out, k_cache, v_cache,
           q.stride(0), k.stride(0), v.stride(0), out.stride(0),
           HEADS=heads, KV_HEADS=kv_heads, HEAD_DIM=head_dim, H_PAD=next_pow2(heads),
           KVH_PAD=next_pow2(kv_heads), HALF_PAD=next_pow2(head_dim // 2), WRITE_KV=True)


def rope(x, positions, cos, sin, out, *, heads: int, head_dim: int) -> None:
    """Rotation only (the unfused `rope` op): x -> out."""
    t = x.shape[0]
    check_rows("rope x", x, heads * head_dim, t)
    check_rows("rope out", out, heads * head_dim, t)
    _check_table(cos, sin, head_dim)
    launch(_rope_kv_kernel, (t,), x, x, x, positions, positions, cos, sin, out, out, out,
           x.stride(0), x.stride(0), x.stride(0), out.stride(0),
           HEADS=heads, KV_HEADS=1, HEAD_DIM=head_dim, H_PAD=next_pow2(heads), KVH_PAD=1,
           HALF_PAD=next_pow2(head_dim // 2), WRITE_KV=False)
