"""Partner Center client: error mapping, BOM, retries and URL safety, with HTTP stubbed at the transport."""

import json
from typing import Any

import pytest
import requests
import responses
from azure.core.credentials import AccessToken

from shared.budget import Budget
from shared.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    OutOfTimeError,
    RefusedError,
    ThrottledError,
    TransientError,
    UnsafeIdError,
)
from shared.partner_center import PartnerCenterClient, RetryPolicy

BASE = "https://pc.test"
CUST = "eebd1b55-5360-4438-a11d-5c06918c3014"
CORR = "1438ea3d-b515-45c7-9ec1-27ee0cc8e6bd"
O1, O2 = "UKXASSO1dezh3HdxClHxSp5UEFXGbAnt1", "9qg-ErcO-4MPbPqq_3MIQaS7bn8W6HfG1"
BOM = b"\xef\xbb\xbf"


class FakeCredential:
    def __init__(self):
        self.calls = 0

    def get_token(self, *scopes, **kwargs):
        self.calls += 1
        return AccessToken("tok-123", 9999999999)


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(sleeps):
    policy = RetryPolicy(max_attempts=4, max_total_seconds=30, backoff_initial=0.5, backoff_max=2)
    return PartnerCenterClient(
        BASE, FakeCredential(), "https://api.partnercenter.microsoft.com/.default", policy=policy, sleep=sleeps.append
    )


def body(obj, bom=True):
    return (BOM if bom else b"") + json.dumps(obj).encode()


@responses.activate
def test_headers_and_bom(client):
    responses.get(
        f"{BASE}/v1/customers/{CUST}", body=body({"id": CUST}), content_type="application/json; charset=utf-8"
    )
    assert client.get_customer(CUST, correlation_id=CORR) == {"id": CUST}
    headers = responses.calls[0].request.headers
    assert headers["Authorization"] == "Bearer tok-123"
    assert headers["Accept"] == "application/json"
    assert headers["MS-CorrelationId"] == CORR
    assert len(headers["MS-RequestId"]) == 36


@responses.activate
def test_timeouts_on_every_call(client, monkeypatch):
    seen = []
    real = requests.Session.request

    def spy(self, *a, **kw):
        seen.append(kw.get("timeout"))
        return real(self, *a, **kw)

    monkeypatch.setattr(requests.Session, "request", spy)
    responses.delete(f"{BASE}/v1/customers/{CUST}", status=204)
    client.delete_customer(CUST, correlation_id=CORR)
    assert seen == [(5.0, 30.0)]


@pytest.mark.parametrize(
    "status, payload, exc_type, code, description",
    [
        (
            400,
            {"code": 800063, "description": "This order X cannot be canceled.", "data": [], "source": "PartnerFD"},
            RefusedError,
            "800063",
            "This order X cannot be canceled.",
        ),
        (
            400,
            {
                "code": 900117,
                "message": "m",
                "description": "You have passed your 60-day cancellation window.",
                "errorName": "x",
                "isRetryable": False,
            },
            RefusedError,
            "900117",
            "You have passed your 60-day cancellation window.",
        ),
        (404, {"statusCode": 404, "message": "Resource not found"}, NotFoundError, "404", "Resource not found"),
        (
            403,
            {"code": 900150, "description": "The supplied role does not have the rights"},
            RefusedError,
            "900150",
            "The supplied role does not have the rights",
        ),
        (
            409,
            {"code": 800060, "description": "Your order is in progress."},
            ConflictError,
            "800060",
            "Your order is in progress.",
        ),
        (
            401,
            {"code": 800001, "description": "Partner Token missing in request context"},
            AuthenticationError,
            "800001",
            "Partner Token missing in request context",
        ),
    ],
)
@responses.activate
def test_error_shapes_become_typed_errors(client, sleeps, status, payload, exc_type, code, description):
    responses.patch(f"{BASE}/v1/customers/{CUST}/orders/{O1}", body=body(payload), status=status)
    with pytest.raises(exc_type) as info:
        client.cancel_order(CUST, O1, correlation_id=CORR)
    assert (info.value.status, info.value.code, info.value.description) == (status, code, description)
    assert len(responses.calls) == 1 and sleeps == []  # refusals are never retried
    sent = responses.calls[0].request.body
    assert sent is not None
    assert json.loads(sent) == {"id": O1, "status": "cancelled"}


