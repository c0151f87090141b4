"""Binding: a `Spec` + a config.json (+ a checkpoint) -> IR `Graph`.

Resolves config symbols, evaluates checks, unrolls the layer body
`count` times, names every value hierarchically (`layers.3/attn/q`), turns
weight templates into checkpoint names with concrete shapes, gives each
attention node its layer's KV cache values, infers shapes, and (when a
checkpoint is given) checks that every weight exists with the expected shape.
Each attribute value is checked against its op's declared type. A node whose
value nothing reads is an error (it is a bug, and it would silently keep
fusions from matching); a weight no op reads, or a checkpoint tensor no weight
reads, is a warning (errors.SpecWarning).
"""
from __future__ import annotations

import ast
from typing import Any, Protocol

from .errors import Loc, SpecError, close_names, nearest, spec_warning
from .expr import evaluate
from .ir import Graph, Node, Value
from .ops import OPS, REQUIRED, attr_problem
from .rope_config import complete_longrope
from .shape_inference import infer_node
from .spec import NodeDecl, Spec, WeightDecl
from .spec_select import other_family, select_spec  # noqa: F401  (select_spec: imported from here)

_MISSING = object()


class WeightSource(Protocol):
    """What binding needs from a checkpoint: names and shapes, no data."""

    def names(self) -> list[str]: ...
    def shape(self, name: str) -> tuple: ...


def lookup_field(config: dict, path: str) -> Any:
    """`rope_parameters.rope_theta` reaches into nested objects."""
    value: Any = config
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def bind_symbols(spec: Spec, config: dict) -> dict[str, Any]:
    env: dict[str, Any] = {}
    for sym in spec.symbols:
        value, null = _MISSING, False
        for path in sym.fields:
            value = lookup_field(config, path)
            if value is not _MISSING and value is not None:
                break
            null = null or value is None
            value = _MISSING
        if value is _MISSING and null and sym.has_if_null:
            value = evaluate(sym.if_null, env, sym.loc)
        elif value is _MISSING:
            if not sym.has_default:
                missing = " or ".join(f"'{f}'" for f in sym.fields)
                hint = nearest(sym.fields[0], config) if sym.fields else []
                raise sym.loc.error(f"config.json has no field {missing} (needed for symbol "
                                    f"'{sym.name}'); add it to config.json or give the symbol "
                                    "a default", hint[0] if hint else None)
            value = evaluate(sym.default, env, sym.loc)
        env[sym.name] = value
    for expr, message, loc in spec.checks:
        if not evaluate(expr, env, loc):
            raise loc.error(f"check failed: {message} ({expr}{_values_of(expr, env)})")
    return env


def _values_of(expr, env: dict[str, Any]) -> str:
    """'; here act = 'gelu'': the symbols a failed check read, so the user sees what
    config.json said, not only what the spec wanted."""
    try:
        tree = ast.parse(expr, mode="eval") if isinstance(expr, str) else expr
    except SyntaxError:
        return ""
    names = dict.fromkeys(n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in env)
    return f"; here {', '.join(f'{n} = {env[n]!r}' for n in names)}" if names else ""


