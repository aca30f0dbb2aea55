"""The imperative shell: run one hop of a request. Parse, ask the core (``shared.workflow``), execute, publish.

The service has no decisions of its own. It executes the core's calls, turns every answer and every error into an
observation for the core, and publishes the core's last command: the next poll message (``Continue``) or the
request's outcome (``Finish``), written in one place (``_publish``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
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
        # A decided DELETE has landed once the claim it was sent under has run out (``deletingAt`` + CLAIM_SECONDS).
        settle=s.claim_seconds,
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
    message_id: str = ""  # the queue message's id: a redelivery of it has the same


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
            message_id=str(msg.id or ""),
        )
        _bind(req, 0)
        _run(deps, req, core.reject_invalid_request(exc.reason), original=body, hop_no=ledger.REQUEST_HOP)
        return
    req = _Request(
        "delete_customer",
        invocation_id,
        request.correlation_id,
        request.customer_id,
        request.requested_at,
        request.dry_run,
        str(msg.id or ""),
    )
    _bind(req, 0)
    _logger(req).info("received deletion request (dryRun=%s, delivery %s)", request.dry_run, msg.dequeue_count)
    start = core.begin_request(request, delivery=int(msg.dequeue_count or 1), now=now, policy=deps.policy)
    _run(deps, req, start, original=body, hop_no=ledger.REQUEST_HOP)


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
            str(msg.id or ""),
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
        _run(deps, req, start, original=body, hop_no=None)
        return
    req = _Request(
        "poll_orders",
        invocation_id,
        poll.correlation_id,
        poll.customer_id,
        poll.requested_at,
        poll.dry_run,
        str(msg.id or ""),
    )
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
    _run(deps, req, start, original=body, hop_no=ledger.hop_number(poll, request=False), legacy=poll.row_key is None)


# -- execute and publish --------------------------------------------------------------------------------------------


def _ledger_key(deps: Deps, req: _Request) -> ledger.RequestKey | None:
    """The request's row in the ledger, or ``None`` (no table, or a request without a row: see ``ledger``)."""
    if deps.tables is None:
        return None
    return ledger.request_key(req.customer_id, req.correlation_id, req.requested_at, req.dry_run)


@dataclass
class _Claim:
    """The row as this invocation last wrote it (with its etag), while it holds the request's claim."""

    row: dict[str, Any] | None = None
    held: bool = False  # the claim was written by this invocation (it may have been lost since: see ``row``)


def _run(
    deps: Deps,
    req: _Request,
    start: core.Hop | core.Continue | core.Finish,
    *,
    original: bytes | str,
    hop_no: int | None,
    legacy: bool = False,
) -> None:
    """One hop: claim the request's row, then step the core, executing its calls, until it continues or finishes.
    ``hop_no``: the incoming message's hop (``None``: an unreadable poll message). ``legacy``: the message was written
    by a release without rows."""
    key = _ledger_key(deps, req)
    if not isinstance(start, core.Hop):
        _run_without_calls(deps, req, start, original=original, key=key, hop_no=hop_no)
        return
    if deps.tables is None:
        raise RuntimeError("the request ledger (DELETION_REQUESTS_TABLE) is required to run a hop")
    if key is None:  # a hop always has GUID ids (see ``ledger.request_key``); refuse rather than work unclaimed
        _publish(deps, req, core.refuse_unclaimed(start, "the request has no ledger key"), original=original)
        return
    policy = deps.policy
    # The work budget starts before the claim is read and written, so the claim (counted from a moment after this)
    # outlasts every call the hop starts: slow table calls take from the hop's work time, never from the claim's.
    budget = Budget(policy.hop_work, float(deps.settings.retry_budget), deps.monotonic)
    claim = _Claim()
    unreadable: TableError | None = None
    try:
        claimed = _claim(deps, req, key, start, hop_no=hop_no, legacy=legacy, claim=claim, original=original)
    except TableError as exc:  # no call is sent; the core decides what a missing claim means
        unreadable = exc
    else:
        if claimed is None:
            return
        start = claimed
        if not isinstance(start, core.Hop):  # the row's state puts this hop past a milestone
            try:
                _publish(deps, req, start, original=original, key=key, claim=claim)
            except TableError as exc:
                retry = core.decided_unrecorded(request=False, policy=policy, why=str(exc))
                _publish(deps, req, retry or start, original=original)
            return
    hop: core.Hop = start
    observation: core.Observation | None = None
    while True:
        hop, command = core.step(hop, observation, now=deps.clock(), elapsed=budget.elapsed(), policy=policy)
        if isinstance(command, core.Finish):
            try:
                _publish(deps, req, command, original=original, key=key, claim=claim)
            except TableError as exc:
                _logger(req).warning("the request ledger could not take the outcome (%s): nothing published", exc)
                _publish(
                    deps,
                    req,
                    core.outcome_unrecorded(hop, command, deps.clock(), policy, str(exc)),
                    original=original,
                    key=key,
                    claim=claim,
                )
            return
        if isinstance(command, (core.Continue, core.Retry)):
            _publish(deps, req, command, original=original, key=key, claim=claim)
            return
        if unreadable is not None:  # the first call is not sent: the core decides what a missing claim means
            observation = core.Failure(core.FailureKind.STORAGE, description=str(unreadable), where=command.describe())
            unreadable = None
            continue
        if isinstance(command, core.DeleteCustomer):
            lost = _mark_deleting(deps, req, key, claim)
            if lost is not None:  # no DELETE without the claim: the core continues as in an outage
                observation = core.Failure(core.FailureKind.STORAGE, description=lost, where=command.describe())
                continue
        observation = _execute(deps, req, hop.chain, command, budget)


