"""JSON mode's numeric bounds: `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`,
and `multipleOf`.

json_schema.py reads them into a NumberRange; json_constraint.py keeps the bytes of a bounded
number as they are typed and allows the next byte only while some continuation of them
still lands in the range (`reachable`), and the end only on a value in it (`contains`).
So a prefix is never a dead end: `-` under `minimum: 0` leads to `-0`, `1` under
`maximum: 150` to `1`, `10`..`19`, `100`..`150`. Under `multipleOf` the continuation must
also be a multiple: after `12.` with `multipleOf: 0.5` only `0` and `5` follow (`12.3` could
not end in one), and the end is allowed on an exact multiple only.

A bounded number is written in plain decimal, without an exponent (a subset of the valid
spellings, as everywhere in JSON mode). Values compare exactly, as decimals: `0.1` meets
`minimum: 0.1`. A validator reads a number as a double first, though: an exclusive bound on a
`number` moves to halfway to the next double, so that no decimal above it rounds back onto it
(`exclusiveMaximum: 1` refuses `0.99999999999999999999`, which is the double 1.0). A
multiple is exact as a decimal too (`0.3` under `multipleOf: 0.1`); pydantic accepts those,
while a validator that divides doubles (Python's jsonschema: 0.3 / 0.1 = 2.9999999999999996)
may not, for a step that is not an integer.
"""
from __future__ import annotations

import math
import sys
from fractions import Fraction
from typing import NamedTuple


_LARGEST = Fraction(sys.float_info.max)


class NumberRange(NamedTuple):
    lo: Fraction | None         # None: unbounded below
    lo_open: bool               # exclusive
    hi: Fraction | None
    hi_open: bool
    step: Fraction | None = None  # multipleOf (for integers: the least integer multiple)


def number_range(s: dict, integer: bool, where: str, error) -> NumberRange | None:
    """The bounds a schema puts on its numbers (None: none); error(message) raises."""
    def value(key):
        v = s.get(key)
        if v is None or isinstance(v, bool):
            return None
        if not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
            error(f"{where}: {key} must be a finite number, got {v!r}")
        return Fraction(v) if isinstance(v, int) else Fraction(repr(v))   # 0.1 as a decimal

    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        v = s.get(key)
        if isinstance(v, bool) and v and s.get(key.replace("exclusiveM", "m")) is None:
            error(f"{where}: {key}: true needs {key.replace('exclusiveM', 'm')} beside it")
    lo, lo_open = _tighter(value("minimum"), s.get("exclusiveMinimum") is True,
                           value("exclusiveMinimum"), max)
    hi, hi_open = _tighter(value("maximum"), s.get("exclusiveMaximum") is True,
                           value("exclusiveMaximum"), min)
    step = value("multipleOf")
    if step is not None and step <= 0:
        error(f"{where}: multipleOf must be greater than 0, got {s['multipleOf']!r}")
    if step is not None and integer:             # integer multiples of a/b: multiples of a
        step = Fraction(step.numerator)
    if lo is None and hi is None and step is None:
        return None
    if not integer:                              # open bounds where doubles round onto them
        lo, hi = _past_rounding(lo, lo_open, math.inf), _past_rounding(hi, hi_open, -math.inf)
    if integer:                                  # closed integer bounds
        if lo is not None:
            lo, lo_open = Fraction(math.floor(lo) + 1 if lo_open else math.ceil(lo)), False
        if hi is not None:
            hi, hi_open = Fraction(math.ceil(hi) - 1 if hi_open else math.floor(hi)), False
    if lo is not None and hi is not None and (lo > hi or (lo == hi and (lo_open or hi_open))):
        error(f"{where}: no {'integer' if integer else 'number'} meets its minimum and maximum")
    r = NumberRange(lo, lo_open, hi, hi_open, step)
    if step is not None and not (reachable(r, b"-") or reachable(r, b"0") or any(
            reachable(r, str(d).encode()) for d in range(1, 10))):
        error(f"{where}: no {'integer' if integer else 'number'} between its minimum and "
              f"maximum is a multiple of {s['multipleOf']!r}")
    return r


