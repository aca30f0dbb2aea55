"""The status API's pure core (shared.status): what a query asks for, and the answer from ledger rows."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest

from shared import ledger
from shared.messages import PollMessage, iso
from shared.status import MAX_RESULTS, ByCorrelation, ByCustomer, Reply, answer, parse_query
from tests.unit.test_ledger import CORRELATION, CUSTOMER, T, event, stored_row

OTHER = str(uuid.UUID(int=0xD1))


@pytest.mark.parametrize(
    "route, query, expected",
    [
        ({"correlationId": CORRELATION.upper()}, "", ByCorrelation(CORRELATION)),
        ({"correlationId": CORRELATION}, "code=the-key", ByCorrelation(CORRELATION)),
        ({}, f"customerTenantId={CUSTOMER}&code=k", ByCustomer(CUSTOMER)),
        ({"correlationId": None}, f"customerTenantId={CUSTOMER.upper()}", ByCustomer(CUSTOMER)),
    ],
)
def test_a_question_by_correlation_id_or_by_customer(route, query, expected):
    assert parse_query(route, query) == expected


@pytest.mark.parametrize(
    "route, query, says",
    [
        ({"correlationId": "nope"}, "", "correlation id must be a GUID"),
        ({"correlationId": "{" + CORRELATION + "}"}, "", "must be a GUID"),
        ({}, "customerTenantId=", "customerTenantId must be a GUID"),
        ({}, f"customerTenantId={CUSTOMER}&customerTenantId={CUSTOMER}", "is given more than once"),
        ({}, f"customerTenantId={CUSTOMER}&code=a&code=b", '"code" is given more than once'),
        ({}, "customertenantid=x", 'unknown query parameter "customertenantid"'),
        ({"correlationId": CORRELATION}, f"customerTenantId={CUSTOMER}", "not both"),
        ({}, "", "give a correlation id"),
        ({}, "&".join(f"p{i}=1" for i in range(30)), "too many query parameters"),
    ],
)
def test_bad_input_is_a_400_naming_the_problem(route, query, says):
    reply = parse_query(route, query)
    assert isinstance(reply, Reply) and reply.status == 400 and says in reply.body["error"], reply


def test_a_400_never_returns_the_raw_input_as_markup_or_at_length():
    reply = parse_query({}, "%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E" + "x" * 100 + "=1")
    assert isinstance(reply, Reply) and reply.status == 400
    assert "<" not in reply.text and ">" not in reply.text and "x" * 60 not in reply.text
    assert json.loads(reply.text)["error"].startswith('unknown query parameter "<img src=x onerror=alert(1)>xxx')


def progress_row(correlation=CORRELATION, requested=T, hop=2):
    key = ledger.request_key(CUSTOMER, correlation, requested, False)
    assert key is not None
    chain = PollMessage(CUSTOMER, correlation, (), hop - 1, requested, requested, stage="poll", customer_seen=True)
    claim = ledger.on_hop_start(None, key, hop=hop, chain=chain, invocation="inv", now=requested, claim_seconds=150.0)
    assert isinstance(claim, ledger.Claim)
    sent = replace(chain, attempt=hop)
    plan = ledger.on_release(
        {**claim.write.row, "etag": "e0"},
        key,
        invocation="inv",
        message=sent,
        message_text=sent.to_text(),
        next_step_at=requested,
        now=requested,
    )
    assert isinstance(plan, ledger.Replace)
    return {**plan.row, "etag": "e"}


def test_a_decided_request_is_its_stored_event_and_a_running_one_its_stage():
    reply = answer(ByCustomer(CUSTOMER), [stored_row(), progress_row(OTHER)])
    assert reply.status == 200 and reply.body["more"] is False
    decided = next(r for r in reply.body["requests"] if r["stage"] == "finished")
    assert {k: decided[k] for k in json.loads(event())} == json.loads(event()) and decided["nextStepAt"] is None
    running = next(r for r in reply.body["requests"] if r["stage"] == "poll")
    assert running["outcome"] is None and running["stage"] == "poll" and running["pollAttempts"] == 2
    assert running["eventId"] == ledger.request_key(CUSTOMER, OTHER, T, False).event_id  # type: ignore[union-attr]


def test_newest_first_at_most_twenty_and_only_the_question_s_rows():
    from datetime import timedelta

    rows = [progress_row(requested=T + timedelta(minutes=i)) for i in range(MAX_RESULTS + 5)]  # oldest first
    sweep_row = {"PartitionKey": "sweepfirstseen", "RowKey": CUSTOMER, "firstSeen": "2026-12-01T03:00:00.000Z"}
    reply = answer(ByCorrelation(CORRELATION), [*rows, sweep_row, progress_row(OTHER)])
    shown = reply.body["requests"]
    assert len(shown) == MAX_RESULTS and reply.body["more"] is True
    newest = [iso(T + timedelta(minutes=i)) for i in reversed(range(5, MAX_RESULTS + 5))]
    assert [r["requestedAt"] for r in shown] == newest  # the newest 20, newest first
    assert all(r["correlationId"] == CORRELATION for r in shown)


def test_nothing_recorded_is_a_404():
    assert answer(ByCorrelation(OTHER), [stored_row()]).status == 404
    assert answer(ByCustomer(OTHER), []).status == 404
