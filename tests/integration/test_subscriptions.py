"""Issue 16 end to end: customers of 2026 (new commerce, an Azure plan, SaaS, licence subscriptions) through the
local host, against Azurite and the emulator over real HTTPS, under the emulator's switches.

Assertions are on the emulator's request log and state and on the outcome events. Every test also checks the
emulator's violations: no DELETE was ever accepted or sent while a subscription or an Azure subscription was active.
"""

from __future__ import annotations

import uuid

import pytest

from tests.integration.test_end_to_end import assert_no_delete_while_open, methods


def guid() -> str:
    return str(uuid.uuid4())


def a_2026_customer(make_customer, *, ri_after_reads: int = 1, azure_seconds: float = 1.0, **nce_knobs):
    """One NCE subscription in its window, one past it, an Azure plan with two Azure subscriptions (inactive
    ``azure_seconds`` after their cancel), SaaS billed through the plan, and one RI order."""
    ids = {"nce": guid(), "late": guid(), "plan": guid(), "saas": guid(), "az1": guid(), "az2": guid()}
    subscriptions = [
        {"id": ids["nce"], "kind": "nce", **nce_knobs},
        {"id": ids["late"], "kind": "nce", "windowHours": -1},
        {
            "id": ids["plan"],
            "kind": "azurePlan",
            "azureEntitlements": [
                {"id": ids["az1"], "inactiveAfterSeconds": azure_seconds},
                {"id": ids["az2"], "inactiveAfterSeconds": azure_seconds},
            ],
        },
        {"id": ids["saas"], "kind": "saas"},
    ]
    customer = make_customer([{"cancelAfterReads": ri_after_reads}], subscriptions=subscriptions)
    return customer, ids


def subscription_state(world, customer_id: str) -> dict:
    state = world.pc.state()
    gone = state["deletedCustomers"].get(customer_id)
    return (gone or state["customers"][customer_id])["subscriptions"]


def writes(world, customer_id: str) -> list[dict]:
    return [c for c in world.api_calls(customer_id) if c["method"] in ("PATCH", "POST", "DELETE")]


def test_a_2026_customer_is_cleared_in_the_documented_order_and_deleted(world, make_customer):
    customer, ids = a_2026_customer(make_customer)
    world.start()
    world.request(customer["id"])
    (event,) = world.outcomes(1, timeout=90)
    assert event["outcome"] == "deleted", event
    assert_no_delete_while_open(world, customer["id"])
    subs = subscription_state(world, customer["id"])
    assert subs[ids["nce"]]["status"] == "deleted"  # in its window: cancelled
    assert subs[ids["late"]]["status"] == "suspended" and subs[ids["late"]]["autoRenewEnabled"] is False
    assert subs[ids["saas"]]["status"] == "deleted"
    assert subs[ids["plan"]]["status"] == "suspended" and not subs[ids["plan"]]["autoRenewDropped"]
    assert {e: v["status"] for e, v in subs[ids["plan"]]["azureEntitlements"].items()} == {
        ids["az1"]: "inactive",
        ids["az2"]: "inactive",
    }
    assert all(v["cancels"] == 1 for v in subs[ids["plan"]]["azureEntitlements"].values())  # cancelled once each
    calls = world.api_calls(customer["id"])
    patched = [c["path"].rsplit("/", 1)[-1] for c in methods(calls, "PATCH") if "/subscriptions/" in c["path"]]
    assert patched.index(ids["saas"]) < patched.index(ids["plan"]) and patched[-1] == ids["plan"]
    # the plan was suspended only after its Azure subscriptions read inactive
    plan_patch = next(c for c in calls if c["method"] == "PATCH" and c["path"].endswith(ids["plan"]))
    inactive_reads = [c for c in calls if c["path"].endswith("/azureEntitlements") and c["time"] < plan_patch["time"]]
    assert len(inactive_reads) >= 2
    by_kind = {s["id"]: s for s in event["subscriptions"]}
    assert by_kind[ids["nce"]]["action"] == "cancelled" and by_kind[ids["late"]]["action"] == "suspended"
    assert by_kind[ids["plan"]]["action"] == "suspended"
    assert sorted(by_kind[ids["plan"]]["azureEntitlementsCancelled"]) == sorted([ids["az1"], ids["az2"]])
    assert all(s["status"] in ("deleted", "suspended") for s in event["subscriptions"])


