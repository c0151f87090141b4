"""The op interface generated plans call, implemented with torch on CPU.

Every function writes into `out` (views into the plan's arena or pinned
buffers) and takes scratch space from a `Workspace` sized once at load time,
so a decode step allocates no tensor storage (tests/test_plan_no_alloc.py
proves it). Prefill attention is the exception: it calls torch's
scaled_dot_product_attention, which allocates its own temporaries.

The same names will be implemented by the Triton kernels; a plan does not care
which module it was handed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .rope_tables import cos_sin

_softmax_out = torch.ops.aten._softmax.out
_gelu_out = torch.ops.aten.gelu.out


class Workspace:
    """Scratch buffers for one executor, allocated once for the largest step."""

    def __init__(self, *, max_tokens: int, max_context: int, max_heads: int, max_kv_width: int,
                 max_head_dim: int, block_size: int, dtype=torch.float32):
        blocks = math.ceil(max_context / block_size)
        self.rstd = torch.empty(max_tokens * max_heads, 1, dtype=dtype)   # per-head norms too
        self.cos = torch.empty(max_tokens, max_head_dim, dtype=dtype)
        self.sin = torch.empty(max_tokens, max_head_dim, dtype=dtype)
        self.k_rot = torch.empty(max_tokens * max_kv_width, dtype=dtype)
        self.keys = torch.empty(blocks * block_size * max_kv_width, dtype=dtype)
        self.values = torch.empty(blocks * block_size * max_kv_width, dtype=dtype)
        self.scores = torch.empty(max_heads * max_context, dtype=dtype)
        self.probs = torch.empty(max_heads * max_context, dtype=dtype)
        self.max_context = max_context
        self._rope_tables: dict = {}

    def rope_table(self, head_dim: int, theta: float, scaling) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [max_context, head_dim] for one rope configuration, built once."""
        key = (head_dim, theta, repr(scaling))
        if key not in self._rope_tables:
            pos = torch.arange(self.max_context, dtype=torch.float32)
            self._rope_tables[key] = cos_sin(pos, head_dim, theta, scaling)
        return self._rope_tables[key]


def embedding(ids, table, *, out):
    torch.index_select(table, 0, ids, out=out)


def linear(x, weight, bias=None, *, out):
    if bias is None:
        torch.mm(x, weight.t(), out=out)
    else:
        torch.addmm(bias, x, weight.t(), out=out)


def rms_norm(x, weight, *, out, eps, offset=0.0, heads=1, ws):
    if heads != 1:               # per head: [T, H*D] as [T, H, D] (x may be a split view)
        x, out = x.unflatten(-1, (heads, -1)), out.view(out.shape[0], heads, -1)
    r = ws.rstd[: x.shape[:-1].numel()].view(*x.shape[:-1], 1)
    torch.linalg.vector_norm(x, dim=-1, keepdim=True, out=r)    # sqrt(sum x^2)
    r.square_().div_(x.shape[-1]).add_(eps).rsqrt_()              # 1 / sqrt(mean x^2 + eps)
    torch.mul(x, r, out=out)
    if offset == 0.0:
        out.mul_(weight)
    elif offset == 1.0:
        out.addcmul_(out, weight)                                 # out * (1 + weight)
    else:
        out.mul_(weight + offset)


def add_rms_norm(a, b, weight, *, out, eps, offset=0.0, ws):
    """out = (normed, residual), or just normed when nothing reads the residual sum."""
    if isinstance(out, tuple):
        normed, residual = out
        torch.add(a, b, out=residual)
        rms_norm(residual, weight, out=normed, eps=eps, offset=offset, ws=ws)
    else:
        torch.add(a, b, out=out)                  # the sum, normalized in place
        rms_norm(out, weight, out=out, eps=eps, offset=offset, ws=ws)


