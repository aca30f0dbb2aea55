"""The pure core of the deletion workflow: every decision, no I/O.

A request is handled in *hops*: one invocation of ``delete_customer`` (the request's first delivery) or of
``poll_orders``. A hop is a small state machine, driven by the service (``shared.service``)::

    hop, command = step(hop, observation, now=..., elapsed=..., policy=...)

The service executes each call command (``GetCustomer``, ``ListEntitlements``, ``GetOrder``, ``CancelOrder``,
``DeleteCustomer``) and turns Partner Center's answer, or its error, into an observation (``Answer`` or
``Failure``), as botocore's waiter turns responses and errors into something its acceptors match. The hop ends with
``Continue`` (send the next poll message) or ``Finish`` (send the outcome event, and maybe a redrivable request to
poison). Only this module decides; the service never looks at an order status. The words it decides in (the
commands, the observations, ``Hop`` and ``Policy``) are in ``shared.hop``, and are exported here too.

Rules (docs/guarantees.md):

* **A DELETE is proven by fresh reads.** A hop sends ``DeleteCustomer`` only when, in that same hop, it listed the
  customer's entitlements and read by GET every order the request knows of (found before or now), and each read
  ``cancelled``. A PATCH answer, an earlier read and anything a poll message says only decide what to read first.
* **Cheap hops.** A hop stops reading once one order is known to be still open, except that it always reads and
  cancels orders that still need a cancel (new ones, or ones that fell back).
* **Milestones.** No DELETE at or after the cut-off C (``first_handled_at + POLL_TIMEOUT``; the first handling is
  the ledger row's). From C the *final check* classifies the request from fresh reads (``timed_out``, ``failed`` for
  a refusal, or gone), and writes nothing. If a hop decided a DELETE (``deleting_at``), the final check starts no
  earlier than ``CLAIM_SECONDS`` after that (D), so that the DELETE has landed, even one sent by an invocation that
  paused past its claim. From H (``first_handled_at + POLL_TIMEOUT + max(POLL_MAX_INTERVAL, 900)``, less one hop)
  one look at the customer ends the request whatever happens.
* **One invocation at a time.** The service runs a hop only under the request ledger's claim (``shared.ledger``), so
  two chains of one request never work at once; the core decides as if its hop were the request's only one.
* **A refused DELETE** is tried again on later hops, from fresh reads. Still refused ``DELETE_REFUSAL_TIMEOUT``
  after the first refusal (which the state carries), the request ends ``failed``, naming the blockers Partner
  Center quotes.
* **Bounded work.** No call starts after ``policy.hop_work`` seconds of the invocation; the rest is handed to the
  next hop. Longer waits (throttling, outages, crashes) always continue on the poll queue.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from shared.hop import (
    Answer,
    Call,
    CancelAzureEntitlement,
    CancelOrder,
    Cause,
    Command,
    Continue,
    DeleteCustomer,
    Entry,
    Failure,
    FailureKind,
    Finish,
    GetCustomer,
    GetOrder,
    GetSubscription,
    Hop,
    ListAzureEntitlements,
    ListEntitlements,
    ListSubscriptions,
    Mode,
    Observation,
    Outcome,
    PatchSubscription,
    Poison,
    Policy,
    Retry,
    is_cancelled,
    needs_cancel,
    normalise_status,
)
from shared.ids import is_guid
from shared.messages import MAX_CAUSE_CHARS, DeletionRequest, PollMessage, SubscriptionState
from shared.subscriptions import (
    LATE_CANCEL_CODES,
    Kind,
    Subscription,
    UnreadableSubscriptionError,
    blockers_in_refusal,
    clearing_order,
    patch_body,
    read_subscription,
    target_status,
)

__all__ = [
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
    "begin_poll",
    "begin_request",
    "decided_unrecorded",
    "is_cancelled",
    "milestones",
    "needs_cancel",
    "normalise_status",
    "outcome_unrecorded",
    "poll_delay",
    "refuse_unclaimed",
    "reject_invalid_request",
    "step",
    "unreadable_poll",
]

#: How far in the future a poll message's times may lie (clock skew between instances) before it is unreadable.
CLOCK_SKEW = timedelta(minutes=5)
MAX_DELAY = 7 * 24 * 3600 - 1
#: An order PATCH refused with one of these (a licence order, seat-based SaaS) is cleared through its subscription.
VIA_SUBSCRIPTION_CODES = frozenset({"800063", "800077"})
STALE_ETAG_CODE = "2055"  # a subscription PATCH with a stale If-Match: read it again, PATCH again
PENDING_OPERATION_CODE = "900278"  # 409: a pending operation, retry after 24 hours: the request ends failed
PLAN_BUSY_CODE = "900115"  # 403: an Azure plan with something active under it: wait
#: An Azure subscription under a plan reads this once its cancel has taken effect.
AZURE_INACTIVE = "inactive"
_V = TypeVar("_V")
_S = TypeVar("_S", Subscription, SubscriptionState)


#: While an order is open, polls fall on a grid of times since the request's last cancel: POLL_INTERVAL_SECONDS,
#: twice it, ... up to GRID_KNEE times it, then each POLL_GROWTH times the one before (see ``poll_delay``).
GRID_KNEE = 10
POLL_GROWTH = 1.1


def poll_grid_after(since: float, interval: float) -> float:
    """The first grid point later than ``since`` (seconds since the cancel)."""
    knee = GRID_KNEE * interval
    if since < knee:
        return interval * (math.floor(since / interval) + 1)
    point = knee * POLL_GROWTH ** max(0, math.floor(math.log(since / knee) / math.log(POLL_GROWTH)))
    while point <= since:  # float rounding: step until past
        point *= POLL_GROWTH
    return point


def poll_delay(since_cancel: float, policy: Policy) -> int:
    """Delay before the next poll of open orders, ``since_cancel`` seconds after the request's last cancel (its first
    handling when it sent none): until the next point of the grid POLL_INTERVAL_SECONDS x 1, 2, ... 10, then 10 % later
    each, counted from the cancel, not from this hop, so a late pickup never pushes the later polls back. A hop that
    ran within a second before its grid point counts as that point's. Whole seconds, rounded down; at least 1 s and at
    most POLL_MAX_INTERVAL_SECONDS.

    This bounds the DELETE lag: an order that turns cancelled ``c`` seconds after its cancel is read, at the latest, at
    the first grid point after the poll before ``c``, which is at most max(POLL_INTERVAL_SECONDS, 10 % of ``c``)
    later, plus the host's pickup delay and that second. The number of polls grows with the logarithm of ``c``:
    10 + log(c / (10 x POLL_INTERVAL_SECONDS)) / log(1.1). tests/unit/test_schedule.py proves both for every ``c``.
    """
    if not math.isfinite(since_cancel):
        return policy.max_interval
    since = max(0.0, since_cancel)
    return max(1, min(policy.max_interval, math.floor(poll_grid_after(since + 1.0, policy.interval) - since)))


def milestones(chain: PollMessage, policy: Policy) -> tuple[datetime, datetime, datetime]:
    """(C, D, H): DELETE cut-off, start of the final check, hard end. See the module docstring."""
    timeout = timedelta(seconds=policy.timeout)
    normal_cut = chain.first_handled_at + timeout
    # deleteBy: written by an earlier release for a redelivered request; a message can only shorten the cut-off.
    cut = min(chain.delete_by, normal_cut) if chain.delete_by else normal_cut
    final = normal_cut
    if chain.deleting_at is not None:  # a DELETE was decided: it has landed CLAIM_SECONDS later
        final = max(final, chain.deleting_at + timedelta(seconds=policy.settle))
    # The final check gets a few attempts at the longest back-off, and the chain still ends within the documented
    # bound: POLL_TIMEOUT_SECONDS + max(POLL_MAX_INTERVAL_SECONDS, 900 s), counting one pickup and one hop.
    one_hop = policy.pickup + policy.hop_work + policy.call_time  # picked up late, all its work time, one more call
    window = min(policy.final_window - one_hop, policy.settle + max(2 * policy.max_interval, 30))
    hard = max(normal_cut + timedelta(seconds=max(window, policy.settle + 1)), final + timedelta(seconds=1))
    return cut, final, hard


# -- entry points -------------------------------------------------------------------------------------------------


def reject_invalid_request(reason: str) -> Finish:
    return Finish(
        Outcome.REJECTED,
        f"invalid deletion request: {reason}; nothing was sent to Partner Center",
        poison=Poison.ORIGINAL,
    )


def unreadable_poll(
    reason: str,
    *,
    customer_id: str | None,
    correlation_id: str | None,
    dry_run: bool | None,
    requested_at: datetime,
    now: datetime,
    policy: Policy,
) -> Hop | Finish:
    """A poll message this release cannot read: ``failed`` (a redrive is possible), never ``rejected``.

    Like every path that gives up, it first looks whether the customer is already gone (an earlier hop of the request
    may have deleted it), when the customer can be read exactly and is not protected.
    """
    text = f"could not read a poll message ({reason})"
    if customer_id is None or correlation_id is None or dry_run is None:
        return Finish(
            Outcome.FAILED, f"{text}; it waits in the poll poison queue as it was", poison=Poison.POLL_ORIGINAL
        )
    if customer_id in policy.protected:
        return Finish(
            Outcome.FAILED,
            f"{text}; the customer is protected, so nothing was called; an equivalent request "
            "waits in the request poison queue",
            poison=Poison.EQUIVALENT,
        )
    chain = PollMessage(
        customer_id, correlation_id, (), 0, min(requested_at, now), now, stage="discover", dry_run=dry_run
    )
    return Hop(
        chain,
        Entry.UNREADABLE,
        Mode.FINAL,
        (),
        {},
        gone_check=f"{text}; an equivalent request waits in the request poison queue for a redrive",
    )


def _protected() -> Finish:
    return Finish(
        Outcome.REJECTED, "customer is listed in PROTECTED_CUSTOMER_IDS and is never deleted; nothing was changed"
    )


def begin_request(request: DeletionRequest, *, delivery: int, now: datetime, policy: Policy) -> Hop | Continue | Finish:
    """``delete_customer``. The first delivery works; a redelivery hands the request to a fresh poll message."""
    if request.customer_id in policy.protected:
        return _protected()
    chain = PollMessage(
        request.customer_id,
        request.correlation_id,
        (),
        0,
        request.requested_at,
        now,
        stage="discover",
        dry_run=request.dry_run,
    )
    if delivery > 1:
        # An earlier delivery died, maybe after its first calls. Its first handling was no earlier than requestedAt;
        # the service replaces this with the ledger row's first handling when it can read the row.
        chain = replace(chain, first_handled_at=request.requested_at, recoveries=1, cause=Cause.RECOVERY.value)
        return Continue(
            chain,
            _recovery_delay(chain, now, policy),
            f"the request was delivered {delivery} times (an earlier invocation died): handed over to the poll queue",
        )
    return Hop(chain, Entry.REQUEST, Mode.NORMAL, (), {})


def begin_poll(chain: PollMessage, *, delivery: int, now: datetime, policy: Policy) -> Hop | Continue | Finish:
    """``poll_orders``: a hop, a hand-over (redelivery), or a wait for the final check."""
    if chain.customer_id in policy.protected:
        return Finish(
            Outcome.REJECTED,
            "customer is listed in PROTECTED_CUSTOMER_IDS and is never deleted; no call was made",
            chain.orders,
            chain.attempt,
        )
    if chain.first_handled_at > now + CLOCK_SKEW or chain.requested_at > chain.first_handled_at + CLOCK_SKEW:
        return unreadable_poll(
            "its times lie in the future",
            customer_id=chain.customer_id,
            correlation_id=chain.correlation_id,
            dry_run=chain.dry_run,
            requested_at=chain.requested_at,
            now=now,
            policy=policy,
        )
    cut, final, hard = milestones(chain, policy)
    if delivery > 1:
        if now >= hard:  # the look at the hard end died with its invocation: end here, without another call
            hop = Hop(
                chain,
                Entry.POLL,
                Mode.FINAL,
                tuple(o.id for o in chain.orders),
                {o.id: o.status for o in chain.orders},
                sub_hints={s.id: s for s in chain.subscriptions},
            )
            return _timed_out(hop, policy, unchecked=True)
        nxt = replace(chain, recoveries=chain.recoveries + 1, cause=chain.cause or Cause.RECOVERY.value)
        return Continue(
            nxt,
            _recovery_delay(nxt, now, policy),
            f"poll message delivered {delivery} times (an earlier invocation died): handed over to a fresh message",
        )
    if cut <= now < final:
        return Continue(
            replace(chain, attempt=chain.attempt + 1),
            _seconds(final - now),
            "past the DELETE cut-off, and a DELETE was decided: waiting until it has landed, for the final check",
        )
    mode = Mode.NORMAL if now < cut else Mode.FINAL
    hints = {o.id: o.status for o in chain.orders}
    # What to read first: orders that need a cancel, then those still cancelling, then those seen cancelled.
    order_ids = tuple(
        sorted(hints, key=lambda o: 0 if needs_cancel(hints[o]) else 1 if not is_cancelled(hints[o]) else 2)
    )
    return Hop(
        chain,
        Entry.POLL,
        mode,
        order_ids,
        hints,
        sub_hints={s.id: s for s in chain.subscriptions},
        # Only with CLEAR_SUBSCRIPTIONS: without it such an order is read and must read cancelled, like any other.
        via_sub=frozenset(chain.via_subscription) & set(order_ids) if policy.clear_subscriptions else frozenset(),
    )


# -- the step -----------------------------------------------------------------------------------------------------


def step(
    hop: Hop, observation: Observation | None, *, now: datetime, elapsed: float, policy: Policy
) -> tuple[Hop, Command]:
    """Fold the observation of the pending call into the hop, then decide the next command."""
    if hop.pending is not None:
        pending = hop.pending
        if observation is None:
            raise ValueError(f"{pending.describe()} is pending: an observation is required")
        if isinstance(pending, DeleteCustomer) and _answered(observation):
            # Partner Center answered this DELETE (or never got it): nothing can land later, so the final check
            # need not wait for it. An answer lost (5xx, a timeout) keeps the mark.
            hop = replace(hop, chain=replace(hop.chain, deleting_at=None))
        hop, decided = _absorb(replace(hop, pending=None), pending, observation, now, policy)
        if isinstance(decided, (Continue, Finish, Retry)):
            return hop, decided
        if decided is not None:  # a gone check or a blocker listing: it obeys the work budget like any other call
            late = _out_of_time(hop, now, elapsed, policy)
            if late is not None and hop.refused_delete is not None:  # no time to name more: the refusal stands
                return hop, _refusal_failed(hop, now, policy, None)
            return _issue(hop, late or decided, now)
    return _issue(hop, _decide(hop, now, elapsed, policy), now)


def _answered(observation: Observation) -> bool:
    """Whether a call certainly had its effect or certainly none: a 2xx, a considered refusal, or never sent."""
    return isinstance(observation, Answer) or observation.kind not in (FailureKind.TRANSIENT, FailureKind.OUT_OF_TIME)


def _issue(hop: Hop, command: Command, now: datetime) -> tuple[Hop, Command]:
    if isinstance(command, (Continue, Finish, Retry)):
        return hop, command
    if isinstance(command, DeleteCustomer):  # the state records it: the final check waits until it has landed
        hop = replace(hop, chain=replace(hop.chain, deleting_at=now))
    return replace(hop, pending=command), command


def _absorb(hop: Hop, call: Call, obs: Observation, now: datetime, policy: Policy) -> tuple[Hop, Command | None]:
    """The acceptor table: what an answer or a failure of ``call`` means. ``None``: go on deciding."""
    if isinstance(obs, Failure):
        return _on_failure(hop, call, obs, now, policy)
    if isinstance(call, GetCustomer):
        if hop.gone_check is not None:
            return hop, _fail(hop, hop.gone_check)  # the customer is still there: the failure stands
        return replace(hop, looked=True), None
    if isinstance(call, ListEntitlements):
        ids = [i for i in (obs.body or []) if isinstance(i, str)]
        new = tuple(i for i in dict.fromkeys(ids) if i not in hop.hints)
        hints = {**hop.hints, **dict.fromkeys(new, "unknown")}
        return replace(hop, listed=True, order_ids=hop.order_ids + new, hints=hints), None
    if isinstance(call, GetOrder):
        status = normalise_status(obs.body.get("status") if isinstance(obs.body, dict) else None)
        alternate = obs.body.get("alternateId") if isinstance(obs.body, dict) else None
        hop = replace(
            hop,
            fresh={**hop.fresh, call.order_id: status},
            hints={**hop.hints, call.order_id: status},
            busy=hop.busy - {call.order_id},
            alternates={**hop.alternates, call.order_id: alternate} if isinstance(alternate, str) else hop.alternates,
        )
        refusal = hop.refused.get(call.order_id)
        if refusal is not None:
            if needs_cancel(status):  # neither cancelled nor cancelling: the refusal stands
                return hop, _fail(hop, refusal)
            hop = replace(hop, refused=_without(hop.refused, call.order_id))
        return hop, None
    if isinstance(call, ListSubscriptions) and hop.refused_delete is not None:
        return hop, _refusal_failed(hop, now, policy, obs.body if isinstance(obs.body, list) else [])
    if isinstance(call, (ListSubscriptions, GetSubscription, PatchSubscription, ListAzureEntitlements)):
        return _absorb_subscriptions(hop, call, obs, now, policy)
    if isinstance(call, CancelAzureEntitlement):
        hint = hop.sub_hints[call.plan_id]
        hint = replace(
            hint,
            cancelled=tuple(dict.fromkeys((*hint.cancelled, call.entitlement_id))),
            cancelled_at=hint.cancelled_at or now,
        )
        return replace(
            hop,
            sub_hints={**hop.sub_hints, call.plan_id: hint},
            azure_asked=hop.azure_asked | {f"{call.plan_id}/{call.entitlement_id}"},
        ), None
    if isinstance(call, CancelOrder):
        # Whatever the answer says, the order counts as open for the rest of this hop, and the next hop reads it: a
        # read at once would cost a call per order and mostly find it still cancelling ("cancelled" is no proof). Its
        # hint is "pending", never "cancelled": the previous release trusts hints (UPGRADING.md, "Mixed versions").
        hop = replace(hop, patched=hop.patched | {call.order_id}, fresh=_without(hop.fresh, call.order_id))
        return _busy(hop, call.order_id), None
    # DeleteCustomer answered 2xx.
    plans = any(s.kind is Kind.AZURE_PLAN for s in hop.subs.values())
    subscriptions = (
        ""
        if not policy.clear_subscriptions
        else ", and a fresh subscription listing shows none"
        if not hop.subs
        else f", and all {len(hop.subs)} subscription(s) read final in a fresh listing"
        + (" (every Azure subscription under a plan inactive)" if plans else "")
    )
    return hop, _finish(
        hop,
        Outcome.DELETED,
        f"all {len(hop.order_ids) - len(hop.via_sub)} order(s) read cancelled in the same hop as a fresh entitlements "
        f"listing{subscriptions}; DELETE accepted, the customer tenant is purged",
    )


def _absorb_subscriptions(
    hop: Hop,
    call: ListSubscriptions | GetSubscription | PatchSubscription | ListAzureEntitlements,
    obs: Answer,
    now: datetime,
    policy: Policy,
) -> tuple[Hop, Command | None]:
    """What a subscription listing, read or PATCH answer, or an Azure subscription listing, tells the hop."""
    if isinstance(call, PatchSubscription):
        # Accepted (200, or 202 with a Location never followed): no proof of anything. It counts as not final for
        # the rest of this hop; a later hop reads it.
        hint = hop.sub_hints[call.subscription_id]
        action = "cancelled" if call.target == "deleted" else "suspended"
        hop = replace(
            hop,
            sub_hints={
                **hop.sub_hints,
                call.subscription_id: replace(hint, action=action, asked_at=hint.asked_at or now),
            },
        )  # its read stays in ``subs`` (for its add-on links), but busy: neither final nor open to a PATCH
        return _sub_busy(hop, call.subscription_id), None
    if isinstance(call, ListAzureEntitlements):
        statuses: dict[str, str] = {}
        for item in obs.body if isinstance(obs.body, list) else []:
            eid = item.get("id") if isinstance(item, Mapping) else None
            if not is_guid(eid):
                return hop, _fail(
                    hop,
                    f"refused to continue: Azure plan {call.plan_id} lists an Azure subscription whose id is not a "
                    f"GUID ({str(eid)[:80]!r})",
                )
            status = normalise_status(item.get("status"))
            if statuses.get(eid.lower(), AZURE_INACTIVE) == AZURE_INACTIVE:  # listed twice: active wins
                statuses[eid.lower()] = status
        return replace(hop, azure={**hop.azure, call.plan_id: statuses}), None
    items = obs.body if isinstance(obs.body, list) else [obs.body]
    read: dict[str, Subscription] = {}
    for item in items:
        try:
            subscription = read_subscription(item)
        except UnreadableSubscriptionError as exc:
            if not policy.clear_subscriptions:  # listed only to be named: what cannot be read is left out
                continue
            return hop, _fail(hop, f"refused to continue: {exc}")
        if subscription.id not in read or read[subscription.id].final:  # listed twice: a copy not final wins
            read[subscription.id] = subscription
    if isinstance(call, GetSubscription) and call.subscription_id not in read:
        return hop, _fail(hop, f"refused to continue: GET subscription {call.subscription_id} answered another one")
    hints = dict(hop.sub_hints)
    for sid, s in read.items():
        old = hints.get(sid)
        hints[sid] = (
            replace(old, kind=s.kind.value, status=s.status, order_id=s.order_id)
            if old is not None
            else SubscriptionState(sid, s.kind.value, s.status, order_id=s.order_id)
        )
    hop = replace(
        hop,
        subs={**hop.subs, **read},
        sub_hints=hints,
        subs_listed=hop.subs_listed or isinstance(call, ListSubscriptions),
        sub_busy=hop.sub_busy - set(read),
        sub_gone=hop.sub_gone - set(read),  # read now: its read counts, not an earlier 404
    )
    if isinstance(call, GetSubscription):
        refusal = hop.sub_refused.get(call.subscription_id)
        if refusal is not None:
            if not read[call.subscription_id].final:  # refused, and still not final: the refusal stands
                return hop, _fail(hop, refusal)
            hop = replace(hop, sub_refused=_without(hop.sub_refused, call.subscription_id))
    return hop, None


def _sub_busy(hop: Hop, subscription_id: str, *, waiting_since: datetime | None = None) -> Hop:
    """Just PATCHed, or not ready (409 800082, 403 900115): not final for the rest of the hop, and no second PATCH
    in it. ``waiting_since``: start its clock (``asked_at``) if it has none, so a blocker that never clears ends."""
    hints = dict(hop.sub_hints)
    if waiting_since is not None:
        hint = hints[subscription_id]
        hints[subscription_id] = replace(hint, asked_at=hint.asked_at or waiting_since)
    return replace(
        hop,
        sub_hints=hints,
        sub_busy=hop.sub_busy | {subscription_id},
        sub_patched=hop.sub_patched | {subscription_id},
        sub_refused=_without(hop.sub_refused, subscription_id),
    )


def _on_failure(hop: Hop, call: Call, f: Failure, now: datetime, policy: Policy) -> tuple[Hop, Command | None]:
    kind = f.kind
    if isinstance(call, ListSubscriptions) and hop.refused_delete is not None:  # naming blockers: it changes ...
        if kind is FailureKind.NOT_FOUND:  # ... nothing else, unless the customer is gone now
            return _check_gone(replace(hop, refused_delete=None), hop.refused_delete.text())
        return hop, _refusal_failed(hop, now, policy, None)
    if kind is FailureKind.UNSAFE:
        return hop, _fail(hop, f.text())
    if kind is FailureKind.STORAGE:  # nothing was sent, and no outcome is decided without the ledger: wait for it
        return hop, _table_wait(hop, now, policy, f.text())
    if hop.entry is Entry.UNREADABLE:  # one look only: gone, or the failure stands (said to be unchecked)
        return hop, (
            _gone(hop, f) if kind is FailureKind.NOT_FOUND else _fail(hop, hop.gone_check or "", checked=False)
        )
    if kind is FailureKind.OUT_OF_TIME:
        return hop, _no_time_left(hop, now, policy)
    if _past_hard_end(hop, now, policy) and not (kind is FailureKind.NOT_FOUND or kind is FailureKind.REFUSED):
        return hop, _timed_out(hop, policy, unchecked=True)  # the look at the hard end failed: the end
    if kind is FailureKind.THROTTLED:
        return hop, _wait(
            hop, now, policy, Cause.THROTTLED, f"last Retry-After {_fmt(f.retry_after)}", retry_after=f.retry_after
        )
    conflict_has_meaning = (
        isinstance(call, (GetOrder, CancelOrder, DeleteCustomer, PatchSubscription, CancelAzureEntitlement))
        and hop.gone_check is None
    )
    if kind in (FailureKind.TRANSIENT, FailureKind.AUTH) or (kind is FailureKind.CONFLICT and not conflict_has_meaning):
        lost = (
            "the DELETE may have landed with its answer lost; the next hop reads again: "
            if isinstance(call, DeleteCustomer)
            else ""
        )
        return hop, _wait(hop, now, policy, Cause.OUTAGE, lost + f.text())
    if hop.gone_check is not None:  # the gone check's own GET customer: 404 means gone, a refusal leaves the failure
        return hop, (_gone(hop, f) if kind is FailureKind.NOT_FOUND else _fail(hop, hop.gone_check))
    if isinstance(call, GetCustomer):
        return hop, (_gone(hop, f) if kind is FailureKind.NOT_FOUND else _fail(hop, f.text()))
    if isinstance(call, GetOrder):
        if kind is FailureKind.CONFLICT:
            return _busy(hop, call.order_id), None
        suffix = (
            "; the customer still exists, so an order this request knows of is missing"
            if kind is FailureKind.NOT_FOUND
            else ""
        )
        return _check_gone(hop, f.text() + suffix)
    if isinstance(call, CancelOrder):
        if kind is FailureKind.CONFLICT:  # 800060 "your order is in progress": it is being worked on; wait for it
            return _busy(
                replace(hop, patched=hop.patched | {call.order_id}, fresh=_without(hop.fresh, call.order_id)),
                call.order_id,
            ), None
        if kind is FailureKind.NOT_FOUND:
            return _check_gone(hop, f.text())
        if f.code in VIA_SUBSCRIPTION_CODES and policy.clear_subscriptions:
            # A licence or seat-based SaaS order: cleared through its subscription, settled when that reads final.
            return replace(
                hop,
                via_sub=hop.via_sub | {call.order_id},
                patched=hop.patched | {call.order_id},
                refused=_without(hop.refused, call.order_id),
                busy=hop.busy - {call.order_id},
            ), None
        # Refused, maybe because it is already cancelling or cancelled (a retried PATCH whose answer was lost, a
        # duplicate request). Read it: only a refusal of an order that still needs a cancel ends the request.
        return replace(
            hop,
            refused={**hop.refused, call.order_id: f.text()},
            fresh=_without(hop.fresh, call.order_id),
            patched=hop.patched | {call.order_id},
        ), None
    if isinstance(call, ListEntitlements):
        return _check_gone(hop, f.text())
    if isinstance(call, PatchSubscription):
        return _on_patch_refused(hop, call, f, now)
    if isinstance(call, CancelAzureEntitlement):
        if kind is FailureKind.CONFLICT:  # being worked on: the plan waits for the next hop
            return _sub_busy(hop, call.plan_id), None
        return _check_gone(hop, f.text()) if kind is FailureKind.NOT_FOUND else (hop, _fail(hop, f.text()))
    if isinstance(call, GetSubscription) and kind is FailureKind.NOT_FOUND:
        # Not there by its id (missing from this hop's listing, or refused as already deleted): it cannot block.
        sid = call.subscription_id
        return replace(
            hop,
            sub_gone=hop.sub_gone | {sid},
            sub_refused=_without(hop.sub_refused, sid),
            sub_stale=hop.sub_stale - {sid},
            subs=_without(hop.subs, sid),
        ), None
    if isinstance(call, ListSubscriptions) and kind is FailureKind.REFUSED and not policy.clear_subscriptions:
        # Listed only to name them in the outcome: a refusal takes nothing from the deletion.
        return replace(hop, subs_listed=True), None
    if isinstance(call, (ListSubscriptions, GetSubscription, ListAzureEntitlements)):
        return _check_gone(hop, f.text())
    # DeleteCustomer refused.
    if kind is FailureKind.NOT_FOUND:
        return _check_gone(hop, f"{f.text()}; but GET customer still finds it")
    # Any refusal of the DELETE can pass (orders still cancelling, an order we cannot see): keep trying, until
    # DELETE_REFUSAL_TIMEOUT_SECONDS after the first refusal, which the request's state carries.
    first = hop.chain.first_delete_refusal_at or now
    chain = replace(hop.chain, delete_refusals=hop.chain.delete_refusals + 1, first_delete_refusal_at=first)
    hop = replace(hop, chain=chain)
    if (now - first).total_seconds() >= policy.delete_refusal_timeout:
        # The request ends failed; its subscriptions are listed first, read only, to name what blocks.
        return replace(hop, refused_delete=f), ListSubscriptions()
    blockers = blockers_in_refusal(f.description, hop.alternates, ())
    named = f"; Partner Center names {', '.join(blockers)}" if blockers else ""
    return hop, _wait(
        hop, now, policy, Cause.DELETE_REFUSED, f"{chain.delete_refusals} time(s){named}, last: {f.text()}"
    )


def _on_patch_refused(hop: Hop, call: PatchSubscription, f: Failure, now: datetime) -> tuple[Hop, Command | None]:
    """A refused subscription PATCH (reference section 3.2)."""
    sid, code = call.subscription_id, f.code or ""
    if f.kind is FailureKind.CONFLICT:
        if code == PENDING_OPERATION_CODE:  # "a pending operation, retry after 24 hours": nothing to wait for here
            return hop, _fail(hop, f.text())
        return _sub_busy(hop, sid, waiting_since=now), None  # 800082 "not ready": wait
    if f.kind is FailureKind.NOT_FOUND:
        return _check_gone(hop, f.text())
    if code == STALE_ETAG_CODE and sid not in hop.sub_stale:  # read it again (a fresh etag), then PATCH again
        return replace(hop, sub_stale=hop.sub_stale | {sid}, subs=_without(hop.subs, sid)), None
    if code == STALE_ETAG_CODE:  # stale twice in one hop: someone else is changing it; the next hop tries again
        return _sub_busy(hop, sid), None
    if code in LATE_CANCEL_CODES and call.target == "deleted" and sid not in hop.sub_late:
        return replace(hop, sub_late=hop.sub_late | {sid}), None  # past its window: suspend it instead
    if code == PLAN_BUSY_CODE:  # something under the Azure plan is still active: wait, as for a 409
        return _sub_busy(hop, sid, waiting_since=now), None
    # 2011 (already deleted), 800091 (already suspended) and any other refusal: read it; only a refusal of a
    # subscription that still reads not final ends the request.
    return replace(
        hop,
        sub_refused={**hop.sub_refused, sid: f.text()},
        subs=_without(hop.subs, sid),
        sub_patched=hop.sub_patched | {sid},
    ), None


def _refusal_failed(hop: Hop, now: datetime, policy: Policy, listed: list[Any] | None) -> Finish:
    """``failed`` for a DELETE still refused at its deadline, naming the blockers: those Partner Center quotes,
    matched to the orders and subscriptions read, and every subscription that is not final (this release clears
    none). ``listed``: the subscriptions as listed; None when they could not be listed."""
    f, chain = hop.refused_delete, hop.chain
    first = chain.first_delete_refusal_at
    assert f is not None and first is not None  # set together with the refusal that starts the listing
    subscriptions = []
    for item in listed or []:
        try:
            subscriptions.append(read_subscription(item))
        except UnreadableSubscriptionError:
            continue  # named by what Partner Center quotes, if at all; it never goes near a URL here
    blockers = blockers_in_refusal(f.description, hop.alternates, subscriptions)
    blockers += [s.describe() for s in subscriptions if not s.final and s.describe() not in blockers]
    named = f"; blockers: {', '.join(blockers)}" if blockers else ""
    if listed is None:
        named += " (its subscriptions could not be listed)"
    return _fail(
        hop,
        f"every order this request can see reads cancelled, but Partner Center refused the DELETE "
        f"{chain.delete_refusals} time(s) over {(now - first).total_seconds():.0f}s (DELETE_REFUSAL_TIMEOUT_SECONDS is "
        f"{policy.delete_refusal_timeout:g}){named}; last: {f.text()}",
    )


def refuse_unclaimed(hop: Hop, why: str) -> Finish:
    """The request's ledger row cannot be claimed by this request (``why``: it is another's, or unreadable as a row):
    no call is made, because no hop may work unclaimed. ``failed``, with an equivalent request in the poison queue."""
    return _fail(
        hop, f"refused to continue: the request ledger's row for this request cannot be used ({why}); no call was made"
    )


def outcome_unrecorded(hop: Hop, finish: Finish, now: datetime, policy: Policy, why: str) -> Continue | Retry:
    """The hop decided ``finish``, but the request ledger could not take it (``why``). Nothing is published without
    the ledger (another message of the request could decide otherwise, unseen): the request continues on the poll
    queue, as in an outage, past the hard end if need be, and the next hop reads everything again and decides from
    the world as it then is. ``not_found`` at the request's first look is carried on (``absent_at_first_look``), so
    that a later look at a customer still absent means the same."""
    detail = f"the request ledger could not take the outcome {finish.outcome.value} ({why})"
    if hop.entry is Entry.UNREADABLE:
        return Retry(policy.interval, detail)
    if finish.outcome is Outcome.NOT_FOUND and hop.entry is Entry.REQUEST and not hop.chain.dry_run:
        hop = replace(hop, chain=replace(hop.chain, absent_at_first_look=True))
    return _table_wait(hop, now, policy, detail)


def decided_unrecorded(*, request: bool, policy: Policy, why: str) -> Retry | None:
    """An outcome decided before any call (protected, invalid, past the hard end) that the request ledger cannot take
    now. A poll message is tried again later, as it is. ``None``: a request's own first delivery publishes it without
    the ledger (sent again, a bare request would become another request; every delivery of it decides the same,
    from the message alone)."""
    return None if request else Retry(policy.interval, f"the request ledger could not take the outcome ({why})")


def _table_wait(hop: Hop, now: datetime, policy: Policy, detail: str) -> Continue:
    """The request ledger cannot be claimed or written: continue on the poll queue with the outage back-off, past the
    hard end if need be (then the next hop only looks and ends)."""
    return _wait(hop, now, policy, Cause.OUTAGE, detail, what="the request ledger", beyond_end=True)


def _past_hard_end(hop: Hop, now: datetime, policy: Policy) -> bool:
    return hop.mode is Mode.FINAL and now >= milestones(hop.chain, policy)[2]


def _busy(hop: Hop, order_id: str) -> Hop:
    """Just PATCHed, or 409 "in progress": the order is being worked on. It counts as open for the rest of the hop,
    and a refused cancel of it is moot."""
    return replace(
        hop,
        busy=hop.busy | {order_id},
        hints={**hop.hints, order_id: "pending"},
        refused=_without(hop.refused, order_id),
    )


def _check_gone(hop: Hop, failure_text: str) -> tuple[Hop, Command]:
    """Paths that give up first check whether the customer is already gone (an earlier DELETE of this request, whose
    answer was lost, may have removed it)."""
    return replace(hop, gone_check=failure_text), GetCustomer()


def _without(mapping: Mapping[str, _V], key: str) -> dict[str, _V]:
    return {k: v for k, v in mapping.items() if k != key}


def _decide(hop: Hop, now: datetime, elapsed: float, policy: Policy) -> Command:
    unclearable = _unclearable(hop, now, policy)
    if unclearable is not None:
        return _fail(hop, unclearable)
    call = _next_call(hop, now, policy)
    if call is None:
        return _end_of_reads(hop, now, policy)
    if isinstance(call, DeleteCustomer) and now >= milestones(hop.chain, policy)[0]:
        return _continue(
            hop,
            now,
            policy,
            Cause.OPEN,
            "",
            want=0,
            why="every order reads cancelled, but the DELETE cut-off has passed: waiting for the final check",
        )
    return _out_of_time(hop, now, elapsed, policy) or call


def _out_of_time(hop: Hop, now: datetime, elapsed: float, policy: Policy) -> Command | None:
    """No call starts after the invocation's work time: the rest continues on the next hop."""
    return _no_time_left(hop, now, policy) if elapsed >= policy.hop_work else None