def _claim(
    deps: Deps,
    req: _Request,
    key: ledger.RequestKey,
    start: core.Hop,
    *,
    hop_no: int | None,
    legacy: bool,
    claim: _Claim,
    original: bytes | str,
) -> core.Hop | core.Continue | core.Finish | None:
    """Claim the request's row before the hop's first call (``shared.ledger``). Returns the hop to run, from the row's
    state, or what to publish instead; ``None``: the hop is over (re-scheduled, or nothing left to do). Raises
    ``TableError`` when the row cannot be read or claimed."""
    table = deps.tables
    assert table is not None
    line = _logger(req)
    chain = start.chain if start.entry is not core.Entry.UNREADABLE else None
    for _attempt in range(LEDGER_ATTEMPTS):
        now = deps.clock()
        decision = ledger.on_hop_start(
            table.get(key.customer_id, key.event_id),
            key,
            hop=hop_no,
            chain=chain,
            invocation=req.invocation_id,
            now=now,
            claim_seconds=deps.settings.claim_seconds,
            legacy=legacy,
            message_id=req.message_id,
        )
        if isinstance(decision, ledger.Republish):
            _republish(deps, req, decision, original=original)
            return None
        if isinstance(decision, ledger.Done):
            line.info("nothing left to do for this message (%s): completed without a call", decision.why)
            return None
        if isinstance(decision, ledger.Unrelated):
            line.warning("the ledger's row is not this request's (%s): refusing to work on it", decision.why)
            _publish(deps, req, core.refuse_unclaimed(start, decision.why), original=original)
            return None
        if isinstance(decision, ledger.Wait):
            again = original if req.function == "poll_orders" else replace(start.chain, row_key=key.event_id).to_text()
            deps.publisher.send(deps.settings.poll_queue, again, delay=decision.delay)
            line.info(
                "the request is claimed by invocation %s until %s: this message comes back in %ds, no call made",
                decision.holder,
                decision.until.isoformat(timespec="seconds"),
                decision.delay,
            )
            return None
        try:
            etag = _write_row(table, decision.write)
        except TableConflictError:
            continue  # another hop claimed first, or the retried write met its own first attempt: read again
        if decision.taken_over is not None:
            line.warning("took over the claim of invocation %s, which ran out unreleased", decision.taken_over)
        claim.row, claim.held = {**decision.write.row, "etag": etag}, True
        if etag is None:
            claim.row = table.get(key.customer_id, key.event_id)
        merged = decision.chain
        if merged is None or merged == start.chain:
            return start
        if req.function == "poll_orders":  # the row's state: decided again from it, as a first delivery
            return core.begin_poll(merged, delivery=1, now=deps.clock(), policy=deps.policy)
        return replace(start, chain=merged)
    raise TableError(f"the request's row changed {LEDGER_ATTEMPTS} times while this hop claimed it")


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