@responses.activate
def test_plain_text_error_body(client):
    responses.get(f"{BASE}/v1/customers/{CUST}", body=b"<html>Bad gateway</html>", status=400)
    with pytest.raises(RefusedError, match="Bad gateway"):
        client.get_customer(CUST, correlation_id=CORR)


@responses.activate
def test_429_honours_retry_after_and_keeps_request_id(client, sleeps):
    url = f"{BASE}/v1/customers/{CUST}/orders/{O1}"
    responses.get(
        url,
        body=body({"statusCode": 429, "message": "Rate limit is exceeded. Try again in 3 seconds."}),
        status=429,
        headers={"Retry-After": "3"},
    )
    responses.get(url, body=body({"id": O1, "status": "cancelled"}))
    assert client.get_order(CUST, O1, correlation_id=CORR)["status"] == "cancelled"
    assert sleeps == [3.0]
    ids = {c.request.headers["MS-RequestId"] for c in responses.calls}
    assert len(ids) == 1  # the same request id on its retries
    responses.get(url, body=body({"id": O1}))
    client.get_order(CUST, O1, correlation_id=CORR)
    assert responses.calls[-1].request.headers["MS-RequestId"] not in ids  # a new one per logical call


@responses.activate
def test_429_longer_than_budget_is_not_slept_through(client, sleeps):
    responses.get(
        f"{BASE}/v1/customers/{CUST}",
        body=body({"statusCode": 429, "message": "x"}),
        status=429,
        headers={"Retry-After": "120"},
    )
    with pytest.raises(ThrottledError) as info:
        client.get_customer(CUST, correlation_id=CORR)
    assert info.value.retry_after == 120 and sleeps == [] and len(responses.calls) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
@responses.activate
def test_transient_statuses_back_off_and_then_raise(client, sleeps, status):
    responses.get(
        f"{BASE}/v1/customers/{CUST}",
        body=body({"code": 800003, "description": "Unexpected service error"}),
        status=status,
    )
    with pytest.raises(TransientError) as info:
        client.get_customer(CUST, correlation_id=CORR)
    assert info.value.status == status
    assert len(responses.calls) == 4 and len(sleeps) == 3
    assert all(0 <= s <= 2 for s in sleeps)  # exponential with jitter, capped by backoff_max


@responses.activate
def test_connection_failure_is_retried_then_succeeds(client, sleeps):
    url = f"{BASE}/v1/customers/{CUST}"
    responses.get(url, body=requests.exceptions.ConnectionError("reset"))
    responses.get(url, body=requests.exceptions.ReadTimeout("slow"))
    responses.get(url, body=body({"id": CUST}))
    assert client.get_customer(CUST, correlation_id=CORR) == {"id": CUST}
    assert len(sleeps) == 2


@responses.activate
def test_total_budget_bounds_retries(sleeps):
    policy = RetryPolicy(max_attempts=100, max_total_seconds=0.3, backoff_initial=0.1, backoff_max=0.1)
    client = PartnerCenterClient(BASE, FakeCredential(), "s/.default", policy=policy)
    responses.get(f"{BASE}/v1/customers/{CUST}", status=503)
    with pytest.raises(TransientError):
        client.get_customer(CUST, correlation_id=CORR)
    assert 2 <= len(responses.calls) < 20


