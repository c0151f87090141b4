"""JSON mode, audited as a user of structured outputs: what a completed answer must satisfy
(pydantic parses it), what must not dead-end, and what must not be slow or crash."""
from __future__ import annotations

import pytest

from test_json_mode import brute_force_mask
from rustinfer.runtime import json_pattern
from rustinfer.runtime.json_constraint import Automaton
from rustinfer.runtime.json_masks import JsonTokenIndex
from rustinfer.runtime.json_schema import SchemaError, compile_schema
from rustinfer.runtime.token_bytes import token_bytes


@pytest.fixture(scope="module")
def smol_index(smol_tokenizer):
    tb = token_bytes(smol_tokenizer)
    return JsonTokenIndex(tb, len(tb), smol_tokenizer.eos_token_ids)


def test_a_counted_pattern_mask_steps_each_state_set_once(smol_index, monkeypatch):
    """^[a-z ]{0,100}$ spells out 100 optional copies: a state set's closure spans hundreds
    of NFA states, and a new set comes with every character. Walking 49k tokens' bytes
    re-stepped the same (set, char) ~70k times: 5 s a token on a laptop CPU."""
    a = Automaton(compile_schema({"type": "string", "pattern": "^[a-z ]{0,100}$"}))
    calls = []
    close = json_pattern.Pattern._close
    monkeypatch.setattr(json_pattern.Pattern, "_close",
                        lambda self, states: calls.append(1) or close(self, states))
    smol_index.allowed(a, a.feed(a.start, b'"abc'))
    assert len(calls) < 5000


@pytest.mark.parametrize("schema, annotated, text, ok", [
    ({"type": "number", "exclusiveMaximum": 1}, {"lt": 1}, "0.99999999999999999999", False),
    ({"type": "number", "exclusiveMaximum": 1}, {"lt": 1}, "0.9999999999999999", True),
    ({"type": "number", "exclusiveMinimum": 0}, {"gt": 0}, "0." + "0" * 400 + "1", False),
    ({"type": "number", "exclusiveMinimum": 0}, {"gt": 0}, "0.000001", True),
    ({"type": "number", "exclusiveMinimum": 0.1}, {"gt": 0.1}, "0.10000000000000000001", False),
    ({"type": "number", "exclusiveMinimum": 0.1}, {"gt": 0.1}, "0.10000000000000002", True),
    ({"type": "number", "exclusiveMaximum": 1e20}, {"lt": 1e20}, "99999999999999999999", False),
    ({"type": "number", "maximum": 1}, {"le": 1}, "0.99999999999999999999", True)])
def test_exclusive_number_bounds_hold_after_rounding_to_a_double(schema, annotated, text, ok):
    """pydantic (and Python's jsonschema) read the number as a double, then compare: a
    decimal just inside an exclusive bound can round onto it and fail."""
    from typing import Annotated

    from pydantic import Field, TypeAdapter, ValidationError

    a = Automaton(compile_schema(schema))
    state = a.feed(a.start, text.encode())
    assert (state is not None and a.complete(state)) == ok, text
    try:
        TypeAdapter(Annotated[float, Field(**annotated)]).validate_json(text)
        valid = True
    except ValidationError:
        valid = False
    assert valid or not ok


@pytest.mark.parametrize("fmt, bounds", [("date", {"maxLength": 5}), ("uuid", {"minLength": 40}),
                                         ("date-time", {"maxLength": 25}), ("time", {"minLength": 12})])
def test_length_bounds_that_cut_into_a_format_are_refused(fmt, bounds):
    """date-time with maxLength 25 dead-ended at "2023-01-01T00:00:00.12345" (no offset
    fits), uuid with minLength 40 at its 36th character (no quote allowed)."""
    with pytest.raises(SchemaError, match=f"beside format '{fmt}'"):
        compile_schema({"type": "string", "format": fmt, **bounds})


def test_length_bounds_a_format_always_meets_are_fine():
    from rustinfer.runtime.json_formats import FORMATS, LENGTHS
    assert set(LENGTHS) == set(FORMATS)
    a = Automaton(compile_schema({"type": "string", "format": "date-time", "minLength": 20,
                                  "maxLength": 35}))
    for text in (b'"2023-01-01T00:00:00Z"', b'"2023-01-01T00:00:00.123456789+01:00"'):
        state = a.feed(a.start, text)
        assert state is not None and a.complete(state), text
    assert a.feed(a.start, b'"2023-01-01T00:00:00.1234567890') is None


@pytest.mark.parametrize("branches", [[{"type": "integer"}, {"type": "number"}],
                                      [{}, {"type": "string"}],
                                      [{"type": "number", "maximum": 3}, {"type": "integer"}]])
def test_oneof_whose_branches_both_match_a_value_is_refused(branches):
    """oneOf [integer, number] was followed as number: "2" matches both branches, so it
    fails oneOf (jsonschema: "is valid under each of"); likewise a branch that is any value."""
    with pytest.raises(SchemaError, match="oneOf branches that can start alike"):
        compile_schema({"oneOf": branches})


