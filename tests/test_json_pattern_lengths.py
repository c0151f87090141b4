"""JSON mode: minLength / maxLength beside a pattern (runtime/json_pattern_lengths.py), and the
formats followed as patterns: email, ipv4, hostname, uri (runtime/json_formats.py).

Oracles: re.search plus len() for the bounds; for the formats, the validators users parse
answers with: email-validator (pydantic's EmailStr), Python's ipaddress, pydantic's
AnyUrl / HttpUrl, and RFC 1123's rules for host names written out; a brute-force check of
every SmolLM2 token's bytes for the masks.
"""
from __future__ import annotations

import ipaddress
import random
import re as _re
import string

import pytest

from test_json_mode import brute_force_mask
from rustinfer.runtime.json_constraint import Automaton
from rustinfer.runtime.json_masks import JsonTokenIndex
from rustinfer.runtime.json_schema import SchemaError, compile_schema
from rustinfer.runtime.token_bytes import token_bytes

PRINTABLE = [c for c in map(chr, range(0x20, 0x7F)) if c not in '"\\']


def _walk(a: Automaton, rng: random.Random, stop: float = 0.3, cap: int = 60) -> str:
    """A random string the automaton allows, ended when it may be (with probability `stop`,
    always past `cap` characters, where the character that brings the end nearest is
    taken). Fails if a state allows neither the end nor any character: a dead end."""
    state, text = a.feed(a.start, b'"'), ""
    while True:
        may_end = a.step(state, 0x22) is not None
        options = [c for c in PRINTABLE if a.step(state, ord(c)) is not None]
        if may_end and (not options or rng.random() < stop or len(text) >= cap):
            return text
        assert options, f"dead end after {text!r}"
        if len(text) >= cap:
            pattern = a.nodes[state[4]][4]
            c = min(options, key=lambda c: pattern.lengths.fewest_of(a.step(state, ord(c))[3][3]))
        else:
            c = rng.choice(options)
        state, text = a.step(state, ord(c)), text + c


# ---- a pattern with minLength / maxLength ---------------------------------------------------

def test_bounded_patterns_complete_exactly_what_fits_and_never_dead_end():
    """Random patterns of the supported subset with random bounds: a string completes
    exactly when re.search matches it and its length is within the bounds; random walks
    end in such a string; a schema no string can satisfy is refused."""
    from test_json_keywords import _random_pattern

    rng = random.Random(5)
    alphabet = "abc-.1x {"
    compiled = refused = 0
    for _ in range(200):
        body = _random_pattern(rng)
        pattern = rng.choice(["", "^"]) + (f"(?:{body})" if "|" in body else body) + rng.choice(["", "$"])
        lo = rng.choice([0, 0, 1, 2, 3, 5])
        hi = rng.choice([None, lo, lo + 1, lo + 2, lo + 4])
        schema = {"type": "string", "pattern": pattern, "minLength": lo}
        if hi is not None:
            schema["maxLength"] = hi
        try:
            a = Automaton(compile_schema(schema))
        except SchemaError as err:
            assert "widen minLength / maxLength" in str(err), err
            refused += 1
            # Refused only when no string of the alphabet's characters up to 8 long fits:
            # patterns here use few characters, so a fitting string would show up.
            assert not any(_fits(pattern, lo, hi, t) for t in _short_strings(alphabet, rng)), schema
            continue
        compiled += 1
        for _ in range(30):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
            state = a.feed(a.start, f'"{text}'.encode())
            done = state is not None and a.step(state, 0x22) is not None
            assert done == _fits(pattern, lo, hi, text), (schema, text)
        for _ in range(5):
            text = _walk(a, rng)
            assert _fits(pattern, lo, hi, text), (schema, text)
    assert compiled > 100 and refused > 5, (compiled, refused)


def _fits(pattern: str, lo: int, hi: int | None, text: str) -> bool:
    return _re.search(pattern, text) is not None and lo <= len(text) and (hi is None or len(text) <= hi)


def _short_strings(alphabet: str, rng: random.Random) -> list[str]:
    return [""] + ["".join(rng.choice(alphabet) for _ in range(n)) for n in range(1, 9) for _ in range(300)]


