# The previous release's shared/messages.py (main at eaf0670), verbatim: the poll-message compatibility tests run
# its parser on the messages this release writes (tests/unit/test_messages.py). Test data, not app code.
"""Queue message contracts: the deletion request (in), the poll message (internal), the outcome event (out).

Parsing is strict and total: any byte string either becomes a valid message or raises ``InvalidMessageError``
with a reason. Messages the app sends carry ``schemaVersion`` so a poll chain that spans a redeploy keeps working.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from shared.errors import InvalidMessageError
from shared.ids import derived_correlation_id, is_guid, is_order_id

__all__ = [
    "SCHEMA_VERSION",
    "OUTCOMES",
    "DeletionRequest",
    "OrderState",
    "PollMessage",
    "parse_deletion_request",
    "parse_poll_message",
    "deletion_request_text",
    "outcome_event",
    "iso",
    "parse_iso",
]

SCHEMA_VERSION = 1
OUTCOMES = ("deleted", "not_found", "rejected", "timed_out", "failed", "dry_run")
MAX_BODY_BYTES = 64 * 1024


def iso(moment: datetime) -> str:
    """ISO 8601 UTC with ``Z``, millisecond precision."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: Any) -> datetime:
    if not isinstance(value, str) or not value.endswith("Z"):
        raise ValueError("not an ISO 8601 UTC time ending in Z")
    moment = datetime.fromisoformat(value[:-1] + "+00:00")
    return moment.astimezone(timezone.utc)


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
class PollMessage:
    customer_id: str
    correlation_id: str
    orders: tuple[OrderState, ...]
    attempt: int  # poll hops already run
    requested_at: datetime
    first_handled_at: datetime
    delete_refusals: int = 0
    stage: str = "poll"  # "discover": the orders are not known yet (delete_customer was throttled); "poll": wait for them
    dry_run: bool = False

    def to_text(self) -> str:
        return json.dumps(
            {
                "schemaVersion": SCHEMA_VERSION,
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


def parse_deletion_request(body: bytes | str, *, message_id: str, insertion_time: datetime | None, now: datetime) -> DeletionRequest:
    """Parse a deletion request: the JSON object form, or a bare GUID as the whole body."""
    derived = derived_correlation_id(message_id)
    try:
        return _parse_deletion_request(body, derived, insertion_time.astimezone(timezone.utc) if insertion_time else now)
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
            f"dryRun must be true or false (got a {type(dry_run).__name__})", customer_id=customer_id, correlation_id=correlation_id
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
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise InvalidMessageError(f"poll message has unsupported schemaVersion {str(version)[:20]!r} (this app reads {SCHEMA_VERSION})")
    customer = data.get("customerTenantId")
    correlation = data.get("correlationId")
    customer_id = customer.lower() if is_guid(customer) else None
    correlation_id = correlation.lower() if is_guid(correlation) else None
    if data.get("kind") != "poll":
        raise InvalidMessageError("poll message kind is not 'poll'", customer_id=customer_id, correlation_id=correlation_id)
    if customer_id is None or correlation_id is None:
        raise InvalidMessageError("poll message has no valid customerTenantId and correlationId", customer_id=customer_id, correlation_id=correlation_id)
    try:
        orders = []
        raw_orders = data["orders"]
        if not isinstance(raw_orders, list):
            raise ValueError("orders is not a list")
        for raw in raw_orders:
            if not isinstance(raw, dict) or not is_order_id(raw.get("id")) or not isinstance(raw.get("status"), str):
                raise ValueError("an order entry is malformed")
            orders.append(OrderState(raw["id"], raw["status"].lower()[:40]))
        attempt = data["attempt"]
        refusals = data.get("deleteRefusals", 0)
        for name, value in (("attempt", attempt), ("deleteRefusals", refusals)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1_000_000:
                raise ValueError(f"{name} is not a small whole number")
        requested_at = parse_iso(data["requestedAt"])
        first_handled_at = parse_iso(data["firstHandledAt"])
        stage = data.get("stage", "poll")
        dry_run = data.get("dryRun", False)
        if stage not in ("poll", "discover"):
            raise ValueError("stage is not 'poll' or 'discover'")
        if not isinstance(dry_run, bool) or (dry_run and stage != "discover"):
            raise ValueError("dryRun is not a boolean, or is set on a poll stage")
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidMessageError(f"poll message is malformed: {str(exc)[:100]}", customer_id=customer_id, correlation_id=correlation_id) from None
    if len({o.id for o in orders}) != len(orders):
        raise InvalidMessageError("poll message lists an order twice", customer_id=customer_id, correlation_id=correlation_id)
    return PollMessage(customer_id, correlation_id, tuple(orders), attempt, requested_at, first_handled_at, refusals, stage, dry_run)


def outcome_event(
    *,
    outcome: str,
    customer_id: str | None,
    correlation_id: str,
    orders: tuple[OrderState, ...] | list[OrderState] = (),
    poll_attempts: int = 0,
    detail: str,
    requested_at: datetime,
    finished_at: datetime,
) -> str:
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")
    return json.dumps(
        {
            "schemaVersion": SCHEMA_VERSION,
            "customerTenantId": customer_id,
            "correlationId": correlation_id,
            "outcome": outcome,
            "orders": [o.to_json() for o in orders],
            "pollAttempts": poll_attempts,
            "detail": detail,
            "requestedAt": iso(requested_at),
            "finishedAt": iso(finished_at),
        },
        separators=(",", ":"),
    )
