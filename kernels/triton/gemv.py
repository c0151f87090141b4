"""Decode-sized GEMM (a GEMV with a few rows): out = x @ weight^T (+ bias), fp32 accumulation,
with the ops around a decode step's linears optionally fused in.

    x:      [M, K] with M <= 32 (a decode batch, or the LM head's last-token rows)
    weight: [N, K] row-major, as torch.nn.Linear stores it
    out:    [M, N] in its own dtype (the fp32 sum is cast once, at the store)

At these sizes the op is a stream over the weight: M * N * K multiply-adds on
N * K weights read once. One program owns BLOCK_N output columns, i.e. BLOCK_N
contiguous rows of W, and walks them along K in [BLOCK_N, BLOCK_K] tiles (16-byte
vector loads along K); all M rows of x are applied to each tile while it sits in
registers, so W crosses HBM exactly once whatever M is. No split-K: each output
is one program's sum, so results are deterministic and there is no reduce launch.

Fused variants (each removes a launch and an [M, *] round trip from a bs=1 step):

    norm_weight=w   RMSNorm of x folded in: x_m * rsqrt(mean(x_m^2) + eps) * (w + offset).
                    rsqrt(...) is one scalar per row, so it factors out of the dot
                    product: the K loop sums W * (x * (w + offset)) and x^2 side by side
                    and the row's sums are scaled once at the end. No prologue pass, no
                    normalized copy of x (which also skips the unfused path's rounding of
                    the normalized x to x's dtype: the fused result is the more exact).
    swiglu=True     weight is gate_up [2F, K] (gate rows, then up rows); out [M, F] =
                    silu(x @ W[:F]^T) * (x @ W[F:]^T). A program owns gate rows n and up
                    rows F + n, so the [M, 2F] intermediate is never written.
    residual=r      out = r + x @ W^T, added in fp32 before the one rounding. `out` may
                    be `r` itself (the residual stream updated in place): each program
                    reads its own columns of r before it writes the same columns of out.

The block sizes come from `gemv_config(N, K, M)`, a fixed function of the shape
(never autotuned: the cuda target captures CUDA graphs, and capture must not
compile or benchmark). triton_ops routes decode rows here (RUSTINFER_TRITON_GEMV);
bench/gpu_gemv.py measures it against cuBLAS. Measured there on an H200, 2026-11-26, at
1B's bs=1 shapes: a fused variant costs 0.4-4 us over the plain GEMV (norm on the LM head
the most: every one of its 8016 programs redoes the sum of squares) and beats the unfused
kernels it replaces (Triton rms_norm / swiglu + cuBLAS, torch.add) 1.05-1.48x.

Reference twins: rustinfer.kernels.torch_ops.linear (torch.mm / addmm) and the
interpreter's float32 `linear` (then rms_norm / swiglu / add for the fused variants).
Like torch.mm, `out` must not overlap `x`: every program reads all of x while the
others write their columns.
"""
from __future__ import annotations

import os
import torch
import triton
import triton.language as tl

from . import INTERPRET, check_rows, launch, next_pow2, pdl_capable
from .gemv_config import FMA_ROWS, MAX_ROWS, GemvConfig, gemv_config  # noqa: F401 (re-exported)

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Programmatic dependent launch (Hopper+): a GEMV may be scheduled while the kernel before
# it drains, and waits (gdc_wait) for its results only then. On by default on compute
# capability 9+ since measured on an H200, 2026-11-27 (bench/gpu_gemv.py, the 1B bs=1 step,
# one run: graph replay / overlapped TPOT, ms): no PDL 0.860 / 0.877; GEMVs with PDL
# 0.841 / 0.859; with decode attention and its merge launched early too
# (decode_attention.PDL) 0.808 / 0.829; the engine's step 0.876 -> 0.827. (Before the engine
# overlapped its steps, the host's launch of a graph with programmatic edges cost about
# what the overlap saved: 2026-11-26, 4 runs.) RUSTINFER_GEMV_PDL=0 turns it off. Never
# under the interpreter (it has no griddepcontrol / prefetch). Measured and dropped
# (2026-11-27): each program loading its first weight tile before gdc_wait (replay 1.122
# ms); letting dependents launch right after gdc_wait rather than after the K loop, for
# grids of <= 400 / 512 programs (0.822 / 0.859 ms against 0.809 in the same run).
PDL = os.environ.get("RUSTINFER_GEMV_PDL", "1") == "1"
# With PDL, also prefetch the weight rows into L2 before waiting: measured slower
# (1.019-1.106 vs 0.90 ms replayed: a line evicted before its load is read twice), so
# opt-in, RUSTINFER_GEMV_PDL_PREFETCH=1. Two narrower L2 prefetches were measured on an
# H200 on 2026-11-27 and dropped (bench/RESULTS.md): only the o projection, while decode
# attention leaves HBM idle (1B bs=1 replay 0.817-0.824 vs 0.814 ms), and each GEMV
# prefetching the next GEMV's first 4-16 MB after its K loop (0.863-0.998).
PDL_PREFETCH = os.environ.get("RUSTINFER_GEMV_PDL_PREFETCH", "0") == "1"


