"""Spec front end: a model family's YAML -> a validated `Spec`.

The YAML layout (see specs/llama3.yaml):

    family, matches          which checkpoints the spec serves
    config                   symbols bound to config.json fields
    checks                   expressions over symbols that must hold
    inputs                   per-step inputs and their shapes
    weights                  model-level weights (name template + shape)
    prologue                 nodes before the layers
    layers                   {count, index, let, weights, body}: the repeated layer;
                             `let` defines per-layer symbols, expressions over
                             the layer index (`window: sliding_window if i % 2 == 0 else 0`)
    epilogue                 nodes after the layers
    outputs                  values the step returns

A node is a one-key mapping `out: op(arg, ..., attr=expr)`, optionally with
`when: expr` (the node exists only when the expression is true). A weight may
be a row range of a packed checkpoint tensor (`rows: [start, stop]`) and may
have a `when:`; an optional op input naming an absent weight is left out.
Binding the spec to a config (bind.py) turns it into IR.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import Loc, SpecError, nearest
from .expr import dotted_name, parse
from .ops import OPS, attr_problem
from .yaml_loader import LineDict, LineList, load_yaml

TOP_LEVEL = {"family", "matches", "config", "checks", "inputs", "weights", "prologue",
             "layers", "epilogue", "outputs", "description"}
SYMBOL_KEYS = {"field", "default", "if_null", "doc"}
WEIGHT_KEYS = {"name", "shape", "tied_to", "when_tied", "when", "rows", "packed", "doc"}
INPUT_KEYS = {"shape", "dtype", "doc"}
LAYER_KEYS = {"count", "index", "let", "weights", "body"}
NODE_KEYS = {"when"}
MATCH_KEYS = {"architectures", "model_types"}
INPUT_DTYPES = {"int64", "int32", "float32"}

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"

# Names other frameworks and papers use for a spec op (lower-cased, '-' -> '_'):
# an unknown op that is one of them suggests the op (with a note when it is not
# a plain rename).
OP_ALIASES: dict[str, tuple[str, str]] = {
    "swish": ("silu", ""), "silu_and_mul": ("silu", "then mul(act, up)"),
    "sigmoid_linear_unit": ("silu", ""),
    "gelu_new": ("gelu", "with approximate='tanh'"),
    "gelu_fast": ("gelu", "with approximate='tanh'"),
    "gelu_pytorch_tanh": ("gelu", "with approximate='tanh'"),
    "gelu_tanh": ("gelu", "with approximate='tanh'"),
    "rmsnorm": ("rms_norm", ""), "t5_layer_norm": ("rms_norm", ""),
    "matmul": ("linear", ""), "dense": ("linear", ""), "fc": ("linear", ""),
    "gemm": ("linear", ""), "proj": ("linear", ""),
    "embed": ("embedding", ""), "embed_tokens": ("embedding", ""),
    "rotary": ("rope", ""), "rotary_emb": ("rope", ""), "rotary_embedding": ("rope", ""),
    "apply_rotary_pos_emb": ("rope", ""),
    "attn": ("attention", ""), "self_attn": ("attention", ""),
    "self_attention": ("attention", ""), "sdpa": ("attention", ""),
    "scaled_dot_product_attention": ("attention", ""),
    "multiply": ("mul", ""), "prod": ("mul", ""), "sum": ("add", ""), "plus": ("add", ""),
    "residual": ("add", ""), "tanh_softcap": ("softcap", ""), "soft_cap": ("softcap", ""),
    "mult": ("mul", ""), "scalar_mul": ("scale", ""),
}
# Common ops that have no spec op yet: what to do instead.
MISSING_OPS = {
    "layer_norm": "there is no LayerNorm op yet (rms_norm is RMSNorm, without mean "
                  "subtraction or bias); docs/adding-a-model.md section 7 says how to add one",
    "relu": "there is no relu op yet; docs/adding-a-model.md section 7 says how to add one",
    "softmax": "softmax happens inside attention(); there is no separate softmax op",
}
MISSING_OPS["layernorm"] = MISSING_OPS["layer_norm"]


@dataclass
class SymbolDecl:
    name: str
    fields: list[str]
    default: Any            # expression text/number, or None when no default is given
    has_default: bool
    loc: Loc
    # What a field that is present but null means, when that differs from absent
    # (Gemma 2: a missing attn_logit_softcapping is 50.0, a null one is no softcap).
    if_null: Any = None
    has_if_null: bool = False


@dataclass
class WeightDecl:
    key: str                # the spec-local name (q_proj)
    name: str               # checkpoint name template (model.layers.{i}.self_attn.q_proj.weight)
    shape: list             # expressions
    tied_to: str | None
    when_tied: Any
    when: Any
    loc: Loc
    # A row range [start, stop) of a packed checkpoint tensor (Phi-3's qkv_proj
    # holds q, k and v stacked); `packed` is that tensor's whole shape, checked
    # when given. Expressions, evaluated per layer.
    rows: list | None = None
    packed: list | None = None


@dataclass
class NodeDecl:
    out: str                # output variable (may be dotted: attn.q)
    op: str
    args: list[str]         # variable / weight / input names
    attrs: dict[str, ast.expr]
    when: Any
    loc: Loc


@dataclass
class Spec:
    file: str
    family: str
    architectures: list[str]
    model_types: list[str]
    symbols: list[SymbolDecl]
    checks: list[tuple[str, str, Loc]]
    inputs: dict[str, tuple[list, str, Loc]]
    weights: dict[str, WeightDecl]
    prologue: list[NodeDecl]
    layer_count: Any
    layer_index: str
    layer_weights: dict[str, WeightDecl]
    body: list[NodeDecl]
    epilogue: list[NodeDecl]
    outputs: list[tuple[str, Loc]]
    layers_loc: Loc | None = None
    raw: dict = field(default_factory=dict, repr=False)
    # Per-layer symbols, in order: (name, expression, loc), evaluated with the index bound.
    layer_let: list = field(default_factory=list)


def spec_path(name_or_path: str | Path) -> Path:
    """`llama3` or `specs/llama3.yaml` or any path -> the spec file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = SPECS_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(x.stem for x in SPECS_DIR.glob("*.yaml"))
    hint = nearest(str(name_or_path), known)
    raise SpecError(f"no spec file '{name_or_path}'; known specs: {', '.join(known)}",
                    file=str(name_or_path), suggestion=hint[0] if hint else None)


