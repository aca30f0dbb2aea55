"""A simulated world for the property-based model (tests/unit/test_model.py): Partner Center, storage queues and a
Functions host, in memory, on a simulated clock, with a crash possible at every side-effect boundary.

* ``SimPartnerCenter`` implements ``shared.ports.PartnerCenterPort``: orders that cancel some time after their PATCH,
  refusals (900117, a second cancel 800061), PATCH answers that say ``cancelled`` too early, new purchases, orders
  that fall back or vanish, hidden orders that block DELETE, and global fault windows (throttling, outages, lost
  answers, slow calls, 409 on orders, 401). It records every call with the invocation that made it.
* ``SimQueues`` holds messages with visibility, dequeue counts and leases; ``SimHost`` delivers them as the queue
  extension does (success: delete; an exception: visible again after ``visibilityTimeout``; a crash: after the lease;
  ``maxDequeueCount`` reached: to ``<queue>-poison``).
* A crash is ``Crash`` (a BaseException, so nothing in the app can catch it) raised at the k-th boundary of an
  invocation: before or after each Partner Center call's effect, before or after each queue put, and after the
  function returned but before the host deleted the message.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    RefusedError,
    ThrottledError,
    TransientError,
)
from tests.fakes import queue_message

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


class Crash(BaseException):
    """The host process died here (SIGKILL, scale-in): nothing after this point happens."""


class SimClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.t)

    def monotonic(self) -> float:
        return self.t


@dataclass
class Boundaries:
    """Counts an invocation's side-effect boundaries and crashes at the planned one."""

    crash_at: int | None = None
    count: int = 0

    def cross(self, what: str) -> None:
        if self.crash_at is not None and self.count == self.crash_at:
            self.count += 1
            raise Crash(what)
        self.count += 1


@dataclass
class SimOrder:
    status: str = "completed"  # completed | pending | cancelled
    delay: float = 0.0  # seconds from the cancel PATCH until it reads cancelled
    refuse: str | None = None  # "900117": past its cancellation window, PATCH refused
    second_cancel_error: bool = False  # PATCH of a pending or cancelled order refused with 800061
    early_answer: bool = False  # the PATCH answers "cancelled" although it is pending
    hidden: bool = False  # not in the entitlements, but blocks DELETE
    cancel_at: float | None = None


@dataclass
class SimCustomer:
    orders: dict[str, SimOrder] = field(default_factory=dict)


@dataclass
class Window:
    kind: str  # throttle | outage | lost | slow | busy (409 on orders) | unauthorised (401 with a fresh credential)
    start: float
    end: float
    retry_after: float | None = None


@dataclass
class CallRecord:
    invocation: str
    call: str  # get_customer | entitlements | get_order | cancel_order | delete_customer
    customer: str
    order: str | None
    t: float
    answer: Any  # the status read, the ids listed, "ok", or the error's class name


