"""fuse_gate_up_swiglu: gated MLP input -> one GEMM and a SwiGLU.

Matches (mul is commutative; gate, up and the activation used by nothing else):

    g = linear(x, wg, [bg]);  u = linear(x, wu, [bu]);  a = silu(g);  m = mul(a, u)

Produces, at the first matched node:

    gu = linear(x, W_gate_up, [b_gate_up])   W_gate_up: derive=("concat", [wg, wu], 0),
                                             gate rows first
    m  = swiglu(gu)                          [T, 2F] -> [T, F]: silu(gu[:, :F]) * gu[:, F:]

Pre: gate and up are plain checkpoint weights (so fuse_qkv, which only fuses
three projections, never took them). Post: m keeps its name, so the down
projection is unchanged; g, u, a are gone. Must run before: nothing required.
A non-gated MLP (linear -> silu -> linear) does not match and is left alone.
"""
from __future__ import annotations

from ..ir import Graph, Node
from ..pattern import (Match, Pattern, Rewriter, all_or_none, fused_name, plain_weights, private,
                       rewrite_all)

PATTERN = Pattern("""
    g = linear(x, wg, [bg])
    u = linear(x, wu, [bu])
    a = silu(g)
    m = mul(a, u)
""", where=[plain_weights("wg", "wu", "bg", "bu"), all_or_none("bg", "bu"), private("g", "u", "a")],
    anchor="first", name="fuse_gate_up_swiglu")


def _rewrite(m: Match, rw: Rewriter) -> list[Node]:
    inputs = [m["x"], rw.concat_weight([m["wg"], m["wu"]])]
    if m["bg"] is not None:
        inputs.append(rw.concat_weight([m["bg"], m["bu"]]))
    gate_up = rw.value(fused_name([m["g"], m["u"]]))
    return [rw.node("linear", inputs, [gate_up]),
            rw.node("swiglu", [gate_up], [m["m"]])]


def run(graph: Graph) -> tuple[Graph, int]:
    return rewrite_all(graph, PATTERN, _rewrite)
