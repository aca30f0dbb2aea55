"""The pure core, table-driven: whole hops, (state, observations) -> calls and the hop's last command. No I/O."""

from __future__ import annotations

import math
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared import workflow as core
from shared.messages import DeletionRequest, OrderState, PollMessage, SubscriptionState, parse_poll_message
from shared.workflow import (
    Answer,
    CancelOrder,
    Continue,
    DeleteCustomer,
    Failure,
    FailureKind,
    Finish,
    GetCustomer,
    GetOrder,
    ListEntitlements,
    Outcome,
    Poison,
    Policy,
)

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
CUST = "eebd1b55-5360-4438-a11d-5c06918c3014"
CORR = "1438ea3d-b515-45c7-9ec1-27ee0cc8e6bd"
PROTECTED = "0f0e0d0c-0b0a-4909-8807-060504030201"
A, B, C = "A" * 33, "B" * 33, "C" * 33
POLICY = Policy(
    interval=30,
    max_interval=600,
    timeout=3600,
    protected=frozenset({PROTECTED}),
    hop_work=10,
    pickup=10,
    settle=60,
    call_time=35,
)
# The final check starts at the cut-off unless a DELETE was decided (then CLAIM_SECONDS after that decision). The hard
# end keeps room for one whole hop: 900 - 55 = 845 < 60 + 2 x 600.
CUT = FINAL = T0 + timedelta(seconds=3600)
HARD = T0 + timedelta(seconds=3600 + 845)


def order(status):
    return Answer({"status": status})


def refused(status, code, text, where="PATCH /o"):
    return Failure(FailureKind.REFUSED if status != 404 else FailureKind.NOT_FOUND, status, code, text, where=where)


NOT_FOUND = Failure(FailureKind.NOT_FOUND, 404, "60003", "Tenant not found", where="GET /v1/customers/x")
THROTTLED = Failure(FailureKind.THROTTLED, 429, "429", "Rate limit is exceeded.", 75.0, where="GET /o")
OUTAGE = Failure(FailureKind.TRANSIENT, 503, "800003", "Unexpected service error", where="GET /o")


def poll(*orders, attempt=1, stage="poll", **kw):
    """A poll message of this release (it listed the subscriptions on the request's first hop) unless ``kw`` says
    otherwise."""
    kw.setdefault("subscriptions_listed", stage == "poll")
    return PollMessage(
        CUST,
        CORR,
        tuple(OrderState(i, s) for i, s in orders),
        attempt,
        T0 - timedelta(seconds=5),
        T0,
        stage=stage,
        customer_seen=stage == "poll",
        **kw,
    )


def request(dry_run=False, customer=CUST):
    return DeletionRequest(customer, CORR, dry_run, T0 - timedelta(seconds=5))


def drive(start, world, *, now=T0 + timedelta(seconds=100), elapsed=None, policy=POLICY, listings=False):
    """Run one hop; ``world`` maps each call to its observation (a list: one per call, in order). -> (calls, last).

    A customer of these tests holds no subscriptions unless ``world`` lists some: the subscription listing answers
    an empty list, and is left out of ``calls`` unless ``listings`` (the tests of subscriptions keep it)."""
    if not isinstance(start, core.Hop):
        return [], start
    listings = listings or core.ListSubscriptions() in world
    world = {core.ListSubscriptions(): Answer([]), **world}
    calls, last = _drive(start, world, now=now, elapsed=elapsed, policy=policy)
    return (calls if listings else [c for c in calls if not isinstance(c, core.ListSubscriptions)]), last


def _drive(start, world, *, now, elapsed, policy):
    script = {k: list(v) if isinstance(v, list) else [v] for k, v in world.items()}
    hop, obs = start, None
    calls: list[core.Call] = []
    while True:
        hop, cmd = core.step(hop, obs, now=now, elapsed=elapsed(len(calls)) if elapsed else 0.0, policy=policy)
        if isinstance(cmd, (Continue, Finish, core.Retry)):
            return calls, cmd
        calls.append(cmd)
        answers = script.get(cmd)
        assert answers, f"the world has no answer for {cmd}; calls so far: {calls}"
        obs = answers.pop(0) if len(answers) > 1 else answers[0]
        assert len(calls) < 100, "a hop that never ends"


def first_delivery(req=None, now=T0):
    return core.begin_request(req or request(), delivery=1, now=now, policy=POLICY)


def poll_hop(message, now=T0 + timedelta(seconds=100), delivery=1):
    return core.begin_poll(message, delivery=delivery, now=now, policy=POLICY)


# -- delete_customer: the request's first delivery ---------------------------------------------------------------------


def test_first_look_finds_no_customer_not_found():
    calls, last = drive(first_delivery(), {GetCustomer(): NOT_FOUND})
    assert calls == [GetCustomer()]
    assert last.outcome is Outcome.NOT_FOUND and "60003" in last.detail and last.poison is Poison.NONE


def test_discovery_cancels_every_open_order_and_polls_after_the_interval():
    calls, last = drive(
        first_delivery(),
        {
            GetCustomer(): Answer({}),
            ListEntitlements(): Answer([A, B, A]),
            CancelOrder(A): order("pending"),
            CancelOrder(B): order("cancelled"),
        },
    )
    # No read before the cancel, and none after it in this hop: B's "cancelled" answer is no proof (issue 8).
    assert calls == [GetCustomer(), ListEntitlements(), CancelOrder(A), CancelOrder(B)]
    assert isinstance(last, Continue) and last.delay == POLICY.interval
    assert last.message.stage == "poll" and last.message.attempt == 0 and last.message.customer_seen
    assert [(o.id, o.status) for o in last.message.orders] == [(A, "pending"), (B, "pending")]


def test_everything_read_cancelled_goes_to_poll_orders_at_once_and_never_deletes_here():
    already = refused(400, "800061", "Order cannot be canceled")
    calls, last = drive(
        first_delivery(),
        {
            GetCustomer(): Answer({}),
            ListEntitlements(): Answer([A, B]),
            CancelOrder(A): already,
            CancelOrder(B): already,
            GetOrder(A): order("cancelled"),
            GetOrder(B): order("CANCELLED"),
        },
    )
    assert calls == [GetCustomer(), ListEntitlements(), CancelOrder(A), GetOrder(A), CancelOrder(B), GetOrder(B)]
    assert isinstance(last, Continue) and last.delay == 0 and last.message.stage == "poll"


def test_a_patch_answering_cancelled_is_no_proof_the_next_hop_reads_it():
    calls, last = drive(
        first_delivery(),
        {GetCustomer(): Answer({}), ListEntitlements(): Answer([A]), CancelOrder(A): order("cancelled")},
    )
    assert calls == [GetCustomer(), ListEntitlements(), CancelOrder(A)]
    assert isinstance(last, Continue) and last.delay == POLICY.interval
    assert [(o.id, o.status) for o in last.message.orders] == [(A, "pending")]  # never "cancelled" from a PATCH
    calls, last = drive(poll_hop(last.message), {GetOrder(A): order("pending")})
    assert calls == [GetOrder(A)] and isinstance(last, Continue)


def test_dry_run_reads_only():
    calls, last = drive(
        first_delivery(request(dry_run=True)),
        {
            GetCustomer(): Answer({}),
            ListEntitlements(): Answer([A, B]),
            GetOrder(A): order("completed"),
            GetOrder(B): order("cancelled"),
        },
    )
    assert calls == [GetCustomer(), ListEntitlements(), GetOrder(A), GetOrder(B)]
    assert last.outcome is Outcome.DRY_RUN and A in last.detail and "1 order(s)" in last.detail


def test_a_dry_run_out_of_time_stays_a_dry_run():
    calls, last = drive(
        first_delivery(request(dry_run=True)),
        {GetCustomer(): Answer({}), ListEntitlements(): Answer([A, B]), GetOrder(A): order("completed")},
        elapsed=lambda n: 0.0 if n < 3 else 11.0,
    )
    assert isinstance(last, Continue) and last.message.dry_run and last.message.stage == "discover"
    assert core.CancelOrder(A) not in calls


def test_protected_customer_zero_calls():
    last = first_delivery(request(customer=PROTECTED))
    assert isinstance(last, Finish) and last.outcome is Outcome.REJECTED and last.poison is Poison.NONE


