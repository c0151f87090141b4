"""JSON mode: response_format {"type": "json_object"} holds the output to one JSON object.

At every step the sampler may only pick a token whose bytes keep the output a prefix of
a JSON object (RFC 8259, with leading whitespace); once the object is closed, only an
end-of-generation token. The output is then valid JSON unless max_tokens cuts it short
(finish_reason "length", as with OpenAI).

How. `step(state, byte)` is a byte-level pushdown automaton for JSON (states are small
tuples, so they hash). A token is allowed in a state when the automaton accepts all its
bytes from there: `JsonTokenIndex` walks a trie of the vocabulary's token bytes from the
state, pruning a branch at its first rejected byte, and remembers the mask per state. Inside
a string almost every token is allowed; those made only of plain string bytes are one
precomputed mask, and only the rest (with a quote, a backslash, a control byte or a
UTF-8 continuation byte first) is walked.

Limits that keep a model from running away inside the constraint: at most 32 nested
containers and 32 whitespace bytes in a row between tokens of JSON.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

# What the automaton expects next.
TOP, VALUE, OBJ_OPEN, KEY, COLON, AFTER, ARR_OPEN, STRING, NUMBER, LITERAL, DONE = range(11)
MAX_DEPTH = 32
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
_LITERALS = {ord("t"): b"rue", ord("f"): b"alse", ord("n"): b"ull"}

# state = (mode, stack, whitespace run, detail); stack: "O" / "A" per open container;
# detail: STRING (is_key, escape, utf8 bytes still due), NUMBER phase, LITERAL bytes due.
START = (TOP, "", 0, None)


def _after_value(stack: str):
    return (AFTER, stack, 0, None) if stack else (DONE, "", 0, None)


def _value(stack: str, b: int):
    if b == 0x7B or b == 0x5B:                           # { [
        if len(stack) >= MAX_DEPTH:
            return None
        return (OBJ_OPEN, stack + "O", 0, None) if b == 0x7B else (ARR_OPEN, stack + "A", 0, None)
    if b == 0x22:                                        # "
        return (STRING, stack, 0, (False, 0, 0))
    if b == 0x2D:                                        # -
        return (NUMBER, stack, 0, "minus")
    if b in _DIGITS:
        return (NUMBER, stack, 0, "zero" if b == 0x30 else "int")
    if b in _LITERALS:
        return (LITERAL, stack, 0, _LITERALS[b])
    return None


def _string(state, b: int):
    _, stack, _, (is_key, esc, due) = state
    if due:                                              # inside a multi-byte character
        return (STRING, stack, 0, (is_key, 0, due - 1)) if 0x80 <= b <= 0xBF else None
    if esc == 1:                                         # after a backslash
        if b == ord("u"):
            return (STRING, stack, 0, (is_key, 14, 0))   # 10 + 4 hex digits due
        return (STRING, stack, 0, (is_key, 0, 0)) if b in b'"\\/bfnrt' else None
    if esc:                                              # \uXXXX
        if b not in _HEX:
            return None
        return (STRING, stack, 0, (is_key, 0 if esc == 11 else esc - 1, 0))
    if b == 0x22:
        return (COLON, stack, 0, None) if is_key else _after_value(stack)
    if b == 0x5C:
        return (STRING, stack, 0, (is_key, 1, 0))
    if b < 0x20:
        return None                                      # control bytes must be escaped
    if b < 0x80:
        return state
    due = 1 if 0xC2 <= b <= 0xDF else 2 if 0xE0 <= b <= 0xEF else 3 if 0xF0 <= b <= 0xF4 else -1
    return None if due < 0 else (STRING, stack, 0, (is_key, 0, due))


def step(state, b: int):
    """The state after byte b, or None when no JSON object starts with what came so far + b."""
    mode, stack, ws, detail = state
    if mode == STRING:
        return _string(state, b)
    if mode == NUMBER:
        nxt = _NUMBER[detail].get(b)
        if nxt is not None:
            return (NUMBER, stack, 0, nxt)
        return step(_after_value(stack), b) if detail in _NUMBER_END else None
    if mode == LITERAL:
        if b != detail[0]:
            return None
        return (LITERAL, stack, 0, detail[1:]) if len(detail) > 1 else _after_value(stack)
    if mode == DONE:
        return None
    if b in _WS:
        return (mode, stack, ws + 1, detail) if ws < MAX_WS else None
    if mode == TOP:
        return (OBJ_OPEN, "O", 0, None) if b == 0x7B else None
    if mode == VALUE:
        return _value(stack, b)
    if mode == ARR_OPEN:
        return _after_value(stack[:-1]) if b == 0x5D else _value(stack, b)
    if mode in (OBJ_OPEN, KEY) and b == 0x22:
        return (STRING, stack, 0, (True, 0, 0))
    if mode == OBJ_OPEN and b == 0x7D:
        return _after_value(stack[:-1])
    if mode == COLON:
        return (VALUE, stack, 0, None) if b == 0x3A else None
    if mode == AFTER:
        top = stack[-1]
        if b == 0x2C:
            return (KEY if top == "O" else VALUE, stack, 0, None)
        if b == (0x7D if top == "O" else 0x5D):
            return _after_value(stack[:-1])
    return None


def feed(state, data: bytes):
    for b in data:
        state = step(state, b)
        if state is None:
            return None
    return state


def _plain_string_bytes(data: bytes) -> bool:
    """Whether data is accepted inside any string at a character boundary without ending,
    escaping or leaving it mid-way through an escape (a trailing partial character is fine)."""
    return bool(data) and feed((STRING, "", 0, (False, 0, 0)), data) is not None \
        and all(b >= 0x20 and b not in (0x22, 0x5C) for b in data)


class _Trie:
    def __init__(self, entries):
        self.children: list[dict[int, int]] = [{}]
        self.ids: list[list[int]] = [[]]
        for token_id, data in entries:
            node = 0
            for b in data:
                nxt = self.children[node].get(b)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][b] = nxt
                    self.children.append({})
                    self.ids.append([])
                node = nxt
            self.ids[node].append(token_id)


class JsonTokenIndex:
    """Per vocabulary: the tokens' bytes as tries, and each state's mask of allowed ids."""

    def __init__(self, token_bytes: list[bytes | None], vocab_size: int, eos_ids, cache: int = 512):
        self.vocab_size = vocab_size
        self.eos_ids = [int(t) for t in eos_ids if 0 <= int(t) < vocab_size]
        entries = [(i, b) for i, b in enumerate(token_bytes[:vocab_size]) if b]
        self.token_bytes = token_bytes
        self.plain = np.zeros(vocab_size, bool)
        rest = []
        for i, b in entries:
            if _plain_string_bytes(b):
                self.plain[i] = True
            else:
                rest.append((i, b))
        self.all = _Trie(entries)
        self.rest = _Trie(rest)                     # what a string's plain mask leaves out
        self._masks: OrderedDict = OrderedDict()
        self._cache = cache

    def allowed(self, state) -> np.ndarray:
        """bool [vocab_size]: the tokens allowed in `state` (do not write into it)."""
        mask = self._masks.get(state)
        if mask is not None:
            self._masks.move_to_end(state)
            return mask
        mask = np.zeros(self.vocab_size, bool)
        if state[0] == DONE:
            mask[self.eos_ids] = True
        elif state[0] == STRING and state[3] == (state[3][0], 0, 0):
            mask |= self.plain
            self._walk(self.rest, state, mask)
        else:
            self._walk(self.all, state, mask)
        self._masks[state] = mask
        if len(self._masks) > self._cache:
            self._masks.popitem(last=False)
        return mask

    @staticmethod
    def _walk(trie: _Trie, state, mask: np.ndarray) -> None:
        todo = [(0, state)]
        while todo:
            node, s = todo.pop()
            for b, child in trie.children[node].items():
                s2 = step(s, b)
                if s2 is None:
                    continue
                if trie.ids[child]:
                    mask[trie.ids[child]] = True
                if trie.children[child]:
                    todo.append((child, s2))


class JsonConstraint:
    """One sequence's place in its JSON object: allowed() before a step, advance() after."""

    def __init__(self, index: JsonTokenIndex):
        self.index = index
        self.state = START

    @property
    def done(self) -> bool:
        return self.state[0] == DONE

    def allowed(self) -> np.ndarray:
        return self.index.allowed(self.state)

    def advance(self, token: int) -> None:
        data = self.index.token_bytes[token] if 0 <= token < len(self.index.token_bytes) else None
        if self.done or not data:
            return                                   # end of generation, or a special token
        nxt = feed(self.state, data)
        if nxt is None:
            raise ValueError(f"token {token} ({data!r}) does not continue the JSON output; "
                             "the sampler should not have allowed it")
        self.state = nxt
