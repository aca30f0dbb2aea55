"""The core's vocabulary: what a hop is, what it can ask for, and what it is told (no decisions, no I/O).

``shared.workflow`` decides; ``shared.service`` executes. Both speak in these types:

* **commands**: the calls a hop may make (``GetCustomer`` ... ``CancelAzureEntitlement``), and how it ends:
  ``Continue`` (the next poll message), ``Finish`` (the one outcome), ``Retry`` (its own message again);
* **observations**: what became of a call, ``Answer`` (a 2xx) or ``Failure`` (its ``FailureKind``);
* **the hop**: ``Hop``, one invocation's state, and ``Policy``, the settings it decides with;
* **statuses**: what "cancelled" and "needs a cancel" mean for an order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum
from typing import Any

from shared.messages import OrderState, PollMessage, SubscriptionState
from shared.subscriptions import Subscription

__all__ = [
    "CANCELLED",
    "CANCELLING",
    "Answer",
    "Call",
    "CancelAzureEntitlement",
    "CancelOrder",
    "Cause",
    "Command",
    "Continue",
    "DeleteCustomer",
    "Entry",
    "Failure",
    "FailureKind",
    "Finish",
    "GetCustomer",
    "GetOrder",
    "GetSubscription",
    "Hop",
    "ListAzureEntitlements",
    "ListEntitlements",
    "ListSubscriptions",
    "Mode",
    "Observation",
    "Outcome",
    "PatchSubscription",
    "Poison",
    "Policy",
    "Retry",
    "is_cancelled",
    "needs_cancel",
    "normalise_status",
]


CANCELLED = "cancelled"
#: Statuses that mean "the cancellation is under way": wait for it, do not PATCH again.
CANCELLING = frozenset({"pending"})


class Outcome(StrEnum):
    DELETED = "deleted"
    NOT_FOUND = "not_found"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    FAILED = "failed"
    DRY_RUN = "dry_run"


class Cause(StrEnum):
    """Why the last hop did not finish the request; named by ``timed_out``."""

    OPEN = "open"  # orders still open
    THROTTLED = "throttled"
    OUTAGE = "outage"  # 5xx, timeouts, dropped connections, the token endpoint, a refused credential
    DELETE_REFUSED = "delete_refused"  # every order read cancelled, but Partner Center refused the DELETE
    OUT_OF_TIME = "out_of_time"  # the hop used up its work budget
    RECOVERY = "recovery"  # an invocation died; a redelivery handed the request over


class Poison(Enum):
    NONE = "none"
    ORIGINAL = "original"  # the request message's own text, to <DELETE_CUSTOMER_QUEUE>-poison
    EQUIVALENT = (
        "equivalent"  # an equivalent request (same correlation id and dryRun), to <DELETE_CUSTOMER_QUEUE>-poison
    )
    POLL_ORIGINAL = (
        "poll_original"  # a poll message nothing could be read from, as it was, to <POLL_ORDERS_QUEUE>-poison
    )


class Entry(Enum):
    REQUEST = "request"  # delete_customer, the request's first delivery: the request's own first look
    POLL = "poll"  # poll_orders
    UNREADABLE = "unreadable"  # poll_orders, a poll message it cannot trust: one look at the customer, then the end


class Mode(Enum):
    NORMAL = "normal"  # before the cut-off: cancel, poll, confirm, DELETE
    FINAL = "final"  # from D: classify from fresh reads, write nothing; from H on, one look, then the end


class FailureKind(Enum):
    THROTTLED = "throttled"  # 429 whose Retry-After outlasted the in-process waits
    TRANSIENT = "transient"  # 408, 5xx, connection failures, timeouts, token endpoint: outlasted the retries
    AUTH = "auth"  # 401 after a fresh credential
    NOT_FOUND = "not_found"  # 404
    CONFLICT = "conflict"  # 409
    REFUSED = "refused"  # any other 4xx: Partner Center's considered refusal
    UNSAFE = "unsafe"  # a value was not the documented shape: nothing was sent
    OUT_OF_TIME = "out_of_time"  # the invocation's work time ran out inside a logical call (a further page, a renewal)
    STORAGE = "storage"  # the request ledger could not be claimed (or the claim was lost): the call was not made


@dataclass(frozen=True)
class Policy:
    """The settings the core decides with (built from ``shared.config.Settings`` by the service)."""

    interval: int  # POLL_INTERVAL_SECONDS
    max_interval: int  # POLL_MAX_INTERVAL_SECONDS
    timeout: int  # POLL_TIMEOUT_SECONDS
    protected: frozenset[str] = frozenset()
    hop_work: float = 10.0  # no call starts after this many seconds of an invocation
    pickup: float = 10.0  # the host's maxPollingInterval: how late a due message may be picked up
    settle: float = 150.0  # CLAIM_SECONDS (the service sets it): how long a decided DELETE can take to land
    call_time: float = 35.0  # the longest one call can take (connect + read timeout)
    retry_after_max: int = 900
    delete_refusal_timeout: float = 1800.0  # DELETE_REFUSAL_TIMEOUT_SECONDS
    clear_subscriptions: bool = True  # CLEAR_SUBSCRIPTIONS

    @property
    def final_window(self) -> float:
        """How long after POLL_TIMEOUT a chain may still be checking: max(POLL_MAX_INTERVAL_SECONDS, 900 s)."""
        return float(max(self.max_interval, 900))


# -- commands -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GetCustomer:
    def describe(self) -> str:
        return "GET customer"


@dataclass(frozen=True)
class ListEntitlements:
    def describe(self) -> str:
        return "GET entitlements"


@dataclass(frozen=True)
class GetOrder:
    order_id: str

    def describe(self) -> str:
        return f"GET order {self.order_id}"


@dataclass(frozen=True)
class CancelOrder:
    order_id: str

    def describe(self) -> str:
        return f"PATCH order {self.order_id} (cancel)"


@dataclass(frozen=True)
class DeleteCustomer:
    def describe(self) -> str:
        return "DELETE customer"


@dataclass(frozen=True)
class ListSubscriptions:
    """The customer's subscriptions, each with its status: a fresh read of every one (issue 16)."""

    def describe(self) -> str:
        return "GET subscriptions"


