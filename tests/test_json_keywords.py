"""JSON mode's value keywords: length and item bounds, numeric bounds, formats, patterns,
unions whose branches start alike and prefixItems (runtime/json_schema.py and the modules
it uses: json_numbers.py, json_formats.py, json_pattern.py; json_constraint.py, json_masks.py).

Oracles: Python's own checks written out per keyword (len, comparisons, datetime's and
uuid's parsers, re.search), and a brute-force check of every token's bytes for the masks.
"""
from __future__ import annotations

import datetime as _dt
import json
import random
import re as _re
import uuid as _uuid
from fractions import Fraction

import numpy as np
import pytest

from test_json_mode import brute_force_mask, random_string
from rustinfer.runtime.json_constraint import Automaton
from rustinfer.runtime.json_masks import JsonConstraint, JsonTokenIndex
from rustinfer.runtime.json_schema import SchemaError, compile_schema
from rustinfer.runtime.token_bytes import token_bytes


def _completes_exactly_when(a: Automaton, text: bytes, fits: bool) -> bool:
    """The automaton completes text exactly when it fits, and accepts every prefix of one
    that does (a prefix refused is reported with its bytes). Whether it completed."""
    state = a.start
    for k in range(len(text)):
        state = a.step(state, text[k])
        if state is None:
            assert not fits, text[:k + 1]
            break
    done = state is not None and a.complete(state)
    assert done == fits, text
    return done


# ---- minLength / maxLength, minItems / maxItems -----------------------------------------

TAGS = {"type": "array", "minItems": 1, "maxItems": 3,             # pydantic: conlist(constr(
        "items": {"type": "string", "minLength": 2, "maxLength": 4}}  # min_length=2, max_length=4), ...)


def _fits_tags(value) -> bool:
    return isinstance(value, list) and 1 <= len(value) <= 3 and all(
        isinstance(v, str) and 2 <= len(v) <= 4 for v in value)


def test_length_bounds_accept_exactly_what_fits():
    """Random arrays of random strings (escapes, UTF-8 of 2-4 bytes, surrogate pairs, each
    one character), written every way json.dumps writes them: complete exactly when the
    bounds hold (Python's len: code points), and every prefix of one that fits is accepted."""
    a = Automaton(compile_schema(TAGS))
    rng = random.Random(5)
    fits = 0
    for _ in range(3000):
        value = [random_string(rng) for _ in range(rng.randint(0, 4))]
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5,
                          indent=rng.choice([None, 1])).encode()
        fits += _completes_exactly_when(a, text, _fits_tags(value))
    assert 100 < fits < 2900                     # both sides of the bounds were exercised


@pytest.mark.parametrize("schema,text,ok", [
    ({"type": "string", "maxLength": 0}, '""', True),
    ({"type": "string", "maxLength": 0}, '"a"', False),
    ({"type": "string", "minLength": 1}, '""', False),
    ({"type": "string", "maxLength": 1}, '"\\ud83e\\udd17"', True),       # one code point
    ({"type": "string", "maxLength": 1}, '"\\n\\n"', False),
    ({"type": "string", "maxLength": 2}, '"中🤗"', True),
    ({"maxLength": 2}, '"abc"', False),                                  # a string, then
    ({"maxLength": 2}, "12", False),
    ({"type": ["string", "null"], "maxLength": 1}, "null", True),
    ({"type": "array", "maxItems": 0}, "[]", True),
    ({"type": "array", "maxItems": 0}, "[1]", False),
    ({"type": "array", "minItems": 2}, "[1]", False),
    ({"type": "array", "minItems": 2}, "[1, [], {}, 2, 3]", True),
    ({"minItems": 1}, "[]", False)])
def test_length_bounds_hold_at_their_edges(schema, text, ok):
    a = Automaton(compile_schema(schema))
    state = a.feed(a.start, text.encode())
    assert (state is not None and a.complete(state)) == ok


@pytest.mark.parametrize("schema,match", [
    ({"type": "string", "minLength": -1}, "minLength must be a non-negative integer"),
    ({"type": "array", "maxItems": 1.5}, "maxItems must be a non-negative integer"),
    ({"type": "string", "maxLength": True}, "maxLength must be a non-negative integer"),
    ({"type": "array", "minItems": 3, "maxItems": 2}, "minItems 3 is more than maxItems 2")])