def linear_add(x, weight, residual, *, out):
    """out = residual + x @ weight^T (in place when the plan gives out residual's bytes)."""
    if residual.shape != out.shape:        # addmm would broadcast a wrong one silently
        raise ValueError(f"linear_add: residual {list(residual.shape)} must be out's shape "
                         f"{list(out.shape)}")
    if out.data_ptr() == residual.data_ptr() and out.stride() == residual.stride():
        out.addmm_(x, weight.t())
    else:
        torch.addmm(residual, x, weight.t(), out=out)


def _check_act(act) -> None:
    """rms_norm_linear's activations (both op interfaces check them the same way)."""
    if act not in (None, "swiglu"):
        raise ValueError(f"rms_norm_linear: act must be None or 'swiglu', got {act!r}")


def rms_norm_linear(x, norm_weight, weight, bias=None, *, out, eps, offset=0.0, act=None, ws):
    """out = act(rms_norm(x) @ weight^T + bias). Only the cuda target's plans use it (its
    fuse_norm_linear pass); this twin, for interface parity and tests, allocates its
    intermediates instead of planning them."""
    _check_act(act)
    normed = torch.empty_like(x)
    rms_norm(x, norm_weight, out=normed, eps=eps, offset=offset, ws=ws)
    if act is None:
        linear(normed, weight, bias, out=out)
        return
    gate_up = torch.empty(x.shape[0], weight.shape[0], dtype=out.dtype, device=out.device)
    linear(normed, weight, bias, out=gate_up)
    swiglu(gate_up, out=out)


def rms_norm_linear_rope_kv(x, norm_weight, weight, positions, k_cache, v_cache, *, out, eps,
                            offset=0.0, heads, kv_heads, head_dim, theta, scaling=None, step,
                            ws):
    """rms_norm_linear of the fused qkv, then rope_kv_write (out = rotated q); like
    rms_norm_linear, only cuda plans use it, and this twin allocates the qkv product."""
    qkv = torch.empty(x.shape[0], weight.shape[0], dtype=out.dtype, device=out.device)
    rms_norm_linear(x, norm_weight, weight, out=qkv, eps=eps, offset=offset, ws=ws)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    rope_kv_write(q, k, v, positions, k_cache, v_cache, out=out, heads=heads,
                  kv_heads=kv_heads, head_dim=head_dim, theta=theta, scaling=scaling,
                  step=step, ws=ws)


def add(a, b, *, out):
    torch.add(a, b, out=out)


def mul(a, b, *, out):
    torch.mul(a, b, out=out)


def silu(x, *, out):
    torch.sigmoid(x, out=out)
    out.mul_(x)


def gelu(x, *, out, approximate="none"):
    _gelu_out(x, approximate=approximate, out=out)


def scale(x, *, out, factor):
    torch.mul(x, factor, out=out)


def softcap(x, *, out, cap):
    torch.div(x, cap, out=out)
    out.tanh_().mul_(cap)


def geglu(gate_up, *, out, approximate="none"):
    ffn = out.shape[-1]
    _gelu_out(gate_up[:, :ffn], approximate=approximate, out=out)
    out.mul_(gate_up[:, ffn:])                                    # gelu(gate) * up


def swiglu(gate_up, *, out):
    ffn = out.shape[-1]
    gate, up = gate_up[:, :ffn], gate_up[:, ffn:]
    torch.sigmoid(gate, out=out)
    out.mul_(gate).mul_(up)                                       # silu(gate) * up


def gather_rows(x, rows, *, out):
    torch.index_select(x, 0, rows, out=out)


