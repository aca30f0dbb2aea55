"""The sweep's pure core (shared.sweep): settings, the run's time, the selection as a table, and the report."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from shared.config import Settings
from shared.ids import is_guid
from shared.messages import parse_deletion_request
from shared.ncrontab import parse as parse_schedule
from shared.sweep import (
    FIRST_SEEN_PARTITION,
    MAX_NAME_CHARS,
    MAX_REPORT_BYTES,
    PROBES,
    REASONS,
    TICK_LATENESS,
    Enqueued,
    FirstSeen,
    Outcome,
    RecordChanges,
    RecordResult,
    RunTime,
    Searches,
    SearchJob,
    check_patterns,
    correlation_id,
    first_seen_row,
    match_job,
    plan,
    probe_job,
    read_first_seen,
    read_policy,
    record_changes,
    report_text,
    request_text,
    run_id,
    run_time,
    seen_at,
)

APP_QUEUES = ("customer-deletions", "customer-deletion-polls", "customer-deletion-outcomes")
PROTECTED = "0f0e0d0c-0b0a-4909-8807-060504030201"
A, B, C, D = (str(uuid.UUID(int=i)) for i in (0xA1, 0xB2, 0xC3, 0xD4))


T3 = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
RUN = RunTime(T3, "schedule", "")


def env(**values):
    return {"SWEEP_SCHEDULE": "0 0 3 * * *", **values}


def precomputed(job):
    """What the shell's child process finds for ``job`` (shared.sweeper.search), computed here with ``re`` on the
    tests' harmless texts: the core is tested on precomputed matches and never runs a pattern itself."""
    if job is None:
        return None
    compiled = {p: re.compile(p, re.IGNORECASE) for p in job.patterns}
    found = {p: frozenset(t for t in job.texts if c.search(t)) for p, c in compiled.items()}
    zero = {
        p: frozenset(t for t in job.texts if any(m.end() == m.start() for m in c.finditer(t)))
        for p, c in compiled.items()
    }
    return Searches(job, found, zero if job.zero_width else {})


def checked(values, app_queues=APP_QUEUES):
    """read_policy, then check_patterns with what the probe job finds: the policy as the shell hands it to plan."""
    p = read_policy(values, app_queues=app_queues)
    return check_patterns(p, precomputed(probe_job(p)))


def policy(**values):
    p = checked(env(**values))
    assert p.problems == (), p.problems
    return p


def aged(items, age=timedelta(days=30), run=RUN):
    """A first-seen record in which every listed GUID was first seen ``age`` before ``run``."""
    ids = [i.get("id") for i in items if isinstance(i, dict)]
    return FirstSeen({c.lower(): run.moment - age for c in ids if isinstance(c, str) and is_guid(c)})


def seen_hours_ago(hours, run=RUN):
    """A record from {customer id: hours before ``run``}."""
    return FirstSeen({c.lower(): run.moment - timedelta(hours=h) for c, h in hours.items()})


def decide(items, p, protected=frozenset(), run=RUN, first_seen=None):
    """The plan, with a record in which every listed customer is 30 days old unless ``first_seen`` is given."""
    record = aged(items, run=run) if first_seen is None else first_seen
    return plan(items, p, protected, run, precomputed(match_job(p, items)), record)


def customer(cid, name="", domain="", tenant=None, **extra):
    profile = {"companyName": name, "domain": domain}
    if tenant is not None:
        profile["tenantId"] = tenant
    return {"id": cid, "companyProfile": profile, "attributes": {"objectType": "Customer"}, **extra}


def reasons(items, protected=frozenset(), _seen=None, **settings):
    """``_seen``: {customer id: hours before the run} is the record (else every customer is 30 days old)."""
    result = decide(items, policy(**settings), frozenset(protected), first_seen=_seen and seen_hours_ago(_seen))
    assert result.refusal is None
    return [(d.customer_id, d.reason) for d in result.decisions]


HOSTILE = "Tip test\n2026-11-25 INFO sweep: customer 00000000 -> selected\x1b[2K\u202eevil\u0000"

