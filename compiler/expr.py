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

    def visit_Name(self, node):
        if node.id in self.env:
            return self.env[node.id]
        hint = nearest(node.id, self.env)
        raise self.loc.error(f"undefined symbol '{node.id}'", hint[0] if hint else None)

    def visit_BinOp(self, node):
        fn = _BINARY.get(type(node.op))
        if fn is None:
            return self.generic_visit(node)
        return fn(self.visit(node.left), self.visit(node.right))

    def visit_UnaryOp(self, node):
        value = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            return not value
        if isinstance(node.op, ast.USub):
            return -value
        if isinstance(node.op, ast.UAdd):
            return +value
        return self.generic_visit(node)

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
        left = self.visit(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            right = self.visit(right_node)
            if not _COMPARE[type(op)](left, right):
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