def _no_time_left(hop: Hop, now: datetime, policy: Policy) -> Command:
    if hop.entry is Entry.UNREADABLE:
        return _fail(hop, hop.gone_check or "", checked=False)
    if _past_hard_end(hop, now, policy):
        return _timed_out(hop, policy, unchecked=True)  # the final reads did not fit: the end
    # Soon, but not in a tight loop when the work never fits (1 s, 2 s, 4 s ... up to POLL_INTERVAL_SECONDS).
    want = min(policy.interval, 2 ** min(hop.chain.setbacks, 20))
    return _continue(
        hop,
        now,
        policy,
        Cause.OUT_OF_TIME,
        "",
        want=want,
        why=f"this invocation used its {policy.hop_work:g}s of work: the rest continues on the next hop",
    )


def _next_call(hop: Hop, now: datetime, policy: Policy) -> Call | None:
    """What to read or change next, or ``None`` when this hop's reads are done."""
    chain = hop.chain
    if hop.entry is Entry.UNREADABLE:
        return GetCustomer()  # the gone check; its answer ends the hop
    if not hop.looked and (chain.stage == "discover" or hop.mode is not Mode.NORMAL):
        return GetCustomer()
    if not hop.subs_listed and not chain.subscriptions_listed and hop.mode is Mode.NORMAL:
        return ListSubscriptions()  # the request's first look at them, before it changes anything
    for order_id in hop.refused:  # a refused cancel: read the order before deciding
        return GetOrder(order_id)
    stale = [s for s in hop.sub_stale if s not in hop.subs and s not in hop.sub_busy and s not in hop.sub_gone]
    for sid in [*hop.sub_refused, *stale]:
        return GetSubscription(sid)  # a refused PATCH, or a stale etag: read it before deciding
    unread = [o for o in hop.order_ids if o not in hop.fresh and o not in hop.busy and o not in hop.via_sub]
    if chain.dry_run:
        if not hop.listed:
            return ListEntitlements()
        if unread:
            return GetOrder(unread[0])
        if not hop.subs_listed:
            return ListSubscriptions()  # a dry run that goes on on the poll queue lists them again
        plans = [s.id for s in hop.subs.values() if s.kind is Kind.AZURE_PLAN and s.id not in hop.azure]
        return ListAzureEntitlements(plans[0]) if plans else None
    if not hop.listed and chain.stage == "discover":
        return ListEntitlements()  # the request's first listing: its orders are cancelled beside the subscriptions
    for order_id in hop.order_ids:  # cancel what was read as needing it, before reading the next one
        if (
            hop.mode is Mode.NORMAL
            and order_id in hop.fresh
            and needs_cancel(hop.fresh[order_id])
            and order_id not in hop.patched
            and order_id not in hop.via_sub
        ):
            return CancelOrder(order_id)
    for order_id in unread:  # orders that may need a cancel are cancelled whatever else is open
        if needs_cancel(hop.hints.get(order_id, "unknown")):
            # An order this hop's listing found and nothing ever read is cancelled at once (a refusal is read before
            # it counts, see ``_on_failure``): a read first would cost a call for every order and save one only for an
            # order already cancelled. Any other hint (a status a poll message claims) is read first: a hint decides
            # what to read, never what to change.
            if (
                hop.mode is Mode.NORMAL
                and hop.listed
                and hop.hints.get(order_id) == "unknown"
                and order_id not in hop.patched
            ):
                return CancelOrder(order_id)
            return GetOrder(order_id)
    clearing = _clear_next(hop, now, policy)
    if clearing is not None:
        return clearing
    if (hop.open_orders or _open_subscriptions(hop, policy, azure=False)) and hop.mode is Mode.NORMAL:
        return None  # one open order is enough to know the DELETE must wait: the rest are read on a later hop
    if unread:
        return GetOrder(unread[0])
    if not hop.listed:
        return ListEntitlements()
    proof = _proof_next(hop, policy)
    if proof is not None:
        return proof
    if (
        hop.open_orders
        or _open_subscriptions(hop, policy)
        or hop.mode is not Mode.NORMAL
        or hop.entry is Entry.REQUEST
        or not _subscriptions_proven(hop, policy)
    ):
        return None
    # Listed in this hop, and every order known read cancelled in this hop; with CLEAR_SUBSCRIPTIONS, every
    # subscription listed in this hop and read final, and every Azure subscription under a plan read inactive.
    return DeleteCustomer()