def test_token_failure_is_transient(sleeps):
    class Broken:
        def get_token(self, *a, **k):
            raise RuntimeError("token endpoint down")

    client = PartnerCenterClient(BASE, Broken(), "s/.default", policy=RetryPolicy(max_attempts=2), sleep=sleeps.append)
    with pytest.raises(TransientError, match="could not obtain a token"):
        client.get_customer(CUST, correlation_id=CORR)


def test_plain_http_to_a_remote_host_is_refused_before_any_token():
    cred = FakeCredential()
    with pytest.raises(ValueError, match="https"):
        PartnerCenterClient("http://api.partnercenter.microsoft.com", cred, "s/.default")
    assert cred.calls == 0


@responses.activate
def test_entitlements_paged_nested_and_deduplicated(client):
    first = {
        "totalCount": 3,
        "items": [
            {
                "referenceOrder": {"id": O1},
                "includedEntitlements": [{"referenceOrder": {"id": O1}, "includedEntitlements": []}],
            },
        ],
        "links": {
            "next": {
                "uri": f"/customers/{CUST}/entitlements?seekOperation=Next",
                "method": "GET",
                "headers": [{"key": "MS-ContinuationToken", "value": "tok+page/2=="}],
            }
        },
    }
    second = {
        "totalCount": 3,
        "items": [{"referenceOrder": {"id": O2}, "includedEntitlements": [{"referenceOrder": {"id": O1}}]}],
    }
    responses.get(
        f"{BASE}/v1/customers/{CUST}/entitlements",
        body=body(first),
        match=[responses.matchers.query_string_matcher("")],
    )
    responses.get(
        f"{BASE}/v1/customers/{CUST}/entitlements?seekOperation=Next",
        body=body(second),
        match=[responses.matchers.header_matcher({"MS-ContinuationToken": "tok+page/2=="})],
    )
    assert client.list_entitlement_order_ids(CUST, correlation_id=CORR) == [O1, O2]


@pytest.mark.parametrize(
    "hostile", ["../../customers/x", "A" * 32 + "/", "%2e%2e%2f" + "A" * 24, "A" * 33 + "?x=1", "A" * 32 + "\n", 123]
)
@responses.activate
def test_hostile_order_ids_never_reach_a_url(client, hostile):
    responses.get(
        f"{BASE}/v1/customers/{CUST}/entitlements",
        body=body({"items": [{"referenceOrder": {"id": O1}}, {"referenceOrder": {"id": hostile}}]}),
    )
    with pytest.raises(UnsafeIdError):
        client.list_entitlement_order_ids(CUST, correlation_id=CORR)
    with pytest.raises(UnsafeIdError):
        client.cancel_order(CUST, hostile, correlation_id=CORR)
    assert len(responses.calls) == 1  # only the entitlements call went out


@pytest.mark.parametrize(
    "uri",
    [
        f"https://evil.example/v1/customers/{CUST}/entitlements",
        "/customers/11111111-2222-3333-4444-555555555555/entitlements",
        f"/customers/{CUST}/orders",
        f"/customers/{CUST}/entitlements/../../orders",
        f"/customers/{CUST}/entitlements?x=<script>",
    ],
)
@responses.activate
def test_hostile_next_links_are_refused(client, uri):
    responses.get(f"{BASE}/v1/customers/{CUST}/entitlements", body=body({"items": [], "links": {"next": {"uri": uri}}}))
    with pytest.raises(UnsafeIdError):
        client.list_entitlement_order_ids(CUST, correlation_id=CORR)
    assert len(responses.calls) == 1


def test_bad_customer_id_never_reaches_a_url(client):
    with pytest.raises(UnsafeIdError):
        client.delete_customer("../partners", correlation_id=CORR)