def test_bad_length_bounds_are_refused(schema, match):
    with pytest.raises(SchemaError, match=match):
        compile_schema(schema)


def test_unbounded_strings_and_arrays_keep_one_state():
    """Counting only where a bound needs it: a free string or list does not make a new
    state (and a new mask to compute) per character or item."""
    a = Automaton(compile_schema({"type": "array", "items": {"type": "string"}}))
    states = {a.feed(a.start, b'["' + b"x" * n) for n in range(1, 50)}
    assert len(states) == 1
    assert a.feed(a.start, b'["a", "b", ') == a.feed(a.start, b'["a", ')
    bounded = Automaton(compile_schema(TAGS))
    assert len({bounded.feed(bounded.start, b'["' + b"x" * n) for n in range(1, 5)}) == 4


def test_length_bound_masks_equal_a_brute_force_check(smol_tokenizer):
    tb = token_bytes(smol_tokenizer)
    index = JsonTokenIndex(tb, len(tb), smol_tokenizer.eos_token_ids)
    a = Automaton(compile_schema(TAGS))
    for prefix in [b"[", b'["', b'["a', b'["ab', b'["abc', b'["abcd', b'["ab\\', b'["a\xc3',
                   b'["ab", "cd", ', b'["ab", "cd", "ef"', b'["ab"']:
        state = a.feed(a.start, prefix)
        want = brute_force_mask(a, state, tb)
        assert not a.complete(state) and (index.allowed(a, state) == want).all(), prefix


def test_sampling_under_length_bounds_never_dead_ends(smol_tokenizer):
    """Random allowed tokens, drawn from the masks until the value is complete: the text
    always parses and fits (a bound at its edge still leaves a way to finish)."""
    tb = token_bytes(smol_tokenizer)
    index = JsonTokenIndex(tb, len(tb), smol_tokenizer.eos_token_ids)
    rng = np.random.default_rng(0)
    a = Automaton(compile_schema({"type": "object", "required": ["tags", "name"],
                                  "properties": {"tags": TAGS, "name": {"type": "string",
                                                                        "maxLength": 3}}}))
    for _ in range(20):
        c, tokens = JsonConstraint(index, a), []
        while not c.done and len(tokens) < 400:
            allowed = c.allowed()
            assert not a.complete(c.state) or c.done or allowed.any()
            token = int(rng.choice(np.flatnonzero(allowed)))
            if token in index.eos_ids:
                break
            c.advance(token)
            tokens.append(token)
        assert a.complete(c.state), b"".join(tb[t] for t in tokens)
        value = json.loads(b"".join(tb[t] for t in tokens))
        assert _fits_tags(value["tags"]) and len(value["name"]) <= 3, value


# ---- minimum / maximum / exclusiveMinimum / exclusiveMaximum -----------------------------

RANGES = [  # (schema, the test it means)
    ({"type": "integer", "minimum": 1, "maximum": 150}, lambda v: v == int(v) and 1 <= v <= 150),
    ({"type": "integer", "exclusiveMinimum": -3, "exclusiveMaximum": 12},
     lambda v: v == int(v) and -3 < v < 12),
    ({"type": "integer", "maximum": -20}, lambda v: v == int(v) and v <= -20),
    ({"type": "number", "minimum": 0, "maximum": 1}, lambda v: 0 <= v <= 1),
    ({"type": "number", "exclusiveMinimum": 0.25, "maximum": 7.5}, lambda v: 0.25 < v <= 7.5),
    ({"type": "number", "minimum": -2.5}, lambda v: v >= -2.5),
    ({"type": "number", "minimum": 0.1, "exclusiveMaximum": 0.1001},
     lambda v: 0.1 <= v < 0.1001),
    ({"type": "integer", "minimum": 5, "exclusiveMinimum": True}, lambda v: v == int(v) and v > 5),
    # multipleOf: exact as decimals, so these take the value as a Fraction (_number)
    ({"type": "integer", "multipleOf": 5, "minimum": 3, "maximum": 120},
     lambda v: v.denominator == 1 and 3 <= v <= 120 and v % 5 == 0),
    ({"type": "integer", "multipleOf": 2.5}, lambda v: v.denominator == 1 and v % 5 == 0),
    ({"type": "number", "multipleOf": 0.25, "minimum": -2, "exclusiveMaximum": 7.5},
     lambda v: -2 <= v < 7.5 and v % Fraction(1, 4) == 0),
    ({"type": "number", "multipleOf": 0.01}, lambda v: v % Fraction(1, 100) == 0)]


