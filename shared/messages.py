"""Queue message contracts: the deletion request (in), the poll message (internal), the outcome event (out).

Parsing is strict and total: any byte string either becomes a valid message or raises ``InvalidMessageError``
with a reason. Messages the app sends carry ``schemaVersion`` so a poll chain that spans a redeploy keeps working.

Poll messages and outcome events are versioned separately (``POLL_SCHEMA_VERSION``, ``OUTCOME_SCHEMA_VERSION``).
Poll messages stay at version 1 and only gain optional fields, so the release before this one and this one read
each other's poll messages: an older reader ignores the new fields, and this reader gives missing ones their
defaults. The order statuses a poll message carries are hints for what to read first, never proof of anything.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.errors import InvalidMessageError
from shared.ids import derived_correlation_id, is_guid, is_order_id
from shared.subscriptions import FINAL_STATUSES, Kind

__all__ = [
    "OUTCOMES",
    "OUTCOME_SCHEMA_VERSION",
    "POLL_SCHEMA_VERSION",
    "STAGES",
    "SUBSCRIPTION_ACTIONS",
    "DeletionRequest",
    "OrderState",
    "PollMessage",
    "SubscriptionState",
    "deletion_request_text",
    "event_id",
    "iso",
    "outcome_event",
    "parse_deletion_request",
    "parse_iso",
    "parse_poll_message",
    "readable_fields",
]

#: Version of the internal poll message. Stays 1: new fields are optional (see the module docstring).
POLL_SCHEMA_VERSION = 1
#: Version of the public outcome event. Stays 1: ``eventId`` is an additive field.
OUTCOME_SCHEMA_VERSION = 1
OUTCOMES = ("deleted", "not_found", "rejected", "timed_out", "failed", "dry_run")
#: "discover": the customer has not been looked at or its orders are not listed yet; "poll": wait for the orders.
STAGES = ("discover", "poll")
MAX_BODY_BYTES = 64 * 1024
MAX_CAUSE_CHARS = 400
#: What the request did to a subscription: cancelled it (``status: "deleted"``), suspended it, or nothing.
SUBSCRIPTION_ACTIONS = ("cancelled", "suspended", "none")
#: The subscription kinds a poll message may name.
SUBSCRIPTION_KINDS = tuple(k.value for k in Kind)
#: At most this many subscriptions, and Azure entitlements per plan, in one poll message (a sandbox holds few).
MAX_SUBSCRIPTIONS = 250
#: A subscription's ``orderId``: 12 hex characters for new commerce, a GUID for legacy ones (issue 16's reference).
_SUBSCRIPTION_ORDER_RE = re.compile(r"[A-Za-z0-9_-]{6,64}")
#: Namespace of ``eventId``: the same request gives the same id on every repeat of its outcome.
_EVENT_NAMESPACE = uuid.UUID("0d3c6f1e-8a53-4f0b-9d7e-5b2f51c0a9e4")


def iso(moment: datetime) -> str:
    """ISO 8601 UTC with ``Z``, millisecond precision."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: Any) -> datetime:
    if not isinstance(value, str) or not value.endswith("Z"):
        raise ValueError("not an ISO 8601 UTC time ending in Z")
    moment = datetime.fromisoformat(value[:-1] + "+00:00")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class DeletionRequest:
    customer_id: str
    correlation_id: str
    dry_run: bool
    requested_at: datetime


@dataclass(frozen=True)
class OrderState:
    id: str
    status: str  # lower case, as last seen

    @property
    def cancelled(self) -> bool:
        return self.status == "cancelled"

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "status": self.status}


@dataclass(frozen=True)
class SubscriptionState:
    """A subscription as the request last saw it (issue 16): a hint in a poll message, a line of the outcome.

    ``action`` is what the request asked of it (a PATCH Partner Center accepted), ``asked_at`` when. ``cancelled``
    lists the Azure entitlements the request cancelled under an Azure plan, ``cancelled_at`` when it first did.
    """

    id: str  # lower case GUID
    kind: str  # a SUBSCRIPTION_KINDS value
    status: str  # lower case, as last read
    action: str = "none"  # a SUBSCRIPTION_ACTIONS value
    asked_at: datetime | None = None
    cancelled: tuple[str, ...] = ()  # Azure entitlement ids (lower case GUIDs)
    cancelled_at: datetime | None = None
    order_id: str | None = None  # its orderId as read: settles a licence order refused with 800063 / 800077

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_json(self) -> dict[str, Any]:
        """The outcome's form: id, kind, action, status and the Azure entitlements cancelled."""
        return {
            "id": self.id,
            "kind": self.kind,
            "action": self.action,
            "status": self.status,
            "azureEntitlementsCancelled": list(self.cancelled),
        }

    def to_hint(self) -> dict[str, Any]:
        """The poll message's form: the outcome's, and the times and order id the next hop needs."""
        return {
            **self.to_json(),
            "askedAt": iso(self.asked_at) if self.asked_at else None,
            "cancelledAt": iso(self.cancelled_at) if self.cancelled_at else None,
            "orderId": self.order_id,
        }


