"""The request ledger's pure core: one table row per request, and the rule that its outcome is decided once.

A request's row (``DELETION_REQUESTS_TABLE``) has the customer id as its PartitionKey and the request's ``eventId``
as its RowKey. This module only decides: what a hop writes, and what it publishes. ``shared.service`` reads and writes
the row (``shared.tables``) and sends what these functions say.

Rules (docs/adr/0001-request-state.md):
* **The outcome is decided once.** The first hop that finishes writes the whole outcome event into the row,
  conditionally (an insert, or an ``If-Match`` replace), and only then publishes it. Any later finish of the same
  request (a fork, a redelivery, a stale message replayed, a crash between the write and the publish) publishes the
  stored event again: the same ``eventId``, the same content. So the outcomes of one request never differ.
* **A hop of a decided request makes no call.** It publishes the stored outcome again and ends.
* **A row belongs to one request.** The row is used only when its correlation id, ``dryRun`` and ``requestedAt``
  are the message's: a row never turns a dry run into a real request, nor one request into another.
* **Progress is recorded, not trusted.** After a poll message is sent, the row gets the stage, the hop and the next
  step's time, for the status API. Nothing decides from it yet: the poll message still carries the state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.ids import is_guid
from shared.messages import event_id, iso, parse_iso

__all__ = [
    "ROW_SCHEMA_VERSION",
    "Insert",
    "Proceed",
    "Replace",
    "Republish",
    "RequestKey",
    "Unrelated",
    "on_finish",
    "on_hop_start",
    "on_progress",
    "prune_plan",
    "request_key",
]

ROW_SCHEMA_VERSION = 1
#: A table string property holds 64 KiB of UTF-16 (32 Ki characters), so the event is kept in two: ``event`` and,
#: past this many characters, ``event2``. An outcome event fits a queue message (48 KiB of JSON), so two always do.
EVENT_PART_CHARS = 30_000
MAX_EVENT_CHARS = 2 * EVENT_PART_CHARS
#: The poison copies an outcome can have (``shared.workflow.Poison`` values).
POISONS = frozenset({"none", "original", "equivalent", "poll_original"})


@dataclass(frozen=True)
class RequestKey:
    """Which request a row is: its keys, and what must match for the row to be this request's."""

    customer_id: str  # PartitionKey: a lower-case GUID
    event_id: str  # RowKey: uuid5 of the correlation id and requestedAt
    correlation_id: str
    dry_run: bool
    requested_at: datetime


def request_key(
    customer_id: str | None, correlation_id: str | None, requested_at: datetime, dry_run: bool
) -> RequestKey | None:
    """The request's row key, or ``None`` when the request has no row (its customer id or correlation id is not a
    GUID: an invalid request, rejected without one)."""
    if not (is_guid(customer_id) and is_guid(correlation_id)) or customer_id is None or correlation_id is None:
        return None
    cid, corr = customer_id.lower(), correlation_id.lower()
    return RequestKey(cid, event_id(corr, requested_at, dry_run), corr, dry_run, requested_at)


# -- what a hop does with the row --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Insert:
    """Create the row (``TableConflictError``: another hop created it first; read again)."""

    row: dict[str, Any]


@dataclass(frozen=True)
class Replace:
    """Replace the row if it still has ``etag`` (``TableConflictError``: it changed; read again)."""

    row: dict[str, Any]
    etag: str


@dataclass(frozen=True)
class Republish:
    """The request's outcome is decided: send this stored event again (and its poison copy, if it had one); make no
    Partner Center call and write nothing."""

    event: str
    poison: str  # a ``shared.workflow.Poison`` value
    outcome: str


@dataclass(frozen=True)
class Unrelated:
    """The row cannot be this request's (``why``): leave it alone and go on as without a ledger."""

    why: str


@dataclass(frozen=True)
class Proceed:
    """No outcome is decided yet: the hop works."""


def _identity(key: RequestKey) -> dict[str, Any]:
    return {
        "PartitionKey": key.customer_id,
        "RowKey": key.event_id,
        "schemaVersion": ROW_SCHEMA_VERSION,
        "customerTenantId": key.customer_id,
        "correlationId": key.correlation_id,
        "dryRun": key.dry_run,
        "requestedAt": iso(key.requested_at),
    }


def _mismatch(row: Mapping[str, Any], key: RequestKey) -> str | None:
    """Why ``row`` is not ``key``'s request, or ``None``."""
    if row.get("PartitionKey") != key.customer_id or row.get("RowKey") != key.event_id:
        return "the row's keys differ"
    if row.get("correlationId") != key.correlation_id:
        return "the row belongs to another correlation id"
    if row.get("dryRun") is not key.dry_run:
        return "the row's dryRun differs from the request's"
    if row.get("requestedAt") != iso(key.requested_at):
        return "the row's requestedAt differs from the request's"
    if row.get("schemaVersion") != ROW_SCHEMA_VERSION:
        return f"the row has schema version {row.get('schemaVersion')!r}"
    return None