# -- poll_orders ----------------------------------------------------------------------------------------------------


def test_intermediate_hop_stops_at_the_first_open_order():
    calls, last = drive(poll_hop(poll((B, "cancelled"), (A, "pending"))), {GetOrder(A): order("pending")})
    assert calls == [GetOrder(A)]  # A was last seen open, so it is read first; B is not read at all
    # 100 s since the request was first handled: the next grid point is 120 s (POLL_INTERVAL_SECONDS 30 x 4).
    assert isinstance(last, Continue) and last.delay == 20 and last.message.cause == "open"


def test_the_poll_delay_grows_with_the_time_since_the_last_cancel():
    message = poll((A, "pending"), cancel_sent_at=T0 + timedelta(seconds=20))
    _, last = drive(poll_hop(message), {GetOrder(A): order("pending")}, now=T0 + timedelta(seconds=1520))
    # The grid (POLL_INTERVAL_SECONDS 30): 30, 60 ... 300, then 10 % later each; 1500 s after the cancel the next
    # point is 300 x 1.1^17 = 1516.3 s: the poll waits until then, not 10 % of 1500 s from now.
    assert last.delay == 16 and last.message.cancel_sent_at == T0 + timedelta(seconds=20)
    _, last = drive(poll_hop(poll((A, "pending"))), {GetOrder(A): order("pending")}, now=T0 + timedelta(seconds=1520))
    # no cancel recorded (an older message): counted from the first handling, next point 1667.9 s
    assert last.delay == 147


def test_a_new_cancel_starts_the_poll_delay_again():
    message = poll((A, "pending"), (C, "active"), cancel_sent_at=T0)
    now = T0 + timedelta(seconds=2000)
    calls, last = drive(
        poll_hop(message),
        {GetOrder(C): order("active"), CancelOrder(C): order("pending"), GetOrder(A): order("pending")},
        now=now,
    )
    assert CancelOrder(C) in calls
    assert last.delay == POLICY.interval and last.message.cancel_sent_at == now


def test_confirming_hop_lists_and_reads_everything_then_deletes():
    calls, last = drive(
        poll_hop(poll((A, "pending"), (B, "cancelled"))),
        {
            GetOrder(A): order("cancelled"),
            GetOrder(B): order("cancelled"),
            ListEntitlements(): Answer([A, B]),
            DeleteCustomer(): Answer(None),
        },
    )
    assert calls == [GetOrder(A), GetOrder(B), ListEntitlements(), DeleteCustomer()]
    assert last.outcome is Outcome.DELETED and last.poll_attempts == 2


def test_a_forged_all_cancelled_message_causes_reads_not_a_delete():
    calls, last = drive(
        poll_hop(poll((A, "cancelled"), (B, "cancelled"))),
        {GetOrder(A): order("cancelled"), GetOrder(B): order("pending")},
    )
    assert DeleteCustomer() not in calls and isinstance(last, Continue)


def test_an_order_that_appears_after_discovery_is_cancelled_and_waited_for():
    calls, last = drive(
        poll_hop(poll((A, "pending"))),
        {GetOrder(A): order("cancelled"), ListEntitlements(): Answer([A, C]), CancelOrder(C): order("pending")},
    )
    assert calls == [GetOrder(A), ListEntitlements(), CancelOrder(C)]
    assert isinstance(last, Continue) and [o.id for o in last.message.orders] == [A, C]


def test_an_order_that_fell_back_is_cancelled_again():
    calls, last = drive(
        poll_hop(poll((A, "pending"))), {GetOrder(A): order("completed"), CancelOrder(A): order("pending")}
    )
    assert calls == [GetOrder(A), CancelOrder(A)] and isinstance(last, Continue)


def test_a_refused_second_cancel_reads_the_order_and_carries_on():
    already = refused(400, "800061", "Order cannot be canceled")
    calls, last = drive(
        poll_hop(poll((A, "completed"))),
        {
            GetOrder(A): [order("completed"), order("cancelled")],
            CancelOrder(A): already,
            ListEntitlements(): Answer([A]),
            DeleteCustomer(): Answer(None),
        },
    )
    # A status the poll message claims is read before anything is changed; then the cancel, refused, is read again.
    assert calls == [GetOrder(A), CancelOrder(A), GetOrder(A), ListEntitlements(), DeleteCustomer()]
    assert last.outcome is Outcome.DELETED


def test_a_refusal_of_an_order_that_still_needs_a_cancel_fails_with_partner_centers_words():
    window = refused(400, "900117", "You have passed your 60-day cancellation window.")
    calls, last = drive(
        first_delivery(),
        {
            GetCustomer(): Answer({}),
            ListEntitlements(): Answer([A]),
            GetOrder(A): order("completed"),
            CancelOrder(A): window,
        },
    )
    assert calls[-1] == GetOrder(A) and last.outcome is Outcome.FAILED
    assert "900117" in last.detail and "60-day" in last.detail and last.poison is Poison.EQUIVALENT


def test_an_order_missing_while_the_customer_exists_fails_after_checking_the_customer():
    calls, last = drive(
        poll_hop(poll((A, "pending"))),
        {GetOrder(A): refused(404, "20000", "Order Id not found", "GET /o"), GetCustomer(): Answer({})},
    )
    assert calls == [GetOrder(A), GetCustomer()] and last.outcome is Outcome.FAILED and "20000" in last.detail


def test_a_customer_gone_mid_chain_is_deleted_not_failed():
    calls, last = drive(poll_hop(poll((A, "pending"))), {GetOrder(A): NOT_FOUND, GetCustomer(): NOT_FOUND})
    assert calls == [GetOrder(A), GetCustomer()] and last.outcome is Outcome.DELETED


def test_a_customer_gone_at_a_later_first_look_is_deleted_because_a_sibling_may_have_deleted_it():
    _calls, last = drive(poll_hop(poll(stage="discover", attempt=0)), {GetCustomer(): NOT_FOUND})
    assert last.outcome is Outcome.DELETED and "could not look at it when it arrived" in last.detail


def test_a_dry_run_finding_no_customer_later_is_not_found():
    message = replace(poll(stage="discover", attempt=0), dry_run=True)
    _calls, last = drive(poll_hop(message), {GetCustomer(): NOT_FOUND})
    assert last.outcome is Outcome.NOT_FOUND


@pytest.mark.parametrize(
    "failure, delay, cause",
    [
        (THROTTLED, 75, "throttled"),
        (replace(THROTTLED, retry_after=None), POLICY.interval, "throttled"),
        (replace(THROTTLED, retry_after=5000.0), 900, "throttled"),
        (OUTAGE, POLICY.interval, "outage"),
        (Failure(FailureKind.AUTH, 401, "800001", "Partner Token missing", where="GET /o"), POLICY.interval, "outage"),
        (
            Failure(FailureKind.TRANSIENT, None, None, "ConnectionError talking to Partner Center", where="GET /o"),
            POLICY.interval,
            "outage",
        ),
    ],
)
def test_throttling_and_outages_continue_on_the_poll_queue(failure, delay, cause):
    _calls, last = drive(poll_hop(poll((A, "pending"))), {GetOrder(A): failure})
    assert isinstance(last, Continue) and spread(last.delay, delay, cause) and last.message.cause == cause
    assert last.message.setbacks == 1 and last.message.attempt == 2


def spread(delay, wait, cause="throttled"):
    """A throttled hop waits Retry-After plus up to half of it again, never beyond 900 s; an outage back-off is spread
    down to half of itself, never beyond POLL_MAX_INTERVAL_SECONDS (see the next test)."""
    if cause == "throttled":
        return wait <= delay <= min(900, math.ceil(wait * 1.5))
    return math.floor(wait / 2) <= delay <= wait


def test_requests_throttled_together_come_back_spread_out():
    delays = set()
    for i in range(40):
        message = replace(poll((A, "pending")), correlation_id=str(uuid.UUID(int=i)))
        _, last = drive(poll_hop(message), {GetOrder(A): replace(THROTTLED, retry_after=60.0)})
        assert spread(last.delay, 60)
        delays.add(last.delay)
    assert len(delays) >= 15  # not all in the same second