# -- subscriptions (issue 16) -----------------------------------------------------------------------------------


def _clear_next(hop: Hop, now: datetime, policy: Policy) -> Call | None:
    """The clearing calls that go beside the order cancels, whatever else is open: list the subscriptions when one
    still needs something of this request, and PATCH each that needs it (an add-on first; its base once the add-on
    reads final). An Azure plan is cleared in ``_proof_next``, after the orders (its reservations) and the SaaS."""
    if not policy.clear_subscriptions or hop.mode is not Mode.NORMAL:
        return None
    if not hop.subs_listed:
        needs = [h for h in hop.sub_hints.values() if not h.final and _needs_action(h)]
        return ListSubscriptions() if needs else None
    for s in clearing_order(hop.subs.values()):
        if s.final or s.id in hop.sub_busy or s.id in hop.sub_patched or s.kind is Kind.AZURE_PLAN:
            continue  # a plan is cleared by ``_proof_next``, once the orders and the SaaS read cleared
        hint = hop.sub_hints[s.id]
        if any(a.parent_id == s.id and (not a.final or a.id in hop.sub_busy) for a in hop.subs.values()):
            continue  # a base waits until its add-ons read final
        if hint.action != "none":
            continue  # asked before and accepted: wait for it to show (its clock is asked_at)
        target = target_status(s, now, cancel_refused_late=s.id in hop.sub_late)
        if target is not None:
            return PatchSubscription(s.id, target, patch_body(s, target), s.etag)
    return None