def _tighter(bound, bound_open: bool, exclusive, pick):
    """minimum (closed, or open by draft 4's boolean exclusiveMinimum) and the newer numeric
    exclusiveMinimum together: the tighter one (open where they are equal)."""
    if exclusive is None:
        return bound, bound_open and bound is not None
    if bound is None or pick(bound, exclusive) == exclusive:
        return exclusive, True
    return bound, bound_open


def _past_rounding(bound, bound_open: bool, toward: float):
    """An open bound as validators apply it to the double they parse: `x > b` fails for a
    decimal x that rounds to the double b, so it must lie past the midpoint between b and
    the next double toward `toward` (a closed bound needs nothing: rounding is monotonic)."""
    if bound is None or not bound_open or abs(bound) > _LARGEST:   # past it: inf, no rounding
        return bound
    b = float(bound)
    mid = (Fraction(b) + Fraction(math.nextafter(b, toward))) / 2
    return max(bound, mid) if toward > 0 else min(bound, mid)


def contains(r: NumberRange, typed: bytes) -> bool:
    """Whether the complete number `typed` is in the range."""
    x = Fraction(typed.decode())
    return ((r.lo is None or x > r.lo or (x == r.lo and not r.lo_open))
            and (r.hi is None or x < r.hi or (x == r.hi and not r.hi_open))
            and (r.step is None or (x / r.step).denominator == 1))


def reachable(r: NumberRange, typed: bytes) -> bool:
    """Whether some plain-decimal number that starts with `typed` is in the range, and a
    multiple of its step (an integer's range has closed integer bounds and an integer step:
    then "some integer" follows alike)."""
    text = typed.decode()
    negative = text.startswith("-")
    body = text[1:] if negative else text
    # The magnitudes m this sign may take: value = -m for a negative number.
    step = r.step
    if negative:
        lo, lo_open, hi, hi_open = (None if r.hi is None else -r.hi), r.hi_open, \
            (None if r.lo is None else -r.lo), r.lo_open
    else:
        lo, lo_open, hi, hi_open = r.lo, r.lo_open, r.hi, r.hi_open
    if hi is not None and (hi < 0 or (hi == 0 and hi_open)):
        return False                             # no magnitude on this side at all
    if not body:                                 # "-": any magnitude (a multiple in range)
        return step is None or hi is None or _meets(Fraction(0), hi + 1, lo, lo_open, hi,
                                                    hi_open, step)
    whole, dot, frac = body.partition(".")
    if dot:                                      # the integer part is settled
        start = Fraction(f"{whole}.{frac}" if frac else whole)
        return _meets(start, start + Fraction(1, 10 ** len(frac)), lo, lo_open, hi, hi_open, step)
    d = int(whole)
    if d == 0:                                   # 0, or 0.xxx (a number): [0, 1)
        return _meets(Fraction(0), Fraction(1), lo, lo_open, hi, hi_open, step)
    if hi is None and step is None:              # more digits reach past any lower bound
        return True
    j = 0
    while hi is None or d * 10 ** j <= hi:       # [d, d+1), [10d, 10d+10), ... up to hi
        if _meets(Fraction(d * 10 ** j), Fraction((d + 1) * 10 ** j), lo, lo_open, hi, hi_open,
                  step):
            return True                          # (unbounded: some width holds a multiple)
        j += 1
    return False


def _meets(a: Fraction, b: Fraction, lo, lo_open, hi, hi_open, step=None) -> bool:
    """Whether [a, b) meets the magnitude range (at a multiple of step, if any). Integers
    have closed integer bounds, so an integer in [a, b) is one in [a, b - 1]: the same
    test, as b - 1 < hi + 1."""
    low, low_open = (a, False) if lo is None or lo < a else (lo, lo_open)
    if step is not None:                         # the least multiple past low
        k = math.ceil(low / step)
        if low_open and k * step == low:
            k += 1
        low, low_open = k * step, False
        if low >= b:
            return False
    if hi is None or hi >= b:
        return low < b
    return low < hi or (low == hi and not low_open and not hi_open)
