"""A small, safe expression language for specs.

Specs compute symbols from config fields (`hidden // n_heads`), guard optional
parts (`when: attention_bias`) and write ops as calls
(`q: linear(x, q_proj)`). All of it is Python expression syntax parsed with
`ast` and evaluated over a whitelist: names, numbers, strings, None/True/False,
arithmetic, comparisons, `and`/`or`/`not`, `a if c else b`, subscripts of dicts
and lists, and the functions in FUNCTIONS. Nothing is exec'd.
"""
from __future__ import annotations

import ast
import math
import operator
from typing import Any, Callable

from .errors import Loc, nearest


def as_dtype(value: float, dtype: str) -> float:
    """`value` rounded to what a tensor of `dtype` ('bfloat16', 'float16', ...) holds.

    Some models multiply by a constant that the original code first stores in
    the checkpoint's dtype (Gemma's embedding normalizer sqrt(hidden), which is
    59.75 rather than 59.866 in bfloat16); the spec can say so."""
    import torch

    torch_dtype = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"as_dtype: unknown dtype {dtype!r}")
    return float(torch.tensor(float(value), dtype=torch_dtype).item())


FUNCTIONS: dict[str, Callable] = {
    "min": min, "max": max, "abs": abs, "int": int, "float": float, "bool": bool, "len": len,
    "sqrt": math.sqrt, "get": lambda d, k, default=None: (d or {}).get(k, default),
    "as_dtype": as_dtype,
}

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_COMPARE = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}


def parse(text: str, loc: Loc) -> ast.expr:
    try:
        return ast.parse(str(text).strip(), mode="eval").body
    except SyntaxError as err:
        raise loc.error(f"cannot parse expression {text!r}: {err.msg}") from None


def evaluate(node: ast.expr | str | int | float | bool | None, env: dict[str, Any], loc: Loc) -> Any:
    """Evaluate an expression (text or parsed) with the symbols in `env`."""
    if node is None or isinstance(node, (bool, int, float)):
        return node
    if isinstance(node, str):
        node = parse(node, loc)
    return _Evaluator(env, loc).visit(node)


def dotted_name(node: ast.expr) -> str | None:
    """`attn.q` -> 'attn.q'; None when the node is not a (dotted) name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


class _Evaluator(ast.NodeVisitor):
    def __init__(self, env: dict[str, Any], loc: Loc):
        self.env, self.loc = env, loc

    def generic_visit(self, node):
        raise self.loc.error(f"'{ast.unparse(node)}' is not allowed in a spec expression")

    def visit_Constant(self, node):
        return node.value

    def visit_Name(self, node, compared_with_string: bool = False):
        if node.id in self.env:
            return self.env[node.id]
        if compared_with_string or node.id in _strings(self.env.values()):
            # `act == silu`: a bare word is a symbol name; the string is 'silu'.
            raise self.loc.error(f"undefined symbol '{node.id}' (a string needs quotes: "
                                 f"'{node.id}')")
        hint = nearest(node.id, self.env)
        raise self.loc.error(f"undefined symbol '{node.id}'", hint[0] if hint else None)

    def visit_BinOp(self, node):
        fn = _BINARY.get(type(node.op))
        if fn is None:
            return self.generic_visit(node)
        left, right = self.visit(node.left), self.visit(node.right)
        try:
            return fn(left, right)
        except (TypeError, ValueError, ArithmeticError) as err:
            raise self._operands_error(node, err, left, right) from None

    def visit_UnaryOp(self, node):
        value = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            return not value
        try:
            if isinstance(node.op, ast.USub):
                return -value
            if isinstance(node.op, ast.UAdd):
                return +value
        except TypeError as err:
            raise self._operands_error(node, err, value) from None
        return self.generic_visit(node)

    def _operands_error(self, node, err, *values):
        """`n_heads % n_kv_heads` with a config field of the wrong type (a string)."""
        shown = ", ".join(f"{v!r} ({type(v).__name__})" for v in values)
        return self.loc.error(f"cannot evaluate '{ast.unparse(node)}' with values {shown}: {err}")

    def visit_BoolOp(self, node):
        if isinstance(node.op, ast.And):
            result = True
            for v in node.values:
                result = self.visit(v)
                if not result:
                    return result
            return result
        result = False
        for v in node.values:
            result = self.visit(v)
            if result:
                return result
        return result

    def visit_Compare(self, node):
        # An undefined bare word compared with a string symbol (`act == silu`) or
        # listed among strings (`act in (gelu, 'gelu_new')`) was meant as a string.
        operands = [node.left, *node.comparators]
        string_symbol = any(isinstance(o, ast.Name) and isinstance(self.env.get(o.id), str)
                            for o in operands)
        for o in operands:
            group = o.elts if isinstance(o, (ast.Tuple, ast.List, ast.Set)) else None
            among_strings = string_symbol or (group is not None and any(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in group))
            for e in (group if group is not None else [o]):
                if among_strings and isinstance(e, ast.Name) and e.id not in self.env:
                    self.visit_Name(e, compared_with_string=True)
        left = self.visit(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            right = self.visit(right_node)
            try:
                holds = _COMPARE[type(op)](left, right)
            except TypeError as err:
                raise self._operands_error(node, err, left, right) from None
            if not holds:
                return False
            left = right
        return True

    def visit_IfExp(self, node):
        return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)

    def visit_Subscript(self, node):
        container = self.visit(node.value)
        key = self.visit(node.slice)
        try:
            return container[key]
        except (KeyError, IndexError, TypeError):
            raise self.loc.error(f"'{ast.unparse(node)}': no entry {key!r}") from None

    def visit_List(self, node):
        return [self.visit(e) for e in node.elts]

    def visit_Tuple(self, node):
        return tuple(self.visit(e) for e in node.elts)

    def visit_Call(self, node):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS:
            hint = nearest(name or "", FUNCTIONS)
            raise self.loc.error(f"unknown function '{ast.unparse(node.func)}' in expression",
                                 hint[0] if hint else None)
        args = [self.visit(a) for a in node.args]
        kwargs = {k.arg: self.visit(k.value) for k in node.keywords}
        try:
            return FUNCTIONS[name](*args, **kwargs)
        except (TypeError, ValueError) as err:
            raise self.loc.error(f"'{ast.unparse(node)}': {err}") from None


def _strings(values, depth: int = 0) -> set:
    """Every string among symbol values (in lists and mappings too, e.g. layer_types)."""
    out = set()
    for v in values:
        if isinstance(v, str):
            out.add(v)
        elif depth < 2 and isinstance(v, (list, tuple)):
            out |= _strings(v, depth + 1)
        elif depth < 2 and isinstance(v, dict):
            out |= _strings(v.values(), depth + 1)
    return out
