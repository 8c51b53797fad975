r"""Validation of hyper-parameters, written once: every model, layer and the
trainer check integers, numbers and size lists with these, so the errors
read the same everywhere (:class:`~mmdiff.errors.ConfigError` naming the
option, the accepted range and the value)."""
from __future__ import annotations

import ast
from typing import List, Optional

from mmdiff.errors import ConfigError


def _range_text(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {hi}"
    return (f"in {'(' if lo_open else '['}{lo}, {hi}"
            f"{')' if hi_open else ']'}")


def check_int(name: str, value, lo: Optional[int] = None,
              hi: Optional[int] = None) -> int:
    r"""``value`` as an ``int`` in ``[lo, hi]`` (either end optional);
    booleans and non-integers raise :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{name} must be "
                          f"{_range_text(lo, hi, False, False)}, got {value}")
    return int(value)


def check_float(name: str, value, lo: Optional[float] = None,
                hi: Optional[float] = None, lo_open: bool = False,
                hi_open: bool = False) -> float:
    r"""``value`` as a ``float`` in the interval from ``lo`` to ``hi``
    (closed unless ``lo_open`` / ``hi_open``; either end optional); NaN,
    booleans and non-numbers raise :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    value = float(value)
    bad = value != value  # NaN
    if lo is not None:
        bad = bad or (value <= lo if lo_open else value < lo)
    if hi is not None:
        bad = bad or (value >= hi if hi_open else value > hi)
    if bad:
        raise ConfigError(f"{name} must be "
                          f"{_range_text(lo, hi, lo_open, hi_open)}, got "
                          f"{value}")
    return value


def check_optional_int(name: str, value, lo: Optional[int] = None
                       ) -> Optional[int]:
    r""":obj:`None`, or :func:`check_int`."""
    return None if value is None else check_int(name, value, lo)


def check_sizes(name: str, value) -> List[int]:
    r"""A non-empty list of positive layer sizes from a list, a tuple, a
    single integer or its string form (``'[1000]'``, as written on a command
    line)."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ConfigError(f"{name} must be a list of sizes such as "
                              f"[1000], got {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1
            for v in value):
        raise ConfigError(f"{name} must be a non-empty list of positive "
                          f"integers, got {value!r}")
    return [int(v) for v in value]


def check_choice(name: str, value, choices) -> str:
    r"""``value`` if it is one of ``choices``, else :class:`ConfigError`
    listing them."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {tuple(choices)}, got "
                          f"{value!r}")
    return value
