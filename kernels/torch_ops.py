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

from .rope_tables import inv_freq

_softmax_out = torch.ops.aten._softmax.out


class Workspace:
    """Scratch buffers for one executor, allocated once for the largest step."""

    def __init__(self, *, max_tokens: int, max_context: int, max_heads: int, max_kv_width: int,
                 max_head_dim: int, block_size: int, dtype=torch.float32):
        blocks = math.ceil(max_context / block_size)
        self.rstd = torch.empty(max_tokens, 1, dtype=dtype)
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
            freqs = pos[:, None] * inv_freq(head_dim, theta, scaling)[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            self._rope_tables[key] = (emb.cos(), emb.sin())
        return self._rope_tables[key]


def embedding(ids, table, *, out):
    torch.index_select(table, 0, ids, out=out)


def linear(x, weight, bias=None, *, out):
    if bias is None:
        torch.mm(x, weight.t(), out=out)
    else:
        torch.addmm(bias, x, weight.t(), out=out)


def rms_norm(x, weight, *, out, eps, offset=0.0, ws):
    r = ws.rstd[: x.shape[0]]
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


def add(a, b, *, out):
    torch.add(a, b, out=out)


def mul(a, b, *, out):
    torch.mul(a, b, out=out)


def silu(x, *, out):
    torch.sigmoid(x, out=out)
    out.mul_(x)


def swiglu(gate_up, *, out):
    ffn = out.shape[-1]
    gate, up = gate_up[:, :ffn], gate_up[:, ffn:]
    torch.sigmoid(gate, out=out)
    out.mul_(gate).mul_(up)                                       # silu(gate) * up


def gather_rows(x, rows, *, out):
    torch.index_select(x, 0, rows, out=out)


def _rotate(x, out, heads, head_dim, cos, sin):
    """out = x * cos + rotate_half(x) * sin, per head, without temporaries."""
    half = head_dim // 2
    x3 = x.reshape(x.shape[0], heads, head_dim) if x.is_contiguous() else \
        x.unflatten(-1, (heads, head_dim))
    o3 = out.view(out.shape[0], heads, head_dim)
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


def rope(x, positions, *, out, heads, head_dim, theta, scaling=None, ws):
    cos, sin = _cos_sin(positions, head_dim, theta, scaling, ws)
    _rotate(x, out, heads, head_dim, cos, sin)


def rope_kv_write(q, k, v, positions, k_cache, v_cache, *, out, heads, kv_heads, head_dim,
                  theta, scaling=None, step, ws):
    """Rotate q into `out`; rotate k and store it, with v, at the step's cache slots."""
    cos, sin = _cos_sin(positions, head_dim, theta, scaling, ws)
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
              step, ws):
    """Unfused form: append k/v to the cache, then attend (k arrives already rotated)."""
    _write_kv(k.contiguous(), v.contiguous(), k_cache, v_cache, step, kv_heads, head_dim)
    cached_attention(q, k_cache, v_cache, out=out, heads=heads, kv_heads=kv_heads,
                     head_dim=head_dim, scale=scale, step=step, ws=ws)


def cached_attention(q, k_cache, v_cache, *, out, heads, kv_heads, head_dim, scale=None,
                     step, ws):
    """Causal GQA attention of each sequence's new queries over its cached keys."""
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
            _decode_one(q[lo], keys, vals, out[lo], kv_heads, group, head_dim, ctx, scale, ws)
        else:
            _prefill(q[lo:hi], keys, vals, out[lo:hi], heads, kv_heads, head_dim, ctx, scale)


def _decode_one(q, keys, vals, out, kv_heads, group, head_dim, ctx, scale, ws):
    # One query token: scores[kvh, group, ctx] = q[kvh, group, d] @ keys^T, no temporaries.
    qg = q.view(kv_heads, group, head_dim)
    scores = ws.scores[: kv_heads * group * ctx].view(kv_heads, group, ctx)
    probs = ws.probs[: kv_heads * group * ctx].view(kv_heads, group, ctx)
    torch.bmm(qg, keys.permute(1, 2, 0), out=scores)
    scores.mul_(scale)
    _softmax_out(scores, -1, False, out=probs)
    torch.bmm(probs, vals.permute(1, 0, 2), out=out.view(kv_heads, group, head_dim))


def _prefill(q, keys, vals, out, heads, kv_heads, head_dim, ctx, scale):
    # Several new tokens (a prompt or a chunk of one) that follow ctx - n cached tokens.
    n = q.shape[0]
    qh = q.reshape(n, heads, head_dim).transpose(0, 1)                  # [h, n, d]
    kh = keys.transpose(0, 1)                                          # [kvh, ctx, d]
    vh = vals.transpose(0, 1)
    q_pos = torch.arange(ctx - n, ctx)
    mask = torch.arange(ctx)[None, :] <= q_pos[:, None]                # [n, ctx]
    res = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale,
                                         enable_gqa=heads != kv_heads)
    out.view(n, heads, head_dim).copy_(res.transpose(0, 1))
