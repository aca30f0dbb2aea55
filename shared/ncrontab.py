"""NCRONTAB schedules as the Functions timer trigger reads them (the NCrontab library), in UTC.

``{second} {minute} {hour} {day} {month} {day-of-week}``; each field is ``*``, a value, a range ``a-b``, a step
``*/n``, ``a-b/n`` or ``a/n`` (``a`` to the field's maximum), or a comma-separated list of those. Months and days of
the week may be names, matched case-insensitively as prefixes (``Jan``, ``mon``); the day of the week is 0-6 with
0 for Sunday (7 is refused, as by NCrontab). A time matches when every field contains it: the day of the month and
the day of the week must *both* match (NCrontab's rule, unlike Vixie cron's "either").

``parse(text)`` is the app's strict reading: six fields, and ranges written backwards or a step of 0 are refused
rather than read NCrontab's lenient way (swapped; step 1). ``parse(text, strict=False)`` is the host's reading (five
fields allowed, with the seconds at 0); the local host schedules with it. Nothing here reads a clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

__all__ = ["SEARCH_YEARS", "Schedule", "ScheduleError", "parse"]

_MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
#: name, minimum, maximum, value names (first name = minimum)
_FIELDS = (
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _DAYS),
)
#: How far ``next_after`` and ``latest_at_or_before`` look. A schedule that matches no day in this span never occurs
#: (such as 30 February); 29 February on a given weekday recurs within 40 years.
SEARCH_YEARS = 50
_NUMBER_RE = re.compile(r"[0-9]{1,4}")
_NAME_RE = re.compile(r"[A-Za-z]{1,12}")


class ScheduleError(ValueError):
    """The text is not an NCRONTAB expression; the message says which field and why."""


@dataclass(frozen=True)
class Schedule:
    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday

    def _day_matches(self, day: date) -> bool:
        return day.month in self.months and day.day in self.days and day.isoweekday() % 7 in self.weekdays

    @property
    def more_than_once_a_minute(self) -> bool:
        """The host's ``useMonitor`` defaults to false for such schedules, true otherwise."""
        return len(self.seconds) > 1

    def next_after(self, moment: datetime) -> datetime | None:
        """The first occurrence strictly after ``moment`` (aware), in UTC; ``None`` if there is none."""
        start = _floor_second(moment) + timedelta(seconds=1)
        day, bound = start.date(), start.time()
        for _ in range(SEARCH_YEARS * 366):
            if self._day_matches(day):
                found = _first_at_or_after(self, bound)
                if found is not None:
                    return datetime.combine(day, found, UTC)
            day, bound = day + timedelta(days=1), time(0, 0, 0)
        return None

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """The last occurrence at or before ``moment`` (aware), in UTC; ``None`` if there is none."""
        start = _floor_second(moment)
        day, bound = start.date(), start.time()
        for _ in range(SEARCH_YEARS * 366):
            if self._day_matches(day):
                found = _last_at_or_before(self, bound)
                if found is not None:
                    return datetime.combine(day, found, UTC)
            day, bound = day - timedelta(days=1), time(23, 59, 59)
        return None


def _floor_second(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("a schedule needs an aware datetime (UTC)")
    return moment.astimezone(UTC).replace(microsecond=0, tzinfo=None)


def _first_at_or_after(s: Schedule, bound: time) -> time | None:
    for h in s.hours:
        if h < bound.hour:
            continue
        for m in s.minutes:
            if h == bound.hour and m < bound.minute:
                continue
            for sec in s.seconds:
                if h == bound.hour and m == bound.minute and sec < bound.second:
                    continue
                return time(h, m, sec)
    return None


def _last_at_or_before(s: Schedule, bound: time) -> time | None:
    for h in reversed(s.hours):
        if h > bound.hour:
            continue
        for m in reversed(s.minutes):
            if h == bound.hour and m > bound.minute:
                continue
            for sec in reversed(s.seconds):
                if h == bound.hour and m == bound.minute and sec > bound.second:
                    continue
                return time(h, m, sec)
    return None


def parse(text: str, *, strict: bool = True) -> Schedule:
    """Read an NCRONTAB expression; ``ScheduleError`` names what is wrong. See the module docstring for ``strict``."""
    if not isinstance(text, str):
        raise ScheduleError("the schedule is not text")
    fields = text.split()
    if len(fields) == 5 and not strict:
        fields = ["0", *fields]
    if len(fields) != 6:
        wanted = "six fields ({second} {minute} {hour} {day} {month} {day-of-week})"
        raise ScheduleError(f"an NCRONTAB schedule has {wanted}, not {len(fields)}: {text[:80]!r}")
    values = [_field(f, *spec, strict=strict) for f, spec in zip(fields, _FIELDS, strict=True)]
    return Schedule(
        " ".join(fields),
        tuple(sorted(values[0])),
        tuple(sorted(values[1])),
        tuple(sorted(values[2])),
        frozenset(values[3]),
        frozenset(values[4]),
        frozenset(values[5]),
    )


def _field(text: str, name: str, low: int, high: int, names: tuple[str, ...] | None, *, strict: bool) -> set[int]:
    out: set[int] = set()
    for item in text.split(","):
        if not item:
            raise ScheduleError(f"the {name} field {text[:40]!r} has an empty list item")
        body, step = item, None
        if "/" in item:
            body, _, raw_step = item.partition("/")
            if not _NUMBER_RE.fullmatch(raw_step):
                raise ScheduleError(f"the {name} field {text[:40]!r} has a step that is not a number")
            step = int(raw_step)
            if step == 0 and strict:
                raise ScheduleError(f"the {name} field {text[:40]!r} has a step of 0")
            if step == 1 and strict and body != "*" and "-" not in body[1:]:
                # NCrontab versions disagree on 'a/1' (a alone, or a to the maximum): refused rather than guessed
                raise ScheduleError(
                    f"the {name} field {text[:40]!r} has 'value/1', which NCrontab versions read differently"
                )
        if body == "*":
            first, last = low, high
        elif "-" in body[1:]:
            a, _, b = body.partition("-")
            first, last = _value(a, name, low, high, names), _value(b, name, low, high, names)
            if first > last:
                if strict:
                    raise ScheduleError(f"the {name} field {text[:40]!r} has a range written backwards")
                first, last = last, first
        else:
            first = _value(body, name, low, high, names)
            last = high if step is not None else first
        for v in range(first, last + 1, max(1, step or 1)):
            out.add(v)
    return out


def _value(text: str, name: str, low: int, high: int, names: tuple[str, ...] | None) -> int:
    if _NUMBER_RE.fullmatch(text):
        value = int(text)
    elif names is not None and _NAME_RE.fullmatch(text):
        matches = [i for i, n in enumerate(names) if n.startswith(text.lower())]
        if not matches:
            raise ScheduleError(f"{text[:20]!r} is not a {name} name")
        value = low + matches[0]
    else:
        raise ScheduleError(f"{text[:20]!r} is not a valid {name} value")
    if not low <= value <= high:
        raise ScheduleError(f"{value} is outside {low}-{high}, the range of the {name} field")
    return value