# Each row: listed customers, settings, protected ids -> (id, reason) per listed customer, in listing order.
TABLE = [
    pytest.param(
        [customer(A, "Tip test run 1", "tiptest1.onmicrosoft.com"), customer(B, "Contoso", "contoso.onmicrosoft.com")],
        {"SWEEP_INCLUDE": "^tip test"},
        (),
        [(A, "selected"), (B, "not_matching")],
        id="include on the name",
    ),
    pytest.param(
        [customer(A, "Contoso", "TIPTEST1.onmicrosoft.com")],
        {"SWEEP_INCLUDE": r"^tiptest\d"},
        (),
        [(A, "selected")],
        id="include on the domain, case-insensitive",
    ),
    pytest.param(
        [
            customer(A, "Tip test keep", "t.onmicrosoft.com"),
            customer(B, "Tip test", "keep.onmicrosoft.com"),
            customer(C, "Tip test", "x.com"),
        ],
        {"SWEEP_INCLUDE": "tip", "SWEEP_EXCLUDE": "keep"},
        (),
        [(A, "excluded"), (B, "excluded"), (C, "selected")],
        id="exclude on either field",
    ),
    pytest.param(
        [customer(A, "Tip", "a.com")], {}, (), [(A, "not_matching")], id="report mode without include selects nothing"
    ),
    pytest.param(
        [customer(A.upper(), "Tip", "a.com"), customer(B, "Tip", "b.com"), customer(C.upper(), "Tip", "c.com")],
        {"SWEEP_INCLUDE": "tip"},
        (A, B.upper(), C.upper()),
        [(A, "protected"), (B, "protected"), (C, "protected")],
        id="protected in any letter case on either side",
    ),
    pytest.param(
        [customer(A, "Tip", "a.com")],
        {"SWEEP_INCLUDE": "tip", "SWEEP_EXCLUDE": "zzz"},
        (A,),
        [(A, "protected")],
        id="protected wins over include",
    ),
    pytest.param(
        [
            customer("{" + A + "}", "Tip"),
            customer(A + "\n", "Tip"),
            customer("../../x", "Tip"),
            customer(None, "Tip"),
            customer(12, "Tip"),
            "not an object",
            customer(A.replace("-", ""), "Tip"),
        ],
        {"SWEEP_INCLUDE": "tip"},
        (),
        [
            ("{" + A + "}", "invalid_id"),
            (A + "\\n", "invalid_id"),
            ("../../x", "invalid_id"),
            ("null", "invalid_id"),
            ("12", "invalid_id"),
            ("null", "invalid_id"),
            (A.replace("-", ""), "invalid_id"),
        ],
        id="invalid ids are never selected",
    ),
    pytest.param(
        [customer(A, "Tip", tenant=B), customer(C, "Tip", tenant=C.upper())],
        {"SWEEP_INCLUDE": "tip"},
        (),
        [(A, "invalid_id"), (C, "selected")],
        id="the company profile's tenant id must agree",
    ),
    pytest.param(
        [customer(A, "Tip"), customer(A.upper(), "Tip again")],
        {"SWEEP_INCLUDE": "tip"},
        (),
        [(A, "selected"), (A, "duplicate")],
        id="listed twice: decided once",
    ),
    pytest.param(
        [customer(A, "Tip" + "x" * 254), customer(B, "Tip" + "x" * 253), customer(C, "Tip", "d" * 257)],
        {"SWEEP_INCLUDE": "tip"},
        (),
        [(A, "name_too_long"), (B, "selected"), (C, "name_too_long")],
        id="over 256 characters: never selected",
    ),
    pytest.param(
        [customer(A, HOSTILE, "evil.onmicrosoft.com"), customer(B, {"name": "Tip"}, ["tip"])],
        {"SWEEP_INCLUDE": "^tip test$"},
        (),
        [(A, "not_matching"), (B, "not_matching")],
        id="a hostile name is only text; non-text names are empty",
    ),
    pytest.param(
        [customer(A, HOSTILE)], {"SWEEP_INCLUDE": "^tip test"}, (), [(A, "selected")], id="a hostile name can match"
    ),
    pytest.param(
        [customer(x, "Tip") for x in (D, C, B, A)],
        {"SWEEP_INCLUDE": "tip", "SWEEP_MAX_PER_RUN": "2"},
        (),
        [
            (x, "selected" if x in sorted((D, C, B, A), key=lambda i: correlation_id(RUN, i))[:2] else "over_limit")
            for x in (D, C, B, A)
        ],
        id="per-run limit: this run's draw, by correlation id",
    ),
    pytest.param(
        [customer(x, "Tip") for x in (A, B, C, D)],
        {"SWEEP_INCLUDE": "tip", "_seen": {A: 24, B: 23.99, D: -1}},
        (),
        [(A, "selected"), (B, "too_new"), (C, "too_new"), (D, "too_new")],
        id="minimum age: 24 h by the runs' times; not seen, younger or seen after the run is too new",
    ),
    pytest.param(
        [customer(A, "Tip"), customer(B, "Tip keep"), customer(C, "Contoso")],
        {"SWEEP_INCLUDE": "tip", "SWEEP_EXCLUDE": "keep", "_seen": {PROTECTED: 1}},
        (A,),
        [(A, "protected"), (B, "excluded"), (C, "not_matching")],
        id="every other reason comes before too_new",
    ),
    pytest.param(
        [customer(A, "Tip"), customer(B, "Tip")],
        {"SWEEP_INCLUDE": "tip", "SWEEP_MIN_AGE_HOURS": "0", "_seen": {PROTECTED: 1}},
        (),
        [(A, "selected"), (B, "selected")],
        id="SWEEP_MIN_AGE_HOURS=0: no minimum age",
    ),
    pytest.param(
        [customer(x, "Tip") for x in (D, C, B, A)],
        {"SWEEP_INCLUDE": "tip", "SWEEP_MAX_PER_RUN": "1", "_seen": {C: 48, A: 48}},
        (),
        [
            (D, "too_new"),
            (C, "selected" if correlation_id(RUN, C) < correlation_id(RUN, A) else "over_limit"),
            (B, "too_new"),
            (A, "selected" if correlation_id(RUN, A) < correlation_id(RUN, C) else "over_limit"),
        ],
        id="too new customers do not take the per-run limit's places",
    ),
]