class SimPartnerCenter:
    CALL_SECONDS = 0.2
    SLOW_SECONDS = 4.0

    def __init__(self, clock: SimClock):
        self.clock = clock
        self.customers: dict[str, SimCustomer] = {}
        self.deleted: dict[str, tuple[float, str]] = {}  # customer -> (time, invocation) of the accepted DELETE
        self.windows: list[Window] = []
        self.log: list[CallRecord] = []
        self.invocation = "-"
        self.boundaries = Boundaries()
        self.delete_attempts: list[
            tuple[str, str, float, tuple[str, ...]]
        ] = []  # (invocation, customer, time, listed open orders)

    # -- world rules --------------------------------------------------------------------------------------------

    def _advance(self, order: SimOrder) -> None:
        if order.status == "pending" and order.cancel_at is not None and self.clock.t >= order.cancel_at:
            order.status = "cancelled"

    def open_orders(self, cid: str, *, listed_only: bool) -> list[str]:
        customer = self.customers[cid]
        for order in customer.orders.values():
            self._advance(order)
        return [oid for oid, o in customer.orders.items() if o.status != "cancelled" and not (listed_only and o.hidden)]

    def _window(self) -> Window | None:
        return next((w for w in self.windows if w.start <= self.clock.t < w.end), None)

    def _call(self, name: str, cid: str, oid: str | None, effect: Callable[[], Any]) -> Any:
        self.boundaries.cross(f"before {name}")
        window = self._window()
        self.clock.t += self.SLOW_SECONDS if window and window.kind == "slow" else self.CALL_SECONDS
        try:
            if window and window.kind == "throttle":
                raise ThrottledError(
                    429, "429", "Rate limit is exceeded.", retry_after=window.retry_after, method="GET", path=name
                )
            if window and window.kind == "outage":
                raise TransientError(503, "800003", "Unexpected service error", method="GET", path=name)
            if window and window.kind == "busy" and oid in self.customers.get(cid, SimCustomer()).orders:
                raise ConflictError(409, "800060", "Your order is in progress.", method="PATCH", path=name)
            if window and window.kind == "unauthorised":
                raise AuthenticationError(
                    401, "800001", "Partner Token missing in request context", method="GET", path=name
                )
            answer = effect()
        except (ThrottledError, TransientError, RefusedError, ConflictError, AuthenticationError) as exc:
            self.log.append(CallRecord(self.invocation, name, cid, oid, self.clock.t, type(exc).__name__))
            raise
        lost = bool(window and window.kind == "lost" and name in ("cancel_order", "delete_customer"))
        self.log.append(CallRecord(self.invocation, name, cid, oid, self.clock.t, "lost" if lost else _summary(answer)))
        self.boundaries.cross(f"after {name}")
        if lost:
            raise TransientError(
                None, None, "ReadTimeout talking to Partner Center (the call took effect)", method="X", path=name
            )
        return answer

    def _customer(self, cid: str, what: str) -> SimCustomer:
        if cid not in self.customers:
            raise NotFoundError(404, "60003", "Tenant not found", method="GET", path=what)
        return self.customers[cid]

    # -- the port -----------------------------------------------------------------------------------------------

    def list_customers(self, *, correlation_id, budget=None, stop_after=None):
        """The rest of the port: the model runs no sweep, but the simulated world is a whole Partner Center."""
        return self._call("list_customers", "-", None, lambda: [{"id": cid} for cid in self.customers])

    def get_customer(self, cid, *, correlation_id, budget=None):
        return self._call("get_customer", cid, None, lambda: (self._customer(cid, "customer"), {"id": cid})[1])

    def list_subscriptions(self, cid, *, correlation_id, budget=None):
        """Read only, to name what blocks a refused DELETE: the simulated customers hold no subscriptions."""
        return self._call("subscriptions", cid, None, lambda: (self._customer(cid, "subscriptions"), [])[1])

    def list_entitlement_order_ids(self, cid, *, correlation_id, budget=None):
        def effect():
            return [oid for oid, o in self._customer(cid, "entitlements").orders.items() if not o.hidden]

        return self._call("entitlements", cid, None, effect)

    def get_order(self, cid, oid, *, correlation_id, budget=None):
        def effect():
            order = self._customer(cid, "order").orders.get(oid)
            if order is None:
                raise NotFoundError(404, "20000", "Order Id not found", method="GET", path="order")
            self._advance(order)
            return {"id": oid, "status": order.status}

        return self._call("get_order", cid, oid, effect)

    def cancel_order(self, cid, oid, *, correlation_id, budget=None):
        def effect():
            order = self._customer(cid, "order").orders.get(oid)
            if order is None:
                raise NotFoundError(404, "20000", "Order Id not found", method="PATCH", path="order")
            self._advance(order)
            if order.refuse:
                raise RefusedError(
                    400, order.refuse, "You have passed your 60-day cancellation window.", method="PATCH", path="order"
                )
            if order.status in ("pending", "cancelled") and order.second_cancel_error:
                raise RefusedError(400, "800061", "Order cannot be canceled", method="PATCH", path="order")
            if order.status == "completed":
                order.status, order.cancel_at = (
                    ("cancelled", None) if order.delay == 0 else ("pending", self.clock.t + order.delay)
                )
            return {"id": oid, "status": "cancelled" if order.early_answer else order.status}

        return self._call("cancel_order", cid, oid, effect)

    def delete_customer(self, cid, *, correlation_id, budget=None):
        def effect():
            self._customer(cid, "customer")
            self.delete_attempts.append(
                (self.invocation, cid, self.clock.t, tuple(self.open_orders(cid, listed_only=True)))
            )
            blocking = self.open_orders(cid, listed_only=False)
            if blocking:
                raise RefusedError(
                    400,
                    "800000",
                    "Customer relationship cannot be removed due to active Azure reserved "
                    f"instances.Please cancel the following orders: {','.join(blocking)}",
                    method="DELETE",
                    path="customer",
                )
            del self.customers[cid]
            self.deleted[cid] = (self.clock.t, self.invocation)

        return self._call("delete_customer", cid, None, effect)


def _summary(answer: Any) -> Any:
    if isinstance(answer, dict):
        return answer.get("status", "ok")
    if isinstance(answer, list):
        return tuple(answer)
    return "ok"


# -- queues and the host ----------------------------------------------------------------------------------------


@dataclass
class SimMessage:
    id: str
    queue: str
    body: bytes
    inserted: float
    visible_at: float
    dequeue_count: int = 0
    crashes: int = 0