@dataclass(frozen=True)
class GetSubscription:
    subscription_id: str

    def describe(self) -> str:
        return f"GET subscription {self.subscription_id}"


@dataclass(frozen=True)
class PatchSubscription:
    """The whole subscription as read, its ``status`` set to ``target`` (``deleted``: a cancel, or ``suspended``),
    with ``If-Match: etag`` when it has one."""

    subscription_id: str
    target: str
    body: Mapping[str, Any] = field(hash=False, repr=False)
    etag: str | None = None

    def describe(self) -> str:
        verb = "cancel" if self.target == "deleted" else "suspend"
        return f"PATCH subscription {self.subscription_id} ({verb})"


@dataclass(frozen=True)
class ListAzureEntitlements:
    plan_id: str

    def describe(self) -> str:
        return f"GET Azure subscriptions of plan {self.plan_id}"


@dataclass(frozen=True)
class CancelAzureEntitlement:
    plan_id: str
    entitlement_id: str

    def describe(self) -> str:
        return f"POST cancel of Azure subscription {self.entitlement_id} (plan {self.plan_id})"


Call = (
    GetCustomer
    | ListEntitlements
    | GetOrder
    | CancelOrder
    | DeleteCustomer
    | ListSubscriptions
    | GetSubscription
    | PatchSubscription
    | ListAzureEntitlements
    | CancelAzureEntitlement
)


@dataclass(frozen=True)
class Continue:
    """Send ``message`` to the poll queue, hidden for ``delay`` seconds; the request goes on there."""

    message: PollMessage
    delay: int
    why: str


@dataclass(frozen=True)
class Finish:
    """The request's one terminal outcome."""

    outcome: Outcome
    detail: str
    orders: tuple[OrderState, ...] = ()
    poll_attempts: int = 0
    poison: Poison = Poison.NONE
    subscriptions: tuple[SubscriptionState, ...] = ()


@dataclass(frozen=True)
class Retry:
    """Send the invocation's own message again, as it is, hidden for ``delay`` seconds: a message without a chain of
    its own (an unreadable poll message) or decided before any call, whose outcome the request ledger cannot take
    now."""

    delay: int
    why: str


Command = Call | Continue | Finish | Retry


# -- observations -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A 2xx. ``body``: the JSON (an order, a customer), or the order ids of an entitlement listing."""

    body: Any = None


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    status: int | None = None
    code: str | None = None
    description: str | None = None
    retry_after: float | None = None  # seconds, already clamped by the client; None: not given or unparseable
    where: str = ""  # "PATCH /v1/customers/.../orders/..."

    def text(self) -> str:
        """One sentence for a log line, an outcome's detail or a timed_out cause, with Partner Center's own words."""
        if self.kind is FailureKind.UNSAFE:
            return f"refused to continue: {self.description}"
        words = self.description or "no description"
        if self.kind is FailureKind.STORAGE:
            return f"the request ledger could not be used, so {self.where} was not sent: {words}"
        if self.status is None:
            return f"no answer from Partner Center to {self.where}: {words}"
        verb = (
            "refused" if self.kind in (FailureKind.REFUSED, FailureKind.NOT_FOUND, FailureKind.CONFLICT) else "answered"
        )
        code = f" (code {self.code})" if self.code else ""
        return f"Partner Center {verb} {self.where} with HTTP {self.status}{code}: {words}"


