"""The emulator's rules without HTTP (tools/pc_emulator/models.py): the HTTP contract itself is checked over real
HTTPS by tests/integration/test_emulator.py; these pin the rules the handlers call, error by error."""

from __future__ import annotations

import pytest

from tools.pc_emulator.exceptions import ApiError
from tools.pc_emulator.faults import Fault, RateLimiter, choose
from tools.pc_emulator.models import Sandbox

CID = "3f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b"


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox({"partner": {"tenantId": "t"}, "customers": []})


def seeded(sandbox: Sandbox, *orders: dict, **knobs) -> Sandbox:
    sandbox.reset({"partner": {"tenantId": "t"}, "knobs": knobs, "customers": [{"id": CID, "orders": list(orders)}]})
    return sandbox


def refusal(call) -> tuple[int, object]:
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value.status, caught.value.code


def test_a_cancel_waits_for_reads_and_time_and_a_delete_waits_for_the_cancel(sandbox):
    box = seeded(sandbox, {"id": "o1", "cancelAfterReads": 2})
    customer = box.customer(CID.upper())
    order = customer.order("o1")
    assert refusal(lambda: box.delete_customer(customer)) == (400, 800000)
    assert box.violations[-1]["openOrders"] == ["o1"]
    assert box.cancel_order(customer, order, {"status": "Cancelled"}).status == "pending"
    assert [box.read_order(order).status for _ in range(3)] == ["pending", "pending", "cancelled"]
    box.delete_customer(customer)
    assert CID not in box.customers and box.deleted_customers[CID]["orders"]["o1"]["status"] == "cancelled"


@pytest.mark.parametrize(
    ("order", "body", "knobs", "expected"),
    [
        ({"id": "o1"}, {"status": "active"}, {}, (400, 3000)),
        ({"id": "o1"}, {"status": "cancelled", "id": "o2"}, {}, (400, 3000)),
        ({"id": "o1", "kind": "license"}, {"status": "cancelled"}, {}, (400, 800063)),
        ({"id": "o1", "ageDays": 61}, {"status": "cancelled"}, {}, (400, 900117)),
        ({"id": "o1", "status": "cancelled"}, {"status": "cancelled"}, {"secondCancel": "error"}, (400, 800061)),
    ],
)
def test_each_documented_cancel_refusal(sandbox, order, body, knobs, expected):
    box = seeded(sandbox, order, **knobs)
    customer = box.customer(CID)
    assert refusal(lambda: box.cancel_order(customer, customer.order("o1"), body)) == expected


def test_a_hidden_order_is_in_no_entitlement_yet_blocks_the_delete_with_the_refusal_status_of_the_knob(sandbox):
    box = seeded(sandbox, {"id": "o1", "hidden": True}, deleteRefusalStatus=409)
    customer = box.customer(CID)
    assert box.entitlements(customer, "") == []
    assert refusal(lambda: box.delete_customer(customer)) == (409, 800000)


def test_a_continuation_token_pages_only_its_own_collection_and_only_once(sandbox):
    box = seeded(sandbox)
    first = box.page(list(range(5)), 2, "a", None, False)
    assert (first.items, first.size) == ([0, 1], 2) and first.token
    assert refusal(lambda: box.page(list(range(5)), None, "b", first.token, True)) == (400, 800002)
    second = box.page(list(range(5)), None, "a", first.token, True)
    assert second.items == [2, 3]
    assert refusal(lambda: box.page(list(range(5)), None, "a", first.token, True)) == (400, 800002)
    last = box.page(list(range(5)), None, "a", second.token, True)
    assert (last.items, last.token) == ([4], None)


def test_the_customer_list_needs_a_positive_size_and_a_cap_shortens_pages(sandbox):
    box = seeded(sandbox, customersMaxPageSize=1)
    for size in (None, "0", "-1", "x"):
        assert refusal(lambda size=size: box.customer_page(size, False, None)) == (400, 800002)
    page = box.customer_page("5", False, None)
    assert page.items == [CID] and page.size == 5


def test_faults_skip_then_inject_times_and_the_rate_limit_answers_with_the_wait():
    import random

    faults = [Fault.from_json({"kind": "status", "path": "^/x$", "skip": 1, "times": 1})]
    picks = [choose(faults, random.Random(1), "GET", "/x", 0.0) for _ in range(3)]
    assert [p is not None for p in picks] == [False, True, False]
    limiter = RateLimiter()
    limiter.admit("t", 2, 60, 0.0)
    limiter.admit("t", 2, 60, 10.0)
    with pytest.raises(ApiError) as caught:
        limiter.admit("t", 2, 60, 20.5)
    assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "40"
    limiter.admit("t", 2, 60, 60.0)  # the first request has left the window