@pytest.mark.parametrize("items, settings, protected, expected", TABLE)
def test_selection_table(items, settings, protected, expected):
    assert reasons(items, protected, **settings) == expected  # protected ids exactly as given: plan lower-cases them


def test_the_draw_row_is_not_the_order_of_ids():
    """The row above would also pass if plan kept the lowest ids: it must not, or the draw is untested."""
    assert sorted((D, C, B, A), key=lambda i: correlation_id(RUN, i))[:2] != [A, B]


def test_protected_ids_read_from_the_settings_in_any_letter_case():
    settings = Settings.from_env(
        {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "PROTECTED_CUSTOMER_IDS": f"{A.upper()}, {B}"}
    )
    result = decide(
        [customer(A, "Tip"), customer(B.upper(), "Tip"), customer(C, "Tip")],
        policy(SWEEP_INCLUDE="tip"),
        settings.protected_ids,
    )
    assert [(d.customer_id, d.reason) for d in result.decisions] == [
        (A, "protected"),
        (B, "protected"),
        (C, "selected"),
    ]


def test_customers_that_can_never_be_deleted_do_not_fill_every_run():
    """The lowest ids never deleted (say, a purchase that keeps them) do not block the rest: every run draws anew,
    while a repeat of the same run draws the same customers."""
    ids = sorted(str(uuid.UUID(int=i * 7919 + 1)) for i in range(30))
    items = [customer(i, "Tip") for i in ids]
    p = policy(SWEEP_INCLUDE="tip", SWEEP_MAX_PER_RUN="5", SWEEP_MODE="delete")
    draws = [
        frozenset(d.customer_id for d in decide(items, p, run=RunTime(T3 + timedelta(days=n), "schedule", "")).selected)
        for n in range(20)
    ]
    assert all(len(d) == 5 for d in draws) and len(set(draws)) > 1
    assert frozenset().union(*draws) > frozenset(ids[:5])  # not stuck on the lowest ids
    assert len(frozenset().union(*draws)) >= 25  # the undeletable ones cannot keep the others out for long
    again = RunTime(T3, "schedule", "a repeat")
    assert frozenset(d.customer_id for d in decide(items, p, run=again).selected) == draws[0]


def test_every_reason_of_the_table_is_a_known_one_and_every_known_one_is_in_the_table():
    seen = {reason for row in TABLE for _, reason in cast("list[tuple[str, str]]", row.values[3])}
    assert seen == set(REASONS)


def test_more_customers_than_the_sandbox_limit_refuses_everything():
    items = [customer(str(uuid.uuid4()), "Tip") for _ in range(76)]
    p = policy(SWEEP_INCLUDE="tip")
    assert match_job(p, items) is None  # nothing to search: the run is refused anyway
    result = plan(items, p, frozenset(), RUN)
    assert (
        result.refusal
        and "not an integration sandbox" in (result.refusal or "")
        and result.decisions == ()
        and result.selected == ()
    )
    assert decide(items[:75], policy(SWEEP_INCLUDE="tip", SWEEP_MAX_PER_RUN="75")).refusal is None
    assert len(decide(items[:75], policy(SWEEP_INCLUDE="tip", SWEEP_MAX_PER_RUN="75")).selected) == 75
    assert decide(items[:5], policy(SWEEP_INCLUDE="tip", SANDBOX_CUSTOMER_LIMIT="4")).refusal


@pytest.mark.parametrize(
    "settings, problem",
    [
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
        (
            {"SWEEP_REPORTS_QUEUE": "customer-deletion-polls-poison"},
            "must not be one of the deletion functions' queues",
        ),
        ({"SWEEP_SCHEDULE": ""}, "SWEEP_SCHEDULE is not set"),
        ({"SWEEP_SCHEDULE": "0 3 * * *"}, "six fields"),
        ({"SWEEP_SCHEDULE": "0 0 25 * * *"}, "not valid NCRONTAB"),
        ({"SWEEP_SCHEDULE": "0 0 0 31 Feb *"}, "never occurs"),
    ],
)
def test_each_setting_problem_is_named_and_selects_nothing(settings, problem):
    p = checked({**env(), **settings})
    assert any(problem in text for text in p.problems), p.problems
    result = plan([customer(A, "Tip", "tip.com")], p, frozenset(), RUN)
    assert result.selected == () and problem in (result.refusal or "")


def test_every_problem_is_named_at_once_and_the_report_queue_falls_back_to_the_default():
    p = checked(
        {
            "SWEEP_MODE": "delete",
            "SWEEP_EXCLUDE": "(",
            "SWEEP_MAX_PER_RUN": "x",
            "SWEEP_REPORTS_QUEUE": "customer-deletions",
        }
    )
    assert len(p.problems) == 5 and p.reports_queue == "customer-sweep-reports"