def test_outage_backoff_grows_while_nothing_progresses_and_resets_after():
    message = poll((A, "pending"), setbacks=3, cause="outage")
    _, last = drive(poll_hop(message), {GetOrder(A): OUTAGE})
    assert spread(last.delay, min(POLICY.max_interval, POLICY.interval * 8), "outage") and last.message.setbacks == 4
    _, last = drive(poll_hop(message), {GetOrder(A): order("pending")})
    assert last.message.setbacks == 0 and last.message.cause == "open"


def test_a_hop_hands_over_after_its_work_budget():
    calls, last = drive(
        poll_hop(poll((A, "pending"), (B, "cancelled"))),
        {GetOrder(A): order("cancelled")},
        elapsed=lambda n: 0.0 if n < 1 else 10.5,
    )
    assert calls == [GetOrder(A)]
    assert isinstance(last, Continue) and last.delay == 1 and last.message.cause == "out_of_time"
    assert {o.id: o.status for o in last.message.orders} == {A: "cancelled", B: "cancelled"}  # hints only


def test_a_refused_delete_keeps_polling_and_names_the_refusal():
    text = (
        "Customer relationship cannot be removed due to active Azure reserved instances.Please cancel the "
        "following orders: 0bed3bbca6c"
    )
    _calls, last = drive(
        poll_hop(poll((A, "cancelled"))),
        {
            GetOrder(A): order("cancelled"),
            ListEntitlements(): Answer([A]),
            DeleteCustomer(): refused(400, "800000", text, "DELETE /c"),
        },
    )
    assert isinstance(last, Continue) and last.message.delete_refusals == 1 and last.message.cause == "delete_refused"
    assert "0bed3bbca6c" in (last.message.cause_detail or "")


def test_a_lost_delete_answer_is_settled_by_the_next_hop():
    _, last = drive(
        poll_hop(poll((A, "cancelled"))),
        {
            GetOrder(A): order("cancelled"),
            ListEntitlements(): Answer([A]),
            DeleteCustomer(): Failure(FailureKind.TRANSIENT, None, None, "ReadTimeout", where="DELETE /c"),
        },
    )
    assert isinstance(last, Continue) and "answer lost" in (last.message.cause_detail or "")
    _calls, last = drive(
        poll_hop(last.message, now=T0 + timedelta(seconds=200)), {GetOrder(A): NOT_FOUND, GetCustomer(): NOT_FOUND}
    )
    assert last.outcome is Outcome.DELETED


def test_unsafe_ids_fail_without_a_guess():
    unsafe = Failure(
        FailureKind.UNSAFE,
        description="entitlement names an order id that is not the documented shape: '../x'",
        where="GET entitlements",
    )
    calls, last = drive(poll_hop(poll((A, "cancelled"))), {GetOrder(A): order("cancelled"), ListEntitlements(): unsafe})
    assert (
        last.outcome is Outcome.FAILED and "not the documented shape" in last.detail and DeleteCustomer() not in calls
    )


def test_a_409_on_a_cancel_means_in_progress():
    busy = Failure(FailureKind.CONFLICT, 409, "800060", "Your order is in progress.", where="PATCH /o")
    _calls, last = drive(
        first_delivery(),
        {
            GetCustomer(): Answer({}),
            ListEntitlements(): Answer([A]),
            GetOrder(A): order("completed"),
            CancelOrder(A): busy,
        },
    )
    assert isinstance(last, Continue) and last.message.orders == (OrderState(A, "pending"),)


# -- redeliveries, protection, unreadable and forged messages --------------------------------------------------------


def test_a_redelivered_request_hands_over_without_a_call():
    last = core.begin_request(request(), delivery=2, now=T0 + timedelta(seconds=600), policy=POLICY)
    assert isinstance(last, Continue) and last.message.stage == "discover" and last.message.recoveries == 1
    # its first handling was no earlier than requestedAt; the service puts the ledger row's in when it can read it
    assert last.message.first_handled_at == T0 - timedelta(seconds=5) and last.message.delete_by is None
    assert last.delay == POLICY.interval


def test_a_redelivered_poll_message_hands_over_with_a_growing_delay():
    message = poll((A, "pending"), recoveries=2)
    last = poll_hop(message, delivery=5)  # the last delivery works like any other: it hands over
    assert isinstance(last, Continue) and last.message.recoveries == 3 and last.delay == POLICY.interval * 4
    assert replace(last.message, recoveries=2, cause=None) == message


def test_a_poll_message_for_a_protected_customer_is_rejected_with_zero_calls():
    last = poll_hop(replace(poll((A, "cancelled")), customer_id=PROTECTED))
    assert isinstance(last, Finish) and last.outcome is Outcome.REJECTED


def test_a_poll_message_from_the_future_is_unreadable_and_looks_once_before_failing():
    calls, last = drive(
        poll_hop(replace(poll((A, "cancelled")), first_handled_at=T0 + timedelta(days=1))), {GetCustomer(): Answer({})}
    )
    assert calls == [GetCustomer()] and last.outcome is Outcome.FAILED and last.poison is Poison.EQUIVALENT
    assert "times lie in the future" in last.detail


def test_a_poll_message_cannot_move_its_cut_off_later():
    message = replace(poll((A, "cancelled")), delete_by=T0 + timedelta(days=30))
    assert core.milestones(message, POLICY)[0] == CUT


def unreadable(customer=CUST, correlation=CORR, dry_run=False):
    return core.unreadable_poll(
        "x", customer_id=customer, correlation_id=correlation, dry_run=dry_run, requested_at=T0, now=T0, policy=POLICY
    )


@pytest.mark.parametrize(
    "answer, outcome", [(Answer({}), Outcome.FAILED), (NOT_FOUND, Outcome.DELETED), (OUTAGE, Outcome.FAILED)]
)
def test_an_unreadable_poll_message_looks_whether_the_customer_is_gone_then_fails(answer, outcome):
    calls, last = drive(unreadable(), {GetCustomer(): answer})
    assert calls == [GetCustomer()] and last.outcome is outcome
    assert last.poison is (Poison.EQUIVALENT if outcome is Outcome.FAILED else Poison.NONE)
    assert ("could not be checked" in last.detail) is (answer is OUTAGE)


def test_unreadable_poll_messages_without_a_readable_request_wait_as_they_were_and_protection_wins():
    for last in (unreadable(customer=None), unreadable(correlation=None), unreadable(dry_run=None)):
        assert isinstance(last, Finish) and last.outcome is Outcome.FAILED and last.poison is Poison.POLL_ORIGINAL
    last = unreadable(customer=PROTECTED)
    assert isinstance(last, Finish) and last.outcome is Outcome.FAILED and last.poison is Poison.EQUIVALENT
    _calls, last = drive(unreadable(dry_run=True), {GetCustomer(): NOT_FOUND})
    assert last.outcome is Outcome.NOT_FOUND


# -- the deadline ---------------------------------------------------------------------------------------------------


def test_no_hop_is_scheduled_past_the_last_moment_it_could_confirm():
    message = poll((A, "pending"), attempt=9)
    at = CUT - timedelta(seconds=24)  # the next grid point (3932.8 s) lies past the cut-off (3600 s)
    _, last = drive(poll_hop(message, now=at), {GetOrder(A): order("pending")}, now=at)
    assert last.delay == 24 - POLICY.hop_work - POLICY.pickup


def test_between_the_cut_off_and_the_final_check_nothing_is_called():
    """The final check waits CLAIM_SECONDS (``settle``) after a decided DELETE, so that it has landed; without one it
    starts at the cut-off."""
    decided = replace(poll((A, "pending")), deleting_at=CUT - timedelta(seconds=30))
    assert core.milestones(decided, POLICY)[1] == CUT + timedelta(seconds=30)
    last = poll_hop(decided, now=CUT + timedelta(seconds=1))
    assert isinstance(last, Continue) and last.delay == 29 and "a DELETE was decided" in last.why
    hop = poll_hop(poll((A, "pending")), now=CUT + timedelta(seconds=1))
    assert isinstance(hop, core.Hop) and hop.mode is core.Mode.FINAL


def test_a_delete_is_never_sent_at_or_after_the_cut_off():
    hop = poll_hop(poll((A, "cancelled")), now=CUT - timedelta(seconds=1))
    calls, last = drive(hop, {GetOrder(A): order("cancelled"), ListEntitlements(): Answer([A])}, now=CUT)
    assert DeleteCustomer() not in calls and isinstance(last, Continue) and last.delay == 0  # the final check next