def pdl_default(device: torch.device) -> bool:
    """Whether a GEMV on `device` launches with programmatic dependent launch by default."""
    return PDL and pdl_capable(device)


_LINE_BYTES = 128                      # one L2 prefetch per cache line


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, nw_ptr, res_ptr, out_ptr, M, N, K, stride_x, stride_w,
                 stride_res, stride_out, eps, offset,
                 pos_ptr, slot_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 STAGES: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_NORM: tl.constexpr,
                 SWIGLU: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ROPE: tl.constexpr = False,
                 HEADS: tl.constexpr = 1, KV_HEADS: tl.constexpr = 1,
                 HEAD_DIM: tl.constexpr = 2, PDL: tl.constexpr = False,
                 PREFETCH: tl.constexpr = False, LINES: tl.constexpr = 1,
                 LINE_ELEMS: tl.constexpr = 64, DOT: tl.constexpr = False,
                 DOT_FP32: tl.constexpr = False):
    # x:    [M, K], row stride stride_x, columns contiguous; M <= BLOCK_M <= 32 (DOT:
    #       BLOCK_M >= 16; operands cast to fp32 when DOT_FP32, i.e. interpreting)
    # w:    [N, K] row stride stride_w, columns contiguous (nn.Linear's layout); SWIGLU:
    #       [2N, K], gate rows then up rows; ROPE: the fused qkv [2N, K], N = its row pairs
    # b:    w's rows (HAS_BIAS only); nw: [K] norm weight (HAS_NORM only)
    # res:  [M, N], row stride stride_res (HAS_RESIDUAL only); out: [M, N], row stride
    #       stride_out (ROPE: the rotated q, [M, HEADS * HEAD_DIM])
    # ROPE: pos, slot [M] int64; cos, sin [max_pos, HEAD_DIM // 2] fp32; kc, vc the paged
    #       caches as [slots, KV_HEADS * HEAD_DIM]
    # grid: (cdiv(N, BLOCK_N),): program p computes outputs p*BLOCK_N ... (p+1)*BLOCK_N - 1
    #       = sum over K tiles of x[:, tile] @ w[its rows, tile]^T, then the epilogue
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    rows = tl.arange(0, BLOCK_M)
    # Which W rows an output reads: row n, or a pair (row, row + pair) whose two sums the
    # epilogue combines: SWIGLU gate row n with up row N + n; ROPE the two halves of one
    # head's rotation, dims j and j + HEAD_DIM / 2 (BLOCK_N divides HEAD_DIM / 2, so one
    # program's outputs all belong to one head).
    HALF: tl.constexpr = HEAD_DIM // 2
    PAIRED: tl.constexpr = SWIGLU or ROPE
    row = n
    pair = N
    if ROPE:
        row = (n // HALF) * HEAD_DIM + n % HALF
        pair = HALF
    if PDL and PREFETCH:
        # Launched with programmatic dependent launch: pull this program's weight rows into
        # L2 (LINES cache lines of LINE_ELEMS per row; a masked-off line prefetches row 0's
        # first) while the previous kernel may still be running. Weights are never written
        # by a step; everything else is read or written only after gdc_wait (below).
        line = tl.arange(0, LINES) * LINE_ELEMS
        pmask = nmask[:, None] & (line < K)[None, :]
        ptrs = tl.where(pmask, w_ptr + row[:, None] * stride_w + line[None, :], w_ptr)
        tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // dummy $0", "=r,l", [ptrs],
                                  dtype=tl.int32, is_pure=False, pack=1)
        if PAIRED:
            ptrs = tl.where(pmask, w_ptr + (row + pair)[:, None] * stride_w + line[None, :],
                            w_ptr)
            tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // dummy $0", "=r,l", [ptrs],
                                      dtype=tl.int32, is_pure=False, pack=1)
    if PDL:
        # returns once the previous kernel has finished and its writes are visible
        tl.extra.cuda.gdc_wait()
    # The accumulators are out's tile transposed, [BLOCK_N, BLOCK_M]: a row's partial sums
    # come out of the K reduction along W's rows, so they add in without a layout change.
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)       # PAIRED: the first row of each pair
    acc2 = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)      # PAIRED only: the second row
    sumsq = tl.zeros([BLOCK_M], tl.float32)              # HAS_NORM only: sum of x_m^2
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < K
        wmask = nmask[:, None] & kmask[None, :]
        w = tl.load(w_ptr + row[:, None] * stride_w + k[None, :], mask=wmask, other=0.0)
        if PAIRED:
            w2 = tl.load(w_ptr + (row + pair)[:, None] * stride_w + k[None, :], mask=wmask,
                         other=0.0)
        if HAS_NORM:
            # the norm's per-column scale (w + offset) goes into x; its per-row scale
            # rsqrt(mean(x^2) + eps) needs all of K, so it is applied after the loop
            gamma = tl.load(nw_ptr + k, mask=kmask, other=0.0).to(tl.float32) + offset
        if DOT:
            # all rows at once on tensor cores, W in its own dtype, x (scaled by the norm's
            # gamma) rounded to it as the unfused path rounds the normalized x
            xt = tl.load(x_ptr + rows[:, None] * stride_x + k[None, :],
                         mask=(rows < M)[:, None] & kmask[None, :], other=0.0).to(tl.float32)
            if HAS_NORM:
                sumsq += tl.sum(xt * xt, axis=1)
                xt = xt * gamma[None, :]
            if DOT_FP32:
                acc += tl.dot(w.to(tl.float32), tl.trans(xt), input_precision="ieee")
                if PAIRED:
                    acc2 += tl.dot(w2.to(tl.float32), tl.trans(xt), input_precision="ieee")
            else:
                xo = xt.to(w.dtype)
                acc += tl.dot(w, tl.trans(xo), input_precision="ieee")    # [BLOCK_N, BLOCK_M]
                if PAIRED:
                    acc2 += tl.dot(w2, tl.trans(xo), input_precision="ieee")
        else:
            wf = w.to(tl.float32)
            if PAIRED:
                w2f = w2.to(tl.float32)
            # x is tiny (L1/L2 resident): one row at a time against the tile in registers
            for m in tl.static_range(BLOCK_M):
                xm = tl.load(x_ptr + m * stride_x + k, mask=kmask & (m < M), other=0.0)
                xm = xm.to(tl.float32)
                if HAS_NORM:
                    sumsq = tl.where(rows == m, sumsq + tl.sum(xm * xm, axis=0), sumsq)
                    xm = xm * gamma
                part = tl.sum(wf * xm[None, :], axis=1)                     # [BLOCK_N]
                acc = tl.where(rows[None, :] == m, acc + part[:, None], acc)
                if PAIRED:
                    part2 = tl.sum(w2f * xm[None, :], axis=1)
                    acc2 = tl.where(rows[None, :] == m, acc2 + part2[:, None], acc2)
    if PDL:
        # Only now let the next kernel's programs be scheduled: signalled at the start
        # (measured on an H200), their waiting programs took SM slots from this GEMV's
        # later waves and the bs=1 step got slower (1.019 vs 0.898 ms replayed).
        tl.extra.cuda.gdc_launch_dependents()
    # Epilogue, in fp32, in the unfused order: norm scale, bias, activation, residual add.
    if HAS_NORM:
        # rows >= M summed nothing: their rstd is junk (1/sqrt(eps)), but they are never stored
        rstd = 1.0 / tl.sqrt(sumsq / K + eps)
        acc *= rstd[None, :]
        if PAIRED:
            acc2 *= rstd[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + row, mask=nmask, other=0.0).to(tl.float32)[:, None]
        if PAIRED:
            acc2 += tl.load(b_ptr + row + pair, mask=nmask, other=0.0).to(tl.float32)[:, None]
    if SWIGLU:
        acc = acc * tl.sigmoid(acc) * acc2                                  # silu(gate) * up
    omask = nmask[:, None] & (rows[None, :] < M)
    if ROPE:
        # This program's head: a q head (rotate, store into out), a k head (rotate, store
        # into the cache at the row's slot) or a v head (store into the cache as is).
        # Rotate-half: [x1 cos - x2 sin, x2 cos + x1 sin] at each row's position.
        head = (tl.program_id(0) * BLOCK_N) // HALF
        j = n % HALF
        pos = tl.load(pos_ptr + rows, mask=rows < M, other=0).to(tl.int64)
        cos = tl.load(cos_ptr + pos[None, :] * HALF + j[:, None], mask=omask, other=1.0)
        sin = tl.load(sin_ptr + pos[None, :] * HALF + j[:, None], mask=omask, other=0.0)
        is_v = head >= HEADS + KV_HEADS
        y1 = tl.where(is_v, acc, acc * cos - acc2 * sin)
        y2 = tl.where(is_v, acc2, acc2 * cos + acc * sin)
        col = (head * HEAD_DIM + j)[:, None]
        q_ty = out_ptr.dtype.element_ty
        qmask = omask & (head < HEADS)
        tl.store(out_ptr + rows[None, :] * stride_out + col, y1.to(q_ty), mask=qmask)
        tl.store(out_ptr + rows[None, :] * stride_out + col + HALF, y2.to(q_ty), mask=qmask)
        # a padded row (slot < 0) writes nothing to the cache
        slot = tl.load(slot_ptr + rows, mask=rows < M, other=-1).to(tl.int64)
        kv_head = tl.where(is_v, head - HEADS - KV_HEADS, head - HEADS)
        at = slot[None, :] * (KV_HEADS * HEAD_DIM) + (kv_head * HEAD_DIM + j)[:, None]
        cmask = omask & (head >= HEADS) & (slot >= 0)[None, :]
        kmask = cmask & (head < HEADS + KV_HEADS)
        cache_ty = kc_ptr.dtype.element_ty
        tl.store(kc_ptr + at, y1.to(cache_ty), mask=kmask)
        tl.store(kc_ptr + at + HALF, y2.to(cache_ty), mask=kmask)
        tl.store(vc_ptr + at, y1.to(vc_ptr.dtype.element_ty), mask=cmask & is_v)
        tl.store(vc_ptr + at + HALF, y2.to(vc_ptr.dtype.element_ty), mask=cmask & is_v)
    else:
        if HAS_RESIDUAL:
            # read before the store below: out may be res itself (this program's columns)
            acc += tl.load(res_ptr + rows[None, :] * stride_res + n[:, None], mask=omask,
                           other=0.0).to(tl.float32)
        tl.store(out_ptr + rows[None, :] * stride_out + n[:, None],
                 acc.to(out_ptr.dtype.element_ty), mask=omask)