def test_defaults():
    p = read_policy(env(), app_queues=APP_QUEUES)
    assert (p.mode, p.include, p.exclude, p.max_per_run, p.sandbox_limit, p.reports_queue) == (
        "report",
        None,
        None,
        25,
        75,
        "customer-sweep-reports",
    )


# -- the run's time ---------------------------------------------------------------------------------------------------

DAILY = parse_schedule("0 0 3 * * *")


@pytest.mark.parametrize(
    "started, past_due, status, trigger, moment",
    [
        (T3 + timedelta(seconds=0.4), False, {}, "schedule", T3),  # the first tick: no status yet
        (
            T3 + timedelta(seconds=2),
            False,
            {
                "Last": "2026-11-24T03:00:00+00:00",
                "Next": "2026-11-25T03:00:00+00:00",
                "LastUpdated": "2026-11-24T03:00:01.1234567+00:00",
            },
            "schedule",
            T3,
        ),
        (T3 + timedelta(seconds=30), False, {"Next": "2026-11-25T03:00:00.0000000+00:00"}, "schedule", T3),
        (
            T3 + timedelta(hours=6, minutes=15),
            True,
            {"Next": "2026-11-25T03:00:00+00:00"},
            "schedule",
            T3,
        ),  # past due after an outage
        (
            T3 + timedelta(hours=6),
            False,
            {"Last": "2026-11-25T03:00:00+00:00", "Next": "2026-11-26T03:00:00+00:00"},
            "manual",
            None,
        ),
        (
            T3 + timedelta(seconds=20),
            False,
            {"Next": "2026-11-26T03:00:00Z"},
            "manual",
            None,
        ),  # by hand just after the tick
        (T3 + timedelta(hours=6), False, {}, "manual", None),  # by hand, nothing stored
        (T3 + timedelta(hours=6), False, None, "manual", None),
        (
            T3 + timedelta(seconds=45),
            False,
            {},
            "schedule",
            T3,
        ),  # by hand within a minute of the tick, no status: the tick's ids
        (T3 + timedelta(hours=6), False, {"Next": "0001-01-01T00:00:00"}, "manual", None),  # the host's "never"
        (T3 + timedelta(hours=6), False, {"Next": "soon"}, "manual", None),
        (T3 + timedelta(hours=6), False, {"Next": "2026-11-25T09:00:00"}, "manual", None),  # no offset: not read
        # a stored Next that has come is the tick only up to TICK_LATENESS
        # (5 minutes) after it; longer is a stale status
        (T3 + timedelta(minutes=4, seconds=59), False, {"Next": "2026-11-25T03:00:00+00:00"}, "schedule", T3),
        (T3 + TICK_LATENESS, False, {"Next": "2026-11-25T03:00:00+00:00"}, "schedule", T3),
        (T3 + TICK_LATENESS + timedelta(seconds=1), False, {"Next": "2026-11-25T03:00:00+00:00"}, "manual", None),
        (
            T3 + timedelta(hours=1),
            False,
            {"Last": "2026-11-24T03:00:00+00:00", "Next": "2026-11-25T03:00:00+00:00"},
            "manual",
            None,
        ),
        (
            T3 + timedelta(days=2, hours=7),
            False,
            {"Next": "2026-11-25T03:00:00+00:00"},
            "manual",
            None,
        ),  # 11-27 10:00, stale
        (T3 + timedelta(days=2), False, {"Next": "2026-11-25T03:00:00+00:00"}, "manual", None),  # even on an occurrence
        (
            T3 + timedelta(days=2, hours=7),
            True,
            {"Next": "2026-11-25T03:00:00+00:00"},
            "schedule",
            T3 + timedelta(days=2),
        ),  # past due: as is
    ],
)
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
    assert correlation_id(run, A) == str(
        uuid.uuid5(uuid.UUID("5f0c2d7e-9b61-4c3a-8e0f-7a9d1c4b2e63"), f"2026-11-25T03:00:00.000Z/{A}")
    )
    assert correlation_id(RunTime(T3 + timedelta(days=1), "schedule", ""), A) != correlation_id(run, A)
    request = parse_deletion_request(request_text(run, A), message_id="m", insertion_time=None, now=T3)
    assert (request.customer_id, request.correlation_id, request.dry_run) == (A, correlation_id(run, A), False)
    assert run_id(run) == run_id(again)


# -- the report -------------------------------------------------------------------------------------------------------


def _report(outcome, **kw):
    p = policy(SWEEP_INCLUDE="tip", SWEEP_MODE="delete", SWEEP_MAX_PER_RUN="1")
    return json.loads(
        report_text(
            policy=p,
            run=RunTime(T3, "schedule", "why"),
            past_due=False,
            started=T3,
            finished=T3 + timedelta(seconds=2),
            invocation_id="inv-1",
            outcome=outcome,
            **kw,
        )
    )


