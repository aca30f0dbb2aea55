"""The two use cases against in-memory fakes (no sockets): every request ends in exactly one outcome."""

import dataclasses
import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest

from shared.config import Settings
from shared.errors import RefusedError, ThrottledError
from shared.service import Deps, handle_deletion_request, handle_poll
from tests.fakes import (
    Clock,
    FakeCustomer,
    FakeOrder,
    FakePartnerCenter,
    FakePublisher,
    FakeTable,
    queue_message,
)

CUST = "eebd1b55-5360-4438-a11d-5c06918c3014"
OTHER = "0a0b0c0d-0000-4000-8000-000000000001"
CORR = "1438ea3d-b515-45c7-9ec1-27ee0cc8e6bd"
O1, O2, O3 = "A" * 33, "B" * 33, "C" * 33
OUT, POLL, POISON, POLL_POISON = (
    "customer-deletion-outcomes",
    "customer-deletion-polls",
    "customer-deletions-poison",
    "customer-deletion-polls-poison",
)


@pytest.fixture
def world(tmp_path):
    env = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "POLL_INTERVAL_SECONDS": "30",
        "POLL_MAX_INTERVAL_SECONDS": "120",
        "POLL_TIMEOUT_SECONDS": "600",
        "PROTECTED_CUSTOMER_IDS": OTHER,
    }
    pc, pub, clock = FakePartnerCenter(), FakePublisher(), Clock()
    pc.clock = clock
    deps = Deps(
        settings=Settings.from_env(env, app_root=tmp_path),
        partner_center=pc,
        publisher=pub,
        clock=clock,
        monotonic=clock.monotonic,
        tables=FakeTable(),
    )
    return pc, pub, clock, deps


def request(deps, body, **kw):
    handle_deletion_request(queue_message(body, **kw), "inv-1", deps)


def run_polls(deps, pub, clock, max_hops=200, start=0):
    """Deliver poll messages one by one, advancing the clock by each one's delay, until none is left."""
    delivered = start
    while delivered < len(pub.on(POLL)) and delivered < max_hops:
        raw, delay = pub.on(POLL)[delivered]
        delivered += 1
        clock.advance(delay)
        handle_poll(queue_message(raw, id=f"poll-{delivered}"), f"inv-p{delivered}", deps)
    return delivered


def hops_run(pub):
    """Poll messages that ran a hop (a hand-over after a redelivery does not count)."""
    return len(pub.on(POLL))


def the_outcome(pub):
    outcomes = pub.json_on(OUT)
    assert len(outcomes) == 1, outcomes
    return outcomes[0]


