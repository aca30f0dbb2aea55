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