# -- subscriptions (issue 16) ----------------------------------------------------------------------------------------

SUB = "a4c1340d-6911-4758-bba3-0c4c6007d161"
PLAN = "0a0f6c5e-1f5b-4f3e-9d0c-3a1b2c3d4e5f"
AZ = "899ae6f1-4b5a-4f4e-8e4e-1d1c1b1a1f1e"


def with_subscriptions(sandbox: Sandbox, *subscriptions: dict, orders=(), **knobs) -> Sandbox:
    sandbox.reset(
        {
            "partner": {"tenantId": "t"},
            "knobs": knobs,
            "customers": [{"id": CID, "orders": list(orders), "subscriptions": list(subscriptions)}],
        }
    )
    return sandbox


def patch(box: Sandbox, sid: str, status: str, if_match=None, **extra):
    customer = box.customer(CID)
    subscription = customer.subscription(sid)
    body = {**subscription.fields, "id": sid, "status": status, **extra}
    return box.patch_subscription(customer, subscription, body, if_match)


def test_nce_is_cancelled_inside_its_window_and_then_cannot_be_updated(sandbox):
    box = with_subscriptions(sandbox, {"id": SUB, "kind": "nce", "orderId": "34b37d7340cc"})
    customer = box.customer(CID)
    with pytest.raises(ApiError) as refused:
        box.delete_customer(customer)
    assert (refused.value.status, refused.value.code) == (400, 800000)
    assert refused.value.description.endswith("following orders: 34b37d7340cc")  # the order id, as #215 quoted one
    assert box.violations[-1]["openSubscriptions"] == [SUB]
    subscription, answer = patch(box, SUB, "deleted")
    assert (subscription.status, answer) == ("deleted", 200)
    assert refusal(lambda: patch(box, SUB, "suspended")) == (400, 2011)
    box.delete_customer(customer)
    assert CID in box.deleted


@pytest.mark.parametrize("code", [900117, 900213])
def test_nce_past_its_window_refuses_the_cancel_with_the_switched_code_but_can_be_suspended(sandbox, code):
    box = with_subscriptions(sandbox, {"id": SUB, "kind": "nce", "windowHours": -1}, lateCancelCode=code)
    assert refusal(lambda: patch(box, SUB, "deleted")) == (400, code)
    subscription, _ = patch(box, SUB, "suspended", autoRenewEnabled=False)
    assert subscription.status == "suspended" and subscription.fields["autoRenewEnabled"] is False
    assert not subscription.auto_renew_dropped


def test_a_patch_without_auto_renew_silently_turns_it_off_as_the_docs_warn(sandbox):
    box = with_subscriptions(sandbox, {"id": SUB, "kind": "legacy"})
    customer = box.customer(CID)
    subscription = customer.subscription(SUB)
    box.patch_subscription(customer, subscription, {"status": "suspended"}, None)
    assert subscription.auto_renew_dropped and subscription.fields["autoRenewEnabled"] is False
    assert refusal(lambda: patch(box, SUB, "deleted")) == (400, 800096)  # a legacy subscription is suspended only


def test_etags_a_stale_one_is_refused_a_missing_one_only_when_required_and_each_change_makes_a_new_one(sandbox):
    box = with_subscriptions(sandbox, {"id": SUB, "kind": "software"}, subscriptionIfMatch="required")
    subscription = box.customer(CID).subscription(SUB)
    etag = subscription.etag
    assert etag
    assert refusal(lambda: patch(box, SUB, "suspended", if_match='"stale"')) == (400, 2055)
    assert refusal(lambda: patch(box, SUB, "suspended")) == (400, 2055)
    patch(box, SUB, "suspended", if_match=f'"{etag}"')
    assert subscription.status == "suspended" and subscription.etag != etag
    box.set_knobs({"subscriptionIfMatch": "optional", "resuspend": "error"})
    assert refusal(lambda: patch(box, SUB, "suspended")) == (400, 800091)


def test_a_delayed_change_shows_after_its_reads_and_a_202_is_the_answer_when_asked(sandbox):
    box = with_subscriptions(sandbox, {"id": SUB, "kind": "nce", "changeAfterReads": 2, "patchAnswer": 202})
    subscription, answer = patch(box, SUB, "deleted")
    assert (subscription.status, answer) == ("active", 202)
    assert [box.read_subscription(subscription).status for _ in range(3)] == ["active", "active", "deleted"]


