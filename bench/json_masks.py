"""JSON mode's cost per new mask, on the default model's vocabulary (SmolLM2, 49,152 tokens).

    .venv/bin/python bench/json_masks.py [--model PATH_OR_ALIAS] [--brute 3]

A mask is computed once per (schema, automaton state) and then cached; what a user waits
on is a state met for the first time, which a bounded string or a pattern meets with every
character. For each schema below this prints the milliseconds of fresh masks along one
answer (the first includes building the schema's tables), against the peer every mask
must equal: feeding each token's bytes to the automaton (what the tests check against),
timed on the same states in the same run. The ratio to compare with is one CPU decode
step of the model: ~10 ms int4, ~25 ms fp32 on the 2-core CI machine.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from rustinfer.runtime.json_constraint import Automaton
from rustinfer.runtime.json_masks import JsonTokenIndex
from rustinfer.runtime.json_schema import compile_schema
from rustinfer.runtime.model_resolver import resolve_model
from rustinfer.runtime.token_bytes import token_bytes
from rustinfer.runtime.tokenizer import Tokenizer

CASES = [  # (label, schema of the answer's one field, the field's text typed so far)
    ("free string", {"type": "string"}, ["", "Ada", "Ada Love"]),
    ("maxLength 40", {"type": "string", "maxLength": 40}, ["", "Ada", "Ada Love"]),
    ("pattern ^[a-z ]{0,100}$", {"type": "string", "pattern": "^[a-z ]{0,100}$"},
     ["", "abc", "abc de", "abc def"]),
    ("pattern email", {"type": "string", "pattern": r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[a-z]{2,}$"},
     ["", "ada", "ada.l@", "ada.l@ex"]),
    ("format date-time", {"type": "string", "format": "date-time"}, ["", "2024-0", "2024-05-01T1"]),
    ("format email", {"type": "string", "format": "email"}, ["", "ada", "ada.l@", "ada.l@exa"]),
    ("HttpUrl (uri, maxLength)", {"type": "string", "format": "uri", "minLength": 1, "maxLength": 2083},
     ["", "https://", "https://exam", "https://example.com/a"]),
    ("number in [0, 100]", {"type": "number", "minimum": 0, "maximum": 100}, ["", "1", "12.", "12.5"]),
]


def brute_force(a: Automaton, state, tb: list) -> np.ndarray:
    return np.array([bool(b) and a.feed(state, b) is not None for b in tb])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a .gguf or folder (default: SmolLM2)")
    ap.add_argument("--brute", type=int, default=2, help="states per schema timed by brute force")
    args = ap.parse_args()
    tok = Tokenizer.load(resolve_model(args.model))
    tb = token_bytes(tok)
    started = time.perf_counter()
    index = JsonTokenIndex(tb, len(tb), tok.eos_token_ids)
    print(f"vocabulary {len(tb)} tokens; index built in {1e3 * (time.perf_counter() - started):.0f} ms")
    print(f"{'schema':28s} {'first ms':>9s} {'next ms (median)':>17s} {'brute force ms':>15s} {'ratio':>7s}")
    for label, field, typed in CASES:
        a = Automaton(compile_schema({"type": "object", "required": ["v"], "properties": {"v": field}}))
        opening = b'{"v": "' if field.get("type") == "string" else b'{"v": '
        states = [a.feed(a.start, opening + t.encode()) for t in typed]
        times = []
        for state in states:
            t0 = time.perf_counter()
            mask = index.allowed(a, state)
            times.append(1e3 * (time.perf_counter() - t0))
        brute = []
        for state in states[1:1 + args.brute]:
            t0 = time.perf_counter()
            want = brute_force(a, state, tb)
            brute.append(1e3 * (time.perf_counter() - t0))
            if not (index.allowed(a, state) == want).all():
                raise SystemExit(f"{label}: the mask differs from the brute-force one")
        nxt, bf = statistics.median(times[1:]), statistics.median(brute)
        print(f"{label:28s} {times[0]:9.1f} {nxt:17.2f} {bf:15.0f} {bf / nxt:6.0f}x"
              f"   ({int(mask.sum())} tokens allowed at the last state)")


if __name__ == "__main__":
    main()
