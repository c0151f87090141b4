"""JSON mode (response_format {"type": "json_object"}): runtime/json_constraint.py and its
use by the sampler and the engine.

Oracles: Python's json module (what a client parses the answer with) for the automaton,
and a brute-force check of every token's bytes for the masks.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from rustinfer.runtime import LLM, SamplingParams
from rustinfer.runtime.json_constraint import (DONE, START, JsonConstraint, JsonTokenIndex,
                                               feed)
from rustinfer.runtime.sampling import SamplingParamsError
from rustinfer.runtime.token_bytes import token_bytes
from rustinfer.runtime.tokenizer import Tokenizer


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


@pytest.fixture(scope="module")
def smol_tokenizer(smollm2_gguf):
    return Tokenizer.load(smollm2_gguf)


def test_masks_equal_a_brute_force_check_of_every_token(smol_tokenizer):
    tb = token_bytes(smol_tokenizer)
    index = JsonTokenIndex(tb, len(tb), smol_tokenizer.eos_token_ids)
    for prefix in [b"", b"{", b'{\n  "na', b'{"a": ', b'{"a": "x\\', b'{"a": "\\u00', b'{"a": "\xc3',
                   b'{"a": [1, 2', b'{"a": [1.5e', b'{"a": t', b'{"a": {}', b'{"a": "x"}']:
        state = feed(START, prefix)
        mask = index.allowed(state)
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
    with pytest.raises(SamplingParamsError, match="json_schema.*not supported"):
        SamplingParams(response_format={"type": "json_schema", "json_schema": {}})
    assert SamplingParams(response_format={"type": "text"}).json_mode is False
