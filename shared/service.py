"""The imperative shell: run one hop of a request. Parse, ask the core (``shared.workflow``), execute, publish.

The service has no decisions of its own. It executes the core's calls, turns every answer and every error into an
observation for the core, and publishes the core's last command: the next poll message (``Continue``) or the
request's outcome (``Finish``), written in one place (``_publish``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from shared import ledger, telemetry
from shared import workflow as core
from shared.budget import Budget
from shared.config import CONNECT_TIMEOUT_SECONDS, TOKEN_SECONDS, Settings
from shared.errors import (
    AuthenticationError,
    ConflictError,
    InvalidMessageError,
    NotFoundError,
    OutOfTimeError,
    PartnerCenterError,
    ThrottledError,
    TransientError,
    UnsafeIdError,
)
from shared.ids import derived_correlation_id
from shared.messages import (
    PollMessage,
    deletion_request_text,
    outcome_event,
    parse_deletion_request,
    parse_poll_message,
    readable_fields,
)
from shared.ports import PartnerCenterPort, PublisherPort, TablePort
from shared.tables import TableConflictError, TableError

__all__ = ["Deps", "QueueMessageLike", "handle_deletion_request", "handle_poll", "policy_for", "utc_now"]

log = logging.getLogger("customer_deletion")


def utc_now() -> datetime:
    return datetime.now(UTC)


class QueueMessageLike(Protocol):
    """What the service reads of a queue trigger's message (``azure.functions.QueueMessage``)."""

    @property
    def id(self) -> str | None: ...

    @property
    def dequeue_count(self) -> int | None: ...

    @property
    def insertion_time(self) -> datetime | None: ...

    def get_body(self) -> bytes: ...


@dataclass
class Deps:
    settings: Settings
    partner_center: PartnerCenterPort
    publisher: PublisherPort
    clock: Callable[[], datetime] = utc_now
    monotonic: Callable[[], float] = time.monotonic
    tables: TablePort | None = None  # DELETION_REQUESTS_TABLE: the request ledger and the sweep's first-seen record

    @property
    def policy(self) -> core.Policy:
        return policy_for(self.settings)


def policy_for(s: Settings) -> core.Policy:
    call_time = float(TOKEN_SECONDS + CONNECT_TIMEOUT_SECONDS + s.read_timeout)  # a token, then one attempt
    return core.Policy(
        interval=s.poll_interval,
        max_interval=s.poll_max_interval,
        timeout=s.poll_timeout,
        protected=s.protected_ids,
        hop_work=float(s.work_seconds),
        pickup=s.max_polling_interval,
        call_time=call_time,
        # A DELETE decided just before the cut-off lands within one invocation's work time (in-process waits
        # included: the budget allows no wait past it) and one more call.
        settle=s.work_seconds + call_time + 5.0,
        delete_refusal_timeout=float(s.delete_refusal_timeout),
        clear_subscriptions=s.clear_subscriptions,
    )


@dataclass(frozen=True)
class _Request:
    """Who the invocation works for: what every log line and the outcome event carry."""

    function: str
    invocation_id: str
    correlation_id: str
    customer_id: str | None
    requested_at: datetime
    dry_run: bool = False


class _Log(logging.LoggerAdapter[logging.Logger]):
    """One log line per step, each with the correlation id, customer id and invocation id in its text.

    The same values, with the hop, ``requestedAt`` and at the end the outcome, are the record's structured fields
    (``shared.telemetry``, bound by ``_bind``): custom dimensions in Application Insights.
    """

    def __init__(self, logger: logging.Logger, fields: Mapping[str, str]) -> None:
        super().__init__(logger, dict(fields))
        self.fields = fields

    def process(self, msg: str, kwargs: Any) -> tuple[str, Any]:
        e = self.fields
        return (
            f"[{e['function']}] {msg} (correlation={e['correlation_id']} customer={e['customer_id']} "
            f"invocation={e['invocation_id']})"
        ), kwargs


