"""JSON mode, audited as a user of structured outputs: what a completed answer must satisfy
(pydantic parses it), what must not dead-end, and what must not be slow or crash."""
from __future__ import annotations

import pytest

from rustinfer.runtime import json_pattern
from rustinfer.runtime.json_constraint import Automaton
from rustinfer.runtime.json_masks import JsonTokenIndex
from rustinfer.runtime.json_schema import compile_schema
from rustinfer.runtime.token_bytes import token_bytes
from rustinfer.runtime.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def smol_index(smollm2_gguf):
    tok = Tokenizer.load(smollm2_gguf)
    tb = token_bytes(tok)
    return JsonTokenIndex(tb, len(tb), tok.eos_token_ids)


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