def _run_without_calls(
    deps: Deps,
    req: _Request,
    start: core.Continue | core.Finish,
    *,
    original: bytes | str,
    key: ledger.RequestKey | None,
    hop_no: int | None,
) -> None:
    """What the core decided without a call: a hand-over or a wait (``Continue``), or an outcome (protected, invalid,
    past the hard end). A hand-over reads the row first: an outcome decided, or a later hop, makes it unnecessary, and
    the row's first handling keeps the request's cut-off. Nothing is claimed, and a table fault changes nothing."""
    if isinstance(start, core.Continue):
        if key is not None and deps.tables is not None and hop_no is not None:
            try:
                row = deps.tables.get(key.customer_id, key.event_id)
            except TableError as exc:
                _logger(req).warning("the request ledger could not be read (%s): handing over without it", exc)
            else:
                seen = ledger.on_handover(row, key, hop=hop_no, message_id=req.message_id, now=deps.clock())
                if isinstance(seen, ledger.Republish):
                    _republish(deps, req, seen, original=original)
                    return
                if isinstance(seen, ledger.Done):
                    _logger(req).info("nothing left to do for this message (%s): completed without a call", seen.why)
                    return
                if isinstance(seen, ledger.Proceed):
                    start = replace(start, message=ledger.chain_from_row(row, start.message, None))
                    if seen.expire is not None:
                        _expire_claim(deps, req, seen.expire)
        _publish(deps, req, start, original=original, key=key)
        return
    try:
        _publish(deps, req, start, original=original, key=key)
    except TableError as exc:  # decided without Partner Center (protected, invalid, past the end)
        retry = core.decided_unrecorded(request=req.function == "delete_customer", policy=deps.policy, why=str(exc))
        if retry is not None:
            _publish(deps, req, retry, original=original)
            return
        _logger(req).warning("the request ledger could not take the outcome (%s): published without it", exc)
        _publish(deps, req, start, original=original, key=None)


def _expire_claim(deps: Deps, req: _Request, plan: ledger.Replace) -> None:
    """A redelivered message's earlier delivery died holding the request's claim (the host's lease ran out, so it no
    longer runs): end that claim now, on its etag, so that the hand-over's message need not wait for it. Best effort."""
    assert deps.tables is not None
    try:
        _write_row(deps.tables, plan)
    except TableError as exc:  # a conflict too: the row changed, so the claim is someone else's concern now
        _logger(req).info("the dead delivery's claim was left to run out (%s)", exc)
    else:
        _logger(req).info("ended the claim of this message's earlier delivery, which died holding it")


def _publish(
    deps: Deps,
    req: _Request,
    command: core.Continue | core.Finish | core.Retry,
    *,
    original: bytes | str,
    key: ledger.RequestKey | None = None,
    claim: _Claim | None = None,
) -> None:
    """The only place a poll message, a poison copy or an outcome event is sent (and the ledger row released or
    decided). ``claim``: the hop's claim, released after the next poll message is sent."""
    s = deps.settings
    line = _logger(req)
    if isinstance(command, core.Retry):  # only poll_orders retries its own message (``core.Retry``)
        deps.publisher.send(s.poll_queue, original, delay=command.delay)
        line.warning("%s: this message comes back in %ds, as it is", command.why, command.delay)
        return
    if isinstance(command, core.Continue):
        message = command.message if key is None else replace(command.message, row_key=key.event_id)
        text = message.to_text()
        deps.publisher.send(s.poll_queue, text, delay=command.delay)
        # A refused DELETE after every order read cancelled is worth a warning each time: something the app cannot
        # see (or clear) blocks the customer, and the request will end failed at DELETE_REFUSAL_TIMEOUT_SECONDS.
        refused = command.message.cause == core.Cause.DELETE_REFUSED.value
        line.log(logging.WARNING if refused else logging.INFO, "%s: next hop in %ds", command.why, command.delay)
        if key is not None and claim is not None and claim.held:
            _release(deps, req, key, claim, message, text, command.delay)
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
        decided = _decide_once(deps, req, key, command, event, claim)
        if isinstance(decided, ledger.Done):
            line.info("outcome %s not published: %s, and carries the request on", command.outcome.value, decided.why)
            return
        if decided is not None:
            _republish(deps, req, decided, original=original)
            return
    _send_outcome(deps, req, command.poison, event, command.outcome.value, original=original)
    ok = command.outcome in (core.Outcome.DELETED, core.Outcome.NOT_FOUND, core.Outcome.DRY_RUN)
    line.log(logging.INFO if ok else logging.WARNING, "outcome %s: %s", command.outcome.value, command.detail)