def _logger(req: _Request) -> _Log:
    return _Log(
        log,
        {
            "function": req.function,
            "correlation_id": req.correlation_id,
            "customer_id": req.customer_id or "-",
            "invocation_id": req.invocation_id,
        },
    )


def _bind(req: _Request, hop: int) -> None:
    """The request's structured log fields, for every record of the rest of this invocation (``shared.telemetry``)."""
    telemetry.bind(
        function=req.function,
        invocationId=req.invocation_id,
        correlationId=req.correlation_id,
        customerTenantId=req.customer_id,
        requestedAt=req.requested_at,
        hop=hop,
    )


# -- the two entry points -------------------------------------------------------------------------------------------


def handle_deletion_request(msg: QueueMessageLike, invocation_id: str, deps: Deps) -> None:
    now = deps.clock()
    body = msg.get_body() or b""
    try:
        request = parse_deletion_request(body, message_id=str(msg.id or ""), insertion_time=msg.insertion_time, now=now)
    except InvalidMessageError as exc:
        req = _Request(
            "delete_customer",
            invocation_id,
            exc.correlation_id or derived_correlation_id(str(msg.id or "")),
            exc.customer_id,
            msg.insertion_time or now,
        )
        _bind(req, 0)
        _publish(deps, req, core.reject_invalid_request(exc.reason), original=body, key=_ledger_key(deps, req))
        return
    req = _Request(
        "delete_customer",
        invocation_id,
        request.correlation_id,
        request.customer_id,
        request.requested_at,
        request.dry_run,
    )
    _bind(req, 0)
    _logger(req).info("received deletion request (dryRun=%s, delivery %s)", request.dry_run, msg.dequeue_count)
    start = core.begin_request(request, delivery=int(msg.dequeue_count or 1), now=now, policy=deps.policy)
    _run(deps, req, start, original=body)


def handle_poll(msg: QueueMessageLike, invocation_id: str, deps: Deps) -> None:
    now = deps.clock()
    body = msg.get_body() or b""
    try:
        poll = parse_poll_message(body)
    except InvalidMessageError as exc:
        customer, correlation, dry_run, requested_at = readable_fields(body)
        req = _Request(
            "poll_orders",
            invocation_id,
            correlation or exc.correlation_id or derived_correlation_id(str(msg.id or "")),
            customer,
            requested_at or msg.insertion_time or now,
            bool(dry_run),
        )
        _bind(req, 0)
        _logger(req).warning(
            "could not read a poll message (message %s, delivery %s): %s", msg.id, msg.dequeue_count, exc.reason
        )
        start: core.Hop | core.Continue | core.Finish = core.unreadable_poll(
            exc.reason,
            customer_id=customer,
            correlation_id=correlation,
            dry_run=dry_run,
            requested_at=req.requested_at,
            now=now,
            policy=deps.policy,
        )
        _run(deps, req, start, original=body)
        return
    req = _Request("poll_orders", invocation_id, poll.correlation_id, poll.customer_id, poll.requested_at, poll.dry_run)
    _bind(req, poll.attempt + 1)
    _logger(req).info(
        "poll hop %d, stage %s (message %s, delivery %s): %d order(s) known",
        poll.attempt + 1,
        poll.stage,
        msg.id,
        msg.dequeue_count,
        len(poll.orders),
    )
    start = core.begin_poll(poll, delivery=int(msg.dequeue_count or 1), now=now, policy=deps.policy)
    _run(deps, req, start, original=body)


# -- execute and publish --------------------------------------------------------------------------------------------


def _ledger_key(deps: Deps, req: _Request) -> ledger.RequestKey | None:
    """The request's row in the ledger, or ``None`` (no table, or a request without a row: see ``ledger``)."""
    if deps.tables is None:
        return None
    return ledger.request_key(req.customer_id, req.correlation_id, req.requested_at, req.dry_run)


