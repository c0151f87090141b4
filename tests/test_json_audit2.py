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


def test_a_bounded_uri_mask_looks_each_state_set_up_once(smol_tokenizer):
    """pydantic's HttpUrl (format uri, minLength 1, maxLength 2083): a mask checks the
    length at every token's end, over state sets of ~150 NFA states. Their fewest
    characters were recounted each time (2 million lookups, 50-225 ms a mask on SmolLM2);
    they are counted once a set."""
    from test_json_mode import brute_force_mask
    from rustinfer.runtime.json_masks import JsonTokenIndex
    from rustinfer.runtime.token_bytes import token_bytes

    class Counted(dict):
        lookups = 0

        def __getitem__(self, key):
            Counted.lookups += 1
            return super().__getitem__(key)

    tb = token_bytes(smol_tokenizer)
    index = JsonTokenIndex(tb, len(tb), smol_tokenizer.eos_token_ids)
    a = Automaton(compile_schema({"type": "object", "required": ["site"], "properties": {
        "site": {"type": "string", "format": "uri", "minLength": 1, "maxLength": 2083}}}))
    state = a.feed(a.start, b'{"site": "https://a.co')
    lengths = a.nodes[state[4]][4].lengths
    lengths.fewest = Counted(lengths.fewest)
    mask = index.allowed(a, state)
    assert Counted.lookups < 50_000, Counted.lookups
    assert (mask == brute_force_mask(a, state, tb)).all()


def test_a_cycle_of_refs_alone_is_refused():
    """A -> B -> A through $ref or allOf wrapping one (pydantic before 2.9's spelling):
    no schema at all. The first $ref's placeholder (any value) was copied round the cycle,
    so any JSON value was allowed; it is refused, as {"$ref": itself} is."""
    import pytest
    from rustinfer.runtime.json_schema import SchemaError

    for a, b in [({"allOf": [{"$ref": "#/$defs/B"}]}, {"allOf": [{"$ref": "#/$defs/A"}]}),
                 ({"$ref": "#/$defs/B"}, {"$ref": "#/$defs/A"}),
                 ({"$ref": "#/$defs/B"}, {"allOf": [{"$ref": "#/$defs/A"}], "description": "b"})]:
        with pytest.raises(SchemaError, match="refers only to itself"):
            compile_schema({"$ref": "#/$defs/A", "$defs": {"A": a, "B": b}})
    # a cycle through a property or a union's branch is a recursive schema: it compiles
    auto = Automaton(compile_schema({"$ref": "#/$defs/A", "$defs": {
        "A": {"allOf": [{"$ref": "#/$defs/B"}]},
        "B": {"anyOf": [{"type": "null"}, {"type": "array", "items": {"$ref": "#/$defs/A"}}]}}}))
    assert auto.complete(auto.feed(auto.start, b"[[null], []]"))
    assert auto.feed(auto.start, b'"x"') is None


def test_counts_the_engines_read_differently_are_refused():
    """{,3} is 0-3 repeats to Python's re (what jsonschema matches with) and {1, 3} is 1-3
    to pydantic's Rust regex; both were taken as text (ECMA-262's reading), so the answer
    "a{,3}" failed re.search('^a{,3}$') and "5{1, 3}" failed pydantic's check."""
    import re

    import pytest
    from rustinfer.runtime.json_schema import SchemaError

    for pattern in [r"^a{,3}$", r"^a{,}$", r"^\d{1, 3}$", r"^a{ 2}$"]:
        with pytest.raises(SchemaError, match="without spaces"):
            compile_schema({"type": "string", "pattern": pattern})
    # a brace no engine reads as a count stays text, as in Python's re
    for pattern, text in [(r"^a{}$", "a{}"), (r"^x{y}$", "x{y}"), (r"^{$", "{")]:
        a = Automaton(compile_schema({"type": "string", "pattern": pattern}))
        assert a.complete(a.feed(a.start, f'"{text}"'.encode())) and re.search(pattern, text)


def test_a_backspace_in_a_class_is_not_the_letter_b():
    """[\\b] is a backspace in ECMA-262 and Python's re; it was read as "b", so ^[a\\b]+$
    let the answer "ab" through, which re.search refuses."""
    import re

    import pytest
    from rustinfer.runtime.json_schema import SchemaError

    a = Automaton(compile_schema({"type": "string", "pattern": r"^[a\b]+$"}))
    assert a.feed(a.start, b'"ab') is None and not re.search(r"^[a\b]+$", "ab")
    assert a.complete(a.feed(a.start, b'"aa"'))
    with pytest.raises(SchemaError, match="no string of printable ASCII"):
        compile_schema({"type": "string", "pattern": r"^[\b]$"})


def test_escaped_angle_brackets_are_refused():
    """\\< and \\> are word boundaries to pydantic's Rust regex (constr(pattern=r"^\\<a")
    matches "a"), "<" and ">" to Python's re and ECMA-262: the answer "<a" failed
    pydantic's check. Unescaped, or in a class, they are plain characters."""
    import pytest
    from rustinfer.runtime.json_schema import SchemaError

    for pattern in [r"^\<a$", r"^a\>$"]:
        with pytest.raises(SchemaError, match=r"the escape \\[<>]"):
            compile_schema({"type": "string", "pattern": pattern})
    a = Automaton(compile_schema({"type": "string", "pattern": r"^<a>$"}))
    assert a.complete(a.feed(a.start, b'"<a>"'))


def test_a_long_walk_to_minlength_is_kept_between_characters():
    """^(a{97}|b{89})+$ under minLength 100000 / maxLength 100010: the NFA's state sets
    take ~8,600 characters to repeat. Each character's length check walks them; they were
    forgotten past 4,096 and recomputed every character (0.5 s each)."""
    a = Automaton(compile_schema({"type": "string", "pattern": "^(a{97}|b{89})+$",
                                  "minLength": 100_000, "maxLength": 100_010}))
    pattern = a.nodes[a.schema.root][4]
    calls = 0
    close = pattern._close

    def counted(states):
        nonlocal calls
        calls += 1
        return close(states)

    pattern._close = counted
    state = a.feed(a.start, b'"' + b"a" * 20)
    assert state is not None and calls < 20_000, calls
