"""The Partner Center emulator itself behaves like the documented API (reference partner-center-api.md)."""
from __future__ import annotations

import json
import time
import uuid
from datetime import datetime

import pytest
import requests

BOM = b"\xef\xbb\xbf"


@pytest.fixture
def api(pc):
    partner = pc.partner
    token = requests.post(f"{pc.url}/{partner['tenantId']}/oauth2/v2.0/token", verify=pc.ca, data={
        "grant_type": "client_credentials", "client_id": partner["clientId"], "client_secret": partner["clientSecret"],
        "scope": "https://api.partnercenter.microsoft.com/.default"}).json()["access_token"]
    session = requests.Session()
    session.trust_env = False  # else a machine-wide REQUESTS_CA_BUNDLE wins over session.verify
    session.verify = pc.ca
    session.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json"})
    return session


def body(resp):
    assert resp.content.startswith(BOM)  # every body starts with a BOM by default
    return json.loads(resp.content.decode("utf-8-sig"))


def cancel(pc, api, cid, oid):
    return api.patch(f"{pc.url}/v1/customers/{cid}/orders/{oid}", json={"id": oid, "status": "cancelled"})


def test_token_endpoint_checks_the_client_secret_and_bearer_tokens_are_checked(pc):
    partner = pc.partner
    bad = requests.post(f"{pc.url}/{partner['tenantId']}/oauth2/v2.0/token", verify=pc.ca,
                        data={"grant_type": "client_credentials", "client_id": partner["clientId"], "client_secret": "wrong", "scope": "x/.default"})
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    conf = requests.get(f"{pc.url}/{partner['tenantId']}/v2.0/.well-known/openid-configuration", verify=pc.ca).json()
    assert conf["token_endpoint"].endswith(f"/{partner['tenantId']}/oauth2/v2.0/token")
    forged = requests.get(f"{pc.url}/v1/customers", verify=pc.ca, headers={"Authorization": "Bearer forged"})
    assert forged.status_code == 401 and body(forged)["code"] == 800001


def test_customers_are_paged_with_links_next_and_continuation_token(pc, api, make_customer):
    for _ in range(3):
        make_customer([])
    seen, url, headers = [], f"{pc.url}/v1/customers?size=2", {}
    for _ in range(100):
        page = body(api.get(url, headers=headers))
        seen += [c["id"] for c in page["items"]]
        nxt = page["links"].get("next")
        if not nxt:
            break
        assert "seekOperation=Next" in nxt["uri"] and page["continuationToken"]
        url = f"{pc.url}/v1{nxt['uri']}"
        headers = {h["key"]: h["value"] for h in nxt["headers"]}
    assert len(seen) == len(set(seen)) == len(pc.state()["customers"])


def test_orders_cancel_with_lag_and_the_documented_errors(pc, api, make_customer):
    customer = make_customer([{"cancelAfterReads": 1}, {"ageDays": 90}])
    cid, (lag, old) = customer["id"], [o["id"] for o in customer["orders"]]
    listed = body(api.get(f"{pc.url}/v1/customers/{cid}/orders"))
    assert listed["totalCount"] == 2 and listed["attributes"]["objectType"] == "Collection"
    patched = body(api.patch(f"{pc.url}/v1/customers/{cid}/orders/{lag}", json={"id": lag, "status": "cancelled"}))
    assert patched["status"] == "pending"
    refused = api.delete(f"{pc.url}/v1/customers/{cid}")
    assert refused.status_code == 400 and "Please cancel the following orders" in body(refused)["description"]
    assert body(api.get(f"{pc.url}/v1/customers/{cid}/orders/{lag}"))["status"] == "pending"
    assert body(api.get(f"{pc.url}/v1/customers/{cid}/orders/{lag}"))["status"] == "cancelled"
    window = api.patch(f"{pc.url}/v1/customers/{cid}/orders/{old}", json={"id": old, "status": "cancelled"})
    assert window.status_code == 400 and body(window)["code"] == 900117 and body(window)["errorName"]
    missing = api.get(f"{pc.url}/v1/customers/{cid}/orders/{'Z' * 33}")
    assert missing.status_code == 404 and body(missing)["code"] == 20000
    unknown = api.get(f"{pc.url}/v1/customers/{uuid.uuid4()}")
    assert unknown.status_code == 404 and body(unknown)["code"] == 60003


