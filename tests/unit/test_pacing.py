"""The process-wide pacer (issue 8): a sliding window like Partner
Center's limit, and a 429 honoured by every thread."""

from __future__ import annotations

import threading

import pytest
import responses
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.budget import Budget
from shared.errors import ThrottledError
from shared.pacing import MARGIN_SECONDS, WINDOW_SECONDS, Pacer
from shared.partner_center import PartnerCenterClient, RetryPolicy
from tests.unit.test_partner_center import BASE, CORR, CUST, FakeCredential, body


class Clock:
    def __init__(self):
        self.now = 1000.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def budget(clock, wait=4.0, work=10.0):
    return Budget(work, wait, clock=clock)


def test_a_full_window_makes_the_next_call_wait_for_the_oldest_slot():
    clock = Clock()
    pacer = Pacer(3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        assert pacer.acquire(budget(clock)) is None
        clock.now += 1
    # The oldest call went at 1000; its slot frees at 1000 + 60 + margin, 57 + margin seconds from now (1003).
    assert pacer.wait_seconds() == pytest.approx(57 + MARGIN_SECONDS)
    # too long for a 4 s allowance: no slot taken
    assert pacer.acquire(budget(clock)) == pytest.approx(57 + MARGIN_SECONDS)
    assert clock.slept == []
    clock.now = 1000 + WINDOW_SECONDS + MARGIN_SECONDS - 2
    assert pacer.acquire(budget(clock)) is None and clock.slept == [pytest.approx(2)]  # 2 s fits: slept, then went


def test_a_429_holds_every_caller_off_for_its_retry_after():
    clock = Clock()
    pacer = Pacer(100, clock=clock, sleep=clock.sleep)
    pacer.hold_off(30)
    assert pacer.wait_seconds() == 30
    assert pacer.acquire(budget(clock)) == 30
    pacer.hold_off(5)  # a shorter one never shortens the hold
    assert pacer.wait_seconds() == 30
    clock.now += 27
    assert pacer.acquire(budget(clock)) is None and clock.slept == [3]


def test_waits_count_toward_the_invocations_allowance():
    clock = Clock()
    pacer = Pacer(1, clock=clock, sleep=clock.sleep)
    b = budget(clock, wait=4.0, work=1e9)
    assert pacer.acquire(b) is None
    clock.now += WINDOW_SECONDS + MARGIN_SECONDS - 3
    assert pacer.acquire(b) is None  # waited 3 s of the 4
    clock.now += WINDOW_SECONDS + MARGIN_SECONDS - 3
    assert pacer.acquire(b) == pytest.approx(3)  # another 3 s would exceed the allowance


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 20), gaps=st.lists(st.floats(0, 30, allow_nan=False), min_size=1, max_size=120))
def test_no_window_of_a_minute_ever_holds_more_calls_than_the_limit(limit, gaps):
    """However the calls come, the calls let through never exceed the limit in any window (plus the margin)."""
    clock = Clock()
    pacer = Pacer(limit, clock=clock, sleep=clock.sleep)
    sent = []
    for gap in gaps:
        clock.now += gap
        if pacer.acquire(budget(clock, wait=1e9, work=1e9)) is None:
            sent.append(clock.now)
    assert len(sent) == len(gaps)  # with an unlimited allowance every call goes, after its wait
    for i, t in enumerate(sent):
        in_window = [s for s in sent[i:] if s < t + WINDOW_SECONDS + MARGIN_SECONDS]
        assert len(in_window) <= limit


def test_threads_share_one_window():
    pacer = Pacer(50, sleep=lambda s: None)
    results: list[float | None] = []

    def worker():
        results.extend(pacer.acquire(Budget(10, 0)) for _ in range(20))

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(None) == 50 and len(results) == 100  # exactly the limit went; the rest were told to wait


def paced_client(limit):
    """A client on a fake clock with a pacer of ``limit`` calls per minute: (clock, pacer, client)."""
    clock = Clock()
    pacer = Pacer(limit, clock=clock, sleep=clock.sleep)
    client = PartnerCenterClient(
        BASE,
        FakeCredential(),
        "https://api.partnercenter.microsoft.com/.default",
        policy=RetryPolicy(),
        sleep=clock.sleep,
        pacer=pacer,
    )
    return clock, pacer, client


@responses.activate
def test_the_client_paces_and_a_paced_call_that_cannot_wait_is_a_throttle():
    clock, _pacer, client = paced_client(2)
    responses.get(f"{BASE}/v1/customers/{CUST}", body=body({"id": CUST}))
    b = Budget(10, 4, clock=clock)
    client.get_customer(CUST, correlation_id=CORR, budget=b)
    client.get_customer(CUST, correlation_id=CORR, budget=b)
    with pytest.raises(ThrottledError) as info:
        client.get_customer(CUST, correlation_id=CORR, budget=b)
    assert len(responses.calls) == 2  # the third never left the process
    assert info.value.retry_after == pytest.approx(
        WINDOW_SECONDS + MARGIN_SECONDS
    ) and "PARTNER_CENTER_CALLS_PER_MINUTE" in (info.value.description or "")


@responses.activate
def test_a_429_from_partner_center_holds_off_the_whole_process():
    clock, pacer, client = paced_client(100)
    responses.get(
        f"{BASE}/v1/customers/{CUST}",
        body=body({"statusCode": 429, "message": "x"}),
        status=429,
        headers={"Retry-After": "20"},
    )
    with pytest.raises(ThrottledError):
        client.get_customer(CUST, correlation_id=CORR, budget=Budget(10, 4, clock=clock))
    assert pacer.wait_seconds() == 20  # any other thread's call now waits too
    with pytest.raises(ThrottledError) as info:  # and is not sent
        client.get_order(
            CUST, "UKXASSO1dezh3HdxClHxSp5UEFXGbAnt1", correlation_id=CORR, budget=Budget(10, 4, clock=clock)
        )
    assert len(responses.calls) == 1 and info.value.retry_after == 20
