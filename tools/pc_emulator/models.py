"""The emulated integration sandbox: its state and its rules, typed, with no HTTP in them.

``Sandbox`` holds the customers with their orders and entitlements, the knobs, the faults, the tokens and the
request log, all guarded by one lock. Its rules (``cancel_order``, ``delete_customer``, ``page`` and the rest) raise
``ApiError`` (``exceptions.py``) for each documented refusal; ``responses.py`` renders what they return.

* An order's cancellation timing is in the state (``cancelRequestedAt``, ``readyAt``, ``cancelledAt``,
  ``cancellable``, see ``Order.state``), and deleted customers stay, as at their deletion, in ``deletedCustomers``.
* A customer's ``companyName`` and ``domain`` are any JSON string or null, shown exactly (hostile text included) by
  the list, the GET and the state. ``full_sandbox_customers`` makes a full, deterministic test sandbox.
"""

from __future__ import annotations

import copy
import random
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tools.pc_emulator.exceptions import ApiError, customer_not_found, invalid_input, order_not_found
from tools.pc_emulator.faults import Fault, RateLimiter
from tools.pc_emulator.identity import DEFAULT_STORAGE_IDENTITY, TokenSigner

GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

DEFAULT_KNOBS: dict[str, Any] = {
    "bom": True,  # a UTF-8 BOM before every JSON body
    "statusCase": "lower",  # lower | title | upper: casing of order statuses on the wire
    "rateLimitPerWindow": 500,  # requests per partner tenant per window (documented: 500/minute)
    "rateLimitWindowSeconds": 60,
    "entitlementsPageSize": 0,  # 0: one page; n: page through links.next + MS-ContinuationToken
    "customersMaxPageSize": 0,  # 0: pages of the size asked; n: at most n customers a page, whatever size asks
    "cancellationWindowDays": 60,  # orders older than this refuse PATCH (900117)
    "secondCancel": "idempotent",  # idempotent | error (800061) when an already cancelled order is cancelled again
    "deleteRefusalStatus": 400,  # HTTP status of the DELETE refusal while orders are active
    "tokenLifetimeSeconds": 3600,
    "randomSeed": 1,
}


def now_utc() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Order:
    """An order and its cancellation. After an accepted cancel PATCH it reads ``pending`` until it has been read more
    than ``cancel_after_reads`` times and ``cancel_after_seconds`` have passed, or forever with ``never_cancels``."""

    id: str
    alternate_id: str
    status: str  # completed | pending | cancelled
    creation_date: str
    age_days: float
    kind: str  # reservedInstance | software | license (refuses PATCH with 800063)
    cancel_after_reads: int
    cancel_after_seconds: float
    never_cancels: bool
    hidden: bool  # in no derived entitlement, yet it blocks DELETE until cancelled
    added_at: float
    cancel_requested_at: float | None = None
    ready_at: float | None = None
    cancelled_at: float | None = None
    reads_since_cancel: int = 0
    patches: int = 0

    @classmethod
    def from_seed(cls, o: dict[str, Any], now: float) -> Order:
        """An order from its seed knobs, added at unix time ``now``: ``id``; ``alternateId`` (default random);
        ``status`` (default ``completed``; ``cancelled`` counts as cancelled at ``now``); ``kind``
        (``reservedInstance``, ``software``, or ``license``, which refuses PATCH with 800063); ``ageDays`` (default
        1; older than the ``cancellationWindowDays`` knob refuses PATCH with 900117); ``cancelAfterReads``,
        ``cancelAfterSeconds``, ``neverCancels`` (see the class); ``hidden``: in no derived entitlement (like an
        Azure plan the app cannot see), yet it blocks DELETE until cancelled, and the order list and a read by id
        show it."""
        age = float(o.get("ageDays", 1))
        status = o.get("status", "completed")
        return cls(
            id=o["id"],
            alternate_id=o.get("alternateId") or secrets.token_hex(6),
            status=status,
            creation_date=iso(datetime.fromtimestamp(now, UTC) - timedelta(days=age)),
            age_days=age,
            kind=o.get("kind", "reservedInstance"),
            cancel_after_reads=int(o.get("cancelAfterReads", 0)),
            cancel_after_seconds=float(o.get("cancelAfterSeconds", 0)),
            never_cancels=bool(o.get("neverCancels", False)),
            hidden=bool(o.get("hidden", False)),
            added_at=now,
            ready_at=now if status == "cancelled" else None,
            cancelled_at=now if status == "cancelled" else None,
        )

    def advance(self, now: float) -> None:
        """A read: counts towards ``cancel_after_reads``, and a pending cancel completes when both limits are met."""
        if self.status != "pending" or self.cancel_requested_at is None or self.never_cancels:
            return
        self.reads_since_cancel += 1
        if (
            self.reads_since_cancel > self.cancel_after_reads
            and now - self.cancel_requested_at >= self.cancel_after_seconds
        ):
            self.status, self.cancelled_at = "cancelled", now

    def cancellable(self, window_days: float) -> bool:
        """A cancel PATCH can get it cancelled: not license, not past the cancellation window, not ``never_cancels``."""
        return self.kind != "license" and not self.never_cancels and self.age_days <= window_days

    def state(self, window_days: float) -> dict[str, Any]:
        """As the state shows it. Unix times: ``addedAt``; ``cancelRequestedAt``, of the first accepted cancel PATCH;
        ``readyAt``, the earliest a read can return cancelled (known when the order cancels by time alone, or was
        added cancelled); ``cancelledAt``, when its status became cancelled."""
        return {
            "status": self.status,
            "alternateId": self.alternate_id,
            "patches": self.patches,
            "kind": self.kind,
            "hidden": self.hidden,
            "addedAt": self.added_at,
            "cancelRequestedAt": self.cancel_requested_at,
            "readyAt": self.ready_at,
            "cancelledAt": self.cancelled_at,
            "cancellable": self.cancellable(window_days),
        }


