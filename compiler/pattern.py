"""Declarative subgraph patterns, and the driver that rewrites every match.

A fusion pass states *what* it matches as a few lines of op templates, not as
code that walks one model's value names:

    q = linear(x, wq, [bq])
    k = linear(x, wk, [bk])
    v = linear(x, wv, [bv])

- A name is a variable: the same name twice means the same value (`x` above).
  `_` matches anything and binds nothing.
- `[b]` is an optional input: bound to None when the node has no such input.
  Otherwise a node matches only with exactly the template's inputs.
- `attr=name` binds an attribute to a variable (names unify across templates,
  so `theta=th` in two templates demands equal thetas); `attr=3` or
  `attr=None` demands that value; attributes not written are free.
- `add` and `mul` are commutative: both operand orders are tried.
- Several outputs are written as a tuple: `x, h = add_rms_norm(a, b, w)`.

Templates may appear in any order relative to the graph; each matched node is
distinct. `where=` adds constraints, predicates over the `Match` (builders
below: `plain_weights`, `private`, `all_or_none`, `is_output`, `not_produced_by`).

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

import ast
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .ir import Graph, Node, Value
from .shape_inference import infer_node

COMMUTATIVE = frozenset({"add", "mul"})
WILDCARD = "_"
_MISSING = object()


class PatternError(ValueError):
    """A pattern text that does not parse."""


@dataclass(frozen=True)
class _Var:
    name: str


@dataclass(frozen=True)
class _Arg:
    var: str                # variable name, or WILDCARD
    optional: bool = False


@dataclass
class Template:
    op: str
    args: list[_Arg]
    attrs: dict[str, Any]   # attr -> _Var or a literal
    outputs: list[str]      # variables (or WILDCARD)
    text: str

    def bind(self, node: Node, env: dict) -> Iterator[dict]:
        """Every extension of `env` under which `node` matches this template."""
        if node.op != self.op or len(node.outputs) != len(self.outputs):
            return
        required = sum(1 for a in self.args if not a.optional)
        if not required <= len(node.inputs) <= len(self.args):
            return
        orders = [list(node.inputs)]
        if self.op in COMMUTATIVE and len(node.inputs) == 2 and node.inputs[0] != node.inputs[1]:
            orders.append(list(reversed(node.inputs)))
        for inputs in orders:
            new = dict(env)
            padded = inputs + [None] * (len(self.args) - len(inputs))
            if not all(_unify(new, a.var, val) for a, val in zip(self.args, padded)):
                continue
            if any(val is None and not a.optional for a, val in zip(self.args, padded)):
                continue
            if not all(_unify(new, var, out) for var, out in zip(self.outputs, node.outputs)):
                continue
            if not self._attrs_ok(node, new):
                continue
            yield new

    def _attrs_ok(self, node: Node, env: dict) -> bool:
        for key, want in self.attrs.items():
            got = node.attrs.get(key, _MISSING)
            if got is _MISSING:
                return False
            if isinstance(want, _Var):
                if not _unify(env, want.name, got):
                    return False
            elif got != want:
                return False
        return True

    def value_vars(self) -> list[str]:
        return [a.var for a in self.args] + list(self.outputs)


def _unify(env: dict, var: str, value: Any) -> bool:
    if var == WILDCARD:
        return True
    if var in env:
        return env[var] == value
    env[var] = value
    return True


@dataclass
class Match:
    """One binding of a pattern: variables -> value names (None for an absent
    optional input) or attribute values; `nodes[i]` matched template i."""

    graph: Graph
    nodes: list[Node]
    env: dict[str, Any]
    positions: list[int]    # graph index of nodes[i]

    def __getitem__(self, var: str) -> Any:
        return self.env[var]

    def value(self, var: str) -> Value:
        return self.graph.values[self.env[var]]

    def in_graph_order(self) -> list[Node]:
        return [n for _, n in sorted(zip(self.positions, self.nodes), key=lambda p: p[0])]


Constraint = Callable[[Match], bool]


class Pattern:
    """Op templates + constraints + where the replacement goes (`anchor`)."""

    def __init__(self, text: str, *, where: tuple[Constraint, ...] | list = (),
                 anchor: str = "first", name: str = ""):
        if anchor not in ("first", "last"):
            raise PatternError(f"anchor must be 'first' or 'last', got {anchor!r}")
        self.text = textwrap.dedent(text).strip()
        self.templates = [_parse_line(line) for line in self.text.splitlines()
                          if line.strip() and not line.strip().startswith("#")]
        if not self.templates:
            raise PatternError("a pattern needs at least one op template")
        self.where = list(where)
        self.anchor = anchor
        self.name = name
        self._check_vars()

    def _check_vars(self) -> None:
        value_vars = {v for t in self.templates for v in t.value_vars()}
        attr_vars = {a.name for t in self.templates for a in t.attrs.values()
                     if isinstance(a, _Var)}
        both = (value_vars & attr_vars) - {WILDCARD}
        if both:
            raise PatternError(f"names used both as values and attributes: {sorted(both)}")
        defined: set[str] = set()
        for t in self.templates:
            for out in t.outputs:
                if out != WILDCARD and out in defined:
                    raise PatternError(f"'{out}' is defined twice in the pattern")
                defined.add(out)

    def matches(self, graph: Graph) -> Iterator[Match]:
        """All matches in graph order (lazily; the graph must not change meanwhile)."""
        producers = graph.producers()
        consumers = graph.consumers()
        position = {id(n): i for i, n in enumerate(graph.nodes)}
        by_op: dict[str, list[Node]] = {}
        for node in graph.nodes:
            by_op.setdefault(node.op, []).append(node)

        def candidates(t: Template, env: dict) -> list[Node]:
            for out in t.outputs:
                if out in env:
                    node = producers.get(env[out])
                    return [node] if node is not None and node.op == t.op else []
            for arg in t.args:
                if arg.var in env and env[arg.var]:
                    return [n for n in consumers.get(env[arg.var], []) if n.op == t.op]
            return by_op.get(t.op, [])

        def search(i: int, env: dict, nodes: list[Node]) -> Iterator[Match]:
            if i == len(self.templates):
                match = Match(graph, list(nodes), dict(env), [position[id(n)] for n in nodes])
                if all(check(match) for check in self.where):
                    yield match
                return
            t = self.templates[i]
            for node in candidates(t, env):
                if any(node is n for n in nodes):
                    continue
                for new_env in t.bind(node, env):
                    yield from search(i + 1, new_env, nodes + [node])

        yield from search(0, {}, [])


def _parse_line(line: str) -> Template:
    text = line.split("#", 1)[0].strip()
    try:
        tree = ast.parse(text, mode="exec").body
    except SyntaxError as err:
        raise PatternError(f"cannot parse pattern line {text!r}: {err.msg}") from None
    if (len(tree) != 1 or not isinstance(tree[0], ast.Assign) or len(tree[0].targets) != 1
            or not isinstance(tree[0].value, ast.Call)
            or not isinstance(tree[0].value.func, ast.Name)):
        raise PatternError(f"expected `out = op(args, attr=value)`, found {text!r}")
    target, call = tree[0].targets[0], tree[0].value
    if isinstance(target, ast.Tuple):
        outs = [_name(e, text) for e in target.elts]
    else:
        outs = [_name(target, text)]
    args = []
    for a in call.args:
        if isinstance(a, ast.List):
            if len(a.elts) != 1:
                raise PatternError(f"an optional input is written `[name]`, in {text!r}")
            args.append(_Arg(_name(a.elts[0], text), optional=True))
        else:
            if args and args[-1].optional:
                raise PatternError(f"optional inputs must come last, in {text!r}")
            args.append(_Arg(_name(a, text)))
    attrs: dict[str, Any] = {}
    for kw in call.keywords:
        if isinstance(kw.value, ast.Name):
            attrs[kw.arg] = _Var(kw.value.id)
        else:
            try:
                attrs[kw.arg] = ast.literal_eval(kw.value)
            except ValueError:
                raise PatternError(f"attribute {kw.arg} must be a name or a literal, "
                                   f"in {text!r}") from None
    return Template(call.func.id, args, attrs, outs, text)


def _name(node: ast.expr, text: str) -> str:
    if not isinstance(node, ast.Name):
        raise PatternError(f"expected a variable name, found '{ast.unparse(node)}' in {text!r}")
    return node.id


# --- constraint builders ---------------------------------------------------------

def plain_weights(*vars: str) -> Constraint:
    """Each bound variable is a checkpoint weight as stored (not derived), or a
    row slice of one (a spec's `rows:`), so rewrites can describe a
    concatenation of it to the weight loader (`Rewriter.concat_weight`)."""
    def check(m: Match) -> bool:
        for var in vars:
            name = m.env.get(var)
            if name is None:
                continue
            v = m.graph.values[name]
            if v.kind != "weight" or v.source is None:
                return False
            if v.derive is not None and v.derive[0] != "slice":
                return False
        return True
    return check


def private(*vars: str) -> Constraint:
    """Each value is used only by the matched nodes and is not a graph output
    (the rewrite drops it). `rewrite_all` also enforces this for every dropped
    value; declaring it states the intent and prunes the search early."""
    def check(m: Match) -> bool:
        users = m.graph.consumers()
        matched = {id(n) for n in m.nodes}
        for var in vars:
            name = m.env[var]
            if name in m.graph.outputs:
                return False
            if any(id(u) not in matched for u in users.get(name, [])):
                return False
        return True
    return check


def all_or_none(*vars: str) -> Constraint:
    """Optional inputs present on every matched node or on none."""
    def check(m: Match) -> bool:
        present = {m.env.get(v) is not None for v in vars}
        return len(present) == 1
    return check


def is_output(var: str) -> Constraint:
    """The value is one of the graph's outputs."""
    return lambda m: m.env[var] in m.graph.outputs


def not_produced_by(var: str, *ops: str) -> Constraint:
    """The value is not the output of a node with one of these ops."""
    def check(m: Match) -> bool:
        node = m.graph.producers().get(m.env[var])
        return node is None or node.op not in ops
    return check


# --- rewriting --------------------------------------------------------------------

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
        """A node that keeps the anchor's spec location (errors still name the spec line)."""
        label = name or next((o for o in outputs if o), op)
        return Node(op, list(inputs), list(outputs), dict(attrs or {}), label, self.anchor.loc)


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
