"""JSON Schema -> what a string node holds to: a format followed character by character
(json_formats.FORMATS: date, time, date-time, uuid) or a pattern (`pattern`, or a format
followed as one: json_formats.PATTERN_FORMATS), with minLength / maxLength beside it.

json_schema.py builds the ("string", min, max, format, Pattern) node from these; error(message)
raises its SchemaError, as json_numbers.number_range does.
"""
from __future__ import annotations

from .json_formats import ANNOTATION_FORMATS, FORMATS, LENGTHS, PATTERN_FORMATS
from .json_pattern import Pattern, PatternError


def string_format(s: dict, where: str, error) -> str | None:
    """A string's format the automaton follows per character, None for none (or one followed
    as a pattern). (On other types JSON Schema says a format does not apply: it is ignored
    there.)"""
    fmt = s.get("format")
    if fmt is None or (isinstance(fmt, str) and fmt in ANNOTATION_FORMATS | PATTERN_FORMATS.keys()):
        return None
    if not isinstance(fmt, str) or fmt not in FORMATS:
        error(f"{where}: format {fmt!r} not supported (supported: "
              f"{', '.join(sorted([*FORMATS, *PATTERN_FORMATS]))}); drop it or check the answer "
              "yourself")
    # The format is followed character by character, blind to the length: a bound that
    # cuts into its lengths would leave a string no character can finish.
    shortest, longest = LENGTHS[fmt]
    if s.get("minLength", 0) > shortest or s.get("maxLength", longest) < longest:
        error(f"{where}: minLength / maxLength beside format {fmt!r} is only supported where "
              f"it allows all its lengths ({shortest} to {longest}); drop it or write a pattern")
    return fmt


def string_pattern(s: dict, where: str, lo: int, hi: int | None, error) -> Pattern | None:
    """The pattern a string is held to: its `pattern`, or the one its format is followed as
    (email, uri...). minLength lo / maxLength hi count beside it (json_pattern_lengths.py)."""
    fmt = s.get("format")
    if "pattern" in s:
        if fmt is not None and fmt not in ANNOTATION_FORMATS:
            error(f"{where}: pattern beside format {fmt!r} is not supported; keep one of them")
        source, what = s["pattern"], "pattern"
        if not isinstance(source, str):
            error(f"{where}: pattern must be a string, got {source!r}")
    elif isinstance(fmt, str) and fmt in PATTERN_FORMATS:
        source, what = PATTERN_FORMATS[fmt], f"format {fmt!r}"
    else:
        return None
    try:
        pattern = Pattern(source)
    except PatternError as err:
        pattern, problem = None, str(err)
    if pattern is None:                      # raised outside the except: no chained traceback
        error(f"{where}: {problem}")
    if not pattern.lengths.fits(pattern.start, lo, hi):
        error(f"{where}: no string of the {what} has "
              f"{f'{lo} or more' if hi is None else f'{lo} to {hi}'} characters; "
              "widen minLength / maxLength")
    return pattern