def _number(schema: dict, text) -> float | Fraction:
    """The value a validator compares: a double, or under multipleOf the exact decimal."""
    return Fraction(text.decode() if isinstance(text, bytes) else text) \
        if "multipleOf" in schema else float(text)


def _spellings(rng: random.Random) -> list[str]:
    """Numbers of every JSON spelling: signs, zeros, fractions, exponents, long ones."""
    ints = [str(rng.randint(-200, 200)), str(rng.randint(-10**6, 10**6)), "0", "-0"]
    decimals = [f"{rng.uniform(-10, 10):.{rng.randint(1, 5)}f}", f"0.{rng.randint(0, 999):03d}",
                "0.1", "0.1001", "7.5", "-2.5", "0.25", "1.0", "150.0"]
    exponents = [f"{rng.randint(1, 9)}e{rng.randint(-2, 2)}", "1E1", "2.5e-1"]
    return ints + decimals + exponents


@pytest.mark.parametrize("case", range(len(RANGES)))
def test_number_bounds_accept_exactly_what_fits(case):
    """Complete exactly when the value is in the range and spelled without an exponent;
    every prefix of one that fits is accepted; and a random walk over the accepted bytes
    always ends in a value that fits (no prefix is a dead end)."""
    schema, fits = RANGES[case]
    a = Automaton(compile_schema({"type": "array", "items": schema}))
    rng = random.Random(case)
    for _ in range(300):
        for text in _spellings(rng):
            good = "e" not in text.lower() and fits(_number(schema, text)) and \
                (schema["type"] == "number" or "." not in text)
            state = a.feed(a.start, f"[{text}]".encode())
            assert (state is not None and a.complete(state)) == good, (schema, text)
    alphabet = b"-0123456789.eE]"
    for _ in range(300):
        state, text = a.feed(a.start, b"["), b""
        while True:
            options = [b for b in alphabet[:-1 if not text else None]
                       if a.step(state, b) is not None]
            assert options, (schema, text)            # a dead end
            b = rng.choice(options)
            if b == 0x5D:
                break
            state, text = a.step(state, b), text + bytes([b])
        assert fits(_number(schema, text)), (schema, text)


@pytest.mark.parametrize("schema,match", [
    ({"type": "number", "minimum": "0"}, "minimum must be a finite number"),
    ({"type": "integer", "minimum": 3, "maximum": 2}, "no integer meets its minimum and maximum"),
    ({"type": "integer", "exclusiveMinimum": 1, "exclusiveMaximum": 2}, "no integer meets"),
    ({"type": "number", "minimum": 1, "exclusiveMaximum": 1}, "no number meets"),
    ({"type": "number", "exclusiveMaximum": True}, "exclusiveMaximum: true needs maximum"),
    ({"type": "number", "multipleOf": 0}, "multipleOf must be greater than 0"),
    ({"type": "integer", "multipleOf": 5, "minimum": 6, "maximum": 9},
     "no integer between its minimum and maximum is a multiple of 5"),
    ({"type": "integer", "multipleOf": 0.5, "exclusiveMinimum": 0, "exclusiveMaximum": 1},
     "no integer meets")])
def test_bad_number_bounds_are_refused(schema, match):
    with pytest.raises(SchemaError, match=match):
        compile_schema(schema)


def test_number_bound_masks_equal_a_brute_force_check(smol_tokenizer):
    tb = token_bytes(smol_tokenizer)
    index = JsonTokenIndex(tb, len(tb), smol_tokenizer.eos_token_ids)
    a = Automaton(compile_schema({"type": "object", "required": ["age", "score"], "properties": {
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "price": {"type": "number", "multipleOf": 0.05, "maximum": 50}}}))
    for prefix in [b'{"age": ', b'{"age": 1', b'{"age": 12', b'{"age": 120', b'{"age": 0',
                   b'{"age": 7, "score": ', b'{"age": 7, "score": 0', b'{"age": 7, "score": 0.',
                   b'{"age": 7, "score": 1', b'{"age": 7, "score": 1, "price": ',
                   b'{"age": 7, "score": 1, "price": 4', b'{"age": 7, "score": 1, "price": 4.1',
                   b'{"age": 7, "score": 1, "price": 49.9']:
        state = a.feed(a.start, prefix)
        want = brute_force_mask(a, state, tb)
        assert (index.allowed(a, state) == want).all(), prefix


