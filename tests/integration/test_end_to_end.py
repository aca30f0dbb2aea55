"""End to end: the local Functions host runs the app against Azurite and the emulator over real HTTPS.

Assertions are on the emulator's request log and state and on the outcome events, never on log text.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime

import pytest

from tools import devenv

#: A request past POLL_TIMEOUT ends after the final check (CLAIM_SECONDS later when a DELETE's answer was lost) and,
#: if Partner Center is down, its tries until the hard end: minutes, not seconds.
DEADLINE_WAIT = 240


def methods(calls, method):
    return [c for c in calls if c["method"] == method]


def ts(entry):
    return datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))


def assert_no_delete_while_open(world, customer_id):
    assert [v for v in world.pc.state()["violations"] if v["customer"] == customer_id] == []


def test_happy_path_with_cancellation_lag_and_nested_duplicate_order_ids(world):
    o1, o2 = uuid.uuid4().hex + "A", uuid.uuid4().hex + "B"

    def ent(oid, nested=()):
        return {
            "referenceOrder": {"id": oid, "lineItemId": "0"},
            "entitlementType": "software",
            "includedEntitlements": list(nested),
        }

    customer_id = str(uuid.uuid4())
    world.pc.add_customers(
        [
            {
                "id": customer_id,
                "orders": [{"id": o1, "cancelAfterReads": 2}, {"id": o2, "cancelAfterReads": 1}],
                "entitlements": [ent(o1, [ent(o1), ent(o2)]), ent(o2), ent(o1)],
            }
        ]
    )
    world.start()
    correlation = str(uuid.uuid4())
    world.request({"customerTenantId": customer_id.upper(), "correlationId": correlation})
    (event,) = world.outcomes(1)
    assert (
        event["outcome"] == "deleted"
        and event["correlationId"] == correlation
        and event["customerTenantId"] == customer_id
    )
    assert sorted(o["id"] for o in event["orders"]) == sorted([o1, o2]) and event["pollAttempts"] >= 2
    calls = world.api_calls(customer_id)
    assert len(methods(calls, "PATCH")) == 2  # de-duplicated
    deletes = methods(calls, "DELETE")
    assert [d["status"] for d in deletes] == [204]
    assert {c["correlationId"] for c in calls} == {correlation}
    assert all(c["auth"] and c["requestId"] for c in calls)
    assert_no_delete_while_open(world, customer_id)
    assert customer_id not in world.pc.state()["customers"]


def test_no_orders_and_already_cancelled(world, make_customer):
    empty = make_customer([])
    done = make_customer([{"status": "cancelled"}, {"status": "cancelled"}])
    world.start()
    world.request(empty["id"])
    world.request(done["id"])
    events = world.outcomes(2)
    assert {e["outcome"] for e in events} == {"deleted"}
    # Every order found is cancelled without a read first (as Microsoft's sample PATCHes every order whatever its
    # status); an order already cancelled accepts it unchanged, and only GETs reading cancelled lead to the DELETE.
    assert (
        methods(world.api_calls(empty["id"]), "PATCH") == []
        and len(methods(world.api_calls(empty["id"]), "DELETE")) == 1
    )
    calls = world.api_calls(done["id"])
    assert len(methods(calls, "PATCH")) == 2 and len(methods(calls, "DELETE")) == 1
    assert all(o["status"] == "cancelled" for o in world.pc.state()["deletedCustomers"][done["id"]]["orders"].values())


def test_bom_status_casing_and_paged_entitlements(world, make_customer):
    world.pc.knobs(statusCase="title", bom=True, entitlementsPageSize=1)
    customer = make_customer([{"cancelAfterReads": 1}, {}, {"status": "cancelled"}])
    world.start()
    world.request(customer["id"])
    (event,) = world.outcomes(1)
    assert event["outcome"] == "deleted"
    assert {o["status"] for o in event["orders"]} == {"cancelled"}  # lower case in the outcome
    pages = [c for c in world.api_calls(customer["id"]) if c["path"].endswith("/entitlements")]
    # Listed twice, every page each time: at discovery, and again by the hop that confirms before the DELETE.
    assert len(pages) == 6 and sum(1 for p in pages if p["continuation"]) == 4
    assert len(methods(world.api_calls(customer["id"]), "PATCH")) == 3  # the cancelled one too, without a read first


@pytest.mark.slow(seconds=40)
def test_429_storm_with_retry_after_honoured(world, make_customer):
    world.pc.knobs(rateLimitPerWindow=6, rateLimitWindowSeconds=2)
    customers = [make_customer([{"cancelAfterReads": 1}, {}]) for _ in range(3)]
    # Three calls a second for about 45 calls (and the 429s' waits) takes about a minute, several on a loaded
    # machine: the storm is about Retry-After, not about POLL_TIMEOUT_SECONDS, so the requests get room.
    world.start(POLL_TIMEOUT_SECONDS="900")
    for c in customers:
        world.request(c["id"])
    events = world.outcomes(3, timeout=960)
    assert {e["outcome"] for e in events} == {"deleted"}
    log = world.pc.requests_log()
    throttled = [
        r for r in log if r["status"] == 429 and r["requestId"] and any(c["id"] in r["path"] for c in customers)
    ]
    assert throttled, "the storm did not happen"
    for r in throttled:  # the retry of a throttled call (same MS-RequestId) came after Retry-After (>= 1 s)
        retries = [x for x in log if x["requestId"] == r["requestId"] and x["seq"] > r["seq"]]
        if retries:
            around = [x for x in log if x["requestId"] == r["requestId"]]
            assert (ts(retries[0]) - ts(r)).total_seconds() >= 0.9, json.dumps(around, indent=1)
    for c in customers:
        assert_no_delete_while_open(world, c["id"])


@pytest.mark.slow(seconds=12)
def test_5xx_and_dropped_connections(world, make_customer):
    world.pc.knobs(randomSeed=7)
    world.pc.faults(
        [
            {"kind": "status", "status": 503, "path": "^/v1/", "share": 0.25},
            {"kind": "drop", "path": "^/v1/", "share": 0.15},
            {"kind": "status", "status": 500, "path": "/oauth2/", "times": 1},
        ]
    )
    customers = [make_customer([{"cancelAfterReads": 1}, {}]) for _ in range(3)]
    world.start()
    for c in customers:
        world.request(c["id"])
    events = world.outcomes(3, timeout=120)
    assert sorted(e["outcome"] for e in events) == ["deleted"] * 3
    log = world.pc.requests_log()
    assert any(r["status"] == 503 for r in log) and any(r["status"] == "dropped" for r in log)
    for c in customers:
        assert len(world.pc.state()["deleted"][c["id"]]) == 1
        assert_no_delete_while_open(world, c["id"])


def test_unknown_customer_is_not_found(world):
    world.start()
    ghost = str(uuid.uuid4())
    world.request(ghost)
    (event,) = world.outcomes(1)
    assert event["outcome"] == "not_found" and event["customerTenantId"] == ghost
    calls = world.api_calls(ghost)
    assert [c["method"] for c in calls] == ["GET"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b'{"customerTenantId": "12345"}',
        b'{"customerTenantId": "../../v1/customers"}',
        b'["3f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b"]',
        b'{"customerTenantId": "3f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b", "dryRun": "yes"}',
    ],
)
def test_malformed_requests_are_rejected_into_poison_with_zero_calls(world, body):
    world.start()
    before = [r for r in world.pc.requests_log() if r["path"].startswith("/v1/")]
    world.request(body)
    (event,) = world.outcomes(1)
    assert event["outcome"] == "rejected" and "invalid deletion request" in event["detail"]
    assert world.poison() == [body]
    after = [r for r in world.pc.requests_log() if r["path"].startswith("/v1/")]
    assert after == before


def test_duplicate_requests_delete_once(world, make_customer):
    customer = make_customer([{"cancelAfterReads": 2}])
    world.start()
    correlation = str(uuid.uuid4())
    # requestedAt is the insertion time in whole seconds: start the three sends early in a second, so that they are
    # inserted within it (one request, one eventId) and never straddle two seconds (two requests).
    time.sleep(1.05 - time.time() % 1)
    for _ in range(3):  # sent within a second: one request (one eventId), whose row the first delivery claims
        world.request({"customerTenantId": customer["id"], "correlationId": correlation})
    events = world.outcomes(1, timeout=90)
    assert {(e["outcome"], e["correlationId"]) for e in events} == {("deleted", correlation)}
    assert len(world.pc.state()["deleted"][customer["id"]]) == 1  # one accepted DELETE
    # the two others wait for the claim, then find the outcome decided: only ever the same event again
    assert len({e["eventId"] for e in world.outcomes(len(events), timeout=1)}) == 1
    assert_no_delete_while_open(world, customer["id"])


def test_protected_customer_is_never_touched(world, make_customer):
    customer = make_customer([{}])
    world.start(PROTECTED_CUSTOMER_IDS=f"{uuid.uuid4()}, {customer['id'].upper()}")
    for body in (customer["id"], customer["id"].upper(), {"customerTenantId": customer["id"], "dryRun": True}):
        world.request(body)
    events = world.outcomes(3)
    assert {e["outcome"] for e in events} == {"rejected"}
    assert world.api_calls(customer["id"]) == []


def test_dry_run_reads_only(world, make_customer):
    customer = make_customer([{}, {"status": "cancelled"}])
    world.start()
    world.request({"customerTenantId": customer["id"], "dryRun": True})
    (event,) = world.outcomes(1)
    assert event["outcome"] == "dry_run" and event["pollAttempts"] == 0
    assert {c["method"] for c in world.api_calls(customer["id"])} == {"GET"}
    assert customer["id"] in world.pc.state()["customers"]


@pytest.mark.slow(seconds=7)
def test_never_cancelling_order_times_out_without_delete(world, make_customer):
    customer = make_customer([{"neverCancels": True}, {}])
    world.start(POLL_TIMEOUT_SECONDS="4")
    world.request(customer["id"])
    (event,) = world.outcomes(1, timeout=DEADLINE_WAIT)
    assert event["outcome"] == "timed_out" and customer["orders"][0]["id"] in event["detail"]
    assert "orders still open" in event["detail"]
    assert methods(world.api_calls(customer["id"]), "DELETE") == []
    assert len(world.poison()) == 1  # a redrivable request waits


def test_order_past_cancellation_window_fails_with_partner_center_code(world, make_customer):
    customer = make_customer([{"ageDays": 90}])
    world.start()
    world.request(customer["id"])
    (event,) = world.outcomes(1)
    assert event["outcome"] == "failed" and "900117" in event["detail"] and "cancellation window" in event["detail"]
    assert methods(world.api_calls(customer["id"]), "DELETE") == []


def test_poll_message_that_is_not_base64_goes_to_poison_untouched(world):
    world.start()
    world.queues.send(world.poll_queue, b"{not base64!}", encode=False)
    text = b"{not base64!}".decode()
    poisoned = devenv.wait_for(lambda: world.queues.peek_raw(world.poll_queue + "-poison"), 20, what="the poison copy")
    assert poisoned == [text]  # copied raw, un-decoded
    assert world.queues.count(world.poll_queue) == 0


@pytest.mark.slow(seconds=108)
def test_an_outage_that_outlasts_the_request_ends_timed_out_naming_it(world, make_customer):
    customer = make_customer([{}])
    world.pc.faults([{"kind": "status", "status": 503, "path": customer["id"]}])  # this customer's calls always fail
    world.start(POLL_TIMEOUT_SECONDS="5", AzureFunctionsJobHost__extensions__queues__maxDequeueCount="3")
    world.request(customer["id"])
    (event,) = world.outcomes(1, timeout=DEADLINE_WAIT)
    assert event["outcome"] == "timed_out" and "unavailable" in event["detail"] and "503" in event["detail"]
    # The poison copy is sent before the outcome; the host completes the last message after it.
    devenv.wait_for(
        lambda: world.queues.count(world.request_queue) == 0 and world.queues.count(world.poll_queue) == 0,
        15,
        what="the request and poll queues to empty",
    )
    (poisoned,) = world.poison()  # once: an equivalent request, redrivable
    assert json.loads(poisoned)["customerTenantId"] == customer["id"]
    assert len(world.outcomes(1)) == 1
    assert methods(world.api_calls(customer["id"]), "DELETE") == []


@pytest.mark.slow(seconds=14)
def test_a_ten_second_outage_changes_nothing_but_the_duration(world, make_customer):
    import time

    customer = make_customer([{"cancelAfterSeconds": 1}, {}])
    start = time.time()
    world.pc.faults(
        [
            {"kind": "status", "status": 503, "path": ".*", "share": 0.5, "from": start + 1, "until": start + 11},
            {"kind": "drop", "path": ".*", "share": 1.0, "from": start + 1, "until": start + 11},
        ]
    )
    world.start()
    world.request(customer["id"])
    (event,) = world.outcomes(1, timeout=90)
    assert event["outcome"] == "deleted"
    assert [v for v in world.pc.state()["violations"] if v["customer"] == customer["id"]] == []


def test_hostile_order_id_in_entitlements_cannot_redirect_a_request(world, make_customer):
    victim = make_customer([{}])
    attacker = str(uuid.uuid4())
    hostile = f"../../{victim['id']}"  # would turn PATCH .../orders/<id> into a call on another customer
    world.pc.add_customers(
        [
            {
                "id": attacker,
                "orders": [{"id": "A" * 33}],
                "entitlements": [{"referenceOrder": {"id": "A" * 33}}, {"referenceOrder": {"id": hostile}}],
            }
        ]
    )
    world.start()
    world.request(attacker)
    (event,) = world.outcomes(1)
    assert event["outcome"] == "failed" and "not the documented shape" in event["detail"]
    assert [
        c
        for c in world.pc.requests_log()
        if c["method"] in ("PATCH", "DELETE") and (attacker in c["path"] or victim["id"] in c["path"])
    ] == []
    assert world.api_calls(victim["id"]) == []


def test_revoked_token_is_replaced_instead_of_failing_every_retry(world, make_customer):
    first, second = make_customer([]), make_customer([])
    world.start()
    world.request(first["id"])
    world.outcomes(1)
    assert world.pc.revoke_tokens() >= 1  # the app's cached token is now refused (as after an emulator restart)
    world.request(second["id"])
    events = world.outcomes(2)
    assert [e["outcome"] for e in events] == ["deleted", "deleted"]
    assert any(r["status"] == 401 for r in world.api_calls(second["id"]))


@pytest.mark.slow(seconds=151)
def test_invocations_cut_off_by_function_timeout_end_in_one_outcome(world, make_customer):
    customer = make_customer([{}])
    # Every call outlasts the function timeout (2 s) and, by 3 s, the read timeout (3 s).
    world.pc.faults([{"kind": "slow", "path": customer["id"], "seconds": 6}])
    world.start(
        AzureFunctionsJobHost__functionTimeout="00:00:02",
        AzureFunctionsJobHost__extensions__queues__maxDequeueCount="3",
        POLL_TIMEOUT_SECONDS="5",
    )
    world.request(customer["id"])
    (event,) = world.outcomes(1, timeout=DEADLINE_WAIT)
    assert event["outcome"] == "timed_out" and "could not be checked" in event["detail"]
    import time

    time.sleep(7)  # longer than a slow call: the cut-off invocations died with their worker, nothing of theirs comes
    assert len(world.outcomes(1)) == 1 and len(world.poison()) == 1
    assert [c for c in world.api_calls(customer["id"]) if c["method"] in ("PATCH", "DELETE")] == []


def test_a_new_purchase_during_the_deletion_is_cancelled_too(world, make_customer):
    customer = make_customer([{"cancelAfterSeconds": 2}])
    world.start()
    world.request(customer["id"])
    devenv_wait = __import__("tools.devenv", fromlist=["wait_for"]).wait_for
    devenv_wait(
        lambda: any(c["method"] == "PATCH" for c in world.api_calls(customer["id"])), 30, what="the first cancel"
    )
    late = uuid.uuid4().hex + "L"
    world.pc.add_orders(customer["id"], [{"id": late, "cancelAfterSeconds": 1}])
    (event,) = world.outcomes(1, timeout=60)
    assert event["outcome"] == "deleted" and late in {o["id"] for o in event["orders"]}
    assert any(c["method"] == "PATCH" and c["path"].endswith(late) for c in world.api_calls(customer["id"]))
    assert_no_delete_while_open(world, customer["id"])


@pytest.mark.slow(seconds=17)
def test_a_hidden_order_keeps_the_delete_refused_until_the_deadline(world, make_customer):
    customer = make_customer([{}, {"hidden": True, "neverCancels": True}])
    # Time to cancel the visible order and to try the DELETE before the cut-off, even on a busy machine.
    world.start(POLL_TIMEOUT_SECONDS="15")
    world.request(customer["id"])
    (event,) = world.outcomes(1, timeout=DEADLINE_WAIT)
    assert event["outcome"] == "timed_out" and "refused the DELETE" in event["detail"]
    assert customer["id"] in world.pc.state()["customers"]
