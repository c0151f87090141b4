"""Errors and warnings that point at the spec: file, line, field, and a suggestion."""
from __future__ import annotations

import difflib
import warnings
from typing import Iterable


def nearest(name: str, candidates: Iterable[str], n: int = 1) -> list[str]:
    """The closest valid names to a misspelt one (for 'did you mean')."""
    return difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n, cutoff=0.5)


def close_names(name: str, candidates: Iterable[str]) -> list[str]:
    """Names a typo away from `name` (for a name that may well be new, not misspelt):
    at most one edit (insert, delete, replace, swap two neighbours) per four
    characters, so 'mlp.upp' finds 'mlp.up' but 'down_bias' does not find 'o_bias'."""
    name = str(name)
    limit = max(1, len(name) // 4)
    scored = [(d, c) for c in map(str, candidates)
              if (d := _edit_distance(name, c, limit)) <= limit and d < min(len(name), len(c))]
    return [c for _, c in sorted(scored, key=lambda x: (x[0], -difflib.SequenceMatcher(
        None, name, x[1]).ratio(), x[1]))]


def _edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance (Levenshtein + adjacent swaps); > limit early."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2, prev = None, list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if prev2 is not None and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


class SpecError(ValueError):
    """A spec (or the config/checkpoint bound to it) does not fit.

    str(err) reads `specs/llama3.yaml:42: field 'layers.body[3]': unknown op
    'rmsnorm'; did you mean 'rms_norm'?` so an editor can jump to the line.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, suggestion: str | None = None):
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        self.suggestion = suggestion
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.file or "<spec>"
        if self.line is not None:
            where += f":{self.line}"
        text = f"{where}: "
        if self.field:
            text += f"field '{self.field}': "
        text += self.message
        if self.suggestion:
            text += f"; did you mean '{self.suggestion}'?"
        return text


class Loc:
    """Where something was written: file, line (1-based) and field path."""

    __slots__ = ("file", "line", "field")

    def __init__(self, file: str | None, line: int | None, field: str | None):
        self.file, self.line, self.field = file, line, field

    def child(self, field: str, line: int | None = None) -> "Loc":
        path = f"{self.field}.{field}" if self.field else field
        if field.startswith("["):
            path = f"{self.field}{field}"
        return Loc(self.file, line if line is not None else self.line, path)

    def error(self, message: str, suggestion: str | None = None) -> SpecError:
        return SpecError(message, file=self.file, line=self.line, field=self.field,
                         suggestion=suggestion)

    def warn(self, message: str) -> None:
        """Report something that binds but is probably wrong (see SpecWarning)."""
        spec_warning(str(self.error(message)))

    def __repr__(self) -> str:
        return f"{self.file}:{self.line} ({self.field})"


class SpecWarning(UserWarning):
    """A spec (or the checkpoint bound to it) that works but is probably wrong: a
    declared weight no op reads, a checkpoint tensor no weight reads.

    Shown as one line, `rustinfer: WARNING: specs/x.yaml:59: field ...: message`,
    like the runtime's other warnings (not Python's `file.py:84: UserWarning:`
    plus a source line); still a real warning, so `-W error` or
    `warnings.simplefilter` can turn it into an error or silence it.
    """


_REGISTRY: dict = {}


def spec_warning(message: str) -> None:
    """Warn once per distinct message (a model is bound more than once while it
    loads: by the runtime, then by the compiler) unless the filters say 'always'.
    The message itself says where (file:line), not the Python caller."""
    warnings.warn_explicit(message, SpecWarning, "rustinfer", 0, module="rustinfer",
                           registry=_REGISTRY)


_python_formatwarning = warnings.formatwarning


def _formatwarning(message, category, filename, lineno, line=None):
    if isinstance(category, type) and issubclass(category, SpecWarning):
        return f"rustinfer: WARNING: {message}\n"
    return _python_formatwarning(message, category, filename, lineno, line)


warnings.formatwarning = _formatwarning