def test_not_ready_then_accepted_and_a_pending_operation_is_refused_for_good(sandbox):
    box = with_subscriptions(
        sandbox,
        {"id": SUB, "kind": "nce", "notReadyPatches": 1},
        {"id": PLAN, "kind": "saas", "pendingOperation": True},
    )
    assert refusal(lambda: patch(box, SUB, "deleted")) == (409, 800082)
    assert patch(box, SUB, "deleted")[0].status == "deleted"
    for _ in range(2):
        assert refusal(lambda: patch(box, PLAN, "deleted")) == (409, 900278)


def test_an_azure_plan_is_suspended_only_once_its_azure_subscriptions_reservations_and_saas_are_cleared(sandbox):
    box = with_subscriptions(
        sandbox,
        {"id": PLAN, "kind": "azurePlan", "azureEntitlements": [{"id": AZ, "inactiveAfterReads": 1}]},
        {"id": SUB, "kind": "saas"},
        orders=[{"id": "ri1", "kind": "reservedInstance"}],
    )
    customer = box.customer(CID)
    plan = customer.subscription(PLAN)
    entitlement = customer.azure_entitlement(plan, AZ)
    assert refusal(lambda: patch(box, PLAN, "suspended")) == (403, 900115)
    assert refusal(lambda: box.cancel_azure_entitlement(entitlement, {"cancellationReason": "bored"})) == (400, 900307)
    _, answer = box.cancel_azure_entitlement(entitlement, {"cancellationReason": "compromise"})
    assert answer == 200 and entitlement.status == "active"
    assert [e.status for e in box.azure_entitlements(plan)] == ["active"]
    assert [e.status for e in box.azure_entitlements(plan)] == ["inactive"]
    assert refusal(lambda: patch(box, PLAN, "suspended")) == (403, 900115)  # the reservation and the SaaS
    box.cancel_order(customer, customer.order("ri1"), {"status": "cancelled"})
    patch(box, SUB, "deleted")
    assert patch(box, PLAN, "suspended")[0].status == "suspended"
    box.delete_customer(customer)


@pytest.mark.parametrize(
    ("subscription", "knobs", "blocks"),
    [
        ({"kind": "nce", "status": "suspended"}, {}, False),
        ({"kind": "nce", "status": "suspended"}, {"suspendedBlocks": ["nce"]}, True),
        ({"kind": "nce", "status": "suspended"}, {"suspendedBlocks": ["nce"], "deleteBlockedBy": ["azurePlan"]}, False),
        ({"kind": "legacy"}, {}, True),
        ({"kind": "legacy"}, {"deleteBlockedBy": ["nce", "azurePlan"]}, False),
        ({"kind": "unknown", "status": "expired"}, {}, False),
    ],
)
def test_which_subscriptions_block_the_delete_is_a_switch(sandbox, subscription, knobs, blocks):
    box = with_subscriptions(
        sandbox, {"id": SUB, **subscription}, deleteRefusalStatus=409, deleteRefusalCode=800001, **knobs
    )
    customer = box.customer(CID)
    if blocks:
        assert refusal(lambda: box.delete_customer(customer)) == (409, 800001)
    else:
        box.delete_customer(customer)
        assert CID in box.deleted


@pytest.mark.parametrize(
    "subscription",
    [
        {"id": "not-a-guid"},
        {"id": SUB, "kind": "mystery"},
        {"id": SUB, "kind": "nce", "azureEntitlements": [{"id": AZ}]},
        {"id": SUB, "patchAnswer": 201},
    ],
)
def test_a_malformed_subscription_seed_is_refused(sandbox, subscription):
    with pytest.raises(ValueError):
        Sandbox.check_customer({"id": CID, "subscriptions": [subscription]})


@pytest.mark.parametrize(
    "knobs",
    [
        {"subscriptionPatchAnswer": 201},
        {"deleteBlockedBy": ["nce", "mystery"]},
        {"lateCancelCode": 1},
        {"resuspend": 1},
    ],
)
def test_a_switch_refuses_a_value_it_does_not_have(sandbox, knobs):
    with pytest.raises(ValueError):
        sandbox.set_knobs(knobs)


# -- what a review of the first version found ---------------------------------------------------------------------


def test_reads_of_the_plan_or_the_list_never_count_as_reads_of_its_azure_subscriptions(sandbox):
    box = with_subscriptions(
        sandbox, {"id": PLAN, "kind": "azurePlan", "azureEntitlements": [{"id": AZ, "inactiveAfterReads": 2}]}
    )
    customer = box.customer(CID)
    plan = customer.subscription(PLAN)
    entitlement = customer.azure_entitlement(plan, AZ)
    _, answer = box.cancel_azure_entitlement(entitlement, {"cancellationReason": "compromise"})
    assert answer == 200 and entitlement.status == "active"  # the answer still reads active, as documented
    for _ in range(5):
        box.read_subscription(plan, customer)
        box.subscription_page(customer, False, None)
    assert [box.read_azure_entitlement(plan, entitlement).status for _ in range(3)] == ["active", "active", "inactive"]


