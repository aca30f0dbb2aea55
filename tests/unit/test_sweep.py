"""The sweep's pure core (shared.sweep): settings, the run's time, the selection as a table, and the report."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from shared.ncrontab import parse as parse_schedule
from shared.sweep import (MAX_REPORT_BYTES, REASONS, Decision, Enqueued, Outcome, RunTime, correlation_id, plan, read_policy,
                          report_text, request_text, run_id, run_time)
from shared.messages import parse_deletion_request

UTC = timezone.utc
APP_QUEUES = ("customer-deletions", "customer-deletion-polls", "customer-deletion-outcomes")
PROTECTED = "0f0e0d0c-0b0a-4909-8807-060504030201"
A, B, C, D = (str(uuid.UUID(int=i)) for i in (0xA1, 0xB2, 0xC3, 0xD4))


def env(**values):
    return {"SWEEP_SCHEDULE": "0 0 3 * * *", **values}


def policy(**values):
    p = read_policy(env(**values), app_queues=APP_QUEUES)
    assert p.problems == (), p.problems
    return p


def customer(cid, name="", domain="", tenant=None, **extra):
    profile = {"companyName": name, "domain": domain}
    if tenant is not None:
        profile["tenantId"] = tenant
    return {"id": cid, "companyProfile": profile, "attributes": {"objectType": "Customer"}, **extra}


def reasons(items, protected=frozenset(), **settings):
    result = plan(items, policy(**settings), frozenset(protected))
    assert result.refusal is None
    return [(d.customer_id, d.reason) for d in result.decisions]


HOSTILE = "Tip test\n2026-11-25 INFO sweep: customer 00000000 -> selected\x1b[2K\u202eevil\u0000"

# Each row: listed customers, settings, protected ids -> (id, reason) per listed customer, in listing order.
TABLE = [
    pytest.param([customer(A, "Tip test run 1", "tiptest1.onmicrosoft.com"), customer(B, "Contoso", "contoso.onmicrosoft.com")],
                 {"SWEEP_INCLUDE": "^tip test"}, (), [(A, "selected"), (B, "not_matching")], id="include on the name"),
    pytest.param([customer(A, "Contoso", "TIPTEST1.onmicrosoft.com")], {"SWEEP_INCLUDE": r"^tiptest\d"}, (),
                 [(A, "selected")], id="include on the domain, case-insensitive"),
    pytest.param([customer(A, "Tip test keep", "t.onmicrosoft.com"), customer(B, "Tip test", "keep.onmicrosoft.com"), customer(C, "Tip test", "x.com")],
                 {"SWEEP_INCLUDE": "tip", "SWEEP_EXCLUDE": "keep"}, (), [(A, "excluded"), (B, "excluded"), (C, "selected")],
                 id="exclude on either field"),
    pytest.param([customer(A, "Tip", "a.com")], {}, (), [(A, "not_matching")], id="report mode without include selects nothing"),
    pytest.param([customer(A.upper(), "Tip", "a.com"), customer(B, "Tip", "b.com")], {"SWEEP_INCLUDE": "tip"}, (A, B.upper()),
                 [(A, "protected"), (B, "protected")], id="protected in any letter case on either side"),
    pytest.param([customer(A, "Tip", "a.com")], {"SWEEP_INCLUDE": "tip", "SWEEP_EXCLUDE": "zzz"}, (A,),
                 [(A, "protected")], id="protected wins over include"),
    pytest.param([customer("{" + A + "}", "Tip"), customer(A + "\n", "Tip"), customer("../../x", "Tip"), customer(None, "Tip"),
                  customer(12, "Tip"), "not an object", customer(A.replace("-", ""), "Tip")],
                 {"SWEEP_INCLUDE": "tip"}, (),
                 [("{" + A + "}", "invalid_id"), (A + "\\n", "invalid_id"), ("../../x", "invalid_id"), ("null", "invalid_id"),
                  ("12", "invalid_id"), ("null", "invalid_id"), (A.replace("-", ""), "invalid_id")], id="invalid ids are never selected"),
    pytest.param([customer(A, "Tip", tenant=B), customer(C, "Tip", tenant=C.upper())], {"SWEEP_INCLUDE": "tip"}, (),
                 [(A, "invalid_id"), (C, "selected")], id="the company profile's tenant id must agree"),
    pytest.param([customer(A, "Tip"), customer(A.upper(), "Tip again")], {"SWEEP_INCLUDE": "tip"}, (),
                 [(A, "selected"), (A, "duplicate")], id="listed twice: decided once"),
    pytest.param([customer(A, "Tip" + "x" * 254), customer(B, "Tip" + "x" * 253), customer(C, "Tip", "d" * 257)], {"SWEEP_INCLUDE": "tip"}, (),
                 [(A, "name_too_long"), (B, "selected"), (C, "name_too_long")], id="over 256 characters: never selected"),
    pytest.param([customer(A, HOSTILE, "evil.onmicrosoft.com"), customer(B, {"name": "Tip"}, ["tip"])], {"SWEEP_INCLUDE": "^tip test$"}, (),
                 [(A, "not_matching"), (B, "not_matching")], id="a hostile name is only text; non-text names are empty"),
    pytest.param([customer(A, HOSTILE)], {"SWEEP_INCLUDE": "^tip test"}, (), [(A, "selected")], id="a hostile name can match"),
    pytest.param([customer(x, "Tip") for x in (D, C, B, A)], {"SWEEP_INCLUDE": "tip", "SWEEP_MAX_PER_RUN": "2"}, (),
                 [(D, "over_limit"), (C, "over_limit"), (B, "selected"), (A, "selected")], id="per-run limit keeps the lowest ids"),
]


@pytest.mark.parametrize("items, settings, protected, expected", TABLE)
def test_selection_table(items, settings, protected, expected):
    assert reasons(items, {p.lower() for p in protected}, **settings) == expected


def test_every_reason_of_the_table_is_a_known_one_and_every_known_one_is_in_the_table():
    seen = {reason for row in TABLE for _, reason in row.values[3]}
    assert seen == set(REASONS)


def test_more_customers_than_the_sandbox_limit_refuses_everything():
    items = [customer(str(uuid.uuid4()), "Tip") for _ in range(76)]
    result = plan(items, policy(SWEEP_INCLUDE="tip"), frozenset())
    assert result.refusal and "not an integration sandbox" in result.refusal and result.decisions == () and result.selected == ()
    assert plan(items[:75], policy(SWEEP_INCLUDE="tip", SWEEP_MAX_PER_RUN="75"), frozenset()).refusal is None
    assert len(plan(items[:75], policy(SWEEP_INCLUDE="tip", SWEEP_MAX_PER_RUN="75"), frozenset()).selected) == 75
    assert plan(items[:5], policy(SWEEP_INCLUDE="tip", SANDBOX_CUSTOMER_LIMIT="4"), frozenset()).refusal


@pytest.mark.parametrize("settings, problem", [
    ({"SWEEP_MODE": "delete"}, "needs SWEEP_INCLUDE"),
    ({"SWEEP_MODE": "delete", "SWEEP_INCLUDE": "   "}, "needs SWEEP_INCLUDE"),
    ({"SWEEP_MODE": "purge", "SWEEP_INCLUDE": "tip"}, "SWEEP_MODE must be"),
    ({"SWEEP_INCLUDE": "tip("}, "SWEEP_INCLUDE is not a valid regular expression"),
    ({"SWEEP_INCLUDE": ".*"}, "matches the empty string"),
    ({"SWEEP_INCLUDE": "tip|"}, "matches the empty string"),
    ({"SWEEP_INCLUDE": "^"}, "matches the empty string"),
    ({"SWEEP_INCLUDE": "tip", "SWEEP_EXCLUDE": "x*"}, "SWEEP_EXCLUDE matches the empty string"),
    ({"SWEEP_INCLUDE": "tip", "SWEEP_EXCLUDE": "[z"}, "SWEEP_EXCLUDE is not a valid"),
    ({"SWEEP_MAX_PER_RUN": "0"}, "SWEEP_MAX_PER_RUN must be"),
    ({"SWEEP_MAX_PER_RUN": "-1"}, "SWEEP_MAX_PER_RUN must be"),
    ({"SANDBOX_CUSTOMER_LIMIT": "75.0"}, "SANDBOX_CUSTOMER_LIMIT must be"),
    ({"SWEEP_REPORTS_QUEUE": "Bad_Queue"}, "SWEEP_REPORTS_QUEUE must be a queue name"),
    ({"SWEEP_REPORTS_QUEUE": "customer-deletions"}, "must not be one of the deletion functions' queues"),
    ({"SWEEP_REPORTS_QUEUE": "customer-deletion-polls-poison"}, "must not be one of the deletion functions' queues"),
    ({"SWEEP_SCHEDULE": ""}, "SWEEP_SCHEDULE is not set"),
    ({"SWEEP_SCHEDULE": "0 3 * * *"}, "six fields"),
    ({"SWEEP_SCHEDULE": "0 0 25 * * *"}, "not valid NCRONTAB"),
    ({"SWEEP_SCHEDULE": "0 0 0 31 Feb *"}, "never occurs"),
])
def test_each_setting_problem_is_named_and_selects_nothing(settings, problem):
    p = read_policy({**env(), **settings}, app_queues=APP_QUEUES)
    assert any(problem in text for text in p.problems), p.problems
    result = plan([customer(A, "Tip", "tip.com")], p, frozenset())
    assert result.selected == () and problem in result.refusal


def test_every_problem_is_named_at_once_and_the_report_queue_falls_back_to_the_default():
    p = read_policy({"SWEEP_MODE": "delete", "SWEEP_EXCLUDE": "(", "SWEEP_MAX_PER_RUN": "x", "SWEEP_REPORTS_QUEUE": "customer-deletions"},
                    app_queues=APP_QUEUES)
    assert len(p.problems) == 5 and p.reports_queue == "customer-sweep-reports"


def test_defaults():
    p = read_policy(env(), app_queues=APP_QUEUES)
    assert (p.mode, p.include, p.exclude, p.max_per_run, p.sandbox_limit, p.reports_queue) == ("report", None, None, 25, 75, "customer-sweep-reports")


# -- the run's time ---------------------------------------------------------------------------------------------------

DAILY = parse_schedule("0 0 3 * * *")
T3 = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize("started, past_due, status, trigger, moment", [
    (T3 + timedelta(seconds=0.4), False, {}, "schedule", T3),  # the first tick: no status yet
    (T3 + timedelta(seconds=2), False, {"Last": "2026-11-24T03:00:00+00:00", "Next": "2026-11-25T03:00:00+00:00",
                                        "LastUpdated": "2026-11-24T03:00:01.1234567+00:00"}, "schedule", T3),
    (T3 + timedelta(seconds=30), False, {"Next": "2026-11-25T03:00:00.0000000+00:00"}, "schedule", T3),
    (T3 + timedelta(hours=6, minutes=15), True, {"Next": "2026-11-25T03:00:00+00:00"}, "schedule", T3),  # past due after an outage
    (T3 + timedelta(hours=6), False, {"Last": "2026-11-25T03:00:00+00:00", "Next": "2026-11-26T03:00:00+00:00"}, "manual", None),
    (T3 + timedelta(seconds=20), False, {"Next": "2026-11-26T03:00:00Z"}, "manual", None),  # by hand just after the tick
    (T3 + timedelta(hours=6), False, {}, "manual", None),  # by hand, nothing stored
    (T3 + timedelta(hours=6), False, None, "manual", None),
    (T3 + timedelta(seconds=45), False, {}, "schedule", T3),  # by hand within a minute of the tick, no status: the tick's ids
    (T3 + timedelta(hours=6), False, {"Next": "0001-01-01T00:00:00"}, "manual", None),  # the host's "never"
    (T3 + timedelta(hours=6), False, {"Next": "soon"}, "manual", None),
    (T3 + timedelta(hours=6), False, {"Next": "2026-11-25T09:00:00"}, "manual", None),  # no offset: not read
])
def test_run_time(started, past_due, status, trigger, moment):
    run = run_time(DAILY, started, past_due, status)
    assert run.trigger == trigger and run.moment == (moment or started) and run.why


def test_run_time_without_a_readable_schedule_is_the_start():
    started = T3 + timedelta(seconds=1)
    assert run_time(None, started, True, {}) == RunTime(started, "manual", run_time(None, started, True, {}).why)


def test_correlation_ids_are_stable_per_run_time_and_customer_and_the_request_is_the_public_format():
    run = RunTime(T3, "schedule", "")
    again = RunTime(T3, "schedule", "other reason")
    assert correlation_id(run, A) == correlation_id(again, A) != correlation_id(run, B)
    assert correlation_id(run, A) == str(uuid.uuid5(uuid.UUID("5f0c2d7e-9b61-4c3a-8e0f-7a9d1c4b2e63"), f"2026-11-25T03:00:00.000Z/{A}"))
    assert correlation_id(RunTime(T3 + timedelta(days=1), "schedule", ""), A) != correlation_id(run, A)
    request = parse_deletion_request(request_text(run, A), message_id="m", insertion_time=None, now=T3)
    assert (request.customer_id, request.correlation_id, request.dry_run) == (A, correlation_id(run, A), False)
    assert run_id(run) == run_id(again)


# -- the report -------------------------------------------------------------------------------------------------------


def _report(outcome, **kw):
    p = policy(SWEEP_INCLUDE="tip", SWEEP_MODE="delete", SWEEP_MAX_PER_RUN="1")
    return json.loads(report_text(policy=p, run=RunTime(T3, "schedule", "why"), past_due=False, started=T3, finished=T3 + timedelta(seconds=2),
                                  invocation_id="inv-1", outcome=outcome, **kw))


def test_the_report_carries_mode_times_capacity_decisions_and_what_was_enqueued():
    p = policy(SWEEP_INCLUDE="tip", SWEEP_MODE="delete", SWEEP_MAX_PER_RUN="1")
    result = plan([customer(A, "Tip 1"), customer(B, "Tip 2"), customer(C, "Contoso"), customer(PROTECTED, "Tip")], p, frozenset({PROTECTED}))
    run = RunTime(T3, "schedule", "why")
    report = _report(Outcome("enqueued", result, [Enqueued(A, correlation_id(run, A), "m-1")]))
    assert report["schemaVersion"] == 1 and report["mode"] == "delete" and report["trigger"] == "schedule"
    assert report["scheduledTime"] == "2026-11-25T03:00:00.000Z" and report["startedAt"] == "2026-11-25T03:00:00.000Z"
    assert report["capacity"] == {"listed": 4, "limit": 75, "free": 71}
    assert report["selected"] == [{"customerTenantId": A, "companyName": "Tip 1", "domain": "", "correlationId": correlation_id(run, A)}]
    assert {(e["customerTenantId"], e["reason"]) for e in report["excluded"]} == {(B, "over_limit"), (C, "not_matching"), (PROTECTED, "protected")}
    assert report["deferred"] == 1 and report["enqueued"] == [{"customerTenantId": A, "correlationId": correlation_id(run, A), "messageId": "m-1"}]
    assert report["error"] is None and report["result"] == "enqueued"


def test_a_report_of_a_full_sandbox_with_the_longest_hostile_names_fits_in_a_queue_message():
    items = [customer(str(uuid.uuid4()), "\u202e" * 256, "d" * 256) for _ in range(75)]
    p = policy(SWEEP_INCLUDE="zzz")
    text = report_text(policy=p, run=RunTime(T3, "manual", ""), past_due=False, started=T3, finished=T3, invocation_id="i",
                       outcome=Outcome("reported", plan(items, p, frozenset())))
    report = json.loads(text)
    assert len(text.encode()) <= MAX_REPORT_BYTES and len(report["excluded"]) + report.get("excludedOmitted", 0) == 75
    assert all(len(e["companyName"]) <= 257 for e in report["excluded"])


@pytest.mark.parametrize("pattern", [r"\B", r"(?=t)", r"x*", r"\b", r"(?!zzz)", r"$"])
def test_a_pattern_that_can_match_zero_characters_is_refused(pattern):
    p = read_policy(env(SWEEP_INCLUDE=pattern, SWEEP_MODE="delete"), app_queues=APP_QUEUES)
    assert any("SWEEP_INCLUDE" in text and ("zero characters" in text or "empty string" in text) for text in p.problems), p.problems


def test_spaces_around_a_pattern_are_part_of_it():
    assert reasons([customer(A, "Tip x"), customer(B, "Tipping Co")], SWEEP_INCLUDE="^tip ") == [(A, "selected"), (B, "not_matching")]


def test_a_report_queue_that_no_queue_can_replace_is_only_logged():
    p = read_policy(env(SWEEP_REPORTS_QUEUE="b-queue"), app_queues=("customer-sweep-reports", "b-queue", "c-queue"))
    assert p.reports_queue is None and any("only logged" in text for text in p.problems)


def test_a_tick_seen_a_moment_before_its_occurrence_is_that_occurrence():
    run = run_time(DAILY, T3 - timedelta(seconds=1), False, {"Next": "2026-11-25T03:00:00+00:00"})
    assert run.trigger == "schedule" and run.moment == T3


def test_a_report_at_the_largest_allowed_settings_fits_in_a_queue_message():
    items = [customer(str(uuid.uuid4()), "Tip " + "\u202e" * 250, "d" * 256) for _ in range(1000)]
    p = policy(SWEEP_INCLUDE="tip", SWEEP_MODE="delete", SWEEP_MAX_PER_RUN="100", SANDBOX_CUSTOMER_LIMIT="1000")
    result = plan(items, p, frozenset())
    run = RunTime(T3, "schedule", "")
    enqueued = [Enqueued(d.customer_id, correlation_id(run, d.customer_id), str(uuid.uuid4())) for d in result.selected]
    text = report_text(policy=p, run=run, past_due=False, started=T3, finished=T3, invocation_id=str(uuid.uuid4()),
                       outcome=Outcome("enqueued", result, enqueued))
    report = json.loads(text)
    assert len(text.encode()) <= MAX_REPORT_BYTES and len(report["selected"]) == len(report["enqueued"]) == 100
    assert len(report["excluded"]) + report["excludedOmitted"] == 900 and report["deferred"] == 900
    assert read_policy(env(SWEEP_MAX_PER_RUN="101"), app_queues=APP_QUEUES).problems