@dataclass
class Customer:
    id: str  # lower case
    company_name: str | None
    domain: str | None
    orders: dict[str, Order] = field(default_factory=dict)
    entitlements: list[dict[str, Any]] = field(default_factory=list)  # as listed: seeded, or derived from orders

    def order(self, oid: str) -> Order:
        order = self.orders.get(oid)
        if order is None:
            raise order_not_found()
        return order

    def referenced_order_ids(self) -> set[str]:
        """The orders its entitlements name, nested ones included."""
        return {oid for entitlement in self.entitlements for oid in order_ids(entitlement)}


@dataclass
class Page:
    """One page of a collection: its items, the size asked (uncapped) and the continuation token of the next page
    (None: the last page)."""

    items: list[Any]
    size: int
    token: str | None


class Sandbox:
    """All emulator state, guarded by one lock (``lock``): the HTTP layer holds it around each rule it calls."""

    def __init__(self, seed: dict[str, Any]):
        self.lock = threading.RLock()
        self.seed = copy.deepcopy(seed)
        self.signer = TokenSigner()
        self.reset()

    def reset(self, seed: dict[str, Any] | None = None) -> None:
        with self.lock:
            if seed is not None:
                self.seed = copy.deepcopy(seed)
            s = self.seed
            self.partner: dict[str, Any] = dict(s.get("partner") or {})
            self.storage_identity: dict[str, Any] = dict(s.get("storageIdentity") or DEFAULT_STORAGE_IDENTITY)
            self.knobs: dict[str, Any] = dict(DEFAULT_KNOBS, **(s.get("knobs") or {}))
            self.random = random.Random(self.knobs["randomSeed"])
            self.faults = [Fault.from_json(f) for f in s.get("faults") or []]
            self.customers: dict[str, Customer] = {}
            self.deleted: dict[str, list[str]] = {}  # customer id -> times of accepted DELETEs
            self.deleted_customers: dict[str, dict[str, Any]] = {}  # customer id -> its state at its (last) deletion
            self.violations: list[dict[str, Any]] = []  # DELETEs received while an order was not cancelled
            self.tokens: dict[str, float] = {}  # Partner Center token -> expiry (unix time)
            self.log: list[dict[str, Any]] = []
            self.limiter = RateLimiter()
            self.continuations: dict[str, tuple[str, int, int]] = {}  # token -> (owner, first item, page size)
            for customer in s.get("customers") or []:
                self.add_customer(customer)

    # -- seeding ------------------------------------------------------------------------------------------------------

    @staticmethod
    def check_customer(data: Any) -> None:
        """ValueError unless ``data`` is a customer a seed may hold: an object with a GUID ``id``, ``companyName`` and
        ``domain`` absent, null or any string (shown exactly as given, however hostile), and ``orders`` a list of
        objects with a string ``id``."""
        if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not re.fullmatch(GUID, data["id"]):
            raise ValueError(f"a customer must be an object with a GUID id, not {str(data)[:200]!r}")
        for key in ("companyName", "domain"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ValueError(f"customer {data['id']}: {key} must be a string or null")
        orders = data.get("orders")
        if orders is not None and not (
            isinstance(orders, list) and all(isinstance(o, dict) and isinstance(o.get("id"), str) for o in orders)
        ):
            raise ValueError(f"customer {data['id']}: orders must be a list of objects with a string id")

    def add_customer(self, data: dict[str, Any]) -> None:
        """Add a customer (one of a seed's), replacing any with its id. ValueError (see ``check_customer``)."""
        self.check_customer(data)
        with self.lock:
            cid = data["id"].lower()
            now = time.time()
            orders = {o["id"]: Order.from_seed(o, now) for o in data.get("orders") or []}
            entitlements = data.get("entitlements")
            if entitlements is None:
                entitlements = derived_entitlements(orders)
            self.customers[cid] = Customer(
                id=cid,
                company_name=data.get("companyName", f"Test customer {cid[:8]}"),
                domain=data.get("domain", f"test{cid[:8]}.onmicrosoft.com"),
                orders=orders,
                entitlements=entitlements,
            )

    def add_customers(self, data: list[Any]) -> None:
        """Add them all, or none: every one is checked before any is added. ValueError."""
        for customer in data:
            self.check_customer(customer)
        for customer in data:
            self.add_customer(customer)

    def add_orders(self, cid: str, data: list[Any]) -> int:
        """New purchases of an existing customer: listed in its entitlements from now on, unless license or hidden.
        Returns the customer's order count. ValueError (nothing added) for a malformed or already existing order."""
        with self.lock:
            customer = self.customers[cid]
            if not all(isinstance(o, dict) and isinstance(o.get("id"), str) for o in data):
                raise ValueError("each order must be an object with a string id")
            taken = sorted({o["id"] for o in data} & set(customer.orders))
            if taken:
                raise ValueError(f"orders already exist: {taken}")
            now = time.time()
            orders = {o["id"]: Order.from_seed(o, now) for o in data}
            customer.orders.update(orders)
            customer.entitlements.extend(derived_entitlements(orders))
            return len(customer.orders)

    def set_knobs(self, data: dict[str, Any]) -> dict[str, Any]:
        """Change some knobs (ValueError for an unknown one, nothing changed). A new rate limit starts with a fresh
        window; a new ``randomSeed`` re-seeds the fault draws."""
        unknown = set(data) - set(DEFAULT_KNOBS)
        if unknown:
            raise ValueError(f"unknown knobs {sorted(unknown)}")
        self.knobs.update(data)
        if {"rateLimitPerWindow", "rateLimitWindowSeconds"} & set(data):
            self.limiter.clear()
        if "randomSeed" in data:
            self.random.seed(data["randomSeed"])
        return self.knobs

    # -- tokens -------------------------------------------------------------------------------------------------------

    def issue_token(self, lifetime: int) -> str:
        token = "emu-" + secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[token] = time.time() + lifetime
        return token

    def authorised(self, header: str) -> bool:
        """An ``Authorization`` header with a Partner Center token this sandbox issued and has not expired."""
        if not header.startswith("Bearer "):
            return False
        expiry = self.tokens.get(header[7:])
        return expiry is not None and expiry > time.time()

    def revoke_tokens(self) -> int:
        """Forget every Partner Center token, as after a secret rotation or an emulator restart: cached ones get 401."""
        revoked = len(self.tokens)
        self.tokens.clear()
        return revoked

    def admit(self) -> None:
        """The per-tenant rate limit (knobs ``rateLimitPerWindow`` and ``rateLimitWindowSeconds``): 429 when over."""
        with self.lock:
            self.limiter.admit(
                str(self.partner.get("tenantId")),
                int(self.knobs["rateLimitPerWindow"]),
                float(self.knobs["rateLimitWindowSeconds"]),
                time.time(),
            )

    # -- the API's rules ----------------------------------------------------------------------------------------------

    def customer(self, cid: str) -> Customer:
        customer = self.customers.get(cid.lower())
        if customer is None:
            raise customer_not_found()
        return customer

    def read_order(self, order: Order) -> Order:
        order.advance(time.time())
        return order

    def cancel_order(self, customer: Customer, order: Order, body: Any) -> Order:
        """The sandbox's cancel PATCH: ``body`` must ask for ``cancelled`` (any case) and name no other order."""
        if (
            not isinstance(body, dict)
            or str(body.get("status", "")).lower() != "cancelled"
            or body.get("id", order.id) != order.id
        ):
            raise ApiError(400, 3000, "Invalid property: status must be cancelled and id must match")
        order.patches += 1
        if order.kind == "license":
            raise ApiError(
                400,
                800063,
                f"This order {order.id} cannot be canceled. Use PATCH "
                f"/customers/{customer.id}/subscriptions/<subscriptionId> to suspend subscriptions",
            )
        window = float(self.knobs["cancellationWindowDays"])
        if order.age_days > window:
            raise ApiError(
                400,
                900117,
                f"You have passed your {int(window)}-day cancellation window. We are unable to cancel your purchase",
                "new",
            )
        if order.status == "cancelled":
            if self.knobs.get("secondCancel") == "error":
                raise ApiError(400, 800061, "Order cannot be canceled")
            return order
        if order.status != "pending" or order.cancel_requested_at is None:
            now = time.time()
            order.cancel_requested_at = now
            order.reads_since_cancel = 0
            by_time = not order.never_cancels and order.cancel_after_reads == 0
            order.ready_at = now + order.cancel_after_seconds if by_time else None
            if by_time and order.cancel_after_seconds == 0:
                order.status, order.cancelled_at = "cancelled", now
            else:
                order.status = "pending"
        return order

    def delete_customer(self, customer: Customer) -> None:
        """Refused (status: knob ``deleteRefusalStatus``, code 800000, the alternate ids quoted) while an order its
        entitlements name, or a hidden one, is not cancelled; the refusal is recorded as a violation."""
        referenced = customer.referenced_order_ids()
        active = [
            o for oid, o in customer.orders.items() if (oid in referenced or o.hidden) and o.status != "cancelled"
        ]
        if active:
            self.violations.append(
                {"customer": customer.id, "time": iso(now_utc()), "openOrders": [o.id for o in active]}
            )
            alternate = ",".join(o.alternate_id for o in active)
            raise ApiError(
                int(self.knobs["deleteRefusalStatus"]),
                800000,
                "Customer relationship cannot be removed due to active Azure reserved instances.Please cancel the "
                f"following orders: {alternate}",
            )
        self.deleted_customers[customer.id] = self.customer_state(customer)
        del self.customers[customer.id]
        self.deleted.setdefault(customer.id, []).append(iso(now_utc()))

    def entitlements(self, customer: Customer, wanted: str) -> list[dict[str, Any]]:
        """Its entitlements, only those of ``entitlementType`` ``wanted`` (any case; empty: all). ``reservedInstance``
        also matches the ``virtualMachineReservedInstance`` type."""
        if not wanted:
            return customer.entitlements
        wanted = wanted.lower()
        return [
            e
            for e in customer.entitlements
            if str(e.get("entitlementType", "")).lower() in (wanted, "virtualmachine" + wanted)
        ]

    def customer_page(self, size_text: str | None, next_page: bool, token: str | None) -> Page:
        """Customers by id, in pages: ``size`` (required on the first page, a positive integer) capped by the
        ``customersMaxPageSize`` knob; a later page without ``size`` keeps the size asked before."""
        if size_text is not None and not (re.fullmatch(r"[0-9]{1,18}", size_text) and int(size_text) > 0):
            raise invalid_input("size must be a positive integer")
        if size_text is None and not next_page:
            raise invalid_input("size is required")
        cap = int(self.knobs.get("customersMaxPageSize") or 0)
        size = None if size_text is None else int(size_text)
        return self.page(sorted(self.customers), size, "customers", token if next_page else None, next_page, cap)

    def entitlement_page(self, customer: Customer, wanted: str, next_page: bool, token: str | None) -> Page:
        """The entitlements, in pages of the ``entitlementsPageSize`` knob (0: one page)."""
        size = int(self.knobs.get("entitlementsPageSize") or 0)
        return self.page(self.entitlements(customer, wanted), size, customer.id, token, next_page)

    def page(
        self, items: list[Any], size: int | None, owner: str, token: str | None, next_page: bool, cap: int = 0
    ) -> Page:
        """One page of ``items``; ``size`` 0 means one page, and ``cap`` > 0 at most ``cap`` items whatever ``size``
        asks. A later page (``next_page``) needs the continuation token of the page before, which only pages
        ``owner``'s collection; there ``size`` None keeps the size asked before. ``invalid_input`` for a token that
        is not valid here (or a first page without a size)."""
        start = 0
        if next_page:
            if not token or self.continuations.get(token, ("", 0, 0))[0] != owner:
                raise invalid_input("continuation token")
            _, start, asked = self.continuations.pop(token)
            size = asked if size is None else size
        if size is None:
            raise invalid_input("continuation token")
        take = min(size, cap) if size and cap > 0 else size
        page = Page(items[start : start + take] if take else items[start:], size, None)
        if take and start + take < len(items):
            page.token = secrets.token_urlsafe(16)
            self.continuations[page.token] = (owner, start + take, size)
        return page

    def wire_status(self, status: str) -> str:
        """An order status as the ``statusCase`` knob spells it on the wire."""
        case = self.knobs.get("statusCase", "lower")
        return status.upper() if case == "upper" else status.title() if case == "title" else status.lower()

    # -- the state (admin) --------------------------------------------------------------------------------------------

    def customer_state(self, customer: Customer) -> dict[str, Any]:
        window = float(self.knobs["cancellationWindowDays"])
        return {
            "companyName": customer.company_name,
            "domain": customer.domain,
            "orders": {oid: o.state(window) for oid, o in customer.orders.items()},
        }

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "knobs": self.knobs,
                "faults": [f.to_json() for f in self.faults],
                "customers": {cid: self.customer_state(c) for cid, c in self.customers.items()},
                "deleted": self.deleted,
                "deletedCustomers": self.deleted_customers,
                "violations": self.violations,
                "requests": len(self.log),
            }


