"""JSON mode's string formats: `date`, `time`, `date-time` and `uuid`; and `email`, `ipv4`,
`ipv6`, `hostname`, `uri` and `duration`, followed as patterns (PATTERN_FORMATS).

The first three as JSON Schema defines them (RFC 3339: full-date, full-time, date-time),
checked to the calendar: `2023-02-29` is refused at its last digit, so what pydantic (or
any validator) parses back is a real date. A time always carries its offset (`Z` or
`+02:00`), as RFC 3339 requires; fractions of a second take 1-9 digits.

json_constraint.py keeps a formatted string's characters as they are typed and allows the
next one only while `viable` says some completion is valid, and the closing quote only
when `complete` does. Other formats (`email`, `uri`, ...) are refused by json_schema.py.
"""
from __future__ import annotations

import calendar

# A format is a sequence of parts:
#   ("num", name, width, lo, hi)  `width` digits; lo / hi ints or functions of the fields
#                                 parsed so far (a day's hi depends on its year and month)
#   ("hex", width)                 `width` hex digits
#   ("lit", chars)                 one of these characters
#   ("digits", most)               1..most digits
#   ("opt", parts)                 parts, or nothing
#   ("alt", (parts, parts, ...))   one of these
_DATE = (("num", "year", 4, 1, 9999), ("lit", "-"), ("num", "month", 2, 1, 12), ("lit", "-"),
         ("num", "day", 2, 1, lambda f: calendar.monthrange(f["year"], f["month"])[1]))
_OFFSET = ("alt", ((("lit", "Zz"),),
                   (("lit", "+-"), ("num", "oh", 2, 0, 23), ("lit", ":"), ("num", "om", 2, 0, 59))))
_TIME = (("num", "hour", 2, 0, 23), ("lit", ":"), ("num", "minute", 2, 0, 59), ("lit", ":"),
         ("num", "second", 2, 0, 59), ("opt", (("lit", "."), ("digits", 9))), _OFFSET)
FORMATS = {
    "date": _DATE,
    "time": _TIME,
    "date-time": _DATE + (("lit", "Tt"),) + _TIME,
    "uuid": (("hex", 8), ("lit", "-"), ("hex", 4), ("lit", "-"), ("hex", 4), ("lit", "-"),
             ("hex", 4), ("lit", "-"), ("hex", 12)),
}
_HEX = frozenset("0123456789abcdefABCDEF")
# Formats that constrain nothing a JSON string can hold (pydantic writes "password" for
# SecretStr, "binary" for bytes, "path" for Path): annotations.
ANNOTATION_FORMATS = frozenset({"password", "binary", "path"})
# The fewest and most characters of each format's strings (a time's fraction: 0-9 digits
# and its dot; its offset: `Z` or `+hh:mm`): json_schema.py refuses length bounds within.
LENGTHS = {"date": (10, 10), "time": (9, 24), "date-time": (20, 35), "uuid": (36, 36)}