def test_status_casing_license_orders_and_second_cancel_knob(pc, api, make_customer):
    pc.knobs(statusCase="upper", secondCancel="error")
    customer = make_customer([{"status": "cancelled"}, {"kind": "license"}])
    cid, (done, lic) = customer["id"], [o["id"] for o in customer["orders"]]
    assert body(api.get(f"{pc.url}/v1/customers/{cid}/orders/{done}"))["status"] == "CANCELLED"
    again = api.patch(f"{pc.url}/v1/customers/{cid}/orders/{done}", json={"id": done, "status": "cancelled"})
    assert again.status_code == 400 and body(again)["code"] == 800061
    license_ = api.patch(f"{pc.url}/v1/customers/{cid}/orders/{lic}", json={"id": lic, "status": "cancelled"})
    assert license_.status_code == 400 and body(license_)["code"] == 800063


def test_rate_limit_answers_429_with_retry_after_and_gateway_body(pc, api, make_customer):
    customer = make_customer([])
    pc.knobs(rateLimitPerWindow=3, rateLimitWindowSeconds=30)
    statuses = [api.get(f"{pc.url}/v1/customers/{customer['id']}") for _ in range(5)]
    limited = [r for r in statuses if r.status_code == 429]
    assert len(limited) == 2 and all(1 <= int(r.headers["Retry-After"]) <= 30 for r in limited)
    assert body(limited[0])["statusCode"] == 429 and "Try again in" in body(limited[0])["message"]


def test_faults_by_method_and_path_and_the_request_log(pc, api, make_customer):
    customer = make_customer([])
    url = f"{pc.url}/v1/customers/{customer['id']}"
    pc.faults([{"kind": "status", "status": 503, "method": "GET", "path": customer["id"], "times": 1},
               {"kind": "drop", "method": "GET", "path": customer["id"], "times": 1}])
    assert api.get(url).status_code == 503
    with pytest.raises(requests.ConnectionError):
        api.get(url)
    assert api.get(url).status_code == 200
    entries = [r for r in pc.requests_log() if customer["id"] in r["path"]]
    assert [e["status"] for e in entries] == [503, "dropped", 200]
    assert all(e["auth"] for e in entries) and "Bearer" not in json.dumps(entries)  # never the token itself
    assert all(abs(datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp() - e["t"]) < 0.001 for e in entries)


def test_a_fault_window_applies_only_between_from_and_until(pc, api, make_customer):
    customer = make_customer([])
    url, token_url = f"{pc.url}/v1/customers/{customer['id']}", f"{pc.url}/{pc.partner['tenantId']}/oauth2/v2.0/token"
    start = time.time() + 1
    outage = {"path": ".*", "from": start, "until": start + 1}  # every call fails or is dropped, the token endpoint too
    echoed = pc.faults([{"kind": "status", "status": 503, "share": 0.5, **outage}, {"kind": "drop", **outage}])
    assert [(f["from"], f["until"]) for f in echoed] == [(start, start + 1)] * 2

    def call(method, target):
        try:
            return api.request(method, target).status_code
        except requests.ConnectionError:
            return "dropped"

    assert call("GET", url) == 200
    time.sleep(max(0.0, start + 0.1 - time.time()))
    inside = [call("GET", url) for _ in range(4)] + [call("POST", token_url)]
    assert time.time() < start + 1 and set(inside) <= {503, "dropped"}
    time.sleep(max(0.0, start + 1.1 - time.time()))
    assert call("GET", url) == 200


@pytest.mark.parametrize("window", [{"from": "soon"}, {"until": True}, {"from": 10, "until": 10}, {"from": 20.5, "until": 10}])
def test_a_malformed_fault_window_is_refused(pc, window):
    pc.faults([{"kind": "drop", "times": 1}])
    refused = requests.post(f"{pc.url}/_emulator/faults", json=[{"kind": "drop", **window}], verify=pc.ca)
    assert refused.status_code == 400 and "'from'" in refused.json()["error"]
    assert [f["times"] for f in pc.state()["faults"]] == [1]  # the faults in force are unchanged