def _run(deps: Deps, req: _Request, start: core.Hop | core.Continue | core.Finish, *, original: bytes | str) -> None:
    key = _ledger_key(deps, req)
    if not isinstance(start, core.Hop):
        try:
            _publish(deps, req, start, original=original, key=key)
        except TableError as exc:  # decided without Partner Center (protected, invalid, unreadable, past the end)
            _logger(req).warning("the request ledger could not take the outcome (%s): published without it", exc)
            _publish(deps, req, start, original=original, key=None)
        return
    unreadable: TableError | None = None
    if key is not None and deps.tables is not None:
        # Before the first Partner Center call: a decided request makes none. A row that cannot be read is an
        # observation for the core (no call is sent; the request continues on the poll queue, as in an outage).
        try:
            row = deps.tables.get(key.customer_id, key.event_id)
        except TableError as exc:
            unreadable = exc
        else:
            seen = ledger.on_hop_start(row, key)
            if isinstance(seen, ledger.Republish):
                _republish(deps, req, seen, original=original)
                return
            if isinstance(seen, ledger.Unrelated):
                _logger(req).warning("the ledger's row is not this request's (%s): going on without it", seen.why)
                key = None
            elif row is None:  # the request's first hop: its row, with what was just read (no second read)
                _record_progress(deps, req, key, stage=start.chain.stage, hop=start.chain.attempt, delay=0, absent=True)
    policy = deps.policy
    budget = Budget(policy.hop_work, float(deps.settings.retry_budget), deps.monotonic)
    hop: core.Hop = start
    observation: core.Observation | None = None
    while True:
        hop, command = core.step(hop, observation, now=deps.clock(), elapsed=budget.elapsed(), policy=policy)
        if isinstance(command, core.Finish):
            try:
                _publish(deps, req, command, original=original, key=key)
            except TableError as exc:
                retry = core.outcome_unrecorded(hop, command, deps.clock(), policy, str(exc))
                if retry is None:
                    _logger(req).warning(
                        "the request ledger could not take the outcome (%s): published without it", exc
                    )
                    _publish(deps, req, command, original=original, key=None)
                else:
                    _publish(deps, req, retry, original=original, key=key)
            return
        if isinstance(command, core.Continue):
            _publish(deps, req, command, original=original, key=key)
            return
        if unreadable is not None:  # the first call is not sent: the core decides what a missing read means
            observation = core.Failure(core.FailureKind.STORAGE, description=str(unreadable), where=command.describe())
            unreadable = None
            continue
        observation = _execute(deps, req, hop.chain, command, budget)


def _execute(deps: Deps, req: _Request, chain: PollMessage, call: core.Call, budget: Budget) -> core.Observation:
    """Make one call; its answer or its error becomes an observation. Nothing here looks at what it means."""
    pc, cid, corr = deps.partner_center, chain.customer_id, chain.correlation_id
    try:
        if isinstance(call, core.GetCustomer):
            body: Any = pc.get_customer(cid, correlation_id=corr, budget=budget)
        elif isinstance(call, core.ListEntitlements):
            body = pc.list_entitlement_order_ids(cid, correlation_id=corr, budget=budget)
        elif isinstance(call, core.GetOrder):
            body = pc.get_order(cid, call.order_id, correlation_id=corr, budget=budget)
        elif isinstance(call, core.CancelOrder):
            body = pc.cancel_order(cid, call.order_id, correlation_id=corr, budget=budget)
        elif isinstance(call, core.ListSubscriptions):
            body = pc.list_subscriptions(cid, correlation_id=corr, budget=budget)
        elif isinstance(call, core.GetSubscription):
            body = pc.get_subscription(cid, call.subscription_id, correlation_id=corr, budget=budget)
        elif isinstance(call, core.PatchSubscription):
            body = pc.patch_subscription(
                cid, call.subscription_id, dict(call.body), etag=call.etag, correlation_id=corr, budget=budget
            )
        elif isinstance(call, core.ListAzureEntitlements):
            body = pc.list_azure_entitlements(cid, call.plan_id, correlation_id=corr, budget=budget)
        elif isinstance(call, core.CancelAzureEntitlement):
            body = pc.cancel_azure_entitlement(
                cid, call.plan_id, call.entitlement_id, correlation_id=corr, budget=budget
            )
        else:
            pc.delete_customer(cid, correlation_id=corr, budget=budget)
            body = None
    except UnsafeIdError as exc:
        observation: core.Observation = core.Failure(
            core.FailureKind.UNSAFE, description=str(exc), where=call.describe()
        )
    except PartnerCenterError as exc:
        observation = core.Failure(
            _kind(exc),
            exc.status,
            exc.code,
            exc.description,
            exc.retry_after,
            f"{exc.method} {exc.path}".strip() or call.describe(),
        )
    else:
        observation = core.Answer(body)
    _logger(req).info("%s: %s", call.describe(), _summary(observation, call))
    return observation


