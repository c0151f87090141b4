"""The driver that rewrites every match of a pattern (pattern.py), and the
`Rewriter` that rewrite functions build their replacement nodes with.

`rewrite_all(graph, pattern, fn)` finds matches in graph order, asks `fn(match,
rw)` for replacement nodes, and splices them in at the pattern's anchor (the
first or the last matched node in graph order). A rewrite is applied only when
it is legal, checked here once for every pass:
  - a value the matched nodes defined and the replacement no longer defines
    must have had no user outside the match and must not be a graph output;
  - the new node list must still define every value before its use.
An illegal match is skipped (never half-applied). Output shapes of the
replacement nodes are re-inferred.
"""
from __future__ import annotations

from typing import Callable

from .ir import Graph, Node, Value
from .pattern import Match, Pattern
from .shape_inference import infer_node

SEPARATORS = "./_"


def fused_name(names: list[str]) -> str:
    """A readable name for a fusion of several values: the shared prefix and
    suffix (cut at '.', '/' or '_') around the differing middles joined by '+'.

    ['model.layers.0.mlp.gate_proj.weight', 'model.layers.0.mlp.up_proj.weight']
      -> 'model.layers.0.mlp.gate+up_proj.weight'
    ['layers.0/attn/q', 'layers.0/attn/k', 'layers.0/attn/v'] -> 'layers.0/attn/q+k+v'
    """
    prefix = _common_prefix(names)
    cut = max(prefix.rfind(s) for s in SEPARATORS) + 1
    prefix = prefix[:cut]
    rest = [n[len(prefix):] for n in names]
    suffix = _common_prefix([r[::-1] for r in rest])[::-1]
    positions = [suffix.find(s) for s in SEPARATORS if s in suffix]
    suffix = suffix[min(positions):] if positions else ""
    middles = [r[:len(r) - len(suffix)] for r in rest]
    if any(not m for m in middles):
        return "+".join(names)
    return prefix + "+".join(middles) + suffix


def _common_prefix(names: list[str]) -> str:
    first, last = min(names), max(names)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


class Rewriter:
    """What a rewrite function may do: read the graph and the match, and make
    new values, graph inputs and nodes. Nothing touches the graph until the
    driver has checked that the replacement is legal."""

    def __init__(self, graph: Graph, match: Match, anchor: Node):
        self.graph, self.match, self.anchor = graph, match, anchor
        self.new_values: dict[str, Value] = {}
        self.new_inputs: list[str] = []

    def _unique(self, base: str) -> str:
        name, n = base, 1
        while name in self.graph.values or name in self.new_values:
            n += 1
            name = f"{base}.{n}"
        return name

    def value(self, base: str, *, kind: str = "act", dtype: str = "float32",
              shape=None, source: str | None = None, derive: tuple | None = None) -> str:
        """A new value (unique name from `base`); act shapes are inferred later."""
        name = self._unique(base)
        self.new_values[name] = Value(name, shape, dtype, kind, source, derive)
        return name

    def concat_weight(self, names: list[str], axis: int = 0) -> str | None:
        """A weight built at load time by concatenating plain checkpoint weights
        (`derive=("concat", sources, axis)`); an identical one is reused.

        Adjacent row slices of one packed tensor, in order, concatenate back to
        a slice of it (Phi-3's q, k, v -> its qkv_proj: nothing is copied).
        Any other mix involving slices cannot be described: returns None, and
        the rewrite should give up on the match."""
        values = [self.graph.values[n] for n in names]
        if any(v.derive is not None for v in values):
            return self._merge_slices(values, axis)
        sources = [v.source for v in values]
        derive = ("concat", sources, axis)
        for v in list(self.graph.values.values()) + list(self.new_values.values()):
            if v.kind == "weight" and v.derive == derive:
                return v.name
        shape = list(values[0].shape)
        shape[axis] = sum(v.shape[axis] for v in values)
        return self.value(fused_name(names), kind="weight", dtype=values[0].dtype,
                          shape=tuple(shape), derive=derive)

    def _merge_slices(self, values: list[Value], axis: int) -> str | None:
        derives = [v.derive for v in values]
        if any(d is None or d[0] != "slice" for d in derives):
            return None
        if len({d[1][0] for d in derives}) != 1 or any(d[2][0] != axis for d in derives):
            return None
        if any(a[2][2] != b[2][1] for a, b in zip(derives, derives[1:])):
            return None                          # not adjacent, or out of order
        source, start, stop = derives[0][1][0], derives[0][2][1], derives[-1][2][2]
        derive = ("slice", [source], (axis, start, stop))
        for v in list(self.graph.values.values()) + list(self.new_values.values()):
            if v.kind == "weight" and v.derive == derive:
                return v.name
        shape = list(values[0].shape)
        shape[axis] = stop - start
        return self.value(f"{source}[{start}:{stop}]", kind="weight", dtype=values[0].dtype,
                          shape=tuple(shape), source=source, derive=derive)

    def graph_input(self, name: str, shape: tuple, dtype: str) -> str:
        """A per-step graph input, added once (reused when it exists)."""
        if name in self.graph.inputs or name in self.new_inputs:
            return name
        if name in self.graph.values:
            raise ValueError(f"cannot add graph input '{name}': a value has that name")
        self.new_values[name] = Value(name, tuple(shape), dtype, "input")
        self.new_inputs.append(name)
        return name

    def node(self, op: str, inputs: list, outputs: list[str], attrs: dict | None = None,
             name: str | None = None) -> Node:
        """A node that keeps the anchor's spec location (errors still name the spec line)
        and, in `fused_locs`, the locations of every matched node it helps replace."""
        label = name or next((o for o in outputs if o), op)
        return Node(op, list(inputs), list(outputs), dict(attrs or {}), label, self.anchor.loc,
                    self._matched_locs())

    def _matched_locs(self) -> tuple:
        """The spec locations of the matched nodes (of the nodes they were fused from),
        in file and line order, each once."""
        seen = {}
        for node in self.match.nodes:
            for loc in node.spec_locs():
                seen.setdefault((loc.file or "", loc.line or 0, loc.field or ""), loc)
        return tuple(seen[k] for k in sorted(seen))