def _rotate(x, out, heads, head_dim, cos, sin):
    """out = x * cos + rotate_half(x) * sin, per head, without temporaries.
    cos/sin may be narrower than head_dim (partial rotary): the rest is copied."""
    rd = cos.shape[-1]
    half = rd // 2
    x3 = x.reshape(x.shape[0], heads, head_dim) if x.is_contiguous() else \
        x.unflatten(-1, (heads, head_dim))
    o3 = out.view(out.shape[0], heads, head_dim)
    if rd < head_dim:
        o3[..., rd:].copy_(x3[..., rd:])
        x3, o3 = x3[..., :rd], o3[..., :rd]
    c, s = cos[:, None, :], sin[:, None, :]
    torch.mul(x3, c, out=o3)
    o3[..., :half].addcmul_(x3[..., half:], s[..., :half], value=-1.0)
    o3[..., half:].addcmul_(x3[..., :half], s[..., half:])


def _cos_sin(positions, head_dim, theta, scaling, ws):
    table_cos, table_sin = ws.rope_table(head_dim, theta, scaling)
    t = positions.shape[0]
    cos, sin = ws.cos[:t, :head_dim], ws.sin[:t, :head_dim]
    torch.index_select(table_cos, 0, positions, out=cos)
    torch.index_select(table_sin, 0, positions, out=sin)
    return cos, sin


def rope(x, positions, *, out, heads, head_dim, theta, scaling=None, rotary_dim=None, ws):
    cos, sin = _cos_sin(positions, rotary_dim or head_dim, theta, scaling, ws)
    _rotate(x, out, heads, head_dim, cos, sin)


def rope_kv_write(q, k, v, positions, k_cache, v_cache, *, out, heads, kv_heads, head_dim,
                  theta, scaling=None, rotary_dim=None, step, ws):
    """Rotate q into `out`; rotate k and store it, with v, at the step's cache slots."""
    cos, sin = _cos_sin(positions, rotary_dim or head_dim, theta, scaling, ws)
    _rotate(q, out, heads, head_dim, cos, sin)
    t = k.shape[0]
    k_rot = ws.k_rot[: t * kv_heads * head_dim].view(t, kv_heads * head_dim)
    _rotate(k, k_rot, kv_heads, head_dim, cos, sin)
    _write_kv(k_rot, v, k_cache, v_cache, step, kv_heads, head_dim)


def _write_kv(k, v, k_cache, v_cache, step, kv_heads, head_dim):
    t = k.shape[0]
    k_cache.view(-1, kv_heads, head_dim).index_copy_(0, step.slot_mapping,
                                                     k.reshape(t, kv_heads, head_dim))
    v_cache.view(-1, kv_heads, head_dim).index_copy_(0, step.slot_mapping,
                                                     v.reshape(t, kv_heads, head_dim))


def attention(q, k, v, k_cache, v_cache, *, out, heads, kv_heads, head_dim, scale=None,
              window=0, softcap=0.0, step, ws):
    """Unfused form: append k/v to the cache, then attend (k arrives already rotated)."""
    _write_kv(k.contiguous(), v.contiguous(), k_cache, v_cache, step, kv_heads, head_dim)
    cached_attention(q, k_cache, v_cache, out=out, heads=heads, kv_heads=kv_heads,
                     head_dim=head_dim, scale=scale, window=window, softcap=softcap,
                     step=step, ws=ws)