def load_spec(path: str | Path) -> Spec:
    path = spec_path(path)
    return parse_spec(path.read_text(), display_name(path))


def display_name(path: Path) -> str:
    """How errors and reports name a spec file: specs/NAME.yaml for bundled specs."""
    if path.resolve().parent == SPECS_DIR:
        return f"specs/{path.name}"
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def parse_spec(text: str, filename: str) -> Spec:
    data = load_yaml(text, filename)
    root = Loc(filename, 1, None)
    if not isinstance(data, LineDict):
        raise root.error("a spec must be a YAML mapping (family:, config:, layers: ...)")
    _check_keys(data, TOP_LEVEL, root, required=("family", "config", "layers", "outputs"))

    def at(key: str) -> Loc:
        return root.child(key, data.lines.get(key))

    matches = data.get("matches") or LineDict()
    _check_keys(matches, MATCH_KEYS, at("matches"))
    layers = data["layers"]
    if not isinstance(layers, LineDict):
        raise at("layers").error("must be a mapping with count, index, weights and body")
    _check_keys(layers, LAYER_KEYS, at("layers"), required=("count", "body"))
    layers_loc = at("layers")

    def layer_at(key: str) -> Loc:
        return layers_loc.child(key, layers.lines.get(key))

    return Spec(
        file=filename,
        family=str(data["family"]),
        architectures=list(matches.get("architectures") or []),
        model_types=list(matches.get("model_types") or []),
        symbols=_parse_symbols(data["config"], at("config")),
        checks=_parse_checks(data.get("checks") or LineList(), at("checks")),
        inputs=_parse_inputs(data.get("inputs") or LineDict(), at("inputs")),
        weights=_parse_weights(data.get("weights") or LineDict(), at("weights")),
        prologue=_parse_nodes(data.get("prologue") or LineList(), at("prologue")),
        layer_count=layers["count"],
        layer_index=str(layers.get("index", "i")),
        layer_weights=_parse_weights(layers.get("weights") or LineDict(), layer_at("weights")),
        body=_parse_nodes(layers["body"], layer_at("body")),
        epilogue=_parse_nodes(data.get("epilogue") or LineList(), at("epilogue")),
        outputs=_parse_outputs(data["outputs"], at("outputs")),
        layers_loc=layers_loc,
        raw=data,
        layer_let=_parse_let(layers.get("let") or LineDict(), layer_at("let")),
    )


