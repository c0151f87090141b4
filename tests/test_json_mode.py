"""JSON mode (response_format json_object / json_schema): runtime/json_constraint.py,
json_masks.py, json_schema.py, json_numbers.py and their use by the sampler and the engine.

Oracles: Python's json module (what a client parses the answer with) for the automaton,
and a brute-force check of every token's bytes for the masks.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from rustinfer.runtime import LLM, SamplingParams
from rustinfer.runtime.json_constraint import DONE, JSON_OBJECT_AUTOMATON, START, Automaton, feed
from rustinfer.runtime.json_masks import JsonConstraint, JsonTokenIndex
from rustinfer.runtime.json_schema import SchemaError, compile_schema
from rustinfer.runtime.sampling import SamplingParamsError
from rustinfer.runtime.token_bytes import token_bytes


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.choice(["obj", "arr", "str", "int", "float", "lit"] if depth < 3 else
                      ["str", "int", "float", "lit"])
    if kind == "obj":
        return {random_string(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    if kind == "arr":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "str":
        return random_string(rng)
    if kind == "int":
        return rng.randint(-10**6, 10**6)
    if kind == "float":
        return rng.choice([0.5, -1e-7, 3.25e10, 123.0, -0.0])
    return rng.choice([True, False, None])


def random_string(rng: random.Random) -> str:
    return "".join(rng.choice('ab "\\\n\t/é中🤗\u0001') for _ in range(rng.randint(0, 5)))


def documents(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        obj = {random_string(rng): random_value(rng) for _ in range(rng.randint(0, 4))}
        text = json.dumps(obj, indent=rng.choice([None, 2]), ensure_ascii=rng.random() < 0.5)
        out.append((" " * rng.randint(0, 2) + text).encode())
    return out


def brute_force_mask(a: Automaton, state, tb: list) -> np.ndarray:
    """The mask a state should have, token by token: those whose bytes the automaton takes."""
    return np.array([b is not None and len(b) > 0 and a.feed(state, b) is not None for b in tb])


def test_every_prefix_of_a_json_object_is_accepted_and_only_the_whole_is_done():
    for doc in documents(300):
        state = START
        for k, b in enumerate(doc):
            assert state[0] != DONE, doc
            state = feed(state, bytes([b]))
            assert state is not None, (doc, doc[:k + 1])
        assert state[0] == DONE, doc


def test_complete_texts_agree_with_json_loads():
    """On short random texts over JSON's alphabet: the automaton ends DONE exactly when
    json.loads reads one object (Python's extensions NaN / Infinity are not in the alphabet)."""
    rng = random.Random(1)
    chars = list('{}[]:,"\\ 0123456789-+.eEtrufalsn\tx\u00e9')
    pieces = ['"a"', '"b"', ":", ",", " ", "1", "-2", ".5", "e3", "[", "]", "{", "}", "true",
              "null", '"\\u00e9"', '"x\\"', "0", "01", '"\\n"', "\n"]
    agree = 0
    for k in range(60000):
        if k % 2:
            text = "".join(rng.choice(chars) for _ in range(rng.randint(1, 10)))
        else:
            text = "{" + "".join(rng.choice(pieces) for _ in range(rng.randint(0, 7))) + "}"
        state = feed(START, text.encode())
        ours = state is not None and state[0] == DONE
        try:
            theirs = isinstance(json.loads(text), dict) and text.lstrip()[:1] == "{"
        except ValueError:
            theirs = False
        if theirs and text != text.rstrip():
            theirs = False                      # JSON mode ends at the closing brace
        assert ours == theirs, text
        agree += ours
    assert agree > 100                           # the sample holds enough complete objects


@pytest.mark.parametrize("text", [b'{"a" 1}', b"{a: 1}", b'{"a": tru}', b'{"a": 01}', b'{"a": 1,}',
                                  b"[1]", b'{"a": "\x01"}', b'{"a": "\\x"}', b'{"a": 1}}', b'{"a": -}',
                                  b'{"a": 1.}', b'{"a": "\xff"}', b'{"a": "\xc3("}', b'"x"'])
def test_invalid_json_is_rejected(text):
    assert feed(START, text) is None


def test_nesting_and_whitespace_are_bounded():
    assert feed(START, b'{"a":' + b"[" * 31) is not None
    assert feed(START, b'{"a":' + b"[" * 32) is None
    assert feed(START, b"{" + b" " * 32) is not None
    assert feed(START, b"{" + b" " * 33) is None


def test_masks_equal_a_brute_force_check_of_every_token(smol_tokenizer):
    tb = token_bytes(smol_tokenizer)
    index = JsonTokenIndex(tb, len(tb), smol_tokenizer.eos_token_ids)
    for prefix in [b"", b"{", b'{\n  "na', b'{"a": ', b'{"a": "x\\', b'{"a": "\\u00', b'{"a": "\xc3',
                   b'{"a": [1, 2', b'{"a": [1.5e', b'{"a": t', b'{"a": {}', b'{"a": "x"}']:
        state = feed(START, prefix)
        mask = index.allowed(JSON_OBJECT_AUTOMATON, state)
        if state[0] == DONE:
            assert set(np.flatnonzero(mask)) == set(smol_tokenizer.eos_token_ids)
            continue
        want = np.array([b is not None and len(b) > 0 and feed(state, b) is not None for b in tb])
        assert (mask == want).all(), (prefix, np.flatnonzero(mask != want)[:10])


@pytest.fixture(scope="module")
def llm(smollm2_gguf):
    return LLM(model=str(smollm2_gguf), target="cpu", max_model_len=512)


def test_json_mode_answers_one_json_object(llm):
    json_mode = {"type": "json_object"}
    out = llm.chat([{"role": "user", "content": "What is the capital of France? Answer in JSON."}],
                   SamplingParams(max_tokens=64, temperature=0, response_format=json_mode))
    assert out.finish_reason == "stop" and isinstance(json.loads(out.text), dict), out.text
    # sampled, several choices, a min_tokens the object ends before: still one object each
    outs = llm.generate(["Describe a cat as JSON:"], SamplingParams(
        max_tokens=48, temperature=1.0, seed=3, n=4, min_tokens=40, response_format=json_mode))
    for choice in outs[0].choices:
        state = feed(START, choice.text.encode())
        assert state is not None, choice.text          # a prefix of a JSON object...
        if choice.finish_reason == "stop":             # ...and a whole one when it stopped
            assert isinstance(json.loads(choice.text), dict)


def test_json_mode_constraint_follows_the_tokens(smol_tokenizer):
    tb = token_bytes(smol_tokenizer)
    c = JsonConstraint(JsonTokenIndex(tb, len(tb), smol_tokenizer.eos_token_ids))
    for t in smol_tokenizer.encode('{"a": [1, "b"]}', add_special_tokens=False):
        assert c.allowed()[t]
        c.advance(t)
    assert c.done and c.allowed().sum() == len(set(smol_tokenizer.eos_token_ids))


def test_unsupported_response_formats_are_refused():
    with pytest.raises(SamplingParamsError, match="json_schema needs json_schema.schema"):
        SamplingParams(response_format={"type": "json_schema", "json_schema": {}})
    with pytest.raises(SamplingParamsError, match="'xml' is not supported"):
        SamplingParams(response_format={"type": "xml"})
    assert SamplingParams(response_format={"type": "text"}).json_mode is False


# --- JSON Schema --------------------------------------------------------------------------

PERSON = {  # as pydantic's model_json_schema() writes a model with a nested one
    "$defs": {"Pet": {"properties": {"kind": {"enum": ["cat", "dog"], "title": "Kind"},
                                     "legs": {"type": "integer"}},
                      "required": ["kind", "legs"], "title": "Pet", "type": "object"}},
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                   "height": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None},
                   "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}},
                   "verified": {"type": "boolean"}, "tags": {"type": "array"}},
    "required": ["name", "age", "pets"], "title": "Person", "type": "object"}