def _needs_action(hint: SubscriptionState) -> bool:
    """Whether a subscription not final still needs a write of this request beside open orders (else it only needs
    waiting for). An Azure plan never does: it is cleared once the orders read cancelled, when everything is read."""
    return hint.action == "none" and hint.kind not in (Kind.UNKNOWN.value, Kind.AZURE_PLAN.value)


def _to_cancel(hop: Hop, plan_id: str) -> list[str]:
    """The Azure subscriptions under a plan that read active in this hop and this request has not cancelled."""
    hint = hop.sub_hints[plan_id]
    return [
        eid
        for eid, status in hop.azure.get(plan_id, {}).items()
        if status == "active" and eid not in hint.cancelled and f"{plan_id}/{eid}" not in hop.azure_asked
    ]


def _proof_next(hop: Hop, policy: Policy) -> Call | None:
    """Once every order reads cancelled and nothing else is known open: the reads that prove the subscriptions final,
    and the Azure plans' clearing (reference section 3.5): once the SaaS reads final, cancel every active Azure
    subscription under the plan; once all read inactive, suspend it."""
    if not policy.clear_subscriptions or hop.mode is not Mode.NORMAL:
        return None
    if not hop.subs_listed:
        return ListSubscriptions()
    for sid in hop.sub_hints:  # known to the request, but not in this listing: read it by its id
        if sid not in hop.subs and sid not in hop.sub_gone and sid not in hop.sub_busy:
            return GetSubscription(sid)
    plans = [s for s in hop.subs.values() if s.kind is Kind.AZURE_PLAN]
    saas_final = all(s.final for s in hop.subs.values() if s.kind is Kind.SAAS) and not hop.sub_busy
    for plan in plans:
        if plan.id not in hop.azure:
            return ListAzureEntitlements(plan.id)
        for eid in _to_cancel(hop, plan.id) if saas_final else []:
            return CancelAzureEntitlement(plan.id, eid)
    for plan in plans:
        under = hop.azure[plan.id].values()
        if (
            not plan.final
            and plan.id not in hop.sub_patched
            and hop.sub_hints[plan.id].action == "none"
            and saas_final
            and all(status == AZURE_INACTIVE for status in under)
        ):
            return PatchSubscription(plan.id, "suspended", patch_body(plan, "suspended"), plan.etag)
    return None