class _Binder:
    def __init__(self, spec: Spec, env: dict, checkpoint: WeightSource | None,
                 allow_unused: bool = False):
        self.spec, self.env, self.checkpoint = spec, env, checkpoint
        self.allow_unused = allow_unused
        self.values: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self.weight_locs: dict[str, Loc] = {}
        self.ckpt_names = set(checkpoint.names()) if checkpoint is not None else None
        # What each node / weight declaration became, over all layers (id(decl) ->
        # (decl, value names)): a declaration none of whose values is read is reported.
        self.node_values: dict[int, tuple[NodeDecl, list[str]]] = {}
        self.weight_values: dict[int, tuple[WeightDecl, list[str]]] = {}

    # -- values -----------------------------------------------------------
    def new_value(self, base: str, **kw) -> str:
        name, n = base, 1
        while name in self.values:
            n += 1
            name = f"{base}.{n}"
        self.values[name] = Value(name, kw.pop("shape", None), **kw)
        return name

    def shape_of(self, dims: list, env: dict, loc: Loc) -> tuple:
        out = []
        for d in dims:
            value = d if d == "T" else evaluate(d, env, loc)
            if value != "T" and (not isinstance(value, int) or value < 0):
                raise loc.error(f"dimension '{d}' evaluates to {value!r}, not a size")
            out.append(value)
        return tuple(out)

    def bind_weights(self, decls: dict[str, WeightDecl], env: dict, scope: dict) -> None:
        for key, decl in decls.items():
            if decl.when is not None and not evaluate(decl.when, env, decl.loc):
                # Absent, but known: an op may name it as an optional input
                # (`linear(x, w, bias)`), which is then left out.
                scope[key] = None
                continue
            if decl.tied_to is not None and evaluate(decl.when_tied, env, decl.loc):
                if scope.get(decl.tied_to) is None:
                    hint = nearest(decl.tied_to, scope)
                    raise decl.loc.error(f"tied_to '{decl.tied_to}' is not a weight declared "
                                         "(and present) before it", hint[0] if hint else None)
                scope[key] = scope[decl.tied_to]
                continue
            try:
                name = decl.name.format(**env)
            except (KeyError, IndexError) as err:
                raise decl.loc.error(f"name template '{decl.name}' uses undefined {err}") from None
            shape = self.shape_of(decl.shape, env, decl.loc)
            if decl.rows is not None:
                scope[key] = self.bind_slice(name, shape, decl, env)
                self.weight_values.setdefault(id(decl), (decl, []))[1].append(scope[key])
                continue
            self.values[name] = Value(name, shape, "float32", "weight", source=name)
            self.weight_locs[name] = decl.loc
            scope[key] = name
            self.weight_values.setdefault(id(decl), (decl, []))[1].append(name)
            self.check_weight(name, shape, decl)

    def bind_slice(self, source: str, shape: tuple, decl: WeightDecl, env: dict) -> str:
        """A weight that is rows [start, stop) of a packed checkpoint tensor:
        value `source[start:stop]`, derive=("slice", [source], (0, start, stop))."""
        loc = decl.loc.child("rows")
        start, stop = (evaluate(r, env, loc) for r in decl.rows)
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop):
            raise loc.error(f"rows evaluate to [{start!r}, {stop!r}], not a row range")
        if stop - start != shape[0]:
            raise loc.error(f"rows [{start}, {stop}) hold {stop - start} rows but the shape "
                            f"says {shape[0]}")
        name = f"{source}[{start}:{stop}]"
        self.values[name] = Value(name, shape, "float32", "weight", source=source,
                                  derive=("slice", [source], (0, start, stop)))
        self.weight_locs[name] = decl.loc
        if self.checkpoint is not None:
            self.check_weight(source, None, decl)
            found = tuple(self.checkpoint.shape(source))
            if decl.packed is not None:
                want = self.shape_of(decl.packed, env, decl.loc.child("packed"))
                if found != want:
                    raise decl.loc.error(f"packed weight '{source}' has shape {list(found)} in "
                                         f"the checkpoint, expected {list(want)}")
            if len(found) != len(shape) or found[1:] != shape[1:] or found[0] < stop:
                raise decl.loc.error(f"packed weight '{source}' has shape {list(found)}: rows "
                                     f"[{start}, {stop}) of it are not {list(shape)}")
        return name

    def check_weight(self, name: str, shape: tuple | None, decl: WeightDecl) -> None:
        if self.checkpoint is None:
            return
        if name not in self.ckpt_names:
            if decl.tied_to is not None:  # an untied head that is not there: a config mistake?
                raise decl.loc.error(
                    f"the checkpoint has no weight '{name}', and the config does not tie it "
                    f"to '{decl.tied_to}' ({decl.when_tied} is false); if this model's head "
                    "shares the embedding matrix, set tie_word_embeddings: true in config.json")
            hint = nearest(name, self.ckpt_names)
            raise decl.loc.error(f"the checkpoint has no weight '{name}'",
                                 hint[0] if hint else None)
        found = tuple(self.checkpoint.shape(name))
        if shape is not None and found != shape:
            dims = ", ".join(str(d) for d in decl.shape)
            raise decl.loc.error(f"weight '{name}' has shape {list(found)} in the checkpoint, "
                                 f"expected {list(shape)} ([{dims}])")

    # -- nodes -------------------------------------------------------------
    def bind_nodes(self, decls: list[NodeDecl], env: dict, scope: dict, prefix: str,
                   section: str) -> None:
        for decl in decls:
            if decl.when is not None and not evaluate(decl.when, env, decl.loc):
                continue
            opdef = OPS[decl.op]
            inputs = []
            for pos, arg in enumerate(decl.args):
                if arg not in scope:
                    raise self.undefined_value(decl, arg, scope, section)
                if scope[arg] is None:          # a weight whose `when:` is false
                    if pos < len(opdef.inputs):
                        raise decl.loc.error(f"op '{decl.op}' needs '{arg}', a weight that is "
                                             "absent here (its `when:` is false)")
                    continue
                if len(inputs) < pos:
                    missing = decl.args[len(inputs)]
                    raise decl.loc.error(f"op '{decl.op}': optional input '{missing}' is "
                                         f"absent, so '{arg}' after it cannot be given")
                inputs.append(scope[arg])
            attrs = {}
            for attr, default in opdef.attrs.items():
                if attr in decl.attrs:
                    value = evaluate(decl.attrs[attr], env, decl.loc)
                    problem = attr_problem(decl.op, attr, value)
                    if problem:
                        text = ast.unparse(decl.attrs[attr])
                        if text != repr(value):     # an expression: say what it was
                            problem += f" (from {attr}={text})"
                        raise decl.loc.error(problem)
                    if attr in opdef.omit_default and (value is None or value == default):
                        continue                # see OpDef.omit_default
                    attrs[attr] = value
                elif attr in opdef.omit_default:
                    continue
                elif default is REQUIRED:
                    raise decl.loc.error(f"op '{decl.op}' needs attribute '{attr}'")
                else:
                    attrs[attr] = default
            out_base = prefix + decl.out.replace(".", "/")
            if opdef.uses_cache:
                inputs += self.new_caches(out_base, attrs)
            out = self.new_value(out_base)
            node = Node(decl.op, inputs, [out], attrs, name=out, loc=decl.loc)
            self.values[out].shape = tuple(infer_node(self._graph(), node)[0])
            self.nodes.append(node)
            scope[decl.out] = out
            self.node_values.setdefault(id(decl), (decl, []))[1].append(out)

    def undefined_value(self, decl: NodeDecl, arg: str, scope: dict, section: str) -> SpecError:
        """Why `arg` is not a value here, and where to fix it."""
        spec = self.spec
        head = f"undefined value '{arg}' used by op '{decl.op}'"
        if arg in spec.layer_weights and section != "body":
            line = spec.layer_weights[arg].loc.line
            return decl.loc.error(f"{head}: '{arg}' is a per-layer weight (layers.weights, "
                                  f"line {line}); only the layer body can read it")
        sections = [("prologue", spec.prologue), ("body", spec.body), ("epilogue", spec.epilogue)]
        order = [name for name, _ in sections]
        for name, decls in sections:
            for other in decls:
                if other.out != arg or other is decl:
                    continue
                earlier = (order.index(name) < order.index(section) or
                           (name == section and other.loc.line < decl.loc.line))
                if not earlier:
                    return decl.loc.error(f"{head}: it is computed later, at line "
                                          f"{other.loc.line}; a value must be computed "
                                          "before it is used")
                if other.when is not None:
                    return decl.loc.error(f"{head}: its node at line {other.loc.line} has "
                                          f"`when: {other.when}`, which is false here")
        if section == "body":
            where, raw = "layers.weights", spec.raw.get("layers")
        else:
            where, raw = "weights", spec.raw
        line = getattr(raw, "lines", {}).get("weights")
        at = f"under `{where}:` (line {line})" if line else f"in a `{where}:` section"
        hint = close_names(arg, [k for k, v in scope.items() if v is not None])
        return decl.loc.error(f"{head}: it is neither a declared weight nor a computed value; "
                              f"declare it {at} or compute it above this line",
                              hint[0] if hint else None)

    def new_caches(self, out_base: str, attrs: dict) -> list[str]:
        """Paged KV cache values for one attention node: [blocks, block_size, kv_heads, head_dim]."""
        parent = out_base.rsplit("/", 1)[0] if "/" in out_base else out_base
        shape = ("blocks", "block_size", attrs["kv_heads"], attrs["head_dim"])
        return [self.new_value(f"{parent}/{kv}_cache", shape=shape, kind="cache")
                for kv in ("k", "v")]

    def _graph(self) -> Graph:
        return Graph(self.spec.family, self.nodes, self.values, [], [])

    # -- whole spec ----------------------------------------------------------
    def bind(self) -> Graph:
        spec, env = self.spec, self.env
        scope: dict[str, str] = {}
        inputs = []
        for name, (dims, dtype, loc) in spec.inputs.items():
            self.values[name] = Value(name, self.shape_of(dims, env, loc), dtype, "input")
            scope[name] = name
            inputs.append(name)
        self.bind_weights(spec.weights, env, scope)
        self.bind_nodes(spec.prologue, env, scope, "", "prologue")
        count = evaluate(spec.layer_count, env, spec.layers_loc)
        if not isinstance(count, int) or count < 0:
            raise spec.layers_loc.error(f"count evaluates to {count!r}, not a layer count")
        for i in range(count):
            layer_env = {**env, spec.layer_index: i}
            for name, expr, loc in spec.layer_let:
                layer_env[name] = evaluate(expr, layer_env, loc)
            layer_scope = dict(scope)
            self.bind_weights(spec.layer_weights, layer_env, layer_scope)
            self.bind_nodes(spec.body, layer_env, layer_scope, f"layers.{i}/", "body")
            # Values the body (re)defines flow into the next layer, e.g. the residual `h`.
            for decl in spec.body:
                if decl.out in layer_scope:
                    scope[decl.out] = layer_scope[decl.out]
        self.bind_nodes(spec.epilogue, env, scope, "", "epilogue")
        outputs = []
        for name, loc in spec.outputs:
            if name not in scope:
                hint = nearest(name, scope)
                raise loc.error(f"undefined output '{name}'", hint[0] if hint else None)
            outputs.append(scope[name])
        self.check_unused(outputs)
        return Graph(spec.family, self.nodes, self.values, inputs, outputs,
                     symbols=dict(env), spec_file=spec.file)

    def check_unused(self, outputs: list[str]) -> None:
        """A value computed but never read is almost always a bug (an input wired to
        the wrong value, a leftover debug line), and it silently changes the graph
        (a fusion needs each matched value to have no other reader): an error. A
        weight no op reads is reported as a warning."""
        read = {name for node in self.nodes for name in node.inputs} | set(outputs)
        unused = [decl for decl, names in self.node_values.values()
                  if not any(n in read for n in names)]
        if unused and not self.allow_unused:
            decl = min(unused, key=lambda d: d.loc.line or 0)
            more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
            raise decl.loc.error(f"value '{decl.out}' is computed but never used{more}; "
                                 f"use it or delete the line{self.skipped_readers(decl)}")
        referenced = {arg for decls in (self.spec.prologue, self.spec.body, self.spec.epilogue)
                      for d in decls for arg in d.args}
        referenced |= {w.tied_to for w in (*self.spec.weights.values(),
                                           *self.spec.layer_weights.values()) if w.tied_to}
        for decls in (self.spec.weights, self.spec.layer_weights):
            for key, decl in decls.items():
                if key not in referenced:
                    decl.loc.warn(f"weight '{key}' is declared but no op reads it; pass it "
                                  "to an op or delete the line")
        for decl, names in self.weight_values.values():
            if decl.key in referenced and not any(n in read for n in names):
                decl.loc.warn(f"weight '{decl.key}' ({names[0]}) is loaded but no op reads "
                              "it with this config (the nodes that name it are left out by "
                              "their `when:`); give it the same `when:`")

    def skipped_readers(self, decl: NodeDecl) -> str:
        """'; its readers ... have a false `when:`' when the spec does read it."""
        readers = [d for decls in (self.spec.prologue, self.spec.body, self.spec.epilogue)
                   for d in decls if decl.out in d.args and id(d) not in self.node_values]
        if not readers:
            return ""
        lines = ", ".join(str(d.loc.line) for d in readers)
        return (f" (the node(s) reading it, line {lines}, are left out by their `when:` "
                "with this config: give this node the same `when:`)")


