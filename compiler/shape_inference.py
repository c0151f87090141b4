"""Shape inference over the IR, shared by the binder and the verifier."""
from __future__ import annotations

from .errors import SpecError
from .ir import Graph, Node
from .ops import OPS, ShapeError, UnsupportedAttr


def infer_node(graph: Graph, node: Node) -> list:
    """Output shapes of one node from its inputs' shapes; errors name the spec line."""
    opdef = OPS[node.op]
    shapes = [graph.values[name].shape for name in node.inputs if name]
    try:
        return opdef.infer(shapes, node.attrs)
    except ShapeError as err:
        what = "cannot compute" if isinstance(err, UnsupportedAttr) else "shape mismatch in"
        message = f"{what} {node.op} '{node.name}': {err}"
        if node.loc is not None:
            raise node.loc.error(message) from None
        raise SpecError(message) from None


def infer_shapes(graph: Graph) -> Graph:
    """Recompute every activation's shape in execution order (in place)."""
    for node in graph.nodes:
        for name, shape in zip(node.outputs, infer_node(graph, node)):
            if name:
                graph.values[name].shape = tuple(shape)
    return graph
