"""The IR: a small graph of typed nodes with shapes symbolic in the step size.

A `Graph` is a list of `Node`s in execution order over named `Value`s. Shapes
are tuples whose entries are ints or symbols: `T` (tokens in this step) and,
for KV caches, `blocks` and `block_size` (chosen by the runtime).

Value kinds:
  input   - fed per step (token ids, positions)
  weight  - read from the checkpoint (`source` is its checkpoint name)
  cache   - the paged KV cache of one layer; persistent across steps
  act     - an intermediate the step computes (the only kind memory planning touches)
Graph outputs are activations listed in `Graph.outputs`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Union

from .errors import Loc

Dim = Union[int, str]
Shape = tuple  # tuple[Dim, ...]


@dataclass
class Value:
    name: str
    shape: Shape | None
    dtype: str = "float32"
    kind: str = "act"          # input | weight | cache | act
    source: str | None = None  # weight: the checkpoint tensor it comes from
    # weight: how to build it from checkpoint tensors when it is not one tensor
    # as stored (e.g. q/k/v concatenated by a fusion pass): ("concat", [names], axis)
    derive: tuple | None = None


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""             # hierarchical, e.g. layers.3/attn/q
    loc: Loc | None = None     # where the spec wrote it
    # A node a pass made: where the spec wrote each node it replaced (in spec order;
    # empty for a node as the spec wrote it). plan.py cites them; errors use `loc`.
    fused_locs: tuple = ()

    def spec_locs(self) -> tuple:
        """Every spec location this node stands for: `fused_locs`, else (`loc`,)."""
        return self.fused_locs or ((self.loc,) if self.loc is not None else ())


@dataclass
class Graph:
    family: str
    nodes: list[Node]
    values: dict[str, Value]
    inputs: list[str]
    outputs: list[str]
    symbols: dict[str, Any] = field(default_factory=dict)  # bound config symbols
    spec_file: str = ""

    def clone(self) -> "Graph":
        return copy.deepcopy(self)

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    users.setdefault(name, []).append(node)
        return users

    def weights(self) -> list[Value]:
        return [v for v in self.values.values() if v.kind == "weight"]

    def caches(self) -> list[Value]:
        return [v for v in self.values.values() if v.kind == "cache"]

    def to_text(self) -> str:
        return format_graph(self)


def format_shape(shape: Shape | None) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _format_attr(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_format_attr(v)}" for k, v in value.items()) + "}"
    return repr(value) if isinstance(value, str) else str(value)


def format_graph(graph: Graph) -> str:
    """Readable text: one line per node, `%` activations, `@` weights, `$` caches."""
    sigil = {"act": "%", "input": "%", "weight": "@", "cache": "$"}

    def ref(name: str) -> str:
        if not name:
            return "_"
        value = graph.values.get(name)
        return f"{sigil.get(value.kind, '%') if value else '?'}{name}"

    lines = [f"graph {graph.family}"]
    for name in graph.inputs:
        v = graph.values[name]
        lines.append(f"  input  %{name}: {v.dtype}{format_shape(v.shape)}")
    for v in graph.weights():
        origin = ""
        if v.derive is not None:
            origin = f" <- {v.derive[0]}({', '.join(v.derive[1])})"
        elif v.source != v.name:
            origin = f" <- {v.source}"
        lines.append(f"  weight @{v.name}: {v.dtype}{format_shape(v.shape)}{origin}")
    for v in graph.caches():
        lines.append(f"  cache  ${v.name}: {v.dtype}{format_shape(v.shape)}")
    for node in graph.nodes:
        outs = ", ".join(ref(o) for o in node.outputs)
        args = ", ".join(ref(i) for i in node.inputs)
        attrs = ", ".join(f"{k}={_format_attr(v)}" for k, v in node.attrs.items())
        shapes = ", ".join(format_shape(graph.values[o].shape) for o in node.outputs if o)
        text = f"  {outs} = {node.op}({args})"
        if attrs:
            text += f" {{{attrs}}}"
        lines.append(f"{text}  # {shapes}")
    lines.append("  return " + ", ".join(ref(o) for o in graph.outputs))
    return "\n".join(lines) + "\n"