def _check_inputs(x, weight, bias, norm_weight) -> tuple[int, int, int]:
    """(M, K, W rows) after the checks every variant shares."""
    if x.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"gemv: expected x [M, K] and weight [N, K], got {list(x.shape)} "
                         f"and {list(weight.shape)}")
    m, k = x.shape
    rows_w = weight.shape[0]
    check_rows("gemv x", x, k)
    check_rows("gemv weight", weight, k, rows_w)
    if x.dtype not in _DTYPES or weight.dtype != x.dtype:
        raise ValueError(f"gemv: x and weight must share one of {_DTYPES}, got {x.dtype} "
                         f"and {weight.dtype}")
    if bias is not None and (bias.shape != (rows_w,) or bias.stride(0) != 1
                             or bias.dtype not in _DTYPES):
        raise ValueError(f"gemv bias: expected contiguous float [{rows_w}], got "
                         f"{list(bias.shape)} {bias.dtype}")
    if norm_weight is not None and (norm_weight.shape != (k,) or norm_weight.stride(0) != 1
                                    or norm_weight.dtype not in _DTYPES):
        raise ValueError(f"gemv norm_weight: expected contiguous float [{k}], got "
                         f"{list(norm_weight.shape)} {norm_weight.dtype}")
    return m, k, rows_w