def test_a_throttled_hop_respects_the_deadline():
    _, last = drive(
        poll_hop(poll((A, "pending")), now=CUT - timedelta(seconds=40)),
        {GetOrder(A): THROTTLED},
        now=CUT - timedelta(seconds=40),
    )
    assert last.delay == 20  # not Retry-After 75: the last useful moment to confirm is 20 s away


def test_the_final_check_classifies_from_fresh_reads():
    message = poll((A, "pending"), cause="open")
    calls, last = drive(
        poll_hop(message, now=FINAL),
        {GetCustomer(): Answer({}), GetOrder(A): order("pending"), ListEntitlements(): Answer([A])},
        now=FINAL,
    )
    assert calls == [GetCustomer(), GetOrder(A), ListEntitlements()] and DeleteCustomer() not in calls
    assert last.outcome is Outcome.TIMED_OUT and f"orders still open: {A}" in last.detail
    assert last.poison is Poison.EQUIVALENT


def test_the_final_check_writes_nothing():
    """It classifies from fresh reads only: an order that fell back is reported open, never PATCHed after the cut-off
    (one hop of the request works at a time, so no other chain's refusal needs reproducing)."""
    calls, last = drive(
        poll_hop(poll((A, "completed")), now=FINAL),
        {GetCustomer(): Answer({}), GetOrder(A): order("completed"), ListEntitlements(): Answer([A])},
        now=FINAL,
    )
    assert not any(isinstance(c, CancelOrder) for c in calls)
    assert last.outcome is Outcome.TIMED_OUT and f"orders still open: {A}" in last.detail


def test_the_final_check_finds_the_customer_gone():
    _calls, last = drive(poll_hop(poll((A, "cancelled")), now=FINAL), {GetCustomer(): NOT_FOUND}, now=FINAL)
    assert last.outcome is Outcome.DELETED


@pytest.mark.parametrize(
    "cause, status, words",
    [
        (
            "delete_refused",
            "cancelled",
            "every order reads cancelled, but Partner Center refused the DELETE (last: something)",
        ),
        ("throttled", "cancelled", "turned cancelled too late"),
        (None, "cancelled", "turned cancelled too late"),
        ("throttled", "pending", f"orders still open: {A}"),  # what the final check read wins over an older cause
    ],
)
def test_timed_out_names_what_the_final_check_read(cause, status, words):
    message = poll((A, "cancelled"), cause=cause, cause_detail="last: something")
    _calls, last = drive(
        poll_hop(message, now=FINAL),
        {GetCustomer(): Answer({}), GetOrder(A): order(status), ListEntitlements(): Answer([A])},
        now=FINAL,
    )
    assert last.outcome is Outcome.TIMED_OUT and words in last.detail and "kept throttling" not in last.detail


def test_timed_out_names_earlier_delete_refusals_when_the_cut_off_hop_recorded_open():
    """Was (seen under parallel test runs): a chain whose DELETE was refused 9 times, then cut off by the hop that
    found every order cancelled just after C (it records the cause "open"), ended 'turned cancelled too late for a
    DELETE before the cut-off; no DELETE was sent'. DELETEs were sent, and refused."""
    message = poll((A, "cancelled"), cause="open", delete_refusals=9)
    _calls, last = drive(
        poll_hop(message, now=FINAL),
        {GetCustomer(): Answer({}), GetOrder(A): order("cancelled"), ListEntitlements(): Answer([A])},
        now=FINAL,
    )
    assert last.outcome is Outcome.TIMED_OUT
    assert "Partner Center refused the DELETE (9 time(s))" in last.detail and "no DELETE was accepted" in last.detail
    assert "too late" not in last.detail and "no DELETE was sent" not in last.detail


@pytest.mark.parametrize(
    "cause, words",
    [
        ("throttled", "kept throttling (last: something)"),
        ("outage", "unavailable (last: something)"),
        ("delete_refused", "refused the DELETE (last: something)"),
        (None, "could not be finished"),
    ],
)
def test_timed_out_names_the_recorded_cause_when_the_final_check_could_not_read(cause, words):
    message = poll((A, "pending"), cause=cause, cause_detail="last: something")
    _calls, last = drive(poll_hop(message, now=HARD), {GetCustomer(): Answer({}), GetOrder(A): OUTAGE}, now=HARD)
    assert last.outcome is Outcome.TIMED_OUT and words in last.detail and f"orders last seen open: {A}" in last.detail


def test_a_final_check_that_keeps_failing_ends_at_the_hard_end():
    _, last = drive(poll_hop(poll((A, "pending")), now=FINAL), {GetCustomer(): THROTTLED}, now=FINAL)
    assert isinstance(last, Continue) and spread(last.delay, 75)
    _, last = drive(
        poll_hop(poll((A, "pending")), now=HARD - timedelta(seconds=10)),
        {GetCustomer(): THROTTLED},
        now=HARD - timedelta(seconds=10),
    )
    assert last.delay == 10  # never past the hard end
    message = poll((A, "pending"), cause="outage", cause_detail="503")
    calls, last = drive(poll_hop(message, now=HARD), {GetCustomer(): OUTAGE}, now=HARD)  # one look, then the end
    assert calls == [GetCustomer()] and isinstance(last, Finish)
    assert last.outcome is Outcome.TIMED_OUT and "unavailable" in last.detail and "could not be checked" in last.detail


def test_after_the_hard_end_a_look_still_classifies_a_refusal():
    gone = refused(403, "800002", "not allowed")
    _calls, last = drive(
        poll_hop(poll((A, "completed")), now=HARD + timedelta(seconds=999)),
        {GetCustomer(): gone},
        now=HARD + timedelta(seconds=999),
    )
    assert last.outcome is Outcome.FAILED and "800002" in last.detail


def test_a_look_at_the_hard_end_that_died_ends_the_request_without_another_call():
    last = poll_hop(poll((A, "pending"), cause="recovery"), now=HARD + timedelta(seconds=5), delivery=2)
    assert isinstance(last, Finish) and last.outcome is Outcome.TIMED_OUT and "could not be checked" in last.detail


def test_the_hard_end_keeps_the_documented_bound():
    """The look at the hard end, picked up late and taking a whole hop, ends within the bound."""
    bound = POLICY.timeout + max(POLICY.max_interval, 900)
    one_hop = POLICY.pickup + POLICY.hop_work + POLICY.call_time
    assert (HARD - T0).total_seconds() + one_hop <= bound
    decided = replace(poll((A, "pending")), deleting_at=CUT - timedelta(seconds=1))
    assert core.milestones(decided, POLICY)[2] == HARD  # a decided DELETE's wait fits before it


def test_the_request_ledgers_waits_go_on_past_the_hard_end_and_decide_nothing_without_it():
    storage = core.Failure(core.FailureKind.STORAGE, description="503", where="GET customer")
    calls, last = drive(
        poll_hop(poll((A, "pending")), now=HARD + timedelta(seconds=60)),
        {GetCustomer(): storage},
        now=HARD + timedelta(seconds=60),
    )
    assert calls == [GetCustomer()] and isinstance(last, Continue) and last.delay >= 1  # asked; the service sent none
    assert "request ledger" in (last.message.cause_detail or "")
    finish = core.Finish(Outcome.NOT_FOUND, "gone")
    first = core.begin_request(request(), delivery=1, now=T0, policy=POLICY)
    assert isinstance(first, core.Hop)
    carried = core.outcome_unrecorded(first, finish, T0, POLICY, "503")
    assert isinstance(carried, Continue) and carried.message.absent_at_first_look
    # the next hop finds the customer still absent: not_found, as the first look decided, not deleted
    _calls, last = drive(poll_hop(carried.message), {GetCustomer(): NOT_FOUND, core.ListSubscriptions(): NOT_FOUND})
    assert last.outcome is Outcome.NOT_FOUND
    unreadable = core.unreadable_poll(
        "bad", customer_id=CUST, correlation_id=CORR, dry_run=False, requested_at=T0, now=T0, policy=POLICY
    )
    assert isinstance(unreadable, core.Hop)
    assert isinstance(core.outcome_unrecorded(unreadable, finish, T0, POLICY, "503"), core.Retry)
    assert isinstance(core.decided_unrecorded(request=False, policy=POLICY, why="503"), core.Retry)
    assert core.decided_unrecorded(request=True, policy=POLICY, why="503") is None