def test_the_report_carries_mode_times_capacity_decisions_and_what_was_enqueued():
    p = policy(SWEEP_INCLUDE="tip", SWEEP_MODE="delete", SWEEP_MAX_PER_RUN="1")
    result = decide(
        [customer(A, "Tip 1"), customer(B, "Tip 2"), customer(C, "Contoso"), customer(PROTECTED, "Tip")],
        p,
        frozenset({PROTECTED}),
    )
    run = RunTime(T3, "schedule", "why")
    first = sorted((A, B), key=lambda i: correlation_id(run, i))[0]  # this run's draw of the two
    report = _report(Outcome("enqueued", result, [Enqueued(first, correlation_id(run, first), "m-1")]))
    assert report["schemaVersion"] == 1 and report["mode"] == "delete" and report["trigger"] == "schedule"
    assert report["scheduledTime"] == "2026-11-25T03:00:00.000Z" and report["startedAt"] == "2026-11-25T03:00:00.000Z"
    assert report["capacity"] == {"listed": 4, "limit": 75, "free": 71}
    other = B if first == A else A
    assert report["selected"] == [
        {
            "customerTenantId": first,
            "companyName": {A: "Tip 1", B: "Tip 2"}[first],
            "domain": "",
            "correlationId": correlation_id(run, first),
        }
    ]
    assert {(e["customerTenantId"], e["reason"]) for e in report["excluded"]} == {
        (other, "over_limit"),
        (C, "not_matching"),
        (PROTECTED, "protected"),
    }
    assert report["deferred"] == 1 and report["enqueued"] == [
        {"customerTenantId": first, "correlationId": correlation_id(run, first), "messageId": "m-1"}
    ]
    assert report["error"] is None and report["result"] == "enqueued"
    assert report["selection"] == "1 selected; not selected: 1 protected, 1 not_matching, 1 over_limit"


def test_a_report_of_a_full_sandbox_with_the_longest_hostile_names_fits_in_a_queue_message():
    items = [customer(str(uuid.uuid4()), "\u202e" * 256, "d" * 256) for _ in range(75)]
    p = policy(SWEEP_INCLUDE="zzz")
    text = report_text(
        policy=p,
        run=RunTime(T3, "manual", ""),
        past_due=False,
        started=T3,
        finished=T3,
        invocation_id="i",
        outcome=Outcome("reported", decide(items, p)),
    )
    report = json.loads(text)
    assert len(text.encode()) <= MAX_REPORT_BYTES and len(report["excluded"]) + report.get("excludedOmitted", 0) == 75
    assert report["selection"] == "nothing is selected; not selected: 75 not_matching"
    assert all(len(e["companyName"]) <= 257 for e in report["excluded"])


@pytest.mark.parametrize("pattern", [r"\B", r"(?=t)", r"x*", r"\b", r"(?!zzz)", r"$"])
def test_a_pattern_that_can_match_zero_characters_is_refused(pattern):
    p = checked(env(SWEEP_INCLUDE=pattern, SWEEP_MODE="delete"))
    assert any(
        "SWEEP_INCLUDE" in text and ("zero characters" in text or "empty string" in text) for text in p.problems
    ), p.problems


def test_spaces_around_a_pattern_are_part_of_it():
    assert reasons([customer(A, "Tip x"), customer(B, "Tipping Co")], SWEEP_INCLUDE="^tip ") == [
        (A, "selected"),
        (B, "not_matching"),
    ]


def test_a_report_queue_that_no_queue_can_replace_is_only_logged():
    p = checked(env(SWEEP_REPORTS_QUEUE="b-queue"), app_queues=("customer-sweep-reports", "b-queue", "c-queue"))
    assert p.reports_queue is None and any("only logged" in text for text in p.problems)


def test_a_tick_seen_a_moment_before_its_occurrence_is_that_occurrence():
    run = run_time(DAILY, T3 - timedelta(seconds=1), False, {"Next": "2026-11-25T03:00:00+00:00"})
    assert run.trigger == "schedule" and run.moment == T3


def test_a_report_at_the_largest_allowed_settings_fits_in_a_queue_message():
    items = [customer(str(uuid.uuid4()), "Tip " + "\u202e" * 250, "d" * 256) for _ in range(1000)]
    p = policy(SWEEP_INCLUDE="tip", SWEEP_MODE="delete", SWEEP_MAX_PER_RUN="100", SANDBOX_CUSTOMER_LIMIT="1000")
    result = decide(items, p)
    run = RunTime(T3, "schedule", "")
    enqueued = [Enqueued(d.customer_id, correlation_id(run, d.customer_id), str(uuid.uuid4())) for d in result.selected]
    text = report_text(
        policy=p,
        run=run,
        past_due=False,
        started=T3,
        finished=T3,
        invocation_id=str(uuid.uuid4()),
        outcome=Outcome("enqueued", result, enqueued),
    )
    report = json.loads(text)
    assert len(text.encode()) <= MAX_REPORT_BYTES and len(report["selected"]) == len(report["enqueued"]) == 100
    assert len(report["excluded"]) + report["excludedOmitted"] == 900 and report["deferred"] == 900
    assert read_policy(env(SWEEP_MAX_PER_RUN="101"), app_queues=APP_QUEUES).problems


# -- the patterns: run elsewhere, decided here ------------------------------------------------------------------------


