"""Property-based checks of the input boundary: any byte string is a valid request or a rejection with a reason;
no URL is ever built from unvalidated text; protected customers are never touched in any form."""

from __future__ import annotations

import json
import random
import re
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

import responses
from azure.core.credentials import AccessToken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.config import Settings
from shared.errors import InvalidMessageError
from shared.ids import GUID_RE
from shared.messages import parse_deletion_request
from shared.partner_center import PartnerCenterClient, RetryPolicy
from shared.service import Deps, handle_deletion_request
from tests.fakes import Clock, FakePartnerCenter, FakePublisher, FakeTable, queue_message

BASE = "https://pc.test"
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
PROTECTED = "0f0e0d0c-0b0a-4909-8807-060504030201"
SAFE_PATH = re.compile(
    r"/v1/customers/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"(/entitlements|/orders/([A-Za-z0-9_-]{33}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
    r"|/subscriptions(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"(/azureEntitlements(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/cancel)?)?)?)?"
)

hostile_text = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        ["../", "..%2f", "%2e%2e/", "/v1/partners", "?x=1", "#frag", "\r\nX-Injected: 1", "\u202e", " ", "\x00"]
    ),
    st.builds(lambda a, b: a + b, st.uuids().map(str), st.sampled_from(["/../x", "?", "#", "%2F", "\n", " x", "/"])),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=8,
)
request_objects = st.fixed_dictionaries(
    {},
    optional={
        "customerTenantId": st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), json_values),
        "correlationId": st.one_of(st.uuids().map(str), json_values),
        "dryRun": st.one_of(st.booleans(), json_values),
        "extra": json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=600),
    request_objects.map(lambda d: json.dumps(d).encode()),
    hostile_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_any_bytes_is_a_valid_request_or_a_rejection_with_a_reason(body):
    try:
        req = parse_deletion_request(body, message_id="m", insertion_time=None, now=NOW)
    except InvalidMessageError as exc:
        assert exc.reason and exc.correlation_id
        assert exc.customer_id is None or GUID_RE.fullmatch(exc.customer_id)
        return
    assert GUID_RE.fullmatch(req.customer_id) and req.customer_id == req.customer_id.lower()
    assert GUID_RE.fullmatch(req.correlation_id)
    assert isinstance(req.dry_run, bool)


class Token:
    def get_token(self, *a, **k):
        return AccessToken("t", 9999999999)


def deps_with_real_client(tmp_path):
    """The real client over a stubbed transport: customers exist, entitlements list ``entitlement_ids``."""
    client = PartnerCenterClient(BASE, Token(), "s/.default", policy=RetryPolicy(max_attempts=1), sleep=lambda s: None)
    settings_ = Settings.from_env(
        {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "PROTECTED_CUSTOMER_IDS": PROTECTED}, app_root=tmp_path
    )
    return Deps(settings=settings_, partner_center=client, publisher=FakePublisher(), clock=Clock(), tables=FakeTable())