def random_person(rng: random.Random) -> dict:
    out = {"name": random_string(rng), "age": rng.randint(-5, 120)}
    if rng.random() < 0.5:
        out["height"] = rng.choice([None, 1.5, 180, -2e-3])
    out["pets"] = [{"kind": rng.choice(["cat", "dog"]), "legs": rng.randint(0, 4)}
                   for _ in range(rng.randint(0, 2))]
    if rng.random() < 0.5:
        out["verified"] = rng.random() < 0.5
    if rng.random() < 0.5:
        out["tags"] = [random_value(rng, 2) for _ in range(rng.randint(0, 2))]
    return out


def test_schema_accepts_its_instances_in_property_order():
    a = Automaton(compile_schema(PERSON))
    rng = random.Random(2)
    for _ in range(200):
        text = json.dumps(random_person(rng), indent=rng.choice([None, 2]),
                          ensure_ascii=rng.random() < 0.5).encode()
        state = a.start
        for k in range(len(text)):
            assert state[0] != DONE
            state = a.step(state, text[k])
            assert state is not None, (text, text[:k + 1])
        assert state[0] == DONE


@pytest.mark.parametrize("text", [
    '{"age": 1, "name": "x", "pets": []}',                      # out of order
    '{"name": "x", "pets": []}',                                # a required key left out
    '{"name": "x", "age": 1, "pets": [], "extra": 1}',          # an undeclared key
    '{"name": 1, "age": 1, "pets": []}',                        # wrong type
    '{"name": "x", "age": 1.5, "pets": []}',                    # not an integer
    '{"name": "x", "age": 1e3, "pets": []}',
    '{"name": "x", "age": 1, "pets": [{"kind": "cow", "legs": 4}]}',   # not in the enum
    '{"name": "x", "age": 1, "height": "tall", "pets": []}',   # anyOf number | null
    '{"name": "x", "age": 1, "pets": {}}',                      # array expected
    '["name"]'])