# Formats followed as a pattern (json_pattern.py), each a subset of its strings that the
# usual validators accept: pydantic's EmailStr (email-validator), IPv4Address / IPv6Address
# (Python's ipaddress: no leading zeros), AnyUrl / HttpUrl, timedelta, and RFC 1123 host
# names. Labels are kept under 63 characters and the email's local part under 64 by counted
# repeats.
_LABEL = r"[A-Za-z0-9]{1,25}(-[A-Za-z0-9]{1,25})?"
# A top-level domain of 2-3 letters: com, org, io, uk... (email-validator refuses the
# special-use ones, arpa / invalid / local / localhost / onion / test, all longer). Not a
# list of words: each letter of "com|org|..." would be a character class of its own, and
# a mask walks the tokens spelled in classes (json_masks._ClassTrie): 19 ms a new state
# for an email with the list, against ~1 ms with one class of letters.
_DOMAIN = rf"({_LABEL}\.){{1,3}}[a-z]{{2,3}}"
_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_URL_TEXT = r"[A-Za-z0-9._~!$&'()*+,;=:@-]"         # RFC 3986's unreserved and sub-delims
_HEX4 = r"[0-9a-f]{1,4}"
# RFC 3339's duration grammar (years only before months, months before days; weeks alone;
# no fractions), which pydantic's timedelta also reads
_DUR_TIME = r"T(\d{1,4}H(\d{1,4}M(\d{1,4}S)?)?|\d{1,4}M(\d{1,4}S)?|\d{1,4}S)"
_DUR_DATE = r"(\d{1,4}Y(\d{1,4}M(\d{1,4}D)?)?|\d{1,4}M(\d{1,4}D)?|\d{1,4}D)"
PATTERN_FORMATS = {
    "email": rf"^[A-Za-z0-9]{{1,20}}([._+-][A-Za-z0-9]{{1,20}}){{0,2}}@{_DOMAIN}$",
    "ipv4": rf"^({_OCTET}\.){{3}}{_OCTET}$",
    # all eight groups, or "::" for the rest where it leaves at most seven
    "ipv6": rf"^({_HEX4}(:{_HEX4}){{7}}|({_HEX4}:){{1,7}}:|::({_HEX4}(:{_HEX4}){{0,6}})?|"
            rf"{_HEX4}(:{_HEX4}){{0,5}}::{_HEX4})$",
    "duration": rf"^P({_DUR_DATE}({_DUR_TIME})?|{_DUR_TIME}|\d{{1,4}}W)$",
    "hostname": rf"^{_LABEL}(\.{_LABEL}){{0,3}}$",
    "uri": rf"^https?://{_DOMAIN}(:[1-9]\d{{0,3}})?(/{_URL_TEXT}*)*(\?({_URL_TEXT}|[/?])*)?(#({_URL_TEXT}|[/?])*)?$",
}


def viable(fmt: str, text: str) -> bool:
    """Whether some string of the format starts with text."""
    return _walk(FORMATS[fmt], text, 0, {})[0]


def complete(fmt: str, text: str) -> bool:
    """Whether text is a whole string of the format."""
    return _walk(FORMATS[fmt], text, 0, {})[1]


def _walk(parts: tuple, text: str, i: int, fields: dict) -> tuple[bool, bool]:
    """(text[i:] starts a match of parts, text[i:] is one), the fields so far given."""
    if i == len(text):
        return True, _empty(parts)
    if not parts:
        return False, False
    part, rest = parts[0], parts[1:]
    kind = part[0]
    if kind == "lit":
        return _walk(rest, text, i + 1, fields) if text[i] in part[1] else (False, False)
    if kind == "opt":
        return _either([part[1] + rest, rest], text, i, fields)
    if kind == "alt":
        return _either([alt + rest for alt in part[1]], text, i, fields)
    if kind == "hex":
        field = text[i:i + part[1]]
        if not set(field) <= _HEX:
            return False, False
        return (True, False) if len(field) < part[1] else _walk(rest, text, i + part[1], fields)
    if kind == "digits":                          # 1..most digits, then the rest
        viable = done = False
        for k in range(1, part[1] + 1):
            if i + k > len(text) or not text[i + k - 1].isascii() or not text[i + k - 1].isdigit():
                break
            v, d = _walk(rest, text, i + k, fields) if i + k < len(text) else (True, _empty(rest))
            viable, done = viable or v, done or d
        return viable, done
    _, name, width, lo, hi = part                 # "num"
    field = text[i:i + width]
    if not (field.isascii() and field.isdigit()):
        return False, False
    lo, hi = (b(fields) if callable(b) else b for b in (lo, hi))
    if len(field) < width:                        # the text ends inside the field
        return int(field.ljust(width, "9")) >= lo and int(field.ljust(width, "0")) <= hi, False
    if not lo <= int(field) <= hi:
        return False, False
    return _walk(rest, text, i + width, {**fields, name: int(field)})


def _either(choices: list[tuple], text: str, i: int, fields: dict) -> tuple[bool, bool]:
    results = [_walk(c, text, i, fields) for c in choices]
    return any(r[0] for r in results), any(r[1] for r in results)


def _empty(parts: tuple) -> bool:
    """Whether parts can match nothing."""
    return all(p[0] == "opt" for p in parts)