@dataclass(frozen=True)
class PollMessage:
    """The state of one request between two hops: everything the next hop knows, and nothing it may trust.

    Fields after ``dry_run`` are optional (added by issues 7, 8 and 16); an older message gets their defaults.
    """

    customer_id: str
    correlation_id: str
    orders: tuple[OrderState, ...]  # every order the request knows of, with the status last seen (a hint)
    attempt: int  # poll hops already run
    requested_at: datetime
    first_handled_at: datetime
    delete_refusals: int = 0
    stage: str = "poll"  # see STAGES
    dry_run: bool = False
    delete_by: datetime | None = None  # no DELETE at or after this time; None: first_handled_at + POLL_TIMEOUT
    recoveries: int = 0  # hand-overs after a redelivered message (an invocation that died)
    setbacks: int = 0  # hops in a row that made no progress (throttled, outage, out of time)
    cause: str | None = None  # why the last hop could not finish the request (a Cause value)
    cause_detail: str | None = None  # Partner Center's words for it, when there are any
    customer_seen: bool = False  # a hop of this request saw the customer exist
    last_looks: int = 0  # failed looks at the customer after the hard end
    cancel_sent_at: datetime | None = None  # when a hop last sent a cancel (issue 8): the poll delay grows from it
    first_delete_refusal_at: datetime | None = None  # the request's first refused DELETE (issue 16): its deadline
    subscriptions: tuple[SubscriptionState, ...] = ()  # every subscription the request knows of (hints, issue 16)
    subscriptions_listed: bool = False  # a hop of this request listed the customer's subscriptions
    via_subscription: tuple[str, ...] = ()  # orders whose PATCH was refused 800063/800077: settled by a subscription
    deleting_at: datetime | None = None  # when a hop of this request last decided to send the DELETE (issue 18)
    row_key: str | None = None  # the request's ledger row (its eventId); None: written by a release without rows
    absent_at_first_look: bool = False  # the request's first look found no customer (its outcome unrecorded yet)

    def __post_init__(self) -> None:
        if self.stage == "poll" and not self.customer_seen:  # a poll stage was listed, so the customer was seen
            object.__setattr__(self, "customer_seen", True)

    def to_text(self) -> str:
        return json.dumps(
            {
                "schemaVersion": POLL_SCHEMA_VERSION,
                "kind": "poll",
                "stage": self.stage,
                "dryRun": self.dry_run,
                "customerTenantId": self.customer_id,
                "correlationId": self.correlation_id,
                "orders": [o.to_json() for o in self.orders],
                "attempt": self.attempt,
                "requestedAt": iso(self.requested_at),
                "firstHandledAt": iso(self.first_handled_at),
                "deleteRefusals": self.delete_refusals,
                "deleteBy": iso(self.delete_by) if self.delete_by else None,
                "recoveries": self.recoveries,
                "setbacks": self.setbacks,
                "cause": self.cause,
                "causeDetail": self.cause_detail,
                "customerSeen": self.customer_seen,
                "lastLooks": self.last_looks,
                "cancelSentAt": iso(self.cancel_sent_at) if self.cancel_sent_at else None,
                "firstDeleteRefusalAt": iso(self.first_delete_refusal_at) if self.first_delete_refusal_at else None,
                "subscriptions": [s.to_hint() for s in self.subscriptions],
                "subscriptionsListed": self.subscriptions_listed,
                "ordersViaSubscription": list(self.via_subscription),
                "deletingAt": iso(self.deleting_at) if self.deleting_at else None,
                "requestRow": self.row_key,
                "absentAtFirstLook": self.absent_at_first_look,
            },
            separators=(",", ":"),
        )


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result