def _open_subscriptions(hop: Hop, policy: Policy, *, azure: bool = True) -> list[str]:
    """What this hop knows is not cleared: subscriptions read not final (or just PATCHed), and with ``azure`` the
    Azure subscriptions under a plan not read inactive (without it: the hop is clearing plans in ``_proof_next``,
    and one Azure subscription cancelled must not keep the next from its cancel). Empty without
    CLEAR_SUBSCRIPTIONS: then Partner Center decides."""
    if not policy.clear_subscriptions or hop.chain.dry_run:
        return []
    names = [
        hop.subs[sid].describe() if sid in hop.subs else f"{hint.kind} subscription {sid} (changing)"
        for sid, hint in hop.sub_hints.items()
        if sid in hop.sub_busy
        or (
            sid in hop.subs
            and not hop.subs[sid].final
            # an Azure plan not yet asked is suspended by ``_proof_next`` once everything else reads cleared
            and not (hint.kind == Kind.AZURE_PLAN.value and hint.action == "none")
        )
    ]
    names += [
        f"Azure subscription {eid} under plan {plan} ({status})"
        for plan, under in (hop.azure.items() if azure else ())
        for to_cancel in [_to_cancel(hop, plan)]  # once per plan
        for eid, status in under.items()
        # one still to cancel is work for ``_proof_next``, not a reason to stop reading
        if status != AZURE_INACTIVE and eid not in to_cancel
    ]
    return names


