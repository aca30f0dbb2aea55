"""NCRONTAB schedules (shared.ncrontab): the documented examples, NCrontab's rules, and a brute-force cross-check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.ncrontab import Schedule, ScheduleError, parse


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# The examples of the timer trigger documentation (learn.microsoft.com, functions-bindings-timer), each with the
# occurrence that follows 2026-11-25 (a Wednesday) 10:07:13 UTC.
@pytest.mark.parametrize(
    "expression, after",
    [
        ("0 */5 * * * *", "2026-11-25 10:10:00"),  # once every five minutes
        ("0 0 * * * *", "2026-11-25 11:00:00"),  # once at the top of every hour
        ("0 0 */2 * * *", "2026-11-25 12:00:00"),  # once every two hours
        ("0 0 9-17 * * *", "2026-11-25 11:00:00"),  # once every hour from 9 AM to 5 PM
        ("0 30 9 * * *", "2026-11-26 09:30:00"),  # at 9:30 AM every day
        ("0 30 9 * * 1-5", "2026-11-26 09:30:00"),  # at 9:30 AM every weekday
        ("0 30 9 * Jan Mon", "2027-01-04 09:30:00"),  # at 9:30 AM every Monday in January
        ("0 0 3 * * *", "2026-11-26 03:00:00"),  # the sweep's documented default
        ("*/15 * * * * *", "2026-11-25 10:07:15"),
        ("5/20 * * * * *", "2026-11-25 10:07:25"),  # a/n: from a to the maximum
        ("0 0 0 29 Feb *", "2028-02-29 00:00:00"),
        ("0 0 0 13 * Fri", "2027-08-13 00:00:00"),  # day of month AND day of week (NCrontab), not either
        ("0 0 0 * * 0", "2026-11-29 00:00:00"),  # 0 is Sunday
        ("0 0 12 1,15 * *", "2026-12-01 12:00:00"),
    ],
)
def test_documented_examples_next_occurrence(expression, after):
    assert parse(expression).next_after(at("2026-11-25 10:07:13")) == at(after)


def test_latest_at_or_before_includes_the_moment_itself_and_ignores_fractions():
    daily = parse("0 0 3 * * *")
    assert daily.latest_at_or_before(at("2026-11-25 03:00:00")) == at("2026-11-25 03:00:00")
    assert daily.latest_at_or_before(at("2026-11-25 03:00:00.999")) == at("2026-11-25 03:00:00")
    assert daily.latest_at_or_before(at("2026-11-25 02:59:59.999")) == at("2026-11-24 03:00:00")
    assert daily.next_after(at("2026-11-25 03:00:00")) == at("2026-11-26 03:00:00")
    assert daily.latest_at_or_before(at("2026-03-01 00:00:00")) == at("2026-02-28 03:00:00")


def test_names_are_case_insensitive_prefixes_and_five_fields_only_for_the_host():
    assert parse("0 0 0 * JANUARY,feb sat").months == {1, 2}
    assert parse("0 0 0 * * sa").weekdays == {6}
    assert parse("0 3 * * *", strict=False).seconds == (0,)  # the host reads five fields with seconds at 0
    with pytest.raises(ScheduleError, match="six fields"):
        parse("0 3 * * *")


@pytest.mark.parametrize(
    "expression, why",
    [
        ("", "six fields"),
        ("0 0 3 * *", "six fields"),
        ("0 0 3 * * * *", "six fields"),
        ("60 * * * * *", "outside 0-59"),
        ("0 0 24 * * *", "outside 0-23"),
        ("0 0 0 0 * *", "outside 1-31"),
        ("0 0 0 * 13 *", "outside 1-12"),
        ("0 0 0 * * 7", "outside 0-6"),
        ("0 0 0 * * Funday", "not a day of week name"),
        ("0 0 0 * Mon *", "not a month name"),
        ("0 0 x * * *", "not a valid hour"),
        ("0 0 3,,4 * * *", "empty list item"),
        ("0 */x * * * *", "step"),
        ("0 -1 * * * *", "not a valid minute"),
        ("0 0 3 * * ?", "not a valid day of week"),
        ("0 0 3 L * *", "not a valid day"),
        ("0 0 \u0663 * * *", "not a valid hour"),
        ("0 5/1 * * * *", "read differently"),
    ],
)
def test_invalid_expressions_say_which_field(expression, why):
    with pytest.raises(ScheduleError, match=why):
        parse(expression)


def test_the_app_refuses_what_ncrontab_reads_leniently_and_the_host_reads_it_ncrontabs_way():
    for lenient in ("0 0 17-9 * * *", "0 */0 * * * *"):
        with pytest.raises(ScheduleError):
            parse(lenient)
    assert parse("0 0 17-9 * * *", strict=False).hours == tuple(range(9, 18))  # swapped, as NCrontab does
    assert parse("0 */0 * * * *", strict=False).minutes == tuple(range(60))


def test_a_schedule_that_never_occurs_has_no_occurrence():
    never = parse("0 0 0 30 Feb *")
    assert never.next_after(at("2026-11-25 00:00:00")) is None
    assert never.latest_at_or_before(at("2026-11-25 00:00:00")) is None


def test_more_than_once_a_minute():
    assert parse("*/10 * * * * *").more_than_once_a_minute
    assert not parse("0 * * * * *").more_than_once_a_minute


def _brute_next(s: Schedule, moment: datetime) -> datetime | None:
    """Every second of the next eight days in turn (whole days and hours that cannot match are skipped)."""
    floor = moment.replace(microsecond=0)
    start = datetime(floor.year, floor.month, floor.day, tzinfo=UTC)
    for d in range(8):
        day = start + timedelta(days=d)
        if not (day.day in s.days and day.month in s.months and day.isoweekday() % 7 in s.weekdays):
            continue
        for h in range(24):
            if h not in s.hours:
                continue
            for sec in range(3600):
                t = day + timedelta(hours=h, seconds=sec)
                if t > floor and t.minute in s.minutes and t.second in s.seconds:
                    return t
    return None


fields = st.tuples(
    st.sampled_from(["0", "*/20", "10,40", "5-7", "*"]),
    st.sampled_from(["0", "*/15", "1-3", "59", "*"]),
    st.sampled_from(["*", "0", "23", "*/6", "9-17"]),
    st.just("*"),
    st.just("*"),
    st.sampled_from(["*", "1-5", "0,6"]),
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(fields, st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2030, 12, 31)))
def test_next_and_latest_agree_with_a_brute_force_search(parts, naive):
    """Schedules that fire at least once in any eight days: the first match second by second is the next occurrence,
    and the latest occurrence at or before a moment is the one whose next occurrence lies after the moment."""
    s = parse(" ".join(parts))
    moment = naive.replace(tzinfo=UTC)
    nxt = s.next_after(moment)
    assert nxt == _brute_next(s, moment) and nxt > moment
    latest = s.latest_at_or_before(moment)
    assert latest is not None and latest <= moment and s.next_after(latest) == nxt