def test_schema_rejects_what_it_does_not_allow(text):
    a = Automaton(compile_schema(PERSON))
    state = a.feed(a.start, text.encode())
    assert state is None or state[0] != DONE


def test_schema_top_level_values_end_where_they_can():
    a = Automaton(compile_schema({"enum": ["a", "ab", 1, 10]}))
    assert a.feed(a.start, b'"ab"')[0] == DONE and a.feed(a.start, b'"a"')[0] == DONE
    assert a.complete(a.feed(a.start, b"1")) and not a.complete(a.feed(a.start, b'"a'))
    assert a.feed(a.start, b"2") is None
    n = Automaton(compile_schema({"type": "integer"}))
    assert n.complete(n.feed(n.start, b"-12")) and n.feed(n.start, b"1.") is None


@pytest.mark.parametrize("schema,match", [
    ({"type": "array", "uniqueItems": True}, "uniqueItems not supported"),
    ({"type": "object", "properties": {"a": {"type": "string", "uniqueItems": True}}},
     r"schema.properties.a: JSON Schema keyword\(s\) uniqueItems"),
    ({"oneOf": [{"type": "object"}, {"type": "object", "properties": {}}]},
     r"schema: oneOf branches that can start alike \('\{'\) could both match"),
    ({"$ref": "#/$defs/Missing"}, "points at nothing"),
    ({"type": "object", "required": ["a"]}, "does not declare"),
    ({"type": "date"}, "not a JSON Schema type")])
def test_unsupported_schemas_say_what_and_where(schema, match):
    with pytest.raises(SchemaError, match=match):
        compile_schema(schema)


def test_schema_masks_equal_a_brute_force_check(smol_tokenizer):
    tb = token_bytes(smol_tokenizer)
    index = JsonTokenIndex(tb, len(tb), smol_tokenizer.eos_token_ids)
    a = Automaton(compile_schema(PERSON))
    for prefix in [b"", b"{", b'{"na', b'{"name": "x", ', b'{"name": "x", "age": 1', b'{"name": "x", "age": 1,',
                   b'{"name": "x", "age": 1, "pets": [{"kind": "c', b'{"name": "x", "age": 1, "pets": []']:
        state = a.feed(a.start, prefix)
        want = brute_force_mask(a, state, tb)
        assert (index.allowed(a, state) == want).all(), prefix


