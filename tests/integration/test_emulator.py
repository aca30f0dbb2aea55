"""The Partner Center emulator itself behaves like the documented API (reference partner-center-api.md)."""

from __future__ import annotations

import json
import random
import re
import sys
import time
import uuid
from datetime import datetime

import pytest
import requests

from tools import devenv
from tools.pc_emulator.models import full_sandbox_customers

BOM = b"\xef\xbb\xbf"


def bearer_session(emu):
    """A session with a token of the emulator's partner app, as the app gets one."""
    partner = emu.partner
    token = requests.post(
        f"{emu.url}/{partner['tenantId']}/oauth2/v2.0/token",
        verify=emu.ca,
        data={
            "grant_type": "client_credentials",
            "client_id": partner["clientId"],
            "client_secret": partner["clientSecret"],
            "scope": "https://api.partnercenter.microsoft.com/.default",
        },
    ).json()["access_token"]
    session = requests.Session()
    session.trust_env = False  # else a machine-wide REQUESTS_CA_BUNDLE wins over session.verify
    session.verify = emu.ca
    session.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json"})
    return session


@pytest.fixture
def api(pc):
    return bearer_session(pc)


def body(resp):
    assert resp.content.startswith(BOM)  # every body starts with a BOM by default
    return json.loads(resp.content.decode("utf-8-sig"))


def list_customers(emu, api, size=40):
    """Every page of the customer list, following ``links.next`` verbatim with its headers, as the reference says."""
    pages, url = [], f"{emu.url}/v1/customers?size={size}"
    headers: dict[str, str] = {}
    for _ in range(10000):
        resp = api.get(url, headers=headers)
        assert resp.status_code == 200, resp.content
        pages.append(body(resp))
        nxt = pages[-1]["links"].get("next")
        if not nxt:
            return pages
        assert "seekOperation=Next" in nxt["uri"] and pages[-1]["continuationToken"] == nxt["headers"][0]["value"]
        url, headers = f"{emu.url}/v1{nxt['uri']}", {h["key"]: h["value"] for h in nxt["headers"]}
    raise AssertionError("the customer list never ended")


def cancel(pc, api, cid, oid):
    return api.patch(f"{pc.url}/v1/customers/{cid}/orders/{oid}", json={"id": oid, "status": "cancelled"})


def test_token_endpoint_checks_the_client_secret_and_bearer_tokens_are_checked(pc):
    partner = pc.partner
    bad = requests.post(
        f"{pc.url}/{partner['tenantId']}/oauth2/v2.0/token",
        verify=pc.ca,
        data={
            "grant_type": "client_credentials",
            "client_id": partner["clientId"],
            "client_secret": "wrong",
            "scope": "x/.default",
        },
    )
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    conf = requests.get(f"{pc.url}/{partner['tenantId']}/v2.0/.well-known/openid-configuration", verify=pc.ca).json()
    assert conf["token_endpoint"].endswith(f"/{partner['tenantId']}/oauth2/v2.0/token")
    forged = requests.get(f"{pc.url}/v1/customers", verify=pc.ca, headers={"Authorization": "Bearer forged"})
    assert forged.status_code == 401 and body(forged)["code"] == 800001


def test_customers_are_paged_with_links_next_and_continuation_token(pc, api, make_customer):
    for _ in range(3):
        make_customer([])
    seen = [c["id"] for page in list_customers(pc, api, size=2) for c in page["items"]]
    assert len(seen) == len(set(seen)) == len(pc.state()["customers"])


