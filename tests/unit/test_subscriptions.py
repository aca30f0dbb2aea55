"""The subscription rules (shared/subscriptions.py): kinds, targets, PATCH bodies, clearing order, refusal blockers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.subscriptions import (
    Kind,
    UnreadableSubscriptionError,
    blockers_in_refusal,
    classify,
    clearing_order,
    patch_body,
    read_subscription,
    target_status,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SUB = "a4c1340d-6911-4758-bba3-0c4c6007d161"


def item(**fields):
    return {"id": SUB, "status": "active", **fields}


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"offerId": "DZH318Z0BPS6:0001:DZH318Z0BML6", "productType": {"id": "Azure"}}, Kind.AZURE_PLAN),
        ({"offerId": "dzh318z0bps6:0001:x", "isMicrosoftProduct": False}, Kind.AZURE_PLAN),  # the first rule wins
        ({"isMicrosoftProduct": False, "productType": {"id": "OnlineServicesNCE"}}, Kind.SAAS),
        ({"isMicrosoftProduct": True, "productType": {"id": "OnlineServicesNCE"}}, Kind.NCE),
        ({"productType": {"id": "Software"}}, Kind.SOFTWARE),
        ({"productType": {"id": "OnlineServices"}}, Kind.LEGACY),
        ({"productType": {"id": "onlineservices"}}, Kind.LEGACY),
        ({"productType": {"id": "Azure"}}, Kind.UNKNOWN),  # an Azure product that is not the plan
        ({"productType": "OnlineServicesNCE"}, Kind.UNKNOWN),  # not the documented shape
        ({"isMicrosoftProduct": "false"}, Kind.UNKNOWN),  # a string is not false
        ({}, Kind.UNKNOWN),
    ],
)
def test_kinds_come_from_positive_rules_only(fields, kind):
    assert classify(item(**fields)) is kind


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from(["offerId", "isMicrosoftProduct", "productType", "x"]), json_values))
def test_classify_is_total_and_unknown_exactly_when_no_rule_matches(fields):
    kind = classify(fields)
    offer, type_id = fields.get("offerId"), (fields.get("productType") or {})
    type_id = type_id.get("id") if isinstance(type_id, dict) else None
    matches = (
        (isinstance(offer, str) and offer.upper().startswith("DZH318Z0BPS6:"))
        or fields.get("isMicrosoftProduct") is False
        or (isinstance(type_id, str) and type_id.strip().lower() in ("onlineservicesnce", "software", "onlineservices"))
    )
    assert (kind is Kind.UNKNOWN) == (not matches)


@given(json_values)
def test_reading_any_json_either_gives_a_subscription_with_a_guid_id_or_says_why_not(value):
    try:
        read = read_subscription(value)
    except UnreadableSubscriptionError as why:
        assert str(why)
    else:
        uuid.UUID(read.id)


@pytest.mark.parametrize(
    "fields",
    [
        {"id": "../orders"},
        {"id": SUB + "\n"},
        {"parentSubscriptionId": "not-a-guid"},
        {"attributes": {"etag": 'a"b'}},
        {"attributes": {"etag": "line\r\nX-Injected: 1"}},
    ],
)
def test_a_subscription_whose_ids_or_etag_are_not_the_documented_shape_is_unreadable(fields):
    with pytest.raises(UnreadableSubscriptionError):
        read_subscription(item(**fields))


def nce(hours_left=None, *, refund_hours=None, status="active", kind_fields=None):
    fields = {"productType": {"id": "OnlineServicesNCE"}, "autoRenewEnabled": True, "status": status}
    if hours_left is not None:
        fields["cancellationAllowedUntilDate"] = (NOW + timedelta(hours=hours_left)).isoformat().replace("+00:00", "Z")
    if refund_hours is not None:
        fields["refundOptions"] = [{"type": "Full", "expiresAt": (NOW + timedelta(hours=refund_hours)).isoformat()}]
    return read_subscription(item(**fields, **(kind_fields or {})))


@pytest.mark.parametrize(
    ("subscription", "late", "target"),
    [
        (nce(hours_left=5), False, "deleted"),
        (nce(refund_hours=5), False, "deleted"),  # refundOptions[].expiresAt is a window too
        (nce(hours_left=-1, refund_hours=2), False, "deleted"),  # the latest window counts
        (nce(hours_left=-1), False, "suspended"),
        (nce(), False, "suspended"),  # no window given: never guess that a cancel is allowed
        (nce(hours_left=5), True, "suspended"),  # the cancel was refused 900117/900213
        (nce(hours_left=5, status="Suspended"), False, None),
        (nce(hours_left=5, kind_fields={"isMicrosoftProduct": False}), False, "deleted"),
        (read_subscription(item(productType={"id": "OnlineServices"})), False, "suspended"),
        (
            read_subscription(
                item(productType={"id": "Software"}, cancellationAllowedUntilDate="2099-01-01T00:00:00Z")
            ),
            False,
            "suspended",
        ),
        (read_subscription(item(offerId="DZH318Z0BPS6:0001:x")), False, "suspended"),
        (read_subscription(item(productType={"id": "Brand new"})), False, None),
        (read_subscription(item(status="expired", productType={"id": "Software"})), False, None),
    ],
)
def test_what_each_kind_is_patched_to(subscription, late, target):
    assert target_status(subscription, NOW, cancel_refused_late=late) == target


def test_the_patch_body_is_the_whole_object_with_the_status_changed_and_a_suspended_nce_stops_renewing():
    read = nce(hours_left=-1, kind_fields={"quantity": 3, "Status": "active", "attributes": {"etag": "e1"}})
    body = patch_body(read, "suspended")
    assert body["status"] == "suspended" and "Status" not in body
    assert body["autoRenewEnabled"] is False
    assert {k: v for k, v in body.items() if k not in ("status", "autoRenewEnabled")} == {
        k: v for k, v in read.body.items() if k not in ("status", "Status", "autoRenewEnabled")
    }
    legacy = read_subscription(item(productType={"id": "OnlineServices"}, autoRenewEnabled=True))
    assert patch_body(legacy, "suspended")["autoRenewEnabled"] is True  # as read: left out, it would become false
    assert read.etag == "e1"


def guid() -> str:
    return str(uuid.uuid4())


def test_add_ons_go_before_their_base_and_saas_before_the_azure_plan_which_goes_last():
    base, addon, addon_of_addon, plan, saas, lone = (guid() for _ in range(6))
    subs = [
        read_subscription({"id": plan, "offerId": "DZH318Z0BPS6:0001:x"}),
        read_subscription({"id": base, "productType": {"id": "OnlineServicesNCE"}}),
        read_subscription({"id": addon, "parentSubscriptionId": base, "productType": {"id": "OnlineServicesNCE"}}),
        read_subscription(
            {"id": addon_of_addon, "parentSubscriptionId": addon.upper(), "productType": {"id": "Software"}}
        ),
        read_subscription({"id": lone, "productType": {"id": "OnlineServices"}}),
        read_subscription({"id": saas, "isMicrosoftProduct": False}),
    ]
    ordered = [s.id for s in clearing_order(subs)]
    assert ordered[-1] == plan and ordered.index(saas) < ordered.index(lone)  # SaaS first among equals
    assert ordered.index(addon_of_addon) < ordered.index(addon) < ordered.index(base)


@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(list(Kind))), min_size=1, max_size=8))
def test_the_clearing_order_is_a_permutation_that_puts_every_add_on_before_its_base(links):
    ids = [str(uuid.UUID(int=i + 1)) for i in range(len(links))]
    fields: dict[Kind, dict[str, Any]] = {
        Kind.AZURE_PLAN: {"offerId": "DZH318Z0BPS6:0001:x"},
        Kind.SAAS: {"isMicrosoftProduct": False},
        Kind.NCE: {"productType": {"id": "OnlineServicesNCE"}},
        Kind.SOFTWARE: {"productType": {"id": "Software"}},
        Kind.LEGACY: {"productType": {"id": "OnlineServices"}},
        Kind.UNKNOWN: {},
    }
    subs = [
        read_subscription({"id": ids[i], "parentSubscriptionId": ids[p] if p < i else None, **fields[kind]})
        for i, (p, kind) in enumerate(links)
    ]
    ordered = clearing_order(subs)
    assert sorted(s.id for s in ordered) == sorted(ids)
    position = {s.id: n for n, s in enumerate(ordered)}
    for s in subs:
        if s.parent_id is not None and s.kind is not Kind.AZURE_PLAN:
            assert position[s.id] < position[s.parent_id]
        if s.kind is Kind.AZURE_PLAN:
            assert all(position[o.id] < position[s.id] for o in subs if o.kind is not Kind.AZURE_PLAN)


def test_a_refused_delete_names_its_blockers_by_what_was_read():
    plan = read_subscription(
        {"id": SUB, "status": "active", "offerId": "DZH318Z0BPS6:0001:x", "orderId": "0bed3bbca6c1"}
    )
    text = (
        "Customer relationship cannot be removed due to active Azure reserved instances.Please cancel the "
        "following orders: 37c9b07a5722,0bed3bbca6c1, ffffffffffff"
    )
    alternate = {"jaT4TvDGRWKGaUKfalCSX1uChuS0KIxt1": "37c9b07a5722"}
    assert blockers_in_refusal(text, alternate, [plan]) == [
        "order jaT4TvDGRWKGaUKfalCSX1uChuS0KIxt1",
        f"azure_plan subscription {SUB} (active)",
        "an order Partner Center calls ffffffffffff",
    ]
    assert blockers_in_refusal("Some other refusal", alternate, [plan]) == []
    assert blockers_in_refusal(None, alternate, [plan]) == []


@given(st.text(max_size=300))
def test_blockers_never_carry_anything_but_id_characters_from_partner_centers_text(text):
    for name in blockers_in_refusal("following orders: " + text, {}, []):
        quoted = name.rsplit(" ", 1)[-1]
        assert quoted.replace("-", "").replace("_", "").isalnum() and quoted.isascii()
