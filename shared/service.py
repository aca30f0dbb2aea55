"""The two use cases: handle a deletion request, handle a poll hop. Load, decide (``shared.workflow``), act.

Every request ends in exactly one outcome event (only a redelivery the app cannot detect may repeat it). A request
that cannot be processed (invalid, refused, timed out, or delivered ``maxDequeueCount`` times without completing)
also waits in ``<DELETE_CUSTOMER_QUEUE>-poison`` for a redrive.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

from shared.config import MAX_QUEUE_DELAY_SECONDS, Settings
from shared.errors import (
    ConflictError,
    InvalidMessageError,
    NotFoundError,
    PartnerCenterError,
    RefusedError,
    ThrottledError,
    UnsafeIdError,
)
from shared.ids import derived_correlation_id
from shared.messages import (
    OrderState,
    PollMessage,
    deletion_request_text,
    outcome_event,
    parse_deletion_request,
    parse_poll_message,
)
from shared.workflow import Policy, after_delete_refused, decide, first_poll_delay, needs_cancel, past_deadline

__all__ = ["Deps", "QueueMessageLike", "handle_deletion_request", "handle_poll", "is_active_orders_refusal", "utc_now"]

log = logging.getLogger("customer_deletion")

#: Partner Center's refusal of a DELETE while orders are active (reference §3.8): "Customer relationship cannot be
#: removed due to active Azure reserved instances.Please cancel the following orders: ..."
_ACTIVE_ORDERS_RE = re.compile(r"cannot be removed due to active|please cancel the following orders", re.IGNORECASE)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class QueueMessageLike(Protocol):
    id: Any
    dequeue_count: Any
    insertion_time: Any

    def get_body(self) -> bytes: ...


@dataclass
class Deps:
    settings: Settings
    partner_center: Any  # PartnerCenterClient
    publisher: Any  # QueuePublisher
    clock: Callable[[], datetime] = utc_now

    @property
    def policy(self) -> Policy:
        s = self.settings
        return Policy(interval=s.poll_interval, max_interval=s.poll_max_interval, timeout=s.poll_timeout)


def is_active_orders_refusal(error: PartnerCenterError) -> bool:
    return isinstance(error, (RefusedError, ConflictError)) and bool(_ACTIVE_ORDERS_RE.search(error.description or ""))


def _refusal_text(error: PartnerCenterError) -> str:
    code = f" (code {error.code})" if error.code else ""
    return f"Partner Center refused {error.method} {error.path} with HTTP {error.status}{code}: {error.description or 'no description'}"


class _Step(logging.LoggerAdapter):
    """One log line per step, each with the correlation id, customer id and invocation id."""

    def process(self, msg: str, kwargs: Any) -> tuple[str, Any]:
        e = self.extra
        kwargs.setdefault("extra", {}).update(e)
        return f"[{e['function']}] {msg} (correlation={e['correlation_id']} customer={e['customer_id']} invocation={e['invocation_id']})", kwargs


class _Run:
    """State of one invocation: what to log with, and the single place outcomes are emitted."""

    def __init__(self, deps: Deps, function: str, invocation_id: str, correlation_id: str, customer_id: str | None, requested_at: datetime):
        self.deps = deps
        self.settings = deps.settings
        self.correlation_id = correlation_id
        self.customer_id = customer_id
        self.requested_at = requested_at
        self.log = _Step(log, {"function": function, "correlation_id": correlation_id, "customer_id": customer_id or "-", "invocation_id": invocation_id})

    def finish(self, outcome: str, detail: str, *, orders: tuple[OrderState, ...] | list[OrderState] = (), poll_attempts: int = 0,
               poison: bytes | str | None = None, poison_queue: str | None = None) -> None:
        if poison is not None:
            queue = poison_queue or self.settings.delete_poison_queue
            self.deps.publisher.send(queue, poison)
            self.log.warning("copied the message to %s for a redrive", queue)
        event = outcome_event(
            outcome=outcome, customer_id=self.customer_id, correlation_id=self.correlation_id, orders=orders,
            poll_attempts=poll_attempts, detail=detail, requested_at=self.requested_at, finished_at=self.deps.clock(),
        )
        self.deps.publisher.send(self.settings.outcomes_queue, event)
        level = logging.INFO if outcome in ("deleted", "not_found", "dry_run") else logging.WARNING
        self.log.log(level, "outcome %s: %s", outcome, detail)


def _give_up_detail(count: int, stage: str) -> str:
    return (f"gave up: the {stage} was delivered {count} times (maxDequeueCount) without completing; the earlier "
            "invocations failed or were cut off (see the log lines with this correlation id)")


# ---------------------------------------------------------------------------------------------------------------
# delete_customer
# ---------------------------------------------------------------------------------------------------------------

def handle_deletion_request(msg: QueueMessageLike, invocation_id: str, deps: Deps) -> None:
    settings = deps.settings
    now = deps.clock()
    body = msg.get_body() or b""
    message_id = str(msg.id or "")
    try:
        request = parse_deletion_request(body, message_id=message_id, insertion_time=msg.insertion_time, now=now)
    except InvalidMessageError as exc:
        run = _Run(deps, "delete_customer", invocation_id, exc.correlation_id or derived_correlation_id(message_id),
                   exc.customer_id, msg.insertion_time or now)
        run.finish("rejected", f"invalid deletion request: {exc.reason}; nothing was sent to Partner Center", poison=body)
        return

    run = _Run(deps, "delete_customer", invocation_id, request.correlation_id, request.customer_id, request.requested_at)
    run.log.info("received deletion request (dryRun=%s, delivery %s)", request.dry_run, msg.dequeue_count)

    if request.customer_id in settings.protected_ids:
        run.finish("rejected", "customer is listed in PROTECTED_CUSTOMER_IDS and is never deleted; nothing was changed")
        return
    if (msg.dequeue_count or 1) >= settings.max_dequeue_count:
        run.finish("failed", _give_up_detail(msg.dequeue_count, "deletion request"), poison=body)
        return

    chain = PollMessage(request.customer_id, request.correlation_id, (), 0, request.requested_at, now)
    try:
        orders = _discover(run, deps, request.customer_id, request.dry_run, poison=body)
    except ThrottledError as exc:
        # Not slept through, and not raised either: the host would retry after visibilityTimeout, ignoring
        # Retry-After, and a storm would use up maxDequeueCount. The discovery continues on the poll queue instead.
        discover = replace(chain, stage="discover", dry_run=request.dry_run)
        delay = _throttle_delay(exc, settings)
        deps.publisher.send(settings.poll_queue, discover.to_text(), delay=delay)
        run.log.warning("throttled by Partner Center (Retry-After %ss): the discovery continues on the poll queue in %ds", exc.retry_after, delay)
        return
    if orders is None:
        return
    _first_poll(deps, run, chain, orders)


def _discover(run: "_Run", deps: Deps, customer_id: str, dry_run: bool, *, poison: bytes | str, poll_attempts: int = 0) -> list[OrderState] | None:
    """Find the customer's orders and cancel those not cancelled. ``None``: the request ended here with an outcome.

    Raises ``ThrottledError`` (Retry-After longer than the retry budget) and transient errors for the caller.
    """
    pc = deps.partner_center
    cid = run.correlation_id
    try:
        try:
            pc.get_customer(customer_id, correlation_id=cid)
        except NotFoundError as exc:
            run.finish("not_found", f"Partner Center has no such customer: {_refusal_text(exc)}", poll_attempts=poll_attempts)
            return None
        order_ids = pc.list_entitlement_order_ids(customer_id, correlation_id=cid)
        run.log.info("found %d order(s) to cancel: %s", len(order_ids), ", ".join(order_ids) or "none")
        orders = [OrderState(oid, _status(pc.get_order(customer_id, oid, correlation_id=cid))) for oid in order_ids]

        if dry_run:
            active = [o.id for o in orders if not o.cancelled]
            run.finish("dry_run", (f"dry run: would cancel {len(active)} order(s) ({', '.join(active) or 'none'}), "
                                   f"wait until all {len(orders)} read cancelled, then DELETE the customer; nothing was changed"),
                       orders=orders, poll_attempts=poll_attempts)
            return None

        for i, order in enumerate(orders):
            if not order.cancelled:
                orders[i] = _cancel(pc, run, customer_id, order)
        return orders
    except NotFoundError as exc:
        if _customer_gone(pc, customer_id, cid):
            run.finish("not_found", "the customer disappeared while its orders were read (deleted elsewhere?)", poll_attempts=poll_attempts)
        else:
            run.finish("failed", _refusal_text(exc), poison=poison, poll_attempts=poll_attempts)
    except RefusedError as exc:
        run.finish("failed", _refusal_text(exc), poison=poison, poll_attempts=poll_attempts)
    except UnsafeIdError as exc:
        run.finish("failed", f"refused to continue: {exc}", poison=poison, poll_attempts=poll_attempts)
    return None


def _first_poll(deps: Deps, run: "_Run", template: PollMessage, orders: list[OrderState]) -> None:
    """After the orders were cancelled: the first poll, with no delay when nothing has to be waited for."""
    delay = first_poll_delay(orders, deps.policy)
    poll = replace(template, orders=tuple(orders), stage="poll", dry_run=False)
    deps.publisher.send(deps.settings.poll_queue, poll.to_text(), delay=delay)
    run.log.info("enqueued the first poll in %ds (%d of %d order(s) not yet cancelled)", delay, sum(not o.cancelled for o in orders), len(orders))


def _throttle_delay(exc: ThrottledError, settings: Settings) -> int:
    return int(min(MAX_QUEUE_DELAY_SECONDS, max(1, round(exc.retry_after or settings.poll_interval))))


def _status(order: Any) -> str:
    status = order.get("status") if isinstance(order, dict) else None
    return status.strip().lower()[:40] if isinstance(status, str) and status.strip() else "unknown"


def _cancel(pc: Any, run: _Run, customer_id: str, order: OrderState) -> OrderState:
    try:
        answer = pc.cancel_order(customer_id, order.id, correlation_id=run.correlation_id)
    except ConflictError as exc:
        run.log.info("order %s is in progress, will check it on the next poll: %s", order.id, exc.description)
        return order
    status = _status(answer)
    new = OrderState(order.id, "pending" if status == "unknown" else status)
    run.log.info("cancelled order %s (was %s, now %s)", order.id, order.status, new.status)
    return new


def _customer_gone(pc: Any, customer_id: str, correlation_id: str) -> bool:
    try:
        pc.get_customer(customer_id, correlation_id=correlation_id)
    except NotFoundError:
        return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# poll_orders
# ---------------------------------------------------------------------------------------------------------------

def handle_poll(msg: QueueMessageLike, invocation_id: str, deps: Deps) -> None:
    settings = deps.settings
    now = deps.clock()
    body = msg.get_body() or b""
    try:
        poll = parse_poll_message(body)
    except InvalidMessageError as exc:
        run = _Run(deps, "poll_orders", invocation_id, exc.correlation_id or derived_correlation_id(str(msg.id or "")),
                   exc.customer_id, msg.insertion_time or now)
        run.finish("rejected", f"invalid poll message: {exc.reason}; nothing was sent to Partner Center",
                   poison=body, poison_queue=settings.poll_poison_queue)
        return

    run = _Run(deps, "poll_orders", invocation_id, poll.correlation_id, poll.customer_id, poll.requested_at)
    hop = poll.attempt + 1
    run.log.info("poll hop %d (message %s, delivery %s): %d order(s) not yet seen cancelled", hop, msg.id, msg.dequeue_count,
                 sum(not o.cancelled for o in poll.orders))
    redrive = deletion_request_text(poll.customer_id, poll.correlation_id, dry_run=poll.dry_run)  # a dry run stays a dry run

    if poll.customer_id in settings.protected_ids:
        run.finish("rejected", "customer is listed in PROTECTED_CUSTOMER_IDS and is never deleted; no DELETE was sent",
                   orders=poll.orders, poll_attempts=hop)
        return
    if (msg.dequeue_count or 1) >= settings.max_dequeue_count:
        run.finish("failed", _give_up_detail(msg.dequeue_count, "poll message"), orders=poll.orders, poll_attempts=hop, poison=redrive)
        return

    if poll.stage == "discover":
        _discover_hop(deps, run, poll, now, hop, redrive)
        return

    pc = deps.partner_center
    orders = list(poll.orders)
    try:
        for i, order in enumerate(orders):
            if order.cancelled:
                continue
            try:
                orders[i] = OrderState(order.id, _status(pc.get_order(poll.customer_id, order.id, correlation_id=poll.correlation_id)))
            except ConflictError:
                pass
            if needs_cancel(orders[i]):
                run.log.info("order %s reads %s (not cancelled, not pending): cancelling it again", order.id, orders[i].status)
                orders[i] = _cancel(pc, run, poll.customer_id, orders[i])
            if not orders[i].cancelled:
                # One open order is enough to know the DELETE must wait: the rest are read on a later hop. This keeps
                # a hop to a few calls, which matters under Partner Center's rate limit.
                break

        decision = decide(tuple(orders), attempt=poll.attempt, first_handled_at=poll.first_handled_at, now=now, policy=deps.policy)
        if decision.action == "timed_out":
            run.finish("timed_out", (f"orders not seen cancelled {settings.poll_timeout}s after the request was first handled: "
                                     f"{', '.join(decision.open_orders)}; no DELETE was sent"),
                       orders=orders, poll_attempts=hop, poison=redrive)
            return
        if decision.action == "repoll":
            _repoll(deps, run, poll, orders, decision.delay, f"{len(decision.open_orders)} order(s) not yet cancelled")
            return

        # decision.action == "delete": every order found to cancel reads cancelled.
        try:
            pc.delete_customer(poll.customer_id, correlation_id=poll.correlation_id)
        except (RefusedError, ConflictError) as exc:
            if isinstance(exc, NotFoundError):
                raise
            if not is_active_orders_refusal(exc):
                raise
            refusals = poll.delete_refusals + 1
            retry = after_delete_refused(refusals, attempt=poll.attempt, policy=deps.policy)
            if retry.action == "failed":
                run.finish("failed", f"DELETE refused {refusals} times because orders are still active: {_refusal_text(exc)}",
                           orders=orders, poll_attempts=hop, poison=redrive)
                return
            # Read every order again on the next hop: one that read cancelled may have fallen back.
            reread = [OrderState(o.id, "unknown") for o in orders]
            _repoll(deps, run, replace(poll, delete_refusals=refusals), reread, retry.delay,
                    f"DELETE refused while orders are active ({exc.description})")
            return
        run.finish("deleted", f"all {len(orders)} order(s) cancelled; DELETE accepted, the customer tenant is purged",
                   orders=orders, poll_attempts=hop)
    except NotFoundError as exc:
        # A 404 counts as "the customer is gone" only when the customer itself is confirmed gone.
        if _customer_gone(pc, poll.customer_id, poll.correlation_id):
            run.finish("deleted", ("the customer no longer exists (confirmed with GET customer) after it existed when the "
                                   "request was first handled: an earlier DELETE took effect"), orders=orders, poll_attempts=hop)
        else:
            run.finish("failed", _refusal_text(exc), orders=orders, poll_attempts=hop, poison=redrive)
    except RefusedError as exc:
        run.finish("failed", _refusal_text(exc), orders=orders, poll_attempts=hop, poison=redrive)
    except UnsafeIdError as exc:
        run.finish("failed", f"refused to continue: {exc}", orders=orders, poll_attempts=hop, poison=redrive)
    except ThrottledError as exc:
        _repoll(deps, run, poll, orders, _throttle_delay(exc, settings), f"throttled by Partner Center (Retry-After {exc.retry_after}s)")


def _discover_hop(deps: Deps, run: "_Run", poll: PollMessage, now: datetime, hop: int, redrive: str) -> None:
    """The discovery that delete_customer handed over when it was throttled."""
    settings = deps.settings
    if past_deadline(poll.first_handled_at, now, deps.policy):
        run.finish("timed_out", (f"the customer's orders could not be read within {settings.poll_timeout}s of the request "
                                 "(Partner Center kept throttling); nothing was cancelled or deleted"), poll_attempts=hop, poison=redrive)
        return
    try:
        orders = _discover(run, deps, poll.customer_id, poll.dry_run, poll_attempts=hop, poison=redrive)
    except ThrottledError as exc:
        _repoll(deps, run, poll, [], _throttle_delay(exc, settings), f"still throttled by Partner Center (Retry-After {exc.retry_after}s)")
        return
    if orders is not None:
        _first_poll(deps, run, replace(poll, attempt=poll.attempt + 1), orders)


def _repoll(deps: Deps, run: _Run, poll: PollMessage, orders: list[OrderState], delay: int, why: str) -> None:
    nxt = replace(poll, orders=tuple(orders), attempt=poll.attempt + 1)
    deps.publisher.send(deps.settings.poll_queue, nxt.to_text(), delay=delay)
    run.log.info("%s: next poll (hop %d) in %ds", why, nxt.attempt + 1, delay)

