"""fuse_add_rms_norm: residual add + RMSNorm -> one kernel with two outputs.

Matches (add is commutative):

    h = add(a, b);  x = rms_norm(h, w, eps=eps, offset=off)

A per-head norm (`heads` > 1, Qwen3's q/k norm) is not of a residual sum and
is never fused.

Produces, at the add (so h and x are defined no later than before):

    x, h = add_rms_norm(a, b, w) {eps, offset}     outputs: (normalized, residual sum)

h stays an output even when nothing else reads it (the last layer's sum
feeding only the final norm); dead_value_removal then blanks it to '' and a
kernel may skip storing it.

Pre: none. Post: every RMSNorm of a sum is fused, including the final norm;
the first layer's input norm (of the embedding) is not a sum and stays
`rms_norm`: a Llama graph of L layers gets 2L fusions.
Must run before: nothing required.
"""
from __future__ import annotations

from ..ir import Graph, Node
from ..pattern import Match, Pattern
from ..rewrite import Rewriter, rewrite_all

PATTERN = Pattern("""
    h = add(a, b)
    x = rms_norm(h, w, eps=eps, offset=off)
""", where=[lambda m: m.nodes[1].attrs.get("heads", 1) == 1], anchor="first",
    name="fuse_add_rms_norm")


def _rewrite(m: Match, rw: Rewriter) -> list[Node]:
    return [rw.node("add_rms_norm", [m["a"], m["b"], m["w"]], [m["x"], m["h"]],
                    {"eps": m["eps"], "offset": m["off"]})]


def run(graph: Graph) -> tuple[Graph, int]:
    return rewrite_all(graph, PATTERN, _rewrite)