def _subscriptions_proven(hop: Hop, policy: Policy) -> bool:
    """The DELETE's subscription proof, from this hop's reads only: listed in this hop; every subscription known
    read final (or its GET said 404); every Azure subscription under every plan read inactive; every order cleared
    through a subscription has that subscription read final."""
    if not policy.clear_subscriptions:
        return True
    if not hop.subs_listed or hop.sub_busy or hop.sub_refused:
        return False
    for sid in hop.sub_hints:
        if sid not in hop.sub_gone and not (sid in hop.subs and hop.subs[sid].final):
            return False
    for s in hop.subs.values():
        if s.kind is Kind.AZURE_PLAN and (
            s.id not in hop.azure or any(st != AZURE_INACTIVE for st in hop.azure[s.id].values())
        ):
            return False
    return all(any(s.final for s in _naming(hop.subs.values(), order_id)) for order_id in hop.via_sub)


def _naming(subscriptions: Iterable[_S], order_id: str) -> list[_S]:
    """The subscriptions (as read, or as known) whose orderId is this order's."""
    return [s for s in subscriptions if s.order_id and s.order_id.lower() == order_id.lower()]


def _unclearable(hop: Hop, now: datetime, policy: Policy) -> str | None:
    """Why the request must end ``failed`` now, from what this hop read: a subscription of an unknown kind that is
    not final; an order cleared through a subscription that the listing does not have; a change Partner Center
    accepted (or kept refusing as not ready) that still does not show DELETE_REFUSAL_TIMEOUT_SECONDS later."""
    if not policy.clear_subscriptions or hop.chain.dry_run or not hop.subs_listed:
        return None
    for s in hop.subs.values():
        if s.kind is Kind.UNKNOWN and not s.final:
            product = s.body.get("productType")
            return (
                f"{s.describe()} is of a kind this app does not know how to clear (offerId "
                f"{str(s.body.get('offerId'))[:60]!r}, productType {str(product)[:80]!r}), and it is not final; "
                "nothing was changed on it"
            )
    for order_id in sorted(hop.via_sub):
        if not _naming(hop.sub_hints.values(), order_id):
            return (
                f"order {order_id} can only be cleared through its subscription (Partner Center refused its cancel "
                "with 800063 or 800077), but no subscription of the customer names it"
            )
    limit = timedelta(seconds=policy.delete_refusal_timeout)
    stuck = [
        f"{s.describe()}, asked at {hint.asked_at.isoformat(timespec='seconds')}"
        for s in hop.subs.values()
        for hint in [hop.sub_hints[s.id]]
        if not s.final and hint.asked_at is not None and now - hint.asked_at >= limit
    ]
    stuck += [
        f"Azure subscription {eid} under plan {plan} ({status}), cancelled at "
        f"{hint.cancelled_at.isoformat(timespec='seconds')}"
        for plan, under in hop.azure.items()
        for hint in [hop.sub_hints[plan]]
        if hint.cancelled_at is not None and now - hint.cancelled_at >= limit
        for eid, status in under.items()
        if status != AZURE_INACTIVE and eid in hint.cancelled
    ]
    if stuck:
        return (
            f"Partner Center accepted the changes, but these still do not read final after "
            f"DELETE_REFUSAL_TIMEOUT_SECONDS ({policy.delete_refusal_timeout:g}s): {'; '.join(stuck)}"
        )
    return None