# ---- format: date, time, date-time, uuid ---------------------------------------------------

_RFC3339 = {  # the grammar, then the calendar and the clock through Python's parsers
    "date": r"\d{4}-\d{2}-\d{2}",
    "time": r"\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})",
    "date-time": r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})",
    "uuid": r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"}


def _valid(fmt: str, text: str) -> bool:
    if not _re.fullmatch(_RFC3339[fmt], text):
        return False
    if fmt == "uuid":
        return bool(_uuid.UUID(text))
    stamp = _re.sub(r"\.\d+", "", text.upper())              # fromisoformat: <= 6 digits
    offset = _re.search(r"[+-](\d{2}):(\d{2})$", stamp)
    if offset and (int(offset[1]) > 23 or int(offset[2]) > 59):  # Python takes +09:72
        return False
    try:
        {"date": _dt.date, "time": _dt.time, "date-time": _dt.datetime}[fmt].fromisoformat(stamp)
        return True
    except ValueError:
        return False


def _random_format_value(fmt: str, rng: random.Random) -> str:
    moment = _dt.datetime(1, 1, 1) + _dt.timedelta(seconds=rng.randrange(315_537_897_600))
    frac = rng.choice(["", ".5", f".{rng.randrange(10**9):09d}"])
    offset = rng.choice(["Z", f"+{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}", "-00:00"])
    return {"date": moment.date().isoformat(), "time": moment.time().isoformat() + frac + offset,
            "date-time": moment.isoformat() + frac + offset,
            "uuid": str(_uuid.UUID(int=rng.getrandbits(128)))}[fmt]


@pytest.mark.parametrize("fmt", sorted(_RFC3339))
def test_formats_accept_exactly_the_valid_strings(fmt):
    """Random values and their one-character mutations: the automaton completes a string
    exactly when the RFC 3339 grammar, the calendar and the clock (Python's own parsers)
    accept it; every prefix of a valid one is accepted; a random walk over the accepted
    characters always ends in a valid value (no prefix is a dead end)."""
    a = Automaton(compile_schema({"type": "string", "format": fmt}))
    rng = random.Random(len(fmt))
    for _ in range(400):
        text = _random_format_value(fmt, rng)
        if rng.random() < 0.7:
            k = rng.randrange(len(text))
            text = text[:k] + rng.choice("0123456789:-+.TZ aF") + text[k + 1:]
        state = a.feed(a.start, f'"{text}'.encode())
        if _valid(fmt, text):
            assert state is not None, text
        done = state is not None and a.step(state, 0x22) is not None
        assert done == _valid(fmt, text), text
    alphabet = b"0123456789abcdefABCDEF:-+.TZz"
    for _ in range(200):
        state, text = a.feed(a.start, b'"'), b""
        while a.step(state, 0x22) is None or rng.random() < 0.3:
            options = [b for b in alphabet if a.step(state, b) is not None]
            if not options:
                break
            b = rng.choice(options)
            state, text = a.step(state, b), text + bytes([b])
        assert _valid(fmt, text.decode()), text


@pytest.mark.parametrize("schema,match", [
    ({"type": "string", "format": "ipv4network"}, "format 'ipv4network' not supported"),
    ({"type": "object", "properties": {"u": {"type": "string", "format": "iri"}}},
     r"schema.properties.u: format 'iri' not supported \(supported: date, date-time, duration, "
     r"email, hostname, ipv4, ipv6, time, uri, uuid\)")])
def test_unsupported_formats_are_refused(schema, match):
    with pytest.raises(SchemaError, match=match):
        compile_schema(schema)


