"""The request ledger's pure core: one table row per request, claimed by the hop that works on it, and the rule that
its outcome is decided once.

A request's row (``DELETION_REQUESTS_TABLE``) has the customer id as its PartitionKey and the request's ``eventId``
as its RowKey. This module only decides: what a hop writes, and what it publishes. ``shared.service`` reads and writes
the row (``shared.tables``) and sends what these functions say.

Rules (docs/adr/0001-request-state.md):
* **A hop claims the row before any Partner Center call**, with a conditional write (an insert, or an ``If-Match``
  replace) of its hop number, its invocation id and a claim expiry (``CLAIM_SECONDS``, longer than one invocation's
  work). A hop that finds the row claimed by another invocation re-schedules its own message for after the claim; one
  that finds a later hop, or its own hop already run to its end, completes its message without any call. So only one
  invocation of a request works at a time, and a fork costs one extra message, not a second chain of calls.
* **The row is the state.** A hop works from the state the previous hop left in the row (the poll message it sent,
  stored with it) and from the row's first handling time, which the message cannot shorten or lengthen.
* **A DELETE follows a ``deleting`` write on the claim's etag**, which proves the claim is still this hop's and
  records when a DELETE was decided (``deletingAt``): the final check waits ``CLAIM_SECONDS`` after it.
* **The outcome is decided once.** The first hop that finishes writes the whole outcome event into the row,
  conditionally, and only then publishes it. Any later finish of the same request (a redelivery, a stale message
  replayed, a crash between the write and the publish) publishes the stored event again: the same ``eventId``, the
  same content. So the outcomes of one request never differ.
* **A row belongs to one request.** The row is used only when its correlation id, ``dryRun`` and ``requestedAt``
  are the message's: a row never turns a dry run into a real request, nor one request into another.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from shared.errors import InvalidMessageError
from shared.ids import is_guid
from shared.messages import PollMessage, event_id, iso, parse_iso, parse_poll_message

__all__ = [
    "ROW_SCHEMA_VERSION",
    "Claim",
    "Done",
    "Insert",
    "Proceed",
    "Replace",
    "Republish",
    "RequestKey",
    "Unrelated",
    "Wait",
    "chain_from_row",
    "hop_number",
    "on_deleting",
    "on_finish",
    "on_handover",
    "on_hop_start",
    "on_release",
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
    """No outcome is decided yet, and no later hop exists: a hand-over goes on. ``expire``: first end the claim this
    message's earlier delivery died holding."""

    expire: Replace | None = None


@dataclass(frozen=True)
class Claim:
    """Write ``write`` (the claim); once it succeeds the hop works from ``chain`` (``None``: a hop that has no chain
    of its own, an unreadable poll message)."""

    write: Insert | Replace
    chain: PollMessage | None
    taken_over: str | None = None  # the invocation whose claim ran out unreleased (it died, or paused past it)


@dataclass(frozen=True)
class Wait:
    """Another invocation holds the claim until ``until``: send this hop's message again, ``delay`` seconds hidden,
    and make no call."""

    until: datetime
    delay: int
    holder: str


@dataclass(frozen=True)
class Done:
    """A later hop exists, or this hop ran to its end already (``why``): complete the message without any call."""

    why: str


#: A claim held by an earlier hop is about to be released (that hop sends the next message, then releases): look
#: again this soon rather than at the claim's expiry.
EARLIER_HOP_RECHECK_SECONDS = 5


#: The hop of a request message (``delete_customer``); a poll message's is ``hop_number``.
REQUEST_HOP = 0


def hop_number(chain: PollMessage, *, request: bool) -> int:
    """The hop a message starts: REQUEST_HOP for a request's first delivery, ``attempt + 1`` for a poll message."""
    return REQUEST_HOP if request else chain.attempt + 1


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


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _claim_fields(
    invocation: str, hop: int, now: datetime, claim_seconds: float, message_id: str = ""
) -> dict[str, Any]:
    return {
        "hop": hop,
        "claimBy": invocation[:100],
        "claimMessage": message_id[:100],
        "claimUntil": iso(now + timedelta(seconds=claim_seconds)),
        "updatedAt": iso(now),
    }


def _later(row: Mapping[str, Any], hop: int) -> str | None:
    """Why a message of ``hop`` has nothing left to do, from the row: a later hop claimed it, or this hop ran to its
    end (released it after sending the next message)."""
    recorded = _int(row.get("hop"))
    if recorded is None:
        return None
    if recorded > hop:
        return f"the row shows a later hop ({recorded}) than this message's ({hop})"
    if recorded == hop and not row.get("claimUntil"):
        return f"hop {hop} ran to its end already (it sent the next message)"
    return None


def _settled(row: Mapping[str, Any], key: RequestKey, hop: int | None) -> Republish | Unrelated | Done | None:
    """What ends a message's hop before anything else, from the row: it is another request's, its outcome is decided,
    or a later hop exists (``hop`` ``None``: never "earlier"). ``None``: none of these."""
    why = _mismatch(row, key)
    if why is not None:
        return Unrelated(why)
    stored = _stored(row, key)
    if stored is not None:
        return stored
    later = _later(row, hop) if hop is not None else None
    return Done(later) if later is not None else None