def stub_partner_center(rsps, entitlement_ids, subscription_ids=()):
    """Every id Partner Center answers with may be hostile: order ids in the entitlements, subscription ids (an
    Azure plan's and a new-commerce one's, and their parents) in the listing, Azure subscription ids under a plan."""

    def subscription(i, sid):
        kind = {"offerId": "DZH318Z0BPS6:0001:DZH318Z0BPS6"} if i % 2 else {"productType": {"id": "OnlineServicesNCE"}}
        return {"id": sid, "status": "active", "parentSubscriptionId": subscription_ids[0], **kind}

    def answer(request):
        path = urlsplit(request.url).path
        if path.endswith("/entitlements"):
            return 200, {}, json.dumps({"items": [{"referenceOrder": {"id": i}} for i in entitlement_ids]})
        if path.endswith("/subscriptions"):
            items = [subscription(i, s) for i, s in enumerate(subscription_ids)]
            return 200, {}, json.dumps({"items": items})
        if path.endswith("/azureEntitlements"):
            return 200, {}, json.dumps({"items": [{"id": s, "status": "active"} for s in subscription_ids]})
        if "/orders/" in path:
            return 200, {}, json.dumps({"status": "cancelled"})
        return 200, {}, json.dumps({"id": "x"})

    rsps.add_callback(responses.GET, re.compile(re.escape(BASE) + r"/.*"), callback=answer)
    rsps.add_callback(responses.PATCH, re.compile(re.escape(BASE) + r"/.*"), callback=answer)
    rsps.add_callback(responses.POST, re.compile(re.escape(BASE) + r"/.*"), callback=answer)
    rsps.add_callback(responses.DELETE, re.compile(re.escape(BASE) + r"/.*"), callback=lambda r: (204, {}, ""))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=bodies,
    order_ids=st.lists(st.one_of(st.text(alphabet="ABCxyz019_-", min_size=33, max_size=33), hostile_text), max_size=4),
    subscription_ids=st.lists(st.one_of(st.uuids().map(str), hostile_text), max_size=3),
)
def test_the_function_never_raises_and_builds_urls_only_from_validated_values(
    tmp_path, body, order_ids, subscription_ids
):
    deps = deps_with_real_client(tmp_path)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        stub_partner_center(rsps, order_ids, subscription_ids)
        handle_deletion_request(queue_message(body), "inv", deps)  # must not raise
        sent = [(c.request.method, c.request.url) for c in rsps.calls]
    urls = [u for _, u in sent]
    for url in urls:
        assert url is not None, sent
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == BASE and not parts.query and not parts.fragment
        assert SAFE_PATH.fullmatch(parts.path), url
    outcomes = deps.publisher.json_on("customer-deletion-outcomes")
    if outcomes:
        assert len(outcomes) == 1
        if outcomes[0]["outcome"] == "rejected":
            assert urls == [] or outcomes[0]["customerTenantId"] == PROTECTED
    bad = [i for i in order_ids if not re.fullmatch(r"[A-Za-z0-9_-]{33}", str(i)) and not GUID_RE.fullmatch(str(i))]
    if bad and outcomes:
        assert outcomes[0]["outcome"] in ("failed", "rejected")
        assert [m for m, _ in sent if m in ("PATCH", "DELETE")] == []  # nothing changed when an id was hostile


def protected_forms():
    def vary(seed):
        rnd = random.Random(seed)
        cid = "".join(c.upper() if rnd.random() < 0.5 else c for c in PROTECTED)
        pad = rnd.choice(["", " ", "\n", "\t  "])
        form = rnd.randrange(3)
        if form == 0:
            return (pad + cid + pad).encode()
        obj = {"customerTenantId": pad + cid + pad, "dryRun": rnd.choice([True, False, None]), "x": rnd.random()}
        if form == 2:
            obj["correlationId"] = str(uuid.UUID(int=rnd.getrandbits(128)))
        return json.dumps(obj).encode()

    return st.integers(0, 10**9).map(vary)


@settings(max_examples=200, deadline=None)
@given(protected_forms())
def test_protected_customer_is_never_touched_in_any_form(body):
    import tempfile
    from pathlib import Path

    pc, publisher = FakePartnerCenter(), FakePublisher()
    deps = Deps(
        settings=Settings.from_env(
            {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "PROTECTED_CUSTOMER_IDS": PROTECTED.upper()},
            app_root=Path(tempfile.gettempdir()),
        ),
        partner_center=pc,
        publisher=publisher,
        clock=Clock(),
        tables=FakeTable(),
    )
    for delivery in (1, 2, 5):
        handle_deletion_request(queue_message(body, dequeue_count=delivery), "inv", deps)
    assert pc.calls == []
    assert [o["outcome"] for o in publisher.json_on("customer-deletion-outcomes")] == ["rejected"] * 3