def test_state_shows_when_orders_were_asked_to_cancel_could_read_cancelled_and_did(pc, api, make_customer):
    customer = make_customer([{}, {"cancelAfterSeconds": 1}, {"cancelAfterReads": 1}, {"neverCancels": True},
                              {"status": "cancelled"}, {"kind": "license"}, {"ageDays": 90}])
    cid, ids = customer["id"], [o["id"] for o in customer["orders"]]
    instant, timed, by_reads, never, done, license_, old = ids
    before = time.time()
    assert [cancel(pc, api, cid, oid).status_code for oid in ids] == [200] * 5 + [400] * 2
    after = time.time()
    orders = pc.state()["customers"][cid]["orders"]
    assert before <= orders[instant]["cancelRequestedAt"] <= after
    assert orders[instant]["cancelledAt"] == orders[instant]["readyAt"] == orders[instant]["cancelRequestedAt"]
    assert orders[timed]["readyAt"] == orders[timed]["cancelRequestedAt"] + 1 and orders[timed]["cancelledAt"] is None
    assert orders[by_reads]["readyAt"] is None and orders[never]["readyAt"] is None  # depends on reads; never
    assert orders[done]["cancelRequestedAt"] is None and orders[done]["readyAt"] == orders[done]["cancelledAt"] == orders[done]["addedAt"]
    assert orders[license_]["cancelRequestedAt"] is None and orders[old]["cancelRequestedAt"] is None  # refused PATCHes
    assert [orders[oid]["cancellable"] for oid in ids] == [True, True, True, False, True, False, False]

    assert cancel(pc, api, cid, timed).status_code == 200  # a second PATCH: still the first request's time
    assert body(api.get(f"{pc.url}/v1/customers/{cid}/orders/{timed}"))["status"] == "pending"
    assert pc.state()["customers"][cid]["orders"][timed] == orders[timed] | {"patches": 2}
    time.sleep(max(0.0, orders[timed]["readyAt"] - time.time()))
    read_at = time.time()
    assert body(api.get(f"{pc.url}/v1/customers/{cid}/orders/{timed}"))["status"] == "cancelled"
    assert read_at <= pc.state()["customers"][cid]["orders"][timed]["cancelledAt"] <= time.time()


def test_a_deleted_customer_stays_readable_in_deleted_customers(pc, api, make_customer):
    customer = make_customer([{}])
    cid, oid = customer["id"], customer["orders"][0]["id"]
    assert cancel(pc, api, cid, oid).status_code == 200
    before = pc.state()["customers"][cid]
    assert api.delete(f"{pc.url}/v1/customers/{cid}").status_code == 204
    state = pc.state()
    assert cid not in state["customers"] and state["deletedCustomers"][cid] == before
    assert before["orders"][oid]["status"] == "cancelled" and before["orders"][oid]["cancelledAt"] is not None


def test_a_new_purchase_is_listed_and_holds_the_delete_until_cancelled(pc, api, make_customer):
    cid = make_customer([])["id"]
    entitlements = f"{pc.url}/v1/customers/{cid}/entitlements"
    assert body(api.get(entitlements))["items"] == []
    new, license_ = uuid.uuid4().hex + "N", uuid.uuid4().hex + "L"
    assert pc.add_orders(cid, [{"id": new, "alternateId": "newpurchase1"}, {"id": license_, "kind": "license"}]) == 2
    assert [e["referenceOrder"]["id"] for e in body(api.get(entitlements))["items"]] == [new]
    again = requests.post(f"{pc.url}/_emulator/customers/{cid}/orders", json=[{"id": new}], verify=pc.ca)
    assert again.status_code == 400 and new in again.json()["error"]
    refused = api.delete(f"{pc.url}/v1/customers/{cid}")
    assert refused.status_code == 400 and body(refused)["description"].endswith(": newpurchase1")
    assert cancel(pc, api, cid, new).status_code == 200
    assert api.delete(f"{pc.url}/v1/customers/{cid}").status_code == 204
    unknown = requests.post(f"{pc.url}/_emulator/customers/{uuid.uuid4()}/orders", json=[{"id": new}], verify=pc.ca)
    assert unknown.status_code == 404 and "no customer" in unknown.json()["error"]


def test_a_hidden_order_is_in_no_entitlement_but_blocks_delete_until_cancelled(pc, api, make_customer):
    customer = make_customer([{"hidden": True, "alternateId": "hiddenplan01"}, {}])
    cid, (hidden, listed) = customer["id"], [o["id"] for o in customer["orders"]]
    assert [e["referenceOrder"]["id"] for e in body(api.get(f"{pc.url}/v1/customers/{cid}/entitlements"))["items"]] == [listed]
    assert body(api.get(f"{pc.url}/v1/customers/{cid}/orders/{hidden}"))["alternateId"] == "hiddenplan01"
    assert cancel(pc, api, cid, listed).status_code == 200
    refused = api.delete(f"{pc.url}/v1/customers/{cid}")
    assert refused.status_code == 400 and body(refused)["description"].endswith(": hiddenplan01")
    assert pc.state()["customers"][cid]["orders"][hidden]["hidden"] is True
    assert cancel(pc, api, cid, hidden).status_code == 200
    assert api.delete(f"{pc.url}/v1/customers/{cid}").status_code == 204