def _launch(cfg: GemvConfig, n: int, x, weight, out, bias, norm_weight, residual, eps, offset,
            pdl, *, swiglu=False, rope=None) -> None:
    """The one kernel launch behind gemv and gemv_rope_kv (n: the outputs the grid covers)."""
    m, k = x.shape
    pdl = pdl_default(x.device) if pdl is None else pdl
    prefetch = pdl and PDL_PREFETCH
    line_elems = _LINE_BYTES // weight.element_size()
    res = out if residual is None else residual
    r = rope or {}
    launch(_gemv_kernel, (triton.cdiv(n, cfg.block_n),), x, weight,
           weight if bias is None else bias, weight if norm_weight is None else norm_weight,
           res, out, m, n, k, x.stride(0), weight.stride(0), res.stride(0), out.stride(0),
           float(eps), float(offset), r.get("positions", x), r.get("slots", x),
           r.get("cos", x), r.get("sin", x), r.get("k_cache", x), r.get("v_cache", x),
           BLOCK_M=max(16, next_pow2(m)) if cfg.dot else next_pow2(m),
           BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
           STAGES=cfg.num_stages, HAS_BIAS=bias is not None, HAS_NORM=norm_weight is not None,
           SWIGLU=bool(swiglu), HAS_RESIDUAL=residual is not None, ROPE=rope is not None,
           HEADS=r.get("heads", 1), KV_HEADS=r.get("kv_heads", 1),
           HEAD_DIM=r.get("head_dim", 2), num_warps=cfg.num_warps, launch_pdl=pdl, PDL=pdl,
           PREFETCH=prefetch, LINES=next_pow2(triton.cdiv(k, line_elems)) if prefetch else 1,
           LINE_ELEMS=line_elems, DOT=cfg.dot, DOT_FP32=INTERPRET)


