"""Pure decisions of the deletion workflow: order states and the clock in, the next step out. No I/O here."""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable

from shared.messages import OrderState

__all__ = ["Policy", "Decision", "poll_delay", "first_poll_delay", "decide", "needs_cancel", "past_deadline",
           "after_delete_refused", "is_cancelled"]

#: Statuses that mean "the cancellation is under way, do not PATCH again": wait for the next poll.
WAITING_STATUSES = frozenset({"pending"})


@dataclass(frozen=True)
class Policy:
    interval: int  # POLL_INTERVAL_SECONDS
    max_interval: int  # POLL_MAX_INTERVAL_SECONDS
    timeout: int  # POLL_TIMEOUT_SECONDS
    max_delete_refusals: int = 3


@dataclass(frozen=True)
class Decision:
    action: str  # "delete" | "repoll" | "timed_out" | "failed"
    delay: int = 0
    open_orders: tuple[str, ...] = ()


def is_cancelled(status: object) -> bool:
    return isinstance(status, str) and status.strip().lower() == "cancelled"


def poll_delay(attempt: int, policy: Policy) -> int:
    """Delay before poll hop ``attempt + 1``: POLL_INTERVAL_SECONDS before the first, doubled per hop, capped."""
    if attempt >= 32:
        return policy.max_interval
    return min(policy.max_interval, policy.interval * (2**attempt))


def first_poll_delay(orders: Iterable[OrderState], policy: Policy) -> int:
    """No delay when nothing has to be waited for: the DELETE is always sent by poll_orders."""
    return policy.interval if any(not o.cancelled for o in orders) else 0


def needs_cancel(order: OrderState) -> bool:
    """PATCH it now: not cancelled and not already waiting for a cancellation (an order that fell back)."""
    return not order.cancelled and order.status not in WAITING_STATUSES


def past_deadline(first_handled_at: datetime, now: datetime, policy: Policy) -> bool:
    """POLL_TIMEOUT_SECONDS have passed since the request was first handled."""
    return now >= first_handled_at + timedelta(seconds=policy.timeout)


def decide(orders: tuple[OrderState, ...], *, attempt: int, first_handled_at: datetime, now: datetime, policy: Policy) -> Decision:
    """After a poll hop read the orders: delete, poll again after a delay, or give up."""
    open_orders = tuple(o.id for o in orders if not o.cancelled)
    if not open_orders:
        return Decision("delete")
    if past_deadline(first_handled_at, now, policy):
        return Decision("timed_out", open_orders=open_orders)
    left = math.ceil((first_handled_at + timedelta(seconds=policy.timeout) - now).total_seconds())
    return Decision("repoll", delay=max(1, min(poll_delay(attempt + 1, policy), left)), open_orders=open_orders)


def after_delete_refused(refusals: int, *, attempt: int, policy: Policy) -> Decision:
    """Partner Center refused the DELETE because orders are still active: poll again, at most a few times."""
    if refusals >= policy.max_delete_refusals:
        return Decision("failed")
    return Decision("repoll", delay=poll_delay(attempt + 1, policy))
