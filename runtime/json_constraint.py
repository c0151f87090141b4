"""JSON mode: response_format json_object / json_schema holds the output to one JSON value.

At every step the sampler may only pick a token whose bytes keep the output a prefix of
a JSON value the schema allows (json_object: any object; json_schema: see
json_schema.py); once the value is complete, only an end-of-generation token. The output
then parses (and validates) unless max_tokens cuts it short (finish_reason "length", as
with OpenAI).

How. `Automaton.step(state, byte)` is a byte-level pushdown automaton for JSON that
follows the schema's node table (states are small tuples, so they hash). A token is
allowed in a state when the automaton accepts all its bytes from there (json_masks.py
finds those tokens, per vocabulary).

Limits that keep a model from running away inside the constraint: at most 32 nested
containers and 32 whitespace bytes in a row between tokens of JSON. A container (or an
optional property) whose required contents would not fit in the nesting left is not
started: no state is a dead end.
"""
from __future__ import annotations

from bisect import bisect_left
from . import json_formats as formats
from .json_numbers import contains, reachable
from .json_schema import ANY_ARRAY, ANY_OBJECT, JSON_OBJECT, MAX_DEPTH, Schema, min_depths

# What the automaton expects next.
VALUE, OBJ_OPEN, KEY, COLON, AFTER, ARR_OPEN, STRING, NUMBER, LITERAL, LITS, DONE, MULTI = \
    range(12)
MAX_WS = 32
_WS = frozenset(b" \t\n\r")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_DIGITS = frozenset(b"0123456789")
# number phases -> {byte: next phase}; a number may end in the phases of _NUMBER_END
_NUMBER = {
    "minus": {**{ord("0"): "zero"}, **{d: "int" for d in b"123456789"}},
    "zero": {ord("."): "frac0", ord("e"): "exp0", ord("E"): "exp0"},
    "int": {**{d: "int" for d in _DIGITS}, ord("."): "frac0", ord("e"): "exp0", ord("E"): "exp0"},
    "frac0": {d: "frac" for d in _DIGITS},
    "frac": {**{d: "frac" for d in _DIGITS}, ord("e"): "exp0", ord("E"): "exp0"},
    "exp0": {**{d: "exp" for d in _DIGITS}, ord("+"): "sign", ord("-"): "sign"},
    "sign": {d: "exp" for d in _DIGITS},
    "exp": {d: "exp" for d in _DIGITS},
}
_NUMBER_END = frozenset({"zero", "int", "frac", "exp"})
_INTEGER_ONLY = frozenset({"minus", "zero", "int"})
_NO_EXPONENT = frozenset({"minus", "zero", "int", "frac0", "frac"})
# \uXXXX: (escape phase, byte) -> next phase (0: the escape is over). 14..11: 4..1 hex
# digits due; 20: after \ud, a surrogate or not; 22, 21: a high surrogate's last two;
# 30..33: its low surrogate's \, u, d, [c-f]. A lone surrogate is valid JSON grammar but
# not text: pydantic (what OpenAI's client parses with) refuses it.
_ESCAPE = {**{(14, h): 20 if h in b"dD" else 13 for h in _HEX},
           **{(e, h): e - 1 for e in (13, 12, 22) for h in _HEX}, **{(11, h): 0 for h in _HEX},
           **{(20, h): 12 for h in b"01234567"}, **{(20, h): 22 for h in b"89abAB"},
           **{(21, h): 30 for h in _HEX}, (30, 0x5C): 31, (31, ord("u")): 32,
           (32, ord("d")): 33, (32, ord("D")): 33, **{(33, h): 12 for h in b"cdefCDEF"}}
_LITERALS = {ord("t"): (b"rue", "boolean"), ord("f"): (b"alse", "boolean"), ord("n"): (b"ull", "null")}

# state = (mode, frames, whitespace run, detail, node); (MULTI, (), 0, states, None) for the
# states of a union's branches that start alike, until the text tells them apart
#   frames: one per open container: ("O", object node, next property index) or ("A", array
#           node, items begun: counted only up to the bound that needs it, so arrays without
#           minItems / maxItems keep one state)
#   detail: STRING (key, escape, utf8 bytes due, typed bytes of a declared key or of a
#           formatted string, a pattern's NFA states, else None, characters so far:
#           counted likewise, for minLength / maxLength); NUMBER (phase, integer only, the
#           bytes so far when it has bounds, else None); LITERAL bytes due; LITS typed bytes
#   node:   the schema node of the value being written (VALUE, ARR_OPEN's first item, COLON's)