def test_a_hint_never_causes_a_change_without_a_read():
    """A stale or forged poll message that calls an order "active" gets it read, not cancelled blindly."""
    calls, last = drive(
        poll_hop(poll((A, "active"), (B, "unknown"))), {GetOrder(A): order("pending"), GetOrder(B): order("pending")}
    )
    # Both may need a cancel, so both are read (issue 7); neither is PATCHed on a hint's word.
    assert calls == [GetOrder(A), GetOrder(B)] and isinstance(last, Continue)


def test_polls_land_on_the_grid_whatever_the_pickup():
    """Wherever a hop ran, its next poll lands on the next grid point (a second early at most, from rounding down)."""
    grid = [30 * k for k in range(1, 11)] + [300 * 1.1**j for j in range(1, 40)]
    for since in [0, 0.4, 29.5, 30, 31.7, 59.2, 299, 300, 301, 333.2, 1000, 1516, 5555.5]:
        lands = since + core.poll_delay(since, POLICY)
        nxt = min(g for g in grid if g > since + 1)
        assert nxt - 1 < lands <= nxt, (since, lands, nxt)


def test_poll_delay_grows_and_is_capped():
    seconds = [0, -5, 29.5, 299, 1000, 1009.9, float("inf"), float("nan")]
    assert [core.poll_delay(s, POLICY) for s in seconds] == [30, 30, 30, 31, 35, 25, 600, 600]
    capped = Policy(interval=30, max_interval=100, timeout=3600)
    assert core.poll_delay(10**6, capped) == 100  # the grid is far sparser there: the cap wins


# -- issue 16: a refused DELETE names its blockers and ends failed after DELETE_REFUSAL_TIMEOUT_SECONDS --------------

REFUSAL = (
    "Customer relationship cannot be removed due to active Azure reserved instances.Please cancel the "
    "following orders: 37c9b07a5722,0bed3bbca6c"
)


NCE = {
    "id": "a4c1340d-6911-4758-bba3-0c4c6007d161",
    "status": "active",
    "productType": {"id": "OnlineServicesNCE"},
    "orderId": "0bed3bbca6c",
}


def refusal_hop(first_refusal=None, refusals=0, subscriptions=None, elapsed=None):
    start = poll_hop(poll((A, "cancelled"), delete_refusals=refusals, first_delete_refusal_at=first_refusal))
    world = {
        GetOrder(A): Answer({"status": "cancelled", "alternateId": "37c9b07a5722"}),
        ListEntitlements(): Answer([A]),
        DeleteCustomer(): refused(400, "800000", REFUSAL, "DELETE /c"),
        core.ListSubscriptions(): subscriptions if subscriptions is not None else Answer([NCE]),
    }
    return drive(
        start,
        world,
        now=T0 + timedelta(seconds=1000),
        # Without CLEAR_SUBSCRIPTIONS Partner Center decides: the subscriptions are listed only to name blockers.
        policy=replace(POLICY, delete_refusal_timeout=600, clear_subscriptions=False),
        elapsed=elapsed,
        listings=True,
    )


def test_a_first_refused_delete_starts_the_deadline_and_names_the_blockers_it_can_match():
    _, last = refusal_hop()
    assert isinstance(last, Continue) and last.message.first_delete_refusal_at == T0 + timedelta(seconds=1000)
    assert f"Partner Center names order {A}, an order Partner Center calls 0bed3bbca6c" in (
        last.message.cause_detail or ""
    )


def test_a_delete_refused_within_the_deadline_keeps_the_first_refusal_and_polls_on():
    first = T0 + timedelta(seconds=401)  # 599 s before this hop
    _, last = refusal_hop(first, refusals=3)
    assert isinstance(last, Continue) and last.message.first_delete_refusal_at == first
    assert last.message.delete_refusals == 4


def test_a_delete_still_refused_at_the_deadline_lists_the_subscriptions_and_ends_failed_naming_the_blockers():
    calls, last = refusal_hop(T0 + timedelta(seconds=400), refusals=3)
    assert calls[-2:] == [DeleteCustomer(), core.ListSubscriptions()]  # read only: nothing is written after it
    assert isinstance(last, Finish) and last.outcome is Outcome.FAILED and last.poison is core.Poison.EQUIVALENT
    assert "refused the DELETE 4 time(s) over 600s (DELETE_REFUSAL_TIMEOUT_SECONDS is 600)" in last.detail
    assert f"blockers: order {A}, nce subscription {NCE['id']} (active);" in last.detail  # 0bed3bbca6c is its order


def test_a_final_subscription_is_no_blocker_and_an_unreadable_one_is_skipped():
    done_id = "b4c1340d-6911-4758-bba3-0c4c6007d161"
    done = {**NCE, "id": done_id, "status": "deleted", "orderId": "x" * 12}
    _, last = refusal_hop(T0 + timedelta(seconds=400), subscriptions=Answer([done, {"id": "../x"}, "junk"]))
    assert isinstance(last, Finish) and last.outcome is Outcome.FAILED
    assert f"blockers: order {A}, an order Partner Center calls 0bed3bbca6c;" in last.detail
    assert done_id not in last.detail and "../x" not in last.detail


def test_when_the_subscriptions_cannot_be_listed_or_there_is_no_time_the_refusal_still_ends_failed():
    _, last = refusal_hop(T0 + timedelta(seconds=400), subscriptions=OUTAGE)
    assert isinstance(last, Finish) and last.outcome is Outcome.FAILED
    assert "(its subscriptions could not be listed)" in last.detail
    calls, last = refusal_hop(T0 + timedelta(seconds=400), elapsed=lambda n: 0.0 if n < 3 else 11.0)
    assert core.ListSubscriptions() not in calls
    assert isinstance(last, Finish) and last.outcome is Outcome.FAILED and "could not be listed" in last.detail


def test_a_long_partner_center_text_never_makes_the_next_poll_message_unreadable():
    page = "<html>" + "Service Unavailable " * 60 + "</html>"  # 1,200 characters of an error page
    _, last = drive(
        poll_hop(poll((A, "pending"))),
        {GetOrder(A): Failure(FailureKind.TRANSIENT, 503, None, page, where="GET /o")},
    )
    assert isinstance(last, Continue) and len(last.message.cause_detail or "") <= 400
    assert parse_poll_message(last.message.to_text()).cause_detail == last.message.cause_detail


def test_a_customer_gone_between_the_refusal_and_the_listing_is_checked_and_reported_deleted():
    gone = Failure(FailureKind.NOT_FOUND, 404, "60003", "Tenant not found", where="GET /subscriptions")
    start = poll_hop(poll((A, "cancelled"), delete_refusals=3, first_delete_refusal_at=T0 + timedelta(seconds=400)))
    world = {
        GetOrder(A): order("cancelled"),
        ListEntitlements(): Answer([A]),
        DeleteCustomer(): refused(400, "800000", REFUSAL, "DELETE /c"),
        core.ListSubscriptions(): gone,
        core.GetCustomer(): NOT_FOUND,
    }
    calls, last = drive(
        start,
        world,
        now=T0 + timedelta(seconds=1000),
        policy=replace(POLICY, delete_refusal_timeout=600, clear_subscriptions=False),
        listings=True,
    )
    assert calls[-2:] == [core.ListSubscriptions(), core.GetCustomer()]
    assert isinstance(last, Finish) and last.outcome is Outcome.DELETED  # a sibling's DELETE landed in between


# -- subscriptions (issue 16) --------------------------------------------------------------------------------------

PLAN_ID, NCE_ID, SAAS_ID, ADDON_ID = (
    "11111111-1111-4111-8111-111111111111",
    "22222222-2222-4222-8222-222222222222",
    "33333333-3333-4333-8333-333333333333",
    "44444444-4444-4444-8444-444444444444",
)
AZ1, AZ2 = "55555555-5555-4555-8555-555555555555", "66666666-6666-4666-8666-666666666666"
WINDOW = (T0 + timedelta(days=3)).isoformat().replace("+00:00", "Z")
PAST = (T0 - timedelta(days=3)).isoformat().replace("+00:00", "Z")