@responses.activate
def test_401_renews_the_credential_once_then_raises(sleeps):
    made = []

    def factory():
        made.append(FakeCredential())
        return made[-1]

    client = PartnerCenterClient(
        BASE,
        FakeCredential(),
        "s/.default",
        policy=RetryPolicy(max_attempts=2),
        sleep=sleeps.append,
        credential_factory=factory,
    )
    url = f"{BASE}/v1/customers/{CUST}"
    responses.get(url, body=body({"code": 800001, "description": "Partner Token missing"}), status=401)
    responses.get(url, body=body({"id": CUST}))
    assert client.get_customer(CUST, correlation_id=CORR) == {"id": CUST}
    assert len(made) == 1 and made[0].calls == 1  # the retry used a fresh credential
    assert len({c.request.headers["MS-RequestId"] for c in responses.calls}) == 1
    responses.get(url, body=body({"code": 800001, "description": "Partner Token missing"}), status=401)
    responses.get(url, body=body({"code": 800001, "description": "Partner Token missing"}), status=401)
    with pytest.raises(AuthenticationError):
        client.get_customer(CUST, correlation_id=CORR)
    assert len(made) == 2


class SlowClock:
    """A budget clock that moves on by ``step`` seconds every time it is read."""

    def __init__(self, step):
        self.t, self.step = 0.0, step

    def __call__(self):
        self.t += self.step
        return self.t


@responses.activate
def test_no_further_entitlements_page_after_the_work_time(client):
    page = {
        "items": [{"referenceOrder": {"id": O1}}],
        "links": {
            "next": {
                "uri": f"/customers/{CUST}/entitlements?seekOperation=Next",
                "headers": [{"key": "MS-ContinuationToken", "value": "t"}],
            }
        },
    }
    responses.get(f"{BASE}/v1/customers/{CUST}/entitlements", body=body(page))
    budget = Budget(work_seconds=10, wait_seconds=4, clock=SlowClock(11))  # by the next page, the work time is used up
    with pytest.raises(OutOfTimeError):
        client.list_entitlement_order_ids(CUST, correlation_id=CORR, budget=budget)
    assert len(responses.calls) == 1


@responses.activate
def test_no_renewed_attempt_after_a_401_once_the_work_time_is_used(sleeps):
    client = PartnerCenterClient(
        BASE,
        FakeCredential(),
        "s/.default",
        policy=RetryPolicy(max_attempts=2),
        sleep=sleeps.append,
        credential_factory=FakeCredential,
    )
    responses.get(
        f"{BASE}/v1/customers/{CUST}", body=body({"code": 800001, "description": "Partner Token missing"}), status=401
    )
    with pytest.raises(OutOfTimeError):
        client.get_customer(
            CUST, correlation_id=CORR, budget=Budget(work_seconds=10, wait_seconds=4, clock=SlowClock(11))
        )
    assert len(responses.calls) == 1


@responses.activate
def test_in_process_waits_of_one_invocation_share_one_allowance(sleeps, client):
    url = f"{BASE}/v1/customers/{CUST}"
    throttled = {"body": body({"statusCode": 429, "message": "x"}), "status": 429, "headers": {"Retry-After": "3"}}
    budget = Budget(work_seconds=100, wait_seconds=4)
    responses.get(url, **throttled)
    responses.get(url, body=body({"id": CUST}))
    client.get_customer(CUST, correlation_id=CORR, budget=budget)  # waits 3 s in-process
    responses.get(url, **throttled)
    with pytest.raises(ThrottledError):  # another 3 s would exceed the invocation's 4 s: handed over instead
        client.get_customer(CUST, correlation_id=CORR, budget=budget)
    assert sleeps == [3.0]


def _customers_page(ids, token=None, uri="/customers?size=40&seekOperation=Next"):
    page: dict[str, Any] = {
        "totalCount": len(ids),
        "items": [{"id": i, "companyProfile": {"tenantId": i}} for i in ids],
        "links": {"self": {"uri": "/customers?size=40"}},
        "attributes": {"objectType": "Collection"},
    }
    if token:
        page["links"]["next"] = {
            "uri": uri,
            "method": "GET",
            "headers": [{"key": "MS-ContinuationToken", "value": token}],
        }
        page["continuationToken"] = token
    return body(page)