def test_a_page_of_subscriptions_reads_only_what_it_shows(sandbox):
    first, second = SUB, PLAN
    box = with_subscriptions(
        sandbox,
        {"id": first, "kind": "nce", "changeAfterReads": 1},
        {"id": second, "kind": "nce", "changeAfterReads": 1},
        subscriptionsPageSize=1,
    )
    customer = box.customer(CID)
    for sid in (first, second):
        patch(box, sid, "deleted")
    page = box.subscription_page(customer, False, None)
    assert [s.id for s in page.items] == [first]
    assert customer.subscription(second).reads_pending() == 0 and customer.subscription(first).reads_pending() == 1


def test_a_delete_accepted_while_a_subscription_is_active_is_still_recorded_whatever_the_switches(sandbox):
    box = with_subscriptions(sandbox, {"id": SUB, "kind": "nce"}, deleteBlockedBy=["azurePlan"])
    box.delete_customer(box.customer(CID))
    assert CID in box.deleted
    assert box.violations[-1]["openSubscriptions"] == [SUB] and box.violations[-1]["accepted"] is True


def test_a_patch_while_a_change_is_pending_is_not_ready_and_an_expired_subscription_cannot_be_changed(sandbox):
    box = with_subscriptions(
        sandbox, {"id": SUB, "kind": "nce", "changeAfterReads": 3}, {"id": PLAN, "kind": "legacy", "status": "expired"}
    )
    patch(box, SUB, "deleted")
    assert refusal(lambda: patch(box, SUB, "suspended")) == (409, 800082)  # the cancel is not turned into a suspend
    pending = box.customer(CID).subscription(SUB).pending
    assert pending is not None and pending.target == "deleted"
    assert refusal(lambda: patch(box, PLAN, "active")) == (400, 800096)


def test_suspending_a_legacy_base_suspends_its_add_ons_and_nce_takes_them_along_only_under_the_switch(sandbox):
    addon = "c4c1340d-6911-4758-bba3-0c4c6007d161"
    for kind, cascades, knobs in (("legacy", True, {}), ("nce", False, {}), ("nce", True, {"addOnCascade": ["nce"]})):
        box = with_subscriptions(
            sandbox, {"id": SUB, "kind": kind}, {"id": addon, "kind": kind, "parentSubscriptionId": SUB}, **knobs
        )
        patch(box, SUB, "suspended", autoRenewEnabled=False)
        assert (box.customer(CID).subscription(addon).status == "suspended") is cascades, (kind, knobs)


@pytest.mark.parametrize(
    "subscription",
    [
        {"id": SUB, "windowHours": 1e9},
        {"id": SUB, "windowHours": []},
        {"id": SUB, "windowHours": True},
        {"id": PLAN, "kind": "azurePlan", "azureEntitlements": [{}]},
        {"id": PLAN, "kind": "azurePlan", "azureEntitlements": [{"id": 5}]},
        {"id": PLAN, "kind": "azurePlan", "azureEntitlements": ["x"]},
        {"id": SUB, "changeAfterReads": "soon"},
    ],
)
def test_a_seed_that_would_crash_a_handler_later_is_refused_at_once(sandbox, subscription):
    with pytest.raises(ValueError):
        Sandbox.check_customer({"id": CID, "subscriptions": [subscription]})


def test_a_seed_with_one_subscription_twice_is_refused(sandbox):
    with pytest.raises(ValueError, match="twice"):
        Sandbox.check_customer({"id": CID, "subscriptions": [{"id": SUB}, {"id": SUB.upper()}]})


@pytest.mark.parametrize(
    "knobs",
    [
        {"cancellationReasons": None},
        {"cancellationReasons": "compromise"},
        {"subscriptionsPageSize": "x"},
        {"subscriptionsPageSize": -1},
        {"addOnCascade": ["everything"]},
    ],
)
def test_a_subscription_knob_that_would_crash_a_handler_is_refused(sandbox, knobs):
    with pytest.raises(ValueError):
        sandbox.set_knobs(knobs)


def test_the_older_knobs_take_what_they_took_before(sandbox):
    sandbox.set_knobs({"statusCase": "mixed"})  # unknown: lower case, as the emulator always did
    assert sandbox.wire_status("Cancelled") == "cancelled"
    sandbox.set_knobs({"statusCase": "lower"})
