"""The op set: each op's signature and shape rule.

A spec may use the *primitive* ops (what a paper draws). Compiler passes
introduce *fused* ops (registered in `fused_ops.py`); specs may not write those.
Each op's math lives in `interpreter.py` (float32 reference) and in
`rustinfer.kernels` (the implementations plans call).

Every attribute has a type (`OpDef.types`, an `AttrType`): binding checks each
value after evaluating its expression against the config, so `window=True` or
`eps="1e-6"` is a spec error at its line, not a crash (or a silently different
model) in a kernel; the IR verifier checks them again after every pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

REQUIRED = object()  # marks an attribute without a default


class ShapeError(Exception):
    """Raised by a shape rule; the caller adds the node's location."""


class UnsupportedAttr(ShapeError):
    """A shape rule's refusal of an attribute value the op cannot compute (e.g. a rope
    scaling type): reported without the 'shape mismatch' the shapes did not cause."""


@dataclass(frozen=True)
class AttrType:
    """What an attribute's value must be, checked when a spec binds (after its
    expression is evaluated against the config) and by the IR verifier.

    kind: 'int' (a bool is not an int), 'float' (an int is accepted), 'bool',
    'str', 'ints' (a list or tuple of ints) or 'dict' (a config object such as
    rope_scaling). `optional`: None is accepted too (it means the default
    behaviour). `choices`: the only values allowed. `min`: the smallest number.
    """

    kind: str
    optional: bool = False
    choices: tuple = ()
    min: float | None = None

    def describe(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            text = {"int": "an int", "float": "a number", "bool": "true or false",
                    "str": "a string", "ints": "a list of ints",
                    "dict": "a mapping (like config.json's rope_scaling)"}[self.kind]
            if self.min is not None:
                text += f" >= {self.min}"
        return text + (" or None" if self.optional else "")

    def accepts(self, value) -> bool:
        if value is None:
            return self.optional
        if self.choices:
            return value in self.choices and _is_kind(self.kind, value)
        if not _is_kind(self.kind, value):
            return False
        if self.kind == "ints":
            return self.min is None or all(v >= self.min for v in value)
        return self.min is None or value >= self.min

    def problem(self, value) -> str | None:
        """None when `value` fits, else 'must be an int, got True (bool)'."""
        if self.accepts(value):
            return None
        text = f"must be {self.describe()}, got {value!r} ({type(value).__name__})"
        if isinstance(value, str) and self.kind in ("int", "float"):
            try:
                float(value)
                text += "; a number in quotes is a string: drop the quotes"
            except ValueError:
                pass
        elif isinstance(value, str) and self.kind == "bool" and value.lower() in ("true", "false"):
            text += "; write True or False without quotes"
        return text


def _is_kind(kind: str, value) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "ints":
        return isinstance(value, (list, tuple)) and all(_is_kind("int", v) for v in value)
    if kind == "dict":
        return isinstance(value, dict)
    raise ValueError(f"unknown attribute kind {kind!r}")


INT = AttrType("int")
POSITIVE = AttrType("int", min=1)
FLOAT = AttrType("float")


@dataclass(frozen=True)
class OpDef:
    name: str
    inputs: tuple[str, ...]                 # positional inputs, in order
    optional_inputs: tuple[str, ...] = ()   # may follow the required ones
    attrs: dict[str, Any] = field(default_factory=dict)  # name -> default or REQUIRED
    # name -> AttrType, one per attribute. Ops registered elsewhere (fused_ops.py) may
    # leave out attributes they take from a primitive op (heads, eps, ...): register()
    # copies that op's type, so one name means one type across the op set.
    types: dict[str, AttrType] = field(default_factory=dict)
    infer: Callable[..., list] = None       # (shapes, attrs) -> output shapes
    outputs: int = 1
    uses_cache: bool = False                # gets this layer's k/v cache values appended
    primitive: bool = True                  # may be written in a spec
    view: bool = False                      # outputs are views into input 0 (no new memory)
    side_effects: bool = False              # writes a cache: never removed as dead code
    doc: str = ""
    # Attributes a node carries only when set to something other than their
    # default (or None): a model that does not use a feature (a sliding window,
    # a softcap) binds to the same IR, dumps and plan text as before it existed.
    # Every implementation takes them as keyword arguments with that default.
    omit_default: frozenset = frozenset()
    elementwise: bool = False               # out[t, j] depends only on inputs[t, j] (row-wise)
    # (output, input): the output may take the input's bytes when this node is the input's
    # last reader (each element is read before it is written: the residual stream's
    # update, out = residual + x @ W^T, done in place). memory_plan decides.
    inplace: tuple[int, int] | None = None


OPS: dict[str, OpDef] = {}


# Attributes only fused ops have (every other one is typed on its primitive op).
FUSED_ATTR_TYPES = {
    "sizes": AttrType("ints", min=1),
    "act": AttrType("str", optional=True, choices=("swiglu",)),
}


def register(op: OpDef) -> OpDef:
    types = dict(op.types)
    for attr in op.attrs:
        if attr in types:
            continue
        known = [o.types[attr] for o in OPS.values() if attr in o.types]
        known += [FUSED_ATTR_TYPES[attr]] if attr in FUSED_ATTR_TYPES else []
        if not known:
            raise TypeError(f"op '{op.name}': attribute '{attr}' has no declared type "
                            "(give it one in OpDef.types)")
        # None is accepted where the op's default is None or omitted (rms_norm's heads
        # is optional, rope's is not: a fused op's required heads takes rope's type).
        optional = op.attrs[attr] is None or attr in op.omit_default
        types[attr] = next((k for k in known if k.optional == optional), known[0])
    for attr in types:
        if attr not in op.attrs:
            raise TypeError(f"op '{op.name}': types names '{attr}', which is not an attribute")
    op = replace(op, types=types)
    OPS[op.name] = op
    return op


def attr_problem(op: str, attr: str, value) -> str | None:
    """None when `value` fits attribute `attr` of `op`, else what is wrong with it."""
    kind = OPS[op].types.get(attr)
    problem = kind.problem(value) if kind is not None else None
    return f"op '{op}': {attr} {problem}" if problem else None


# --- shape helpers ----------------------------------------------------------

def same_dim(a, b) -> bool:
    return a == b


def fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def expect_rank(what: str, shape, rank: int) -> None:
    if len(shape) != rank:
        raise ShapeError(f"{what} must have rank {rank}, got {fmt(shape)}")


def expect_dim(what: str, got, want) -> None:
    if not same_dim(got, want):
        raise ShapeError(f"{what}: expected {want}, found {got}")


# --- primitive ops ------------------------------------------------------------

def _embedding(shapes, attrs):
    ids, table = shapes
    expect_rank("embedding ids", ids, 1)
    expect_rank("embedding table", table, 2)
    return [(ids[0], table[1])]


def _rms_norm(shapes, attrs):
    x, w = shapes
    expect_rank("rms_norm weight", w, 1)
    heads = attrs.get("heads", 1)
    if not isinstance(heads, int) or heads < 1:
        raise ShapeError(f"rms_norm heads must be a positive int, got {heads!r}")
    if heads == 1:
        expect_dim(f"rms_norm weight {fmt(w)} vs input {fmt(x)}, last dim", w[0], x[-1])
    else:
        expect_dim(f"rms_norm per head: input width {fmt(x)} vs heads {heads} x weight "
                   f"{fmt(w)}", x[-1], heads * w[0])
    return [x]


def _linear(shapes, attrs):
    x, w, *bias = shapes
    expect_rank("linear weight [out, in]", w, 2)
    if not same_dim(x[-1], w[1]):
        raise ShapeError(f"linear: input has {x[-1]} features {fmt(x)} but the weight "
                         f"[out, in] = {fmt(w)} expects {w[1]}")
    if bias:
        expect_rank("linear bias", bias[0], 1)
        expect_dim("linear bias length", bias[0][0], w[0])
    return [tuple(x[:-1]) + (w[0],)]


def _rope(shapes, attrs):
    x, pos = shapes
    expect_rank("rope input", x, 2)
    expect_dim("rope positions length", pos[0], x[0])
    width = attrs["heads"] * attrs["head_dim"]
    expect_dim(f"rope input width (heads {attrs['heads']} x head_dim {attrs['head_dim']})",
               x[1], width)
    if attrs["head_dim"] % 2:
        raise ShapeError(f"rope needs an even head_dim, got {attrs['head_dim']}")
    check_rotary_dim(attrs)
    from rustinfer.kernels.rope_tables import check_scaling

    try:
        check_scaling(attrs.get("scaling"))
    except ValueError as err:
        raise UnsupportedAttr(str(err)) from None
    return [x]


def check_rotary_dim(attrs) -> None:
    rd, d = attrs.get("rotary_dim"), attrs["head_dim"]
    if rd is not None and (not isinstance(rd, int) or rd <= 0 or rd % 2 or rd > d):
        raise ShapeError(f"rotary_dim must be an even int in (0, head_dim={d}], got {rd!r}")


def check_attention_extras(attrs) -> None:
    window, cap = attrs.get("window"), attrs.get("softcap")
    if window is not None and (not isinstance(window, int) or window < 0):
        raise ShapeError(f"attention window must be an int >= 0 (0: no window), got {window!r}")
    if cap is not None and (not isinstance(cap, (int, float)) or cap < 0):
        raise ShapeError(f"attention softcap must be a number >= 0 (0: none), got {cap!r}")


def _attention(shapes, attrs):
    q, k, v, *caches = shapes
    h, kvh, d = attrs["heads"], attrs["kv_heads"], attrs["head_dim"]
    if kvh <= 0 or h % kvh:
        raise ShapeError(f"attention: heads ({h}) must be a multiple of kv_heads ({kvh})")
    expect_dim(f"attention q width (heads {h} x head_dim {d})", q[-1], h * d)
    expect_dim(f"attention k width (kv_heads {kvh} x head_dim {d})", k[-1], kvh * d)
    expect_dim(f"attention v width (kv_heads {kvh} x head_dim {d})", v[-1], kvh * d)
    expect_dim("attention k/q tokens", k[0], q[0])
    check_attention_extras(attrs)
    return [q]


def _elementwise(shapes, attrs):
    first = shapes[0]
    for other in shapes[1:]:
        if tuple(other) != tuple(first):
            raise ShapeError(f"operands differ in shape: {fmt(first)} vs {fmt(other)}")
    return [first]


register(OpDef("embedding", ("ids", "table"), infer=_embedding,
               doc="out[t] = table[ids[t]]"))
register(OpDef("rms_norm", ("x", "weight"), attrs={"eps": REQUIRED, "offset": 0.0, "heads": 1},
               types={"eps": AttrType("float", min=0), "offset": FLOAT,
                      "heads": AttrType("int", optional=True, min=1)},  # None: 1
               infer=_rms_norm, omit_default=frozenset({"heads"}),
               doc="x / sqrt(mean(x^2) + eps) * (weight + offset); with heads=H the last "
                   "dim is H groups of len(weight), each normalized alone (Qwen3 q/k norm)"))
register(OpDef("linear", ("x", "weight"), optional_inputs=("bias",), infer=_linear,
               doc="x @ weight.T (+ bias); weight is [out, in]"))
register(OpDef("rope", ("x", "positions"),
               attrs={"heads": REQUIRED, "head_dim": REQUIRED, "theta": REQUIRED, "scaling": None,
                      "rotary_dim": None},
               types={"heads": POSITIVE, "head_dim": POSITIVE, "theta": FLOAT,
                      "scaling": AttrType("dict", optional=True),
                      "rotary_dim": AttrType("int", optional=True, min=1)},
               infer=_rope, omit_default=frozenset({"rotary_dim"}),
               doc="rotate-half rotary embedding per head; scaling: None or a rope_scaling dict; "
                   "rotary_dim: rotate only the first rotary_dim dims of each head (partial "
                   "rotary, Phi), None = head_dim"))
register(OpDef("attention", ("q", "k", "v"),
               attrs={"heads": REQUIRED, "kv_heads": REQUIRED, "head_dim": REQUIRED,
                      "scale": None, "window": 0, "softcap": 0.0},
               types={"heads": POSITIVE, "kv_heads": POSITIVE, "head_dim": POSITIVE,
                      "scale": AttrType("float", optional=True),
                      # None is the default too (OpDef.omit_default): no window, no cap
                      "window": AttrType("int", optional=True, min=0),
                      "softcap": AttrType("float", optional=True, min=0)},
               infer=_attention, uses_cache=True, side_effects=True,
               omit_default=frozenset({"window", "softcap"}),
               doc="append k/v to this layer's paged cache, then causal GQA attention "
                   "of q over each sequence's cached keys; scale defaults to head_dim**-0.5; "
                   "window > 0: a query at position p sees keys in (p - window, p]; "
                   "softcap > 0: scores = softcap * tanh(scores / softcap) before the mask"))


def _scalar(name):
    def check(shapes, attrs):
        value = attrs[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ShapeError(f"{name} must be a number, got {value!r}")
        return _elementwise(shapes, attrs)
    return check


def _gelu(shapes, attrs):
    if attrs["approximate"] not in ("none", "tanh"):
        raise ShapeError(f"gelu approximate must be 'none' or 'tanh', got {attrs['approximate']!r}")
    return _elementwise(shapes, attrs)


register(OpDef("add", ("a", "b"), infer=_elementwise, elementwise=True, doc="a + b"))
register(OpDef("mul", ("a", "b"), infer=_elementwise, elementwise=True, doc="a * b"))
register(OpDef("silu", ("x",), infer=_elementwise, elementwise=True, doc="x * sigmoid(x)"))
register(OpDef("gelu", ("x",), attrs={"approximate": "none"},
               types={"approximate": AttrType("str", choices=("none", "tanh"))},
               infer=_gelu, elementwise=True,
               doc="GELU as torch computes it: approximate='none' (erf) or 'tanh' "
                   "(transformers' gelu_pytorch_tanh)"))
register(OpDef("scale", ("x",), attrs={"factor": REQUIRED}, types={"factor": FLOAT},
               infer=_scalar("factor"),
               elementwise=True, doc="x * factor (a constant; e.g. Gemma's sqrt(hidden) "
                                     "embedding normalizer)"))
register(OpDef("softcap", ("x",), attrs={"cap": REQUIRED}, types={"cap": FLOAT},
               infer=_scalar("cap"),
               elementwise=True, doc="cap * tanh(x / cap) (e.g. Gemma 2 final logits)"))
