"""fuse_norm_linear (cuda target): fold the residual add, the RMSNorm and SwiGLU into GEMMs.

A bs=1 decode step on a GPU is a chain of small kernels, and each launch costs
a few microseconds of a ~1 ms step. The decode GEMV can do the surrounding
element-wise work in passing: add the residual in its epilogue, fold the norm
into its K loop (each program walks all of K anyway, so it can sum x^2 there
and scale its dot products at the end), and pair gate row n with up row F+n so
SwiGLU is applied before anything is stored. A Llama layer goes from
add_rms_norm, linear, ..., linear, add_rms_norm, linear, swiglu, linear to
rms_norm_linear_rope_kv, cached_attention, linear_add, rms_norm_linear(act=swiglu),
linear_add.

Matches, in this order (each to a fixed point):

1. the residual update, b used by nothing else (add_rms_norm is commutative):

       b = linear(x, w);  n, h = add_rms_norm(a, b, g) {eps, offset}
   ->  h = linear_add(x, w, a);  n = rms_norm(h, g) {eps, offset}

2. a norm read only by a linear (heads == 1), directly or through gather_rows
   (the LM head after lm_head_last_token):

       n = rms_norm(x, g);  y = linear(n, w, [bias])
   ->  y = rms_norm_linear(x, g, w, [bias]) {eps, offset}

       n = rms_norm(x, g);  r = gather_rows(n, rows);  y = linear(r, w, [bias])
   ->  r = gather_rows(x, rows);  y = rms_norm_linear(r, g, w, [bias])

3. a gated activation on its output, y used by nothing else:

       y = rms_norm_linear(x, g, w, [bias]);  z = swiglu(y)
   ->  z = rms_norm_linear(x, g, w, [bias]) {act='swiglu'}

4. the attention's input projection, its RoPE and the KV-cache append (full rotary, no
   bias, qkv's columns read only through the split):

       qkv = rms_norm_linear(x, g, w);  q, k, v = split(qkv);
       qr = rope_kv_write(q, k, v, pos, kc, vc)
   ->  qr = rms_norm_linear_rope_kv(x, g, w, pos, kc, vc) {eps, offset, rope_kv_write's}

A norm whose output has other readers stays a norm (after 1, rms_norm of h:
the same number of kernels as before). Gemma 2's post-norms (b = rms_norm(o),
not a linear) and Qwen3's per-head norms do not match.

Pre: fuse_add_rms_norm, fuse_gate_up_swiglu and lm_head_last_token have run.
Post: values keep their names (h, y, z, r), so later nodes are unchanged; only the
final norm's sum, blanked by dead_value_removal, gets a name again (`final/h`).
Runs for the cuda target only (pipeline.TARGET_PASSES): the ONNX lowering has
no form for these ops, and on a CPU the separate ops cost nothing extra.
"""
from __future__ import annotations

from ..ir import Graph, Node
from ..pattern import Match, Pattern, private
from ..rewrite import Rewriter, rewrite_all


def _no_bias(m: Match) -> bool:
    return m.env.get("bias") is None


def _one_group(m: Match) -> bool:
    return next(n for n in m.nodes if n.op == "rms_norm").attrs.get("heads", 1) == 1


RESIDUAL = [Pattern(f"""
    b = linear(x, w, [bias])
    n, h = add_rms_norm({args}, g, eps=eps, offset=off)
""", where=[_no_bias, private("b")], anchor="last", name="fuse_norm_linear/residual")
    for args in ("a, b", "b, a")]

NORM = Pattern("""
    n = rms_norm(x, g, eps=eps, offset=off)
    y = linear(n, w, [bias])
""", where=[_one_group, private("n")], anchor="last", name="fuse_norm_linear/norm")

NORM_GATHERED = Pattern("""
    n = rms_norm(x, g, eps=eps, offset=off)
    r = gather_rows(n, rows)
    y = linear(r, w, [bias])
""", where=[_one_group, private("n", "r")], anchor="last", name="fuse_norm_linear/norm+gather")

SWIGLU = Pattern("""
    y = rms_norm_linear(x, g, w, [bias], eps=eps, offset=off)
    z = swiglu(y)
""", where=[lambda m: m.nodes[0].attrs.get("act") is None, private("y")], anchor="last",
    name="fuse_norm_linear/swiglu")


def _qkv_rope(m: Match) -> bool:
    norm, _, rope = m.nodes
    h, kvh, d = rope.attrs["heads"], rope.attrs["kv_heads"], rope.attrs["head_dim"]
    return (m.env.get("bias") is None and norm.attrs.get("act") is None
            and rope.attrs.get("rotary_dim") in (None, d)
            and list(m["sizes"]) == [h * d, kvh * d, kvh * d])


ROPE = Pattern("""
    qkv = rms_norm_linear(x, g, w, [bias], eps=eps, offset=off)
    q, k, v = split(qkv, sizes=sizes)
    qr = rope_kv_write(q, k, v, pos, kc, vc)
""", where=[_qkv_rope, private("qkv", "q", "k", "v")], anchor="last",
    name="fuse_norm_linear/rope")


def _residual(m: Match, rw: Rewriter) -> list[Node]:
    norm = {"eps": m["eps"], "offset": m["off"]}
    # The final norm's sum has no other reader, so dead_value_removal blanked it ('');
    # it is now read by the norm and needs a name again.
    h = m["h"] or rw.value(m["n"].rsplit("/", 1)[0] + "/h")
    return [rw.node("linear_add", [m["x"], m["w"], m["a"]], [h]),
            rw.node("rms_norm", [h, m["g"]], [m["n"]], norm)]


def _head(m: Match) -> list:
    return [m["w"]] + ([m["bias"]] if m["bias"] is not None else [])


def _norm(m: Match, rw: Rewriter) -> list[Node]:
    attrs = {"eps": m["eps"], "offset": m["off"]}
    return [rw.node("rms_norm_linear", [m["x"], m["g"], *_head(m)], [m["y"]], attrs)]


def _norm_gathered(m: Match, rw: Rewriter) -> list[Node]:
    attrs = {"eps": m["eps"], "offset": m["off"]}
    return [rw.node("gather_rows", [m["x"], m["rows"]], [m["r"]]),
            rw.node("rms_norm_linear", [m["r"], m["g"], *_head(m)], [m["y"]], attrs)]


def _swiglu(m: Match, rw: Rewriter) -> list[Node]:
    attrs = {"eps": m["eps"], "offset": m["off"], "act": "swiglu"}
    return [rw.node("rms_norm_linear", [m["x"], m["g"], *_head(m)], [m["z"]], attrs)]


def _rope(m: Match, rw: Rewriter) -> list[Node]:
    rope = m.nodes[2]
    attrs = {"eps": m["eps"], "offset": m["off"],
             **{k: v for k, v in rope.attrs.items() if k != "rotary_dim"}}
    return [rw.node("rms_norm_linear_rope_kv", [m["x"], m["g"], m["w"], m["pos"], m["kc"],
                                                m["vc"]], [m["qr"]], attrs)]


def run(graph: Graph) -> tuple[Graph, int]:
    count = 0
    for pattern, fn in [(RESIDUAL[0], _residual), (RESIDUAL[1], _residual), (NORM, _norm),
                        (NORM_GATHERED, _norm_gathered), (SWIGLU, _swiglu), (ROPE, _rope)]:
        graph, n = rewrite_all(graph, pattern, fn)
        count += n
    return graph, count
