"""JSON Schema -> the small table of nodes JSON mode's automaton follows (json_constraint.py).

Supported:
- `type` (one or a list), `properties` / `required` / `additionalProperties`, `items`,
  `prefixItems` (tuples);
- `minItems` / `maxItems`, `minLength` / `maxLength` (characters: code points, an escape
  one), `minimum` / `maximum` / `exclusiveMinimum` / `exclusiveMaximum` / `multipleOf`
  (json_numbers.py);
- `format` `date`, `time`, `date-time`, `uuid`, and `email`, `ipv4`, `ipv6`, `hostname`,
  `uri`, `duration` as patterns (json_formats.py), `pattern` (json_pattern.py: a regular
  expression's common subset), with or without minLength / maxLength (json_strings.py,
  json_pattern_lengths.py);
- `enum`, `const`, `anyOf` / `oneOf`, `$ref` into `$defs` / `definitions` (recursive too),
  `allOf` wrapping one schema;
- annotations, which are ignored (`title`, `description`, ...).
That covers what OpenAI's strict structured outputs and pydantic's `model_json_schema()`
write (pydantic's `min_length` / `max_length` and `ge` / `gt` / `le` / `lt` included).

The automaton produces a subset of the valid instances, always valid ones:
- an object with `properties` has exactly those keys, in the schema's order, the optional
  ones maybe left out (no additional keys, even where the schema would allow them);
- `enum` / `const` values are written as `json.dumps` spells them;
- `anyOf` / `oneOf` / a `type` list: branches that start alike are followed together until
  the text tells them apart (pydantic's unions of models). `oneOf` asks that exactly one
  branch match, which the automaton does not check: its branches must start differently,
  unless a `discriminator` (pydantic's tagged unions) says they exclude each other;
- an object or array that would not fit in the nesting limit (32) is not started;
- a number with bounds is written in plain decimal, without an exponent.

A keyword that constrains values in a way the automaton cannot hold (another `format`,
`uniqueItems`, an `allOf` of several schemas, `not`, ...) is refused, naming it and
where it is: dropping it silently would produce answers that fail the schema. Bounds without a `type` make the
value a string (`minLength`, `format`, `pattern`), an array (`minItems`) or a number
(`minimum`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .json_numbers import number_range
from .json_strings import string_format, string_pattern

# Node kinds: ("any",) ("object", props, extra)
# ("array", items, min items, max items or None, prefixItems' nodes)
# ("string", min length, max length or None, format or None, Pattern or None)
# ("number", integer, NumberRange or None)
# ("boolean",) ("null",)
# ("lits", sorted spellings) ("union", branches, {first byte: branches})
ANY, ANY_OBJECT, ANY_ARRAY = 0, 1, 2
MAX_DEPTH = 32                          # containers open at once (json_constraint.py holds to it)
_UNBOUNDED = 1 << 30

ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment",
                         "deprecated", "readOnly", "writeOnly", "$defs", "definitions",
                         "discriminator"})
KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "items", "enum",
                      "const", "anyOf", "oneOf", "$ref", "minItems", "maxItems", "minLength",
                      "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                      "format", "pattern", "prefixItems", "allOf", "multipleOf"})
_NUMBER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_BOUNDS = {"array": ("minItems", "maxItems"), "string": ("minLength", "maxLength")}
_MOST_ITEMS = 1 << 20                  # minLength / minItems above this: no answer gets there
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_FIRST = {"object": b"{", "array": b"[", "string": b'"', "number": b"-0123456789",
          "boolean": b"tf", "null": b"n"}


class SchemaError(ValueError):
    """A schema rustinfer cannot hold the output to; the message says which part and why."""


def _refuse(message: str):
    raise SchemaError(message)


@dataclass
class Schema:
    nodes: list[tuple] = field(default_factory=lambda: [("any",), ("object", (), ANY),
                                                        ("array", ANY, 0, None, ())])
    root: int = ANY_OBJECT
    key: str = "json_object"           # what the masks are cached under

    def first_bytes(self, node: int, _seen: frozenset = frozenset()) -> frozenset[int] | None:
        """The bytes a value of node can start with (None: any value's)."""
        kind = self.nodes[node][0]
        if kind == "any":
            return None
        if kind == "lits":
            return frozenset(c[0] for c in self.nodes[node][1])
        if kind == "union":
            if node in _seen:                          # a union that is its own branch
                return frozenset()
            out: set[int] = set()
            for b in self.nodes[node][1]:
                part = self.first_bytes(b, _seen | {node})
                if part is None:
                    return None
                out |= part
            return frozenset(out)
        return frozenset(_FIRST["number" if kind == "number" else kind])


JSON_OBJECT = Schema()


def compile_schema(schema) -> Schema:
    """The node table for a JSON Schema (a dict); SchemaError when a part is not supported."""
    if not isinstance(schema, dict):
        raise SchemaError(f"the schema must be a JSON object, got {type(schema).__name__}")
    out = Schema(key=json.dumps(schema))              # not sort_keys: the order of keys matters
    refs: dict[str, int] = {}
    compiling: set[int] = set()                       # placeholders of $refs being compiled
    exclusive: dict[int, str] = {}                    # a oneOf's union node -> where it is

    def add(node: tuple) -> int:
        out.nodes.append(node)
        return len(out.nodes) - 1

    def resolve(ref: str, where: str) -> dict:
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise SchemaError(f"{where}: only local $ref ('#/$defs/Name') is supported, got {ref!r}")
        target = schema
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise SchemaError(f"{where}: $ref {ref!r} points at nothing in the schema")
            target = target[part]
        return target

    def node(s, where: str) -> int:
        if s is True or s == {}:
            return ANY
        if not isinstance(s, dict):
            raise SchemaError(f"{where}: a schema must be an object or true, got {s!r}")
        unknown = sorted(k for k in s if k not in KEYWORDS and k not in ANNOTATIONS)
        if unknown:
            raise SchemaError(f"{where}: JSON Schema keyword(s) {', '.join(unknown)} not supported "
                              f"(supported: {', '.join(sorted(KEYWORDS))}); drop them or hold the "
                              "answer to them yourself")
        for key, fine in (("$ref", ()), ("const", ("type",)), ("enum", ("type",)), ("anyOf", ()),
                          ("oneOf", ()), ("allOf", ())):
            beside = sorted(k for k in s if k in KEYWORDS and k != key and k not in fine)
            if key in s and beside:                   # they would be dropped: answers could fail
                raise SchemaError(f"{where}: {key} next to {', '.join(beside)} is not supported; "
                                  f"move them into the {key}'s schemas")
        if "allOf" in s:
            # One schema wrapped (pydantic before 2.9 and OpenAPI generators write
            # {"allOf": [{"$ref": ...}], "description": ...}): that schema. An intersection of
            # several would need them merged, which is not done.
            parts = s["allOf"]
            if not isinstance(parts, list) or not parts:
                raise SchemaError(f"{where}: allOf must be a non-empty list")
            kept = [(i, p) for i, p in enumerate(parts) if p is not True and p != {}]
            if len(kept) > 1:
                raise SchemaError(f"{where}: allOf of {len(kept)} schemas is not supported (only "
                                  "one schema wrapped); merge them into one schema")
            return node(kept[0][1], f"{where}.allOf[{kept[0][0]}]") if kept else ANY
        if "$ref" in s:
            ref = s["$ref"]
            if ref not in refs:
                refs[ref] = add(("any",))             # a placeholder: recursive schemas
                compiling.add(refs[ref])
                target = node(resolve(ref, where), ref)
                compiling.discard(refs[ref])
                # {"$ref": itself}, or A -> B -> A through $ref / allOf alone: no schema at
                # all (the placeholder, any value, would be copied round the cycle)
                if target == refs[ref] or target in compiling:
                    raise SchemaError(f"{where}: $ref {ref!r} refers only to itself"
                                      + ("" if target == refs[ref] else " (through other $refs)"))
                out.nodes[refs[ref]] = out.nodes[target]
            return refs[ref]
        if "const" in s or "enum" in s:
            values = [s["const"]] if "const" in s else s["enum"]
            if not isinstance(values, list) or not values:
                raise SchemaError(f"{where}: enum must be a non-empty list")
            if "type" in s:                           # values of another type cannot validate
                values = [v for v in values if _of_type(v, s["type"])]
                if not values:
                    raise SchemaError(f"{where}: no {'const' if 'const' in s else 'enum'} value is "
                                      f"of type {s['type']!r}")
            return add(("lits", tuple(sorted({_spell(v, where) for v in values}))))  # bisect
        for key in ("anyOf", "oneOf"):
            if key in s:
                if not isinstance(s[key], list) or not s[key]:
                    raise SchemaError(f"{where}: {key} must be a non-empty list")
                # oneOf: exactly one branch may match. Branches that start alike can both
                # match, unless a discriminator (pydantic's tagged unions) tells them apart.
                only_one = key == "oneOf" and "discriminator" not in s
                return union([node(b, f"{where}.{key}[{i}]") for i, b in enumerate(s[key])],
                             where if only_one else None)
        kind = s.get("type")
        if kind is None:                              # the keywords say which, if any
            if {"properties", "required", "additionalProperties"} & s.keys():
                kind = "object"
            elif {"items", "prefixItems", "minItems", "maxItems"} & s.keys():
                kind = "array"
            elif {"minLength", "maxLength", "format", "pattern"} & s.keys():
                kind = "string"
            elif set(_NUMBER_BOUNDS) & s.keys():
                kind = "number"
            else:
                return ANY
        if isinstance(kind, list):
            return union([node({**s, "type": k}, f"{where}.type[{i}]") for i, k in enumerate(kind)])
        if kind not in TYPES:
            raise SchemaError(f"{where}: type {kind!r} is not a JSON Schema type ({', '.join(TYPES)})")
        if kind == "object":
            return obj(s, where)
        if kind == "array":
            return array(s, where)
        if kind == "string":
            lo, hi = bounds(s, kind, where)
            return add(("string", lo, hi, string_format(s, where, _refuse),
                        string_pattern(s, where, lo, hi, _refuse)))
        if kind in ("number", "integer"):
            return add(("number", kind == "integer",
                        number_range(s, kind == "integer", where, _refuse)))
        return add((kind,))

    def array(s: dict, where: str) -> int:
        """("array", items, min, max, prefix): prefixItems (pydantic's tuples) give the first
        items' schemas, items the rest's; items false allows no more."""
        prefix = s.get("prefixItems", [])
        if not isinstance(prefix, list):
            raise SchemaError(f"{where}: prefixItems must be a list of schemas")
        lo, hi = bounds(s, "array", where)
        items = s.get("items", True)
        if items is False:
            hi = len(prefix) if hi is None else min(hi, len(prefix))
            if hi < lo:
                raise SchemaError(f"{where}: items false after {len(prefix)} prefixItems leaves "
                                  f"fewer than minItems {lo}")
        return add(("array", ANY if items is False else node(items, f"{where}.items"), lo, hi,
                    tuple(node(p, f"{where}.prefixItems[{i}]") for i, p in enumerate(prefix))))

    def bounds(s: dict, kind: str, where: str) -> tuple[int, int | None]:
        """(min, max or None) of an array's items or a string's characters (code points)."""
        lo_key, hi_key = _BOUNDS[kind]
        lo, hi = s.get(lo_key, 0), s.get(hi_key)
        for key, v in ((lo_key, lo), (hi_key, hi)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise SchemaError(f"{where}: {key} must be a non-negative integer, got {v!r}")
        if hi is not None and hi < lo:
            raise SchemaError(f"{where}: {lo_key} {lo} is more than {hi_key} {hi}: no value fits")
        if lo > _MOST_ITEMS:                          # no answer could reach it
            raise SchemaError(f"{where}: {lo_key} {lo} is more than an answer can hold "
                              f"({_MOST_ITEMS})")
        return lo, hi

    def obj(s: dict, where: str) -> int:
        props = s.get("properties") or {}
        if not isinstance(props, dict):
            raise SchemaError(f"{where}: properties must be an object")
        required = s.get("required") or []
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError(f"{where}: required must be a list of property names")
        required = set(required)
        missing = sorted(required - set(props))
        if missing:
            raise SchemaError(f"{where}: required names {missing} that properties does not declare")
        slot = add(("any",))                          # before the children: a stable id
        extra = None
        if not props:
            more = s.get("additionalProperties", True)
            extra = None if more is False else node(more, f"{where}.additionalProperties")
        out.nodes[slot] = ("object", tuple(
            (_spell(name, where)[1:-1], node(p, f"{where}.properties.{name}"),
             name in required) for name, p in props.items()), extra)
        return slot

    def union(branches: list[int], exclusive_where: str | None = None) -> int:
        # Which branches each first byte may start is worked out once every $ref is
        # resolved: a branch may be a $ref still being compiled (a recursive placeholder).
        u = add(("union", tuple(branches), None))
        if exclusive_where is not None:
            exclusive[u] = exclusive_where
        return u

    out.root = node(schema, "schema")
    for u, spec in enumerate(out.nodes):              # $ref copies of unions included
        if spec[0] == "union" and spec[2] is None:
            # oneOf: checked on its own branches, before integer | number becomes number
            # (2 is both: oneOf fails) and before a branch that is any value swallows all
            alike = _alike(out, u) if u in exclusive else []
            if alike:
                raise SchemaError(f"{exclusive[u]}: oneOf branches that can start alike "
                                  f"({', '.join(map(repr, alike))}) could both match; "
                                  "use anyOf, or a discriminator (pydantic's tagged unions)")
            out.nodes[u] = _first_branches(out, u)
    if min_depths(out.nodes)[out.root] > MAX_DEPTH:
        raise SchemaError(f"schema: no instance fits in {MAX_DEPTH} nested objects / arrays (does "
                          "a required property require itself, through $ref?)")
    return out


def min_depths(nodes: list[tuple]) -> list[int]:
    """Per node: the fewest containers a value of it must open one inside another (0: a
    scalar will do; an array may be empty; an object opens its required properties')."""
    need = [_UNBOUNDED] * len(nodes)
    changed = True
    while changed:                                    # a fixpoint: $ref makes cycles
        changed = False
        for i, spec in enumerate(nodes):
            kind = spec[0]
            if kind == "object":
                v = 1 + max([need[p[1]] for p in spec[1] if p[2]], default=0)
            elif kind == "array":                    # and the items it must have
                v = 1 + max([need[spec[4][i] if i < len(spec[4]) else spec[1]]
                             for i in range(min(spec[2], len(spec[4]) + 1))], default=0)
            elif kind == "union":
                v = min(need[b] for b in spec[1])
            else:
                v = 0
            if v < need[i]:
                need[i], changed = v, True
    return need


def _first_branches(out: Schema, u: int) -> tuple:
    """A union's node with its map first byte -> the branches a value starting with it may
    be (json_constraint.py follows all of them at once until one is left), or ("any",)
    when a branch is any value."""
    branches = out.nodes[u][1]
    if any(out.nodes[b] == ("number", False, None) for b in branches):
        # integer | number (pydantic's int | float) is number: integers are numbers
        branches = tuple(b for b in branches if out.nodes[b][:2] != ("number", True))
    first: dict[int, tuple] = {}
    for b in branches:
        starts = out.first_bytes(b, frozenset({u}))
        if starts is None:
            return ("any",)                            # one branch is any value: so is the union
        for byte in starts:
            first[byte] = first.get(byte, ()) + (b,)
    return ("union", branches, first)


def _alike(out: Schema, u: int) -> list[str]:
    """The first bytes that more than one of a union's branches may start with (sorted)."""
    seen: set[int] = set()
    alike: set[int] = set()
    for b in out.nodes[u][1]:
        starts = out.first_bytes(b, frozenset({u}))
        starts = range(256) if starts is None else starts      # any value: every start
        alike |= seen & set(starts)
        seen |= set(starts)
    return [chr(b) for b in sorted(alike)]


def _of_type(value, kind) -> bool:
    kinds = kind if isinstance(kind, list) else [kind]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return any({"null": value is None, "boolean": isinstance(value, bool),
                "integer": number and (isinstance(value, int) or value.is_integer()),
                "number": number,
                "string": isinstance(value, str), "array": isinstance(value, list),
                "object": isinstance(value, dict)}.get(k, False) for k in kinds)


def _spell(value, where: str) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:                        # JSON's "\ud800": no UTF-8 spells it
        raise SchemaError(f"{where}: a lone surrogate in {value!r} is not text; pydantic "
                          "refuses it in an answer") from None