def bind(spec: Spec, config: dict, checkpoint: WeightSource | None = None, *,
         allow_unused: bool = False) -> Graph:
    """Spec + config (+ checkpoint names/shapes) -> validated IR.

    A node whose value nothing reads is a SpecError (see _Binder.check_unused);
    `allow_unused=True` lets it through silently, for tests that build graphs with
    dead values on purpose (the dead-code pass's)."""
    env = bind_symbols(spec, complete_longrope(config))
    binder = _Binder(spec, env, checkpoint, allow_unused)
    graph = binder.bind()
    if checkpoint is not None:
        _warn_unread(spec, binder.ckpt_names, graph, config)
    return graph


def _warn_unread(spec: Spec, names: set, graph: Graph, config: dict) -> None:
    """A checkpoint tensor no weight reads is usually a spec that forgot it (a
    bias, a norm): the model would load and silently compute something else."""
    read = {v.source for v in graph.values.values() if v.kind == "weight"}
    unread = sorted(n for n in names - read if not n.endswith("rotary_emb.inv_freq"))
    if unread:
        shown = ", ".join(unread[:5]) + (f" and {len(unread) - 5} more" if len(unread) > 5 else "")
        spec_warning(f"{spec.file}: the checkpoint has {len(unread)} tensor(s) the spec never "
                     f"reads: {shown}{other_family(spec, config)}")
