"""fuse_qkv: three projections of one input -> one GEMM and a split.

Matches three `linear`s of the same input whose weights are plain checkpoint
tensors, all without bias or all with one (the Q, K and V projections):

    q = linear(x, wq, [bq]);  k = linear(x, wk, [bk]);  v = linear(x, wv, [bv])

Produces, at the first of the three (so q, k, v are defined no later than before):

    qkv = linear(x, W_qkv, [b_qkv])     W_qkv derive=("concat", [wq, wk, wv], 0)
    q, k, v = split(qkv) {sizes=[Nq, Nk, Nv]}     (views: no copy)

The three are concatenated in graph order (whatever order the spec wrote them
in) and keep their value names, so every user is unchanged. The derived weight
is built once at load time (runtime/weights.py); the originals are left for
dead_value_removal. Row slices of one packed tensor (Phi-3's qkv_proj, a
spec's `rows:`) that are adjacent and in order concatenate back to one slice
of it, so the fused GEMM reads the checkpoint tensor as stored; slices that
cannot be described that way leave the match unfused.

Pre: none (runs first). Post: no two-plus-one `linear`s of one input remain
unfused; each fused GEMM reads x once. Must run before: nothing required.
It is a horizontal fusion: any three such linears are fused, which is always
correct; on a model with more than three projections of one input the first
three in graph order are taken.
"""
from __future__ import annotations

from ..ir import Graph, Node
from ..pattern import Match, Pattern, all_or_none, plain_weights
from ..rewrite import Rewriter, fused_name, rewrite_all

PATTERN = Pattern("""
    q = linear(x, wq, [bq])
    k = linear(x, wk, [bk])
    v = linear(x, wv, [bv])
""", where=[plain_weights("wq", "wk", "wv", "bq", "bk", "bv"), all_or_none("bq", "bk", "bv")],
    anchor="first", name="fuse_qkv")


def _rewrite(m: Match, rw: Rewriter) -> list[Node]:
    linears = m.in_graph_order()
    outs = [n.outputs[0] for n in linears]
    inputs = [m["x"], rw.concat_weight([n.inputs[1] for n in linears])]
    if len(linears[0].inputs) == 3:
        inputs.append(rw.concat_weight([n.inputs[2] for n in linears]))
    if None in inputs:
        return None
    qkv = rw.value(fused_name(outs))
    sizes = [rw.graph.values[o].shape[-1] for o in outs]
    return [rw.node("linear", inputs, [qkv]),
            rw.node("split", [qkv], outs, {"sizes": sizes}, name=f"{qkv}/split")]


def run(graph: Graph) -> tuple[Graph, int]:
    return rewrite_all(graph, PATTERN, _rewrite)