def sub(sid, status="active", kind="nce", **fields):
    shapes: dict[str, dict[str, Any]] = {
        "nce": {"productType": {"id": "OnlineServicesNCE"}, "cancellationAllowedUntilDate": WINDOW},
        "plan": {"offerId": "DZH318Z0BPS6:0001:DZH318Z0BPS6", "productType": {"id": "Azure"}},
        "saas": {"isMicrosoftProduct": False, "productType": {"id": "SaaS"}, "cancellationAllowedUntilDate": WINDOW},
        "legacy": {"productType": {"id": "OnlineServices"}},
        "unknown": {"productType": {"id": "SomethingNew"}, "offerId": "XYZ"},
    }
    return {"id": sid, "status": status, "autoRenewEnabled": True, "orderId": sid[:12], **shapes[kind], **fields}


def patch(s, target, etag=None):
    from shared.subscriptions import patch_body, read_subscription

    return core.PatchSubscription(s["id"], target, patch_body(read_subscription(s), target), etag)


def azure(*pairs):
    return Answer([{"id": i, "status": st} for i, st in pairs])


def test_the_first_hop_clears_subscriptions_beside_the_order_cancels():
    nce, plan = sub(NCE_ID), sub(PLAN_ID, kind="plan")
    calls, last = drive(
        first_delivery(),
        {
            GetCustomer(): Answer({}),
            core.ListSubscriptions(): Answer([plan, nce]),
            ListEntitlements(): Answer([A]),
            CancelOrder(A): order("pending"),
            patch(nce, "deleted"): Answer({}),
        },
    )
    assert calls == [
        GetCustomer(),
        core.ListSubscriptions(),  # before any write: an unknown kind would stop the request here
        ListEntitlements(),
        CancelOrder(A),
        patch(nce, "deleted"),  # inside its window: cancelled
    ]  # the plan waits for its reservations (order A) to read cancelled
    assert isinstance(last, Continue) and last.message.subscriptions_listed
    hints = {s.id: s for s in parse_poll_message(last.message.to_text()).subscriptions}
    assert hints[NCE_ID].action == "cancelled" and hints[NCE_ID].asked_at == T0 + timedelta(seconds=100)
    assert hints[PLAN_ID].action == "none" and hints[PLAN_ID].cancelled == ()


def test_the_azure_subscriptions_under_a_plan_are_cancelled_once_the_orders_and_the_saas_are_cleared():
    plan, saas = sub(PLAN_ID, kind="plan"), sub(SAAS_ID, kind="saas")
    world = {
        GetCustomer(): Answer({}),
        core.ListSubscriptions(): Answer([plan, saas]),
        ListEntitlements(): Answer([]),
        patch(saas, "deleted"): Answer({}),
        core.ListAzureEntitlements(PLAN_ID): azure((AZ1, "active"), (AZ2, "inactive")),
        core.CancelAzureEntitlement(PLAN_ID, AZ1): Answer({}),
    }
    calls, last = drive(first_delivery(), world)
    assert not [c for c in calls if isinstance(c, core.CancelAzureEntitlement)]  # the SaaS is not final yet
    assert isinstance(last, Continue)
    world[core.ListSubscriptions()] = Answer([plan, sub(SAAS_ID, "deleted", kind="saas")])
    calls, last = drive(poll_hop(replace(last.message, first_handled_at=T0)), world)
    assert calls[-2:] == [core.ListAzureEntitlements(PLAN_ID), core.CancelAzureEntitlement(PLAN_ID, AZ1)]
    assert isinstance(last, Continue)  # the inactive one is left alone; the plan waits for AZ1
    (hint,) = [s for s in last.message.subscriptions if s.id == PLAN_ID]
    assert hint.cancelled == (AZ1,) and hint.action == "none"


def test_every_active_azure_subscription_under_a_plan_is_cancelled_in_the_same_hop():
    """Found by the 2026 benchmark: the second one was cancelled only once the first read inactive, ten minutes on."""
    plan = sub(PLAN_ID, kind="plan")
    world = {
        GetCustomer(): Answer({}),
        core.ListSubscriptions(): Answer([plan]),
        ListEntitlements(): Answer([]),
        core.ListAzureEntitlements(PLAN_ID): azure((AZ1, "active"), (AZ2, "active")),
        core.CancelAzureEntitlement(PLAN_ID, AZ1): Answer({}),
        core.CancelAzureEntitlement(PLAN_ID, AZ2): Answer({}),
    }
    calls, last = drive(first_delivery(), world)
    assert calls[-2:] == [core.CancelAzureEntitlement(PLAN_ID, AZ1), core.CancelAzureEntitlement(PLAN_ID, AZ2)]
    assert isinstance(last, Continue) and {s.id: s.cancelled for s in last.message.subscriptions}[PLAN_ID] == (AZ1, AZ2)


def test_a_base_waits_for_its_add_on_to_read_final_and_a_listing_twice_counts_the_copy_not_final():
    base, addon = sub(NCE_ID), sub(ADDON_ID, parentSubscriptionId=NCE_ID)
    world = {
        core.ListSubscriptions(): Answer([base, addon]),
        patch(addon, "deleted"): Answer({}),
        ListEntitlements(): Answer([]),
    }
    calls, _ = drive(poll_hop(poll(subscriptions_listed=False)), world)
    assert [c for c in calls if isinstance(c, core.PatchSubscription)] == [patch(addon, "deleted")]
    world[core.ListSubscriptions()] = Answer([sub(NCE_ID, "deleted"), sub(NCE_ID)])
    world[patch(base, "deleted")] = Answer({})
    world[DeleteCustomer()] = Answer()
    calls, last = drive(poll_hop(poll(subscriptions_listed=False)), world)
    assert patch(base, "deleted") in calls and DeleteCustomer() not in calls and isinstance(last, Continue)


def plan_hint(**kw):
    from shared.messages import SubscriptionState

    return SubscriptionState(PLAN_ID, "azure_plan", "active", **kw)


def test_the_plan_is_suspended_only_once_everything_under_it_reads_inactive_and_the_delete_waits_for_a_read():
    plan = sub(PLAN_ID, kind="plan")
    start = poll_hop(poll((A, "pending"), subscriptions=(plan_hint(cancelled=(AZ1,), cancelled_at=T0),)))
    world = {
        GetOrder(A): order("cancelled"),
        ListEntitlements(): Answer([A]),
        core.ListSubscriptions(): Answer([plan]),
        core.ListAzureEntitlements(PLAN_ID): azure((AZ1, "active")),
    }
    calls, last = drive(start, world)
    assert calls[-2:] == [core.ListSubscriptions(), core.ListAzureEntitlements(PLAN_ID)]  # no second cancel
    assert isinstance(last, Continue) and "Azure subscription " + AZ1 in last.why
    world[core.ListAzureEntitlements(PLAN_ID)] = azure((AZ1, "inactive"))
    world[patch(plan, "suspended")] = Answer({})
    calls, last = drive(start, world)
    assert calls[-1] == patch(plan, "suspended") and isinstance(last, Continue)  # an accepted PATCH is no proof
    assert DeleteCustomer() not in calls
    suspended = poll_hop(replace(last.message, first_handled_at=T0))
    world[core.ListSubscriptions()] = Answer([sub(PLAN_ID, "suspended", kind="plan")])
    world[DeleteCustomer()] = Answer()
    calls, last = drive(suspended, world)
    assert calls[-4:] == [
        ListEntitlements(),
        core.ListSubscriptions(),
        core.ListAzureEntitlements(PLAN_ID),  # the DELETE's own invocation reads every one inactive
        DeleteCustomer(),
    ] and isinstance(last, Finish)
    assert last.outcome is Outcome.DELETED and "subscription(s) read final" in last.detail
    assert [(s.id, s.action, s.status, s.cancelled) for s in last.subscriptions] == [
        (PLAN_ID, "suspended", "suspended", (AZ1,))
    ]