def derived_entitlements(orders: dict[str, Order]) -> list[dict[str, Any]]:
    """One entitlement per order, as Partner Center lists them; none for license orders and hidden ones."""
    return [
        {
            "referenceOrder": {"id": oid, "lineItemId": "0", "alternateId": o.alternate_id},
            "productId": "DZH318Z0BQ3W",
            "skuId": "007J",
            "quantity": 1,
            "entitlementType": "software" if o.kind == "software" else "reservedinstance",
            "includedEntitlements": [],
            "entitledArtifacts": [],
        }
        for oid, o in orders.items()
        if o.kind != "license" and not o.hidden
    ]


def order_ids(entitlement: dict[str, Any]) -> list[str]:
    """The orders an entitlement names, its included entitlements' too."""
    ids, stack = [], [entitlement]
    while stack:
        e = stack.pop()
        ref = e.get("referenceOrder") or {}
        if ref.get("id"):
            ids.append(ref["id"])
        stack.extend(e.get("includedEntitlements") or [])
    return ids


FULL_SANDBOX_PREFIX = "Tip test run"
FULL_SANDBOX_STEMS = (
    "Contoso",
    "Fabrikam",
    "Northwind Traders",
    "Tailspin Toys",
    "Wingtip Toys",
    "Litware",
    "Adventure Works",
    "Woodgrove Bank",
    "Proseware",
    "Alpine Ski House",
)
ORDER_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def full_sandbox_customers(
    count: int = 75, *, seed: int = 7, prefix: str = FULL_SANDBOX_PREFIX
) -> list[dict[str, Any]]:
    """``count`` seed customers of a busy integration sandbox, the same for the same arguments: random GUID ids from
    ``seed`` alone; company names ``"<prefix> 0001 – <stem>"`` (numbered from 1, stems of the usual sample companies,
    picked by ``seed``); matching lower-case default domains ``"<stem><prefix>0001.onmicrosoft.com"`` (letters and
    digits only, the label cut to 63 characters). About one in eight has an order or two (33 URL-safe characters,
    ``reservedInstance`` or ``software``, cancelling 1 to 3 s after the cancel PATCH). A different ``prefix`` gives
    other names and domains, a different ``seed`` other ids; a smaller ``count`` gives the first of a larger one."""
    rng = random.Random(seed)
    slug = re.sub(r"[^a-z0-9]", "", prefix.lower())
    customers = []
    for n in range(1, count + 1):
        cid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        stem = rng.choice(FULL_SANDBOX_STEMS)
        number = f"{n:04d}"
        label = (re.sub(r"[^a-z0-9]", "", stem.lower()) + slug)[: 63 - len(number)] + number
        orders = [
            {
                "id": "".join(rng.choice(ORDER_ID_CHARS) for _ in range(32)) + "1",
                "alternateId": f"{rng.getrandbits(48):012x}",
                "kind": rng.choice(("reservedInstance", "software")),
                "cancelAfterSeconds": rng.randint(1, 3),
            }
            for _ in range(rng.choice((1, 1, 2)) if rng.random() < 0.125 else 0)
        ]
        customers.append(
            {
                "id": cid,
                "companyName": f"{prefix} {number} – {stem}",
                "domain": f"{label}.onmicrosoft.com",
                "orders": orders,
            }
        )
    return customers