def test_json_schema_answers_an_instance(llm):
    person = {"type": "object", "properties": {"name": {"type": "string"},
                                                 "age": {"type": "integer"}},
              "required": ["name", "age"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": person}}
    out = llm.chat([{"role": "user", "content": "Invent a person: name and age, in JSON."}],
                   SamplingParams(max_tokens=64, temperature=0, response_format=fmt))
    value = json.loads(out.text)
    assert out.finish_reason == "stop" and list(value) == ["name", "age"], out.text
    assert isinstance(value["name"], str) and isinstance(value["age"], int)


CHAIN = {  # pydantic: class Chain(BaseModel): value: int; next: Optional["Chain"]
    "$defs": {"Chain": {"type": "object", "additionalProperties": False, "required": ["value", "next"],
                        "properties": {"value": {"type": "integer"},
                                       "next": {"anyOf": [{"$ref": "#/$defs/Chain"}, {"type": "null"}]}}}},
    "$ref": "#/$defs/Chain"}


@pytest.mark.parametrize("text,ok", [
    ('{"value": 1, "next": null}', True),
    ('{"value": 1, "next": {"value": 2, "next": {"value": 3, "next": null}}}', True),
    ('{"value": 1, "next": 12}', False),                     # was any value: a recursive $ref
    ('{"value": 1, "next": {"value": 2, "next": "x"}}', False),  # in anyOf read as "any"
    ('{"value": 1, "next": {"value": 2}}', False)])
def test_recursive_ref_inside_anyof_keeps_its_schema(text, ok):
    a = Automaton(compile_schema(CHAIN))
    state = a.feed(a.start, text.encode())
    assert (state is not None and state[0] == DONE) == ok


@pytest.mark.parametrize("name", ['say "hi"', "a\\b", 'x\\"', "tab\there", "é"])
def test_declared_names_that_need_escapes_can_be_written(name):
    """A name with a quote was a dead end after its backslash (the quote was read as the
    name's end): no token fitted, and sampling from nothing failed every request."""
    schema = {"type": "object", "properties": {name: {"type": "integer"}, "b": {"type": "integer"}},
              "required": [name, "b"]}
    a = Automaton(compile_schema(schema))
    text = json.dumps({name: 1, "b": 2}, ensure_ascii=False).encode()
    state = a.start
    for k in range(len(text)):
        state = a.step(state, text[k])
        assert state is not None, text[:k + 1]
    assert state[0] == DONE


def test_schemas_that_differ_in_property_order_do_not_share_masks(smol_tokenizer):
    """Keys come in the schema's order, so the masks cached for one order must not serve
    the other (they were: the cache key sorted the schema's keys)."""
    tb = token_bytes(smol_tokenizer)
    index = JsonTokenIndex(tb, len(tb), smol_tokenizer.eos_token_ids)
    props = [("name", {"type": "string"}), ("age", {"type": "integer"})]
    answers = {}
    for order in (props, props[::-1]):
        schema = {"type": "object", "properties": dict(order), "required": ["name", "age"]}
        a = Automaton(compile_schema(schema))
        c = JsonConstraint(index, a)
        for t in smol_tokenizer.encode('{"', add_special_tokens=False):
            c.advance(t)
        allowed = c.allowed()
        answers[order[0][0]] = {tb[t] for t in np.flatnonzero(allowed)}
    assert b"name" in answers["name"] and b"age" not in answers["name"]
    assert b"age" in answers["age"] and b"name" not in answers["age"]


SECTION = {  # a section: its content (an object with a list) and its subsections
    "$defs": {"Content": {"type": "object", "properties": {"paragraphs": {"type": "array",
                                                                            "items": {"type": "string"}}},
                          "required": ["paragraphs"]},
              "Section": {"type": "object", "required": ["title", "content", "subsections"],
                          "properties": {"title": {"type": "string"}, "content": {"$ref": "#/$defs/Content"},
                                         "subsections": {"type": "array",
                                                         "items": {"$ref": "#/$defs/Section"}}}}},
    "$ref": "#/$defs/Section"}


def test_nesting_limit_leaves_no_dead_end():
    """A section opened with too little nesting left could not write its content's list:
    a state no token continues (sampling from nothing failed every request). Such a
    section is not started; the one around it can still end."""
    a = Automaton(compile_schema(SECTION))
    state, depth = a.start, 0
    while True:
        inside = a.feed(state, b'{"title": "x", "content": {"paragraphs": ')
        if inside is None:
            assert a.step(state, ord("{")) is None          # refused at its first byte...
            assert a.feed(state, b"]}" * depth)[0] == DONE        # ...and the rest can end
            break
        assert a.step(inside, ord("[")) is not None, depth
        state, depth = a.feed(inside, b'[]}, "subsections": ['), depth + 1
    assert 10 < depth < 20
    # an optional property that would not fit is not offered either
    deep = {"type": "object", "properties": {"a": SECTION["$defs"]["Content"], "b": {"type": "integer"}}}
    for _ in range(31):
        deep = {"type": "array", "items": deep}
    d = Automaton(compile_schema(deep))
    state = d.feed(d.start, b"[" * 31 + b'{"')
    assert d.step(state, ord("a")) is None and d.step(state, ord("b")) is not None


def test_a_schema_with_no_finite_instance_is_refused():
    loop = {"$defs": {"A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}},
                            "required": ["a"]}}, "$ref": "#/$defs/A"}
    with pytest.raises(SchemaError, match="no instance fits"):
        compile_schema(loop)


def test_a_state_no_token_continues_allows_only_the_end():
    tb = [None, b"{", b"a"]                           # no quote, no brace to close: stuck after {
    index = JsonTokenIndex(tb, len(tb), [0])
    c = JsonConstraint(index)
    assert list(np.flatnonzero(c.allowed())) == [1]
    c.advance(1)
    assert list(np.flatnonzero(c.allowed())) == [0]   # the end of generation, not nothing
    c.advance(0)                                        # (a special token: no bytes, no error)


def test_a_large_enum_stays_cheap():
    """Every byte of an enum value compared it with every value: 4000 values took ~4 s for
    one mask on SmolLM2's vocabulary, while every request in the engine waited."""
    import itertools
    import time
    letters = "abcdefghijklmnopqrstuvwxyz"
    rng = random.Random(5)
    words = {"".join(rng.choice(letters) for _ in range(8)) for _ in range(20000)}
    tb = [None, b'"'] + [(a + b).encode() for a, b in itertools.product(letters, repeat=2)] \
        + [c.encode() for c in letters]
    index = JsonTokenIndex(tb, len(tb), [0])
    a = Automaton(compile_schema({"enum": sorted(words)}))
    t = time.perf_counter()
    state = a.feed(a.start, b'"')
    mask = index.allowed(a, state)
    assert time.perf_counter() - t < 1.0
    want = np.array([b is not None and a.feed(state, b) is not None for b in tb])
    assert (mask == want).all()
    word = sorted(words)[7]
    end = a.feed(a.start, f'"{word}"'.encode())
    assert end[0] == DONE and a.feed(a.start, f'"{word[:-1]}"'.encode()) is None


@pytest.mark.parametrize("schema,text,ok", [
    # properties / required / items without "type" were read as any value
    ({"properties": {"a": {"type": "string"}}, "required": ["a"]}, '{"a": "x"}', True),
    ({"properties": {"a": {"type": "string"}}, "required": ["a"]}, "{}", False),
    ({"properties": {"a": {"type": "string"}}, "required": ["a"]}, '{"a": 5}', False),
    ({"additionalProperties": {"type": "integer"}}, '{"k": "v"}', False),
    ({"items": {"type": "integer"}}, '[1, 2]', True),
    ({"items": {"type": "integer"}}, '["x"]', False),
    # an enum value of another type than "type" can never validate
    ({"type": "string", "enum": ["a", 1]}, "1", False),
    ({"type": "string", "enum": ["a", 1]}, '"a"', True),
    ({"type": "integer", "const": 2}, "2", True)])
def test_keywords_hold_without_or_beside_type(schema, text, ok):
    a = Automaton(compile_schema(schema))
    state = a.feed(a.start, text.encode())
    assert (state is not None and a.complete(state)) == ok


@pytest.mark.parametrize("schema,match", [
    ({"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"],
      "anyOf": [{"type": "object"}]}, "anyOf next to properties, required, type"),
    ({"$defs": {"X": {"type": "string"}}, "$ref": "#/$defs/X", "type": "integer"}, r"\$ref next to type"),
    ({"type": "string", "enum": [1, 2]}, "no enum value is of type 'string'")])