def gemv(x, weight, out, bias=None, *, norm_weight=None, eps: float = 0.0,
         offset: float = 0.0, swiglu: bool = False, residual=None,
         config: GemvConfig | None = None, pdl: bool | None = None) -> None:
    """out = x @ weight^T (+ bias) for x with <= 32 rows, with optional fusions:

    norm_weight [K]: x is RMS-normalized first, x * rsqrt(mean(x^2) + eps) *
        (norm_weight + offset) per row (fp32 math; x itself is not modified);
    swiglu: weight (and bias) hold gate then up, [2F, K] ([2F]); out [M, F] =
        silu(gate) * up;
    residual [M, N]: out = residual + ...; out may be residual itself (in place).
    swiglu and residual do not combine. `config` overrides gemv_config and `pdl` the
    module's PDL switch (benchmarks and tests; plans always take the defaults)."""
    m, k, rows_w = _check_inputs(x, weight, bias, norm_weight)
    if swiglu:
        if residual is not None:
            raise ValueError("gemv: swiglu and residual do not combine (no caller needs it)")
        if rows_w % 2:
            raise ValueError(f"gemv weight: swiglu expects gate_up [2F, {k}] (gate rows, then "
                             f"up rows), got {list(weight.shape)} (an odd row count)")
    n = rows_w // 2 if swiglu else rows_w             # out's width (the grid's dimension)
    check_rows("gemv out", out, n, m)
    if out.dtype not in _DTYPES:
        raise ValueError(f"gemv out: dtype {out.dtype} is not one of {_DTYPES}")
    if residual is not None:
        check_rows("gemv residual", residual, n, m)
        if residual.dtype != out.dtype:
            raise ValueError(f"gemv residual: dtype {residual.dtype} differs from out's "
                             f"{out.dtype}")
    if m == 0:
        return
    _launch(config or gemv_config(n, k, m, swiglu=swiglu), n, x, weight, out, bias,
            norm_weight, residual, eps, offset, pdl, swiglu=swiglu)