def test_happy_path_with_cancellation_lag(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer(
        {O1: FakeOrder(pending_reads=2), O2: FakeOrder(), O3: FakeOrder(status="cancelled")}
    )
    request(deps, json.dumps({"customerTenantId": CUST, "correlationId": CORR}))
    # every order found is cancelled without a read first; O3 (already cancelled) too
    assert pc.count("cancel_order") == 3
    ((_first_poll, delay),) = pub.on(POLL)
    assert delay == 30
    hops = run_polls(deps, pub, clock)
    out = the_outcome(pub)
    assert out["outcome"] == "deleted" and out["customerTenantId"] == CUST and out["correlationId"] == CORR
    assert out["pollAttempts"] == hops == 3
    assert [d for _, d in pub.on(POLL)] == [
        30,
        30,
        30,
    ]  # 10 % of the time since the cancel is under POLL_INTERVAL_SECONDS
    confirm = pc.calls[pc.calls.index(("delete_customer", CUST)) - 5 : pc.calls.index(("delete_customer", CUST))]
    assert sorted(confirm) == sorted(
        [
            ("get_order", CUST, O1),
            ("get_order", CUST, O2),
            ("get_order", CUST, O3),
            ("entitlements", CUST),
            ("list_subscriptions", CUST),
        ]
    )
    assert {o["status"] for o in out["orders"]} == {"cancelled"}
    assert pc.count("delete_customer") == 1 and CUST not in pc.customers
    assert pub.on(POISON) == []


def test_no_orders_polls_without_delay(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({})
    request(deps, CUST)
    assert pub.on(POLL)[0][1] == 0
    run_polls(deps, pub, clock)
    assert the_outcome(pub)["outcome"] == "deleted"
    assert pc.count("cancel_order") == 0


def test_all_already_cancelled_polls_without_delay(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer(
        {
            O1: FakeOrder(status="Cancelled", second_cancel="error"),
            O2: FakeOrder(status="CANCELLED", second_cancel="error"),
        }
    )
    request(deps, CUST)
    # Each cancel is refused (already cancelled), so each order is read,
    # and reads cancelled: poll_orders confirms at once.
    assert pub.on(POLL)[0][1] == 0 and pc.count("cancel_order") == 2 and pc.count("get_order") == 2
    run_polls(deps, pub, clock)
    assert the_outcome(pub)["outcome"] == "deleted"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"customerTenantId": "../../v1/partners"}',
        b"\xff\xfe",
        b'{"customerTenantId": "%s", "dryRun": "no"}' % CUST.encode(),
    ],
)
def test_invalid_request_rejected_poisoned_zero_calls(world, body):
    pc, pub, _clock, deps = world
    request(deps, body)
    assert pc.calls == []
    out = the_outcome(pub)
    assert out["outcome"] == "rejected" and "invalid deletion request" in out["detail"]
    assert pub.on(POISON) == [(body, 0)]  # the original bytes, for a redrive
    assert pub.on(POLL) == []


def test_unknown_customer_is_not_found(world):
    pc, pub, _clock, deps = world
    request(deps, CUST)
    out = the_outcome(pub)
    assert out["outcome"] == "not_found" and "60003" in out["detail"]
    assert pub.on(POISON) == [] and pc.calls == [("get_customer", CUST)]


def test_protected_customer_never_touched(world):
    pc, pub, _clock, deps = world
    pc.customers[OTHER] = FakeCustomer({O1: FakeOrder()})
    for body in (OTHER, OTHER.upper(), json.dumps({"customerTenantId": OTHER.upper(), "dryRun": False})):
        request(deps, body)
    assert pc.calls == []
    assert [o["outcome"] for o in pub.json_on(OUT)] == ["rejected"] * 3


def test_protected_customer_checked_again_at_poll(world, tmp_path):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({})
    request(deps, CUST)
    deps.settings = Settings.from_env(
        {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "PROTECTED_CUSTOMER_IDS": CUST}, app_root=tmp_path
    )
    run_polls(deps, pub, clock)
    assert the_outcome(pub)["outcome"] == "rejected" and pc.count("delete_customer") == 0


def test_dry_run_reads_only(world):
    pc, pub, _clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder(), O2: FakeOrder(status="cancelled")})
    request(deps, json.dumps({"customerTenantId": CUST, "dryRun": True}))
    out = the_outcome(pub)
    assert out["outcome"] == "dry_run" and O1 in out["detail"] and O2 not in out["detail"]
    assert {c[0] for c in pc.calls} == {"get_customer", "entitlements", "get_order", "list_subscriptions"}
    assert pub.on(POLL) == [] and CUST in pc.customers


def test_refused_cancel_fails_with_partner_center_text(world):
    pc, pub, _clock, deps = world
    pc.customers[CUST] = FakeCustomer(
        {
            O1: FakeOrder(
                refuse=RefusedError(
                    400, "900117", "You have passed your 60-day cancellation window.", method="PATCH", path="/x"
                )
            )
        }
    )
    request(deps, CUST, id="m-9")
    out = the_outcome(pub)
    assert out["outcome"] == "failed" and "900117" in out["detail"] and "60-day" in out["detail"]
    ((poisoned, _),) = pub.on(POISON)  # an equivalent request, redrivable
    assert json.loads(poisoned) == {"customerTenantId": CUST, "correlationId": out["correlationId"], "dryRun": False}
    assert pc.count("delete_customer") == 0