def on_hop_start(
    row: Mapping[str, Any] | None,
    key: RequestKey,
    *,
    hop: int | None,
    chain: PollMessage | None,
    invocation: str,
    now: datetime,
    claim_seconds: float,
    legacy: bool = False,
    message_id: str = "",
) -> Claim | Wait | Done | Republish | Unrelated:
    """Before a hop's first Partner Center call: claim the row, or say why not. ``hop``: the message's hop number
    (``None`` for an unreadable poll message, which has none and is never "earlier"). ``legacy``: the message has no
    row key (the previous release wrote it), so a DELETE of that release may be in flight: a new row records a
    ``deletingAt`` now, and the final check waits for it as for its own."""
    if row is None:
        fields = _claim_fields(invocation, hop or 0, now, claim_seconds, message_id)
        first = chain.first_handled_at if chain is not None else now
        created = {
            **_identity(key),
            **fields,
            "stage": chain.stage if chain is not None else "discover",
            "firstHandledAt": iso(min(first, now)),
            "deletingAt": iso(now) if legacy else "",
        }
        return Claim(Insert(created), chain_from_row(created, chain, hop) if chain is not None else None)
    settled = _settled(row, key, hop)
    if settled is not None:
        return settled
    until = _time(row.get("claimUntil"))
    if until is not None and until > now and row.get("claimBy") != invocation[:100]:
        remaining = (until - now).total_seconds()
        holder = _int(row.get("hop"))
        wait = remaining + 1
        if hop is not None and holder is not None and holder < hop:
            wait = min(wait, EARLIER_HOP_RECHECK_SECONDS)
        return Wait(until, max(1, int(wait + 0.999)), str(row.get("claimBy"))[:100])
    etag = row.get("etag")
    if not isinstance(etag, str):
        return Unrelated("the row was read without an etag")
    claimed_hop = hop if hop is not None else (_int(row.get("hop")) or 0)
    claimed = {**_without_etag(row), **_claim_fields(invocation, claimed_hop, now, claim_seconds, message_id)}
    if legacy and not claimed.get("deletingAt"):  # a release without claims may have a DELETE in flight
        claimed["deletingAt"] = iso(now)
    holder = row.get("claimBy") if row.get("claimUntil") and row.get("claimBy") != invocation[:100] else None
    return Claim(
        Replace(claimed, etag),
        chain_from_row(claimed, chain, hop) if chain is not None else None,
        str(holder)[:100] if holder else None,
    )


def on_handover(
    row: Mapping[str, Any] | None, key: RequestKey, *, hop: int, message_id: str = "", now: datetime | None = None
) -> Proceed | Done | Republish | Unrelated:
    """A redelivery hands its request to a fresh poll message of ``hop`` (no call, no claim): unless the row shows the
    outcome decided, or a later hop (then the hand-over would only add a message that finds nothing to do). A live
    claim taken by an earlier delivery of this same message (``message_id``) is that delivery's, which died: the host
    gives a message again only after its lease ran out, and the lease is renewed while an invocation runs. So the
    hand-over ends it (its expiry set to now, on its etag), and the fresh message need not wait for it. An invocation
    that was only paused, not dead, then loses the claim: its ``deleting`` and outcome writes are refused."""
    if row is None:
        return Proceed()
    settled = _settled(row, key, hop)
    if settled is not None:
        return settled
    until, etag = _time(row.get("claimUntil")), row.get("etag")
    if (
        now is not None
        and message_id
        and row.get("claimMessage") == message_id[:100]
        and until is not None
        and until > now
        and isinstance(etag, str)
    ):
        return Proceed(Replace({**_without_etag(row), "claimUntil": iso(now), "updatedAt": iso(now)}, etag))
    return Proceed()


def chain_from_row(row: Mapping[str, Any] | None, chain: PollMessage, hop: int | None) -> PollMessage:
    """The state a hop works from: the row's, where it has one. The state the previous hop stored for this ``hop``
    replaces the message's (a fork's twin or a hand-over carries the same hop, maybe other hints; the hand-over's own
    recovery count is kept); the first handling and the latest DELETE decision are always the row's (a redelivered
    request then keeps its cut-off, and no message can move it)."""
    if row is None:
        return chain
    base = chain
    stored = _state(row)
    if stored is not None and hop is not None and _int(row.get("stateHop")) == hop and _same_request(stored, chain):
        base = replace(
            stored,
            recoveries=max(stored.recoveries, chain.recoveries),
            cause=chain.cause if chain.recoveries > stored.recoveries else stored.cause,
            cause_detail=chain.cause_detail if chain.recoveries > stored.recoveries else stored.cause_detail,
        )
    first = _time(row.get("firstHandledAt"))
    deleting = _time(row.get("deletingAt"))
    if deleting is not None and base.deleting_at is not None:
        deleting = max(deleting, base.deleting_at)
    return replace(
        base,
        first_handled_at=first if first is not None else base.first_handled_at,
        deleting_at=deleting if deleting is not None else base.deleting_at,
    )