def test_a_page_cap_returns_fewer_customers_than_asked_and_links_next_still_lists_each_once(pc, api, make_customer):
    mine = {make_customer([])["id"] for _ in range(3)}
    total = len(pc.state()["customers"])  # the emulator is shared: other tests' customers are listed too
    cap = max(1, total // 4)
    pc.knobs(customersMaxPageSize=cap)
    pages = list_customers(pc, api, size=40)
    seen = [c["id"] for page in pages for c in page["items"]]
    assert len(pages) >= 4 and len(seen) == len(set(seen)) == total and mine <= set(seen)
    assert all(len(page["items"]) == page["totalCount"] <= cap for page in pages)  # totalCount: the page's items
    assert [page["links"]["next"]["uri"] for page in pages[:-1]] == ["/customers?size=40&seekOperation=Next"] * (
        len(pages) - 1
    )
    assert {page["links"]["self"]["uri"] for page in pages} == {
        "/customers?size=40"
    } and "continuationToken" not in pages[-1]


@pytest.mark.parametrize(
    "query", ["", "?size=", "?size=0", "?size=-1", "?size=abc", "?size=1.5", "?size=%2B5", "?size=1" + "0" * 30]
)
def test_size_is_required_on_the_first_page_and_must_be_a_positive_integer(pc, api, query):
    refused = api.get(f"{pc.url}/v1/customers{query}")
    assert refused.status_code == 400
    assert body(refused) == {
        "code": 800002,
        "description": body(refused)["description"],
        "data": [],
        "source": "PartnerFD",
    }
    assert body(refused)["description"].startswith("Invalid request input: size")


def test_a_later_page_without_size_keeps_the_size_asked_and_a_token_is_good_once(pc, api, make_customer):
    for _ in range(3):
        make_customer([])
    first = body(api.get(f"{pc.url}/v1/customers?size=2"))
    token = {"MS-ContinuationToken": first["continuationToken"]}
    second = body(api.get(f"{pc.url}/v1/customers?seekOperation=Next", headers=token))
    assert len(second["items"]) == 2 and second["links"]["next"]["uri"] == "/customers?size=2&seekOperation=Next"
    assert not {c["id"] for c in first["items"]} & {c["id"] for c in second["items"]}
    reused = api.get(f"{pc.url}/v1/customers?size=2&seekOperation=Next", headers=token)
    assert reused.status_code == 400 and body(reused)["code"] == 800002


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
    pc.faults(
        [
            {"kind": "status", "status": 503, "method": "GET", "path": customer["id"], "times": 1},
            {"kind": "drop", "method": "GET", "path": customer["id"], "times": 1},
        ]
    )
    assert api.get(url).status_code == 503
    with pytest.raises(requests.ConnectionError):
        api.get(url)
    assert api.get(url).status_code == 200
    entries = [r for r in pc.requests_log() if customer["id"] in r["path"]]
    assert [e["status"] for e in entries] == [503, "dropped", 200]
    assert all(e["auth"] for e in entries) and "Bearer" not in json.dumps(entries)  # never the token itself
    assert all(
        abs(datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp() - e["t"]) < 0.001 for e in entries
    )


@pytest.mark.xdist_group("timing")  # five calls inside a window of 0.9 s (see tests/conftest.py)
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


def test_skip_fails_exactly_the_third_page_and_the_same_links_next_can_be_asked_again(pc, api, make_customer):
    mine = {make_customer([])["id"] for _ in range(3)}
    total = len(pc.state()["customers"])
    pc.knobs(customersMaxPageSize=max(1, total // 4))  # at least 4 pages
    third_page = {"kind": "status", "status": 503, "method": "GET", "path": "^/v1/customers$", "skip": 2, "times": 1}
    assert pc.faults([third_page]) == [{**third_page, "share": 1.0, "seconds": 1.0, "from": None, "until": None}]
    assert api.get(f"{pc.url}/v1/customers/{min(mine)}").status_code == 200  # another path: not counted
    assert pc.state()["faults"][0]["skip"] == 2
    since = pc.state()["requests"]
    statuses, seen = [], []
    url: str | None = f"{pc.url}/v1/customers?size=40"
    headers: dict[str, str] = {}
    while url:
        resp = api.get(url, headers=headers)
        statuses.append(resp.status_code)
        if resp.status_code == 503:
            assert body(resp)["code"] == 800003 and body(resp)["isRetryable"] is True
            continue  # the same page again, with the same continuation token
        page = body(resp)
        seen += [c["id"] for c in page["items"]]
        nxt = page["links"].get("next")
        url, headers = (
            (f"{pc.url}/v1{nxt['uri']}", {h["key"]: h["value"] for h in nxt["headers"]}) if nxt else (None, {})
        )
    assert statuses == [200, 200, 503] + [200] * (len(statuses) - 3) and len(statuses) >= 5
    assert len(seen) == len(set(seen)) == total and mine <= set(seen)
    assert [e["status"] for e in pc.requests_log(since) if e["path"] == "/v1/customers"] == statuses
    assert {k: pc.state()["faults"][0][k] for k in ("skip", "times")} == {"skip": 0, "times": 0}


def test_skipped_requests_draw_nothing_so_the_seeded_draws_are_unchanged(pc, api, make_customer):
    customer = make_customer([])
    url = f"{pc.url}/v1/customers/{customer['id']}"
    pc.knobs(randomSeed=5)
    pc.faults([{"kind": "status", "status": 503, "path": customer["id"], "share": 0.5, "skip": 3}])
    draws = random.Random(5)
    expected = [200] * 3 + [503 if draws.random() < 0.5 else 200 for _ in range(12)]
    assert [api.get(url).status_code for _ in range(15)] == expected and 503 in expected[3:] and 200 in expected[3:]


@pytest.mark.parametrize("skip", [-1, True, 1.5, "2", None])
def test_a_malformed_skip_is_refused(pc, skip):
    refused = requests.post(f"{pc.url}/_emulator/faults", json=[{"kind": "drop", "skip": skip}], verify=pc.ca)
    assert refused.status_code == 400 and "'skip'" in refused.json()["error"]


@pytest.mark.parametrize(
    "window", [{"from": "soon"}, {"until": True}, {"from": 10, "until": 10}, {"from": 20.5, "until": 10}]
)
def test_a_malformed_fault_window_is_refused(pc, window):
    pc.faults([{"kind": "drop", "times": 1}])
    refused = requests.post(f"{pc.url}/_emulator/faults", json=[{"kind": "drop", **window}], verify=pc.ca)
    assert refused.status_code == 400 and "'from'" in refused.json()["error"]
    assert [f["times"] for f in pc.state()["faults"]] == [1]  # the faults in force are unchanged


def test_state_shows_when_orders_were_asked_to_cancel_could_read_cancelled_and_did(pc, api, make_customer):
    customer = make_customer(
        [
            {},
            {"cancelAfterSeconds": 1},
            {"cancelAfterReads": 1},
            {"neverCancels": True},
            {"status": "cancelled"},
            {"kind": "license"},
            {"ageDays": 90},
        ]
    )
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
    assert (
        orders[done]["cancelRequestedAt"] is None
        and orders[done]["readyAt"] == orders[done]["cancelledAt"] == orders[done]["addedAt"]
    )
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
    assert [e["referenceOrder"]["id"] for e in body(api.get(f"{pc.url}/v1/customers/{cid}/entitlements"))["items"]] == [
        listed
    ]
    assert body(api.get(f"{pc.url}/v1/customers/{cid}/orders/{hidden}"))["alternateId"] == "hiddenplan01"
    assert cancel(pc, api, cid, listed).status_code == 200
    refused = api.delete(f"{pc.url}/v1/customers/{cid}")
    assert refused.status_code == 400 and body(refused)["description"].endswith(": hiddenplan01")
    assert pc.state()["customers"][cid]["orders"][hidden]["hidden"] is True
    assert cancel(pc, api, cid, hidden).status_code == 200
    assert api.delete(f"{pc.url}/v1/customers/{cid}").status_code == 204


HOSTILE = [
    "Contoso\nMS-ContinuationToken: forged\r\n\x00\x07\x1b[31m",
    "\u202eexe.nosnoc\u202c Tip",
    "A" * 300 + "\u00e9" * 20,
    '"quoted" <script>alert(1)</script> \\ %s {0} \t',
    "\ud83d lone surrogate",
    "",
    None,
]


def test_hostile_company_names_and_domains_are_shown_exactly_by_the_list_get_and_state(pc, api, make_customer):
    made = {
        make_customer([], companyName=name, domain=HOSTILE[-1 - i])["id"]: (name, HOSTILE[-1 - i])
        for i, name in enumerate(HOSTILE)
    }
    listed = {
        c["id"]: c["companyProfile"] for page in list_customers(pc, api) for c in page["items"] if c["id"] in made
    }
    assert listed == {
        cid: {"tenantId": cid, "companyName": name, "domain": domain} for cid, (name, domain) in made.items()
    }
    state = pc.state()["customers"]
    for cid, (name, domain) in made.items():
        assert body(api.get(f"{pc.url}/v1/customers/{cid}"))["companyProfile"] == {
            "tenantId": cid,
            "domain": domain,
            "companyName": name,
        }
        assert (state[cid]["companyName"], state[cid]["domain"]) == (name, domain)


@pytest.mark.parametrize(
    "customer",
    [
        {"id": "not-a-guid"},
        {"id": str(uuid.uuid4()), "companyName": 5},
        {"id": str(uuid.uuid4()), "domain": ["x"]},
        {"id": str(uuid.uuid4()), "orders": [{"id": 1}]},
        "text",
    ],
)
def test_a_malformed_customer_is_refused_and_nothing_is_added(pc, customer):
    good = str(uuid.uuid4())
    refused = requests.post(f"{pc.url}/_emulator/customers", json=[{"id": good}, customer], verify=pc.ca)
    assert refused.status_code == 400 and refused.json()["error"]
    assert good not in pc.state()["customers"]


@pytest.fixture(scope="module")
def full_emulator(run_dir):
    """A private emulator started as ``python -m tools.pc_emulator --full-sandbox 75``: the shared one stays small."""
    state_dir = run_dir / f"full-sandbox-{uuid.uuid4().hex[:8]}"
    child = devenv._spawn(
        "emulator-full",
        [
            sys.executable,
            "-m",
            "tools.pc_emulator",
            "--full-sandbox",
            "75",
            "--port",
            "0",
            "--state-dir",
            str(state_dir),
        ],
        run_dir,
    )
    try:
        devenv.wait_for(
            lambda: (state_dir / "emulator.json").exists() or child.proc.poll() is not None,
            30,
            what="the full-sandbox emulator",
        )
        assert child.proc.poll() is None, child.log()
        info = json.loads((state_dir / "emulator.json").read_text())
        yield devenv.Emulator(info["url"], info["ca"], info["partner"], child)
    finally:
        child.stop()


def profiles(customers):
    return {c["id"]: {"tenantId": c["id"], "domain": c["domain"], "companyName": c["companyName"]} for c in customers}


def test_full_sandbox_from_the_command_line_lists_the_sample_and_75_test_run_customers(full_emulator):
    emu, api = full_emulator, bearer_session(full_emulator)
    sample, generated = json.loads(devenv.SAMPLE_SANDBOX.read_text())["customers"], full_sandbox_customers(75)
    listed = {c["id"]: c["companyProfile"] for page in list_customers(emu, api) for c in page["items"]}
    assert listed == profiles(sample + generated) and len(listed) == len(sample) + 75
    assert all(re.fullmatch(r"[a-z0-9]+\.onmicrosoft\.com", c["domain"]) for c in sample + generated)
    assert all(re.fullmatch(r"Tip test run \d{4} \u2013 [A-Z][A-Za-z ]+", c["companyName"]) for c in generated)
    assert (
        len({c["domain"] for c in sample + generated}) == len(sample) + 75
        and len({c["companyName"].split(" \u2013 ")[1] for c in generated}) >= 5
    )
    with_orders = [c for c in generated if c["orders"]]
    assert 3 <= len(with_orders) <= 20 and all(
        re.fullmatch(r"[A-Za-z0-9_-]{33}", o["id"]) for c in with_orders for o in c["orders"]
    )
    cid, oid = with_orders[0]["id"], with_orders[0]["orders"][0]["id"]
    assert (
        body(api.patch(f"{emu.url}/v1/customers/{cid}/orders/{oid}", json={"id": oid, "status": "cancelled"}))["status"]
        == "pending"
    )
    order = emu.state()["customers"][cid]["orders"][oid]
    assert 1 <= order["readyAt"] - order["cancelRequestedAt"] <= 3


def test_fill_adds_a_deterministic_full_sandbox_per_seed_and_reset_keeps_the_command_lines(full_emulator):
    emu = full_emulator

    def fill(**args):
        return requests.post(f"{emu.url}/_emulator/customers/fill", json=args, verify=emu.ca)

    start = len(emu.state()["customers"])
    first = fill(count=75, seed=8).json()
    assert first == {"customers": start + 75, "ids": [c["id"] for c in full_sandbox_customers(75, seed=8)]}
    assert fill(count=75, seed=8).json() == first  # the same customers again, replaced
    state = emu.state()["customers"]
    assert {
        cid: {"tenantId": cid, "domain": state[cid]["domain"], "companyName": state[cid]["companyName"]}
        for cid in first["ids"]
    } == profiles(full_sandbox_customers(75, seed=8))
    other = fill(count=3, seed=9, prefix="Sweep e2e").json()
    assert other["customers"] == start + 78 and not set(other["ids"]) & set(first["ids"])
    assert [emu.state()["customers"][cid]["domain"].split(".")[0][-4:] for cid in other["ids"]] == [
        "0001",
        "0002",
        "0003",
    ]
    assert all(emu.state()["customers"][cid]["companyName"].startswith("Sweep e2e 000") for cid in other["ids"])
    for bad in ({"count": -1}, {"count": True}, {"count": 10001}, {"seed": "7"}, {"prefix": " "}, {"colour": "red"}):
        assert fill(**bad).status_code == 400
    emu.reset()
    assert set(emu.state()["customers"]) == set(
        profiles(json.loads(devenv.SAMPLE_SANDBOX.read_text())["customers"] + full_sandbox_customers(75))
    )


# -- subscriptions (issue 16; reference partner-center-subscriptions.md) -------------------------------------------


def subscription_url(pc, cid, sid=""):
    return f"{pc.url}/v1/customers/{cid}/subscriptions" + (f"/{sid}" if sid else "")


def test_subscriptions_are_listed_with_the_documented_fields_of_each_kind(pc, api, make_customer):
    kinds = ["nce", "saas", "azurePlan", "software", "legacy", "unknown"]
    ids = [str(uuid.uuid4()) for _ in kinds]
    customer = make_customer(subscriptions=[{"id": i, "kind": k} for i, k in zip(ids, kinds, strict=True)])
    listed = body(api.get(subscription_url(pc, customer["id"])))
    assert listed["totalCount"] == 6 and "next" not in listed["links"]
    by_id = {s["id"]: s for s in listed["items"]}
    nce, saas, plan, software, legacy, unknown = (by_id[i] for i in ids)
    assert nce["productType"]["id"] == "OnlineServicesNCE" and nce["isMicrosoftProduct"] is True
    assert nce["cancellationAllowedUntilDate"] and nce["refundOptions"][0]["expiresAt"]
    assert "etag" not in nce["attributes"]  # the NCE examples carry none
    assert saas["isMicrosoftProduct"] is False and saas["publisherName"]
    assert plan["offerId"].startswith("DZH318Z0BPS6:") and plan["attributes"]["etag"]
    assert software["productType"]["id"] == "Software" and legacy["productType"]["id"] == "OnlineServices"
    assert unknown["productType"]["id"] not in ("OnlineServicesNCE", "Software", "OnlineServices", "Azure")
    assert all(s["status"] == "active" and s["autoRenewEnabled"] is True for s in listed["items"])
    assert body(api.get(subscription_url(pc, customer["id"], ids[0])))["id"] == ids[0]
    missing = api.get(subscription_url(pc, customer["id"], str(uuid.uuid4())))
    assert missing.status_code == 404 and body(missing)["code"] == 20003


def test_subscriptions_page_through_links_next_when_the_switch_is_on(pc, api, make_customer):
    pc.knobs(subscriptionsPageSize=2)
    customer = make_customer(subscriptions=[{"id": str(uuid.uuid4())} for _ in range(5)])
    url, seen, sizes = subscription_url(pc, customer["id"]), [], []
    headers: dict[str, str] = {}
    for _ in range(5):
        page = body(api.get(url, headers=headers))
        seen += [s["id"] for s in page["items"]]
        sizes.append(len(page["items"]))
        nxt = page["links"].get("next")
        if not nxt:
            break
        url, headers = f"{pc.url}/v1{nxt['uri']}", {h["key"]: h["value"] for h in nxt["headers"]}
    assert sizes == [2, 2, 1] and sorted(seen) == sorted(s["id"] for s in customer["subscriptions"])


def test_a_patch_with_a_stale_etag_is_refused_and_a_202_has_a_location_and_no_body(pc, api, make_customer):
    sid = str(uuid.uuid4())
    customer = make_customer(subscriptions=[{"id": sid, "kind": "legacy", "changeAfterReads": 1}])
    url = subscription_url(pc, customer["id"], sid)
    read = body(api.get(url))
    stale = api.patch(url, json={**read, "status": "suspended"}, headers={"If-Match": '"stale"'})
    assert stale.status_code == 400 and body(stale)["code"] == 2055
    pc.knobs(subscriptionPatchAnswer=202)
    accepted = api.patch(
        url, json={**read, "status": "suspended"}, headers={"If-Match": f'"{read["attributes"]["etag"]}"'}
    )
    assert accepted.status_code == 202 and accepted.content == b""
    assert accepted.headers["Location"] == f"/customers/{customer['id']}/subscriptions/{sid}"
    assert [body(api.get(url))["status"] for _ in range(2)] == ["active", "suspended"]
    state = pc.state()["customers"][customer["id"]]["subscriptions"][sid]
    assert state["status"] == "suspended" and not state["autoRenewDropped"] and state["patches"] == 2


def test_an_azure_plan_refuses_suspension_until_its_azure_subscriptions_are_inactive(pc, api, make_customer):
    plan, azure = str(uuid.uuid4()), str(uuid.uuid4())
    seed = {
        "id": plan,
        "kind": "azurePlan",
        "orderId": "0bed3bbca6c1",
        "azureEntitlements": [{"id": azure, "inactiveAfterReads": 1}],
    }
    customer = make_customer(subscriptions=[seed])
    cid, url = customer["id"], subscription_url(pc, customer["id"], plan)
    refused = api.delete(f"{pc.url}/v1/customers/{cid}")
    assert refused.status_code == 400 and body(refused)["description"].endswith("following orders: 0bed3bbca6c1")
    read = body(api.get(url))
    early = api.patch(url, json={**read, "status": "suspended"})
    assert early.status_code == 403 and body(early)["code"] == 900115
    listed = body(api.get(f"{url}/azureEntitlements"))
    assert [{k: e[k] for k in ("id", "friendlyName", "status", "subscriptionId")} for e in listed["items"]] == [
        {"id": azure, "friendlyName": "Microsoft Azure", "status": "active", "subscriptionId": plan}
    ]
    bad = api.post(f"{url}/azureEntitlements/{azure}/cancel", json={"cancellationReason": "no reason"})
    assert bad.status_code == 400 and body(bad)["code"] == 900307
    cancelled = api.post(f"{url}/azureEntitlements/{azure}/cancel", json={"cancellationReason": "compromise"})
    assert cancelled.status_code == 200 and body(cancelled)["status"] == "active"  # asked, not done
    assert body(api.get(f"{url}/azureEntitlements/{azure}"))["status"] == "active"  # the first read: not yet
    still = api.patch(url, json={**body(api.get(url)), "status": "suspended"})
    assert still.status_code == 403 and body(still)["code"] == 900115  # a read of the plan is no read of it
    assert body(api.get(f"{url}/azureEntitlements"))["items"][0]["status"] == "inactive"
    suspended = api.patch(url, json={**body(api.get(url)), "status": "suspended"})
    assert suspended.status_code == 200 and body(suspended)["status"] == "suspended"
    assert api.delete(f"{pc.url}/v1/customers/{cid}").status_code == 204


def test_a_subscription_added_during_a_deletion_holds_the_delete(pc, api, make_customer):
    customer = make_customer()
    sid = str(uuid.uuid4())
    assert pc.add_subscriptions(customer["id"], [{"id": sid, "kind": "nce"}]) == 1
    with pytest.raises(requests.HTTPError):
        pc.add_subscriptions(customer["id"], [{"id": sid}])
    assert api.delete(f"{pc.url}/v1/customers/{customer['id']}").status_code == 400
    cancelled = api.patch(
        subscription_url(pc, customer["id"], sid), json={"id": sid, "status": "deleted", "autoRenewEnabled": False}
    )
    assert body(cancelled)["status"] == "deleted"
    assert api.delete(f"{pc.url}/v1/customers/{customer['id']}").status_code == 204
    assert pc.state()["deletedCustomers"][customer["id"]]["subscriptions"][sid]["status"] == "deleted"