def _kind(exc: PartnerCenterError) -> core.FailureKind:
    for error_type, kind in (
        (ThrottledError, core.FailureKind.THROTTLED),
        (OutOfTimeError, core.FailureKind.OUT_OF_TIME),
        (TransientError, core.FailureKind.TRANSIENT),
        (AuthenticationError, core.FailureKind.AUTH),
        (NotFoundError, core.FailureKind.NOT_FOUND),
        (ConflictError, core.FailureKind.CONFLICT),
    ):
        if isinstance(exc, error_type):
            return kind
    return core.FailureKind.REFUSED


def _summary(observation: core.Observation, call: core.Call) -> str:
    if isinstance(observation, core.Failure):
        return observation.text()
    body = observation.body
    if isinstance(call, (core.ListSubscriptions, core.ListAzureEntitlements)):
        items = body if isinstance(body, list) else []
        shown = [f"{s.get('id')} {core.normalise_status(s.get('status'))}" for s in items[:10] if isinstance(s, dict)]
        what = "subscription(s)" if isinstance(call, core.ListSubscriptions) else "Azure subscription(s)"
        return f"{len(items)} {what}: {', '.join(shown) or 'none'}"
    if isinstance(call, (core.PatchSubscription, core.CancelAzureEntitlement)):
        return "accepted (not proof: it is read again)"
    if isinstance(body, list):
        return f"{len(body)} order(s): {', '.join(body) or 'none'}"
    if isinstance(body, dict) and "status" in body:
        return f"status {core.normalise_status(body.get('status'))}"
    return "ok"


def _publish(
    deps: Deps,
    req: _Request,
    command: core.Continue | core.Finish,
    *,
    original: bytes | str,
    key: ledger.RequestKey | None = None,
) -> None:
    """The only place a poll message, a poison copy or an outcome event is sent (and a ledger row written)."""
    s = deps.settings
    line = _logger(req)
    if isinstance(command, core.Continue):
        deps.publisher.send(s.poll_queue, command.message.to_text(), delay=command.delay)
        # A refused DELETE after every order read cancelled is worth a warning each time: something the app cannot
        # see (or clear) blocks the customer, and the request will end failed at DELETE_REFUSAL_TIMEOUT_SECONDS.
        refused = command.message.cause == core.Cause.DELETE_REFUSED.value
        line.log(logging.WARNING if refused else logging.INFO, "%s: next hop in %ds", command.why, command.delay)
        if key is not None:
            _record_progress(
                deps, req, key, stage=command.message.stage, hop=command.message.attempt, delay=command.delay
            )
        return
    event = outcome_event(
        outcome=command.outcome.value,
        customer_id=req.customer_id,
        correlation_id=req.correlation_id,
        orders=command.orders,
        subscriptions=command.subscriptions,
        poll_attempts=command.poll_attempts,
        detail=command.detail,
        requested_at=req.requested_at,
        finished_at=deps.clock(),
        dry_run=req.dry_run,
    )
    if key is not None:
        decided = _decide_once(deps, req, key, command, event)
        if decided is not None:
            _republish(deps, req, decided, original=original)
            return
    _send_outcome(deps, req, command.poison, event, command.outcome.value, original=original)
    ok = command.outcome in (core.Outcome.DELETED, core.Outcome.NOT_FOUND, core.Outcome.DRY_RUN)
    line.log(logging.INFO if ok else logging.WARNING, "outcome %s: %s", command.outcome.value, command.detail)


