"""Parsing and validation of deletion requests and poll messages (no sockets)."""

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.errors import InvalidMessageError
from shared.ids import derived_correlation_id
from shared.messages import (
    OrderState,
    PollMessage,
    SubscriptionState,
    event_id,
    iso,
    outcome_event,
    parse_deletion_request,
    parse_poll_message,
    readable_fields,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
INSERTED = datetime(2026, 11, 24, 11, 59, 30, tzinfo=UTC)
CUST = "eebd1b55-5360-4438-a11d-5c06918c3014"
CORR = "1438ea3d-b515-45c7-9ec1-27ee0cc8e6bd"


def parse(body, message_id="msg-1"):
    return parse_deletion_request(body, message_id=message_id, insertion_time=INSERTED, now=NOW)


@pytest.mark.parametrize(
    "body, customer, correlation, dry_run",
    [
        (CUST, CUST, None, False),
        (CUST.upper(), CUST, None, False),
        (f"  \n{CUST}\t ", CUST, None, False),
        (json.dumps({"customerTenantId": CUST}), CUST, None, False),
        (json.dumps({"customerTenantId": CUST.upper(), "correlationId": CORR.upper()}), CUST, CORR, False),
        (json.dumps({"customerTenantId": CUST, "dryRun": True}), CUST, None, True),
        (json.dumps({"customerTenantId": CUST, "dryRun": None, "correlationId": None}), CUST, None, False),
        (json.dumps({"customerTenantId": CUST, "whatever": [1, 2], "schemaVersion": 9}), CUST, None, False),
        (json.dumps({"customerTenantId": f" {CUST} "}), CUST, None, False),
    ],
)
def test_valid_requests(body, customer, correlation, dry_run):
    req = parse(body.encode())
    assert req.customer_id == customer
    assert req.correlation_id == (correlation or derived_correlation_id("msg-1"))
    assert req.dry_run is dry_run
    assert req.requested_at == INSERTED


@pytest.mark.parametrize(
    "body, reason_part",
    [
        (b"", "empty"),
        (b"   ", "empty"),
        (b"hello", "neither a GUID nor valid JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"[]", "JSON object"),
        (json.dumps(CUST).encode(), "JSON object"),
        (b"{}", "missing"),
        (json.dumps({"customerTenantId": None}).encode(), "missing"),
        (json.dumps({"customerTenantId": 12345}).encode(), "GUID"),
        (json.dumps({"customerTenantId": CUST + "/../../partners"}).encode(), "GUID"),
        (json.dumps({"customerTenantId": "../" + CUST}).encode(), "GUID"),
        (json.dumps({"customerTenantId": CUST.replace("-", "")}).encode(), "GUID"),
        (json.dumps({"customerTenantId": "{" + CUST + "}"}).encode(), "GUID"),
        (json.dumps({"customerTenantId": CUST + "\n"}).encode().replace(b"\\n", b"%0A"), "GUID"),
        (json.dumps({"customerTenantId": CUST, "correlationId": "abc"}).encode(), "correlationId"),
        (json.dumps({"customerTenantId": CUST, "correlationId": 7}).encode(), "correlationId"),
        (json.dumps({"customerTenantId": CUST, "dryRun": "false"}).encode(), "dryRun"),
        (json.dumps({"customerTenantId": CUST, "dryRun": 0}).encode(), "dryRun"),
        ((f'{{"customerTenantId": "{CUST}", "customerTenantId": "{CORR}"}}').encode(), "duplicate"),
        (b"[" * 30000, "nested too deeply"),
        (b"x" * 70000, "larger"),
    ],
)
def test_invalid_requests_name_a_reason(body, reason_part):
    with pytest.raises(InvalidMessageError) as info:
        parse(body)
    assert reason_part in info.value.reason
    assert info.value.correlation_id  # a rejected request still has a correlation id for its outcome


def test_rejection_keeps_the_valid_customer_id_for_the_outcome():
    with pytest.raises(InvalidMessageError) as info:
        parse(json.dumps({"customerTenantId": CUST, "dryRun": "yes"}).encode())
    assert info.value.customer_id == CUST
    with pytest.raises(InvalidMessageError) as info:
        parse(json.dumps({"customerTenantId": "nope"}).encode())
    assert info.value.customer_id is None


def test_derived_correlation_id_is_stable_per_message_id():
    assert parse(CUST.encode(), "m-1").correlation_id == parse(CUST.encode(), "m-1").correlation_id
    assert parse(CUST.encode(), "m-1").correlation_id != parse(CUST.encode(), "m-2").correlation_id


def test_poll_message_round_trip():
    poll = PollMessage(CUST, CORR, (OrderState("UKXASSO1dezh3HdxClHxSp5UEFXGbAnt1", "pending"),), 3, INSERTED, NOW, 1)
    again = parse_poll_message(poll.to_text().encode())
    assert again == poll and again.customer_seen  # a poll stage implies the customer was seen
    discover = PollMessage(CUST, CORR, (), 0, INSERTED, NOW, 0, "discover", True)
    assert parse_poll_message(discover.to_text()) == discover
    assert json.loads(poll.to_text())["schemaVersion"] == 1
    full = PollMessage(
        CUST,
        CORR,
        (),
        7,
        INSERTED,
        NOW,
        2,
        "discover",
        False,
        delete_by=NOW,
        recoveries=3,
        setbacks=4,
        cause="throttled",
        cause_detail="last Retry-After 60s",
        customer_seen=True,
        first_delete_refusal_at=INSERTED,
        subscriptions=(PLAN, SubscriptionState(NCE_ID, "nce", "active")),
        subscriptions_listed=True,
        via_subscription=("UKXASSO1dezh3HdxClHxSp5UEFXGbAnt1",),
    )
    assert parse_poll_message(full.to_text()) == full
    assert json.loads(full.to_text())["firstDeleteRefusalAt"] == iso(INSERTED)
    assert json.loads(full.to_text())["subscriptions"][0]["azureEntitlementsCancelled"] == [AZURE_ID]


PLAN_ID, NCE_ID, AZURE_ID = (
    "a4c1340d-6911-4758-bba3-0c4c6007d161",
    "b4c1340d-6911-4758-bba3-0c4c6007d162",
    "c4c1340d-6911-4758-bba3-0c4c6007d163",
)
PLAN = SubscriptionState(PLAN_ID, "azure_plan", "active", "none", None, (AZURE_ID,), NOW, "0bed3bbca6c1")


def _with_subscription(**fields):
    def mutate(d):
        d["subscriptions"] = [{**PLAN.to_hint(), **fields}]

    return mutate


def test_poll_messages_of_the_previous_release_are_read_with_defaults():
    """Written by main before issue 7 (tests/data): the new optional fields are missing, and that is fine."""
    recorded = json.loads((Path(__file__).parent.parent / "data" / "poll_messages_release_eaf0670.json").read_text())
    assert len(recorded["messages"]) >= 5
    for item in recorded["messages"]:
        poll = parse_poll_message(item["message"])
        assert (poll.recoveries, poll.setbacks, poll.cause, poll.delete_by) == (0, 0, None, None), item["what"]
        assert poll.customer_seen == (poll.stage == "poll")


def test_the_previous_release_reads_poll_messages_of_this_one():
    """What the previous release's parser requires (its code, as of eaf0670): this release still writes it."""
    full = PollMessage(
        CUST,
        CORR,
        (OrderState("UKXASSO1dezh3HdxClHxSp5UEFXGbAnt1", "pending"),),
        2,
        INSERTED,
        NOW,
        1,
        delete_by=NOW,
        recoveries=1,
        setbacks=2,
        cause="outage",
        cause_detail="x",
    )
    data = json.loads(full.to_text())
    assert data["schemaVersion"] == 1 and data["kind"] == "poll" and data["stage"] in ("poll", "discover")
    assert isinstance(data["attempt"], int) and isinstance(data["deleteRefusals"], int) and data["dryRun"] is False
    assert all(set(o) == {"id", "status"} for o in data["orders"])
    assert data["requestedAt"].endswith("Z") and data["firstHandledAt"].endswith("Z")


@pytest.mark.parametrize(
    "mutate, reason_part",
    [
        (lambda d: d.update(schemaVersion=2), "schemaVersion"),
        (lambda d: d.update(schemaVersion=True), "schemaVersion"),
        (lambda d: d.update(kind="other"), "kind"),
        (lambda d: d.update(customerTenantId="../x"), "customerTenantId"),
        (lambda d: d.update(orders=[{"id": "../../customers", "status": "pending"}]), "malformed"),
        (lambda d: d.update(orders="x"), "malformed"),
        (lambda d: d.update(attempt=-1), "malformed"),
        (lambda d: d.update(attempt="1"), "malformed"),
        (lambda d: d.update(requestedAt="2026-11-24 12:00"), "malformed"),
        (lambda d: d.pop("firstHandledAt"), "malformed"),
        (lambda d: d.update(orders=[{"id": "UKXASSO1dezh3HdxClHxSp5UEFXGbAnt1", "status": "x"}] * 2), "twice"),
        (lambda d: d.update(stage="other"), "stage"),
        (lambda d: d.update(dryRun=True), "dryRun"),  # only a discover stage may carry a dry run
        (lambda d: d.update(stage="discover", dryRun="yes"), "dryRun"),
        (lambda d: d.update(recoveries=-1), "recoveries"),
        (lambda d: d.update(setbacks="2"), "setbacks"),
        (lambda d: d.update(deleteBy="tomorrow"), "malformed"),
        (lambda d: d.update(cause=["x"]), "cause"),
        (lambda d: d.update(causeDetail="x" * 500), "causeDetail"),
        (lambda d: d.update(subscriptions="x"), "subscriptions"),
        (_with_subscription(id="../x"), "GUID"),
        (_with_subscription(id=PLAN_ID.upper()), "GUID"),
        (_with_subscription(kind="mystery"), "kind"),
        (_with_subscription(action="purged"), "action"),
        (_with_subscription(status=""), "status"),
        (_with_subscription(azureEntitlementsCancelled=["../x"]), "azureEntitlementsCancelled"),
        (_with_subscription(orderId="../../x"), "orderId"),
        (_with_subscription(askedAt="soon"), "malformed"),
        (lambda d: d.update(subscriptions=[PLAN.to_hint(), PLAN.to_hint()]), "twice"),
        (lambda d: d.update(subscriptionsListed="yes"), "subscriptionsListed"),
        (lambda d: d.update(ordersViaSubscription=["../x"]), "ordersViaSubscription"),
        (lambda d: d.update(customerSeen="yes"), "customerSeen"),
    ],
)
def test_invalid_poll_messages(mutate, reason_part):
    poll = PollMessage(CUST, CORR, (OrderState("UKXASSO1dezh3HdxClHxSp5UEFXGbAnt1", "pending"),), 0, INSERTED, NOW)
    data = json.loads(poll.to_text())
    mutate(data)
    with pytest.raises(InvalidMessageError) as info:
        parse_poll_message(json.dumps(data))
    assert reason_part in info.value.reason


def test_outcome_event_shape():
    event = json.loads(
        outcome_event(
            outcome="deleted",
            customer_id=CUST,
            correlation_id=CORR,
            orders=[OrderState("UKXASSO1dezh3HdxClHxSp5UEFXGbAnt1", "cancelled")],
            subscriptions=[replace(PLAN, status="suspended", action="suspended")],
            poll_attempts=2,
            detail="done.",
            requested_at=INSERTED,
            finished_at=NOW,
        )
    )
    assert event == {
        "schemaVersion": 1,
        "eventId": event_id(CORR, INSERTED),
        "customerTenantId": CUST,
        "correlationId": CORR,
        "outcome": "deleted",
        "orders": [{"id": "UKXASSO1dezh3HdxClHxSp5UEFXGbAnt1", "status": "cancelled"}],
        "subscriptions": [
            {
                "id": PLAN_ID,
                "kind": "azure_plan",
                "action": "suspended",
                "status": "suspended",
                "azureEntitlementsCancelled": [AZURE_ID],
            }
        ],
        "pollAttempts": 2,
        "detail": "done.",
        "requestedAt": "2026-11-24T11:59:30.000Z",
        "finishedAt": "2026-11-24T12:00:00.000Z",
    }
    with pytest.raises(ValueError):
        outcome_event(
            outcome="gone", customer_id=None, correlation_id=CORR, detail="", requested_at=NOW, finished_at=NOW
        )


def test_event_id_is_the_requests_identity():
    """The same request (correlation id and requestedAt) gives the same eventId on every repeat; a redrive is new."""
    later = outcome_event(
        outcome="deleted", customer_id=CUST, correlation_id=CORR, detail="again", requested_at=INSERTED, finished_at=NOW
    )
    first = outcome_event(
        outcome="deleted",
        customer_id=CUST,
        correlation_id=CORR,
        detail="x",
        requested_at=INSERTED,
        finished_at=INSERTED,
    )
    assert json.loads(later)["eventId"] == json.loads(first)["eventId"]
    assert event_id(CORR, NOW) != event_id(CORR, INSERTED) and event_id(CUST, INSERTED) != event_id(CORR, INSERTED)
    assert uuid.UUID(event_id(CORR, NOW)).version == 5


def test_readable_fields_of_a_broken_poll_message():
    assert readable_fields(
        json.dumps({"customerTenantId": CUST.upper(), "correlationId": CORR, "dryRun": False, "x": 1})
    ) == (CUST, CORR, False, None)
    assert readable_fields(json.dumps({"customerTenantId": "../x", "correlationId": 5, "dryRun": "no"})) == (
        None,
        None,
        None,
        None,
    )
    assert readable_fields(b"\xff") == (None, None, None, None)


def test_the_previous_release_parses_every_kind_of_poll_message_this_one_writes():
    """Its own parser (tests/data/messages_eaf0670.py, verbatim) reads
    what this release writes, with the same meaning."""
    from tests.data.messages_eaf0670 import parse_poll_message as previous_parser

    written = [
        PollMessage(
            CUST,
            CORR,
            (OrderState("UKXASSO1dezh3HdxClHxSp5UEFXGbAnt1", "pending"),),
            2,
            INSERTED,
            NOW,
            1,
            delete_by=NOW,
            recoveries=1,
            setbacks=2,
            cause="outage",
            cause_detail="x",
            last_looks=1,
            first_delete_refusal_at=NOW,
        ),
        PollMessage(CUST, CORR, (), 0, INSERTED, NOW, stage="discover", dry_run=True, customer_seen=True),
        PollMessage(
            CUST, CORR, (), 3, INSERTED, NOW, stage="discover", cause="throttled", cause_detail="last Retry-After 60s"
        ),
    ]
    for message in written:
        old = previous_parser(message.to_text())
        assert (old.customer_id, old.correlation_id, old.stage, old.dry_run, old.attempt, old.delete_refusals) == (
            message.customer_id,
            message.correlation_id,
            message.stage,
            message.dry_run,
            message.attempt,
            message.delete_refusals,
        )
        assert [(o.id, o.status) for o in old.orders] == [(o.id, o.status) for o in message.orders]
