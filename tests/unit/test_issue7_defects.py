"""One regression test per defect found by issue 7; each failed on the release before it (main at eaf0670).

They use only what both releases have (the two entry points, the fakes, the real client over ``responses``), so the
same file runs against either. The fake Partner Center fails a test outright when a DELETE arrives while an order is
not cancelled.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import responses
from azure.core.credentials import AccessToken

from shared.config import Settings
from shared.errors import ThrottledError
from shared.partner_center import PartnerCenterClient, RetryPolicy
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
CORR = "1438ea3d-b515-45c7-9ec1-27ee0cc8e6bd"
O1, O2, O3 = "A" * 33, "B" * 33, "C" * 33
OUT, POLL = "customer-deletion-outcomes", "customer-deletion-polls"
ENV = {
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "POLL_INTERVAL_SECONDS": "30",
    "POLL_MAX_INTERVAL_SECONDS": "120",
    "POLL_TIMEOUT_SECONDS": "3600",
}


@pytest.fixture
def world(tmp_path):
    pc, pub, clock = FakePartnerCenter(), FakePublisher(), Clock()
    pc.clock = clock
    deps = Deps(
        settings=Settings.from_env(ENV, app_root=tmp_path),
        partner_center=pc,
        publisher=pub,
        clock=clock,
        tables=FakeTable(),
    )
    deps.monotonic = clock.monotonic  # the invocation's work clock (this release); ignored by the one before
    return pc, pub, clock, deps


def send_request(deps, body=CUST, **kw):
    handle_deletion_request(queue_message(body, **kw), "inv", deps)


def run_polls(deps, pub, clock, *, start=0, max_hops=300, between=None):
    """Deliver every poll message in turn, advancing the clock by its delay; ``between(n)`` runs before hop n."""
    n = start
    while n < len(pub.on(POLL)) and n < max_hops:
        raw, delay = pub.on(POLL)[n]
        clock.advance(delay)
        if between:
            between(n)
        n += 1
        handle_poll(queue_message(raw, id=f"p{n}"), f"inv-p{n}", deps)
    return n


def outcomes(pub):
    return [(o["outcome"], o["correlationId"]) for o in pub.json_on(OUT)]


def test_the_last_delivery_does_the_work_instead_of_giving_up(world):
    """Was: 'gave up: delivered 5 times' without trying, although Partner Center was fine."""
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder()})
    send_request(deps, json.dumps({"customerTenantId": CUST, "correlationId": CORR}), dequeue_count=5)
    run_polls(deps, pub, clock)
    assert outcomes(pub) == [("deleted", CORR)] and CUST not in pc.customers


def test_a_redelivered_request_never_contradicts_its_own_chain(world):
    """Was: a request ended `failed` although the poll chain its first delivery started had deleted the customer."""
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder(pending_reads=1)})
    body = json.dumps({"customerTenantId": CUST, "correlationId": CORR})
    send_request(deps, body, id="m1")  # the host died before it could complete this message
    run_polls(deps, pub, clock)
    assert CUST not in pc.customers
    polls = len(pub.on(POLL))
    for delivery in (2, 5):  # redelivered later, after its own chain had deleted the customer
        send_request(deps, body, id="m1", dequeue_count=delivery)
    assert len(pub.on(POLL)) == polls  # the row holds the outcome: nothing is handed over
    assert {o for o, _ in outcomes(pub)} == {"deleted"} and len(outcomes(pub)) == 3
    assert len({body for body, _ in pub.on(OUT)}) == 1  # the stored event again, byte for byte


def test_a_patch_answer_is_never_proof(world):
    """Was: a PATCH answering `cancelled` sent the first poll with no delay and the DELETE with no GET."""
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder(pending_reads=3, patch_answer="cancelled")})
    send_request(deps)
    run_polls(deps, pub, clock)  # the fake fails the test on a DELETE while O1 is pending
    assert outcomes(pub)[0][0] == "deleted" and pc.count("get_order") >= 4


def test_an_order_read_cancelled_long_ago_is_read_again_before_the_delete(world):
    """Was: an order seen cancelled was never read again, up to POLL_TIMEOUT later."""
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder(pending_reads=3), O2: FakeOrder()})

    def fall_back(hop):
        if hop == 1:  # O2 read cancelled before; now it is active again
            pc.customers[CUST].orders[O2].status = "completed"

    send_request(deps)
    run_polls(deps, pub, clock, between=fall_back)
    assert outcomes(pub)[0][0] == "deleted" and pc.count("cancel_order") == 3  # O2 cancelled twice


def test_an_order_that_appears_after_discovery_is_cancelled_and_reported(world):
    """Was: entitlements were listed once; a purchase landing while polling was never cancelled."""
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder(pending_reads=2)})

    def purchase(hop):
        if hop == 0:
            pc.customers[CUST].orders[O3] = FakeOrder()

    send_request(deps)
    run_polls(deps, pub, clock, between=purchase)
    (event,) = pub.json_on(OUT)
    assert event["outcome"] == "deleted" and {o["id"] for o in event["orders"]} == {O1, O3}
    assert ("cancel_order", CUST, O3) in pc.calls


@pytest.mark.parametrize("schema", ["this release", "older release"])
def test_a_forged_or_stale_poll_message_cannot_cause_a_delete(world, schema):
    """Was: a poll message whose orders all said `cancelled` led straight to a DELETE with no read."""
    pc, _pub, _clock, deps = world
    pc.customers[CUST] = FakeCustomer(
        {O1: FakeOrder(status="pending", pending_reads=10**6), O2: FakeOrder(status="cancelled")}
    )
    forged = {
        "schemaVersion": 1,
        "kind": "poll",
        "stage": "poll",
        "dryRun": False,
        "customerTenantId": CUST,
        "correlationId": CORR,
        "orders": [{"id": O1, "status": "cancelled"}, {"id": O2, "status": "cancelled"}],
        "attempt": 3,
        "requestedAt": "2026-11-24T11:00:00.000Z",
        "firstHandledAt": "2026-11-24T11:00:01.000Z",
        "deleteRefusals": 0,
    }
    if schema == "this release":
        forged.update(recoveries=0, setbacks=0, cause=None, causeDetail=None, customerSeen=True, deleteBy=None)
    handle_poll(queue_message(json.dumps(forged)), "inv", deps)
    assert pc.count("delete_customer") == 0 and ("get_order", CUST, O1) in pc.calls


def test_an_outage_longer_than_the_retries_continues_on_the_poll_queue(world):
    """Was: an outage longer than the retry budget raised to the host and burned deliveries, then `failed`."""
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder(pending_reads=1)})
    send_request(deps)
    pc.outage_calls = 12  # the next twelve calls fail, whatever the in-process retries did
    run_polls(deps, pub, clock)
    assert outcomes(pub)[0][0] == "deleted"


def test_throttling_forever_ends_timed_out_by_the_deadline(world):
    """Was: throttled hops re-enqueued without looking at POLL_TIMEOUT_SECONDS: a storm made a chain endless."""
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder(pending_reads=10)})
    send_request(deps)

    def storm(hop):
        pc.throttle_next = 60

    run_polls(deps, pub, clock, between=storm)
    assert [o for o, _ in outcomes(pub)] == ["timed_out"] and "kept throttling" in pub.json_on(OUT)[0]["detail"]
    assert clock.now - clock.start <= timedelta(seconds=3600 + 900)


class Token:
    def get_token(self, *a, **k):
        return AccessToken("t", 9999999999)


@pytest.mark.parametrize("retry_after, expected_delay", [("inf", 30), ("HTTP-DATE+120", 120), ("nonsense", 30)])
def test_retry_after_as_an_http_date_or_garbage(world, retry_after, expected_delay):
    """Was: the HTTP-date form was ignored, and `Retry-After: inf` raised OverflowError."""
    _pc, pub, _clock, deps = world
    if retry_after.startswith("HTTP-DATE"):
        retry_after = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    deps.partner_center = PartnerCenterClient(
        "https://pc.test", Token(), "s/.default", policy=RetryPolicy(max_attempts=2), sleep=lambda s: None
    )
    poll = {
        "schemaVersion": 1,
        "kind": "poll",
        "stage": "poll",
        "dryRun": False,
        "customerTenantId": CUST,
        "correlationId": CORR,
        "orders": [{"id": O1, "status": "pending"}],
        "attempt": 0,
        "requestedAt": "2026-11-24T11:59:00.000Z",
        "firstHandledAt": "2026-11-24T12:00:00.000Z",
        "deleteRefusals": 0,
    }
    with responses.RequestsMock() as rsps:
        rsps.add(
            responses.GET,
            re.compile(r"https://pc\.test/.*"),
            status=429,
            headers={"Retry-After": retry_after},
            body=b'{"statusCode": 429, "message": "Rate limit is exceeded."}',
        )
        handle_poll(queue_message(json.dumps(poll)), "inv", deps)
    ((_raw, delay),) = pub.on(POLL)
    assert expected_delay - 2 <= delay <= expected_delay * 1.5 + 2  # Retry-After, plus a spread of up to half of it


def test_a_refused_second_cancel_reads_the_order_and_carries_on(world):
    """Was: a cancel refused because the order was already cancelling (a
    retried PATCH, a duplicate) failed the request."""
    pc, pub, clock, deps = world
    pc.customers[CUST] = FakeCustomer({O1: FakeOrder(pending_reads=2, second_cancel="error")})
    send_request(deps, json.dumps({"customerTenantId": CUST, "correlationId": CORR}), id="first")
    send_request(deps, CUST, id="duplicate")  # a second request PATCHes the order again while it is pending
    run_polls(deps, pub, clock)
    assert [o for o, _ in outcomes(pub)] == ["deleted", "deleted"]


def test_an_invocation_starts_no_call_after_its_work_budget(world):
    """Was: discovery plus every PATCH ran in one invocation (up to 38 s under faults), killed on every delivery."""
    pc, pub, clock, deps = world
    orders = {c * 33: FakeOrder() for c in "ABCDEFGHIJ"}
    pc.customers[CUST] = FakeCustomer(orders)
    pc.call_seconds = 3.0  # slow answers
    send_request(deps)
    assert len(pc.calls) <= 5  # about 10 s of work, then the rest is handed over
    pc.call_seconds = 0.1
    run_polls(deps, pub, clock)
    assert outcomes(pub)[0][0] == "deleted" and pc.count("cancel_order") == 10


def test_throttled_error_keeps_an_unparseable_retry_after_unset():
    """The client passes on `None`, never inf or nan: the core then waits POLL_INTERVAL_SECONDS."""
    import requests

    from shared.partner_center import error_from_response

    resp = requests.Response()
    resp.status_code, resp._content = 429, b"{}"
    resp.headers["Retry-After"] = "inf"
    error = error_from_response(resp, "GET", "/x")
    assert isinstance(error, ThrottledError) and error.retry_after is None
