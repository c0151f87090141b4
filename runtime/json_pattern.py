"""JSON mode's `pattern`: the regular expression a string must match.

JSON Schema's patterns are ECMA-262 regular expressions matched anywhere in the string
unless anchored (`^...$`), as pydantic and Python's `re.search` match them. This module
compiles the common subset into a Thompson NFA whose state sets json_constraint.py keeps
while a string is typed:

- literals and escapes (`\\.`, `\\-`, ...), `.`, classes `[a-z0-9_]` and `[^...]`,
  `\\d \\w \\s \\D \\W \\S` (ASCII meanings);
- groups `(...)` and `(?:...)`, alternation `|`, quantifiers `* + ? {n} {n,} {n,m}`
  (lazy ones match the same strings);
- `^` first and `$` last in a top-level branch (`^a|b$` is `(^a)|(b$)`, as in ECMA-262).

Anything else (backreferences, lookaround, `\\b`, anchors inside groups) is refused. The text
is written in printable ASCII without JSON escapes (no `"` or backslash): a subset of the
matching strings, as everywhere in JSON mode. A state set keeps only NFA states from
which a match can still be completed, so a string is never started into a dead end.
"""
from __future__ import annotations

import string

# What a pattern string may contain: printable ASCII, no quote or backslash (no escapes).
ALPHABET = frozenset(c for c in map(chr, range(0x20, 0x7F)) if c not in '"\\')
_CLASSES = {"d": frozenset(string.digits), "w": frozenset(string.ascii_letters + string.digits + "_"),
            "s": frozenset(" ")}
_MAX_STATES = 4000                    # NFA states a pattern may expand to ({n,m} copies)
_MAX_MEMO = 1 << 16                   # (state set, char) -> next state set, per pattern
DEAD = 0xFF                           # classes(): a byte in no set of the pattern


class PatternError(ValueError):
    """A pattern outside the supported subset; the message says what."""