def test_a_plan_waits_for_the_reservations_and_the_saas_billed_through_it():
    plan, saas = sub(PLAN_ID, kind="plan"), sub(SAAS_ID, kind="saas")
    hints = (plan_hint(cancelled_at=T0), SubscriptionState(SAAS_ID, "saas", "active", "cancelled", T0))
    world = {
        GetOrder(A): order("pending"),
        core.ListSubscriptions(): Answer([plan, saas]),
        core.ListAzureEntitlements(PLAN_ID): azure(),
    }
    calls, last = drive(poll_hop(poll((A, "pending"), subscriptions=hints)), world)
    assert calls == [GetOrder(A)] and isinstance(last, Continue)  # the RI order is open: nothing more this hop
    world[GetOrder(A)] = order("cancelled")
    world[ListEntitlements()] = Answer([A])
    calls, last = drive(poll_hop(poll((A, "pending"), subscriptions=hints)), world)
    assert not [c for c in calls if isinstance(c, core.PatchSubscription)]  # the SaaS is not final yet
    assert isinstance(last, Continue) and SAAS_ID in last.why


def test_past_its_window_a_subscription_is_suspended_with_auto_renew_off_and_a_late_refusal_falls_back():
    late = sub(NCE_ID, cancellationAllowedUntilDate=PAST)
    calls, _ = drive(
        poll_hop(poll(subscriptions_listed=False)),
        {
            core.ListSubscriptions(): Answer([late]),
            patch(late, "suspended"): Answer({}),
            ListEntitlements(): Answer([]),
        },
    )
    (sent,) = [c for c in calls if isinstance(c, core.PatchSubscription)]
    assert sent.target == "suspended" and sent.body["autoRenewEnabled"] is False and sent.body["status"] == "suspended"
    nce = sub(NCE_ID)
    refusal = refused(400, "900117", "You have passed your 7-day cancellation window.", "PATCH /s")
    calls, last = drive(
        poll_hop(poll(subscriptions_listed=False)),
        {
            core.ListSubscriptions(): Answer([nce]),
            patch(nce, "deleted"): refusal,
            patch(nce, "suspended"): Answer({}),
            ListEntitlements(): Answer([]),
        },
    )
    assert [c for c in calls if isinstance(c, core.PatchSubscription)] == [
        patch(nce, "deleted"),
        patch(nce, "suspended"),
    ]
    assert isinstance(last, Continue)
    assert parse_poll_message(last.message.to_text()).subscriptions[0].action == "suspended"


def test_legacy_is_suspended_with_auto_renew_as_read_and_an_add_on_goes_before_its_base():
    base, addon = sub(NCE_ID, kind="legacy"), sub(ADDON_ID, kind="legacy", parentSubscriptionId=NCE_ID)
    calls, _ = drive(
        poll_hop(poll(subscriptions_listed=False)),
        {
            core.ListSubscriptions(): Answer([base, addon]),
            patch(base, "suspended"): Answer({}),
            patch(addon, "suspended"): Answer({}),
            ListEntitlements(): Answer([]),
        },
    )
    assert [c for c in calls if isinstance(c, core.PatchSubscription)] == [patch(addon, "suspended")]
    calls, _ = drive(
        poll_hop(poll(subscriptions_listed=False)),
        {
            core.ListSubscriptions(): Answer(
                [base, sub(ADDON_ID, "suspended", kind="legacy", parentSubscriptionId=NCE_ID)]
            ),
            patch(base, "suspended"): Answer({}),
            ListEntitlements(): Answer([]),
        },
    )
    patches = [c for c in calls if isinstance(c, core.PatchSubscription)]
    assert patches == [patch(base, "suspended")]  # once its add-on reads final
    assert patches[0].body["autoRenewEnabled"] is True  # kept as read: left out, it would become false


def test_a_stale_etag_is_read_again_and_sent_again_once_per_hop():
    old = sub(NCE_ID, attributes={"etag": "e1"})
    new = sub(NCE_ID, attributes={"etag": "e2"})
    stale = refused(400, "2055", "Etag is no longer valid", "PATCH /s")
    calls, last = drive(
        poll_hop(poll(subscriptions_listed=False)),
        {
            core.ListSubscriptions(): Answer([old]),
            patch(old, "deleted", "e1"): stale,
            core.GetSubscription(NCE_ID): Answer(new),
            patch(new, "deleted", "e2"): Answer({}),
            ListEntitlements(): Answer([]),
        },
    )
    assert [c for c in calls if not isinstance(c, ListEntitlements)] == [
        core.ListSubscriptions(),
        patch(old, "deleted", "e1"),
        core.GetSubscription(NCE_ID),  # read at its own address, never at a Location
        patch(new, "deleted", "e2"),
    ]
    calls, last = drive(
        poll_hop(poll(subscriptions_listed=False)),
        {
            core.ListSubscriptions(): Answer([old]),
            patch(old, "deleted", "e1"): stale,
            core.GetSubscription(NCE_ID): Answer(new),
            patch(new, "deleted", "e2"): stale,
            ListEntitlements(): Answer([]),
        },
    )
    assert len([c for c in calls if isinstance(c, core.PatchSubscription)]) == 2 and isinstance(last, Continue)


@pytest.mark.parametrize("code", ["2011", "800091"])
def test_already_deleted_or_suspended_is_read_and_only_a_subscription_still_open_fails(code):
    nce = sub(NCE_ID)
    world = {
        core.ListSubscriptions(): Answer([nce]),
        patch(nce, "deleted"): refused(400, code, "Subscription can't be updated", "PATCH /s"),
        core.GetSubscription(NCE_ID): Answer(sub(NCE_ID, "deleted")),
        ListEntitlements(): Answer([]),
        DeleteCustomer(): Answer(),
    }
    calls, last = drive(poll_hop(poll(subscriptions_listed=False)), world)
    # Read by its id in this hop, final: the proof holds in the same hop.
    assert calls[-3:] == [core.GetSubscription(NCE_ID), ListEntitlements(), DeleteCustomer()]
    assert isinstance(last, Finish) and last.outcome is Outcome.DELETED
    world[core.GetSubscription(NCE_ID)] = Answer(nce)
    _, last = drive(poll_hop(poll(subscriptions_listed=False)), world)
    assert isinstance(last, Finish) and last.outcome is Outcome.FAILED and code in last.detail


def test_a_pending_operation_fails_with_partner_centers_words_and_not_ready_waits_then_fails_naming_it():
    nce = sub(NCE_ID)
    conflict = Failure(FailureKind.CONFLICT, 409, "900278", "There is a pending operation. Retry after 24 hours")
    world = {core.ListSubscriptions(): Answer([nce]), patch(nce, "deleted"): conflict, ListEntitlements(): Answer([])}
    _, last = drive(poll_hop(poll(subscriptions_listed=False)), world)
    assert isinstance(last, Finish) and last.outcome is Outcome.FAILED and "24 hours" in last.detail
    world[patch(nce, "deleted")] = Failure(FailureKind.CONFLICT, 409, "800082", "Subscription is not ready")
    _, last = drive(poll_hop(poll(subscriptions_listed=False)), world)
    assert isinstance(last, Continue) and last.message.subscriptions[0].asked_at == T0 + timedelta(seconds=100)
    later = poll_hop(
        replace(last.message, first_handled_at=T0 + timedelta(seconds=1800)), now=T0 + timedelta(seconds=1900)
    )
    _, last = drive(later, world, now=T0 + timedelta(seconds=1900))
    assert isinstance(last, Finish) and last.outcome is Outcome.FAILED
    assert "DELETE_REFUSAL_TIMEOUT_SECONDS" in last.detail and NCE_ID in last.detail


def test_an_accepted_change_that_never_shows_ends_failed_naming_it():
    hint = SubscriptionState(NCE_ID, "nce", "active", "cancelled", T0)
    world = {
        GetOrder(A): order("cancelled"),
        ListEntitlements(): Answer([A]),
        core.ListSubscriptions(): Answer([sub(NCE_ID)]),
    }
    calls, last = drive(poll_hop(poll((A, "cancelled"), subscriptions=(hint,))), world, now=T0 + timedelta(seconds=600))
    assert isinstance(last, Continue) and not [c for c in calls if isinstance(c, core.PatchSubscription)]
    _, last = drive(poll_hop(poll((A, "cancelled"), subscriptions=(hint,))), world, now=T0 + timedelta(seconds=1800))
    assert isinstance(last, Finish) and last.outcome is Outcome.FAILED and f"nce subscription {NCE_ID}" in last.detail


