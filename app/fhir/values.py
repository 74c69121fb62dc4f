"""Value normalisation shared by the indexer and the search parser, so both sides compare like with like."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

_WS = re.compile(r"\s+")


def normalize_string(value: str) -> str:
    """Case- and accent-insensitive form used for default string matching (FHIR 3.1.1.5.11)."""
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _WS.sub(" ", stripped).strip().casefold()


_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2})(?::(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def _add_months(dt: datetime, months: int) -> datetime:
    y, m = divmod(dt.month - 1 + months, 12)
    return dt.replace(year=dt.year + y, month=m + 1)


def parse_date_range(value: str) -> tuple[datetime, datetime]:
    """The half-open UTC range ``[low, high)`` that a FHIR date/dateTime/instant denotes.

    Values without a time zone are taken as UTC. Raises ValueError for anything that is not a FHIR date.
    """
    m = _DATE_RE.match(value.strip())
    if not m:
        raise ValueError(f"not a FHIR date/dateTime: {value!r}")
    g = m.groupdict()
    year = int(g["y"])
    if g["m"] is None:
        low = datetime(year, 1, 1)
        return low, low.replace(year=year + 1)
    month = int(g["m"])
    if g["d"] is None:
        low = datetime(year, month, 1)
        return low, _add_months(low, 1)
    day = int(g["d"])
    if g["H"] is None:
        low = datetime(year, month, day)
        return low, low + timedelta(days=1)
    hour = int(g["H"])
    minute = int(g["M"] or 0)
    second = int(g["S"] or 0)
    frac = g["f"]
    micro = int((frac or "0")[:6].ljust(6, "0"))
    low = datetime(year, month, day, hour, minute, second, micro)
    if g["M"] is None:
        step = timedelta(hours=1)
    elif g["S"] is None:
        step = timedelta(minutes=1)
    elif frac is None:
        step = timedelta(seconds=1)
    else:
        step = timedelta(microseconds=10 ** max(0, 6 - len(frac)))
    tz = g["tz"]
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
        low = low - sign * offset
    return low, low + step


def to_utc_naive(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        return dt
    return dt.astimezone(UTC).replace(tzinfo=None)


def parse_number_range(value: str) -> tuple[Decimal, Decimal, Decimal]:
    """(value, low, high) with the implicit precision of the written value (``100`` -> [99.5, 100.5))."""
    try:
        number = Decimal(value.strip())
    except InvalidOperation as exc:
        raise ValueError(f"not a number: {value!r}") from exc
    if not number.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return number, number - half, number + half


def split_unescaped(value: str, sep: str) -> list[str]:
    """Split on ``sep`` unless escaped with a backslash; the escapes stay in the parts (see ``unescape``)."""
    parts: list[str] = []
    buf: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            buf.append(value[i : i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(c)
        i += 1
    parts.append("".join(buf))
    return parts


def unescape(value: str) -> str:
    r"""Undo FHIR search escaping: ``\,`` ``\|`` ``\$`` ``\\``."""
    return re.sub(r"\\([,|$\\])", r"\1", value)
