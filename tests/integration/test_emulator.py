"""The Partner Center emulator itself behaves like the documented API (reference partner-center-api.md)."""
from __future__ import annotations

import json
import uuid

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