@pytest.mark.parametrize("schema, fits, unfit", [
    # pydantic's constr(pattern=r"^[a-z]+@[a-z]+$", max_length=6)
    ({"pattern": "^[a-z]+@[a-z]+$", "maxLength": 6}, ["ab@cd", "abcd@e"], ["abcde@f", "abcd"]),
    # lengths with gaps: only 4 characters fit (3 and 5 are not whole repeats)
    ({"pattern": "^(ab)+$", "minLength": 3, "maxLength": 5}, ["abab"], ["ab", "ababab"]),
    ({"pattern": "^[0-9]*$", "minLength": 2}, ["12", "12345"], ["", "1"]),
    # pydantic's HttpUrl: format uri with minLength 1, maxLength 2083
    ({"format": "uri", "minLength": 1, "maxLength": 2083}, ["https://example.com/a?b=c"], ["example.com"])])
def test_bounded_patterns_hold_at_their_edges(schema, fits, unfit):
    a = Automaton(compile_schema({"type": "string", **schema}))
    for text, ok in [(t, True) for t in fits] + [(t, False) for t in unfit]:
        state = a.feed(a.start, f'"{text}"'.encode())
        assert (state is not None and a.complete(state)) == ok, text


def test_a_character_is_refused_once_the_match_cannot_end_in_time():
    a = Automaton(compile_schema({"type": "string", "pattern": "^[a-z]+@[a-z]+$", "maxLength": 6}))
    state = a.feed(a.start, b'"abcd')
    assert a.step(state, ord("e")) is None         # "@" and a letter must still follow
    assert a.step(state, ord("@")) is not None


@pytest.mark.parametrize("schema, match", [
    ({"pattern": "^a{2}$", "minLength": 3}, "no string of the pattern has 3 or more characters"),
    ({"pattern": "^[a-z]{5,}$", "maxLength": 4}, "no string of the pattern has 0 to 4 characters"),
    ({"format": "ipv4", "maxLength": 6}, "no string of the format 'ipv4' has 0 to 6 characters"),
    ({"pattern": "^a+$", "format": "email"}, "pattern beside format 'email'")])
def test_bounds_no_match_can_meet_are_refused(schema, match):
    with pytest.raises(SchemaError, match=match):
        compile_schema({"type": "string", **schema})


def test_bounded_pattern_masks_equal_a_brute_force_check(smol_tokenizer):
    tb = token_bytes(smol_tokenizer)
    index = JsonTokenIndex(tb, len(tb), smol_tokenizer.eos_token_ids)
    for field, prefixes in [
            ({"pattern": "^[a-z ]+$", "minLength": 3, "maxLength": 10}, ["", "ab", "abc de", "abc defg"]),
            ({"pattern": "^[a-z]+@[a-z]+$", "maxLength": 8}, ["", "abcd", "abcdef", "ab@c"]),
            ({"pattern": "^(ab)+$", "minLength": 3, "maxLength": 7}, ["", "ab", "abab"])]:
        a = Automaton(compile_schema({"type": "object", "required": ["v"], "properties": {
            "v": {"type": "string", **field}}}))
        for prefix in prefixes:
            state = a.feed(a.start, b'{"v": "' + prefix.encode())
            assert (index.allowed(a, state) == brute_force_mask(a, state, tb)).all(), (field, prefix)


# ---- formats followed as patterns --------------------------------------------------------------

def _parses(parse, text: str, errors=ValueError) -> bool:
    try:
        parse(text)
        return True
    except errors:
        return False


def _valid_email(text: str) -> bool:
    from email_validator import EmailNotValidError, validate_email

    return _parses(lambda t: validate_email(t, check_deliverability=False), text, EmailNotValidError)


def _valid_ipv4(text: str) -> bool:
    return _parses(ipaddress.IPv4Address, text)


def _valid_ipv6(text: str) -> bool:
    return _parses(ipaddress.IPv6Address, text)


def _valid_duration(text: str) -> bool:
    """pydantic's timedelta, and RFC 3339's grammar (no fractions, weeks alone) written
    out: P, then Y [M [D]] | M [D] | D, then T with H [M [S]] | M [S] | S; or nW."""
    from datetime import timedelta

    from pydantic import TypeAdapter, ValidationError

    try:
        TypeAdapter(timedelta).validate_python(text)
    except ValidationError:
        return False
    if not text.startswith("P") or len(text) < 3:
        return False
    date, _, time = text[1:].partition("T")
    if text[1:].endswith("W"):
        return text[1:-1].isdigit()
    units = [u for u in "YMDHS" if u in text]
    return all(f(part) for f, part in ((_units_in_order("YMD"), date), (_units_in_order("HMS"), time))) \
        and bool(units) and ("T" not in text or bool(time))