def test_an_unknown_kind_that_is_not_final_fails_at_once_and_a_final_one_is_only_listed():
    calls, last = drive(
        first_delivery(), {GetCustomer(): Answer({}), core.ListSubscriptions(): Answer([sub(NCE_ID, kind="unknown")])}
    )
    assert calls == [GetCustomer(), core.ListSubscriptions()]  # nothing was written
    assert isinstance(last, Finish) and last.outcome is Outcome.FAILED and "does not know how to clear" in last.detail
    assert last.poison is Poison.EQUIVALENT and last.subscriptions[0].kind == "unknown"
    _, last = drive(
        first_delivery(),
        {
            GetCustomer(): Answer({}),
            core.ListSubscriptions(): Answer([sub(NCE_ID, "expired", kind="unknown")]),
            ListEntitlements(): Answer([]),
        },
    )
    assert isinstance(last, Continue)


def test_a_subscription_id_that_is_not_a_guid_never_goes_near_a_url():
    calls, last = drive(
        first_delivery(), {GetCustomer(): Answer({}), core.ListSubscriptions(): Answer([sub("../../orders")])}
    )
    assert calls == [GetCustomer(), core.ListSubscriptions()]
    assert isinstance(last, Finish) and last.outcome is Outcome.FAILED and "not a GUID" in last.detail
    world = {
        GetCustomer(): Answer({}),
        core.ListSubscriptions(): Answer([sub(PLAN_ID, kind="plan")]),
        ListEntitlements(): Answer([]),
        core.ListAzureEntitlements(PLAN_ID): azure(("x/../y", "active")),
    }
    calls, last = drive(first_delivery(), world)
    assert not [c for c in calls if isinstance(c, core.CancelAzureEntitlement)]
    assert isinstance(last, Finish) and last.outcome is Outcome.FAILED and "not a GUID" in last.detail


def test_without_clear_subscriptions_they_are_listed_once_never_written_and_not_part_of_the_proof():
    policy = replace(POLICY, clear_subscriptions=False)
    nce = sub(NCE_ID)
    calls, last = drive(
        first_delivery(),
        {GetCustomer(): Answer({}), core.ListSubscriptions(): Answer([nce]), ListEntitlements(): Answer([])},
        policy=policy,
    )
    assert calls == [GetCustomer(), core.ListSubscriptions(), ListEntitlements()] and isinstance(last, Continue)
    calls, last = drive(
        core.begin_poll(last.message, delivery=1, now=T0 + timedelta(seconds=100), policy=policy),
        {ListEntitlements(): Answer([]), DeleteCustomer(): Answer()},
        policy=policy,
    )
    assert calls == [ListEntitlements(), DeleteCustomer()]  # Partner Center decides
    assert isinstance(last, Finish) and last.outcome is Outcome.DELETED
    assert [(s.id, s.action, s.status) for s in last.subscriptions] == [(NCE_ID, "none", "active")]


def test_a_dry_run_lists_what_it_would_clear_and_writes_nothing():
    request_ = request(dry_run=True)
    world = {
        GetCustomer(): Answer({}),
        core.ListSubscriptions(): Answer(
            [sub(NCE_ID), sub(PLAN_ID, kind="plan"), sub(SAAS_ID, "suspended", kind="saas")]
        ),
        ListEntitlements(): Answer([A]),
        GetOrder(A): order("completed"),
        core.ListAzureEntitlements(PLAN_ID): azure((AZ1, "active")),
    }
    calls, last = drive(first_delivery(request_), world)
    assert not [c for c in calls if isinstance(c, (CancelOrder, core.PatchSubscription, core.CancelAzureEntitlement))]
    assert isinstance(last, Finish) and last.outcome is Outcome.DRY_RUN
    assert f"cancel nce subscription {NCE_ID}" in last.detail
    assert f"cancel 1 Azure subscription(s) under plan {PLAN_ID} ({AZ1}), then suspend it" in last.detail
    assert SAAS_ID not in last.detail and "nothing was changed" in last.detail


def test_a_licence_order_refused_800063_is_settled_by_its_subscription():
    licence = sub(NCE_ID, kind="legacy", orderId=B)
    world = {
        GetCustomer(): Answer({}),
        core.ListSubscriptions(): Answer([licence]),
        ListEntitlements(): Answer([B]),
        CancelOrder(B): refused(400, "800063", "This order cannot be canceled", "PATCH /o"),
        patch(licence, "suspended"): Answer({}),
    }
    _, last = drive(first_delivery(), world)
    assert isinstance(last, Continue) and last.message.via_subscription == (B,)
    nxt = poll_hop(replace(last.message, first_handled_at=T0))
    world2 = {
        ListEntitlements(): Answer([B]),
        core.ListSubscriptions(): Answer([sub(NCE_ID, "suspended", kind="legacy", orderId=B)]),
        DeleteCustomer(): Answer(),
    }
    calls, last = drive(nxt, world2)
    assert CancelOrder(B) not in calls and GetOrder(B) not in calls
    assert isinstance(last, Finish) and last.outcome is Outcome.DELETED
    world[core.ListSubscriptions()] = Answer([])
    _, last = drive(first_delivery(), world)
    assert isinstance(last, Finish) and last.outcome is Outcome.FAILED and f"order {B}" in last.detail


def test_a_known_subscription_missing_from_the_listing_is_read_by_its_id_before_the_delete():
    hint = SubscriptionState(NCE_ID, "nce", "active", "cancelled", T0)
    world: dict[core.Call, core.Observation] = {
        ListEntitlements(): Answer([]),
        core.ListSubscriptions(): Answer([]),
        core.GetSubscription(NCE_ID): Answer(sub(NCE_ID)),
    }
    calls, last = drive(poll_hop(poll(subscriptions=(hint,))), world)
    assert core.GetSubscription(NCE_ID) in calls and isinstance(last, Continue)
    world[core.GetSubscription(NCE_ID)] = Failure(FailureKind.NOT_FOUND, 404, "2000", "Subscription not found")
    world[DeleteCustomer()] = Answer()
    calls, last = drive(poll_hop(poll(subscriptions=(hint,))), world)
    assert calls[-1] == DeleteCustomer() and isinstance(last, Finish) and last.outcome is Outcome.DELETED


def test_a_hint_that_a_subscription_is_final_never_replaces_a_read():
    forged = SubscriptionState(NCE_ID, "nce", "deleted", "cancelled", T0)
    world = {ListEntitlements(): Answer([]), core.ListSubscriptions(): Answer([sub(NCE_ID)])}
    calls, last = drive(poll_hop(poll(subscriptions=(forged,))), world)
    assert DeleteCustomer() not in calls and isinstance(last, Continue)


def test_a_delete_partner_center_answered_leaves_no_wait_for_the_final_check_and_a_lost_one_does():
    start = poll_hop(poll((A, "cancelled")), now=T0 + timedelta(seconds=100))
    world = {GetOrder(A): order("cancelled"), ListEntitlements(): Answer([A])}
    _, refused_once = drive(start, {**world, DeleteCustomer(): refused(400, "800000", "no", "DELETE /c")})
    assert isinstance(refused_once, Continue) and refused_once.message.deleting_at is None
    _, lost = drive(start, {**world, DeleteCustomer(): OUTAGE})
    assert isinstance(lost, Continue) and lost.message.deleting_at == T0 + timedelta(seconds=100)
    assert core.milestones(lost.message, POLICY)[1] == CUT  # decided long before the cut-off: no wait left


# -- the core is pure ---------------------------------------------------------------------------------------------

#: What the core's modules may import: the standard library's pure parts and the app's own pure modules.
PURE_IMPORTS = frozenset(
    {
        "__future__",
        "collections.abc",
        "dataclasses",
        "datetime",
        "enum",
        "hashlib",
        "json",
        "math",
        "re",
        "typing",
        "uuid",
        "shared.errors",
        "shared.hop",
        "shared.ids",
        "shared.messages",
        "shared.subscriptions",
    }
)


@pytest.mark.parametrize("module", ["hop", "workflow", "ledger", "messages", "subscriptions", "ids"])
def test_the_core_imports_nothing_that_does_io(module: str) -> None:
    import ast
    from pathlib import Path

    tree = ast.parse((Path(__file__).parents[2] / "shared" / f"{module}.py").read_text(encoding="utf-8"))
    imported = {
        name
        for node in ast.walk(tree)
        for name in (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    }
    assert imported, "the parse found no import at all"
    assert imported <= PURE_IMPORTS, f"shared/{module}.py imports {sorted(imported - PURE_IMPORTS)}"
