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
    # Subscriptions (partner-center-subscriptions.md). Each behaviour nobody has confirmed is a switch.
    "deleteRefusalCode": 800000,  # the numeric code of the DELETE refusal (UNKNOWN: only its text was ever reported)
    # the subscription kinds that block the DELETE until final: an Azure plan was REPORTED, NCE is INFERRED, legacy
    # and SaaS are UNKNOWN (any of azurePlan, nce, saas, software, legacy, unknown)
    "deleteBlockedBy": ["azurePlan", "nce", "saas", "software", "legacy", "unknown"],
    "suspendedBlocks": [],  # kinds whose *suspended* subscription still blocks the DELETE (NCE in production: UNKNOWN)
    "subscriptionPatchAnswer": 200,  # 200 with the subscription, or 202 with Location and no body (both CONFIRMED)
    "subscriptionIfMatch": "optional",  # optional | required: If-Match with the etag (a stale one: 400 2055)
    "lateCancelCode": 900117,  # 900117 (day window) | 900213 (hour window): a cancel past its window (UNKNOWN which)
    "resuspend": "idempotent",  # idempotent | error (800091) when a suspended subscription is suspended again
    "azureCancelAnswer": 200,  # 200 (the entitlement still reads active) | 202 (no body): both documented
    "cancellationReasons": ["compromise"],  # what an Azure entitlement cancel accepts; others: 400 900307
    "subscriptionsPageSize": 0,  # 0: one page (no paging is documented); n: pages through links.next
    "addOnCascade": ["legacy"],  # kinds whose suspension or cancel takes their add-ons along (legacy: CONFIRMED)
}

#: Subscription statuses after which nothing is left to clear (issue 16); any other status still blocks.
FINAL_SUBSCRIPTION_STATUSES = frozenset({"suspended", "deleted", "expired", "disabled"})
SUBSCRIPTION_KINDS = ("azurePlan", "nce", "saas", "software", "legacy", "unknown")


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


#: What each kind of subscription looks like on the wire, from the documented examples (subscription-resources.md,
#: get-a-subscription-by-id.md, create-azure-plan.md). ``etag``: whether its ``attributes`` carry one by default (the
#: NCE examples carry none). SaaS: ``isMicrosoftProduct`` false; its product type is an assumption (INFERRED).
KIND_FIELDS: dict[str, dict[str, Any]] = {
    "azurePlan": {
        "offerId": "DZH318Z0BPS6:0001:DZH318Z0BML6",
        "offerName": "Azure plan",
        "productType": {"id": "Azure", "displayName": "Azure"},
        "billingType": "usage",
        "isMicrosoftProduct": True,
        "etag": True,
    },
    "nce": {
        "offerId": "CFQ7TTC0LH18:0001:CFQ7TTC0K971",
        "offerName": "Microsoft 365 Business Basic",
        "productType": {"id": "OnlineServicesNCE", "displayName": "OnlineServicesNCE"},
        "billingType": "license",
        "isMicrosoftProduct": True,
        "etag": False,
    },
    "saas": {
        "offerId": "contoso-saas:monthly-plan:0001",
        "offerName": "Contoso SaaS (marketplace)",
        "productType": {"id": "OnlineServicesNCE", "displayName": "OnlineServicesNCE"},
        "billingType": "license",
        "isMicrosoftProduct": False,
        "publisherName": "Contoso ISV",
        "etag": False,
    },
    "software": {
        "offerId": "DG7GMGF0FKZV:0001:DG7GMGF0DWMS",
        "offerName": "Windows Server 2022 Standard - 16 Core License Pack",
        "productType": {"id": "Software", "displayName": "Software"},
        "billingType": "license",
        "isMicrosoftProduct": True,
        "etag": True,
    },
    "legacy": {
        "offerId": "031C9E47-4802-4248-838E-778FB1D2CC05",
        "offerName": "Office 365 Business Essentials",
        "productType": {"id": "OnlineServices", "displayName": "OnlineServices"},
        "billingType": "license",
        "isMicrosoftProduct": True,
        "etag": True,
    },
    "unknown": {
        "offerId": "XYZ000000001:0001:XYZ000000002",
        "offerName": "A product of a kind nobody documented",
        "productType": {"id": "SomethingNew", "displayName": "SomethingNew"},
        "billingType": "license",
        "isMicrosoftProduct": True,
        "etag": False,
    },
}


