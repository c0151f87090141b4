"""Fused ops: introduced by compiler passes, never written in a spec.

Each is an `OpDef` (primitive=False, so the spec front end rejects it) with a
shape rule, and a float32 reference implementation in the interpreter's
`REFERENCE_OPS` built from the primitive references (rope, write_kv,
paged_attention, rms_norm), so a fused graph computes what the unfused one did.

Conventions shared with `ops.py`: activations are [T, features]; `uses_cache`
ops take this layer's (k_cache, v_cache) as their last two inputs, each
[blocks, block_size, kv_heads, head_dim]; an empty output name '' means the
output is not wanted (dead_value_removal blanks unused outputs of multi-output
nodes; kernels may skip storing it).

    op                inputs                                outputs               attrs
    split             x [T, sum(sizes)]                     one [T, s] per size   sizes (view)
    swiglu            gu [T, 2F]                            [T, F]
    geglu             gu [T, 2F]                            [T, F]                approximate
    rope_kv_write     q, k, v, positions, k_cache, v_cache  q_rot [T, H*D]        (1)
    cached_attention  q_rot, k_cache, v_cache               [T, H*D]              (2)
    add_rms_norm      a, b, weight                          (normed, a + b)       eps, offset
    gather_rows       x [T, D], rows [R] int64              [R, D]
    linear_add        x [T, K], weight [N, K], residual     residual + x @ weight^T  (3)
    rms_norm_linear   x [T, K], norm_weight [K], weight,    act(rms_norm(x) @ weight^T + bias)
                      [bias]                                eps, offset, [act]       (4)
    rms_norm_linear_rope_kv  x, norm_weight, weight [(H + 2 KVH) D, K], positions,
                      k_cache, v_cache                      q_rot [T, H*D]           (5)

    split's outputs are column blocks of x: row stride sum(sizes), not their width.
    (1) heads, kv_heads, head_dim, theta, scaling, [rotary_dim]; side effects (writes the cache)
    (2) heads, kv_heads, head_dim, scale (None: head_dim ** -0.5), [window], [softcap]
    (3) the residual stream's update: a decode-sized GEMV adds it in its epilogue
    (4) the norm folds into the GEMV; act None, or 'swiglu' (weight [2F, K], gate rows
        then up rows; output [T, F]). Both come from the cuda target's fuse_norm_linear.
    (5) rms_norm_linear of the fused qkv, split, then rope_kv_write: eps, offset and
        rope_kv_write's attributes (full rotary only); side effects (writes the cache)
    [attr]: present only when not at its default (OpDef.omit_default), as on the
    primitive op it comes from.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .interpreter import paged_attention, reference, rms_norm, rope, write_kv
from .interpreter import linear as _linear_ref
from .ops import (REQUIRED, OpDef, ShapeError, UnsupportedAttr, check_attention_extras,
                  check_rotary_dim, expect_dim, expect_rank, fmt, register)
from .ops import _linear as _linear_shape

FUSED_OPS = ("split", "swiglu", "geglu", "rope_kv_write", "cached_attention", "add_rms_norm",
             "gather_rows", "linear_add", "rms_norm_linear", "rms_norm_linear_rope_kv")
NORM_LINEAR_ACTS = (None, "swiglu")


# --- shape rules --------------------------------------------------------------

def _split(shapes, attrs):
    (x,) = shapes
    sizes = list(attrs["sizes"])
    if not sizes or any(not isinstance(s, int) or s <= 0 for s in sizes):
        raise ShapeError(f"split sizes must be positive ints, got {sizes}")
    expect_dim(f"split of {fmt(x)} into {sizes}: last dim", x[-1], sum(sizes))
    return [tuple(x[:-1]) + (s,) for s in sizes]


def _swiglu(shapes, attrs):
    (x,) = shapes
    if not isinstance(x[-1], int) or x[-1] % 2:
        raise ShapeError(f"swiglu needs an even last dim ([T, 2F] gate then up), got {fmt(x)}")
    return [tuple(x[:-1]) + (x[-1] // 2,)]


def _check_heads(what, attrs):
    h, kvh, d = attrs["heads"], attrs["kv_heads"], attrs["head_dim"]
    if kvh <= 0 or h % kvh:
        raise ShapeError(f"{what}: heads ({h}) must be a multiple of kv_heads ({kvh})")
    return h, kvh, d


def _check_caches(what, caches, kvh, d):
    for c in caches:
        expect_rank(f"{what} cache [blocks, block_size, kv_heads, head_dim]", c, 4)
        expect_dim(f"{what} cache kv_heads", c[2], kvh)
        expect_dim(f"{what} cache head_dim", c[3], d)


def _rope_kv_write(shapes, attrs):
    q, k, v, pos, *caches = shapes
    h, kvh, d = _check_heads("rope_kv_write", attrs)
    if d % 2:
        raise ShapeError(f"rope needs an even head_dim, got {d}")
    check_rotary_dim(attrs)
    expect_dim(f"rope_kv_write q width (heads {h} x head_dim {d})", q[-1], h * d)
    expect_dim(f"rope_kv_write k width (kv_heads {kvh} x head_dim {d})", k[-1], kvh * d)
    expect_dim(f"rope_kv_write v width (kv_heads {kvh} x head_dim {d})", v[-1], kvh * d)
    expect_rank("rope_kv_write positions", pos, 1)
    for what, x in (("q", q), ("k", k), ("v", v)):
        expect_dim(f"rope_kv_write {what} tokens vs positions", x[0], pos[0])
    _check_caches("rope_kv_write", caches, kvh, d)
    from rustinfer.kernels.rope_tables import check_scaling

    try:
        check_scaling(attrs.get("scaling"))
    except ValueError as err:
        raise UnsupportedAttr(str(err)) from None
    return [q]


def _cached_attention(shapes, attrs):
    q, *caches = shapes
    h, kvh, d = _check_heads("cached_attention", attrs)
    expect_dim(f"cached_attention q width (heads {h} x head_dim {d})", q[-1], h * d)
    _check_caches("cached_attention", caches, kvh, d)
    check_attention_extras(attrs)
    return [q]


def _add_rms_norm(shapes, attrs):
    a, b, w = shapes
    if tuple(a) != tuple(b):
        raise ShapeError(f"add_rms_norm operands differ in shape: {fmt(a)} vs {fmt(b)}")
    expect_rank("add_rms_norm weight", w, 1)
    expect_dim(f"add_rms_norm weight {fmt(w)} vs input {fmt(a)}, last dim", w[0], a[-1])
    return [a, a]


def _gather_rows(shapes, attrs):
    x, rows = shapes
    expect_rank("gather_rows input", x, 2)
    expect_rank("gather_rows rows", rows, 1)
    return [(rows[0], x[1])]


def _linear_add(shapes, attrs):
    x, w, residual = shapes
    (y,) = _linear_shape([x, w], attrs)
    if tuple(residual) != tuple(y):
        raise ShapeError(f"linear_add residual {fmt(residual)} differs from the product {fmt(y)}")
    return [y]


def _rms_norm_linear(shapes, attrs):
    x, norm_w, w, *bias = shapes
    expect_rank("rms_norm_linear norm weight", norm_w, 1)
    expect_dim(f"rms_norm_linear norm weight {fmt(norm_w)} vs input {fmt(x)}, last dim",
               norm_w[0], x[-1])
    (y,) = _linear_shape([x, w, *bias], attrs)
    act = attrs.get("act")
    if act not in NORM_LINEAR_ACTS:
        raise ShapeError(f"rms_norm_linear act must be one of {NORM_LINEAR_ACTS}, got {act!r}")
    return _swiglu([y], attrs) if act == "swiglu" else [y]


def _rms_norm_linear_rope_kv(shapes, attrs):
    x, norm_w, w, pos, *caches = shapes
    h, kvh, d = _check_heads("rms_norm_linear_rope_kv", attrs)
    (qkv,) = _rms_norm_linear([x, norm_w, w], attrs)
    expect_dim(f"rms_norm_linear_rope_kv weight rows (heads {h} + 2 x kv_heads {kvh}) x "
               f"head_dim {d}", qkv[-1], (h + 2 * kvh) * d)
    q, k = (qkv[0], h * d), (qkv[0], kvh * d)
    return _rope_kv_write([q, k, k, pos, *caches], attrs)


# outputs=-1: variadic, one output per entry of `sizes`.
register(OpDef("split", ("x",), attrs={"sizes": REQUIRED}, infer=_split, outputs=-1,
               primitive=False, view=True,
               doc="split the last dim into len(sizes) column blocks (views into x)"))
register(OpDef("swiglu", ("gate_up",), infer=_swiglu, primitive=False,
               doc="[T, 2F] -> [T, F]: silu(x[:, :F]) * x[:, F:]"))
register(OpDef("geglu", ("gate_up",), attrs={"approximate": "none"}, infer=_swiglu,
               primitive=False,
               doc="[T, 2F] -> [T, F]: gelu(x[:, :F], approximate) * x[:, F:]"))
register(OpDef("rope_kv_write", ("q", "k", "v", "positions"),
               attrs={"heads": REQUIRED, "kv_heads": REQUIRED, "head_dim": REQUIRED,
                      "theta": REQUIRED, "scaling": None, "rotary_dim": None},
               omit_default=frozenset({"rotary_dim"}),
               infer=_rope_kv_write, uses_cache=True, primitive=False, side_effects=True,
               doc="rotate q and k, write rotated k and v into the paged cache at "
                   "step.slot_mapping, return rotated q"))
register(OpDef("cached_attention", ("q",),
               attrs={"heads": REQUIRED, "kv_heads": REQUIRED, "head_dim": REQUIRED,
                      "scale": None, "window": 0, "softcap": 0.0},
               omit_default=frozenset({"window", "softcap"}),
               infer=_cached_attention, uses_cache=True, primitive=False,
               doc="causal GQA attention of q over each sequence's cached keys (reads the "
                   "cache only; runs after the rope_kv_write whose output it consumes)"))
register(OpDef("add_rms_norm", ("a", "b", "weight"), attrs={"eps": REQUIRED, "offset": 0.0},
               infer=_add_rms_norm, outputs=2, primitive=False,
               doc="h = a + b; returns (rms_norm(h) * (weight + offset), h)"))
register(OpDef("gather_rows", ("x", "rows"), infer=_gather_rows, primitive=False,
               doc="x[rows]: [T, D] -> [R, D] (e.g. the rows whose logits are wanted)"))
register(OpDef("linear_add", ("x", "weight", "residual"), infer=_linear_add, primitive=False,
               inplace=(0, 2),
               doc="residual + x @ weight.T: a residual-stream update in the GEMM's epilogue"))
register(OpDef("rms_norm_linear", ("x", "norm_weight", "weight"), optional_inputs=("bias",),
               attrs={"eps": REQUIRED, "offset": 0.0, "act": None},
               omit_default=frozenset({"act"}), infer=_rms_norm_linear, primitive=False,
               doc="act(rms_norm(x) * (norm_weight + offset) @ weight.T + bias); act None or "
                   "'swiglu' (weight is gate rows then up rows)"))
register(OpDef("rms_norm_linear_rope_kv", ("x", "norm_weight", "weight", "positions"),
               attrs={"eps": REQUIRED, "offset": 0.0, "heads": REQUIRED, "kv_heads": REQUIRED,
                      "head_dim": REQUIRED, "theta": REQUIRED, "scaling": None},
               infer=_rms_norm_linear_rope_kv, uses_cache=True, primitive=False,
               side_effects=True,
               doc="qkv = rms_norm(x) @ weight.T, then rope_kv_write of its q, k, v: returns "
                   "rotated q, writes rotated k and v into the paged cache"))


# --- float32 references -----------------------------------------------------------

@reference("split")
def split(x, *, sizes, step):
    return tuple(torch.split(x, list(sizes), dim=-1))


@reference("swiglu")
def swiglu(gate_up, *, step):
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@reference("geglu")
def geglu(gate_up, *, approximate="none", step):
    gate, up = gate_up.chunk(2, dim=-1)
    return F.gelu(gate, approximate=approximate) * up


@reference("rope_kv_write")
def rope_kv_write(q, k, v, positions, k_cache, v_cache, *, heads, kv_heads, head_dim, theta,
                  scaling=None, rotary_dim=None, step):
    q_rot = rope(q, positions, heads=heads, head_dim=head_dim, theta=theta, scaling=scaling,
                 rotary_dim=rotary_dim, step=step)
    k_rot = rope(k, positions, heads=kv_heads, head_dim=head_dim, theta=theta, scaling=scaling,
                 rotary_dim=rotary_dim, step=step)
    write_kv(k_rot, v, k_cache, v_cache, step, kv_heads, head_dim)
    return q_rot


@reference("cached_attention")
def cached_attention(q, k_cache, v_cache, *, heads, kv_heads, head_dim, scale=None, window=0,
                     softcap=0.0, step):
    scale = head_dim ** -0.5 if scale is None else scale
    return paged_attention(q, k_cache, v_cache, step, heads=heads, kv_heads=kv_heads,
                           head_dim=head_dim, scale=scale, window=window, softcap=softcap)


@reference("add_rms_norm")
def add_rms_norm(a, b, weight, *, eps, offset=0.0, step):
    h = a + b
    return rms_norm(h, weight, eps=eps, offset=offset, step=step), h


@reference("gather_rows")
def gather_rows(x, rows, *, step):
    return x.index_select(0, rows)


@reference("linear_add")
def linear_add(x, weight, residual, *, step):
    return residual + _linear_ref(x, weight, step=step)


@reference("rms_norm_linear")
def rms_norm_linear(x, norm_weight, weight, bias=None, *, eps, offset=0.0, act=None, step):
    y = _linear_ref(rms_norm(x, norm_weight, eps=eps, offset=offset, step=step), weight, bias,
                    step=step)
    return swiglu(y, step=step) if act == "swiglu" else y


@reference("rms_norm_linear_rope_kv")
def rms_norm_linear_rope_kv(x, norm_weight, weight, positions, k_cache, v_cache, *, eps,
                            offset=0.0, heads, kv_heads, head_dim, theta, scaling=None, step):
    qkv = rms_norm_linear(x, norm_weight, weight, eps=eps, offset=offset, step=step)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    return rope_kv_write(q, k, v, positions, k_cache, v_cache, heads=heads, kv_heads=kv_heads,
                         head_dim=head_dim, theta=theta, scaling=scaling, step=step)