@responses.activate
def test_customers_are_listed_across_pages_with_the_continuation_token(client):
    ids = [f"{n:08d}-0000-4000-8000-000000000000" for n in range(5)]
    responses.get(
        f"{BASE}/v1/customers",
        body=_customers_page(ids[:2], "t1"),
        match=[responses.matchers.query_param_matcher({"size": "40"})],
    )
    responses.get(
        f"{BASE}/v1/customers",
        body=_customers_page(ids[2:4], "t2"),
        match=[responses.matchers.header_matcher({"MS-ContinuationToken": "t1"})],
    )
    responses.get(
        f"{BASE}/v1/customers",
        body=_customers_page(ids[4:]),
        match=[responses.matchers.header_matcher({"MS-ContinuationToken": "t2"})],
    )
    items = client.list_customers(correlation_id=CORR)
    assert [i["id"] for i in items] == ids and len(responses.calls) == 3
    assert all(c.request.headers["MS-CorrelationId"] == CORR for c in responses.calls)
    assert "seekOperation=Next" in (responses.calls[1].request.url or "")


@responses.activate
def test_customer_listing_stops_at_the_first_page_past_stop_after(client):
    ids = [f"{n:08d}-0000-4000-8000-000000000000" for n in range(6)]
    responses.get(
        f"{BASE}/v1/customers",
        body=_customers_page(ids[:3], "t1"),
        match=[responses.matchers.query_param_matcher({"size": "40"})],
    )
    responses.get(
        f"{BASE}/v1/customers",
        body=_customers_page(ids[3:], "t2"),
        match=[responses.matchers.header_matcher({"MS-ContinuationToken": "t1"})],
    )
    assert len(client.list_customers(correlation_id=CORR, stop_after=2)) == 3 and len(responses.calls) == 1
    assert len(client.list_customers(correlation_id=CORR, stop_after=3)) == 6


@pytest.mark.parametrize(
    "uri",
    [
        "https://evil.example/v1/customers?seekOperation=Next",
        f"/customers/{CUST}/entitlements?seekOperation=Next",
        "/customers?seekOperation=Next&x=<script>",
        "/v1/customers/../customers?seekOperation=Next",
    ],
)
@responses.activate
def test_a_customer_list_next_link_elsewhere_is_refused(client, uri):
    responses.get(f"{BASE}/v1/customers", body=_customers_page([CUST], "t1", uri=uri))
    with pytest.raises(UnsafeIdError):
        client.list_customers(correlation_id=CORR)
    assert len(responses.calls) == 1


@responses.activate
def test_a_customer_page_without_items_or_a_failing_page_raises_and_returns_nothing_partial(client, sleeps):
    responses.get(
        f"{BASE}/v1/customers",
        body=_customers_page([CUST], "t1"),
        match=[responses.matchers.query_param_matcher({"size": "40"})],
    )
    responses.get(
        f"{BASE}/v1/customers",
        status=503,
        body=body({"code": 800003, "description": "down"}),
        match=[responses.matchers.header_matcher({"MS-ContinuationToken": "t1"})],
    )
    with pytest.raises(TransientError):
        client.list_customers(correlation_id=CORR)
    responses.reset()
    responses.get(f"{BASE}/v1/customers", body=body({"value": []}))
    with pytest.raises(TransientError, match="customers response has no 'items' list"):
        client.list_customers(correlation_id=CORR)


# -- subscriptions (issue 16) ----------------------------------------------------------------------------------------

SUB = "a4c1340d-6911-4758-bba3-0c4c6007d161"
PLAN = "0a0f6c5e-1f5b-4f3e-9d0c-3a1b2c3d4e5f"
AZ = "899ae6f1-4b5a-4f4e-8e4e-1d1c1b1a1f1e"