def _end_of_reads(hop: Hop, now: datetime, policy: Policy) -> Command:
    chain = hop.chain
    if chain.dry_run:
        active = [o.id for o in hop.current_orders() if not is_cancelled(o.status)]
        return _finish(
            hop,
            Outcome.DRY_RUN,
            (
                f"dry run: would cancel {len(active)} order(s) ({', '.join(active) or 'none'}), "
                f"{_dry_run_subscriptions(hop, now, policy)}wait until all read cancelled, then DELETE the customer; "
                "nothing was changed"
            ),
        )
    if hop.mode is not Mode.NORMAL:
        return _timed_out(hop, policy)
    open_subscriptions = _open_subscriptions(hop, policy)
    if hop.open_orders or open_subscriptions or not _subscriptions_proven(hop, policy):
        waiting = (
            [f"{len(hop.open_orders)} of {len(hop.order_ids)} order(s) not yet cancelled"] if hop.open_orders else []
        )
        if open_subscriptions:
            waiting.append(f"not yet cleared: {', '.join(open_subscriptions[:5])}")
        return _continue(
            hop,
            now,
            policy,
            Cause.OPEN,
            "",
            want=poll_delay(_since_cancel(hop, now), policy),
            progress=True,
            why="; ".join(waiting)
            or "the Azure plan is suspended once everything under it reads inactive: read again on the next hop",
        )
    # Every order read cancelled and listed, in a delete_customer hop: the DELETE is always sent by poll_orders.
    return _continue(
        hop,
        now,
        policy,
        None,
        None,
        want=0,
        progress=True,
        why=f"all {len(hop.order_ids)} order(s) read cancelled: poll_orders confirms and sends the DELETE",
    )


def _dry_run_subscriptions(hop: Hop, now: datetime, policy: Policy) -> str:
    """What a dry run says it would do to the subscriptions it listed (nothing, without CLEAR_SUBSCRIPTIONS)."""
    if not hop.subs:
        return ""
    if not policy.clear_subscriptions:
        return f"leave its {len(hop.subs)} subscription(s) alone (CLEAR_SUBSCRIPTIONS is false), "
    would: list[str] = []
    for s in clearing_order(hop.subs.values()):
        target = target_status(s, now)
        if s.kind is Kind.UNKNOWN and not s.final:
            would.append(f"end failed on {s.describe()} (a kind it cannot clear)")
        elif s.kind is Kind.AZURE_PLAN and target:
            active = [e for e, st in hop.azure.get(s.id, {}).items() if st == "active"]
            would.append(
                f"cancel {len(active)} Azure subscription(s) under plan {s.id} ({', '.join(active)}), then suspend it"
            )
        elif target:
            would.append(f"{'cancel' if target == 'deleted' else 'suspend'} {s.describe()}")
    return f"{'; '.join(would)}, " if would else f"leave its {len(hop.subs)} final subscription(s) alone, "


# -- endings ------------------------------------------------------------------------------------------------------


def _cancel_sent_at(hop: Hop, now: datetime) -> datetime | None:
    """When this request last sent a cancel: this hop (now), or one before it."""
    return now if hop.wrote else hop.chain.cancel_sent_at


def _since_cancel(hop: Hop, now: datetime) -> float:
    """Seconds since this request last sent a cancel, else since its first handling."""
    return (now - (_cancel_sent_at(hop, now) or hop.chain.first_handled_at)).total_seconds()


def _message(hop: Hop, cause: Cause | None, detail: str | None, *, progress: bool, now: datetime) -> PollMessage:
    chain = hop.chain
    seen = chain.customer_seen or hop.looked
    # A dry run stays a discover stage for good (a poll stage can never be a dry run), and a poll stage needs a
    # listing: a release that trusts poll messages would otherwise DELETE on an empty order list.
    listed = chain.stage == "poll" or hop.listed
    stage = "poll" if listed and seen and not chain.dry_run else "discover"
    return replace(
        chain,
        orders=hop.current_orders(),
        attempt=chain.attempt + (1 if hop.entry is Entry.POLL else 0),
        stage=stage,
        setbacks=0 if progress else chain.setbacks + 1,
        cause=cause.value if cause else None,
        cause_detail=_short(detail) if cause else None,
        customer_seen=seen,
        cancel_sent_at=_cancel_sent_at(hop, now),
        subscriptions=hop.current_subscriptions(),
        subscriptions_listed=chain.subscriptions_listed or hop.subs_listed,
        via_subscription=tuple(o for o in hop.order_ids if o in hop.via_sub),
    )


def _short(detail: str | None) -> str | None:
    """A cause detail as a poll message may carry it (at most MAX_CAUSE_CHARS): Partner Center's words can be long
    (an HTML error page, a refusal quoting many orders), and a longer one would make the next hop's message
    unreadable."""
    if not detail:
        return None
    return detail if len(detail) <= MAX_CAUSE_CHARS else detail[: MAX_CAUSE_CHARS - 1] + "…"


def _continue(
    hop: Hop,
    now: datetime,
    policy: Policy,
    cause: Cause | None,
    detail: str | None,
    *,
    want: float,
    why: str,
    progress: bool = False,
    beyond_end: bool = False,
) -> Continue:
    message = _message(hop, cause, detail, progress=progress, now=now)
    return Continue(message, _schedule(want, now, message, policy, beyond_end=beyond_end), why)


