"""dead_value_removal: drop what no output needs.

Removes, walking backwards from the graph outputs:
  - nodes none of whose outputs is used, unless their op has side effects
    (`OpDef.side_effects`: attention, rope_kv_write write the KV cache);
  - unused outputs of surviving multi-output nodes, blanked to '' (e.g. the
    residual sum of the last layer's add_rms_norm, read by nothing after the
    final norm): kernels treat '' as "not wanted" and may skip the store;
  - activations no node defines any more, and weights and caches no node reads.
Graph inputs are kept even when unused (every executor feeds the same ones).

Counts one rewrite per removed node, blanked output, weight and cache.
Pre: none. Post: every remaining node is live or has side effects; every
weight and cache is read. Must run last: fusion passes leave the weights they
replaced behind (q/k/v, gate/up) for it to remove.
"""
from __future__ import annotations

from ..ir import Graph
from ..ops import OPS


def run(graph: Graph) -> tuple[Graph, int]:
    graph = graph.clone()
    live = set(graph.outputs)
    kept = []
    count = 0
    for node in reversed(graph.nodes):
        used = [o for o in node.outputs if o and o in live]
        if not used and not OPS[node.op].side_effects:
            count += 1
            continue
        if len(node.outputs) > 1:
            blanked = [o if o in live else "" for o in node.outputs]
            count += sum(1 for a, b in zip(node.outputs, blanked) if a != b)
            node.outputs = blanked
        live.update(name for name in node.inputs if name)
        kept.append(node)
    graph.nodes = kept[::-1]
    referenced = set(graph.inputs) | {o for n in graph.nodes for o in n.outputs if o}
    referenced |= {i for n in graph.nodes for i in n.inputs if i}
    for name, value in list(graph.values.items()):
        if name not in referenced:
            if value.kind in ("weight", "cache"):
                count += 1
            del graph.values[name]
    return graph, count
