"""Reference interpreter: runs any stage of the IR with plain torch ops in float32.

It is the oracle for every compiler pass (the graph after a pass must compute
what the graph before it computed) and the `reference` target of the runtime.
Clarity over speed: attention loops over sequences and gathers each one's
keys from the paged cache.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from rustinfer.kernels.rope_tables import cos_sin

from .ir import Graph, Node
from .step_inputs import StepInputs

REFERENCE_OPS: dict[str, Callable] = {}


def reference(op: str):
    def wrap(fn):
        REFERENCE_OPS[op] = fn
        return fn
    return wrap


@reference("embedding")
def embedding(ids, table, *, step):
    return F.embedding(ids, table)


@reference("rms_norm")
def rms_norm(x, weight, *, eps, offset=0.0, heads=1, step):
    xs = x.unflatten(-1, (heads, -1)) if heads != 1 else x      # per-head groups
    variance = xs.pow(2).mean(-1, keepdim=True)
    return (xs * torch.rsqrt(variance + eps) * (weight + offset)).reshape(x.shape)


@reference("linear")
def linear(x, weight, bias=None, *, step):
    return F.linear(x, weight, bias)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@reference("rope")
def rope(x, positions, *, heads, head_dim, theta, scaling=None, rotary_dim=None, step):
    rd = rotary_dim or head_dim                                    # partial rotary: first rd dims
    cos, sin = cos_sin(positions, rd, theta, scaling)             # [T, rd]
    xh = x.reshape(x.shape[0], heads, head_dim)
    xr, rest = xh[..., :rd], xh[..., rd:]
    out = torch.cat((xr * cos[:, None, :] + rotate_half(xr) * sin[:, None, :], rest), dim=-1)
    return out.reshape(x.shape)


def write_kv(k, v, k_cache, v_cache, step: StepInputs, kv_heads: int, head_dim: int) -> None:
    """Store this step's k/v rows at their cache slots (the cache is [blocks, block_size, kvh, d])."""
    slots = step.slot_mapping
    k_cache.view(-1, kv_heads, head_dim)[slots] = k.view(-1, kv_heads, head_dim).to(k_cache.dtype)
    v_cache.view(-1, kv_heads, head_dim)[slots] = v.view(-1, kv_heads, head_dim).to(v_cache.dtype)


def paged_attention(q, k_cache, v_cache, step: StepInputs, *, heads, kv_heads, head_dim, scale,
                    window=0, softcap=0.0):
    """Causal GQA attention of each sequence's new queries over its cached keys
    (only the last `window` positions when window > 0; scores soft-capped when softcap > 0)."""
    dev = q.device
    out = torch.empty(q.shape[0], heads * head_dim, dtype=q.dtype, device=dev)
    group = heads // kv_heads
    flat_k = k_cache.view(-1, kv_heads, head_dim)
    flat_v = v_cache.view(-1, kv_heads, head_dim)
    bs = step.block_size
    for b in range(step.num_seqs):
        lo, hi = step.query_start[b], step.query_start[b + 1]
        if hi == lo:
            continue
        ctx = step.context_lens[b]
        table = step.block_tables[b]
        pos = torch.arange(ctx, device=dev)
        slots = torch.tensor(table, dtype=torch.int64, device=dev)[pos // bs] * bs + pos % bs
        keys = flat_k[slots].float().repeat_interleave(group, dim=1)     # [ctx, heads, d]
        vals = flat_v[slots].float().repeat_interleave(group, dim=1)
        qb = q[lo:hi].view(hi - lo, heads, head_dim)                      # [n, heads, d]
        scores = torch.einsum("nhd,chd->hnc", qb, keys) * scale           # [heads, n, ctx]
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        q_pos = torch.arange(ctx - (hi - lo), ctx, device=dev)                        # new tokens are the last n
        hidden = pos[None, :] > q_pos[:, None]                            # [n, ctx]: the future
        if window:
            hidden |= pos[None, :] <= q_pos[:, None] - window             # out of the window
        scores = scores.masked_fill(hidden[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[lo:hi] = torch.einsum("hnc,chd->nhd", probs, vals).reshape(hi - lo, heads * head_dim)
    return out


@reference("attention")
def attention(q, k, v, k_cache, v_cache, *, heads, kv_heads, head_dim, scale=None, window=0,
              softcap=0.0, step):
    write_kv(k, v, k_cache, v_cache, step, kv_heads, head_dim)
    scale = head_dim ** -0.5 if scale is None else scale
    return paged_attention(q, k_cache, v_cache, step, heads=heads, kv_heads=kv_heads,
                           head_dim=head_dim, scale=scale, window=window, softcap=softcap)


@reference("add")
def add(a, b, *, step):
    return a + b


@reference("mul")
def mul(a, b, *, step):
    return a * b


@reference("silu")
def silu(x, *, step):
    return F.silu(x)


@reference("gelu")
def gelu(x, *, approximate="none", step):
    return F.gelu(x, approximate=approximate)


@reference("scale")
def scale(x, *, factor, step):
    return x * factor


@reference("softcap")
def softcap(x, *, cap, step):
    return torch.tanh(x / cap) * cap


def run_graph(graph: Graph, weights: dict[str, torch.Tensor], caches: dict[str, torch.Tensor],
              step: StepInputs, keep: bool = False) -> dict[str, torch.Tensor]:
    """Execute the graph for one step; returns its outputs (every value with keep=True).

    `weights` maps weight value names to float32 tensors; `caches` maps cache
    value names to their persistent tensors, which attention updates in place.
    """
    env: dict[str, torch.Tensor] = {"tokens": step.token_ids, "positions": step.positions}
    if "logit_rows" in graph.inputs:
        # Added by the lm_head_last_token pass: the rows whose logits are wanted.
        # The runtime sets step.logit_rows (each sequence's last row when
        # generating); without it every row is kept, as in the unfused graph.
        rows = getattr(step, "logit_rows", None)
        env["logit_rows"] = torch.arange(step.num_tokens) if rows is None else rows
    for name in graph.inputs:
        if name not in env:
            raise KeyError(f"graph input '{name}' has no value in StepInputs")
    env.update(caches)
    for node in graph.nodes:
        args = [_lookup(env, weights, name) for name in node.inputs]
        result = _call(node, args, step)
        results = result if isinstance(result, tuple) else (result,)
        for name, value in zip(node.outputs, results):
            if name:
                env[name] = value
    if keep:
        return env
    return {name: env[name] for name in graph.outputs}


def _lookup(env, weights, name):
    if not name:
        return None
    if name in env:
        return env[name]
    return weights[name]


def _call(node: Node, args, step):
    fn = REFERENCE_OPS.get(node.op)
    if fn is None:
        raise NotImplementedError(f"the reference interpreter has no op '{node.op}'")
    return fn(*args, **node.attrs, step=step)


from . import fused_ops  # noqa: E402,F401  (registers the fused ops' references)