class Pattern:
    """An NFA: states are ints; chars[s] is the set state s consumes (then goes to s + 1),
    or None for an epsilon state with the successors eps[s]."""

    def __init__(self, source: str):
        self.source = source
        self.chars: list[frozenset | None] = []
        self.eps: list[tuple] = []
        parser = _Parser(source)
        branches = []
        for parts in parser.top_level():             # ^ and $ hold per top-level branch
            anchored_start = bool(parts) and parts[0] == ("bol",)
            anchored_end = len(parts) > anchored_start and parts[-1] == ("eol",)
            parts = parts[anchored_start:len(parts) - anchored_end]
            if ("bol",) in parts or ("eol",) in parts:
                raise PatternError(f"pattern {source!r}: an anchor inside a branch is not "
                                   "supported (only ^ first and $ last)")
            any_text = [("star", ("set", ALPHABET))]
            branches.append(("seq", ([] if anchored_start else any_text) + parts
                             + ([] if anchored_end else any_text)))
        start, end = self._build(branches[0] if len(branches) == 1 else ("alt", branches))
        self.accept = end
        self.live = self._live()
        self._memo: dict = {}
        self._classes: tuple | None = None
        self._lengths = None
        self.start = self._close({start})
        if not self.start:
            raise PatternError(f"pattern {source!r}: no string of printable ASCII matches it")

    # -- construction (Thompson): each piece is (entry state, exit state) ----------------
    def _state(self, chars=None, eps=()) -> int:
        self.chars.append(chars)
        self.eps.append(tuple(eps))
        if len(self.chars) > _MAX_STATES:
            raise PatternError(f"pattern {self.source!r} is too large (over {_MAX_STATES} "
                               "states once its repetitions are spelled out)")
        return len(self.chars) - 1

    def _link(self, a: int, b: int) -> None:
        self.eps[a] += (b,)

    def _build(self, node) -> tuple[int, int]:
        kind = node[0]
        if kind == "set":
            s = self._state(node[1])
            return s, self._state()                 # a char state's successor is s + 1
        if kind == "seq":
            entry = exit_ = self._state()
            for part in node[1]:
                a, b = self._build(part)
                self._link(exit_, a)
                exit_ = b
            return entry, exit_
        if kind == "alt":
            entry, exit_ = self._state(), self._state()
            for branch in node[1]:
                a, b = self._build(branch)
                self._link(entry, a)
                self._link(b, exit_)
            return entry, exit_
        if kind == "star":                          # zero or more
            entry, exit_ = self._state(), self._state()
            a, b = self._build(node[1])
            self._link(entry, a)
            self._link(entry, exit_)
            self._link(b, a)
            self._link(b, exit_)
            return entry, exit_
        if kind == "opt":
            entry, exit_ = self._state(), self._state()
            a, b = self._build(node[1])
            self._link(entry, a)
            self._link(entry, exit_)
            self._link(b, exit_)
            return entry, exit_
        raise AssertionError(kind)

    def _live(self) -> frozenset:
        """States from which the accept state can be reached."""
        back: dict[int, list[int]] = {}
        for s, chars in enumerate(self.chars):
            for t in ((s + 1,) if chars else ()) + self.eps[s]:
                back.setdefault(t, []).append(s)
        live, todo = {self.accept}, [self.accept]
        while todo:
            for s in back.get(todo.pop(), ()):
                if s not in live and (self.chars[s] is None or self.chars[s]):
                    live.add(s)
                    todo.append(s)
        return frozenset(live)

    def _close(self, states) -> frozenset:
        """The epsilon closure, live states only."""
        out, todo = set(), list(states)
        while todo:
            s = todo.pop()
            if s in out or s not in self.live:
                continue
            out.add(s)
            todo.extend(self.eps[s])
        return frozenset(out)

    # -- matching ---------------------------------------------------------------------------
    def step(self, states: frozenset, ch: str) -> frozenset | None:
        """The state set after ch, or None when no match can follow. Memoized: a mask walks
        every token's bytes from one state set, so the same (set, char) comes back
        thousands of times, and a closure over a spelled-out {n,m} costs hundreds of states."""
        key = (states, ch)
        nxt = self._memo.get(key, False)
        if nxt is False:
            nxt = self._close({s + 1 for s in states if self.chars[s] and ch in self.chars[s]}) \
                or None
            if len(self._memo) >= _MAX_MEMO:
                self._memo.clear()
            # one object per set: entries are many, distinct sets few (and large)
            self._memo[key] = nxt = self._memo.setdefault(nxt, nxt)
        return nxt

    def accepts(self, states: frozenset) -> bool:
        return self.accept in states

    def classes(self) -> tuple[bytes, list[str]]:
        """The pattern's character classes: two characters share one when every set of the
        pattern holds both or neither, so the NFA moves alike on them. (A bytes.translate
        table from each byte to its class, DEAD for bytes no set holds; a character of each
        class.)"""
        if self._classes is None:
            sets = list({c for c in self.chars if c})
            ids: dict[tuple, int] = {}
            table, chars = bytearray([DEAD]) * 256, []
            for b in range(0x20, 0x7F):
                signature = tuple(chr(b) in c for c in sets)
                if any(signature):
                    if signature not in ids:
                        ids[signature] = len(chars)
                        chars.append(chr(b))
                    table[b] = ids[signature]
            self._classes = bytes(table), chars
        return self._classes

    @property
    def lengths(self):
        """How long the match can still get from a state set (json_pattern_lengths.py)."""
        if self._lengths is None:
            from .json_pattern_lengths import PatternLengths
            self._lengths = PatternLengths(self)
        return self._lengths