def test_formats_that_constrain_nothing_here_are_annotations():
    """JSON Schema: a format does not apply to other types (OpenAPI's int64); pydantic's
    SecretStr, bytes and Path write formats "password", "binary" and "path", which
    constrain nothing a JSON string can hold."""
    for schema, text in (({"type": "integer", "format": "int64"}, b"12"),
                         ({"type": "string", "format": "password"}, b'"hunter2"'),
                         ({"type": "string", "format": "binary"}, b'"\\u00ff raw"'),   # bytes
                         ({"type": "string", "format": "path"}, b'"~/notes.txt"')):
        a = Automaton(compile_schema(schema))
        assert a.complete(a.feed(a.start, text))


def test_format_masks_equal_a_brute_force_check(smol_tokenizer):
    tb = token_bytes(smol_tokenizer)
    index = JsonTokenIndex(tb, len(tb), smol_tokenizer.eos_token_ids)
    a = Automaton(compile_schema({"type": "object", "required": ["at", "id"], "properties": {
        "at": {"type": "string", "format": "date-time"}, "id": {"type": "string", "format": "uuid"}}}))
    for prefix in [b'{"at": "', b'{"at": "2024', b'{"at": "2023-02-', b'{"at": "2023-02-2',
                   b'{"at": "2024-05-01T23:59:59', b'{"at": "2024-05-01T23:59:59.5',
                   b'{"at": "2024-05-01T23:59:59Z", "id": "12', b'{"at": "2024-05-01T23:59:59Z"']:
        state = a.feed(a.start, prefix)
        want = brute_force_mask(a, state, tb)
        assert (index.allowed(a, state) == want).all(), prefix


# ---- pattern ---------------------------------------------------------------------------------

def _random_pattern(rng: random.Random, depth: int = 0) -> str:
    def atom():
        if depth < 2 and rng.random() < 0.25:
            return "(" + rng.choice(["", "?:"]) + _random_pattern(rng, depth + 1) + ")"
        return rng.choice(["a", "b", "c", "-", r"\.", ".", "[a-c]", "[^a]", r"\d", r"\w",
                           r"\s", "[0-9x]", "{"])
    def piece():
        return atom() + rng.choice(["", "", "*", "+", "?", "{2}", "{1,2}", "{0,}", "*?"])
    branches = ["".join(piece() for _ in range(rng.randint(1, 3)))
                for _ in range(rng.choice([1, 1, 2]))]
    return "|".join(branches)


def test_patterns_match_what_python_re_matches():
    """Random patterns of the supported subset against random strings: the automaton
    completes a string exactly when re.search finds the pattern in it; every prefix of a
    matching string is accepted; a random walk never dead-ends and ends in a match."""
    rng = random.Random(11)
    alphabet = "abc-.1x {"
    for _ in range(150):
        body = _random_pattern(rng)
        if "|" in body and rng.random() < 0.5:
            body = f"(?:{body})"                  # anchors around the whole alternation
        pattern = rng.choice(["", "^"]) + body + rng.choice(["", "$"])
        a = Automaton(compile_schema({"type": "string", "pattern": pattern}))
        for _ in range(40):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
            state = a.feed(a.start, f'"{text}'.encode())
            found = _re.search(pattern, text) is not None
            if found:
                assert state is not None, (pattern, text)
            assert (state is not None and a.step(state, 0x22) is not None) == found, (pattern, text)
        for _ in range(10):
            state, text = a.feed(a.start, b'"'), ""
            while a.step(state, 0x22) is None or (rng.random() < 0.5 and len(text) < 12):
                options = [c for c in alphabet if a.step(state, ord(c)) is not None]
                if not options:
                    break
                c = rng.choice(options)
                state, text = a.step(state, ord(c)), text + c
            assert a.step(state, 0x22) is not None and _re.search(pattern, text), (pattern, text)


@pytest.mark.parametrize("schema,match", [
    ({"type": "string", "pattern": "(?=a)b"}, "a lookahead"),
    ({"type": "string", "pattern": r"(a)\1"}, r"escape \\1"),
    ({"type": "string", "pattern": r"\bword"}, r"escape \\b"),
    ({"type": "string", "pattern": "a^b"}, "an anchor inside a branch"),
    ({"type": "string", "pattern": "(a$)"}, "anchor '\\$' inside a group"),
    ({"type": "string", "pattern": "a{3,2}"}, "maximum is below its minimum"),
    ({"type": "string", "pattern": "(ab"}, "unclosed group"),
    ({"type": "string", "pattern": '^"$'}, "no string of printable ASCII matches"),
    ({"type": "string", "pattern": "a{1000}b{1000}c{1000}x{2000}"}, "too large")])