def test_the_core_decides_from_the_searches_it_is_handed_and_never_matches_itself():
    """Results that contradict the patterns win: the core reads them and runs no pattern (the shell runs them in a
    child process, shared.sweeper.search)."""
    p = policy(SWEEP_INCLUDE="tip", SWEEP_EXCLUDE="keep")
    items = [customer(A, "Contoso", "c.com"), customer(B, "Tip", "t.com"), customer(C, "Tip keep", "k.com")]
    job = match_job(p, items)
    assert job == SearchJob(("tip", "keep"), tuple(sorted({"Contoso", "c.com", "Tip", "t.com", "Tip keep", "k.com"})))
    lying = Searches(job, {"tip": frozenset({"Contoso", "Tip keep"}), "keep": frozenset({"Tip keep"})})
    assert [(d.customer_id, d.reason) for d in plan(items, p, frozenset(), RUN, lying, aged(items)).decisions] == [
        (A, "selected"),
        (B, "not_matching"),
        (C, "excluded"),
    ]


def test_the_search_job_holds_each_text_once_and_none_over_256_characters():
    p = policy(SWEEP_INCLUDE="tip")
    items = [
        customer(A, "Tip", "t.com"),
        customer(B, "Tip", "x" * (MAX_NAME_CHARS + 1)),
        customer(C, "y" * MAX_NAME_CHARS),
        "junk",
        {"id": D, "companyProfile": {"companyName": 7}},
    ]
    job = match_job(p, items)
    assert job is not None
    assert job.texts == tuple(sorted({"Tip", "t.com", "", "y" * MAX_NAME_CHARS}))
    assert match_job(policy(), items) is None  # no SWEEP_INCLUDE: nothing is ever selected, nothing to search


@pytest.mark.parametrize(
    "searches, why",
    [
        (None, "no results for this list"),
        ("failed", "stopped at the time limit of 10 s"),
        ("other list", "no results for this list"),
        ("incomplete", "no results for this list"),
    ],
)
def test_a_selection_without_complete_results_for_this_list_is_refused(searches, why):
    p = policy(SWEEP_INCLUDE="tip", SWEEP_MODE="delete")
    items = [customer(A, "Tip"), customer(B, "Tip 2")]
    job = match_job(p, items)
    assert job is not None
    given = {
        None: None,
        "failed": Searches(job, failure="stopped at the time limit of 10 s"),
        "other list": precomputed(match_job(p, items[:1])),
        "incomplete": Searches(job, {}),
    }[searches]
    result = plan(items, p, frozenset(), RUN, given, aged(items))
    assert (
        result.selected == ()
        and result.decisions == ()
        and "did not finish" in (result.refusal or "")
        and why in (result.refusal or "")
    )
    assert decide(items, p).refusal is None  # the same list with its results is planned


def test_patterns_are_tried_on_the_probe_texts_and_a_search_that_does_not_finish_is_a_setting_problem():
    p = read_policy(env(SWEEP_INCLUDE="(a+)+$", SWEEP_EXCLUDE="keep", SWEEP_MODE="delete"), app_queues=APP_QUEUES)
    probe = probe_job(p)
    assert p.problems == () and p.tried is False and probe == SearchJob(("(a+)+$", "keep"), PROBES, zero_width=True)
    assert probe is not None
    # read but not tried: plan refuses rather than select with patterns nobody ran
    assert "not tried" in (plan([customer(A, "aaa")], p, frozenset(), RUN).refusal or "")
    for given in (Searches(probe, failure="stopped at the time limit of 10 s"), None):
        bad = check_patterns(p, given)
        (problem,) = bad.problems
        assert "SWEEP_INCLUDE and SWEEP_EXCLUDE could not be tried" in problem and (
            given is None or "time limit" in problem
        )
        assert bad.include is bad.exclude is None and "could not be tried" in (
            plan([customer(A, "aaa")], bad, frozenset(), RUN).refusal or ""
        )
    good = check_patterns(p, precomputed(probe_job(p)))
    assert good.problems == () and good.tried and (good.include, good.exclude) == ("(a+)+$", "keep")
    unset = check_patterns(read_policy(env(), app_queues=APP_QUEUES), None)
    assert unset.tried and unset.problems == () and probe_job(unset) is None


def test_the_probe_texts_find_zero_width_matches_that_the_empty_string_does_not():
    p = read_policy(env(SWEEP_INCLUDE=r"\b"), app_queues=APP_QUEUES)
    results = precomputed(probe_job(p))
    assert "" not in results.found[r"\b"] and results.zero_width[r"\b"]  # only the probes catch it
    assert "zero characters" in check_patterns(p, results).problems[0]


# -- the report says why nothing was selected, whatever is cut ---------------------------------------------------------


def _report_of(p, outcome, run=RUN):
    """The report of a run at T3 with ``outcome``, parsed."""
    return json.loads(
        report_text(policy=p, run=run, past_due=False, started=T3, finished=T3, invocation_id="i", outcome=outcome)
    )


def _selection(p, outcome, run=RUN):
    return _report_of(p, outcome, run)["selection"]