@dataclass
class Delayed:
    """A change asked for at ``requested_at`` that reads as done only after more than ``after_reads`` reads and
    ``after_seconds`` seconds (both 0: at once), or never with ``never``."""

    target: str
    requested_at: float
    after_reads: int = 0
    after_seconds: float = 0.0
    never: bool = False
    reads: int = 0

    def due(self, now: float) -> bool:
        """Counts a read; True once the change shows."""
        if self.never:
            return False
        self.reads += 1
        return self.reads > self.after_reads and now - self.requested_at >= self.after_seconds


@dataclass
class AzureEntitlement:
    """An Azure subscription under an Azure plan (``azureEntitlements``): ``active`` until a cancel, then
    ``inactive`` after ``inactive_after_reads`` reads and ``inactive_after_seconds`` (the docs say about 10
    minutes)."""

    id: str
    friendly_name: str
    status: str
    inactive_after_reads: int = 0
    inactive_after_seconds: float = 0.0
    never_cancels: bool = False
    cancels: int = 0
    cancel_requested_at: float | None = None
    inactive_at: float | None = None
    pending: Delayed | None = None

    def advance(self, now: float) -> None:
        if self.pending is not None and self.pending.due(now):
            self.status, self.inactive_at, self.pending = "inactive", now, None

    def state(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "cancels": self.cancels,
            "cancelRequestedAt": self.cancel_requested_at,
            "inactiveAt": self.inactive_at,
        }