def gemv_rope_kv(x, weight, q_out, positions, slots, cos, sin, k_cache, v_cache, *,
                 heads: int, kv_heads: int, head_dim: int, bias=None, norm_weight=None,
                 eps: float = 0.0, offset: float = 0.0, config: GemvConfig | None = None,
                 pdl: bool | None = None) -> None:
    """The attention's input projection with RoPE and the KV-cache append in its epilogue:

        qkv = x @ weight^T (+ bias)  (x RMS-normalized first when norm_weight is given)
        q_out = rope(q);  k_cache[slot] = rope(k);  v_cache[slot] = v     per row

    weight is the fused [(heads + 2 kv_heads) * head_dim, K] (q rows, k rows, v rows);
    rotate-half RoPE over the whole head_dim with the [max_pos, head_dim / 2] cos / sin
    tables (rope_kv.py's, Llama 3 scaling included); a row whose slot is negative (a
    padded row) writes nothing to the cache. One program owns BLOCK_N dims j of one head
    and their partners j + head_dim / 2, so the qkv product is never written."""
    m, k, rows_w = _check_inputs(x, weight, bias, norm_weight)
    if head_dim % 2 or rows_w != (heads + 2 * kv_heads) * head_dim:
        raise ValueError(f"gemv_rope_kv weight: expected [(heads {heads} + 2 x kv_heads "
                         f"{kv_heads}) x head_dim {head_dim}, {k}] (an even head_dim), got "
                         f"{list(weight.shape)}")
    check_rows("gemv_rope_kv q_out", q_out, heads * head_dim, m)
    if q_out.dtype not in _DTYPES:
        raise ValueError(f"gemv_rope_kv q_out: dtype {q_out.dtype} is not one of {_DTYPES}")
    for name, t in (("cos", cos), ("sin", sin)):
        if (t.dim() != 2 or t.shape[1] != head_dim // 2 or not t.is_contiguous()
                or t.dtype != torch.float32):
            raise ValueError(f"gemv_rope_kv {name} table: expected contiguous float32 "
                             f"[max_pos, {head_dim // 2}], got {list(t.shape)} {t.dtype}")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.dim() != 4 or tuple(c.shape[2:]) != (kv_heads, head_dim) or not c.is_contiguous():
            raise ValueError(f"gemv_rope_kv {name}: expected contiguous [blocks, block_size, "
                             f"{kv_heads}, {head_dim}], got {list(c.shape)}")
    if (positions.shape != (m,) or slots.shape != (m,) or positions.dtype != torch.int64
            or slots.dtype != torch.int64):
        raise ValueError(f"gemv_rope_kv: positions {list(positions.shape)} {positions.dtype} "
                         f"/ slots {list(slots.shape)} {slots.dtype} must be int64 [{m}]")
    if m == 0:
        return
    half, pairs = head_dim // 2, rows_w // 2
    # The unfused qkv's tile, halved into pairs (as swiglu); BLOCK_N must divide half so
    # that a program's dims all belong to one head.
    cfg = config or gemv_config(pairs, k, m, swiglu=True)
    block_n = min(cfg.block_n, next_pow2(half))
    while half % block_n:
        block_n //= 2
    if cfg.dot and block_n < 16:            # tl.dot needs 16 rows: the FMA loop instead
        cfg = cfg._replace(dot=False, num_stages=1)
    rope = dict(positions=positions, slots=slots, cos=cos, sin=sin, k_cache=k_cache,
                v_cache=v_cache, heads=heads, kv_heads=kv_heads, head_dim=head_dim)
    _launch(cfg._replace(block_n=block_n), pairs, x, weight, q_out, bias, norm_weight, None,
            eps, offset, pdl, rope=rope)