@responses.activate
def test_subscriptions_are_listed_across_pages_though_none_are_documented(client):
    responses.get(
        f"{BASE}/v1/customers/{CUST}/subscriptions",
        body=body(
            {
                "items": [{"id": SUB}, "not an object"],
                "links": {
                    "next": {
                        "uri": f"/customers/{CUST}/subscriptions?seekOperation=Next",
                        "headers": [{"key": "MS-ContinuationToken", "value": "p2"}],
                    }
                },
            }
        ),
        match=[responses.matchers.query_string_matcher("")],
    )
    responses.get(
        f"{BASE}/v1/customers/{CUST}/subscriptions?seekOperation=Next",
        body=body({"items": [{"id": PLAN}]}),
        match=[responses.matchers.header_matcher({"MS-ContinuationToken": "p2"})],
    )
    assert client.list_subscriptions(CUST, correlation_id=CORR) == [{"id": SUB}, {"id": PLAN}]


@responses.activate
def test_a_subscription_patch_sends_the_whole_object_with_a_quoted_if_match_and_a_202_is_no_answer(client):
    responses.patch(f"{BASE}/v1/customers/{CUST}/subscriptions/{SUB}", status=202, headers={"Location": "/x"})
    full = {"id": SUB, "status": "suspended", "autoRenewEnabled": False, "offerId": "CFQ7TTC0LH18:0001:CFQ7TTC0K971"}
    assert client.patch_subscription(CUST, SUB, full, etag="abc123", correlation_id=CORR) == {}
    sent = responses.calls[0].request
    assert json.loads(sent.body or b"") == full and sent.headers["If-Match"] == '"abc123"'
    responses.patch(f"{BASE}/v1/customers/{CUST}/subscriptions/{SUB}", body=body({"id": SUB, "status": "active"}))
    assert client.patch_subscription(CUST, SUB, full, etag=None, correlation_id=CORR)["status"] == "active"
    assert "If-Match" not in responses.calls[1].request.headers
    assert len(responses.calls) == 2  # the Location was not followed


@responses.activate
def test_azure_entitlements_are_listed_and_cancelled_with_the_documented_reason(client):
    base = f"{BASE}/v1/customers/{CUST}/subscriptions/{PLAN}/azureEntitlements"
    responses.get(base, body=body({"items": [{"id": AZ, "status": "active"}]}))
    responses.post(f"{base}/{AZ}/cancel", status=202)
    assert client.list_azure_entitlements(CUST, PLAN, correlation_id=CORR) == [{"id": AZ, "status": "active"}]
    assert client.cancel_azure_entitlement(CUST, PLAN, AZ, correlation_id=CORR) == {}
    assert json.loads(responses.calls[1].request.body or b"") == {"cancellationReason": "compromise"}


@pytest.mark.parametrize("hostile", ["../orders", SUB + "\n", SUB[:-1], "UKXASSO1dezh3HdxClHxSp5UEFXGbAnt1", 7])
@responses.activate
def test_hostile_subscription_and_entitlement_ids_and_etags_never_reach_a_request(client, hostile):
    calls = [
        lambda: client.get_subscription(CUST, hostile, correlation_id=CORR),
        lambda: client.patch_subscription(CUST, hostile, {}, etag=None, correlation_id=CORR),
        lambda: client.list_azure_entitlements(CUST, hostile, correlation_id=CORR),
        lambda: client.cancel_azure_entitlement(CUST, PLAN, hostile, correlation_id=CORR),
        lambda: client.cancel_azure_entitlement(CUST, hostile, AZ, correlation_id=CORR),
    ]
    for call in calls:
        with pytest.raises(UnsafeIdError):
            call()
    for etag in ['a"b', "a\r\nX-Evil: 1", "", "é"]:
        with pytest.raises(UnsafeIdError):
            client.patch_subscription(CUST, SUB, {}, etag=etag, correlation_id=CORR)
    assert len(responses.calls) == 0
