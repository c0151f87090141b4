"""Errors that point at the spec: file, line, field, and a suggestion."""
from __future__ import annotations

import difflib
from typing import Iterable


def nearest(name: str, candidates: Iterable[str], n: int = 1) -> list[str]:
    """The closest valid names to a misspelt one (for 'did you mean')."""
    return difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n, cutoff=0.5)


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

    def __repr__(self) -> str:
        return f"{self.file}:{self.line} ({self.field})"