def test_the_report_says_at_the_top_why_nothing_was_selected():
    report_mode = policy()
    assert (
        _selection(report_mode, Outcome("reported", decide([], report_mode)))
        == "nothing is selected (SWEEP_INCLUDE is not set, and without it nothing is ever selected); no customer is "
        "listed"
    )
    assert (
        _selection(
            report_mode,
            Outcome("reported", decide([customer(A, "Tip"), customer(PROTECTED, "x")], report_mode, {PROTECTED})),
        )
        == "nothing is selected (SWEEP_INCLUDE is not set, and without it nothing is ever selected); not selected: 1 "
        "protected, 1 not_matching"
    )
    assert (
        _selection(
            policy(SWEEP_INCLUDE="tip"), Outcome("reported", decide([customer(A, "Tip")], policy(SWEEP_INCLUDE="tip")))
        )
        == "1 selected; every listed customer"
    )
    assert _selection(policy(SWEEP_MODE="off"), Outcome("off")) == "nothing is listed or selected: SWEEP_MODE is off"
    assert _selection(policy(), Outcome("failed", error="x")) == "nothing is selected: the run failed (see error)"


def test_the_selection_note_survives_when_every_entry_is_cut_for_size():
    items = [customer(str(uuid.uuid4()), "\u202e" * 256, "d" * 256) for _ in range(1000)]
    p = policy(SANDBOX_CUSTOMER_LIMIT="1000")
    report = _report_of(p, Outcome("reported", decide(items, p)))
    assert (
        report["excludedOmitted"] > 0
        and "SWEEP_INCLUDE is not set" in report["selection"]
        and "1000 not_matching" in report["selection"]
    )


# -- the minimum age and the first-seen record ------------------------------------------------------------------------


def _row(cid, first_seen, etag="e"):
    return {"PartitionKey": FIRST_SEEN_PARTITION, "RowKey": cid, "firstSeen": first_seen, "etag": etag}


def test_the_record_is_read_from_guid_rows_only_and_an_unreadable_time_counts_as_not_seen():
    record = read_first_seen(
        [
            _row(A, "2026-11-20T03:00:00.000Z", "e1"),
            _row(B, "yesterday", "e2"),
            _row(C, None, "e3"),
            _row(D.upper(), "2026-11-20T03:00:00.000Z"),  # not the lower case the sweep writes: never a key again
            _row("../x", "2026-11-20T03:00:00.000Z"),
            _row("sweepfirstseen", "2026-11-20T03:00:00.000Z"),
            {"PartitionKey": FIRST_SEEN_PARTITION},
        ]
    )
    assert record.times == {A: datetime(2026, 11, 20, 3, 0, tzinfo=UTC)}
    assert record.unreadable == {B, C} and record.etags == {A: "e1", B: "e2", C: "e3"} and record.failure is None
    p = policy(SWEEP_INCLUDE="tip")
    result = decide([customer(x, "Tip") for x in (A, B, C, D)], p, first_seen=record)
    assert [d.reason for d in result.decisions] == ["selected", "too_new", "too_new", "too_new"]
    assert "not seen by the sweep before this run" in result.decisions[1].detail


def test_a_record_that_cannot_be_read_selects_nothing_and_says_why():
    p = policy(SWEEP_INCLUDE="tip", SWEEP_MODE="delete")
    items = [customer(A, "Tip")]
    for record, why in ((None, "it was not read"), (FirstSeen(failure="reading table t failed (HTTP 503)"), "503")):
        result = plan(items, p, frozenset(), RUN, precomputed(match_job(p, items)), record)
        assert result.decisions == () and "first-seen record cannot be read" in (result.refusal or "")
        assert why in (result.refusal or "")
        assert record_changes(result, p, record, RUN, T3) == RecordChanges()  # nothing is written after a refusal
    no_age = policy(SWEEP_INCLUDE="tip", SWEEP_MIN_AGE_HOURS="0")
    assert plan(items, no_age, frozenset(), RUN, precomputed(match_job(no_age, items)), None).selected != ()


def test_the_record_gains_every_validly_listed_customer_and_loses_the_gone_ones():
    p = policy(SWEEP_INCLUDE="tip")
    gone, unreadable = str(uuid.UUID(int=0xE5)), str(uuid.UUID(int=0xF6))
    record = read_first_seen(
        [_row(A, "2026-11-01T03:00:00.000Z"), _row(gone, "2026-11-01T03:00:00.000Z"), _row(unreadable, "?")]
    )
    items = [
        customer(A, "Tip"),
        customer(B, "Contoso"),  # not matching: recorded all the same (when it was first seen is a fact)
        customer(C.upper(), "Tip", tenant=C),
        customer(C, "Tip again"),  # a duplicate: once
        customer(D, "Tip", tenant=A),  # the profile disagrees: never a key
        customer("not-a-guid", "Tip"),
        customer(PROTECTED, "Tip"),
        customer(unreadable, "Tip"),
    ]
    result = decide(items, p, frozenset({PROTECTED}), first_seen=record)
    changes = record_changes(result, p, record, RUN, T3 + timedelta(seconds=30))
    assert changes == RecordChanges(
        add=tuple(first_seen_row(c, T3) for c in (B, C, PROTECTED)),
        rewrite=((first_seen_row(unreadable, T3), "e"),),
        prune=((gone, "e"),),
    )
    no_age = policy(SWEEP_INCLUDE="tip", SWEEP_MIN_AGE_HOURS="0")
    assert record_changes(result, no_age, record, RUN, T3) == RecordChanges()
    # A row read without an etag cannot be changed conditionally: it is left alone.
    no_etags = replace(record, etags={})
    assert record_changes(result, p, no_etags, RUN, T3) == RecordChanges(add=changes.add)