#: A conditional write of the ledger that loses is read and decided again, at most this many times.
LEDGER_ATTEMPTS = 3


def _decide_once(
    deps: Deps, req: _Request, key: ledger.RequestKey, command: core.Finish, event: str, claim: _Claim | None
) -> ledger.Republish | ledger.Done | None:
    """Write this hop's outcome into the request's row, unless one is there already: then that stored one is what
    is published (returned). ``Done``: another invocation took the claim since; it carries the request on. ``None``:
    this hop's outcome is the request's (written, or the row is not this request's). A table fault raises
    ``TableError`` before anything is published (the caller asks the core what then: ``core.outcome_unrecorded``)."""
    table = deps.tables
    assert table is not None  # a key is only made with a table
    held = claim is not None and claim.held
    row = claim.row if held and claim is not None and claim.row is not None else None
    for attempt in range(LEDGER_ATTEMPTS + 1):
        if row is None or attempt > 0:
            row = table.get(key.customer_id, key.event_id)
        plan = ledger.on_finish(
            row,
            key,
            outcome=command.outcome.value,
            event=event,
            poison=command.poison.value,
            now=deps.clock(),
            invocation=req.invocation_id if held else None,
        )
        if isinstance(plan, (ledger.Republish, ledger.Done)):
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


def _write_row(table: TablePort, plan: ledger.Insert | ledger.Replace) -> str | None:
    """The ledger core's write: an insert, or a replace on the etag it was read with. Returns the new etag."""
    if isinstance(plan, ledger.Insert):
        return table.insert(plan.row)
    return table.replace(plan.row, plan.etag)


def _mark_deleting(deps: Deps, req: _Request, key: ledger.RequestKey, claim: _Claim) -> str | None:
    """Right before the DELETE: the ``deleting`` write on the claim's etag. ``None``: written, the claim is this
    invocation's; otherwise why no DELETE may be sent."""
    table = deps.tables
    assert table is not None
    now = deps.clock()
    plan = ledger.on_deleting(
        claim.row, key, invocation=req.invocation_id, now=now, claim_seconds=deps.settings.claim_seconds
    )
    if plan is None:
        return "this invocation does not hold the request's claim"
    try:
        etag = _write_row(table, plan)
    except TableConflictError:
        try:  # another invocation claimed the row, or the retried write met its own first attempt: read to know
            row = table.get(key.customer_id, key.event_id)
        except TableError as exc:
            claim.row = None
            return f"the deleting mark could not be confirmed ({exc})"
        mine = {k: plan.row.get(k) for k in ("claimBy", "deletingAt", "stage")}
        if row is not None and all(row.get(k) == v for k, v in mine.items()):
            claim.row = row
            return None
        claim.row = None
        return "another invocation claimed the request since this hop did"
    except TableError as exc:
        claim.row = None
        return f"the deleting mark could not be written ({exc})"
    claim.row = {**plan.row, "etag": etag} if etag is not None else table.get(key.customer_id, key.event_id)
    return None


def _release(
    deps: Deps, req: _Request, key: ledger.RequestKey, claim: _Claim, message: PollMessage, text: str, delay: int
) -> None:
    """After the next poll message is sent: the row takes it as the request's state, and the claim is released. Best
    effort: a row that cannot take it keeps the claim until it runs out, and the next hop claims it then."""
    table = deps.tables
    assert table is not None
    now = deps.clock()
    plan = ledger.on_release(
        claim.row,
        key,
        invocation=req.invocation_id,
        message=message,
        message_text=text,
        next_step_at=now + timedelta(seconds=delay),
        now=now,
    )
    if plan is None:
        return
    try:
        _write_row(table, plan)
    except TableError as exc:  # a conflict too: the claim was taken over; the new holder writes the row
        _logger(req).warning("the ledger's row was not released (%s); the next hop claims it when it runs out", exc)


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
