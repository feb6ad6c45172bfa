"""Sizes, counts, latencies and fractions: read from flags and config files, written for people.

The gate parses budgets with these, and the gate and the reports format measurements with them, so
"64KB" means the same 64 000 bytes when a user types it and when gcnshrink prints it.

Units (case-insensitive; a space between number and unit is allowed):

- sizes: ``KB``/``MB``/``GB`` (and bare ``k``/``m``/``g``) are 1000-based, ``KiB``/``MiB``/``GiB``
  are 1024-based, a bare number is bytes;
- counts (params, nonzero, FLOPs): ``k`` = 10^3, ``M`` = 10^6, ``G`` = 10^9, ``T`` = 10^12;
- latency: milliseconds; ``ms``, ``s`` and ``us`` suffixes are accepted;
- fractions: ``0.8``, ``80%`` or ``80pp`` (percent and points divide by 100).
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

from gcnshrink.errors import GcnshrinkError

_NUMBER_RE = re.compile(
    r"^\s*(?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>[A-Za-z%]*)\s*$"
)

SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
}
COUNT_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
LATENCY_UNITS_MS = {"": Decimal(1), "ms": Decimal(1), "s": Decimal(1000), "us": Decimal("0.001")}

# No budget needs more than 10^18 (an exabyte, a quintillion FLOPs); bigger is a typo, and refusing
# it early keeps "1e999999999" from building a gigantic integer.
_MAX_MAGNITUDE_DIGITS = 18


# ------------------------------------------------------------------------------------ parsing


def _split_quantity(text: object, what: str) -> tuple[Decimal, str]:
    """Split "1.5MB" into (Decimal("1.5"), "mb"). Numbers from TOML (int/float) have no unit."""
    if isinstance(text, bool):  # bool is an int subclass: `max_bytes = true` is a mistake
        raise GcnshrinkError(f"{what}: expected a number, got {text!r}")
    if isinstance(text, int | float):
        if isinstance(text, float) and not math.isfinite(text):
            raise GcnshrinkError(f"{what}: {text!r} is not a finite number")
        if text < 0:
            raise GcnshrinkError(f"{what}: must not be negative, got {text!r}")
        value = Decimal(str(text))
        if value != 0 and value.adjusted() > _MAX_MAGNITUDE_DIGITS:  # TOML's 1e300, as a flag's
            raise GcnshrinkError(f"{what}: {text!r} is implausibly large")
        return value, ""
    if not isinstance(text, str):
        raise GcnshrinkError(f"{what}: expected a number or a string, got {type(text).__name__}")
    if text.strip().startswith("-"):
        raise GcnshrinkError(f"{what}: must not be negative, got {text!r}")
    match = _NUMBER_RE.match(text)
    if match is None:
        raise GcnshrinkError(f"{what}: cannot read {text!r} as a number with an optional unit")
    try:
        value = Decimal(match["number"])
    except InvalidOperation:  # the regex should make this unreachable; keep the one-line contract
        raise GcnshrinkError(f"{what}: cannot read {text!r} as a number") from None
    if value != 0 and value.adjusted() > _MAX_MAGNITUDE_DIGITS:
        raise GcnshrinkError(f"{what}: {text!r} is implausibly large")
    return value, match["unit"].lower()


def _floor_int(value: Decimal) -> int:
    # Budgets are upper bounds on integer quantities: "n <= 1000.7" is exactly "n <= 1000".
    return int(value.to_integral_value(rounding=ROUND_FLOOR))


def parse_size(text: str | int | float, what: str = "size") -> int:
    """Bytes from "64KB", "1.5MB", "2 MiB", "800k" or "123".

    KB/MB/GB and bare k/m/g are 1000-based (as in size-limit and SI), KiB/MiB/GiB 1024-based; a bare
    number is bytes. Case-insensitive. Fractions of a byte are floored (the limit stays exact).
    """
    value, unit = _split_quantity(text, what)
    if unit not in SIZE_UNITS:
        raise GcnshrinkError(
            f"{what}: unknown size unit in {text!r}; use B, KB, MB, GB (1000-based) "
            "or KiB, MiB, GiB (1024-based)"
        )
    return _floor_int(value * SIZE_UNITS[unit])


def parse_count(text: str | int | float, what: str = "count") -> int:
    """A count (parameters, nonzeros, FLOPs) from "50k", "1.2M", "3G", "2T" or "12345"."""
    value, unit = _split_quantity(text, what)
    if unit not in COUNT_UNITS:
        raise GcnshrinkError(f"{what}: unknown count suffix in {text!r}; use k, M, G or T")
    return _floor_int(value * COUNT_UNITS[unit])


def parse_latency_ms(text: str | int | float, what: str = "latency") -> float:
    """Milliseconds from "12", "12ms", "0.5s" or "800us"."""
    value, unit = _split_quantity(text, what)
    if unit not in LATENCY_UNITS_MS:
        raise GcnshrinkError(f"{what}: unknown time unit in {text!r}; use ms, s or us")
    return float(value * LATENCY_UNITS_MS[unit])


def parse_fraction(text: str | int | float, what: str = "accuracy") -> float:
    """A fraction in 0..1 from "0.8", "80%" or "80pp" (percent and points divide by 100).

    A bare number above 1 is refused rather than guessed at: "80" is almost surely 80 %, but a gate
    should not pass or fail on a guess.
    """
    value, unit = _split_quantity(text, what)
    if unit in ("%", "pp"):
        value = value / 100
    elif unit != "":
        raise GcnshrinkError(f"{what}: unknown unit in {text!r}; write a fraction (0.8) or 80%")
    elif value > 1:
        raise GcnshrinkError(f"{what}: {text!r} is not a fraction in 0..1; write 0.8 or 80%")
    if value > 1:
        raise GcnshrinkError(f"{what}: {text!r} is more than 100 %")
    return float(value)


# ---------------------------------------------------------------------------------- formatting


def _trim(number: float, digits: int) -> str:
    """Up to ``digits`` decimals, without trailing zeros ("64", "1.5", "12.3")."""
    text = f"{number:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _scaled(value: float, steps: list[tuple[float, str]], unit_sep: str) -> str:
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    for factor, suffix in steps:
        if magnitude >= factor:
            scaled = magnitude / factor
            digits = 0 if scaled >= 100 else 1 if scaled >= 10 else 2
            return f"{sign}{_trim(scaled, digits)}{unit_sep}{suffix}"
    return f"{sign}{_trim(magnitude, 2)}"


def format_bytes(n: float | None) -> str:
    """Human-readable size with 1000-based units, matching :func:`parse_size` ("63.5 KB")."""
    if n is None:
        return "—"
    if abs(n) < 1000:
        return f"{int(n)} B" if float(n).is_integer() else f"{n:.1f} B"
    steps = [(1000.0**3, "GB"), (1000.0**2, "MB"), (1000.0, "KB")]
    return _scaled(float(n), steps, " ")


def format_count(n: float | None) -> str:
    """Human-readable count ("812", "20.5k", "1.2M", "3.4G")."""
    if n is None:
        return "—"
    steps = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
    if abs(n) < 1000:
        return str(int(n)) if float(n).is_integer() else _trim(float(n), 2)
    return _scaled(float(n), steps, "")


def format_quantity(kind: str, value: float, exact: bool = False) -> str:
    """One value for people. ``kind`` is bytes, count, ms, fraction (shown in %) or points (an
    accuracy difference, shown in pp); ``exact`` shows full precision."""
    if kind == "bytes":
        return f"{int(value):,} B" if exact else format_bytes(value)
    if kind == "count":
        return f"{int(value):,}" if exact else format_count(value)
    if kind == "ms":
        return f"{value:.6g} ms" if exact else f"{value:.3g} ms"
    if kind == "fraction":
        return f"{value * 100:.6g} %" if exact else f"{value * 100:.2f} %"
    if kind == "points":
        return f"{value * 100:.6g} pp" if exact else f"{value * 100:.2f} pp"
    raise ValueError(f"unknown quantity kind {kind!r}")


def format_pair(kind: str, value: float, limit: float) -> tuple[str, str]:
    """Value and limit as text; if rounding makes different numbers look equal, show them exactly."""
    shown = format_quantity(kind, value), format_quantity(kind, limit)
    if shown[0] == shown[1] and value != limit:
        shown = format_quantity(kind, value, exact=True), format_quantity(kind, limit, exact=True)
    return shown


def format_delta(kind: str, delta: float | None) -> str:
    """A signed difference ("+6 KB", "-1.20 pp", "±0 B"); an accuracy difference reads in points."""
    if delta is None:
        return "—"
    if kind == "fraction":
        kind = "points"
    text = format_quantity(kind, abs(delta))
    return ("+" if delta > 0 else "-" if delta < 0 else "±") + text
