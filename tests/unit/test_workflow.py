"""Table-driven tests of the pure decisions: orders + clock in, next step out."""
from datetime import datetime, timedelta, timezone

import pytest

from shared.messages import OrderState
from shared.workflow import Policy, after_delete_refused, decide, first_poll_delay, needs_cancel, poll_delay

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
POLICY = Policy(interval=30, max_interval=600, timeout=3600)
A, B = "A" * 33, "B" * 33


def orders(*statuses):
    return tuple(OrderState(f"{chr(65 + i)}" * 33, s) for i, s in enumerate(statuses))


@pytest.mark.parametrize(
    "statuses, attempt, elapsed, action, delay",
    [
        ((), 0, 0, "delete", 0),
        (("cancelled",), 0, 0, "delete", 0),
        (("cancelled", "cancelled"), 5, 3599, "delete", 0),
        (("cancelled", "cancelled"), 5, 99999, "delete", 0),  # all cancelled wins even past the deadline
        (("pending",), 0, 10, "repoll", 60),  # the first hop came POLL_INTERVAL after the request; then it doubles
        (("cancelled", "pending"), 1, 10, "repoll", 120),
        (("pending",), 3, 10, "repoll", 480),
        (("pending",), 4, 10, "repoll", 600),  # capped
        (("pending",), 40, 10, "repoll", 600),
        (("pending",), 5, 3500, "repoll", 100),  # never sleeps past the deadline
        (("pending",), 0, 3600, "timed_out", 0),
        (("completed", "cancelled"), 2, 4000, "timed_out", 0),
        (("unknown",), 0, 0, "repoll", 60),
    ],
)
def test_decide(statuses, attempt, elapsed, action, delay):
    decision = decide(orders(*statuses), attempt=attempt, first_handled_at=T0, now=T0 + timedelta(seconds=elapsed), policy=POLICY)
    assert decision.action == action
    assert decision.delay == delay
    if action != "delete":
        assert decision.open_orders == tuple(o.id for o in orders(*statuses) if o.status != "cancelled")


def test_never_delete_while_an_order_is_open():
    for status in ("pending", "completed", "unknown", "active", "Cancelled-ish", "canceled"):
        for elapsed in (0, 10, 10**6):
            d = decide(orders("cancelled", status), attempt=0, first_handled_at=T0, now=T0 + timedelta(seconds=elapsed), policy=POLICY)
            assert d.action != "delete"


def test_needs_cancel_skips_cancelled_and_pending():
    assert [o.id for o in orders("cancelled", "pending", "completed", "unknown") if needs_cancel(o)] == ["C" * 33, "D" * 33]


def test_first_poll_has_no_delay_when_nothing_to_wait_for():
    assert first_poll_delay((), POLICY) == 0
    assert first_poll_delay(orders("cancelled"), POLICY) == 0
    assert first_poll_delay(orders("cancelled", "pending"), POLICY) == 30


def test_poll_delay_grows_and_is_capped():
    assert [poll_delay(i, POLICY) for i in range(7)] == [30, 60, 120, 240, 480, 600, 600]


def test_delete_refusals_are_bounded():
    assert after_delete_refused(1, attempt=2, policy=POLICY).action == "repoll"
    assert after_delete_refused(2, attempt=2, policy=POLICY).delay == 240
    assert after_delete_refused(3, attempt=2, policy=POLICY).action == "failed"
