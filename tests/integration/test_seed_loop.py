"""tools.seed_loop (Microsoft's sample delete loop, the benchmark baseline) against the real Partner Center emulator."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from tools import seed_loop
from tools.devenv import ROOT


def settings_kwargs(pc) -> dict:
    s = pc.app_settings()
    return {
        "base_url": s["PARTNER_CENTER_BASE_URL"],
        "authority_host": s["PARTNER_CENTER_AUTHORITY_HOST"],
        "tenant_id": s["PARTNER_CENTER_TENANT_ID"],
        "client_id": s["PARTNER_CENTER_CLIENT_ID"],
        "client_secret": s["PARTNER_CENTER_CLIENT_SECRET"],
        "ca": s["REQUESTS_CA_BUNDLE"],
    }


def api_log(pc, since: int, cid: str) -> tuple[list[dict], list[dict]]:
    """(this customer's API requests, token requests) logged since ``since``."""
    log = pc.requests_log(since)
    return [r for r in log if cid in r["path"]], [r for r in log if "/oauth2/" in r["path"]]


def method_counts(entries: list[dict]) -> dict:
    return {m: sum(1 for r in entries if r["method"] == m) for m in ("GET", "PATCH", "DELETE")}


def test_two_lagging_orders_are_cancelled_polled_and_then_the_customer_is_deleted(pc, make_customer):
    customer = make_customer([{"cancelAfterSeconds": 2}, {"cancelAfterSeconds": 2}])
    cid, oids = customer["id"], [o["id"] for o in customer["orders"]]
    since = pc.state()["requests"]

    result = seed_loop.run(cid, interval=0.5, timeout=30, **settings_kwargs(pc))

    state = pc.state()
    # The emulator is shared by the session: only this customer's DELETE refusals count.
    assert cid not in state["customers"] and cid in state["deletedCustomers"]
    assert [v for v in state["violations"] if v["customer"] == cid] == []
    assert result["customer"] == cid and result["deleteStatus"] == 204
    entries, tokens = api_log(pc, since, cid)
    order_paths = [f"/v1/customers/{cid}/orders/{oid}" for oid in oids]

    # GET entitlements, then per entitlement (one per order here) GET + PATCH of that order, in entitlement order.
    assert [(r["method"], r["path"]) for r in entries[:5]] == [
        ("GET", f"/v1/customers/{cid}/entitlements"),
        ("GET", order_paths[0]),
        ("PATCH", order_paths[0]),
        ("GET", order_paths[1]),
        ("PATCH", order_paths[1]),
    ]
    # Then passes of GETs of every order, and the DELETE last.
    polls, delete = entries[5:-1], entries[-1]
    assert (delete["method"], delete["path"], delete["status"]) == ("DELETE", f"/v1/customers/{cid}", 204)
    assert polls and all(r["method"] == "GET" for r in polls)
    assert [r["path"] for r in polls] == order_paths * result["passes"]
    assert result["passes"] >= 3  # ~2 s lag polled every 0.5 s: repeated passes
    assert all(r["orderStatus"].lower() == "pending" for r in polls[:2])  # the first pass still sees them pending
    assert all(r["orderStatus"].lower() == "cancelled" for r in polls[-2:])  # the last pass sees both cancelled
    assert all(r["status"] == 200 for r in entries[:-1])
    assert len({r["correlationId"] for r in entries}) == 1 and len({r["requestId"] for r in entries}) == len(entries)

    # The DELETE came after every order's readyAt (and its cancellation).
    orders = state["deletedCustomers"][cid]["orders"]
    for oid in oids:
        assert orders[oid]["patches"] == 1
        assert orders[oid]["readyAt"] is not None and orders[oid]["cancelledAt"] is not None
        assert delete["t"] >= orders[oid]["readyAt"] and delete["t"] >= orders[oid]["cancelledAt"]

    # The counts match the emulator's request log; the token is asked once and counted apart.
    assert result["calls"] == method_counts(entries) == {"GET": 3 + 2 * result["passes"], "PATCH": 2, "DELETE": 1}
    assert result["tokenRequests"] == len(tokens) == 1
    assert tokens[0]["method"] == "POST" and tokens[0]["status"] == 200
    assert result["started"] <= tokens[0]["t"] <= entries[0]["t"]
    assert delete["t"] <= result["deletedAt"] <= result["started"] + result["wall"]
    json.dumps(result)


def test_mirrors_the_sample_one_get_and_patch_per_entitlement_and_ignores_nested_ones(pc):
    """Two entitlements naming the same order: the sample GETs, PATCHes and polls it twice; nested ones are skipped."""
    cid, oid, nested = str(uuid.uuid4()), uuid.uuid4().hex + "A", uuid.uuid4().hex + "B"
    ref = {"id": oid, "lineItemId": "0"}
    pc.add_customers(
        [
            {
                "id": cid,
                "orders": [{"id": oid}, {"id": nested, "status": "cancelled"}],
                "entitlements": [
                    {
                        "referenceOrder": ref,
                        "entitlementType": "reservedinstance",
                        "includedEntitlements": [
                            {
                                "referenceOrder": {"id": nested, "lineItemId": "0"},
                                "entitlementType": "software",
                                "includedEntitlements": [],
                            }
                        ],
                    },
                    {"referenceOrder": ref, "entitlementType": "software", "includedEntitlements": []},
                ],
            }
        ]
    )
    since = pc.state()["requests"]

    result = seed_loop.run(cid, interval=0.2, timeout=10, **settings_kwargs(pc))

    entries, _ = api_log(pc, since, cid)
    path = f"/v1/customers/{cid}/orders/{oid}"
    assert [(r["method"], r["path"]) for r in entries] == [
        ("GET", f"/v1/customers/{cid}/entitlements"),
        ("GET", path),
        ("PATCH", path),
        ("GET", path),
        ("PATCH", path),
        ("GET", path),
        ("GET", path),
        ("DELETE", f"/v1/customers/{cid}"),
    ]
    assert result["passes"] == 1 and result["calls"] == method_counts(entries) == {"GET": 5, "PATCH": 2, "DELETE": 1}
    assert pc.state()["deletedCustomers"][cid]["orders"][oid]["patches"] == 2


def test_refuses_a_customer_id_that_is_not_a_guid_before_any_request(pc):
    since = pc.state()["requests"]
    for bad in ("../v1/customers", "not-a-guid", str(uuid.uuid4()) + "\n", str(uuid.uuid4()) + "/orders"):
        with pytest.raises(ValueError, match="GUID"):
            seed_loop.run(bad, **settings_kwargs(pc))
    assert pc.requests_log(since) == []


def test_an_http_error_ends_the_run_without_retries(pc):
    cid = str(uuid.uuid4())  # no such customer: the entitlements GET answers 404
    since = pc.state()["requests"]
    with pytest.raises(seed_loop.SeedLoopError) as info:
        seed_loop.run(cid, **settings_kwargs(pc))
    assert info.value.status == 404 and info.value.method == "GET"
    entries, _ = api_log(pc, since, cid)
    assert [(r["method"], r["status"]) for r in entries] == [("GET", 404)]


def test_gives_up_after_the_timeout_without_deleting(pc, make_customer):
    customer = make_customer([{"neverCancels": True}])
    cid = customer["id"]
    since = pc.state()["requests"]
    with pytest.raises(TimeoutError):
        seed_loop.run(cid, interval=0.3, timeout=1.0, **settings_kwargs(pc))
    entries, _ = api_log(pc, since, cid)
    assert cid in pc.state()["customers"] and "DELETE" not in {r["method"] for r in entries}


def test_cli_prints_one_json_line_and_exits_zero(pc, make_customer, tmp_path):
    customer = make_customer([{}, {}])  # cancelled at once: one pass
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(pc.app_settings()))
    since = pc.state()["requests"]
    before = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "tools.seed_loop", "--customer", customer["id"], "--settings-json", str(settings)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert (
        result["deleteStatus"] == 204
        and result["passes"] == 1
        and result["calls"] == {"GET": 5, "PATCH": 2, "DELETE": 1}
    )
    assert result["startedSource"] in ("proc", "entry")
    _, tokens = api_log(pc, since, customer["id"])
    assert before - 0.05 <= result["started"] <= tokens[0]["t"] <= result["deletedAt"]
    assert customer["id"] in pc.state()["deletedCustomers"]

    bad = subprocess.run(
        [sys.executable, "-m", "tools.seed_loop", "--customer", "nope", "--settings-json", str(settings)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and bad.stdout == "" and "GUID" in bad.stderr