class Automaton:
    """JSON, as one schema allows it (json_schema.py's node table)."""

    def __init__(self, schema: Schema = JSON_OBJECT):
        self.schema = schema
        self.nodes = schema.nodes
        self.need = min_depths(schema.nodes)        # per node: nesting its value needs
        self.start = (VALUE, (), 0, None, schema.root)

    # -- helpers --------------------------------------------------------------------------
    def _after_value(self, frames: tuple):
        return (AFTER, frames, 0, None, None) if frames else (DONE, (), 0, None, None)

    def _candidates(self, frames: tuple) -> list[int]:
        """Property slots a key may name next: from the object's next index up to the first
        required one, leaving out optional ones whose value would not fit in the nesting
        left (a required one always fits: its object was only opened when they did)."""
        _, obj, idx = frames[-1]
        props, room = self.nodes[obj][1], MAX_DEPTH - len(frames)
        out = []
        for j in range(idx, len(props)):
            if props[j][2]:
                out.append(j)
                break
            if self.need[props[j][1]] <= room:
                out.append(j)
        return out

    def _free_key(self, frames: tuple) -> bool:
        """Whether a key the object does not declare may come next."""
        extra = self.nodes[frames[-1][1]][2]
        return extra is not None and self.need[extra] <= MAX_DEPTH - len(frames)

    def _may_close(self, obj: int, idx: int) -> bool:
        return not any(p[2] for p in self.nodes[obj][1][idx:])

    def bounds(self, node) -> tuple[int, int | None]:
        """(min, max or None) items of an array node or characters of a string node."""
        spec = self.nodes[node] if node is not None else ("any",)
        if spec[0] == "array":
            return spec[2], spec[3]
        return (spec[1], spec[2]) if spec[0] == "string" else (0, None)

    def _counted(self, node, n: int) -> int | None:
        """n + 1 items / characters, or None when the bound forbids one more. Counts stop at
        the largest bound (or an array's last prefixItem), so each count is a state only
        where something needs it."""
        lo, hi = self.bounds(node)
        if hi is not None and n >= hi:
            return None
        spec = self.nodes[node] if node is not None else ("any",)
        prefix = len(spec[4]) if spec[0] == "array" else 0
        return min(n + 1, hi if hi is not None else max(lo, prefix))

    def _item(self, arr: int, i: int) -> int:
        """The schema node of an array's item i (prefixItems first, then items)."""
        spec = self.nodes[arr]
        return spec[4][i] if i < len(spec[4]) else spec[1]

    def _value(self, frames: tuple, node: int, b: int, _seen: frozenset = frozenset()):
        """The state after byte b starts a value of `node`."""
        spec = self.nodes[node]
        kind = spec[0]
        if kind == "union":                         # every branch that can start with b
            return _multi(self._value(frames, branch, b, _seen | {node})
                          for branch in spec[2].get(b, ()) if branch not in _seen)
        if kind == "lits":
            return (LITS, frames, 0, bytes([b]), node) if _prefixes(spec[1], bytes([b])) else None
        if b == 0x7B and kind in ("any", "object"):                         # {
            obj = ANY_OBJECT if kind == "any" else node
            if len(frames) + self.need[obj] > MAX_DEPTH:
                return None
            return (OBJ_OPEN, frames + (("O", obj, 0),), 0, None, None)
        if b == 0x5B and kind in ("any", "array"):                          # [
            arr = ANY_ARRAY if kind == "any" else node
            if len(frames) + self.need[arr] > MAX_DEPTH:
                return None
            return (ARR_OPEN, frames + (("A", arr, 0),), 0, None, self._item(arr, 0))
        if b == 0x22 and kind in ("any", "string"):                         # "
            typed = None                 # a format's text, a pattern's NFA states, or None
            if kind == "string" and (spec[3] or spec[4]):
                typed = b"" if spec[3] else spec[4].start
            return (STRING, frames, 0, (False, 0, 0, typed, 0), node)
        if kind in ("any", "number") and (b == 0x2D or b in _DIGITS):      # - 0-9
            integer = kind == "number" and spec[1]
            phase = "minus" if b == 0x2D else "zero" if b == 0x30 else "int"
            bounds = spec[2] if kind == "number" else None
            if bounds is None:
                return (NUMBER, frames, 0, (phase, integer, None), node)
            return (NUMBER, frames, 0, (phase, integer, bytes([b])), node) \
                if reachable(bounds, bytes([b])) else None
        if b in _LITERALS and kind in ("any", _LITERALS[b][1]):
            return (LITERAL, frames, 0, _LITERALS[b][0], node)
        return None

    def _string(self, state, b: int):
        _, frames, _, (is_key, esc, due, typed, n), node = state
        if typed is not None and not is_key and self.nodes[node][4]:
            return self._pattern_string(state, b)
        if typed is not None and not is_key:        # a formatted string: ASCII, no escapes
            lo, hi = self.bounds(node)
            if b == 0x22:
                done = lo <= len(typed) and formats.complete(self.nodes[node][3], typed.decode())
                return self._after_value(frames) if done else None
            if not 0x20 <= b < 0x7F or b == 0x5C or (hi is not None and len(typed) >= hi):
                return None
            longer = typed + bytes([b])
            return (STRING, frames, 0, (False, 0, 0, longer, n), node) \
                if formats.viable(self.nodes[node][3], longer.decode()) else None
        if typed is not None:                       # a declared property's name
            obj = frames[-1][1]
            props = self.nodes[obj][1]
            longer = typed + bytes([b])
            # Names are spelled escaped: a quote that continues one is its \" (never the
            # end of another, complete name: that cannot end inside an escape).
            if any(props[j][0].startswith(longer) for j in self._candidates(frames)):
                return (STRING, frames, 0, (True, 0, 0, longer, 0), None)
            if b == 0x22:
                for j in self._candidates(frames):
                    if props[j][0] == typed:
                        top = ("O", obj, j + 1)
                        return (COLON, frames[:-1] + (top,), 0, None, props[j][1])
            return None
        if due:                                     # inside a multi-byte character
            return (STRING, frames, 0, (is_key, 0, due - 1, None, n), node) \
                if 0x80 <= b <= 0xBF else None
        if esc == 1:                                # after a backslash
            if b == ord("u"):
                return (STRING, frames, 0, (is_key, 14, 0, None, n), node)    # 10 + 4 hex due
            return (STRING, frames, 0, (is_key, 0, 0, None, n), node) if b in b'"\\/bfnrt' \
                else None
        if esc:                                     # \uXXXX, surrogates in pairs
            esc = _ESCAPE.get((esc, b))
            return None if esc is None else (STRING, frames, 0, (is_key, esc, 0, None, n), node)
        if b == 0x22:
            if is_key:                              # a free key: its value follows the object's extra
                return (COLON, frames, 0, None, self.nodes[frames[-1][1]][2])
            return self._after_value(frames) if n >= self.bounds(node)[0] else None
        if b < 0x20:
            return None                             # control bytes must be escaped
        # A character begins: a backslash (an escape, a surrogate pair included, is one
        # character), an ASCII byte or a UTF-8 lead byte.
        due = 0 if b < 0x80 else 1 if 0xC2 <= b <= 0xDF else 2 if 0xE0 <= b <= 0xEF \
            else 3 if 0xF0 <= b <= 0xF4 else -1
        if due < 0:
            return None
        counted = self._counted(node, n)
        if counted is None:
            return None
        if b == 0x5C:
            return (STRING, frames, 0, (is_key, 1, 0, None, counted), node)
        if due == 0 and counted == n:
            return state                            # the common case: no count kept
        return (STRING, frames, 0, (is_key, 0, due, None, counted), node)

    def _pattern_string(self, state, b: int):
        """A string held to a pattern (json_pattern.py): printable ASCII, no escapes. Under
        minLength / maxLength its characters are counted (up to the larger bound), and one
        is taken only while the match can still end within the bounds."""
        _, frames, _, (_, _, _, states, n), node = state
        pattern = self.nodes[node][4]
        lo, hi = self.bounds(node)
        if b == 0x22:
            return self._after_value(frames) if pattern.accepts(states) and n >= lo else None
        if not 0x20 <= b < 0x7F or b == 0x5C:
            return None
        nxt = pattern.step(states, chr(b))
        if nxt is None:
            return None
        if lo or hi is not None:
            n = n + 1 if hi is not None else min(n + 1, lo)
            if not pattern.lengths.fits(nxt, lo - n, None if hi is None else hi - n):
                return None
        return (STRING, frames, 0, (False, 0, 0, nxt, n), node)

    # -- the automaton --------------------------------------------------------------------
    def step(self, state, b: int):
        """The state after byte b, or None when no allowed JSON value starts with what came
        so far + b."""
        mode, frames, ws, detail, node = state
        if mode == MULTI:                           # branches of a union, followed together
            return _multi(self.step(s, b) for s in detail)
        if mode == STRING:
            return self._string(state, b)
        if mode == NUMBER:
            phase, integer, typed = detail
            nxt = _NUMBER[phase].get(b)
            if nxt is not None and not (integer and nxt not in _INTEGER_ONLY):
                if typed is None:
                    return (NUMBER, frames, 0, (nxt, integer, None), node)
                # bounded: plain decimal, and only towards a value in the range
                longer = typed + bytes([b])
                if nxt not in _NO_EXPONENT or not reachable(self.nodes[node][2], longer):
                    return None
                return (NUMBER, frames, 0, (nxt, integer, longer), node)
            if phase not in _NUMBER_END or (typed is not None
                                            and not contains(self.nodes[node][2], typed)):
                return None
            return self.step(self._after_value(frames), b)
        if mode == LITERAL:
            if b != detail[0]:
                return None
            return (LITERAL, frames, 0, detail[1:], node) if len(detail) > 1 else self._after_value(frames)
        if mode == LITS:
            # candidates are sorted: those starting with `typed` follow one another from
            # bisect_left's place, typed itself first when it is one (a large enum stays cheap)
            typed, candidates = detail + bytes([b]), self.nodes[node][1]
            i = bisect_left(candidates, typed)
            if i < len(candidates) and candidates[i].startswith(typed):
                if candidates[i] == typed and not (i + 1 < len(candidates)
                                                   and candidates[i + 1].startswith(typed)):
                    return self._after_value(frames)        # nothing longer: done
                return (LITS, frames, 0, typed, node)
            return self.step(self._after_value(frames), b) if _is_one(candidates, detail) else None
        if mode == DONE:
            return None
        if b in _WS:
            return (mode, frames, ws + 1, detail, node) if ws < MAX_WS else None
        if mode == VALUE:
            return self._value(frames, node, b)
        if mode == ARR_OPEN:
            _, arr, _ = frames[-1]
            if b == 0x5D:
                return self._after_value(frames[:-1]) if self.bounds(arr)[0] == 0 else None
            counted = self._counted(arr, 0)
            return None if counted is None else \
                self._value(frames[:-1] + (("A", arr, counted),), node, b)
        if mode == COLON:
            return (VALUE, frames, 0, None, node) if b == 0x3A else None
        kind, container, idx = frames[-1]
        if mode in (OBJ_OPEN, KEY) and b == 0x22:
            if self.nodes[container][1]:            # declared properties
                return (STRING, frames, 0, (True, 0, 0, b"", 0), None) \
                    if self._candidates(frames) else None
            return (STRING, frames, 0, (True, 0, 0, None, 0), None) if self._free_key(frames) \
                else None
        if mode == OBJ_OPEN and b == 0x7D:
            return self._after_value(frames[:-1]) if self._may_close(container, idx) else None
        if mode == AFTER:
            if kind == "O":
                if b == 0x2C:
                    more = self._candidates(frames) if self.nodes[container][1] \
                        else self._free_key(frames)
                    return (KEY, frames, 0, None, None) if more else None
                if b == 0x7D and self._may_close(container, idx):
                    return self._after_value(frames[:-1])
                return None
            if b == 0x2C:
                counted = self._counted(container, idx)
                return None if counted is None else \
                    (VALUE, frames[:-1] + (("A", container, counted),), 0, None,
                     self._item(container, idx))
            if b == 0x5D and idx >= self.bounds(container)[0]:
                return self._after_value(frames[:-1])
        return None

    def feed(self, state, data: bytes):
        for b in data:
            state = self.step(state, b)
            if state is None:
                return None
        return state

    def complete(self, state) -> bool:
        """Whether the output so far is a whole value (end of generation may come now)."""
        mode, frames, _, detail, node = state
        if mode == MULTI:
            return any(self.complete(s) for s in detail)
        if mode == DONE:
            return True
        if frames:
            return False
        if mode == NUMBER:
            return detail[0] in _NUMBER_END and (detail[2] is None
                                                 or contains(self.nodes[node][2], detail[2]))
        return mode == LITS and _is_one(self.nodes[node][1], detail)


def _multi(states):
    """One state for the states a union's branches are in (None dropped): None for none,
    the state itself for one, else a MULTI state that steps them all."""
    found: set = set()
    for s in states:
        if s is not None:
            found |= s[3] if s[0] == MULTI else {s}
    if len(found) <= 1:
        return next(iter(found), None)
    return (MULTI, (), 0, frozenset(found), None)


def _prefixes(candidates: tuple, prefix: bytes) -> bool:
    """Whether a candidate (sorted) starts with prefix."""
    i = bisect_left(candidates, prefix)
    return i < len(candidates) and candidates[i].startswith(prefix)


def _is_one(candidates: tuple, value: bytes) -> bool:
    i = bisect_left(candidates, value)
    return i < len(candidates) and candidates[i] == value


JSON_OBJECT_AUTOMATON = Automaton()
START = JSON_OBJECT_AUTOMATON.start


def step(state, b: int):
    """json_object's automaton, one byte (tests and the docstring's examples)."""
    return JSON_OBJECT_AUTOMATON.step(state, b)


def feed(state, data: bytes):
    return JSON_OBJECT_AUTOMATON.feed(state, data)