@dataclass
class Subscription:
    """A subscription of one of ``SUBSCRIPTION_KINDS``, with the documented fields of its kind (``KIND_FIELDS``,
    overridable from the seed) and the behaviour knobs of its PATCH."""

    id: str
    kind: str
    status: str
    fields: dict[str, Any]  # the documented fields as read (offerId, productType, orderId, autoRenewEnabled, ...)
    etag: str | None
    created_at: float
    cancel_until: float | None  # cancellationAllowedUntilDate (NCE, SaaS, software), unix time; None: no window
    change_after_reads: int = 0
    change_after_seconds: float = 0.0
    never_changes: bool = False  # an accepted PATCH never shows (a blocker the app cannot clear)
    not_ready_patches: int = 0  # the next n PATCHes get 409 800082
    stale_etag_patches: int = 0  # the next n PATCHes find it changed by someone else: a new etag, and 400 2055
    pending_operation: bool = False  # every PATCH gets 409 900278 (retry after 24 hours)
    patch_answer: int | None = None  # 200 or 202 for this one; None: the knob subscriptionPatchAnswer
    entitlements: dict[str, AzureEntitlement] = field(default_factory=dict)  # an Azure plan's Azure subscriptions
    pending: Delayed | None = None
    patches: int = 0
    auto_renew_dropped: bool = False  # a PATCH left autoRenewEnabled out, so it became false (the documented trap)
    changed_at: float | None = None

    @classmethod
    def from_seed(cls, s: dict[str, Any], now: float) -> Subscription:
        """``_from_seed``, with every malformed field a ValueError (a seed is checked before anything is added)."""
        try:
            return cls._from_seed(s, now)
        except (KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise ValueError(f"malformed subscription {str(s)[:120]!r}: {type(exc).__name__} {exc}") from None

    @classmethod
    def _from_seed(cls, s: dict[str, Any], now: float) -> Subscription:
        """From a seed: ``id`` (a GUID), ``kind`` (default ``nce``), ``status`` (default ``active``), ``orderId``,
        ``parentSubscriptionId``, ``autoRenewEnabled`` (default true), ``windowHours`` (hours left of the
        cancellation window, negative: passed; default 168 for NCE and software, 24 for SaaS; none for the others),
        ``etag`` (true/false: the kind's default), ``changeAfterReads``, ``changeAfterSeconds``, ``neverChanges``,
        ``notReadyPatches``, ``staleEtagPatches``, ``pendingOperation``,
        ``patchAnswer`` (200/202), ``azureEntitlements`` (an Azure plan's:
        ``id``, ``status``, ``inactiveAfterReads``, ``inactiveAfterSeconds``, ``neverCancels``), and any documented
        field to override (``offerId``, ``productType``, ``isMicrosoftProduct``, ...)."""
        kind = s.get("kind", "nce")
        if kind not in SUBSCRIPTION_KINDS:
            raise ValueError(f"subscription kind must be one of {SUBSCRIPTION_KINDS}, not {kind!r}")
        if not isinstance(s.get("id"), str) or not re.fullmatch(GUID, s["id"]):
            raise ValueError(f"a subscription must have a GUID id, not {s.get('id')!r}")
        defaults = dict(KIND_FIELDS[kind])
        has_etag = bool(s.get("etag", defaults.pop("etag")))
        window = s.get("windowHours", {"nce": 168, "software": 168, "saas": 24}.get(kind))
        if window is not None and (
            isinstance(window, bool) or not isinstance(window, (int, float)) or not -87600 <= window <= 87600
        ):
            raise ValueError(f"subscription {s['id']}: windowHours must be a number of hours within 10 years")
        cancel_until = None if window is None else now + float(window) * 3600
        documented = {
            k: v
            for k, v in s.items()
            if k
            not in {
                "id",
                "kind",
                "status",
                "etag",
                "windowHours",
                "changeAfterReads",
                "changeAfterSeconds",
                "neverChanges",
                "notReadyPatches",
                "staleEtagPatches",
                "pendingOperation",
                "patchAnswer",
                "azureEntitlements",
            }
        }
        fields = {
            **defaults,
            "friendlyName": defaults["offerName"],
            "quantity": 1,
            "unitType": "Licenses" if kind != "azurePlan" else "none",
            "autoRenewEnabled": True,
            "termDuration": "P1M" if kind != "azurePlan" else None,
            # legacy orders have GUID ids; new commerce and SaaS orders 12 hex characters (reference section 3.1)
            "orderId": str(uuid.uuid4()) if kind == "legacy" else secrets.token_hex(6),
            "parentSubscriptionId": None,
            **documented,
        }
        for e in s.get("azureEntitlements") or []:
            if not isinstance(e, dict) or not isinstance(e.get("id"), str) or not re.fullmatch(GUID, e["id"]):
                raise ValueError(f"subscription {s['id']}: each Azure entitlement needs a GUID id, not {e!r}")
        entitlements = {
            e["id"].lower(): AzureEntitlement(
                id=e["id"].lower(),
                friendly_name=e.get("friendlyName", "Microsoft Azure"),
                status=e.get("status", "active"),
                inactive_after_reads=int(e.get("inactiveAfterReads", 0)),
                inactive_after_seconds=float(e.get("inactiveAfterSeconds", 0)),
                never_cancels=bool(e.get("neverCancels", False)),
            )
            for e in s.get("azureEntitlements") or []
        }
        if entitlements and kind != "azurePlan":
            raise ValueError(f"subscription {s['id']}: only an Azure plan has azureEntitlements")
        answer = s.get("patchAnswer")
        if answer not in (None, 200, 202):
            raise ValueError(f"subscription {s['id']}: patchAnswer must be 200 or 202")
        return cls(
            id=s["id"].lower(),
            kind=kind,
            status=str(s.get("status", "active")),
            fields=fields,
            etag=secrets.token_hex(8) if has_etag else None,
            created_at=now,
            cancel_until=cancel_until,
            change_after_reads=int(s.get("changeAfterReads", 0)),
            change_after_seconds=float(s.get("changeAfterSeconds", 0)),
            never_changes=bool(s.get("neverChanges", False)),
            not_ready_patches=int(s.get("notReadyPatches", 0)),
            stale_etag_patches=int(s.get("staleEtagPatches", 0)),
            pending_operation=bool(s.get("pendingOperation", False)),
            patch_answer=answer,
            entitlements=entitlements,
        )

    @property
    def final(self) -> bool:
        return self.status in FINAL_SUBSCRIPTION_STATUSES

    def advance(self, now: float) -> None:
        """A read: an accepted change shows once its delay has passed."""
        if self.pending is not None and self.pending.due(now):
            self.status, self.changed_at, self.pending = self.pending.target, now, None
            self.new_etag()

    def reads_pending(self) -> int:
        """Reads a pending change has counted so far (0: none pending, or none read)."""
        return 0 if self.pending is None else self.pending.reads

    def new_etag(self) -> None:
        if self.etag is not None:
            self.etag = secrets.token_hex(8)

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "status": self.status,
            "pendingStatus": None if self.pending is None else self.pending.target,
            "patches": self.patches,
            "autoRenewEnabled": self.fields.get("autoRenewEnabled"),
            "autoRenewDropped": self.auto_renew_dropped,
            "orderId": self.fields.get("orderId"),
            "parentSubscriptionId": self.fields.get("parentSubscriptionId"),
            "etag": self.etag,
            "cancellationAllowedUntil": self.cancel_until,
            "changedAt": self.changed_at,
            "azureEntitlements": {eid: e.state() for eid, e in self.entitlements.items()},
        }