RewriteFn = Callable[[Match, Rewriter], list[Node]]


def rewrite_all(graph: Graph, pattern: Pattern, fn: RewriteFn) -> tuple[Graph, int]:
    """Rewrite every legal match of `pattern` in a clone of `graph`; returns
    (new graph, number of rewrites). Matches are taken in graph order and
    never overlap (each rewrite restarts the search on the updated graph)."""
    graph = graph.clone()
    # Matches whose rewrite was illegal, by node identity (the dict keeps the
    # nodes alive so that their ids are not reused by new nodes).
    rejected: dict[tuple[int, ...], list[Node]] = {}
    count = 0
    limit = 4 * len(graph.nodes) + 16
    while True:
        applied = False
        for match in pattern.matches(graph):
            key = tuple(id(n) for n in match.nodes)
            if key in rejected:
                continue
            if _apply(graph, pattern, match, fn):
                count += 1
                applied = True
                break
            rejected[key] = match.nodes
        if not applied:
            return graph, count
        if count > limit:
            raise RuntimeError(f"pattern {pattern.name or pattern.text!r} keeps matching its "
                               "own replacement")


def _apply(graph: Graph, pattern: Pattern, match: Match, fn: RewriteFn) -> bool:
    pos = min(match.positions) if pattern.anchor == "first" else max(match.positions)
    anchor = graph.nodes[pos]
    rw = Rewriter(graph, match, anchor)
    replacement = fn(match, rw)
    if replacement is None:
        return False
    matched = {id(n) for n in match.nodes}
    defined_now = {o for n in replacement for o in n.outputs if o}
    dropped = {o for n in match.nodes for o in n.outputs if o and o not in defined_now}
    users = graph.consumers()
    for name in dropped:
        if name in graph.outputs or any(id(u) not in matched for u in users.get(name, [])):
            return False
    nodes = []
    for i, node in enumerate(graph.nodes):
        if i == pos:
            nodes.extend(replacement)
        if id(node) not in matched:
            nodes.append(node)
    values = {**graph.values, **rw.new_values}
    if not _well_ordered(nodes, values, set(graph.inputs) | set(rw.new_inputs)):
        return False
    graph.nodes = nodes
    graph.values = values
    graph.inputs = graph.inputs + rw.new_inputs
    for name in dropped:
        del graph.values[name]
    for node in replacement:
        for out, shape in zip(node.outputs, infer_node(graph, node)):
            if out:
                graph.values[out].shape = tuple(shape)
    return True


def _well_ordered(nodes: list[Node], values: dict[str, Value], inputs: set[str]) -> bool:
    """Every activation input is defined by an earlier node (or is a graph input)."""
    defined = set(inputs)
    for node in nodes:
        for name in node.inputs:
            if not name or name in defined:
                continue
            value = values.get(name)
            if value is None or value.kind in ("act", "input"):
                return False
        defined.update(o for o in node.outputs if o)
    return True
