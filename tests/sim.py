"""A simulated world for the property-based model (tests/unit/test_model.py): Partner Center, storage queues and a
Functions host, in memory, on a simulated clock, with a crash possible at every side-effect boundary.

* ``SimPartnerCenter`` implements ``shared.ports.PartnerCenterPort``: orders that cancel some time after their PATCH,
  refusals (900117, a second cancel 800061), PATCH answers that say ``cancelled`` too early, new purchases, orders
  that fall back or vanish, hidden orders that block DELETE, and global fault windows (throttling, outages, lost
  answers, slow calls, 409 on orders, 401). It records every call with the invocation that made it.
* ``SimQueues`` holds messages with visibility, dequeue counts and leases; ``SimHost`` delivers them as the queue
  extension does (success: delete; an exception: visible again after ``visibilityTimeout``; a crash: after the lease;
  ``maxDequeueCount`` reached: to ``<queue>-poison``).
* ``SimTable`` is the request ledger's table (``shared.ports.TablePort``): etags and conditional writes, outage
  windows (every call raises ``TableError``) and lost answers (the write is applied, and the SDK's retry then meets
  it: ``TableConflictError``).
* A crash is ``Crash`` (a BaseException, so nothing in the app can catch it) raised at the k-th boundary of an
  invocation: before or after each Partner Center call's effect, before or after each queue put and each table
  write, and after the function returned but before the host deleted the message.
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
from shared.tables import TableConflictError, TableError, check_key
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
class SimAzure:
    """An Azure subscription under a plan: active until some time after its cancel."""

    status: str = "active"  # active | inactive
    delay: float = 0.0
    inactive_at: float | None = None


@dataclass
class SimSubscription:
    """A subscription (issue 16): an accepted PATCH shows ``delay`` seconds later. The plan refuses its suspend
    (403 900115) while anything under it, an RI order or a SaaS subscription is active; a cancel past the window is
    refused (900117); ``not_ready`` PATCHes get 409 800082; with ``etag`` every change makes a new one (2055)."""

    kind: str = "nce"  # nce | saas | legacy | plan
    status: str = "active"
    window: bool = True  # inside its cancellation window
    delay: float = 0.0
    not_ready: int = 0
    etag: int | None = None
    azure: dict[str, SimAzure] = field(default_factory=dict)
    target: str | None = None
    change_at: float | None = None
    parent: str | None = None


@dataclass
class SimCustomer:
    orders: dict[str, SimOrder] = field(default_factory=dict)
    subscriptions: dict[str, SimSubscription] = field(default_factory=dict)


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
        self.deleted_customers: dict[str, SimCustomer] = {}
        self.windows: list[Window] = []
        self.log: list[CallRecord] = []
        self.invocation = "-"
        self.boundaries = Boundaries()
        self.delete_attempts: list[
            tuple[str, str, float, tuple[str, ...]]
        ] = []  # (invocation, customer, time, listed open orders and open subscriptions or Azure subscriptions)

    # -- world rules --------------------------------------------------------------------------------------------

    def _advance(self, order: SimOrder) -> None:
        if order.status == "pending" and order.cancel_at is not None and self.clock.t >= order.cancel_at:
            order.status = "cancelled"

    def open_orders(self, cid: str, *, listed_only: bool) -> list[str]:
        customer = self.customers[cid]
        for order in customer.orders.values():
            self._advance(order)
        return [oid for oid, o in customer.orders.items() if o.status != "cancelled" and not (listed_only and o.hidden)]

    def _advance_subscriptions(self, customer: SimCustomer) -> None:
        for s in customer.subscriptions.values():
            if s.target is not None and s.change_at is not None and self.clock.t >= s.change_at:
                s.status, s.target, s.change_at = s.target, None, None
                s.etag = None if s.etag is None else s.etag + 1
            for a in s.azure.values():
                if a.inactive_at is not None and self.clock.t >= a.inactive_at:
                    a.status = "inactive"

    def open_subscriptions(self, cid: str) -> list[str]:
        """Subscriptions not final and Azure subscriptions still active: what no DELETE may be sent beside."""
        customer = self.customers[cid]
        self._advance_subscriptions(customer)
        return [sid for sid, s in customer.subscriptions.items() if s.status not in ("suspended", "deleted")] + [
            f"{sid}/{aid}"
            for sid, s in customer.subscriptions.items()
            for aid, a in s.azure.items()
            if a.status == "active"
        ]

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
        lost = bool(
            window
            and window.kind == "lost"
            and name in ("cancel_order", "delete_customer", "patch_subscription", "cancel_azure")
        )
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

    def _subscription_json(self, sid: str, s: SimSubscription) -> dict:
        kinds: dict[str, dict[str, Any]] = {
            "nce": {"productType": {"id": "OnlineServicesNCE"}},
            "saas": {"isMicrosoftProduct": False, "productType": {"id": "SaaS"}},
            "legacy": {"productType": {"id": "OnlineServices"}},
            "plan": {"offerId": "DZH318Z0BPS6:0001:DZH318Z0BPS6", "productType": {"id": "Azure"}},
        }
        window = T0 + timedelta(seconds=self.clock.t) + timedelta(days=3 if s.window else -3)
        item: dict[str, Any] = {
            "id": sid,
            "status": s.status,
            "autoRenewEnabled": True,
            "orderId": sid.replace("-", "")[:12],
            "parentSubscriptionId": s.parent,
            "cancellationAllowedUntilDate": window.isoformat().replace("+00:00", "Z"),
            **kinds[s.kind],
        }
        if s.etag is not None:
            item["attributes"] = {"etag": f"e{s.etag}"}
        return item

    def list_subscriptions(self, cid, *, correlation_id, budget=None):
        def effect():
            customer = self._customer(cid, "subscriptions")
            self._advance_subscriptions(customer)
            return [self._subscription_json(sid, s) for sid, s in customer.subscriptions.items()]

        return self._call("subscriptions", cid, None, effect)

    def _subscription(self, cid: str, sid: str, what: str) -> SimSubscription:
        customer = self._customer(cid, what)
        self._advance_subscriptions(customer)
        if sid not in customer.subscriptions:
            raise NotFoundError(404, "2000", "Subscription not found", method="GET", path=what)
        return customer.subscriptions[sid]

    def get_subscription(self, cid, sid, *, correlation_id, budget=None):
        return self._call(
            "get_subscription", cid, sid, lambda: self._subscription_json(sid, self._subscription(cid, sid, "sub"))
        )

    def patch_subscription(self, cid, sid, subscription, *, etag, correlation_id, budget=None):
        def effect():
            s = self._subscription(cid, sid, "sub")
            target = subscription.get("status")
            if s.status == "deleted":
                raise RefusedError(
                    400, "2011", "Subscription with deleted status can't be updated", method="PATCH", path="sub"
                )
            if s.etag is not None and etag is not None and etag != f"e{s.etag}":
                raise RefusedError(400, "2055", "Etag is no longer valid", method="PATCH", path="sub")
            if s.not_ready > 0 or s.target is not None:
                s.not_ready = max(0, s.not_ready - 1)
                raise ConflictError(
                    409, "800082", "Subscription is not ready to be updated", method="PATCH", path="sub"
                )
            if target == "deleted" and (not s.window or s.kind not in ("nce", "saas")):
                raise RefusedError(
                    400, "900117", "You have passed your cancellation window", method="PATCH", path="sub"
                )
            if target == "suspended" and s.kind == "plan":
                customer = self.customers[cid]
                under = [a for a in s.azure.values() if a.status == "active"]
                saas = [
                    x
                    for x in customer.subscriptions.values()
                    if x.kind == "saas" and x.status not in ("suspended", "deleted")
                ]
                if under or saas or self.open_orders(cid, listed_only=False):
                    raise RefusedError(403, "900115", "Azure plan can't be suspended", method="PATCH", path="sub")
            if s.status != target:
                s.target, s.change_at = target, self.clock.t + s.delay
                self._advance_subscriptions(self.customers[cid])
            return {}

        return self._call("patch_subscription", cid, sid, effect)

    def list_azure_entitlements(self, cid, plan_id, *, correlation_id, budget=None):
        def effect():
            s = self._subscription(cid, plan_id, "azure")
            return [{"id": aid, "status": a.status} for aid, a in s.azure.items()]

        return self._call("azure", cid, plan_id, effect)

    def cancel_azure_entitlement(self, cid, plan_id, entitlement_id, *, correlation_id, budget=None):
        def effect():
            s = self._subscription(cid, plan_id, "azure")
            a = s.azure.get(entitlement_id)
            if a is None:
                raise NotFoundError(404, "2000", "Azure subscription not found", method="POST", path="azure")
            if a.status == "active" and a.inactive_at is None:
                a.inactive_at = self.clock.t + a.delay
            return {}

        return self._call("cancel_azure", cid, f"{plan_id}/{entitlement_id}", effect)

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
                (
                    self.invocation,
                    cid,
                    self.clock.t,
                    tuple(self.open_orders(cid, listed_only=True) + self.open_subscriptions(cid)),
                )
            )
            blocking = self.open_orders(cid, listed_only=False) + self.open_subscriptions(cid)
            if blocking:
                raise RefusedError(
                    400,
                    "800000",
                    "Customer relationship cannot be removed due to active Azure reserved "
                    f"instances.Please cancel the following orders: {','.join(blocking)}",
                    method="DELETE",
                    path="customer",
                )
            self.deleted_customers[cid] = self.customers.pop(cid)
            self.deleted[cid] = (self.clock.t, self.invocation)

        return self._call("delete_customer", cid, None, effect)


def _summary(answer: Any) -> Any:
    if isinstance(answer, dict):
        return answer.get("status", "ok")
    if isinstance(answer, list):
        # an entitlement listing: its order ids; a subscription or Azure listing: (id, status) pairs
        return tuple((a["id"], a["status"]) if isinstance(a, dict) else a for a in answer)
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


class SimTable:
    """The ledger's table, in memory. ``windows``: (kind, start, end) with kind "outage" (every call fails), "lost"
    (a write is applied and then refused as a conflict: the SDK's retry met it) or "lost-error" (a write is applied and
    then fails: every answer lost)."""

    name = "deletionrequests"

    def __init__(self, clock: SimClock, boundaries: Callable[[], Boundaries]):
        self.clock = clock
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.windows: list[tuple[str, float, float]] = []
        self.writes: list[tuple[float, str, str, str, dict[str, Any]]] = []  # (time, op, pk, rk, row): every write
        self._boundaries = boundaries
        self._versions = itertools.count(1)

    def _window(self) -> str | None:
        for kind, start, end in self.windows:
            if start <= self.clock.t < end:
                return kind
        return None

    def _read(self) -> None:
        if self._window() == "outage":
            raise TableError("the table is unavailable (simulated 503)")

    def _write(self, op: str, key: tuple[str, str], apply: Callable[[], None]) -> None:
        check_key(key[0])
        check_key(key[1])
        window = self._window()
        if window == "outage":
            raise TableError("the table is unavailable (simulated 503)")
        boundaries = self._boundaries()
        boundaries.cross(f"before table {op}")
        apply()
        self.writes.append((self.clock.t, op, key[0], key[1], dict(self.rows.get(key, {}))))
        boundaries.cross(f"after table {op}")
        if window == "lost":  # applied; the answer was lost and the SDK's retry met the write itself
            raise TableConflictError("the retried write met its own first attempt (simulated)")
        if window == "lost-error":  # applied; every answer was lost: the caller sees only a fault
            raise TableError("no answer from the table (simulated; the write was applied)")

    def get(self, partition: str, row_key: str) -> dict[str, Any] | None:
        self._read()
        row = self.rows.get((check_key(partition), check_key(row_key)))
        return dict(row) if row is not None else None

    def query_by(self, name: str, value: str) -> list[dict[str, Any]]:
        self._read()
        return [dict(r) for _, r in sorted(self.rows.items()) if r.get(name) == check_key(value)]

    def query_finished_before(self, moment: str) -> list[dict[str, Any]]:
        self._read()
        return [dict(r) for _, r in sorted(self.rows.items()) if str(r.get("finishedAt") or "~") < moment]

    def query_partition(self, partition: str) -> list[dict[str, Any]]:
        self._read()
        return [dict(r) for (pk, _), r in sorted(self.rows.items()) if pk == check_key(partition)]

    def insert(self, row: dict[str, Any]) -> str:
        key = (row["PartitionKey"], row["RowKey"])
        if key in self.rows:
            self._read()
            raise TableConflictError("the row exists (simulated 409)")
        self._write("insert", key, lambda: self.rows.__setitem__(key, {**row, "etag": f"e{next(self._versions)}"}))
        return self.rows[key]["etag"]

    def replace(self, row: dict[str, Any], etag: str) -> str:
        key = (row["PartitionKey"], row["RowKey"])
        if key not in self.rows or self.rows[key]["etag"] != etag:
            self._read()
            raise TableConflictError("the row changed (simulated 412)")
        self._write("replace", key, lambda: self.rows.__setitem__(key, {**row, "etag": f"e{next(self._versions)}"}))
        return self.rows[key]["etag"]

    def delete(self, partition: str, row_key: str, etag: str) -> None:
        key = (partition, row_key)
        if key in self.rows and self.rows[key]["etag"] != etag:
            self._read()
            raise TableConflictError("the row changed (simulated 412)")
        self._write("delete", key, lambda: self._forget(key))

    def _forget(self, key: tuple[str, str]) -> None:
        self.rows.pop(key, None)


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