def test_an_add_on_goes_before_its_base_and_a_202_answer_is_read_before_it_counts(world, make_customer):
    base, addon = guid(), guid()
    customer = make_customer(
        [],
        subscriptions=[
            {"id": base, "kind": "legacy", "changeAfterReads": 2},
            {"id": addon, "kind": "legacy", "parentSubscriptionId": base, "changeAfterReads": 2},
        ],
    )
    world.pc.knobs(subscriptionPatchAnswer=202, addOnCascade=[])
    world.start()
    world.request(customer["id"])
    (event,) = world.outcomes(1, timeout=60)
    assert event["outcome"] == "deleted", event
    assert_no_delete_while_open(world, customer["id"])
    calls = world.api_calls(customer["id"])
    patched = [c["path"].rsplit("/", 1)[-1] for c in methods(calls, "PATCH")]
    assert patched == [addon, base] and all(c["status"] == 202 for c in methods(calls, "PATCH"))
    assert not [c for c in calls if "Location" in c.get("path", "") or c["path"].startswith("/customers/")]
    subs = subscription_state(world, customer["id"])
    assert subs[base]["autoRenewEnabled"] is True  # sent as read: left out, it would have become false


def test_a_stale_etag_is_read_again_and_the_patch_sent_again(world, make_customer):
    sid = guid()
    customer = make_customer([], subscriptions=[{"id": sid, "kind": "legacy", "staleEtagPatches": 1}])
    world.pc.knobs(subscriptionIfMatch="required")
    world.start()
    world.request(customer["id"])
    (event,) = world.outcomes(1, timeout=60)
    assert event["outcome"] == "deleted", event
    patches = methods(world.api_calls(customer["id"]), "PATCH")
    assert [c["status"] for c in patches] == [400, 200]
    reads = [c for c in world.api_calls(customer["id"]) if c["method"] == "GET" and c["path"].endswith(sid)]
    assert reads and patches[0]["time"] < reads[0]["time"] < patches[1]["time"]  # read at its own address


def test_without_clear_subscriptions_nothing_is_written_to_them_and_partner_center_decides(world, make_customer):
    """An NCE subscription blocks the DELETE (the emulator's default switch): with CLEAR_SUBSCRIPTIONS=false the
    request ends `failed` DELETE_REFUSAL_TIMEOUT_SECONDS after the first refusal, naming it, long before
    POLL_TIMEOUT_SECONDS."""
    nce = {"id": guid(), "kind": "nce", "orderId": "34b37d7340cc"}
    customer = make_customer([{}], subscriptions=[nce])
    world.start(CLEAR_SUBSCRIPTIONS="false", POLL_TIMEOUT_SECONDS="3600", DELETE_REFUSAL_TIMEOUT_SECONDS="3")
    world.request(customer["id"])
    (event,) = world.outcomes(1, timeout=90)
    assert event["outcome"] == "failed", event
    assert "DELETE_REFUSAL_TIMEOUT_SECONDS is 3" in event["detail"]
    assert f"blockers: nce subscription {nce['id']} (active);" in event["detail"]  # 34b37d7340cc is its order
    assert [(s["id"], s["action"], s["status"]) for s in event["subscriptions"]] == [(nce["id"], "none", "active")]
    calls = world.api_calls(customer["id"])
    assert not [c for c in calls if "/subscriptions/" in c["path"]]  # listed, never read one by one or written
    refusals = methods(calls, "DELETE")
    assert len(refusals) >= 2 and all(c["status"] == 400 for c in refusals)
    assert customer["id"] in world.pc.state()["customers"]
    (redrivable,) = world.poison()
    assert customer["id"] in redrivable.decode()


def test_a_dry_run_names_what_it_would_clear_and_writes_nothing(world, make_customer):
    customer, ids = a_2026_customer(make_customer)
    world.start()
    world.request({"customerTenantId": customer["id"], "dryRun": True})
    (event,) = world.outcomes(1, timeout=60)
    assert event["outcome"] == "dry_run", event
    assert f"cancel nce subscription {ids['nce']}" in event["detail"]
    assert f"suspend nce subscription {ids['late']}" in event["detail"]
    assert f"under plan {ids['plan']}" in event["detail"] and "then suspend it" in event["detail"]
    assert writes(world, customer["id"]) == []