#: A conditional write of the ledger that loses is read and decided again, at most this many times.
LEDGER_ATTEMPTS = 3


def _decide_once(
    deps: Deps, req: _Request, key: ledger.RequestKey, command: core.Finish, event: str
) -> ledger.Republish | None:
    """Write this hop's outcome into the request's row, unless one is there already: then that stored one is what
    is published (returned). ``None``: this hop's outcome is the request's (written, or the row is not this
    request's). A table fault raises ``TableError`` before anything is published (the caller asks the core what
    then: ``core.outcome_unrecorded``)."""
    table = deps.tables
    assert table is not None  # a key is only made with a table
    for attempt in range(LEDGER_ATTEMPTS + 1):
        plan = ledger.on_finish(
            table.get(key.customer_id, key.event_id),
            key,
            outcome=command.outcome.value,
            event=event,
            poison=command.poison.value,
            now=deps.clock(),
        )
        if isinstance(plan, ledger.Republish):
            return plan
        if isinstance(plan, ledger.Unrelated):
            _logger(req).warning("the outcome is published without the ledger (%s)", plan.why)
            return None
        if attempt == LEDGER_ATTEMPTS:  # read once more after the last refused write: it may have been this one's
            break
        try:
            _write_row(table, plan)
        except TableConflictError:
            continue  # another hop wrote first, or a retried write met its own first attempt: read again
        return None
    raise TableError(f"the request's row changed {LEDGER_ATTEMPTS} times while this hop wrote its outcome")


def _write_row(table: TablePort, plan: ledger.Insert | ledger.Replace) -> None:
    """The ledger core's write: an insert, or a replace on the etag it was read with."""
    if isinstance(plan, ledger.Insert):
        table.insert(plan.row)
    else:
        table.replace(plan.row, plan.etag)


def _record_progress(
    deps: Deps, req: _Request, key: ledger.RequestKey, *, stage: str, hop: int, delay: int, absent: bool = False
) -> None:
    """Where the request stands, for the status API (at a request's first hop, and after each poll message). Best
    effort: the poll message carries the state. ``absent``: the caller has just read that there is no row."""
    table = deps.tables
    assert table is not None
    now = deps.clock()
    try:
        for attempt in range(LEDGER_ATTEMPTS):
            plan = ledger.on_progress(
                None if absent and attempt == 0 else table.get(key.customer_id, key.event_id),
                key,
                stage=stage,
                hop=hop,
                next_step_at=now + timedelta(seconds=delay),
                now=now,
            )
            if plan is None:
                return
            try:
                _write_row(table, plan)
            except TableConflictError:
                continue
            return
    except TableError as exc:
        _logger(req).warning("the ledger's progress was not recorded (%s); the next hop records it", exc)


def _republish(deps: Deps, req: _Request, stored: ledger.Republish, *, original: bytes | str) -> None:
    """The request's outcome was decided by an earlier hop: send that stored event again, unchanged."""
    _logger(req).info("the outcome was decided already (the ledger holds it): publishing it again, unchanged")
    _send_outcome(deps, req, core.Poison(stored.poison), stored.event, stored.outcome, original=original)


def _send_outcome(
    deps: Deps, req: _Request, poison: core.Poison, event: str, outcome: str, *, original: bytes | str
) -> None:
    """The poison copy (if any), then the outcome event."""
    s = deps.settings
    if poison is core.Poison.ORIGINAL:
        deps.publisher.send(s.delete_poison_queue, original)
    elif poison is core.Poison.POLL_ORIGINAL:
        deps.publisher.send(s.poll_poison_queue, original)
    elif poison is core.Poison.EQUIVALENT and req.customer_id:
        deps.publisher.send(
            s.delete_poison_queue, deletion_request_text(req.customer_id, req.correlation_id, dry_run=req.dry_run)
        )
    if poison is not core.Poison.NONE:
        _logger(req).warning("copied the request to a poison queue for a redrive (%s)", poison.value)
    deps.publisher.send(s.outcomes_queue, event)
    telemetry.bind(outcome=outcome)
