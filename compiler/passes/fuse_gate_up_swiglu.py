"""fuse_gate_up_swiglu: gated MLP input -> one GEMM and a gated activation.

Matches (mul is commutative; gate, up and the activation used by nothing else):

    g = linear(x, wg, [bg]);  u = linear(x, wu, [bu]);  a = silu(g);  m = mul(a, u)

or the same with `a = gelu(g, approximate=ap)` (GeGLU: Gemma). Produces, at
the first matched node:

    gu = linear(x, W_gate_up, [b_gate_up])   W_gate_up: derive=("concat", [wg, wu], 0),
                                             gate rows first
    m  = swiglu(gu)                          [T, 2F] -> [T, F]: silu(gu[:, :F]) * gu[:, F:]
    m  = geglu(gu) {approximate}             (for the gelu form)

Pre: gate and up are plain checkpoint weights (so fuse_qkv, which only fuses
three projections, never took them), or adjacent row slices of one packed
tensor, gate first (Phi-3's gate_up_proj: the fused weight is that tensor).
Post: m keeps its name, so the down projection is unchanged; g, u, a are gone.
Must run before: nothing required. A non-gated MLP (linear -> silu -> linear)
does not match and is left alone.
"""
from __future__ import annotations

from ..ir import Graph, Node
from ..pattern import Match, Pattern, all_or_none, plain_weights, private
from ..rewrite import Rewriter, fused_name, rewrite_all

_WHERE = [plain_weights("wg", "wu", "bg", "bu"), all_or_none("bg", "bu"), private("g", "u", "a")]

PATTERN = Pattern("""
    g = linear(x, wg, [bg])
    u = linear(x, wu, [bu])
    a = silu(g)
    m = mul(a, u)
""", where=_WHERE, anchor="first", name="fuse_gate_up_swiglu")

GELU_PATTERN = Pattern("""
    g = linear(x, wg, [bg])
    u = linear(x, wu, [bu])
    a = gelu(g, approximate=ap)
    m = mul(a, u)
""", where=_WHERE, anchor="first", name="fuse_gate_up_geglu")


def _rewrite(m: Match, rw: Rewriter) -> list[Node] | None:
    inputs = [m["x"], rw.concat_weight([m["wg"], m["wu"]])]
    if m["bg"] is not None:
        inputs.append(rw.concat_weight([m["bg"], m["bu"]]))
    if None in inputs:                       # slices that do not stack back: leave it
        return None
    gate_up = rw.value(fused_name([m["g"], m["u"]]))
    act = rw.node("swiglu", [gate_up], [m["m"]]) if "ap" not in m.env else \
        rw.node("geglu", [gate_up], [m["m"]], {"approximate": m["ap"]})
    return [rw.node("linear", inputs, [gate_up]), act]


def run(graph: Graph) -> tuple[Graph, int]:
    graph, silu_count = rewrite_all(graph, PATTERN, _rewrite)
    graph, gelu_count = rewrite_all(graph, GELU_PATTERN, _rewrite)
    return graph, silu_count + gelu_count