def test_a_blocker_the_app_cannot_clear_ends_failed_naming_it_and_no_delete_is_sent(world, make_customer):
    stuck = guid()
    customer = make_customer([], subscriptions=[{"id": stuck, "kind": "nce", "neverChanges": True}])
    world.start(DELETE_REFUSAL_TIMEOUT_SECONDS="4")
    world.request(customer["id"])
    (event,) = world.outcomes(1, timeout=60)
    assert event["outcome"] == "failed", event
    assert (
        f"nce subscription {stuck} (active)" in event["detail"] and "DELETE_REFUSAL_TIMEOUT_SECONDS" in event["detail"]
    )
    assert methods(world.api_calls(customer["id"]), "DELETE") == []
    assert len(methods(world.api_calls(customer["id"]), "PATCH")) == 1  # accepted once, never sent again


def test_a_subscription_of_an_unknown_kind_fails_before_anything_is_written(world, make_customer):
    mystery = guid()
    customer = make_customer([{}], subscriptions=[{"id": mystery, "kind": "unknown"}, {"id": guid(), "kind": "nce"}])
    world.start()
    world.request(customer["id"])
    (event,) = world.outcomes(1, timeout=60)
    assert event["outcome"] == "failed" and mystery in event["detail"] and "SomethingNew" in event["detail"], event
    assert writes(world, customer["id"]) == []
    (redrivable,) = world.poison()
    assert customer["id"] in redrivable.decode()


def test_a_pending_operation_ends_failed_with_partner_centers_words(world, make_customer):
    sid = guid()
    customer = make_customer([], subscriptions=[{"id": sid, "kind": "nce", "pendingOperation": True}])
    world.start()
    world.request(customer["id"])
    (event,) = world.outcomes(1, timeout=60)
    assert event["outcome"] == "failed" and "900278" in event["detail"] and "24 hours" in event["detail"], event
    assert methods(world.api_calls(customer["id"]), "DELETE") == []


SWITCHES = [
    pytest.param({}, id="defaults"),
    pytest.param({"deleteRefusalStatus": 409, "deleteRefusalCode": 800001}, id="refusal-409"),
    pytest.param({"deleteBlockedBy": ["azurePlan"]}, id="only-the-plan-blocks"),
    pytest.param({"subscriptionPatchAnswer": 202}, id="patch-202"),
    pytest.param({"subscriptionIfMatch": "required"}, id="if-match-required"),
    pytest.param({"lateCancelCode": 900213}, id="late-900213"),
    pytest.param({"resuspend": "error"}, id="resuspend-error"),
    pytest.param({"azureCancelAnswer": 202}, id="azure-cancel-202"),
    pytest.param({"subscriptionsPageSize": 1}, id="paged-subscriptions"),
    pytest.param({"addOnCascade": ["legacy", "nce"]}, id="nce-cascade"),
    pytest.param({"statusCase": "upper", "bom": True}, id="upper-case-bom"),
]


@pytest.mark.parametrize("switches", SWITCHES)
def test_a_2026_customer_is_deleted_under_every_switch(world, make_customer, switches):
    customer, ids = a_2026_customer(make_customer, changeAfterReads=1)
    addon = guid()
    world.pc.add_subscriptions(customer["id"], [{"id": addon, "kind": "nce", "parentSubscriptionId": ids["nce"]}])
    world.pc.knobs(**switches)
    world.start()
    world.request(customer["id"])
    (event,) = world.outcomes(1, timeout=90)
    assert event["outcome"] == "deleted", event
    assert_no_delete_while_open(world, customer["id"])
    assert not [c for c in methods(world.api_calls(customer["id"]), "DELETE") if c["status"] >= 400]


def test_when_a_suspended_subscription_still_blocks_the_request_ends_failed_naming_it(world, make_customer):
    """The switch ``suspendedBlocks``: a suspended NCE subscription (past its window) keeps the DELETE refused, which
    nothing the app may do can change: `failed` at DELETE_REFUSAL_TIMEOUT_SECONDS, naming it."""
    late = guid()
    customer = make_customer(
        [], subscriptions=[{"id": late, "kind": "nce", "windowHours": -1, "orderId": "0bed3bbca6c1"}]
    )
    world.pc.knobs(suspendedBlocks=["nce"])
    world.start(DELETE_REFUSAL_TIMEOUT_SECONDS="3")
    world.request(customer["id"])
    (event,) = world.outcomes(1, timeout=90)
    assert event["outcome"] == "failed", event
    assert f"nce subscription {late} (suspended)" in event["detail"]
    assert subscription_state(world, customer["id"])[late]["status"] == "suspended"
