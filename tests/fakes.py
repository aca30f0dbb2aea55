"""In-memory fakes of the app's ports, for unit tests (integration tests use Azurite and the emulator)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from azure.functions.queue import QueueMessage

from shared.errors import ConflictError, NotFoundError, RefusedError, ThrottledError, TransientError
from shared.tables import TableConflictError, TableError, check_key


@dataclass
class FakeOrder:
    status: str = "completed"
    pending_reads: int = 0  # reads that still say "pending" after a cancel
    refuse: RefusedError | None = None
    conflict: bool = False
    patch_answer: str | None = (
        None  # what a PATCH answers, whatever the order's real state (e.g. "cancelled" too early)
    )
    second_cancel: str = "idempotent"  # "error": a PATCH of a pending or cancelled order is refused with 800061


@dataclass
class FakeCustomer:
    orders: dict[str, FakeOrder] = field(default_factory=dict)
    entitlement_ids: list[str] | None = None  # default: the order ids
    subscriptions: list[dict] = field(default_factory=list)  # as listed; a PATCH changes the status at once


class FakePartnerCenter:
    def __init__(self):
        self.customers: dict[str, FakeCustomer] = {}
        self.calls: list[tuple[str, ...]] = []
        self.throttle_next: float | None = None
        self.delete_refusals = 0  # DELETEs to refuse with the active-orders description
        self.lose_delete_answer = False
        self.outage_calls = 0  # the next N calls fail as if Partner Center were down (after the client's retries)
        self.clock: Clock | None = None
        self.call_seconds = 0.0  # each call advances ``clock`` by this much (slow calls)

    def _enter(self, *call):
        self.calls.append(call)
        if self.clock is not None and self.call_seconds:
            self.clock.advance(self.call_seconds)
        if self.throttle_next is not None:
            retry, self.throttle_next = self.throttle_next, None
            raise ThrottledError(429, "429", "Rate limit is exceeded.", retry_after=retry)
        if self.outage_calls:
            self.outage_calls -= 1
            raise TransientError(503, "800003", "Unexpected service error", method="GET", path="/v1/customers")

    def _customer(self, cid):
        if cid not in self.customers:
            raise NotFoundError(404, "60003", "Tenant not found", method="GET", path=f"/v1/customers/{cid}")
        return self.customers[cid]

    def get_customer(self, cid, *, correlation_id, budget=None):
        self._enter("get_customer", cid)
        self._customer(cid)
        return {"id": cid}

    def list_entitlement_order_ids(self, cid, *, correlation_id, budget=None):
        self._enter("entitlements", cid)
        c = self._customer(cid)
        return list(c.entitlement_ids if c.entitlement_ids is not None else c.orders)

    def get_order(self, cid, oid, *, correlation_id, budget=None):
        self._enter("get_order", cid, oid)
        order = self._customer(cid).orders.get(oid)
        if order is None:
            raise NotFoundError(404, "20000", "Order Id not found", method="GET", path="/orders")
        if order.status == "pending" and order.pending_reads > 0:
            order.pending_reads -= 1
            if order.pending_reads == 0:
                order.status = "cancelled"
            return {"id": oid, "status": "pending"}
        return {"id": oid, "status": order.status}

    def cancel_order(self, cid, oid, *, correlation_id, budget=None):
        self._enter("cancel_order", cid, oid)
        order = self._customer(cid).orders[oid]
        if order.refuse:
            raise order.refuse
        if order.conflict:
            order.conflict = False
            raise ConflictError(409, "800060", "Your order is in progress.", method="PATCH", path="/orders")
        if order.second_cancel == "error" and order.status.lower() in ("pending", "cancelled"):
            raise RefusedError(400, "800061", "Order cannot be canceled", method="PATCH", path="/orders")
        if order.status != "pending":
            order.status = "pending" if order.pending_reads else "cancelled"
        return {"id": oid, "status": order.patch_answer or order.status}

    def delete_customer(self, cid, *, correlation_id, budget=None):
        self._enter("delete_customer", cid)
        c = self._customer(cid)
        if self.delete_refusals:
            self.delete_refusals -= 1
            raise RefusedError(
                400,
                "800000",
                "Customer relationship cannot be removed due to active Azure reserved "
                "instances.Please cancel the following orders: 0bed3bbca6c",
                method="DELETE",
                path="/v1/customers",
            )
        assert all(o.status.lower() == "cancelled" for o in c.orders.values()), "DELETE while an order is open"
        del self.customers[cid]
        if self.lose_delete_answer:
            self.lose_delete_answer = False
            raise ConnectionError("answer lost")

    def list_subscriptions(self, cid, *, correlation_id, budget=None):
        self._enter("list_subscriptions", cid)
        return [dict(s) for s in self._customer(cid).subscriptions]

    def _subscription(self, cid, sid):
        found = [s for s in self._customer(cid).subscriptions if s.get("id") == sid]
        if not found:
            raise NotFoundError(404, "2000", "Subscription not found", method="GET", path="/subscriptions")
        return found[0]

    def get_subscription(self, cid, sid, *, correlation_id, budget=None):
        self._enter("get_subscription", cid, sid)
        return dict(self._subscription(cid, sid))

    def patch_subscription(self, cid, sid, subscription, *, etag, correlation_id, budget=None):
        self._enter("patch_subscription", cid, sid)
        self._subscription(cid, sid)["status"] = subscription["status"]
        return {}

    def list_azure_entitlements(self, cid, plan_id, *, correlation_id, budget=None):
        self._enter("list_azure_entitlements", cid, plan_id)
        return list(self._subscription(cid, plan_id).get("_azure", []))

    def cancel_azure_entitlement(self, cid, plan_id, entitlement_id, *, correlation_id, budget=None):
        self._enter("cancel_azure_entitlement", cid, plan_id, entitlement_id)
        for item in self._subscription(cid, plan_id).get("_azure", []):
            if item["id"] == entitlement_id:
                item["status"] = "inactive"
        return {}

    def list_customers(self, *, correlation_id, budget=None, stop_after=None):
        """The rest of the port (the sweep's own tests list with their FakeListing)."""
        self._enter("list_customers")
        return [{"id": cid} for cid in self.customers]

    def count(self, name):
        return sum(1 for c in self.calls if c[0] == name)


class FakePublisher:
    def __init__(self):
        self.sent: list[tuple[str, bytes, int]] = []

    def send(self, queue, data, *, delay=0, time_to_live=-1):
        raw = data.encode() if isinstance(data, str) else bytes(data)
        self.sent.append((queue, raw, delay))
        return f"id-{len(self.sent)}"

    def on(self, queue):
        return [(raw, delay) for q, raw, delay in self.sent if q == queue]

    def json_on(self, queue):
        return [json.loads(raw) for raw, _ in self.on(queue)]


class FakeTable:
    """One table in memory, with etags and conditional writes as Azure Table Storage has them. ``fail`` names
    operations ("get", "query", "insert", "replace", "delete") that raise ``TableError``; ``fail_after`` makes a
    write fail after it is stored (the answer lost)."""

    def __init__(self, name="deletionrequests", fail=(), fail_after=()):
        self.name, self.fail, self.fail_after = name, set(fail), set(fail_after)
        self.rows: dict[tuple[str, str], dict] = {}
        self.calls: list[tuple[str, str, str]] = []
        self._version = 0

    def _etag(self):
        self._version += 1
        return f'W/"{self._version}"'

    def _check(self, op, pk, rk=""):
        self.calls.append((op, pk, rk))
        check_key(pk)
        if rk:
            check_key(rk)
        if op in self.fail:
            raise TableError(f"{op} failed (fake)")

    def seed(self, row):
        self.rows[(row["PartitionKey"], row["RowKey"])] = {**row, "etag": self._etag()}

    def get(self, partition, row_key):
        self._check("get", partition, row_key)
        row = self.rows.get((partition, row_key))
        return dict(row) if row is not None else None

    def query_by(self, name, value):
        self._check("query", value)
        return [dict(r) for _, r in sorted(self.rows.items()) if r.get(name) == value]

    def query_finished_before(self, moment):
        self.calls.append(("query", "finishedAt", moment))
        if "query" in self.fail:
            raise TableError("query failed (fake)")
        return [
            dict(r)
            for _, r in sorted(self.rows.items())
            if isinstance(r.get("finishedAt"), str) and r["finishedAt"] < moment
        ]

    def query_partition(self, partition):
        self._check("query", partition)
        return [dict(r) for (pk, _), r in sorted(self.rows.items()) if pk == partition]

    def insert(self, row):
        key = (row["PartitionKey"], row["RowKey"])
        self._check("insert", *key)
        if key in self.rows:
            raise TableConflictError("exists (fake)")
        self.rows[key] = {**row, "etag": self._etag()}
        if "insert" in self.fail_after:
            raise TableError("insert answer lost (fake)")
        return self.rows[key]["etag"]

    def replace(self, row, etag):
        key = (row["PartitionKey"], row["RowKey"])
        self._check("replace", *key)
        if key not in self.rows or self.rows[key]["etag"] != etag:
            raise TableConflictError("changed (fake)")
        self.rows[key] = {**row, "etag": self._etag()}
        if "replace" in self.fail_after:
            raise TableError("replace answer lost (fake)")
        return self.rows[key]["etag"]

    def delete(self, partition, row_key, etag):
        key = (partition, row_key)
        self._check("delete", *key)
        if key in self.rows:
            if self.rows[key]["etag"] != etag:
                raise TableConflictError("changed (fake)")
            del self.rows[key]
        if "delete" in self.fail_after:
            raise TableError("delete answer lost (fake)")

    def partition(self, partition):
        return {rk: r for (pk, rk), r in self.rows.items() if pk == partition}


class Clock:
    def __init__(self, start=datetime(2026, 11, 24, 12, 0, tzinfo=UTC)):
        self.now = start
        self.start = start

    def __call__(self):
        return self.now

    def monotonic(self) -> float:
        return (self.now - self.start).total_seconds()

    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)


def queue_message(
    body: bytes | str,
    *,
    id="msg-1",  # noqa: A002 - QueueMessage's own name for it
    dequeue_count=1,
    inserted=None,
) -> QueueMessage:
    """A message as the worker builds it for a queue trigger."""
    inserted = inserted or datetime(2026, 11, 24, 11, 59, tzinfo=UTC)
    return QueueMessage(
        id=id,
        body=body,
        dequeue_count=dequeue_count,
        insertion_time=inserted,
        expiration_time=inserted + timedelta(days=7),
        time_next_visible=inserted + timedelta(minutes=10),
        pop_receipt="pr",
    )
