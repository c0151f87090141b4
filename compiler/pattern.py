"""Declarative subgraph patterns: the template language, the matcher, constraints.

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

The driver that rewrites every match (`rewrite_all`, `Rewriter`) is rewrite.py.
"""
from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .ir import Graph, Node, Value

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
    concatenation of it to the weight loader (`rewrite.Rewriter.concat_weight`)."""
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
