"""Days, times and lists as users write them (CLI flags, a job's YAML, the Python API):
parsed and validated here, and nowhere else, so every command and ``marketpipe.open`` take
the same forms and refuse bad ones with the same words."""

from __future__ import annotations

import datetime as dt
import re

from marketpipe.defaults import DAY_FORMS
from marketpipe.errors import UsageError
from marketpipe.symbology import day_ns

# Days a daily job can name without editing its file (DAY_FORMS).
LAST = "last"
_RELATIVE = re.compile(r"today|yesterday|last|-(\d{1,5})d")
TimeBound = dt.datetime | dt.date | str | int | None


def parse_day(value: str | dt.date, forms: str = DAY_FORMS) -> dt.date | str:
    """A date, or a relative day kept as its word until the run resolves it; ``forms`` is
    what the error names as expected (reads take no ``last``)."""
    if isinstance(value, dt.date):
        return value
    text = value.strip().lower()
    if _RELATIVE.fullmatch(text):
        return text
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a date (expected {forms})") from None


def split_list(value: str | None) -> list[str]:
    """A comma-separated value (``--symbols``, ``--schema``, ``--columns``, a job's
    ``symbols: A, B``) as its items, blanks dropped."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def utc_today() -> dt.date:
    """What relative days count from."""
    return dt.datetime.now(dt.UTC).date()


def resolve_day(day: dt.date | str, today: dt.date) -> dt.date:
    """A relative day against ``today`` (UTC); ``last`` needs the store: see the pipeline."""
    if isinstance(day, dt.date):
        return day
    if day == "today":
        return today
    if day == "yesterday":
        return today - dt.timedelta(days=1)
    match = _RELATIVE.fullmatch(day)
    if match is None or match.group(1) is None:
        raise ValueError(f"{day!r} cannot be resolved without the store")
    return today - dt.timedelta(days=int(match.group(1)))


def day_flag(flag: str, value: str | None, forms: str = DAY_FORMS) -> dt.date | str | None:
    """A date or a relative day (today, yesterday, -Nd, last), resolved when the run starts."""
    if value is None:
        return None
    try:
        return parse_day(value, forms)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def time_ns(value: TimeBound, name: str) -> int | None:
    """A bound as ns since the epoch. Naive datetimes are UTC; pandas Timestamps keep their ns."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise UsageError(f"{name}: {value!r} is not a time")
    if isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        nanos = getattr(value, "value", None)  # pandas.Timestamp: exact nanoseconds
        if isinstance(nanos, int):
            return nanos
        utc = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
        return (utc - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000
    if isinstance(value, dt.date):
        return day_ns(value)
    if isinstance(value, str):
        try:
            return iso_ns(value)
        except ValueError:
            raise UsageError(
                f"{name}: {value!r} is not a date or UTC time"
                " (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS[.fffffffff][Z])"
            ) from None
    raise UsageError(f"{name}: {value!r} is not a date, datetime, ISO string or ns integer")


def iso_ns(value: str) -> int:
    """An ISO 8601 date or UTC time with up to nine fractional digits, as ns since the epoch.

    Python's datetime stops at microseconds; Databento's times do not. Raises ValueError for
    anything else, including an offset other than UTC."""
    text = value.strip().replace(" ", "T")
    for utc in ("Z", "+00:00", "+0000"):
        text = text.removesuffix(utc)
    date, _, clock = text.partition("T")
    if "+" in clock or "-" in clock:
        raise ValueError(f"{value!r} is not in UTC")
    seconds, _, fraction = clock.partition(".")
    if not fraction.isdigit() and fraction or len(fraction) > 9:
        raise ValueError(f"{value!r} has a bad fraction of a second")
    hours, minutes, secs = (int(x) for x in (seconds or "0:0:0").split(":"))
    if not (0 <= hours < 24 and 0 <= minutes < 60 and 0 <= secs < 60):
        raise ValueError(f"{value!r} is not a time of day")
    base = day_ns(dt.date.fromisoformat(date)) + ((hours * 60 + minutes) * 60 + secs) * 10**9
    return base + int((fraction + "000000000")[:9])