@pytest.mark.parametrize("schema, match", [
    ({"type": "integer", "maximum": 10 ** 400}, None),
    ({"type": "number", "exclusiveMaximum": 10 ** 400}, None),
    ({"type": "integer", "enum": [10 ** 400, 1]}, None),
    ({"enum": ["\ud800"]}, "schema: a lone surrogate"),
    ({"type": "object", "properties": {"\udc00": {}}}, "schema: a lone surrogate"),
    ({"type": "object", "properties": {"a": {}}, "required": 5}, "required must be a list"),
    ({"type": "object", "properties": {"a": {}}, "required": [["a"]]}, "required must be a list"),
    ({"$ref": 5}, "only local \\$ref"),
    ({"type": "string", "format": ["date"]}, "format \\['date'\\] not supported")])
def test_malformed_schemas_are_refused_not_crashed_on(schema, match):
    """Each of these was a 500 (OverflowError, UnicodeEncodeError, TypeError,
    AttributeError) instead of a 400 naming the part (huge integers are fine JSON)."""
    if match is None:
        compile_schema(schema)
    else:
        with pytest.raises(SchemaError, match=match):
            compile_schema(schema)


def test_a_huge_pattern_count_is_refused_before_it_is_spelled_out():
    """x{99999999999} built a list of 10^11 copies before the state limit could say no:
    MemoryError (a request could take the server's memory)."""
    with pytest.raises(SchemaError, match="a count over"):
        compile_schema({"type": "string", "pattern": "^x{99999999999}$"})
    with pytest.raises(SchemaError, match="a count over"):
        compile_schema({"type": "string", "pattern": "^x{2,99999999999}$"})


CAT_OR_DOG = {  # pydantic: pet: Cat | Dog, both with name: constr(max_length=...) first
    "$defs": {
        "Cat": {"type": "object", "required": ["name", "lives"], "properties": {
            "name": {"type": "string", "maxLength": 6}, "lives": {"type": "integer"}}},
        "Dog": {"type": "object", "required": ["name", "good"], "properties": {
            "name": {"type": "string", "maxLength": 4}, "good": {"type": "boolean"}}}},
    "type": "object", "required": ["pet"],
    "properties": {"pet": {"anyOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}]}}}


def test_a_union_of_bounded_strings_takes_the_plain_token_mask(smol_index, monkeypatch):
    """While a bounded name shared by Cat | Dog was typed, every character made a new MULTI
    state, and each walked all 49k tokens' bytes: ~630 ms a token (now ~2 ms)."""
    a = Automaton(compile_schema(CAT_OR_DOG))
    tb = smol_index.token_bytes
    for prefix in [b'{"pet": {"name": "', b'{"pet": {"name": "Rex', b'{"pet": {"name": "Rexy',
                   b'{"pet": {"name": "Rexy\xc3', b'{"pet": {"name": "Rexyz', b'{"pet": {"name": "Re\\']:
        state = a.feed(a.start, prefix)
        want = brute_force_mask(a, state, tb)
        assert (smol_index.allowed(a, state) == want).all(), prefix
    calls = []
    step = Automaton.step
    monkeypatch.setattr(Automaton, "step", lambda self, s, b: calls.append(1) or step(self, s, b))
    smol_index.allowed(a, a.feed(a.start, b'{"pet": {"name": "R'))
    assert len(calls) < 5000


@pytest.mark.parametrize("schema, match", [
    ({"type": "string", "pattern": "(?i)abc"}, "an inline flag at 1"),
    ({"type": "string", "pattern": "(?=a)b"}, "a lookahead at 1"),
    ({"type": "string", "pattern": "^[]a]$"}, "a class that starts with '\\]'"),
    ({"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/A"}}}, "refers only to itself"),
    ({"type": "array", "minItems": 10 ** 400},
     r"minItems 10+ is more than an answer can hold \(1048576\)")])
def test_schemas_that_cannot_mean_what_they_say_are_refused_by_name(schema, match):
    """Were: (?i) reported as a lookaround, []a] as matching nothing (pydantic's regex reads
    it as "]" or "a"), a $ref to itself compiled as any value, and a minimum no answer can
    reach compiled into an answer that never ends."""
    with pytest.raises(SchemaError, match=match):
        compile_schema(schema)


def test_an_all_of_wrapping_one_schema_is_that_schema():
    """pydantic before 2.9 (and OpenAPI generators) wrap a described $ref in allOf; an
    intersection of several schemas is refused by name, not followed halfway."""
    pet = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    a = Automaton(compile_schema({"$defs": {"Pet": pet}, "type": "object", "required": ["pet"],
                                  "properties": {"pet": {"allOf": [{"$ref": "#/$defs/Pet"}],
                                                         "description": "the pet"}}}))
    assert a.complete(a.feed(a.start, b'{"pet": {"name": "Rex"}}'))
    assert a.feed(a.start, b'{"pet": 1') is None
    with pytest.raises(SchemaError, match=r"schema.properties.x: allOf of 2 schemas is not supported"):
        compile_schema({"type": "object", "properties": {"x": {"allOf": [{"type": "string"}, {"maxLength": 2}]}}})
    with pytest.raises(SchemaError, match="allOf next to type"):
        compile_schema({"type": "string", "allOf": [{"maxLength": 2}]})