def _text(body: bytes | str) -> str:
    raw = body.encode("utf-8", errors="surrogatepass") if isinstance(body, str) else bytes(body)
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidMessageError(f"message is larger than {MAX_BODY_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidMessageError("message is not UTF-8 text") from None


def _load_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise InvalidMessageError("message JSON is nested too deeply") from None
    except ValueError as exc:
        raise InvalidMessageError(f"message is neither a GUID nor valid JSON ({str(exc)[:80]})") from None


def parse_deletion_request(
    body: bytes | str, *, message_id: str, insertion_time: datetime | None, now: datetime
) -> DeletionRequest:
    """Parse a deletion request: the JSON object form, or a bare GUID as the whole body."""
    derived = derived_correlation_id(message_id)
    try:
        return _parse_deletion_request(body, derived, insertion_time.astimezone(UTC) if insertion_time else now)
    except InvalidMessageError as exc:
        exc.correlation_id = exc.correlation_id or derived
        raise


def _parse_deletion_request(body: bytes | str, derived: str, requested_at: datetime) -> DeletionRequest:
    text = _text(body).strip()
    if not text:
        raise InvalidMessageError("message is empty")
    if is_guid(text):
        return DeletionRequest(text.lower(), derived, False, requested_at)

    data = _load_json(text)
    if not isinstance(data, dict):
        raise InvalidMessageError(f"message must be a JSON object or a bare GUID, not a JSON {type(data).__name__}")

    customer = data.get("customerTenantId")
    customer_id = customer.strip().lower() if isinstance(customer, str) and is_guid(customer.strip()) else None

    correlation = data.get("correlationId")
    if correlation is None:
        correlation_id = derived
    elif isinstance(correlation, str) and is_guid(correlation.strip()):
        correlation_id = correlation.strip().lower()
    else:
        raise InvalidMessageError("correlationId must be a GUID string when given", customer_id=customer_id)

    if customer is None:
        raise InvalidMessageError("customerTenantId is missing", correlation_id=correlation_id)
    if customer_id is None:
        shown = "a " + type(customer).__name__ if not isinstance(customer, str) else repr(customer[:60])
        raise InvalidMessageError(
            f"customerTenantId must be a GUID in the 8-4-4-4-12 hex form (got {shown})", correlation_id=correlation_id
        )

    dry_run = data.get("dryRun", False)
    if dry_run is None:
        dry_run = False
    if not isinstance(dry_run, bool):
        raise InvalidMessageError(
            f"dryRun must be true or false (got a {type(dry_run).__name__})",
            customer_id=customer_id,
            correlation_id=correlation_id,
        )
    return DeletionRequest(customer_id, correlation_id, dry_run, requested_at)


def deletion_request_text(customer_id: str, correlation_id: str, *, dry_run: bool = False) -> str:
    """A deletion request that a redrive to the request queue processes again."""
    return json.dumps({"customerTenantId": customer_id, "correlationId": correlation_id, "dryRun": dry_run})


def parse_poll_message(body: bytes | str) -> PollMessage:
    """Parse the app's own poll message; anything unexpected is invalid (ids are validated again)."""
    data = _load_json(_text(body).strip())
    if not isinstance(data, dict):
        raise InvalidMessageError("poll message is not a JSON object")
    version = data.get("schemaVersion")
    if version != POLL_SCHEMA_VERSION or isinstance(version, bool):
        raise InvalidMessageError(
            f"poll message has unsupported schemaVersion {str(version)[:20]!r} (this app reads {POLL_SCHEMA_VERSION})"
        )
    customer = data.get("customerTenantId")
    correlation = data.get("correlationId")
    customer_id = customer.lower() if is_guid(customer) else None
    correlation_id = correlation.lower() if is_guid(correlation) else None
    if data.get("kind") != "poll":
        raise InvalidMessageError(
            "poll message kind is not 'poll'", customer_id=customer_id, correlation_id=correlation_id
        )
    if customer_id is None or correlation_id is None:
        raise InvalidMessageError(
            "poll message has no valid customerTenantId and correlationId",
            customer_id=customer_id,
            correlation_id=correlation_id,
        )
    try:
        orders = []
        raw_orders = data["orders"]
        if not isinstance(raw_orders, list):
            raise ValueError("orders is not a list")
        for raw in raw_orders:
            if not isinstance(raw, dict) or not is_order_id(raw.get("id")) or not isinstance(raw.get("status"), str):
                raise ValueError("an order entry is malformed")
            orders.append(OrderState(raw["id"], raw["status"].lower()[:40]))
        counts = {}
        for name in ("attempt", "deleteRefusals", "recoveries", "setbacks", "lastLooks"):
            value = data[name] if name == "attempt" else _optional(data, name, 0)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1_000_000:
                raise ValueError(f"{name} is not a small whole number")
            counts[name] = value
        requested_at = parse_iso(data["requestedAt"])
        first_handled_at = parse_iso(data["firstHandledAt"])
        raw_delete_by = _optional(data, "deleteBy", None)
        delete_by = None if raw_delete_by is None else parse_iso(raw_delete_by)
        raw_cancel_sent = _optional(data, "cancelSentAt", None)
        cancel_sent_at = None if raw_cancel_sent is None else parse_iso(raw_cancel_sent)
        raw_refusal = _optional(data, "firstDeleteRefusalAt", None)
        first_refusal = None if raw_refusal is None else parse_iso(raw_refusal)
        stage = data.get("stage", "poll")
        dry_run = data.get("dryRun", False)
        if stage not in STAGES:
            raise ValueError("stage is not 'poll' or 'discover'")
        if not isinstance(dry_run, bool) or (dry_run and stage != "discover"):
            raise ValueError("dryRun is not a boolean, or is set on a poll stage")
        cause, cause_detail = _optional(data, "cause", None), _optional(data, "causeDetail", None)
        for name, value in (("cause", cause), ("causeDetail", cause_detail)):
            if value is not None and (not isinstance(value, str) or len(value) > MAX_CAUSE_CHARS):
                raise ValueError(f"{name} is not a short text")
        # A poll stage means the customer was seen when its orders were listed (so says the older release too).
        seen = _optional(data, "customerSeen", stage == "poll")
        if not isinstance(seen, bool):
            raise ValueError("customerSeen is not a boolean")
        subscriptions = _subscription_hints(_optional(data, "subscriptions", []))
        subscriptions_listed = _optional(data, "subscriptionsListed", False)
        if not isinstance(subscriptions_listed, bool):
            raise ValueError("subscriptionsListed is not a boolean")
        via = _optional(data, "ordersViaSubscription", [])
        if not isinstance(via, list) or not all(is_order_id(o) for o in via) or len(set(via)) != len(via):
            raise ValueError("ordersViaSubscription is not a list of distinct order ids")
        raw_deleting = _optional(data, "deletingAt", None)
        deleting_at = None if raw_deleting is None else parse_iso(raw_deleting)
        absent = _optional(data, "absentAtFirstLook", False)
        if not isinstance(absent, bool):
            raise ValueError("absentAtFirstLook is not a boolean")
        row_key = _optional(data, "requestRow", None)
        if row_key is not None and not (is_guid(row_key) and row_key == row_key.lower()):
            raise ValueError("requestRow is not a lower-case GUID")
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidMessageError(
            f"poll message is malformed: {str(exc)[:100]}", customer_id=customer_id, correlation_id=correlation_id
        ) from None
    if len({o.id for o in orders}) != len(orders):
        raise InvalidMessageError(
            "poll message lists an order twice", customer_id=customer_id, correlation_id=correlation_id
        )
    return PollMessage(
        customer_id,
        correlation_id,
        tuple(orders),
        counts["attempt"],
        requested_at,
        first_handled_at,
        counts["deleteRefusals"],
        stage,
        dry_run,
        delete_by,
        counts["recoveries"],
        counts["setbacks"],
        cause,
        cause_detail,
        seen,
        counts["lastLooks"],
        cancel_sent_at,
        first_refusal,
        subscriptions,
        subscriptions_listed,
        tuple(via),
        deleting_at,
        row_key,
        absent,
    )


def _subscription_hints(raw: Any) -> tuple[SubscriptionState, ...]:
    """The ``subscriptions`` of a poll message: every id a lower-case GUID, every value of the shape this app
    writes, or ValueError."""
    if not isinstance(raw, list) or len(raw) > MAX_SUBSCRIPTIONS:
        raise ValueError("subscriptions is not a short list")
    hints = []
    for item in raw:
        if not isinstance(item, dict) or not is_guid(item.get("id")) or item["id"] != item["id"].lower():
            raise ValueError("a subscription entry has no lower-case GUID id")
        kind, status, action = item.get("kind"), item.get("status"), _optional(item, "action", "none")
        if kind not in SUBSCRIPTION_KINDS or action not in SUBSCRIPTION_ACTIONS:
            raise ValueError("a subscription entry has an unknown kind or action")
        if not isinstance(status, str) or not status or len(status) > 40 or status != status.lower():
            raise ValueError("a subscription entry has no status")
        cancelled = _optional(item, "azureEntitlementsCancelled", [])
        if (
            not isinstance(cancelled, list)
            or len(cancelled) > MAX_SUBSCRIPTIONS
            or not all(is_guid(e) and e == e.lower() for e in cancelled)
        ):
            raise ValueError("a subscription entry's azureEntitlementsCancelled is not a list of lower-case GUIDs")
        order_id = _optional(item, "orderId", None)
        if order_id is not None and not (isinstance(order_id, str) and _SUBSCRIPTION_ORDER_RE.fullmatch(order_id)):
            raise ValueError("a subscription entry's orderId is malformed")
        asked, cancelled_at = _optional(item, "askedAt", None), _optional(item, "cancelledAt", None)
        hints.append(
            SubscriptionState(
                item["id"],
                kind,
                status,
                action,
                None if asked is None else parse_iso(asked),
                tuple(dict.fromkeys(cancelled)),
                None if cancelled_at is None else parse_iso(cancelled_at),
                order_id,
            )
        )
    if len({h.id for h in hints}) != len(hints):
        raise ValueError("a subscription is listed twice")
    return tuple(hints)


def _optional(data: Mapping[str, Any], name: str, default: Any) -> Any:
    """An optional field: missing and ``null`` both mean the default."""
    value = data.get(name)
    return default if value is None else value


def readable_fields(body: bytes | str) -> tuple[str | None, str | None, bool | None, datetime | None]:
    """What can still be read from a poll message that does not parse: customer, correlation, dryRun, requestedAt.

    Each is ``None`` unless it has exactly the shape this app writes, so nothing here is a guess.
    """
    try:
        data = _load_json(_text(body).strip())
    except InvalidMessageError:
        return None, None, None, None
    if not isinstance(data, dict):
        return None, None, None, None
    customer, correlation, dry_run = data.get("customerTenantId"), data.get("correlationId"), data.get("dryRun")
    try:
        requested_at = parse_iso(data.get("requestedAt"))
    except (ValueError, TypeError):
        requested_at = None
    return (
        customer.lower() if is_guid(customer) else None,
        correlation.lower() if is_guid(correlation) else None,
        dry_run if isinstance(dry_run, bool) else None,
        requested_at,
    )


def event_id(correlation_id: str, requested_at: datetime, dry_run: bool = False) -> str:
    """Stable id of a request's outcome event: derived from the request's identity, the same on every repeat. A dry
    run's has its own name (``|dryRun``): a dry run and a real request sent with one correlation id in the same
    second (a queue's insertion time has whole seconds) are two requests, with two ids and two ledger rows."""
    suffix = "|dryRun" if dry_run else ""
    return str(uuid.uuid5(_EVENT_NAMESPACE, f"{correlation_id}|{iso(requested_at)}{suffix}"))


def outcome_event(
    *,
    outcome: str,
    customer_id: str | None,
    correlation_id: str,
    orders: tuple[OrderState, ...] | list[OrderState] = (),
    subscriptions: tuple[SubscriptionState, ...] | list[SubscriptionState] = (),
    poll_attempts: int = 0,
    detail: str,
    requested_at: datetime,
    finished_at: datetime,
    dry_run: bool = False,
) -> str:
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")
    return json.dumps(
        {
            "schemaVersion": OUTCOME_SCHEMA_VERSION,
            "eventId": event_id(correlation_id, requested_at, dry_run),
            "customerTenantId": customer_id,
            "correlationId": correlation_id,
            "outcome": outcome,
            "orders": [o.to_json() for o in orders],
            "subscriptions": [s.to_json() for s in subscriptions],
            "pollAttempts": poll_attempts,
            "detail": detail,
            "requestedAt": iso(requested_at),
            "finishedAt": iso(finished_at),
        },
        separators=(",", ":"),
    )