def test_keywords_that_would_be_dropped_are_refused(schema, match):
    with pytest.raises(SchemaError, match=match):
        compile_schema(schema)


@pytest.mark.parametrize("schema", [{"anyOf": [{"type": "integer"}, {"type": "number"}]},
                                    {"type": ["integer", "number", "null"]}])
def test_integer_or_number_is_a_number(schema):
    """pydantic's int | float: was refused (branches that start alike)."""
    a = Automaton(compile_schema(schema))
    for text in ("2", "-1.5e3"):
        assert a.complete(a.feed(a.start, text.encode()))
    assert a.feed(a.start, b'"2"') is None


@pytest.mark.parametrize("text,ok", [
    ('{"a": "\\ud83d\\ude00"}', True), ('{"a": "\\uD83D\\uDE00 \\u00e9\\uffff\\u0000"}', True),
    ('{"\\ud83d\\ude00": 1}', True),
    ('{"a": "\\ud83d"}', False), ('{"a": "\\ud83dx"}', False), ('{"a": "\\ud83d\\u0041"}', False),
    ('{"a": "\\ude00"}', False), ('{"a": "\\ud83d\\ud83d"}', False)])
def test_surrogate_escapes_come_in_pairs(text, ok):
    """json.loads reads a lone surrogate, but pydantic (the openai client's parse()) says
    'Invalid JSON: lone leading surrogate in hex escape'."""
    state = feed(START, text.encode())
    assert (state is not None and state[0] == DONE) == ok


def test_json_mode_is_never_sampled_ahead_of_the_host():
    """The overlapped decode (cuda) samples the next token before the host has seen the
    last one; JSON mode's mask follows the output, so it must not (no CPU test reaches
    this path with a tokenizer: test_overlap_decode's model has none)."""
    from types import SimpleNamespace

    from rustinfer.runtime.engine import Engine
    for fmt, ok in ((None, True), ({"type": "json_object"}, False),
                    ({"type": "json_schema", "json_schema": {"schema": {"type": "integer"}}}, False)):
        seq = SimpleNamespace(params=SamplingParams(response_format=fmt), output_token_ids=[1, 2])
        assert Engine._samples_without_host(seq) == ok
