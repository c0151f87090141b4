"""JSON mode audit (second round): minLength / maxLength beside a pattern, formats followed
as patterns, allOf. Each test failed before the fix committed with it."""
from __future__ import annotations

from rustinfer.runtime.json_constraint import Automaton
from rustinfer.runtime.json_schema import compile_schema


def test_large_bounds_beside_a_pattern_compile_and_hold():
    """Both bounds and a minLength past Python's recursion limit (pydantic's
    constr(pattern=r"^[a-z ]+$", min_length=2000, max_length=4000)): the length check
    once recursed one call per character and crashed with RecursionError."""
    a = Automaton(compile_schema({"type": "string", "pattern": "^[a-z ]+$",
                                  "minLength": 2000, "maxLength": 4000}))
    state = a.feed(a.start, b'"' + b"ab " * 666)          # 1998 characters
    assert a.step(state, 0x22) is None                     # too short to end
    state = a.feed(state, b"ab")
    assert a.step(state, 0x22) is not None
    # lengths with gaps near a huge bound: ^(ab)+$ has only even lengths
    a = Automaton(compile_schema({"type": "string", "pattern": "^(ab)+$",
                                  "minLength": 10**6 - 1, "maxLength": 10**6}))
    state = a.feed(a.start, b'"' + b"ab" * 10)
    assert a.step(state, ord("a")) is not None