class SimQueues:
    """Storage queues; ``send`` is the app's publisher (``shared.ports.PublisherPort``), with crash boundaries."""

    def __init__(self, clock: SimClock, boundaries: Callable[[], Boundaries]):
        self.clock = clock
        self.messages: dict[str, SimMessage] = {}
        self.sent: list[tuple[str, str, bytes, float, float]] = []  # (queue, id, body, at, visible_at), every put ever
        self.sent_by_app: list[tuple[str, str, bytes, float, float]] = []  # the app's own puts (its publisher)
        self._ids = itertools.count(1)
        self._boundaries = boundaries

    def put(self, queue: str, data: bytes | str, delay: float = 0) -> SimMessage:
        raw = data.encode() if isinstance(data, str) else bytes(data)
        msg = SimMessage(f"m{next(self._ids)}", queue, raw, self.clock.t, self.clock.t + delay)
        self.messages[msg.id] = msg
        self.sent.append((queue, msg.id, raw, self.clock.t, msg.visible_at))
        return msg

    def send(self, queue, data, *, delay=0, time_to_live=-1):
        boundaries = self._boundaries()
        boundaries.cross(f"before put to {queue}")
        msg = self.put(queue, data, delay)
        self.sent_by_app.append(self.sent[-1])
        boundaries.cross(f"after put to {queue}")
        return msg.id

    def visible(self, queues: tuple[str, ...]) -> list[SimMessage]:
        return sorted(
            (m for m in self.messages.values() if m.queue in queues and m.visible_at <= self.clock.t),
            key=lambda m: (m.visible_at, m.id),
        )

    def on(self, queue: str) -> list[SimMessage]:
        return [m for m in self.messages.values() if m.queue == queue]

    def next_visible_at(self, queues: tuple[str, ...]) -> float | None:
        times = [m.visible_at for m in self.messages.values() if m.queue in queues]
        return min(times) if times else None


@dataclass
class Invocation:
    id: str
    function: str
    message: SimMessage
    delivery: int
    started: float
    crashed: str | None = None
    raised: str | None = None
    ended: float = 0.0


class SimHost:
    """Delivers messages to the two functions the way the queue extension does."""

    def __init__(
        self,
        clock: SimClock,
        queues: SimQueues,
        pc: SimPartnerCenter,
        handlers: dict[str, Callable],
        *,
        max_dequeue: int = 5,
        visibility_timeout: float = 30,
        lease: float = 600,
    ):
        self.clock, self.queues, self.pc, self.handlers = clock, queues, pc, handlers
        self.max_dequeue, self.visibility_timeout, self.lease = max_dequeue, visibility_timeout, lease
        self.invocations: list[Invocation] = []
        self.host_poisoned: list[SimMessage] = []

    def deliver(self, msg: SimMessage, crash_at: int | None) -> Invocation:
        msg.dequeue_count += 1
        inv = Invocation(f"inv{len(self.invocations) + 1}", msg.queue, msg, msg.dequeue_count, self.clock.t)
        self.invocations.append(inv)
        if msg.dequeue_count > self.max_dequeue:  # the host poisons it without an invocation
            self._poison(msg)
            return inv
        boundaries = Boundaries(crash_at)
        self.pc.boundaries, self.pc.invocation = boundaries, inv.id
        self._current = boundaries
        msg.visible_at = self.clock.t + self.lease  # leased while it runs
        text = base64.b64encode(msg.body).decode()
        function_message = queue_message(
            base64.b64decode(text),
            id=msg.id,
            dequeue_count=msg.dequeue_count,
            inserted=T0 + timedelta(seconds=msg.inserted),
        )
        try:
            self.handlers[msg.queue](function_message, inv.id)
            boundaries.cross("after the function returned, before the host deleted the message")
        except Crash as crash:
            inv.crashed = str(crash)
            msg.crashes += 1
            msg.visible_at = self.clock.t + self.lease  # comes back when the lease runs out
        except Exception as exc:  # noqa: BLE001 - any exception is a failed invocation
            inv.raised = f"{type(exc).__name__}: {exc}"
            if msg.dequeue_count >= self.max_dequeue:
                self._poison(msg)
            else:
                msg.visible_at = self.clock.t + self.visibility_timeout
        else:
            del self.queues.messages[msg.id]
        finally:
            self.pc.boundaries, self.pc.invocation = Boundaries(), "-"
            inv.ended = self.clock.t
        return inv

    def boundaries(self) -> Boundaries:
        return getattr(self, "_current", Boundaries())

    def _poison(self, msg: SimMessage) -> None:
        del self.queues.messages[msg.id]
        self.host_poisoned.append(msg)
        self.queues.put(msg.queue + "-poison", msg.body)


def outcome_events(queues: SimQueues, queue: str) -> list[tuple[dict, str, float]]:
    """Every outcome event ever sent: (event, message id, time)."""
    return [(json.loads(body), mid, at) for q, mid, body, at, _ in queues.sent if q == queue]