def test_unsupported_patterns_are_refused(schema, match):
    with pytest.raises(SchemaError, match=match):
        compile_schema(schema)


@pytest.mark.parametrize("pattern, prefixes", [
    (r"^[A-Z]{3}-\d{2,4}$", ['', 'AB', 'ABC', 'ABC-1', 'ABC-12', 'ABC-1234']),
    # classes that overlap (letters in three sets, '.' in two), so characters split finely
    (r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[a-z]{2,}$", ['', 'jo.d', 'jo.d@ex', 'jo.d@ex.co']),
    (r"^(foo|bar)+ ?[^a-c]{2}$", ['', 'fo', 'foobar', 'foobar ', 'bar x']),
    (r"ab.c", ['', 'xa', 'zab', 'ab!c q']),            # unanchored: any text around
    (r"^[a-z ]{0,6}$", ['', 'abc d', 'abcdef'])])
def test_pattern_masks_equal_a_brute_force_check(smol_tokenizer, pattern, prefixes):
    """The masks walk the tokens spelled in the pattern's character classes
    (json_masks._ClassTrie); the automaton fed each token's bytes is the oracle."""
    tb = token_bytes(smol_tokenizer)
    index = JsonTokenIndex(tb, len(tb), smol_tokenizer.eos_token_ids)
    a = Automaton(compile_schema({"type": "object", "required": ["sku"], "properties": {
        "sku": {"type": "string", "pattern": pattern}}}))
    for prefix in prefixes:
        state = a.feed(a.start, b'{"sku": "' + prefix.encode())
        want = brute_force_mask(a, state, tb)
        assert (index.allowed(a, state) == want).all(), prefix


# ---- unions whose branches start alike (pydantic's unions of models) -------------------------

PETS = {  # pydantic: Cat | Dog | Bird, plain and tagged (Field(discriminator="kind"))
    "$defs": {
        "Cat": {"type": "object", "required": ["kind", "lives"], "properties": {
            "kind": {"const": "cat", "type": "string"}, "lives": {"type": "integer", "maximum": 9}}},
        "Dog": {"type": "object", "required": ["kind", "good"], "properties": {
            "kind": {"const": "dog", "type": "string"}, "good": {"type": "boolean"}}},
        "Bird": {"type": "object", "required": ["kind"], "properties": {
            "kind": {"const": "bird", "type": "string"}, "song": {"type": "string"}}}},
    "type": "object", "required": ["plain", "tagged", "either"], "properties": {
        "plain": {"anyOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}, {"$ref": "#/$defs/Bird"}]},
        "tagged": {"oneOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}],
                   "discriminator": {"propertyName": "kind",
                                     "mapping": {"cat": "#/$defs/Cat", "dog": "#/$defs/Dog"}}},
        "either": {"anyOf": [{"type": "string", "maxLength": 2}, {"type": "string", "pattern": "^x+$"},
                             {"enum": ["yes", "no"]}, {"type": "array", "items": {"type": "integer"}},
                             {"type": "array", "maxItems": 1}]}}}


def _fits_pets(v: dict) -> bool:
    def pet(p, kinds):
        return isinstance(p, dict) and p.get("kind") in kinds and {
            "cat": lambda: set(p) == {"kind", "lives"} and type(p["lives"]) is int and p["lives"] <= 9,
            "dog": lambda: set(p) == {"kind", "good"} and isinstance(p["good"], bool),
            "bird": lambda: set(p) <= {"kind", "song"} and isinstance(p.get("song", ""), str)}[p["kind"]]()
    e = v["either"]
    either = (isinstance(e, str) and (len(e) <= 2 or _re.fullmatch("x+", e) or e in ("yes", "no"))
              or isinstance(e, list) and (all(type(i) is int for i in e) or len(e) <= 1))
    return list(v) == ["plain", "tagged", "either"] and pet(v["plain"], ("cat", "dog", "bird")) \
        and pet(v["tagged"], ("cat", "dog")) and bool(either)


def test_unions_that_start_alike_follow_every_branch():
    """Random instances of the branches, and texts that mix them: complete exactly when some
    branch holds (an oracle written out by hand); every prefix of one that fits is
    accepted."""
    a = Automaton(compile_schema(PETS))
    rng = random.Random(3)

    def random_pet():
        kind = rng.choice(["cat", "dog", "bird", "cow"])
        fields = {"lives": rng.choice([3, 9, 12, "9"]), "good": rng.choice([True, 1]),
                  "song": rng.choice(["la", 5])}
        keys = {"cat": ["lives"], "dog": ["good"], "bird": rng.choice([[], ["song"]]),
                "cow": ["song"]}[kind] + ([rng.choice(["lives", "good", "song"])]
                                          if rng.random() < 0.2 else [])
        return {"kind": kind, **{k: fields[k] for k in keys}}

    fits = 0
    for _ in range(1500):
        value = {"plain": random_pet(), "tagged": random_pet(),
                 "either": rng.choice(["ab", "xxxx", "xyz", "yes", "nope", [1, 2], ["a"], [],
                                       ["a", "b"], [1.5]])}
        text = json.dumps(value, indent=rng.choice([None, 1])).encode()
        fits += _completes_exactly_when(a, text, _fits_pets(value))
    assert 50 < fits < 1450


def test_union_masks_equal_a_brute_force_check_and_walks_end_in_an_instance(smol_tokenizer):
    tb = token_bytes(smol_tokenizer)
    index = JsonTokenIndex(tb, len(tb), smol_tokenizer.eos_token_ids)
    a = Automaton(compile_schema(PETS))
    for prefix in [b'{"plain": ', b'{"plain": {"', b'{"plain": {"kind": "', b'{"plain": {"kind": "c',
                   b'{"plain": {"kind": "bird"', b'{"plain": {"kind": "bird"}, "tagged": {',
                   b'{"plain": {"kind": "bird"}, "tagged": {"kind": "dog", "good": true}, "either": ',
                   b'{"plain": {"kind": "bird"}, "tagged": {"kind": "dog", "good": true}, "either": "x',
                   b'{"plain": {"kind": "bird"}, "tagged": {"kind": "dog", "good": true}, "either": [']:
        state = a.feed(a.start, prefix)
        want = brute_force_mask(a, state, tb)
        assert (index.allowed(a, state) == want).all(), prefix
    rng, finished = np.random.default_rng(1), 0
    for _ in range(15):                  # random tokens: a walk may run long in a free string
        c, tokens = JsonConstraint(index, a), []
        while len(tokens) < 300:
            token = int(rng.choice(np.flatnonzero(c.allowed())))
            if token in index.eos_ids:
                break
            c.advance(token)
            tokens.append(token)
        if len(tokens) < 300:
            finished += 1
            assert _fits_pets(json.loads(b"".join(tb[t] for t in tokens)))
    assert finished >= 10                # 12 of 15 with this seed


# ---- prefixItems (pydantic's tuples) ----------------------------------------------------------

@pytest.mark.parametrize("schema,fits", [
    ({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],   # tuple[int, str]
      "minItems": 2, "maxItems": 2},
     lambda v: len(v) == 2 and type(v[0]) is int and isinstance(v[1], str)),
    ({"type": "array", "prefixItems": [{"type": "boolean"}], "items": {"type": "integer"}},
     lambda v: (not v or isinstance(v[0], bool)) and all(type(i) is int for i in v[1:])),
    ({"prefixItems": [{"type": "string"}, {"type": "null"}], "items": False},
     lambda v: len(v) <= 2 and (not v or isinstance(v[0], str)) and (len(v) < 2 or v[1] is None))])
def test_prefix_items_hold_each_place(schema, fits):
    a = Automaton(compile_schema(schema))
    rng = random.Random(4)
    pool = [1, -2, "a", "", True, False, None, 1.5, [], {}]
    seen = set()
    for _ in range(2000):
        value = [rng.choice(pool) for _ in range(rng.randint(0, 4))]
        text = json.dumps(value).encode()
        state = a.feed(a.start, text)
        done = state is not None and a.complete(state)
        assert done == fits(value), text
        seen.add(done)
    assert seen == {True, False}
