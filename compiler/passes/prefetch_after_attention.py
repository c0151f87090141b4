"""prefetch_after_attention (cuda target): mark the GEMM that reads attention's output.

A bs=1 decode step streams weights from HBM at close to full bandwidth in every GEMV
but one stretch: decode attention (and its split-K merge) reads only the KV cache
of one sequence, a few microseconds with HBM nearly idle. The GEMV after it (the o
projection) is launched early under programmatic dependent launch and sits waiting
for attention's output. Marked `prefetch=True`, it pulls its weight rows into L2
while it waits, and then reads them from there (kernels/triton/gemv.py).

Matches, after fuse_norm_linear (so the o projection is a linear_add):

    o = cached_attention(q, kc, vc);  y = linear_add(o, w, r)   ->  linear_add {prefetch: true}

(or an rms_norm_linear reading o, for a model that normalizes attention's output first).
Only the attribute changes: the node's inputs, outputs and result are the same, and
a target that ignores the hint computes the same plan. A GEMM that does not read
attention's output directly (a plain `linear`, for a model whose o projection is
not fused with its residual add) keeps no hint.

Pre: fuse_norm_linear has run. Runs for the cuda target only (pipeline.TARGET_PASSES).
"""
from __future__ import annotations

from ..ir import Graph

GEMMS = ("linear_add", "rms_norm_linear")


def run(graph: Graph) -> tuple[Graph, int]:
    graph = graph.clone()
    attention_outputs = {n.outputs[0] for n in graph.nodes if n.op == "cached_attention"}
    marked = 0
    for node in graph.nodes:
        if (node.op in GEMMS and node.inputs[0] in attention_outputs
                and not node.attrs.get("prefetch")):
            node.attrs["prefetch"] = True
            marked += 1
    return graph, marked
