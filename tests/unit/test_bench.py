"""The benchmark's own arithmetic and log reading (tools/bench.py): what its tables are made of."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tools import bench

A = "3f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b"
B = "0f0e0d0c-0b0a-4909-8807-060504030201"
INV1, INV2, INV3 = (
    "11111111-1111-4111-8111-111111111111",
    "22222222-2222-4222-8222-222222222222",
    "33333333-3333-4333-8333-333333333333",
)


@pytest.mark.parametrize(
    "ms, billed", [(0, 1000), (30, 1000), (999, 1000), (1000, 1000), (1001, 1100), (1234, 1300), (60000, 60000)]
)
def test_flex_bills_at_least_a_second_rounded_up_to_100_ms(ms, billed):
    assert bench.flex_billed_ms(ms) == billed


def test_invocations_are_attributed_to_their_customer_by_the_apps_log_lines():
    log = "\n".join(
        [
            f"x INFO local_host: Executing 'Functions.delete_customer' (Reason='...', Id={INV1}, DequeueCount=1)",
            (
                f"x INFO customer_deletion: [delete_customer] cancelled (correlation=c customer={A} hop=0 "
                f"invocation={INV1})"
            ),
            f"x INFO local_host: Executed 'Functions.delete_customer' (Succeeded, Id={INV1}, Duration=120ms)",
            f"x INFO customer_deletion: [poll_orders] poll hop 1 (correlation=c customer={A} invocation={INV2})",
            f"x ERROR local_host: Executed 'Functions.poll_orders' (Failed, Id={INV2}, Duration=4500ms): boom",
            f"x INFO customer_deletion: [poll_orders] poll hop 1 (correlation=d customer={B} invocation={INV3})",
            f"x INFO local_host: Executed 'Functions.poll_orders' (Succeeded, Id={INV3}, Duration=30ms)",
            (
                "x INFO local_host: Executed 'Functions.poll_orders' (Succeeded, "
                "Id=99999999-9999-4999-8999-999999999999, Duration=7ms)"
            ),
        ]
    )
    found = bench.host_invocations(log)
    assert sorted(found[A]) == [("delete_customer", 0.12), ("poll_orders", 4.5)]
    assert found[B] == [("poll_orders", 0.03)]
    assert len(found) == 2  # an invocation no app line names is nobody's


def test_calls_delete_time_and_cancellation_time_come_from_the_emulator():
    log = [
        {"method": "POST", "path": "/tenant/oauth2/v2.0/token", "status": 200, "t": 1.0},
        {"method": "GET", "path": f"/v1/customers/{A}", "status": 200, "t": 2.0},
        {"method": "PATCH", "path": f"/v1/customers/{A}/orders/x", "status": 200, "t": 3.0},
        {"method": "DELETE", "path": f"/v1/customers/{A}", "status": 400, "t": 4.0},
        {"method": "DELETE", "path": f"/v1/customers/{A}", "status": 204, "t": 9.0},
        {"method": "GET", "path": f"/v1/customers/{B}", "status": 200, "t": 5.0},
    ]
    assert bench.api_calls(log, A) == {"GET": 1, "PATCH": 1, "DELETE": 2}
    assert bench.delete_time(log, A) == 9.0 and bench.delete_time(log, B) is None
    state = {
        "customers": {B: {"orders": {"o": {"readyAt": None, "cancelledAt": None}}}},
        "deletedCustomers": {
            A: {"orders": {"o": {"readyAt": 5.0, "cancelledAt": 7.5}, "p": {"readyAt": None, "cancelledAt": 6.0}}}
        },
    }
    # The last order to turn: when it turned (readyAt), not when a read first saw it; cancelledAt only without readyAt.
    assert bench.turned_cancelled(state, A) == 6.0
    assert bench.turned_cancelled(state, B) is None  # an order that never turned


def test_side_figures_take_medians_and_the_worst_lag():
    per: list[dict[str, Any]] = [
        {
            "deleted": 10.0,
            "calls": {"GET": 4, "PATCH": 2, "DELETE": 1},
            "kinds": {"orders": 4, "subscriptions": 2, "customer": 1},
            "compute": 0.2,
            "flex": 3.0,
            "executions": 3,
            "lag": 2.0,
            "e2e": 60.0,
        },
        {
            "deleted": 11.0,
            "calls": {"GET": 6, "PATCH": 2, "DELETE": 1},
            "kinds": {"orders": 6, "subscriptions": 2, "customer": 1},
            "compute": 0.4,
            "flex": 4.0,
            "executions": 4,
            "lag": 9.0,
            "e2e": 70.0,
        },
        {
            "deleted": None,
            "calls": {"GET": 2},
            "kinds": {"orders": 2},
            "compute": 0.1,
            "flex": 1.0,
            "executions": 1,
            "lag": None,
            "e2e": None,
        },
    ]
    fig = bench.side_figures(per)
    assert fig["deleted"] == 2 and fig["calls"] == 7 and fig["calls_by_method"]["GET"] == 4
    assert fig["lag_worst"] == 9.0 and fig["lag_median"] == 5.5 and fig["e2e"] == 65.0 and fig["flex"] == 3.0
    assert fig["calls_by_kind"] == {
        "customer": 1,
        "entitlements": 0,
        "orders": 4,
        "subscriptions": 2,
        "Azure subscriptions": 0,
    }


def test_calls_are_sorted_by_where_they_go_and_a_ratio_to_nothing_is_not_a_number():
    assert [
        bench.call_kind(p)
        for p in (
            "/v1/customers/c",
            "/v1/customers/c/entitlements",
            "/v1/customers/c/orders/o",
            "/v1/customers/c/subscriptions/s",
            "/v1/customers/c/subscriptions/p/azureEntitlements/e/cancel",
        )
    ] == ["customer", "entitlements", "orders", "subscriptions", "Azure subscriptions"]
    assert (
        math.isnan(bench.ratio(3.0, 0.0)) and math.isnan(bench.ratio(3.0, float("nan"))) and bench.ratio(3, 4) == 0.75
    )