def cached_attention(q, k_cache, v_cache, *, out, heads, kv_heads, head_dim, scale=None,
                     window=0, softcap=0.0, step, ws):
    """Causal GQA attention of each sequence's new queries over its cached keys;
    window > 0: each query sees its last `window` positions; softcap > 0: tanh-capped scores."""
    scale = head_dim ** -0.5 if scale is None else scale
    group = heads // kv_heads
    bs = step.block_size
    per_block = bs * kv_heads * head_dim
    for b in range(step.num_seqs):
        lo, hi = step.query_start[b], step.query_start[b + 1]
        if hi == lo:
            continue
        ctx = step.context_lens[b]
        n_blocks = -(-ctx // bs)
        table = step.block_table_tensor[b, :n_blocks]
        keys = ws.keys[: n_blocks * per_block].view(n_blocks, bs, kv_heads, head_dim)
        vals = ws.values[: n_blocks * per_block].view(n_blocks, bs, kv_heads, head_dim)
        torch.index_select(k_cache, 0, table, out=keys)
        torch.index_select(v_cache, 0, table, out=vals)
        keys = keys.view(n_blocks * bs, kv_heads, head_dim)[:ctx]     # [ctx, kvh, d]
        vals = vals.view(n_blocks * bs, kv_heads, head_dim)[:ctx]
        if hi - lo == 1:
            if window and ctx > window:            # the one query sees the last `window` keys
                keys, vals = keys[ctx - window:], vals[ctx - window:]
            _decode_one(q[lo], keys, vals, out[lo], kv_heads, group, head_dim, keys.shape[0],
                        scale, softcap, ws)
        elif softcap:
            _prefill_eager(q[lo:hi], keys, vals, out[lo:hi], heads, kv_heads, head_dim, ctx,
                           scale, window, softcap)
        else:
            _prefill(q[lo:hi], keys, vals, out[lo:hi], heads, kv_heads, head_dim, ctx, scale,
                     window)


def _decode_one(q, keys, vals, out, kv_heads, group, head_dim, ctx, scale, softcap, ws):
    # One query token: scores[kvh, group, ctx] = q[kvh, group, d] @ keys^T, no temporaries.
    qg = q.view(kv_heads, group, head_dim)
    scores = ws.scores[: kv_heads * group * ctx].view(kv_heads, group, ctx)
    probs = ws.probs[: kv_heads * group * ctx].view(kv_heads, group, ctx)
    torch.bmm(qg, keys.permute(1, 2, 0), out=scores)
    scores.mul_(scale)
    if softcap:
        scores.div_(softcap).tanh_().mul_(softcap)
    _softmax_out(scores, -1, False, out=probs)
    torch.bmm(probs, vals.permute(1, 0, 2), out=out.view(kv_heads, group, head_dim))


def _prefill(q, keys, vals, out, heads, kv_heads, head_dim, ctx, scale, window=0):
    # Several new tokens (a prompt or a chunk of one) that follow ctx - n cached tokens.
    n = q.shape[0]
    qh = q.reshape(n, heads, head_dim).transpose(0, 1)                  # [h, n, d]
    kh = keys.transpose(0, 1)                                          # [kvh, ctx, d]
    vh = vals.transpose(0, 1)
    q_pos = torch.arange(ctx - n, ctx)
    mask = torch.arange(ctx)[None, :] <= q_pos[:, None]                # [n, ctx]
    if window:                                                         # and within the window
        mask &= torch.arange(ctx)[None, :] > q_pos[:, None] - window
    res = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale,
                                         enable_gqa=heads != kv_heads)
    out.view(n, heads, head_dim).copy_(res.transpose(0, 1))


def _prefill_eager(q, keys, vals, out, heads, kv_heads, head_dim, ctx, scale, window, softcap):
    # SDPA cannot soft-cap scores, so this path writes attention out (prefill may allocate).
    n = q.shape[0]
    group = heads // kv_heads
    qh = q.reshape(n, heads, head_dim).transpose(0, 1)                  # [h, n, d]
    kh = keys.transpose(0, 1).repeat_interleave(group, dim=0)          # [h, ctx, d]
    vh = vals.transpose(0, 1).repeat_interleave(group, dim=0)
    scores = torch.matmul(qh, kh.transpose(1, 2)).mul_(scale)          # [h, n, ctx]
    if softcap:
        scores.div_(softcap).tanh_().mul_(softcap)
    q_pos = torch.arange(ctx - n, ctx)[:, None]
    kv_pos = torch.arange(ctx)[None, :]
    hidden = kv_pos > q_pos
    if window:
        hidden |= kv_pos <= q_pos - window
    scores.masked_fill_(hidden, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out.view(n, heads, head_dim).copy_(torch.matmul(probs, vh).transpose(0, 1))