def _units_in_order(units: str):
    """A check that text is number-unit pairs, units in order and none skipped after the first."""
    def ok(text: str) -> bool:
        found = _re.findall(r"(\d+)([A-Z])", text)
        if "".join(n + u for n, u in found) != text:
            return False
        got = "".join(u for _, u in found)
        return got == "" or (got in units and units.index(got[0]) + len(got) <= len(units)
                             and units[units.index(got[0]):units.index(got[0]) + len(got)] == got)
    return ok


def _valid_hostname(text: str) -> bool:
    """RFC 1123: dot-separated labels of 1-63 letters, digits and inner hyphens, 253 at most."""
    label = set(string.ascii_letters + string.digits + "-")
    return len(text) <= 253 and all(
        0 < len(part) <= 63 and set(part) <= label and part[0] != "-" and part[-1] != "-"
        for part in text.split("."))


def _valid_uri(text: str) -> bool:
    from pydantic import AnyUrl, HttpUrl, TypeAdapter, ValidationError

    try:
        TypeAdapter(HttpUrl).validate_python(text)
        TypeAdapter(AnyUrl).validate_python(text)
        return True
    except ValidationError:
        return False


VALIDATORS = {"email": _valid_email, "ipv4": _valid_ipv4, "ipv6": _valid_ipv6,
              "duration": _valid_duration, "hostname": _valid_hostname, "uri": _valid_uri}


@pytest.mark.parametrize("fmt", sorted(VALIDATORS))
def test_format_patterns_produce_only_valid_strings(fmt):
    """Random walks (every character chosen among those allowed) end in strings the
    format's validator accepts."""
    a = Automaton(compile_schema({"type": "string", "format": fmt}))
    rng = random.Random(fmt)
    for _ in range(150):
        text = _walk(a, rng, stop=0.15)
        assert VALIDATORS[fmt](text), (fmt, text)


@pytest.mark.parametrize("fmt, fits, unfit", [
    ("email", ["john.doe@example.com", "a+tag@mail.example.co.uk", "x_1@b.io"],
     ["john@localhost", "a@b.test", "@example.com", "a..b@example.com", "a@-b.com"]),
    ("ipv4", ["192.168.0.1", "0.0.0.0", "255.255.255.255"], ["01.2.3.4", "256.1.1.1", "1.2.3", "1.2.3.4.5"]),
    ("ipv6", ["::1", "::", "fe80::1", "2001:db8:0:0:0:0:0:1", "2001:db8::"],
     ["1:2:3:4:5:6:7:8:9", "12345::", ":1", "1:::2", "g::1"]),
    ("duration", ["P1D", "PT1H30M", "P2W", "P1Y2M3DT4H5M6S", "PT45S"],
     ["P", "PT", "P1DT", "1D", "P1H", "P1Y3D", "P1W2D", "PT1.5S"]),
    ("hostname", ["localhost", "my-host.example.org", "a1"], ["-a.com", "a-.com", "a..b", "a_b"]),
    ("uri", ["https://example.com", "http://api.example.org:8080/v1/items?q=a&n=2#top"],
     ["example.com", "ftp://example.com", "https://example.com:99999", "https://"])])
def test_format_patterns_take_the_usual_spellings(fmt, fits, unfit):
    """What users expect a model to write is allowed (and valid); what a validator refuses
    is refused."""
    a = Automaton(compile_schema({"type": "string", "format": fmt}))
    for text, ok in [(t, True) for t in fits] + [(t, False) for t in unfit]:
        state = a.feed(a.start, f'"{text}"'.encode())
        assert (state is not None and a.complete(state)) == ok, text
        if ok:
            assert VALIDATORS[fmt](text), text


def test_format_pattern_masks_equal_a_brute_force_check(smol_tokenizer):
    tb = token_bytes(smol_tokenizer)
    index = JsonTokenIndex(tb, len(tb), smol_tokenizer.eos_token_ids)
    a = Automaton(compile_schema({"type": "object", "required": ["mail", "site"], "properties": {
        "mail": {"type": "string", "format": "email"},
        "site": {"type": "string", "format": "uri", "minLength": 1, "maxLength": 30}}}))
    for prefix in [b'{"mail": "', b'{"mail": "john.d', b'{"mail": "john.doe@ex',
                   b'{"mail": "john.doe@example.co', b'{"mail": "a@b.io", "site": "',
                   b'{"mail": "a@b.io", "site": "https://example.com/abcdef']:
        state = a.feed(a.start, prefix)
        assert (index.allowed(a, state) == brute_force_mask(a, state, tb)).all(), prefix