def _stored(row: Mapping[str, Any], key: RequestKey) -> Republish | Unrelated | None:
    """The decided outcome the row holds, or ``None`` when it holds none."""
    if row.get("outcome") is None and row.get("event") is None:
        return None
    event, poison, rest = row.get("event"), row.get("poison"), row.get("event2", "")
    if not isinstance(event, str) or not isinstance(rest, str) or poison not in POISONS:
        return Unrelated("the row's stored outcome cannot be read")
    event += rest
    try:
        parsed = json.loads(event)
    except ValueError:
        parsed = None
    if (
        not isinstance(parsed, dict)
        or parsed.get("eventId") != key.event_id
        or parsed.get("outcome") != row.get("outcome")
    ):
        return Unrelated("the row's stored outcome cannot be read")
    return Republish(event, str(poison), str(parsed["outcome"]))


def on_hop_start(row: Mapping[str, Any] | None, key: RequestKey) -> Proceed | Republish | Unrelated:
    """Before a hop's first Partner Center call: a decided request makes no call."""
    if row is None:
        return Proceed()
    why = _mismatch(row, key)
    if why is not None:
        return Unrelated(why)
    return _stored(row, key) or Proceed()


def on_finish(
    row: Mapping[str, Any] | None, key: RequestKey, *, outcome: str, event: str, poison: str, now: datetime
) -> Insert | Replace | Republish | Unrelated:
    """A hop decided ``outcome`` (its event text ``event``): write it into the row once, or publish what is there."""
    if len(event) > MAX_EVENT_CHARS:
        return Unrelated(f"the outcome event has {len(event)} characters, more than a row holds")
    terminal = {
        "outcome": outcome,
        "event": event[:EVENT_PART_CHARS],
        **({"event2": event[EVENT_PART_CHARS:]} if len(event) > EVENT_PART_CHARS else {}),
        "poison": poison,
        "finishedAt": iso(now),
        "updatedAt": iso(now),
    }
    if row is None:
        return Insert({**_identity(key), "stage": "finished", **terminal})
    why = _mismatch(row, key)
    if why is not None:
        return Unrelated(why)
    stored = _stored(row, key)
    if stored is not None:
        return stored
    etag = row.get("etag")
    if not isinstance(etag, str):
        return Unrelated("the row was read without an etag")
    return Replace({**_without_etag(row), "stage": "finished", **terminal}, etag)


def on_progress(
    row: Mapping[str, Any] | None, key: RequestKey, *, stage: str, hop: int, next_step_at: datetime, now: datetime
) -> Insert | Replace | None:
    """After a poll message was sent: record where the request stands. ``None``: write nothing (the row is another
    request's, or the outcome is decided, or the row already shows a later hop)."""
    progress = {"stage": stage, "hop": hop, "nextStepAt": iso(next_step_at), "updatedAt": iso(now)}
    if row is None:
        return Insert({**_identity(key), **progress})
    if _mismatch(row, key) is not None or _stored(row, key) is not None:
        return None
    recorded = row.get("hop")
    if isinstance(recorded, int) and recorded > hop:
        return None
    etag = row.get("etag")
    if not isinstance(etag, str):
        return None
    return Replace({**_without_etag(row), **progress}, etag)


def _without_etag(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "etag"}


# -- retention ---------------------------------------------------------------------------------------------------------

#: The most finished rows one housekeeping run deletes (the rest go on the next run).
MAX_PRUNED_PER_RUN = 500


def prune_before(now: datetime, retention_days: int) -> datetime:
    """Rows finished before this are pruned (LEDGER_RETENTION_DAYS)."""
    return now - timedelta(days=retention_days)


def prune_plan(rows: Sequence[Mapping[str, Any]], before: datetime) -> list[tuple[str, str, str]]:
    """(PartitionKey, RowKey, etag) of the finished request rows to delete: a decided outcome, ``finishedAt`` readable
    and before ``before``, keys that are lower-case GUIDs, an etag to delete on (a row changed since it was read is
    left alone). Oldest first, at most MAX_PRUNED_PER_RUN. A running request's row is never pruned."""
    due: list[tuple[datetime, str, str, str]] = []
    for row in rows:
        pk, rk, etag = row.get("PartitionKey"), row.get("RowKey"), row.get("etag")
        if row.get("schemaVersion") != ROW_SCHEMA_VERSION or not isinstance(row.get("event"), str):
            continue
        if not (_lower_guid(pk) and _lower_guid(rk) and isinstance(etag, str)):
            continue
        finished = _time(row.get("finishedAt"))
        if finished is not None and finished < before:
            due.append((finished, str(pk), str(rk), etag))
    due.sort()
    return [(pk, rk, etag) for _, pk, rk, etag in due[:MAX_PRUNED_PER_RUN]]


def _lower_guid(value: Any) -> bool:
    return isinstance(value, str) and is_guid(value) and value == value.lower()


def _time(value: Any) -> datetime | None:
    try:
        return parse_iso(value)
    except (ValueError, TypeError):
        return None