def _same_request(a: PollMessage, b: PollMessage) -> bool:
    return (a.customer_id, a.correlation_id, a.requested_at, a.dry_run) == (
        b.customer_id,
        b.correlation_id,
        b.requested_at,
        b.dry_run,
    )


def _state(row: Mapping[str, Any]) -> PollMessage | None:
    text, rest = row.get("state"), row.get("state2", "")
    if not isinstance(text, str) or not isinstance(rest, str) or not text:
        return None
    try:
        return parse_poll_message(text + rest)
    except InvalidMessageError:
        return None


def _held(row: Mapping[str, Any] | None, key: RequestKey, invocation: str) -> str | None:
    """The etag of ``row`` if this invocation holds its claim (and no outcome is decided), else ``None``."""
    if row is None or _mismatch(row, key) is not None or _stored(row, key) is not None:
        return None
    etag = row.get("etag")
    if row.get("claimBy") != invocation[:100] or not row.get("claimUntil") or not isinstance(etag, str):
        return None
    return etag


def on_deleting(
    row: Mapping[str, Any] | None, key: RequestKey, *, invocation: str, now: datetime, claim_seconds: float
) -> Replace | None:
    """Right before the DELETE: write ``stage = deleting`` and ``deletingAt`` on the claim's etag, and extend the claim
    over the DELETE call. ``None``: this invocation does not hold the claim (send no DELETE)."""
    etag = _held(row, key, invocation)
    if row is None or etag is None:
        return None
    return Replace(
        {
            **_without_etag(row),
            "stage": "deleting",
            "deletingAt": iso(now),
            "claimUntil": iso(now + timedelta(seconds=claim_seconds)),
            "updatedAt": iso(now),
        },
        etag,
    )


def on_release(
    row: Mapping[str, Any] | None,
    key: RequestKey,
    *,
    invocation: str,
    message: PollMessage,
    message_text: str,
    next_step_at: datetime,
    now: datetime,
) -> Replace | None:
    """After the next poll message was sent: store it as the request's state (for its hop), record the stage and the
    next step's time, and release the claim. ``None``: the claim is not this invocation's any more (write nothing)."""
    etag = _held(row, key, invocation)
    if row is None or etag is None or len(message_text) > MAX_EVENT_CHARS:
        return None
    deleting = message.deleting_at  # the hop's own view: cleared once its DELETE was answered (``shared.workflow``)
    kept = {k: v for k, v in _without_etag(row).items() if k not in ("state", "state2")}
    return Replace(
        {
            **kept,
            "stage": message.stage,
            "nextStepAt": iso(next_step_at),
            "claimUntil": "",
            "deletingAt": iso(deleting) if deleting is not None else "",
            "state": message_text[:EVENT_PART_CHARS],
            **({"state2": message_text[EVENT_PART_CHARS:]} if len(message_text) > EVENT_PART_CHARS else {}),
            "stateHop": message.attempt + 1,
            "updatedAt": iso(now),
        },
        etag,
    )


def on_finish(
    row: Mapping[str, Any] | None,
    key: RequestKey,
    *,
    outcome: str,
    event: str,
    poison: str,
    now: datetime,
    invocation: str | None = None,
) -> Insert | Replace | Republish | Done | Unrelated:
    """A hop decided ``outcome`` (its event text ``event``): write it into the row once, or publish what is there.
    ``invocation``: the claim the hop worked under (``None``: decided without a call, nothing claimed). A hop whose
    claim another invocation has taken since writes nothing and publishes nothing (``Done``): the new holder carries
    the request on, from fresh reads."""
    if len(event) > MAX_EVENT_CHARS:
        return Unrelated(f"the outcome event has {len(event)} characters, more than a row holds")
    terminal = {
        "outcome": outcome,
        "event": event[:EVENT_PART_CHARS],
        **({"event2": event[EVENT_PART_CHARS:]} if len(event) > EVENT_PART_CHARS else {}),
        "poison": poison,
        "finishedAt": iso(now),
        "updatedAt": iso(now),
        "claimUntil": "",
    }
    if row is None:
        return Insert({**_identity(key), "stage": "finished", **terminal})
    why = _mismatch(row, key)
    if why is not None:
        return Unrelated(why)
    stored = _stored(row, key)
    if stored is not None:
        return stored
    holder = row.get("claimBy")
    if invocation is not None and holder != invocation[:100]:
        return Done(f"invocation {str(holder)[:100]} holds the request's claim now")
    etag = row.get("etag")
    if not isinstance(etag, str):
        return Unrelated("the row was read without an etag")
    return Replace({**_without_etag(row), "stage": "finished", **terminal}, etag)


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