def test_conflict_waits_for_next_poll(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder(conflict=True)})
    request(deps, CUST)
    assert pub.on(POLL)[0][1] == 30
    run_polls(deps, pub, clock)
    assert the_outcome(pub)["outcome"] == "deleted"
    assert pc.count("cancel_order") == 2


def test_order_falling_back_is_cancelled_again(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder(pending_reads=5)})
    request(deps, CUST)
    pc.customers[CUST].orders[O1] = FakeOrder(status="completed")  # fell back to an active state
    run_polls(deps, pub, clock)
    assert the_outcome(pub)["outcome"] == "deleted"
    assert pc.count("cancel_order") == 2


def test_never_cancelling_orders_time_out_without_delete(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder(pending_reads=10**6), O2: FakeOrder()})
    request(deps, CUST)
    hops = run_polls(deps, pub, clock)
    out = the_outcome(pub)
    assert out["outcome"] == "timed_out" and O1 in out["detail"] and O2 not in out["detail"]
    assert out["pollAttempts"] == hops
    assert pc.count("delete_customer") == 0
    assert json.loads(pub.on(POISON)[0][0])["customerTenantId"] == CUST  # a redrivable request
    policy = deps.policy  # the last wait spans from the last useful confirm to the final check
    assert max(d for _, d in pub.on(POLL)) <= max(120, policy.hop_work + policy.pickup + policy.settle)


def test_delete_refused_goes_back_to_polling_until_it_is_accepted(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder()})
    pc.delete_refusals = 2
    request(deps, CUST)
    run_polls(deps, pub, clock)
    assert the_outcome(pub)["outcome"] == "deleted" and pc.count("delete_customer") == 3


def test_a_delete_refused_until_the_deadline_times_out_naming_the_refusal(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder()})
    pc.delete_refusals = 10**6
    request(deps, CUST)
    run_polls(deps, pub, clock)
    out = the_outcome(pub)
    assert (
        out["outcome"] == "timed_out"
        and "refused the DELETE" in out["detail"]
        and "cannot be removed due to active" in out["detail"]
    )
    assert CUST in pc.customers and len(pub.on(POISON)) == 1


def test_a_delete_refused_past_the_refusal_deadline_fails_and_every_refusal_is_a_warning(world, caplog):
    pc, pub, clock, deps = world
    deps = dataclasses.replace(deps, settings=dataclasses.replace(deps.settings, delete_refusal_timeout=120))
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder()})
    pc.delete_refusals = 10**6
    with caplog.at_level(logging.INFO, logger="customer_deletion"):
        request(deps, CUST)
        run_polls(deps, pub, clock)
    out = the_outcome(pub)
    assert out["outcome"] == "failed" and "DELETE_REFUSAL_TIMEOUT_SECONDS is 120" in out["detail"]
    assert CUST in pc.customers and len(pub.on(POISON)) == 1
    refusals = [r for r in caplog.records if "refused the DELETE" in r.getMessage() and "next hop" in r.getMessage()]
    assert refusals and all(r.levelno == logging.WARNING for r in refusals)
    assert len(refusals) == pc.count("delete_customer") - 1  # every refusal but the last, which ends the request


def test_lost_delete_answer_then_redelivered_hop_is_deleted(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder()})
    pc.lose_delete_answer = True
    request(deps, CUST)
    raw, _ = pub.on(POLL)[0]
    with pytest.raises(ConnectionError):
        handle_poll(queue_message(raw, id="p"), "inv", deps)
    handle_poll(queue_message(raw, id="p", dequeue_count=2), "inv", deps)  # the host redelivers: handed over
    assert pub.on(OUT) == [] and len(pub.on(POLL)) == 2
    run_polls(deps, pub, clock, start=1)
    out = the_outcome(pub)
    assert out["outcome"] == "deleted" and "no longer exists" in out["detail"]


