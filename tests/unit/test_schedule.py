"""The poll schedule (issue 8) is a pure function; these properties prove its DELETE-lag bound and its cost.

The bound, for an order that turns cancelled ``c`` seconds after the request's last cancel, with the host picking a
due message up at most ``pickup`` seconds late and each hop taking at most ``hop`` seconds:

    the DELETE comes at most  max(POLL_INTERVAL_SECONDS, 0.1 * (c + hop + 1)) + pickup + 2 * hop + 1  after ``c``

(the first read at or after ``c``, then the rest of that confirming hop: the other reads, the listing, the DELETE; the
last second is the grid's rounding). The benchmark's target (docs/performance.md) is max(POLL_INTERVAL_SECONDS,
0.1 * c) + ``maxPollingInterval`` + 1 s. Nothing here is timed: the schedule is simulated with the core's own
``poll_delay``.
"""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import workflow as core
from shared.workflow import Policy

#: Cancellation times tried by the lag-bound property: each simulates up to millions of polls with the core's own
#: ``poll_delay`` (about 15 s for 400). ``make check`` tries fewer (SCHEDULE_EXAMPLES=100); ``make test`` all.
LAG_EXAMPLES = int(os.environ.get("SCHEDULE_EXAMPLES", "400"))


def policy(interval: int, max_interval: int) -> Policy:
    return Policy(interval=interval, max_interval=max_interval, timeout=10**7)


def reads(policy: Policy, horizon: float, pickups, hop: float, start: float = 0.0):
    """Times (seconds since the cancel) at which the chain reads the order: the first poll is scheduled at the end of
    the hop that cancelled, each next one ``poll_delay`` after the end of the hop before it, and each is picked up
    late by the next value of ``pickups``."""
    times, now, i = [], start, 0
    while now <= horizon:
        # The hop that read at ``now`` ends ``hop`` later and schedules the next read.
        end = now + hop
        now = end + core.poll_delay(end - start, policy) + pickups[i % len(pickups)]
        times.append(now)
        i += 1
    return times


@settings(max_examples=LAG_EXAMPLES, deadline=None)
@given(
    interval=st.integers(1, 60),
    extra=st.integers(0, 3600),
    c=st.floats(0, 30 * 24 * 3600, allow_nan=False),
    pickups=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=20),
    hop=st.floats(0, 1, allow_nan=False),
)
@pytest.mark.slow(seconds=14)
def test_the_delete_lag_is_bounded_for_every_cancellation_time(interval, extra, c, pickups, hop):
    p = policy(interval, interval + extra)
    first_read_after = next(t for t in reads(p, c, pickups, hop) if t >= c)
    delete = first_read_after + hop  # the confirming hop goes on to list, read the rest and DELETE
    # The cap (POLL_MAX_INTERVAL_SECONDS) only ever shortens a wait, so the bound holds with or without it.
    assert delete - c <= max(interval, 0.1 * (c + hop + 1)) + max(pickups) + 2 * hop + 1 + 1e-6


@settings(max_examples=200, deadline=None)
@given(
    interval=st.integers(1, 60),
    c=st.floats(1, 7 * 24 * 3600, allow_nan=False),
    pickups=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=20),
)
def test_the_number_of_polls_grows_with_the_logarithm_of_the_wait(interval, c, pickups):
    """At most one poll per grid point: ten until 10 x POLL_INTERVAL_SECONDS, then one per 10 % growth of the wait,
    however late each hop is picked up (a late hop skips grid points, never adds any)."""
    p = policy(interval, 10**6)
    polls = len(reads(p, c, pickups, 0.0))
    knee = 10 * interval
    grid_points = min(c, knee) / interval + (math.log(c / knee) / math.log(1.1) if c > knee else 0)
    assert polls <= grid_points + 2


def test_the_headline_numbers():
    """The headline scenario of `make bench`: POLL_INTERVAL_SECONDS 5, default cap, a 5-minute cancellation."""
    p = policy(5, 600)
    times = reads(p, 300, [0.0], 0.0)
    after = next(t for t in times if t >= 300)
    assert len(times) <= 30 and after - 300 <= 30
    # A 10-times longer cancellation costs about 24 more polls, not 10 times as many.
    assert len(reads(p, 3000, [0.0], 0.0)) - len(times) <= 25


def test_poll_delay_is_clamped_and_whole():
    p = policy(5, 600)
    # Grid: 5, 10 ... 50, then 55, 60.5, 66.55 ... 277.99, 305.79 ...; a hop just before a point counts as its.
    seconds = (0, 4.5, 49.9, 50, 55.9, 278, 300, 5999, 1e12)
    assert [core.poll_delay(s, p) for s in seconds] == [5, 5, 5, 5, 4, 27, 5, 457, 600]
    assert all(isinstance(core.poll_delay(s, p), int) for s in (0, 1.5, 1e9))