@pytest.mark.parametrize("items", [[], [customer("not-a-guid", "Tip")], [customer(A, "Tip", tenant=B)]])
def test_a_listing_with_no_valid_customer_prunes_nothing(items):
    """An empty or unusable page is no proof that every customer is gone: pruning on it would make all of them new."""
    p = policy(SWEEP_INCLUDE="tip")
    record = read_first_seen([_row(C, "2026-11-01T03:00:00.000Z"), _row(D, "2026-11-01T03:00:00.000Z")])
    assert record_changes(decide(items, p, first_seen=record), p, record, RUN, T3) == RecordChanges()


def test_a_catch_up_run_hours_late_records_its_start_not_the_missed_occurrence():
    """A past-due run's time is the occurrence it makes up for; the customers it lists were not seen then."""
    p = policy(SWEEP_INCLUDE="tip")
    late = T3 + timedelta(hours=11)
    first = decide([customer(A, "Tip")], p, first_seen=FirstSeen())
    assert record_changes(first, p, FirstSeen(), RUN, late).add == (first_seen_row(A, late),)
    assert seen_at(RUN, T3 + TICK_LATENESS) == T3 and seen_at(RUN, late) == late
    # the next day's 03:00 run: 16 h after the catch-up saw A, so A is still too new
    record = read_first_seen([{**first_seen_row(A, late), "etag": "e"}])
    next_day = RunTime(T3 + timedelta(days=1), "schedule", "")
    assert [d.reason for d in decide([customer(A, "Tip")], p, run=next_day, first_seen=record).decisions] == ["too_new"]


def test_a_daily_schedule_selects_a_customer_on_the_run_after_it_was_first_seen():
    """The runs' own times, not their starts: a run that starts late does not push a customer to the day after."""
    p = policy(SWEEP_INCLUDE="tip")
    day1 = RunTime(T3, "schedule", "")
    day2 = RunTime(T3 + timedelta(days=1), "schedule", "")
    first = decide([customer(A, "Tip")], p, run=day1, first_seen=FirstSeen())
    changes = record_changes(first, p, FirstSeen(), day1, T3 + timedelta(seconds=40))  # started 40 s late
    assert [d.reason for d in first.decisions] == ["too_new"] and changes.add == (first_seen_row(A, T3),)
    record = read_first_seen([{**changes.add[0], "etag": "e"}])
    assert [d.reason for d in decide([customer(A, "Tip")], p, run=day2, first_seen=record).decisions] == ["selected"]


def test_min_age_setting_is_validated_and_defaults_to_24_hours():
    assert read_policy(env(), app_queues=APP_QUEUES).min_age_hours == 24
    assert read_policy(env(SWEEP_MIN_AGE_HOURS=" 0 "), app_queues=APP_QUEUES).min_age_hours == 0
    assert read_policy(env(SWEEP_MIN_AGE_HOURS="8760"), app_queues=APP_QUEUES).problems == ()
    for bad in ("-1", "8761", "1.5", "24h", "99999999"):
        p = read_policy(env(SWEEP_MIN_AGE_HOURS=bad), app_queues=APP_QUEUES)
        assert any("SWEEP_MIN_AGE_HOURS must be" in x for x in p.problems), bad


def test_the_report_names_the_minimum_age_the_record_and_the_first_run_after_a_deploy():
    p = policy(SWEEP_INCLUDE="tip")
    items = [customer(A, "Tip"), customer(B, "Contoso")]
    first_run = decide(items, p, first_seen=FirstSeen())
    record = RecordResult(table="deletionrequests", known=0, added=2)
    report = _report_of(p, Outcome("reported", first_run, record=record))
    assert report["minAgeHours"] == 24
    assert report["firstSeen"] == {
        "table": "deletionrequests",
        "partition": FIRST_SEEN_PARTITION,
        "known": 0,
        "recorded": 2,
        "pruned": 0,
        "error": None,
    }
    assert [(e["customerTenantId"], e["reason"]) for e in report["excluded"]] == [(A, "too_new"), (B, "not_matching")]
    assert "first run after a deploy" in report["selection"] and "1 too_new" in report["selection"]
    later = decide(items, p, first_seen=seen_hours_ago({B: 100}))  # A is new, but the record was not empty
    assert "first run after a deploy" not in _selection(p, Outcome("reported", later))
    no_age = policy(SWEEP_MIN_AGE_HOURS="0")
    assert _report_of(no_age, Outcome("reported", decide(items, no_age)))["firstSeen"] is None