def test_order_404_with_customer_present_fails(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder(pending_reads=3)})
    request(deps, CUST)
    del pc.customers[CUST].orders[O1]
    run_polls(deps, pub, clock)
    out = the_outcome(pub)
    assert out["outcome"] == "failed" and "20000" in out["detail"]
    assert pc.count("delete_customer") == 0


def test_throttled_poll_hop_reenqueues_itself_with_retry_after(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder(pending_reads=1)})
    request(deps, CUST)
    pc.throttle_next = 75
    run_polls(deps, pub, clock)
    assert 75 <= [d for _, d in pub.on(POLL)][1] <= 113  # Retry-After, plus a spread of up to half of it
    assert the_outcome(pub)["outcome"] == "deleted"


def test_duplicate_request_deletes_once(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder()})
    request(deps, CUST, id="same")
    request(deps, CUST, id="same", dequeue_count=2)  # redelivered before the first chain finished: a second chain
    run_polls(deps, pub, clock)
    outcomes = pub.json_on(OUT)
    assert pc.count("delete_customer") == 1 and CUST not in pc.customers  # the second chain found it gone
    assert {(o["outcome"], o["correlationId"], o["eventId"]) for o in outcomes} == {
        ("deleted", outcomes[0]["correlationId"], outcomes[0]["eventId"])
    }


def test_the_last_delivery_hands_over_instead_of_giving_up(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder()})
    request(deps, CUST, dequeue_count=5)
    assert pc.calls == [] and pub.on(OUT) == []
    run_polls(deps, pub, clock)
    assert the_outcome(pub)["outcome"] == "deleted"


def test_an_unreadable_poll_message_fails_with_a_redrivable_request(world):
    pc, pub, _clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder()})
    body = json.dumps(
        {
            "schemaVersion": 1,
            "kind": "poll",
            "customerTenantId": CUST,
            "correlationId": CORR,
            "dryRun": False,
            "orders": "x",
        }
    )
    handle_poll(queue_message(body), "inv", deps)
    out = the_outcome(pub)
    assert out["outcome"] == "failed" and out["customerTenantId"] == CUST and out["correlationId"] == CORR
    assert json.loads(pub.on(POISON)[0][0]) == {"customerTenantId": CUST, "correlationId": CORR, "dryRun": False}
    assert pc.calls == [("get_customer", CUST)]  # only the look whether the customer is already gone


def test_an_unreadable_poll_message_of_a_customer_already_gone_is_deleted(world):
    _pc, pub, _clock, deps = world
    body = json.dumps(
        {
            "schemaVersion": 1,
            "kind": "poll",
            "customerTenantId": CUST,
            "correlationId": CORR,
            "dryRun": False,
            "orders": "x",
        }
    )
    handle_poll(queue_message(body), "inv", deps)
    assert the_outcome(pub)["outcome"] == "deleted" and pub.on(POISON) == []


def test_a_poll_message_nothing_can_be_read_from_waits_in_the_poll_poison_queue(world):
    pc, pub, _clock, deps = world
    handle_poll(queue_message(b'{"schemaVersion": 1, "kind": "poll"}'), "inv", deps)
    assert the_outcome(pub)["outcome"] == "failed"
    assert pub.on(POLL_POISON) == [(b'{"schemaVersion": 1, "kind": "poll"}', 0)] and pc.calls == []


def test_throttled_request_continues_on_the_poll_queue_instead_of_burning_deliveries(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder(pending_reads=1), O2: FakeOrder()})
    pc.throttle_next = 50
    request(deps, json.dumps({"customerTenantId": CUST, "correlationId": CORR}))  # does not raise
    ((raw, delay),) = pub.on(POLL)
    assert 50 <= delay <= 75 and json.loads(raw)["stage"] == "discover" and pub.on(OUT) == []
    run_polls(deps, pub, clock)
    out = the_outcome(pub)
    assert out["outcome"] == "deleted" and out["correlationId"] == CORR
    assert out["requestedAt"] == "2026-11-24T11:59:00.000Z"  # still the original request's insertion time
    assert pc.count("cancel_order") == 2 and pc.count("delete_customer") == 1


