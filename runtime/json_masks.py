"""JSON mode's masks: which tokens each automaton state allows (json_constraint.py's
Automaton), per vocabulary, and one sequence's place in its JSON value.

`JsonTokenIndex` walks a trie of the vocabulary's token bytes from a state, pruning a
branch at its first rejected byte, and remembers the mask per (schema, state). Inside a
free string almost every token is allowed: those made only of plain string bytes are one
precomputed mask (bounded by their characters under maxLength), and only the rest (a
quote, a backslash, a control byte, a UTF-8 continuation byte first) is walked. So too in
a union's strings followed together (a MULTI state). Under a `pattern`, the plain tokens
are walked spelled in the pattern's character classes (_ClassTrie): a few thousand class
strings instead of ~100k trie nodes of bytes.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .json_constraint import DONE, JSON_OBJECT_AUTOMATON, MULTI, STRING, Automaton
from .json_pattern import DEAD
from .json_schema import ANY, ANY_OBJECT


def _plain_string_bytes(data: bytes) -> bool:
    """Whether data is accepted inside any free string at a character boundary without
    ending or escaping it (a trailing partial character is fine)."""
    free = (STRING, (("O", ANY_OBJECT, 0),), 0, (False, 0, 0, None, 0), ANY)
    return bool(data) and all(b >= 0x20 and b not in (0x22, 0x5C) for b in data) \
        and JSON_OBJECT_AUTOMATON.feed(free, data) is not None


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
    """Per vocabulary: the tokens' bytes as tries, and each (schema, state)'s allowed ids."""

    def __init__(self, token_bytes: list[bytes | None], vocab_size: int, eos_ids, cache: int = 1024):
        self.vocab_size = vocab_size
        self.eos_ids = [int(t) for t in eos_ids if 0 <= int(t) < vocab_size]
        entries = [(i, b) for i, b in enumerate(token_bytes[:vocab_size]) if b]
        self.token_bytes = token_bytes
        self.plain = np.zeros(vocab_size, bool)
        # characters each plain token begins (UTF-8 lead and ASCII bytes), for maxLength
        self.plain_chars = np.zeros(vocab_size, np.int32)
        rest = []
        for i, b in entries:
            if _plain_string_bytes(b):
                self.plain[i] = True
                self.plain_chars[i] = sum(not 0x80 <= c <= 0xBF for c in b)
            else:
                rest.append((i, b))
        self.all = _Trie(entries)
        self.rest = _Trie(rest)                     # what a free string's plain mask leaves out
        self._plain_tokens: list | None = None        # listed when a pattern first needs them
        self._pattern_tries: dict = {}               # pattern source -> _ClassTrie
        self._masks: OrderedDict = OrderedDict()
        self._cache = cache

    def allowed(self, automaton: Automaton, state) -> np.ndarray:
        """bool [vocab_size]: the tokens allowed in `state` (do not write into it)."""
        key = (automaton.schema.key, state)
        mask = self._masks.get(key)
        if mask is not None:
            self._masks.move_to_end(key)
            return mask
        mask = np.zeros(self.vocab_size, bool)
        plain = self._plain_allowed(automaton, state)
        pattern = _pattern_of(automaton, state)
        if pattern is not None:
            # a string held to a pattern: its plain tokens through the NFA alone (no
            # automaton states built per byte), the rest (a closing quote...) as usual
            self._walk_pattern(pattern, state[3][3], mask, state[3][4], automaton.bounds(state[4]))
            self._walk(automaton, self.rest, state, mask)
        elif plain is not None:
            mask |= plain
            self._walk(automaton, self.rest, state, mask)
        elif state[0] != DONE:
            self._walk(automaton, self.all, state, mask)
        if automaton.complete(state) or not mask.any():
            # A state no token continues (a vocabulary without a byte the JSON needs) ends
            # the answer: sampling from no allowed token would pick one the automaton
            # refuses, and that fails every request in the engine.
            mask[self.eos_ids] = True
        self._masks[key] = mask
        if len(self._masks) > self._cache:
            self._masks.popitem(last=False)
        return mask

    def _plain_allowed(self, automaton: Automaton, state) -> np.ndarray | None:
        """The plain tokens allowed when the state is between characters of a string without
        a format or pattern, or a MULTI state whose every branch is (pydantic's Cat | Dog
        while their bounded `name` is typed): a branch takes a plain token when its
        characters fit, whatever the other branches do. None when that is not the case."""
        out = None
        for s in state[3] if state[0] == MULTI else (state,):
            if s[0] != STRING or s[3][1:4] != (0, 0, None):
                return None
            most = automaton.bounds(s[4])[1]                # maxLength, None: unbounded
            part = self.plain if most is None else self.plain & (self.plain_chars <= most - s[3][4])
            out = part if out is None else out | part
        return out

    def _pattern_trie(self, pattern) -> "_ClassTrie":
        trie = self._pattern_tries.get(pattern.source)
        if trie is None:
            if self._plain_tokens is None:
                self._plain_tokens = [(i, b) for i, b in enumerate(self.token_bytes[:self.vocab_size])
                                      if b and self.plain[i]]
            trie = self._pattern_tries[pattern.source] = _ClassTrie(pattern, self._plain_tokens)
            if len(self._pattern_tries) > 64:
                del self._pattern_tries[next(iter(self._pattern_tries))]
        return trie

    def _walk_pattern(self, pattern, states: frozenset, mask: np.ndarray, typed: int,
                      bounds: tuple[int, int | None]) -> None:
        """Mark the plain tokens whose characters keep the pattern's NFA alive (and, under
        length bounds, its match able to end within them, `typed` characters in), walking
        the trie of their class strings (_ClassTrie). Each state set's moves are one dict
        {class: next set}, filled as met: the sets a walk meets are few."""
        trie = self._pattern_trie(pattern)
        children, ids, chars, step = trie.children, trie.ids, trie.chars, pattern.step
        lo, hi = bounds
        fits = pattern.lengths.fits if lo or hi is not None else None
        rows: dict = {}
        hits: list[np.ndarray] = []
        todo = [(0, states, typed)]
        while todo:
            node, s, n = todo.pop()
            if hi is not None and n >= hi:
                continue                            # no character more
            row = rows.get(s)
            if row is None:
                row = rows[s] = {}
            n += 1
            for c, child in children[node].items():
                s2 = row.get(c, _UNSEEN)
                if s2 is _UNSEEN:
                    s2 = row[c] = step(s, chars[c])
                if s2 is None:                      # a character the pattern refuses here
                    continue
                # Only tokens' ends are checked: a state a longer token passes through fits
                # whenever the token's end does.
                if ids[child] is not None and (fits is None or fits(s2, lo - n, None if hi is None else hi - n)):
                    hits.append(ids[child])
                if children[child]:
                    todo.append((child, s2, n))
        if hits:
            mask[np.concatenate(hits)] = True

    @staticmethod
    def _walk(automaton: Automaton, trie: _Trie, state, mask: np.ndarray) -> None:
        step = automaton.step
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


_UNSEEN = object()


class _ClassTrie:
    """The plain tokens spelled in a pattern's character classes (Pattern.classes), as a
    trie. ^[a-z ]{0,100}$ has two classes (its set and the rest): 49k tokens become a few
    thousand class strings, and a mask walks those instead of ~100k trie nodes of bytes
    (60-100 ms a new state set before, in Python). A token with a byte in no set
    (non-ASCII, or a character the pattern never takes) is never allowed: left out."""

    def __init__(self, pattern, plain_tokens):
        table, self.chars = pattern.classes()
        groups: dict[bytes, list[int]] = {}
        for token_id, data in plain_tokens:
            spelled = data.translate(table)
            if DEAD not in spelled:
                groups.setdefault(spelled, []).append(token_id)
        self.children: list[dict[int, int]] = [{}]
        self.ids: list[np.ndarray | None] = [None]
        for spelled, token_ids in groups.items():
            node = 0
            for c in spelled:
                nxt = self.children[node].get(c)
                if nxt is None:
                    nxt = self.children[node][c] = len(self.children)
                    self.children.append({})
                    self.ids.append(None)
                node = nxt
            self.ids[node] = np.asarray(token_ids, dtype=np.int64)


def _pattern_of(automaton: Automaton, state):
    """The Pattern of a string state held to one (its NFA states are state[3][3]), else None."""
    if state[0] != STRING or state[3][0] or state[3][3] is None or state[4] is None:
        return None
    spec = automaton.nodes[state[4]]
    return spec[4] if spec[0] == "string" else None


class JsonConstraint:
    """One sequence's place in its JSON value: allowed() before a step, advance() after."""

    def __init__(self, index: JsonTokenIndex, automaton: Automaton = JSON_OBJECT_AUTOMATON):
        self.index = index
        self.automaton = automaton
        self.state = automaton.start

    @property
    def done(self) -> bool:
        return self.state[0] == DONE

    def allowed(self) -> np.ndarray:
        return self.index.allowed(self.automaton, self.state)

    def advance(self, token: int) -> None:
        data = self.index.token_bytes[token] if 0 <= token < len(self.index.token_bytes) else None
        if self.done or not data:
            return                                   # end of generation, or a special token
        nxt = self.automaton.feed(self.state, data)
        if nxt is None:
            raise ValueError(f"token {token} ({data!r}) does not continue the JSON output; "
                             "the sampler should not have allowed it")
        self.state = nxt