@dataclass
class Customer:
    id: str  # lower case
    company_name: str | None
    domain: str | None
    orders: dict[str, Order] = field(default_factory=dict)
    entitlements: list[dict[str, Any]] = field(default_factory=list)  # as listed: seeded, or derived from orders
    subscriptions: dict[str, Subscription] = field(default_factory=dict)

    def order(self, oid: str) -> Order:
        order = self.orders.get(oid)
        if order is None:
            raise order_not_found()
        return order

    def subscription(self, sid: str) -> Subscription:
        subscription = self.subscriptions.get(sid.lower())
        if subscription is None:
            raise ApiError(404, 20003, f"Subscription with ID {sid} not found")
        return subscription

    def azure_entitlement(self, subscription: Subscription, eid: str) -> AzureEntitlement:
        entitlement = subscription.entitlements.get(eid.lower())
        if entitlement is None:
            raise ApiError(404, 800111, "Entitlement not found")
        return entitlement

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
            check_knobs(s.get("knobs") or {})
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
        subscriptions = data.get("subscriptions")
        if subscriptions is not None and not (
            isinstance(subscriptions, list) and all(isinstance(s, dict) for s in subscriptions)
        ):
            raise ValueError(f"customer {data['id']}: subscriptions must be a list of objects")
        ids = [Subscription.from_seed(s, 0.0).id for s in subscriptions or []]  # every field checked first
        if len(set(ids)) < len(ids):
            raise ValueError(f"customer {data['id']}: a subscription id is given twice")

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
            subscriptions = [Subscription.from_seed(s, now) for s in data.get("subscriptions") or []]
            self.customers[cid] = Customer(
                id=cid,
                company_name=data.get("companyName", f"Test customer {cid[:8]}"),
                domain=data.get("domain", f"test{cid[:8]}.onmicrosoft.com"),
                orders=orders,
                entitlements=entitlements,
                subscriptions={s.id: s for s in subscriptions},
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

    def add_subscriptions(self, cid: str, data: list[Any]) -> int:
        """New subscriptions of an existing customer (a purchase during a deletion). Returns its subscription count.
        ValueError (nothing added) for a malformed or already existing one."""
        with self.lock:
            customer = self.customers[cid]
            if not all(isinstance(s, dict) for s in data):
                raise ValueError("each subscription must be an object")
            now = time.time()
            made = [Subscription.from_seed(s, now) for s in data]
            taken = sorted({s.id for s in made} & set(customer.subscriptions))
            if taken or len({s.id for s in made}) < len(made):
                raise ValueError(f"subscriptions already exist: {taken}")
            customer.subscriptions.update((s.id, s) for s in made)
            return len(customer.subscriptions)

    def set_knobs(self, data: dict[str, Any]) -> dict[str, Any]:
        """Change some knobs (ValueError for an unknown one, nothing changed). A new rate limit starts with a fresh
        window; a new ``randomSeed`` re-seeds the fault draws."""
        unknown = set(data) - set(DEFAULT_KNOBS)
        if unknown:
            raise ValueError(f"unknown knobs {sorted(unknown)}")
        check_knobs(data)
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

    def blocking_subscriptions(self, customer: Customer) -> list[Subscription]:
        """The subscriptions that hold the DELETE: of a kind in the knob ``deleteBlockedBy`` and not final, or
        suspended and of a kind in ``suspendedBlocks``; an Azure plan also while an Azure subscription under it is
        active."""
        blocked_by, suspended_blocks = set(self.knobs["deleteBlockedBy"]), set(self.knobs["suspendedBlocks"])
        return [
            s
            for s in customer.subscriptions.values()
            if s.kind in blocked_by
            and (
                not s.final
                or (s.status == "suspended" and s.kind in suspended_blocks)
                or any(e.status == "active" for e in s.entitlements.values())
            )
        ]

    def delete_customer(self, customer: Customer) -> None:
        """Refused (status: knob ``deleteRefusalStatus``, code: ``deleteRefusalCode``, Partner Center's wording with
        the blockers' alternate or order ids quoted) while an order its entitlements name, or a hidden one, is not
        cancelled, or a subscription blocks (``blocking_subscriptions``); the refusal is recorded as a violation."""
        referenced = customer.referenced_order_ids()
        active = [
            o for oid, o in customer.orders.items() if (oid in referenced or o.hidden) and o.status != "cancelled"
        ]
        blocking = self.blocking_subscriptions(customer)
        open_subscriptions = [
            s
            for s in customer.subscriptions.values()
            if not s.final or any(e.status == "active" for e in s.entitlements.values())
        ]
        if open_subscriptions and not active and not blocking:
            # Accepted under the switches, but sent while a subscription was active: the state records it, so a test
            # can check "no DELETE while a subscription or an Azure entitlement is active" under every switch.
            self.violations.append(
                {
                    "customer": customer.id,
                    "time": iso(now_utc()),
                    "openOrders": [],
                    "openSubscriptions": [s.id for s in open_subscriptions],
                    "accepted": True,
                }
            )
        if active or blocking:
            violation: dict[str, Any] = {
                "customer": customer.id,
                "time": iso(now_utc()),
                "openOrders": [o.id for o in active],
            }
            if blocking:
                violation["openSubscriptions"] = [s.id for s in blocking]
            self.violations.append(violation)
            quoted = ",".join([o.alternate_id for o in active] + [str(s.fields.get("orderId")) for s in blocking])
            raise ApiError(
                int(self.knobs["deleteRefusalStatus"]),
                self.knobs.get("deleteRefusalCode", 800000),
                "Customer relationship cannot be removed due to active Azure reserved instances.Please cancel the "
                f"following orders: {quoted}",
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

    # -- subscriptions ------------------------------------------------------------------------------------------------

    def read_subscription(self, subscription: Subscription, customer: Customer | None = None) -> Subscription:
        subscription.advance(time.time())
        if customer is not None:
            self.cascade(customer)
        return subscription

    def cascade(self, customer: Customer) -> None:
        """A suspended legacy subscription suspends its add-ons (reference section 3.4, CONFIRMED); whether a new
        commerce base takes its add-ons along is UNKNOWN, so it is the knob ``addOnCascade`` (the kinds that do)."""
        kinds = set(self.knobs.get("addOnCascade") or [])
        for addon in customer.subscriptions.values():
            parent = customer.subscriptions.get(str(addon.fields.get("parentSubscriptionId") or "").lower())
            if parent is not None and parent.kind in kinds and parent.final and not addon.final:
                addon.status, addon.changed_at, addon.pending = parent.status, time.time(), None
                addon.new_etag()

    def subscription_page(self, customer: Customer, next_page: bool, token: str | None) -> Page:
        """The subscriptions, each read (so pending changes show when due), in pages of the knob
        ``subscriptionsPageSize`` (0: one page, as documented)."""
        size = int(self.knobs.get("subscriptionsPageSize") or 0)
        page = self.page(list(customer.subscriptions.values()), size, customer.id + "/subscriptions", token, next_page)
        for subscription in page.items:  # only what this page shows counts as read
            self.read_subscription(subscription, customer)
        return page

    def patch_subscription(
        self, customer: Customer, subscription: Subscription, body: Any, if_match: str | None
    ) -> tuple[Subscription, int]:
        """A subscription PATCH (reference section 3.2): the full object with ``status`` changed. Returns the
        subscription and the answer's status, 200 or 202 (knob ``subscriptionPatchAnswer``, or the subscription's
        own). An accepted change shows only after the subscription's delay. ``autoRenewEnabled`` left out of the
        body becomes false, as the docs warn."""
        if not isinstance(body, dict):
            raise invalid_input("the body must be a subscription")
        status = body.get("status", body.get("Status"))
        if not isinstance(status, str) or status.lower() not in ("active", "suspended", "deleted"):
            raise ApiError(400, 3000, "Invalid property: status must be active, suspended or deleted")
        if str(body.get("id", subscription.id)).lower() != subscription.id:
            raise ApiError(400, 3000, "Invalid property: id must match the subscription")
        target = status.lower()
        subscription.patches += 1
        if subscription.status == "deleted":
            raise ApiError(400, 2011, "Subscription with deleted status can't be updated")
        if subscription.etag is not None and subscription.stale_etag_patches > 0:
            subscription.stale_etag_patches -= 1  # changed by someone else since the caller read it
            subscription.new_etag()
        if subscription.etag is not None:
            given = None if if_match is None else if_match.strip().strip('"')
            if given is None and self.knobs.get("subscriptionIfMatch") == "required":
                raise ApiError(400, 2055, "Etag is no longer valid")
            if given is not None and given != subscription.etag:
                raise ApiError(400, 2055, "Etag is no longer valid")
        if subscription.pending_operation:
            raise ApiError(
                409, 900278, "There is a pending operation on this subscription. Please retry after 24 hours"
            )
        if subscription.not_ready_patches > 0:
            subscription.not_ready_patches -= 1
            raise ApiError(409, 800082, "Subscription is not ready to be updated. Try again after sometime")
        if subscription.pending is not None:  # a change is still being made (reference: 800082)
            raise ApiError(409, 800082, "Subscription is not ready to be updated. Try again after sometime")
        if subscription.status in ("expired", "disabled"):
            raise ApiError(400, 800096, "Cannot update the status for this subscription")
        now = time.time()
        shown = subscription.status
        if target == "suspended" and shown == "suspended" and self.knobs.get("resuspend") == "error":
            raise ApiError(400, 800091, "Cannot update a subscription with suspended status")
        if target == "deleted":
            if subscription.kind not in ("nce", "saas"):
                raise ApiError(400, 800096, "Cannot update the status for this subscription")
            if subscription.cancel_until is not None and now > subscription.cancel_until:
                code = int(self.knobs.get("lateCancelCode") or 900117)
                hours = 24 if subscription.kind == "saas" else 168
                window = f"{hours}-hour" if code == 900213 else f"{hours // 24}-day"
                raise ApiError(
                    400,
                    code,
                    f"You have passed your {window} cancellation window. We are unable to cancel your purchase",
                )
        if target == "suspended" and subscription.kind == "azurePlan":
            under = [e.id for e in subscription.entitlements.values() if e.status == "active"]
            reservations = [
                o.id for o in customer.orders.values() if o.kind == "reservedInstance" and o.status != "cancelled"
            ]
            saas = [s.id for s in customer.subscriptions.values() if s.kind == "saas" and not s.final]
            if under or reservations or saas:
                raise ApiError(
                    403,
                    900115,
                    "Azure plan can't be suspended while an Azure subscription or reservation under it is active",
                )
        renew = next((k for k in body if isinstance(k, str) and k.lower() == "autorenewenabled"), None)
        if renew is not None:
            subscription.fields["autoRenewEnabled"] = bool(body[renew])
        else:
            subscription.fields["autoRenewEnabled"], subscription.auto_renew_dropped = False, True
        if target != shown:
            at_once = subscription.change_after_reads == 0 and subscription.change_after_seconds == 0
            if at_once and not subscription.never_changes:
                subscription.status, subscription.changed_at, subscription.pending = target, now, None
            else:
                subscription.pending = Delayed(
                    target,
                    now,
                    subscription.change_after_reads,
                    subscription.change_after_seconds,
                    subscription.never_changes,
                )
        subscription.new_etag()
        self.cascade(customer)
        answer = subscription.patch_answer or int(self.knobs.get("subscriptionPatchAnswer") or 200)
        return subscription, answer

    def read_azure_entitlement(self, plan: Subscription, entitlement: AzureEntitlement) -> AzureEntitlement:
        if plan.kind != "azurePlan":
            raise invalid_input("not an Azure plan")
        entitlement.advance(time.time())
        return entitlement

    def azure_entitlements(self, plan: Subscription) -> list[AzureEntitlement]:
        """The Azure subscriptions under a plan, each read (a pending cancel shows when due)."""
        if plan.kind != "azurePlan":
            raise invalid_input("not an Azure plan")
        now = time.time()
        for entitlement in plan.entitlements.values():
            entitlement.advance(now)
        return list(plan.entitlements.values())

    def cancel_azure_entitlement(self, entitlement: AzureEntitlement, body: Any) -> tuple[AzureEntitlement, int]:
        """Cancel an Azure subscription under a plan: it reads ``inactive`` after its delay (about 10 minutes in
        Azure). Answers 200 (it still reads active) or 202 (knob ``azureCancelAnswer``)."""
        reason = body.get("cancellationReason") if isinstance(body, dict) else None
        if not isinstance(reason, str):
            raise invalid_input("cancellationReason is required")
        if reason not in self.knobs.get("cancellationReasons", ["compromise"]):
            raise ApiError(400, 900307, f"Cancellation reason '{reason} is invalid")
        entitlement.cancels += 1
        if entitlement.status == "active" and entitlement.pending is None:
            now = time.time()
            entitlement.cancel_requested_at = now
            entitlement.pending = Delayed(
                "inactive",
                now,
                entitlement.inactive_after_reads,
                entitlement.inactive_after_seconds,
                entitlement.never_cancels,
            )
        return entitlement, int(self.knobs.get("azureCancelAnswer") or 200)

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
            "subscriptions": {sid: s.state() for sid, s in customer.subscriptions.items()},
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


#: The values a switch may take (the other knobs are numbers or free).
KNOB_CHOICES: dict[str, tuple[Any, ...]] = {
    "subscriptionPatchAnswer": (200, 202),
    "subscriptionIfMatch": ("optional", "required"),
    "lateCancelCode": (900117, 900213),
    "resuspend": ("idempotent", "error"),
    "azureCancelAnswer": (200, 202),
}


def check_knobs(data: dict[str, Any]) -> None:
    """ValueError for a subscription switch set to a value it does not have, or a kind list naming an unknown kind.
    The older knobs are taken as before (an unknown ``statusCase`` still means lower case)."""
    for name, choices in KNOB_CHOICES.items():
        if name in data and data[name] not in choices:
            raise ValueError(f"knob {name} takes one of {list(choices)}, not {data[name]!r}")
    for name in ("subscriptionsPageSize",):
        value = data.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
            raise ValueError(f"knob {name} takes a whole number 0..1000, not {value!r}")
    reasons = data.get("cancellationReasons", ["compromise"])
    if not (isinstance(reasons, list) and all(isinstance(r, str) for r in reasons)):
        raise ValueError(f"knob cancellationReasons takes a list of strings, not {reasons!r}")
    for name in ("deleteBlockedBy", "suspendedBlocks", "addOnCascade"):
        if name in data and not (
            isinstance(data[name], list) and all(kind in SUBSCRIPTION_KINDS for kind in data[name])
        ):
            raise ValueError(f"knob {name} takes a list of {list(SUBSCRIPTION_KINDS)}, not {data[name]!r}")


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