def test_throttled_dry_run_stays_a_dry_run(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder()})
    pc.throttle_next = 5
    request(deps, json.dumps({"customerTenantId": CUST, "dryRun": True}))
    run_polls(deps, pub, clock)
    assert the_outcome(pub)["outcome"] == "dry_run"
    assert pc.count("cancel_order") == 0 and pc.count("delete_customer") == 0


def test_a_throttled_dry_run_that_times_out_is_redriven_as_a_dry_run(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder()})

    class AlwaysThrottled(FakePartnerCenter):
        def _enter(self, *call):
            self.calls.append(call)
            raise ThrottledError(429, "429", "Rate limit is exceeded.", retry_after=120)

    deps.partner_center = AlwaysThrottled()
    request(deps, json.dumps({"customerTenantId": CUST, "dryRun": True}))
    run_polls(deps, pub, clock)
    assert the_outcome(pub)["outcome"] == "timed_out"
    ((poisoned, _),) = pub.on(POISON)
    assert json.loads(poisoned)["dryRun"] is True


def test_discovery_that_stays_throttled_times_out_without_changes(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder()})

    class AlwaysThrottled(FakePartnerCenter):
        def _enter(self, *call):
            self.calls.append(call)
            from shared.errors import ThrottledError

            raise ThrottledError(429, "429", "Rate limit is exceeded.", retry_after=120)

    deps.partner_center = AlwaysThrottled()
    deps.partner_center.customers = pc.customers
    request(deps, CUST)
    run_polls(deps, pub, clock)
    out = the_outcome(pub)
    assert out["outcome"] == "timed_out" and "throttling" in out["detail"]
    assert {c[0] for c in deps.partner_center.calls} == {"get_customer"}
    assert len(pub.on(POISON)) == 1
    # POLL_TIMEOUT + max(POLL_MAX_INTERVAL, 900)
    assert clock.now <= clock.start + timedelta(seconds=600 + max(120, 900))


def test_a_poll_hop_stops_reading_at_the_first_open_order(world):
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer(
        {O1: FakeOrder(pending_reads=3), O2: FakeOrder(pending_reads=1), O3: FakeOrder(pending_reads=1)}
    )
    request(deps, CUST)
    reads_before = pc.count("get_order")
    raw, _ = pub.on(POLL)[0]
    handle_poll(queue_message(raw, id="p1"), "inv", deps)
    assert pc.count("get_order") - reads_before == 1  # O1 still pending: O2 and O3 wait for a later hop
    run_polls(deps, pub, clock, start=1)
    out = the_outcome(pub)
    assert out["outcome"] == "deleted" and pc.count("delete_customer") == 1


def test_poll_messages_of_the_previous_release_are_run_and_never_trusted(world):
    """Every poll message the previous release wrote (tests/data) runs in this one: it reads before any DELETE."""
    pc, pub, clock, deps = world
    recorded = json.loads((Path(__file__).parent.parent / "data" / "poll_messages_release_eaf0670.json").read_text())[
        "messages"
    ]
    for item in recorded:
        message = json.loads(item["message"])
        customer = message["customerTenantId"]
        still_open = {o["id"]: FakeOrder(status="pending", pending_reads=10**6) for o in message["orders"]}
        pc.customers[customer] = FakeCustomer(still_open or {O1: FakeOrder(status="pending", pending_reads=10**6)})
        clock.now = clock.start + timedelta(seconds=60)
        pc.calls.clear()
        deps.tables = FakeTable()  # the recorded messages share request ids: each is its own request here
        before = len(pub.json_on(OUT))
        # the fake fails on a premature DELETE
        handle_poll(queue_message(item["message"], id=f"old-{item['what']}"), "inv", deps)
        assert pc.count("delete_customer") == 0, item["what"]
        assert pc.calls, f"{item['what']}: no read at all"
        ended = [o["outcome"] for o in pub.json_on(OUT)[before:]]
        assert ended in ([], ["dry_run"]), (item["what"], ended)  # open orders: the request goes on (a dry run reports)