def _check_keys(mapping, allowed: set, loc: Loc, required: tuple = ()) -> None:
    if not isinstance(mapping, dict):
        raise loc.error(f"expected a mapping, got {type(mapping).__name__}")
    for key in mapping:
        if key not in allowed:
            line = mapping.lines.get(key) if isinstance(mapping, LineDict) else loc.line
            hint = nearest(key, allowed)
            raise loc.child(str(key), line).error(
                f"unknown key '{key}' (allowed: {', '.join(sorted(allowed))})",
                hint[0] if hint else None)
    for key in required:
        if key not in mapping:
            raise loc.error(f"missing required key '{key}'")


def _parse_symbols(config, loc: Loc) -> list[SymbolDecl]:
    if not isinstance(config, LineDict):
        raise loc.error("must map symbol names to {field: ..., default: ...}")
    out = []
    for name, decl in config.items():
        sloc = loc.child(str(name), config.lines[name])
        if isinstance(decl, str):           # shorthand: `hidden: hidden_size`
            decl = LineDict(field=decl)
        _check_keys(decl, SYMBOL_KEYS, sloc)
        fields = decl.get("field") or []
        fields = [fields] if isinstance(fields, str) else list(fields)
        if not fields and "default" not in decl:
            raise sloc.error("needs a 'field' (a config.json key) or a 'default' expression")
        if "if_null" in decl and not fields:
            raise sloc.error("'if_null' says what a null config.json field means; give the "
                             "'field' too")
        out.append(SymbolDecl(str(name), fields, decl.get("default"), "default" in decl, sloc,
                              decl.get("if_null"), "if_null" in decl))
    return out


def _parse_let(let, loc: Loc) -> list[tuple[str, Any, Loc]]:
    if not isinstance(let, LineDict):
        raise loc.error("must map per-layer symbol names to expressions, e.g. "
                        "`window: sliding_window if i % 2 == 0 else 0`")
    return [(str(name), expr, loc.child(str(name), let.lines[name])) for name, expr in let.items()]


def _parse_checks(checks, loc: Loc) -> list[tuple[str, str, Loc]]:
    out = []
    for idx, item in enumerate(checks):
        cloc = loc.child(f"[{idx}]", checks.lines[idx])
        _check_keys(item, {"expr", "message"}, cloc, required=("expr",))
        out.append((str(item["expr"]), str(item.get("message", item["expr"])), cloc))
    return out


def _parse_inputs(inputs, loc: Loc) -> dict:
    out = {}
    for name, decl in inputs.items():
        iloc = loc.child(str(name), inputs.lines[name])
        _check_keys(decl, INPUT_KEYS, iloc, required=("shape",))
        dtype = str(decl.get("dtype", "float32"))
        if dtype not in INPUT_DTYPES:
            hint = nearest(dtype, INPUT_DTYPES)
            raise iloc.child("dtype", decl.lines.get("dtype")).error(
                f"unknown dtype '{dtype}'", hint[0] if hint else None)
        out[str(name)] = (list(decl["shape"]), dtype, iloc)
    return out


def _parse_weights(weights, loc: Loc) -> dict[str, WeightDecl]:
    if not isinstance(weights, LineDict):
        raise loc.error("must map local weight names to {name: ..., shape: [...]}")
    out = {}
    for key, decl in weights.items():
        wloc = loc.child(str(key), weights.lines[key])
        _check_keys(decl, WEIGHT_KEYS, wloc, required=("name", "shape"))
        if not isinstance(decl["shape"], list):
            raise wloc.child("shape", decl.lines.get("shape")).error(
                "must be a list of dimension expressions, e.g. [hidden, vocab]")
        rows, packed = decl.get("rows"), decl.get("packed")
        if rows is not None and (not isinstance(rows, list) or len(rows) != 2):
            raise wloc.child("rows", decl.lines.get("rows")).error(
                "must be [start, stop]: the row range of the packed checkpoint tensor")
        if packed is not None and (not isinstance(packed, list) or rows is None):
            raise wloc.child("packed", decl.lines.get("packed")).error(
                "must be a list of dimension expressions, and needs 'rows'")
        out[str(key)] = WeightDecl(str(key), str(decl["name"]), list(decl["shape"]),
                                   decl.get("tied_to"), decl.get("when_tied"),
                                   decl.get("when"), wloc, rows,
                                   list(packed) if packed is not None else None)
    return out