def _wait(
    hop: Hop,
    now: datetime,
    policy: Policy,
    cause: Cause,
    detail: str,
    *,
    retry_after: float | None = None,
    what: str = "Partner Center",
    beyond_end: bool = False,
) -> Continue:
    """Throttled, an outage, a refused DELETE: continue later, with a delay that grows while nothing progresses."""
    if cause is Cause.THROTTLED:  # at least Retry-After (1-900 s), spread up to half again, never beyond 900 s
        wait = (
            policy.interval
            if retry_after is None or not math.isfinite(retry_after)
            else min(policy.retry_after_max, max(1.0, retry_after))
        )
        want = min(float(max(wait, policy.retry_after_max)), wait + _spread(hop.chain, wait))
        why = f"throttled by Partner Center ({detail})"
    elif cause is Cause.DELETE_REFUSED:
        want = poll_delay(_since_cancel(hop, now), policy)
        why = f"Partner Center refused the DELETE ({detail}): reading everything again on the next hop"
    else:
        # Doubling from POLL_INTERVAL_SECONDS up to POLL_MAX_INTERVAL_SECONDS, spread down to half of that.
        wait = min(policy.max_interval, policy.interval * 2 ** min(hop.chain.setbacks, 20))
        want = max(1.0, wait - _spread(hop.chain, wait))
        why = f"{what} unavailable ({detail})"
    return _continue(hop, now, policy, cause, detail, want=want, why=why, beyond_end=beyond_end)


def _spread(chain: PollMessage, wait: float) -> float:
    """Up to half of ``wait``, different for each request and hop: requests throttled (or failed) together must not
    all come back in the same second and use up the next rate-limit window together. Derived from the request's
    identity, not from a random generator, so the core stays a pure function."""
    digest = hashlib.sha256(f"{chain.correlation_id}|{chain.attempt}|{chain.setbacks}".encode()).digest()
    return wait / 2 * int.from_bytes(digest[:4], "big") / 2**32


def _schedule(want: float, now: datetime, chain: PollMessage, policy: Policy, *, beyond_end: bool = False) -> int:
    """The delay, kept inside the milestones: no hop is scheduled past the cut-off, the final check or the end."""
    cut, final, hard = milestones(chain, policy)
    if now < cut:
        # The last moment a hop surely still confirms before the cut-off: picked up late, using all its work time.
        latest = cut - timedelta(seconds=policy.hop_work + policy.pickup)
        if now + timedelta(seconds=want) <= latest:
            return _seconds(timedelta(seconds=want))
        if (latest - now).total_seconds() >= 1:
            return _seconds(latest - now)
        if (cut - now).total_seconds() > 1:  # too close for a sure confirm; a quick one may still make it
            return min(_seconds(timedelta(seconds=max(want, 1))), _seconds(cut - now) - 1)
        return _seconds(final - now)
    if now < final:
        return _seconds(final - now)
    if now >= hard and beyond_end:  # only the request ledger's waits continue past the hard end
        return _seconds(timedelta(seconds=want))
    return max(0, min(_seconds(timedelta(seconds=want)), _seconds(hard - now)))


def _recovery_delay(chain: PollMessage, now: datetime, policy: Policy) -> int:
    want = min(policy.max_interval, policy.interval * 2 ** min(chain.recoveries - 1, 20))
    return _schedule(want, now, chain, policy)


def _seconds(delta: timedelta) -> int:
    return max(0, min(MAX_DELAY, math.ceil(delta.total_seconds())))


def _finish(hop: Hop, outcome: Outcome, detail: str, poison: Poison = Poison.NONE) -> Finish:
    attempts = hop.chain.attempt + (1 if hop.entry is not Entry.REQUEST else 0)
    return Finish(outcome, detail, hop.current_orders(), attempts, poison, hop.current_subscriptions())


def _fail(hop: Hop, text: str, *, checked: bool = True) -> Finish:
    suffix = "" if checked else " (whether the customer is already gone could not be checked)"
    return _finish(hop, Outcome.FAILED, text + suffix, Poison.EQUIVALENT)


def _gone(hop: Hop, failure: Failure) -> Finish:
    """The customer does not exist. ``not_found`` only at the request's own first look, or for a dry run.

    Anywhere else an earlier hop of this request may have deleted it (a DELETE whose answer was lost, or a hop that
    died after its DELETE), so the request reports ``deleted``.
    """
    chain = hop.chain
    said = f"GET customer: {failure.text()}"
    if chain.dry_run:
        return _finish(hop, Outcome.NOT_FOUND, f"Partner Center has no such customer ({said}); nothing was changed")
    if (hop.entry is Entry.REQUEST and not hop.looked) or (chain.absent_at_first_look and not chain.customer_seen):
        return _finish(hop, Outcome.NOT_FOUND, f"Partner Center has no such customer when the request arrived ({said})")
    if chain.customer_seen or hop.looked:
        why = (
            "it existed when this request first looked, so this request's DELETE (whose answer was lost, or sent "
            "by a hop that died) or another request removed it"
        )
    else:
        why = (
            "this request could not look at it when it arrived (throttling, an outage or a redelivery), so an "
            "earlier attempt of this request may have deleted it"
        )
    return _finish(hop, Outcome.DELETED, f"the customer no longer exists ({said}): {why}")


def _timed_out(hop: Hop, policy: Policy, *, unchecked: bool = False) -> Finish:
    """``timed_out``, naming the cause: what this hop read, when it read; otherwise why the last hops could not."""
    chain = hop.chain
    head = f"not finished by POLL_TIMEOUT_SECONDS ({policy.timeout}s after the request was first handled)"
    if chain.dry_run:
        return _finish(
            hop,
            Outcome.TIMED_OUT,
            f"{head}: the dry run could not finish its reads; nothing was changed",
            Poison.EQUIVALENT,
        )
    open_now = hop.open_orders
    read_everything = hop.listed and all(o in hop.fresh or o in hop.via_sub for o in hop.order_ids)
    if open_now:
        reason = f"orders still open: {', '.join(open_now)}"
    elif read_everything and chain.cause == Cause.DELETE_REFUSED.value:
        reason = f"every order reads cancelled, but Partner Center refused the DELETE ({chain.cause_detail})"
    elif read_everything and chain.delete_refusals:
        # The hop that met the cut-off records "open" as its cause; the refusals before it are still counted.
        reason = f"every order reads cancelled, but Partner Center refused the DELETE ({chain.delete_refusals} time(s))"
    elif read_everything:
        reason = "every order reads cancelled now, but they turned cancelled too late for a DELETE before the cut-off"
    else:
        last_seen_open = [o.id for o in hop.current_orders() if not is_cancelled(o.status)]
        orders = (
            f"orders last seen open: {', '.join(last_seen_open)}"
            if last_seen_open
            else "its orders were never listed"
            if chain.stage == "discover" and not hop.order_ids
            else "every order known was last seen cancelled"
        )
        why = {
            Cause.THROTTLED.value: f"Partner Center kept throttling ({chain.cause_detail})",
            Cause.OUTAGE.value: f"Partner Center was unavailable ({chain.cause_detail})",
            Cause.DELETE_REFUSED.value: f"Partner Center refused the DELETE ({chain.cause_detail})",
            Cause.OUT_OF_TIME.value: "the confirming reads did not fit into one invocation's work budget",
            Cause.RECOVERY.value: "invocations kept dying (host restarts)",
            Cause.OPEN.value: "orders still open",
        }.get(chain.cause or "", "the reads could not be finished")
        reason = f"{why}; {orders}"
    not_final = [f"{s.kind} subscription {s.id} ({s.status})" for s in hop.current_subscriptions() if not s.final]
    if not_final and policy.clear_subscriptions:
        reason += f"; subscriptions last seen not final: {', '.join(not_final[:5])}"
    if unchecked:
        reason += "; the customer could not be checked at the end either"
    sent = "no DELETE was accepted" if chain.delete_refusals else "no DELETE was sent"
    return _finish(hop, Outcome.TIMED_OUT, f"{head}: {reason}; {sent}", Poison.EQUIVALENT)


def _fmt(seconds: float | None) -> str:
    return "not given" if seconds is None else f"{seconds:g}s"