class _Parser:
    """Recursive descent over the supported subset; trees of ("set", chars), ("seq", parts),
    ("alt", branches), ("star", tree), ("opt", tree)."""

    def __init__(self, text: str):
        self.text, self.i = text, 0

    def _peek(self) -> str | None:
        return self.text[self.i] if self.i < len(self.text) else None

    def _fail(self, what: str):
        raise PatternError(f"pattern {self.text!r}: {what} at {self.i} is not supported "
                           "(supported: literals, ., classes, \\d \\w \\s, groups, |, * + ? "
                           "{n,m}, ^ first and $ last)")

    def top_level(self) -> list[list]:
        """The whole pattern's branches, each a list of parts: ("bol",) / ("eol",) mark
        the anchors where they stand (the caller allows them first and last)."""
        branches = [self._parts(top=True)]
        while self._peek() == "|":
            self.i += 1
            branches.append(self._parts(top=True))
        if self.i != len(self.text):
            self._fail(f"an unmatched {self.text[self.i]!r}")
        return branches

    def alternation(self):
        branches = [("seq", self._parts(top=False))]
        while self._peek() == "|":
            self.i += 1
            branches.append(("seq", self._parts(top=False)))
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def _parts(self, top: bool) -> list:
        parts = []
        while self._peek() not in (None, "|", ")"):
            if self._peek() in "^$":
                if not top:
                    self._fail(f"the anchor {self._peek()!r} inside a group")
                parts.append(("bol",) if self._peek() == "^" else ("eol",))
                self.i += 1
                if self._peek() in ("*", "+", "?") or self._peek() == "{" and self._counted():
                    self._fail("a repeated anchor")
                continue
            parts.append(self.repeat())
        return parts

    def repeat(self):
        atom = self.atom()
        while True:
            c = self._peek()
            if c in ("*", "+", "?"):
                self.i += 1
                atom = {"*": ("star", atom), "+": ("seq", [atom, ("star", atom)]),
                        "?": ("opt", atom)}[c]
            elif c == "{" and self._counted():
                lo, hi = self._counted()
                if max(lo, hi or 0) > _MAX_STATES:     # refused before a list that size is built
                    self._fail(f"a count over {_MAX_STATES}")
                self.i = self.text.index("}", self.i) + 1
                atom = ("seq", [atom] * lo + ([("star", atom)] if hi is None
                                              else [("opt", atom)] * (hi - lo)))
            else:
                return atom
            if self._peek() == "?":                  # lazy: the same strings match
                self.i += 1

    def _counted(self) -> tuple[int, int | None] | None:
        """{n}, {n,} or {n,m} at i, else None (then "{" is a literal, as in ECMA-262)."""
        close = self.text.find("}", self.i)
        inner = self.text[self.i + 1:close] if close > 0 else ""
        lo, comma, hi = inner.partition(",")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            if close > 0 and inner.strip() and inner.replace(" ", "").replace(",", "", 1).isdigit() \
                    or inner.replace(" ", "") == ",":
                # {,3} and {,} are counts to Python's re, {1, 3} to pydantic's Rust regex,
                # text to ECMA-262: ask for the spelling they all read as a count
                self._fail(f"the count {{{inner}}} (write {{0,n}}, {{n,}} or {{n,m}} without spaces)")
            return None
        lo_n = int(lo)
        hi_n = lo_n if not comma else (int(hi) if hi else None)
        if hi_n is not None and hi_n < lo_n:
            self._fail(f"{{{inner}}} (its maximum is below its minimum)")
        return lo_n, hi_n

    def atom(self):
        c = self._peek()
        if c == "(":
            self.i += 1
            if self.text.startswith("?:", self.i):
                self.i += 2
            elif self._peek() == "?":
                kind = {"=": "a lookahead", "!": "a lookahead", "<": "a lookbehind or named "
                        "group", "P": "a named group"}.get(self.text[self.i + 1:self.i + 2],
                                                           "an inline flag")
                self._fail(kind)
            tree = self.alternation()
            if self._peek() != ")":
                self._fail("an unclosed group")
            self.i += 1
            return tree
        if c == "[":
            return ("set", self._class())
        if c in ("*", "+", "?", ")"):
            self._fail(f"{c!r} with nothing to repeat")
        self.i += 1
        if c == ".":
            return ("set", ALPHABET)
        if c == "\\":
            return ("set", self._escape(in_class=False))
        return ("set", frozenset(c) & ALPHABET)

    def _escape(self, in_class: bool) -> frozenset:
        c = self._peek()
        if c is None:
            self._fail("a trailing backslash")
        self.i += 1
        if c.lower() in _CLASSES:
            chars = _CLASSES[c.lower()]
            return ALPHABET - chars if c.isupper() else chars
        if in_class and c == "b":
            return frozenset()                       # [\b] is a backspace: never in the text
        if c.isalnum() or c in "<>" and not in_class:
            # \< and \> are word boundaries to pydantic's Rust regex, text to the others
            self._fail(f"the escape \\{c}")
        return frozenset(c) & ALPHABET

    def _class(self) -> frozenset:
        self.i += 1                                  # [
        negated = self._peek() == "^"
        self.i += negated
        chars: set[str] = set()
        if self._peek() == "]":
            # ECMA-262 reads []a] as an empty class then "a]", Python and Rust (pydantic's
            # regex) as the class of "]" and "a": ask for the unambiguous spelling
            self._fail("a class that starts with ']' (write \\] inside the class)")
        while self._peek() != "]":
            c = self._peek()
            if c is None:
                self._fail("an unclosed class")
            if c == "\\":
                self.i += 1
                chars |= self._escape(in_class=True)
                continue
            self.i += 1
            if self._peek() == "-" and self.i + 1 < len(self.text) and self.text[self.i + 1] != "]":
                self.i += 1
                last = self._peek()
                if last == "\\":
                    self._fail("a class range ending in an escape")
                self.i += 1
                if ord(last) < ord(c):
                    self._fail(f"the range {c}-{last}")
                chars |= {chr(o) for o in range(ord(c), ord(last) + 1)}
            else:
                chars.add(c)
        self.i += 1                                  # ]
        chars_f = frozenset(chars) & ALPHABET
        return ALPHABET - chars_f if negated else chars_f