Observation = Answer | Failure


# -- the hop ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hop:
    """One invocation's work on a request. ``chain`` is what it started from (a poll message, or a new request)."""

    chain: PollMessage
    entry: Entry
    mode: Mode
    order_ids: tuple[str, ...]  # every order the request knows of, in the order to read them
    hints: Mapping[str, str]  # last status seen per order (from the message, or this hop): what to read first
    fresh: Mapping[str, str] = field(default_factory=dict)  # status read by GET in this hop: the only proof
    busy: frozenset[str] = frozenset()  # known open in this hop without a read (a PATCH answer, a 409)
    patched: frozenset[str] = frozenset()  # cancelled (PATCHed) in this hop
    refused: Mapping[str, str] = field(default_factory=dict)  # PATCH refusals waiting for a read of the order
    listed: bool = False  # the entitlements were listed in this hop
    looked: bool = False  # GET customer answered in this hop
    pending: Call | None = None
    gone_check: str | None = None  # the pending GET customer decides this failure (present) or a gone outcome
    alternates: Mapping[str, str] = field(default_factory=dict)  # order id -> alternateId, as read in this hop
    refused_delete: Failure | None = None  # a DELETE refused past its deadline: the pending listing names blockers
    # Subscriptions (issue 16). ``subs``: read in this hop (the listing, or a GET): the only proof.
    sub_hints: Mapping[str, SubscriptionState] = field(default_factory=dict)  # every one the request knows of
    subs_listed: bool = False  # the subscriptions were listed in this hop
    subs: Mapping[str, Subscription] = field(default_factory=dict)
    sub_busy: frozenset[str] = frozenset()  # known not final in this hop without a read (a PATCH answer, a 409)
    sub_patched: frozenset[str] = frozenset()  # PATCHed in this hop: no second PATCH, except after a stale etag
    sub_refused: Mapping[str, str] = field(default_factory=dict)  # PATCH refusals waiting for a read
    sub_stale: frozenset[str] = frozenset()  # a PATCH met a stale etag (2055) in this hop: read, then PATCH again
    sub_late: frozenset[str] = frozenset()  # a cancel was refused as late (900117, 900213): suspend it instead
    sub_gone: frozenset[str] = frozenset()  # known, not listed in this hop, and its GET said 404
    azure: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # plan -> Azure subscription -> status
    azure_asked: frozenset[str] = frozenset()  # "plan/entitlement" cancels sent in this hop
    via_sub: frozenset[str] = frozenset()  # orders refused 800063/800077: settled when their subscription is final

    @property
    def open_orders(self) -> tuple[str, ...]:
        return tuple(
            o
            for o in self.order_ids
            if o not in self.via_sub and (o in self.busy or (o in self.fresh and not is_cancelled(self.fresh[o])))
        )

    def current_orders(self) -> tuple[OrderState, ...]:
        return tuple(OrderState(o, self.fresh.get(o, self.hints.get(o, "unknown"))) for o in self.order_ids)

    def current_subscriptions(self) -> tuple[SubscriptionState, ...]:
        """Every subscription the request knows of, with the status read in this hop where there is one."""
        result = []
        for sid, hint in self.sub_hints.items():
            if sid in self.subs:
                hint = replace(hint, status=self.subs[sid].status)
            elif sid in self.sub_gone:
                hint = replace(hint, status="deleted")
            result.append(hint)
        return tuple(result)

    @property
    def wrote(self) -> bool:
        """Whether this hop sent a cancel, a subscription PATCH or an Azure subscription cancel."""
        return bool(self.patched or self.sub_patched or self.azure_asked)


def normalise_status(status: Any) -> str:
    return status.strip().lower()[:40] if isinstance(status, str) and status.strip() else "unknown"


def is_cancelled(status: str) -> bool:
    return status == CANCELLED


def needs_cancel(status: str) -> bool:
    """PATCH it: neither cancelled nor already cancelling (new, active, or fallen back)."""
    return status != CANCELLED and status not in CANCELLING