def _parse_outputs(outputs, loc: Loc) -> list[tuple[str, Loc]]:
    if isinstance(outputs, str):
        return [(outputs, loc)]
    return [(str(o), loc.child(f"[{i}]", outputs.lines[i])) for i, o in enumerate(outputs)]


def _parse_nodes(items, loc: Loc) -> list[NodeDecl]:
    if not isinstance(items, LineList):
        raise loc.error("must be a list of nodes like `- out: op(arg, attr=expr)`")
    return [_parse_node(item, loc.child(f"[{idx}]", items.lines[idx]))
            for idx, item in enumerate(items)]


def _parse_node(item, loc: Loc) -> NodeDecl:
    if not isinstance(item, LineDict):
        raise loc.error("a node is a mapping `out: op(args)`")
    outs = [k for k in item if k not in NODE_KEYS]
    if len(outs) != 1:
        raise loc.error(f"a node has exactly one output `name: op(...)`, found {outs or 'none'}")
    out = str(outs[0])
    text = item[out]
    call = parse(str(text), loc)
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise loc.error(f"expected a call like `op(arg, attr=value)`, found {text!r}")
    op = call.func.id
    opdef = OPS.get(op)
    if opdef is None or not opdef.primitive:
        raise _unknown_op(op, loc)
    args = []
    for arg in call.args:
        name = dotted_name(arg)
        if name is None:
            raise loc.error(f"op '{op}': inputs must be names, found '{ast.unparse(arg)}' "
                            "(attributes are passed as key=value)")
        args.append(name)
    n_min, n_max = len(opdef.inputs), len(opdef.inputs) + len(opdef.optional_inputs)
    if not n_min <= len(args) <= n_max:
        want = f"{n_min}" if n_min == n_max else f"{n_min} to {n_max}"
        noun = "input" if n_max == 1 else "inputs"
        sig = ", ".join(opdef.inputs + tuple(f"[{o}]" for o in opdef.optional_inputs))
        raise loc.error(f"op '{op}' takes {want} {noun} ({sig}), got {len(args)}")
    attrs = {}
    for kw in call.keywords:
        if kw.arg not in opdef.attrs:
            hint = nearest(kw.arg or "", opdef.attrs)
            allowed = ", ".join(opdef.attrs) or "none"
            raise loc.error(f"op '{op}' has no attribute '{kw.arg}' (attributes: {allowed})",
                            hint[0] if hint else None)
        if kw.arg in attrs:
            raise loc.error(f"op '{op}': attribute '{kw.arg}' is given twice")
        constant = _constant(kw.value)
        if constant is not _NOT_CONSTANT:     # expressions are checked when bound
            problem = attr_problem(op, kw.arg, constant)
            if problem:
                raise loc.error(problem)
        attrs[kw.arg] = kw.value
    return NodeDecl(out, op, args, attrs, item.get("when"), loc)


_NOT_CONSTANT = object()


def _constant(node: ast.expr):
    """The value of a literal attribute (`window=True`, `eps="1e-6"`, `factor=-1.0`)."""
    if isinstance(node, ast.Constant):
        return node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
            and isinstance(node.operand, ast.Constant)
            and type(node.operand.value) in (int, float)):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    return _NOT_CONSTANT


def _unknown_op(op: str, loc: Loc) -> SpecError:
    from . import fused_ops  # noqa: F401  (registers the fused ops, to name them)

    spec_ops = sorted(n for n, d in OPS.items() if d.primitive)
    listed = f"spec ops: {', '.join(spec_ops)}"
    if op in OPS:                       # a fused op: the compiler's, not the spec's
        return loc.error(f"unknown op '{op}': it is a fused op that compiler passes "
                         f"introduce; write the unfused math ({listed})")
    key = op.lower().replace("-", "_")
    if key in MISSING_OPS:
        return loc.error(f"unknown op '{op}': {MISSING_OPS[key]} ({listed})")
    if key in OP_ALIASES:
        target, note = OP_ALIASES[key]
        return loc.error(f"unknown op '{op}'" + (f" (write {target}(...) {note})" if note else ""),
                         target)
    hint = nearest(op, spec_ops)
    if hint:
        return loc.error(f"unknown op '{op}'", hint[0])
    return loc.error(f"unknown op '{op}' ({listed})")
