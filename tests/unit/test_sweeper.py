"""The sweep's shell (shared.sweeper) on in-memory fakes: what a run enqueues and reports, and its invariants under
listing failures, storage failures and crashes at every side-effect boundary, with repeats of the same run."""

from __future__ import annotations

import itertools
import json
import re
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import sweeper
from shared.config import Settings
from shared.errors import ThrottledError, TransientError
from shared.ids import is_guid
from shared.messages import iso, parse_deletion_request, parse_iso
from shared.service import Deps
from shared.sweep import FIRST_SEEN_PARTITION, PROBES, RunTime, Searches, SearchJob, correlation_id
from shared.sweeper import SweepFailedError, handle_sweep, search
from tests.fakes import Clock, FakePublisher, FakeTable

T3 = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
PROTECTED = "0f0e0d0c-0b0a-4909-8807-060504030201"
REPORTS = "customer-sweep-reports"
REQUESTS = "customer-deletions"


class Crash(BaseException):
    """The host died here (not an Exception: nothing in the app may catch it)."""


class FakeListing:
    def __init__(self, items, fail=None):
        self.items, self.fail, self.calls = items, fail, []

    def list_customers(self, *, correlation_id, budget=None, stop_after=None):
        self.calls.append((correlation_id, stop_after))
        if self.fail is not None:
            raise self.fail
        return list(self.items)


class CrashingPublisher(FakePublisher):
    """Fails or crashes at the n-th send, before or after the message is stored."""

    def __init__(self, at=None, when="before", kind="crash"):
        super().__init__()
        self.at, self.when, self.kind, self.n, self.hit_queue = at, when, kind, 0, None

    def send(self, queue, data, *, delay=0, time_to_live=-1):
        self.n += 1
        hit = self.n == self.at
        if hit:
            self.hit_queue = queue
        if hit and self.when == "before":
            raise Crash() if self.kind == "crash" else OSError("storage unavailable")
        message_id = super().send(queue, data, delay=delay, time_to_live=time_to_live)
        if hit:
            raise Crash() if self.kind == "crash" else OSError("answer lost")
        return message_id


def aged_table(items, age=timedelta(days=30), now=T3):
    """A first-seen record in which every listed GUID was first seen ``age`` before ``now``."""
    table = FakeTable()
    for i in items:
        cid = i.get("id") if isinstance(i, dict) else None
        if is_guid(cid):
            table.seed({"PartitionKey": FIRST_SEEN_PARTITION, "RowKey": cid.lower(), "firstSeen": iso(now - age)})
    return table


def make_deps(tmp_path, pc, publisher, clock, table=None):
    """Deps of a sweep; without ``table``, a record in which every customer ``pc`` lists is 30 days old (so the
    minimum age selects them all, and the tests of other rules are not about it)."""
    settings = Settings.from_env(
        {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "PROTECTED_CUSTOMER_IDS": PROTECTED}, app_root=tmp_path
    )
    if table is None:
        table = aged_table(getattr(pc, "items", []))
    return Deps(
        settings=settings,
        partner_center=pc,
        publisher=publisher,
        clock=clock,
        monotonic=clock.monotonic,
        tables=table,
    )


def timer(past_due=False, status=None):
    return SimpleNamespace(past_due=past_due, schedule_status=status or {})


def item(cid, name, domain=""):
    return {"id": cid, "companyProfile": {"tenantId": cid, "companyName": name, "domain": domain}}


def sweep_env(**values):
    return {"SWEEP_SCHEDULE": "0 0 3 * * *", **values}


def test_report_mode_lists_and_changes_nothing(tmp_path):
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    pub, pc = FakePublisher(), FakeListing([item(a, "Tip test 1"), item(b, "Contoso")])
    outcome = handle_sweep(timer(), "inv", make_deps(tmp_path, pc, pub, Clock(T3)), env=sweep_env(SWEEP_INCLUDE="^tip"))
    assert outcome.result == "reported" and pub.on(REQUESTS) == []
    (report,) = pub.json_on(REPORTS)
    assert (
        [s["customerTenantId"] for s in report["selected"]] == [a]
        and report["enqueued"] == []
        and report["mode"] == "report"
    )
    assert pc.calls == [(report["runId"], 75)]


def test_delete_mode_enqueues_public_requests_with_run_correlation_ids(tmp_path):
    ids = sorted(str(uuid.uuid4()) for _ in range(3))
    pub = FakePublisher()
    outcome = handle_sweep(
        timer(),
        "inv",
        make_deps(tmp_path, FakeListing([item(i, "Tip") for i in ids]), pub, Clock(T3 + timedelta(seconds=1))),
        env=sweep_env(SWEEP_INCLUDE="tip", SWEEP_MODE="delete", SWEEP_MAX_PER_RUN="2"),
    )
    requests = [parse_deletion_request(raw, message_id="m", insertion_time=None, now=T3) for raw, _ in pub.on(REQUESTS)]
    run = RunTime(T3, "schedule", "")
    drawn = sorted(ids, key=lambda i: correlation_id(run, i))[:2]  # this run's draw, enqueued in listing order
    assert [(r.customer_id, r.correlation_id, r.dry_run) for r in requests] == [
        (i, correlation_id(run, i), False) for i in ids if i in drawn
    ]
    (report,) = pub.json_on(REPORTS)
    assert report["deferred"] == 1 and len(report["enqueued"]) == 2 and outcome.result == "enqueued"
    assert pub.sent[-1][0] == REPORTS  # the report is written after the requests


@pytest.mark.parametrize(
    "fail",
    [
        TransientError(503, "800003", "Unexpected service error", method="GET", path="/v1/customers"),
        ThrottledError(429, None, "Rate limit is exceeded.", retry_after=30.0),
    ],
)
def test_a_listing_that_fails_enqueues_nothing_reports_why_and_fails_the_invocation(tmp_path, fail):
    pub = FakePublisher()
    with pytest.raises(SweepFailedError, match="listing the customers failed"):
        handle_sweep(
            timer(),
            "inv",
            make_deps(tmp_path, FakeListing([], fail=fail), pub, Clock(T3)),
            env=sweep_env(SWEEP_INCLUDE="tip", SWEEP_MODE="delete"),
        )
    (report,) = pub.json_on(REPORTS)
    assert (
        pub.on(REQUESTS) == [] and report["result"] == "failed" and "partial list is never acted on" in report["error"]
    )


def test_setting_problems_list_nothing_and_are_all_in_the_report(tmp_path):
    pub, pc = FakePublisher(), FakeListing([item(str(uuid.uuid4()), "Tip")])
    with pytest.raises(SweepFailedError):
        handle_sweep(
            timer(),
            "inv",
            make_deps(tmp_path, pc, pub, Clock(T3)),
            env={
                "SWEEP_MODE": "delete",
                "SWEEP_SCHEDULE": "0 3 * * *",
                "SWEEP_EXCLUDE": "(",
                "SWEEP_REPORTS_QUEUE": "X",
            },
        )
    (report,) = pub.json_on(REPORTS)
    assert pc.calls == [] and pub.on(REQUESTS) == [] and report["result"] == "refused" and len(report["problems"]) == 4


def test_off_lists_nothing_and_still_reports(tmp_path):
    pub, pc = FakePublisher(), FakeListing([])
    assert (
        handle_sweep(timer(), "inv", make_deps(tmp_path, pc, pub, Clock(T3)), env=sweep_env(SWEEP_MODE="off")).result
        == "off"
    )
    assert pc.calls == [] and pub.json_on(REPORTS)[0]["result"] == "off"


def test_decisions_are_logged_one_line_each_with_hostile_names_escaped(tmp_path, caplog):
    a = str(uuid.uuid4())
    hostile = "Tip\nFAKE LOG LINE\x1b[2K\u202eevil"
    caplog.set_level("INFO", logger="customer_deletion.sweep")
    handle_sweep(
        timer(),
        "inv",
        make_deps(tmp_path, FakeListing([item(a, hostile), item("x", "Tip")]), FakePublisher(), Clock(T3)),
        env=sweep_env(SWEEP_INCLUDE="tip"),
    )
    lines = [r.getMessage() for r in caplog.records]
    decision_lines = [line for line in lines if "->" in line]
    assert len(decision_lines) == 2 and all(
        "\n" not in line and "\x1b" not in line and "\u202e" not in line for line in lines
    )
    assert any(a in line and "-> selected" in line for line in decision_lines)


# -- invariants, with crashes and repeats ------------------------------------------------------------------------------


def searched_here(job, timeout=None):
    """shared.sweeper.search without the child process, for the property below (hundreds of runs with the harmless
    patterns "tip" and "keep"); test_the_child_finds_what_re_finds_here shows that both give the same results."""
    if job is None:
        return None
    compiled = {p: re.compile(p, re.IGNORECASE) for p in job.patterns}
    return Searches(
        job,
        {p: frozenset(t for t in job.texts if c.search(t)) for p, c in compiled.items()},
        {
            p: frozenset(t for t in job.texts if any(m.end() == m.start() for m in c.finditer(t)))
            for p, c in compiled.items()
        }
        if job.zero_width
        else {},
    )


@pytest.fixture
def in_process_search(monkeypatch):
    monkeypatch.setattr(sweeper, "search", searched_here)


class CrashingTable(FakeTable):
    """The first write of one kind kills the host once: "crash-insert" or "crash-delete" after the write is stored
    (its answer never arrives), "crash-insert-before" before it is sent."""

    def __init__(self, crash=None):
        super().__init__()
        self.crash, self.crashed = crash, 0

    def _maybe(self, op, write):
        if self.crash in (f"crash-{op}", f"crash-{op}-before") and not self.crashed:
            self.crashed = 1
            if not self.crash.endswith("-before"):
                write()
            raise Crash()
        write()

    def insert(self, row):
        self._maybe("insert", lambda: FakeTable.insert(self, row))

    def delete(self, partition, row_key, etag):
        self._maybe("delete", lambda: FakeTable.delete(self, partition, row_key, etag))


def valid_listing(items, cid):
    """Whether ``cid`` is listed with an id and profile the sweep accepts as a customer (so it is recorded)."""
    for i in items:
        raw = i["id"]
        if is_guid(raw) and raw.lower() == cid:
            tenant = i["companyProfile"].get("tenantId")
            return tenant is None or tenant.lower() == cid
    return False


#: How long before the run the record shows each customer first seen (None: not in the record).
AGES = st.sampled_from([None, 0, 23, 24, 200, "bad"])  # "bad": a row whose time cannot be read
NAMES = st.sampled_from(["Tip test", "tip run", "Contoso", "Tip keep", "", "TIP\n", "x" * 300 + "tip"])
IDS = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.just(PROTECTED),
    st.just(PROTECTED.upper()),
    st.sampled_from(["not-a-guid", "{" + PROTECTED + "}", ""]),
)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    customers=st.lists(st.tuples(IDS, NAMES, AGES), max_size=12),
    gone=st.lists(st.uuids().map(str), max_size=3),
    limit=st.integers(5, 12),
    per_run=st.integers(1, 6),
    listing_fails=st.booleans().map(lambda b: b and "fails"),
    crash_at=st.one_of(st.none(), st.integers(1, 8)),
    when=st.sampled_from(["before", "after"]),
    kind=st.sampled_from(["crash", "error"]),
    table_fault=st.sampled_from(
        [None, "query", "insert", "delete", "replace", "crash-insert", "crash-insert-before", "crash-delete"]
    ),
    repeats=st.integers(1, 3),
)
def test_sweep_invariants_under_crashes_and_repeats(
    in_process_search,
    tmp_path,
    customers,
    gone,
    limit,
    per_run,
    listing_fails,
    crash_at,
    when,
    kind,
    table_fault,
    repeats,
):
    """Whatever the list, the record, the failures and the crashes (before or after any queue put or table write),
    over repeats of one scheduled run:
    1. only customers the policy selects are ever enqueued (never protected, invalid, unmatched, excluded or too long);
    2. no run enqueues more than SWEEP_MAX_PER_RUN, and none enqueues anything from a failed or oversized listing;
    3. every request is the public format with correlation id uuid5("<run time>/<customer>"), the same on every repeat;
    4. a run that is not killed writes exactly one report, last, and it names exactly what that run enqueued (a failure
       to store the report fails the invocation: nothing else does, apart from a refused or failed run);
    5. a clean repeat enqueues the same customers as any other clean run;
    6. no customer the record did not show as first seen at least SWEEP_MIN_AGE_HOURS before the run is enqueued,
       and nothing is enqueued by a run that could not read the record;
    7. the record only ever holds lower-case GUIDs, every one listed validly or recorded before, and a readable time
       once recorded never changes; a customer gone from the list is pruned by a run that completes its writes
       (unless no customer at all is listed validly)."""
    items = [item(cid, name) for cid, name, _ in customers]
    table = CrashingTable(table_fault if table_fault and table_fault.startswith("crash") else None)
    for cid, _, age in customers + [(g, "", 100) for g in gone]:
        if is_guid(cid) and age is not None:
            table.seed(
                {
                    "PartitionKey": FIRST_SEEN_PARTITION,
                    "RowKey": cid.lower(),
                    "firstSeen": "not a time" if age == "bad" else iso(T3 - timedelta(hours=age)),
                }
            )
    before = {k: r["firstSeen"] for (_, k), r in table.rows.items()}
    old_enough = {k for k, t in before.items() if t != "not a time" and T3 - parse_iso(t) >= timedelta(hours=24)}
    listed_ids = {cid.lower() for cid, _, _ in customers if is_guid(cid)}
    env = sweep_env(
        SWEEP_INCLUDE="tip",
        SWEEP_EXCLUDE="keep",
        SWEEP_MODE="delete",
        SWEEP_MAX_PER_RUN=str(per_run),
        SANDBOX_CUSTOMER_LIMIT=str(limit),
    )
    run = RunTime(T3, "schedule", "")
    eligible = {
        cid.lower()
        for cid, name, _ in customers
        if is_guid(cid)
        and cid.lower() != PROTECTED
        and len(name) <= 256
        and re.search("tip", name, re.I)
        and not re.search("keep", name, re.I)
        and cid.lower() in old_enough
    }
    clean_sets = []
    for attempt in range(repeats):
        table.fail = (
            {table_fault} if attempt == 0 and table_fault in ("query", "insert", "delete", "replace") else set()
        )
        pub = CrashingPublisher(crash_at if attempt == 0 else None, when, kind)
        pc = FakeListing(items, fail=TransientError(503, None, "down") if listing_fails and attempt == 0 else None)
        started = T3 + timedelta(seconds=attempt * 20)  # a repeat of the same occurrence (the timer's at-least-once)
        deps = make_deps(tmp_path, pc, pub, Clock(started), table=table)
        crashed = False
        try:
            handle_sweep(timer(past_due=attempt > 0), f"inv-{attempt}", deps, env=env)
        except SweepFailedError:
            pass
        except Crash:
            crashed = True
        except OSError:  # storage failed writing the report itself: the invocation fails (nothing else may)
            assert pub.hit_queue == REPORTS
            crashed = True
        requests = [
            parse_deletion_request(raw, message_id="m", insertion_time=None, now=T3) for raw, _ in pub.on(REQUESTS)
        ]
        enqueued = [r.customer_id for r in requests]
        assert set(enqueued) <= eligible  # 1
        assert len(enqueued) <= per_run and len(set(enqueued)) == len(enqueued)  # 2
        if (listing_fails and attempt == 0) or len(items) > limit:
            assert enqueued == []  # 2
        if "query" in table.fail:
            assert enqueued == []  # 6
        assert all(r.correlation_id == correlation_id(run, r.customer_id) and not r.dry_run for r in requests)  # 3
        reports = pub.json_on(REPORTS)
        if not crashed:
            assert len(reports) == 1 and pub.sent[-1][0] == REPORTS  # 4
            named = [e["customerTenantId"] for e in reports[0]["enqueued"]]
            # an answer lost after a stored put: the message exists although the run could not name it
            assert named == enqueued or (kind == "error" and when == "after" and named == enqueued[:-1])
            if reports[0]["result"] in ("enqueued", "reported"):
                clean_sets.append(frozenset(enqueued))
        else:  # killed: a report only if it was stored just before the end
            assert reports == [] or (len(reports) == 1 and pub.sent[-1][0] == REPORTS and when == "after")
        last_clean = not crashed and bool(reports) and reports[0]["result"] in ("enqueued", "reported")
        recorded = {k: r["firstSeen"] for (_, k), r in table.rows.items()}
        assert all(is_guid(k) and k == k.lower() and (k in listed_ids or k in before) for k in recorded)  # 7
        assert all(recorded[k] == t for k, t in before.items() if k in recorded and t != "not a time")  # 7
        assert all(t in ("not a time", iso(T3)) for k, t in recorded.items() if before.get(k) == "not a time")
        assert all(t == iso(T3) for k, t in recorded.items() if k not in before)  # 7: this run's time
    assert len(set(clean_sets)) <= 1  # 5
    if clean_sets and len(items) <= limit:
        assert clean_sets[0] == frozenset(sorted(eligible, key=lambda i: correlation_id(run, i))[:per_run])
    if last_clean and not table.fail:  # the last run completed its writes
        valid = {d for d in listed_ids if valid_listing(items, d)}
        # with no valid customer listed, nothing is pruned (an empty page is no proof that all are gone)
        assert set(table.partition(FIRST_SEEN_PARTITION)) == (valid or set(before))  # 7


def test_off_wins_over_setting_problems_and_a_report_no_queue_can_take_is_logged(tmp_path, caplog):
    pub, pc = FakePublisher(), FakeListing([])
    outcome = handle_sweep(
        timer(), "inv", make_deps(tmp_path, pc, pub, Clock(T3)), env=sweep_env(SWEEP_MODE="off", SWEEP_INCLUDE="(")
    )
    assert outcome.result == "off" and pc.calls == [] and pub.json_on(REPORTS)[0]["problems"]
    settings_env = {"SWEEP_SCHEDULE": "0 0 3 * * *", "SWEEP_REPORTS_QUEUE": REQUESTS}
    deps = make_deps(tmp_path, pc, FakePublisher(), Clock(T3))
    deps.settings = Settings.from_env(
        {
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "DELETE_CUSTOMER_QUEUE": REPORTS,
            "POLL_ORDERS_QUEUE": "p-queue",
            "DELETION_OUTCOMES_QUEUE": "o-queue",
        },
        app_root=tmp_path,
    )
    settings_env["SWEEP_REPORTS_QUEUE"] = "p-queue"
    with pytest.raises(SweepFailedError):
        handle_sweep(timer(), "inv", deps, env=settings_env)
    assert deps.publisher.sent == [] and any("no queue can take the report" in r.getMessage() for r in caplog.records)


def test_a_null_schedule_status_as_older_azure_functions_reads_it_is_no_status(tmp_path):
    pub = FakePublisher()
    # azure-functions 1.20 gives None for "ScheduleStatus": null
    lone = SimpleNamespace(past_due=False, schedule_status=None)
    handle_sweep(
        lone, "inv", make_deps(tmp_path, FakeListing([]), pub, Clock(T3 + timedelta(seconds=3))), env=sweep_env()
    )
    assert pub.json_on(REPORTS)[0]["trigger"] == "schedule"


# -- the patterns run in a child process, under a time limit -----------------------------------------------------------

CATASTROPHIC = "(a+)+$"
HOSTILE = "a" * 40 + "!"  # (a+)+$ tries about 2**40 ways to split the a's before it gives up: hours, holding the GIL


def test_the_child_finds_what_re_finds_here():
    texts = (*PROBES, "Tip test run 7", "KEEP me", "tiptest7.onmicrosoft.com", "\u202eevil\x00\ud800", "")
    for job in (
        SearchJob(("tip", "keep", r"\b", "^$", "x*"), texts, zero_width=True),
        SearchJob(("^tip test", "onmicrosoft"), texts),
    ):
        assert search(job) == searched_here(job)


def test_a_catastrophic_pattern_on_a_hostile_name_is_refused_at_the_time_limit_while_other_threads_run(tmp_path):
    """In this process, re.search("(a+)+$", "a"*40 + "!") holds the GIL for hours: every other thread of the worker,
    delete_customer's and poll_orders' invocations, would stop. The search runs in a child process killed at the limit,
    and the run is refused with a report; a thread of this process keeps ticking all along."""
    ticks, stop = [], threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    pub = FakePublisher()
    deps = make_deps(tmp_path, FakeListing([item(a, HOSTILE), item(b, "aaa")]), pub, Clock(T3))
    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    began = time.monotonic()
    try:
        with pytest.raises(SweepFailedError, match="did not finish"):
            handle_sweep(
                timer(), "inv", deps, env=sweep_env(SWEEP_INCLUDE=CATASTROPHIC, SWEEP_MODE="delete"), match_seconds=1.5
            )
        took = time.monotonic() - began
    finally:
        stop.set()
        thread.join()
    assert 1.5 <= took < 6, took  # the limit, then at once (the probe texts themselves are quick for this pattern)
    during = [t for t in ticks if began + 0.2 <= t <= began + 1.4]
    # the other thread never stalled
    assert len(during) > 30 and max(b - a for a, b in itertools.pairwise(during)) < 0.5
    (report,) = pub.json_on(REPORTS)
    assert (
        pub.on(REQUESTS) == []
        and report["result"] == "refused"
        and report["selected"] == []
        and report["enqueued"] == []
    )
    assert "stopped at the time limit of 1.5 s" in report["error"] and "nested repetition" in report["error"]


def test_a_pattern_that_hangs_on_the_probe_texts_is_a_setting_problem_and_nothing_is_listed(tmp_path):
    pub, pc = FakePublisher(), FakeListing([item(str(uuid.uuid4()), "Tip")])
    # (.|.)*x: 2**37 ways on the longest probe text
    with pytest.raises(SweepFailedError, match="settings have problems"):
        handle_sweep(
            timer(),
            "inv",
            make_deps(tmp_path, pc, pub, Clock(T3)),
            env=sweep_env(SWEEP_EXCLUDE="(.|.)*x"),
            match_seconds=1.0,
        )
    (report,) = pub.json_on(REPORTS)
    assert pc.calls == [] and report["result"] == "refused"
    assert report["problems"] == [
        (
            "SWEEP_EXCLUDE could not be tried on test texts (stopped at the time limit of 1 s); a pattern with "
            "nested repetition, such as (a+)+$, can take hours on some texts"
        )
    ]


def test_a_child_that_cannot_run_gives_no_results_and_the_run_is_refused(tmp_path, monkeypatch):
    job = SearchJob(("tip",), ("Tip",))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))  # the interpreter shared.sweeper starts
    missing = search(job)
    assert missing is not None and missing.failure == "the child process could not run (FileNotFoundError)"
    monkeypatch.setattr(sys, "executable", "/bin/false")
    failing = search(job)
    assert failing is not None and failing.failure == "the child process ended with exit status 1"
    pub = FakePublisher()
    with pytest.raises(SweepFailedError, match="could not be tried"):
        handle_sweep(
            timer(), "inv", make_deps(tmp_path, FakeListing([]), pub, Clock(T3)), env=sweep_env(SWEEP_INCLUDE="tip")
        )
    assert pub.json_on(REPORTS)[0]["result"] == "refused"


# -- every run gets a report -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["listing", "planning"])
def test_an_unexpected_error_still_writes_a_report_naming_only_its_type(tmp_path, monkeypatch, caplog, where):
    secret = "Bearer eyJ0eXAiOiJKV1QiLCJhbGciOi.secret"
    pc = FakeListing([item(str(uuid.uuid4()), "Tip")], fail=ValueError(secret) if where == "listing" else None)
    if where == "planning":

        def broken(*args, **kwargs):
            raise KeyError(secret)

        monkeypatch.setattr(sweeper, "plan", broken)
    pub = FakePublisher()
    caplog.set_level("INFO", logger="customer_deletion.sweep")
    with pytest.raises(SweepFailedError, match="failed before enqueueing anything"):
        handle_sweep(
            timer(),
            "inv",
            make_deps(tmp_path, pc, pub, Clock(T3)),
            env=sweep_env(SWEEP_INCLUDE="tip", SWEEP_MODE="delete"),
        )
    (report,) = pub.json_on(REPORTS)
    kind = "ValueError" if where == "listing" else "KeyError"
    assert report["result"] == "failed" and kind in report["error"] and pub.on(REQUESTS) == []
    assert secret not in json.dumps(report) and not any(secret in r.getMessage() for r in caplog.records)
    assert any(kind in r.getMessage() for r in caplog.records if r.levelname == "ERROR")


def test_the_listing_budget_reads_the_deps_clock(tmp_path):
    seen = []

    class Slow(FakeListing):
        def list_customers(self, *, correlation_id, budget=None, stop_after=None):
            seen.append(budget.may_start_call())
            clock.advance(sweeper.LISTING_WORK_SECONDS + 1)  # only the deps' clock moves
            seen.append(budget.may_start_call())
            return []

    clock = Clock(T3)
    handle_sweep(
        timer(), "inv", make_deps(tmp_path, Slow([]), FakePublisher(), clock), env=sweep_env(SWEEP_INCLUDE="tip")
    )
    assert seen == [True, False]


# -- the minimum age, end to end in the shell --------------------------------------------------------------------------


def test_the_first_run_after_a_deploy_selects_nothing_and_the_next_days_run_selects_by_the_record(tmp_path):
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    table, env = FakeTable(), sweep_env(SWEEP_INCLUDE="tip", SWEEP_MODE="delete")
    day1 = FakePublisher()
    handle_sweep(timer(), "inv", make_deps(tmp_path, FakeListing([item(a, "Tip 1")]), day1, Clock(T3), table), env=env)
    (report,) = day1.json_on(REPORTS)
    assert day1.on(REQUESTS) == [] and [e["reason"] for e in report["excluded"]] == ["too_new"]
    assert "first run after a deploy" in report["selection"] and report["firstSeen"]["recorded"] == 1
    assert {k: r["firstSeen"] for k, r in table.partition(FIRST_SEEN_PARTITION).items()} == {a: iso(T3)}
    # a day later, started 40 s late: a is 24 h old by the runs' times; b, created since, is new
    day2, later = FakePublisher(), T3 + timedelta(days=1, seconds=40)
    listing = FakeListing([item(a, "Tip 1"), item(b, "Tip 2")])
    handle_sweep(timer(), "inv", make_deps(tmp_path, listing, day2, Clock(later), table), env=env)
    requests = [
        parse_deletion_request(raw, message_id="m", insertion_time=None, now=T3) for raw, _ in day2.on(REQUESTS)
    ]
    assert [r.customer_id for r in requests] == [a]
    (report,) = day2.json_on(REPORTS)
    assert [(e["customerTenantId"], e["reason"]) for e in report["excluded"]] == [(b, "too_new")]
    assert "first run after a deploy" not in report["selection"]
    # a third day: a is gone (deleted), so the record forgets it
    day3 = FakePublisher()
    listing = FakeListing([item(b, "Tip 2")])
    handle_sweep(timer(), "inv", make_deps(tmp_path, listing, day3, Clock(T3 + timedelta(days=2)), table), env=env)
    assert set(table.partition(FIRST_SEEN_PARTITION)) == {b} and day3.json_on(REPORTS)[0]["firstSeen"]["pruned"] == 1


def test_a_record_that_cannot_be_read_enqueues_nothing_and_fails_the_run_with_the_reason(tmp_path):
    a = str(uuid.uuid4())
    table = aged_table([item(a, "Tip")])
    table.fail = {"query"}
    pub = FakePublisher()
    with pytest.raises(SweepFailedError, match="first-seen record cannot be read"):
        handle_sweep(
            timer(),
            "inv",
            make_deps(tmp_path, FakeListing([item(a, "Tip")]), pub, Clock(T3), table),
            env=sweep_env(SWEEP_INCLUDE="tip", SWEEP_MODE="delete"),
        )
    (report,) = pub.json_on(REPORTS)
    assert pub.on(REQUESTS) == [] and report["result"] == "refused" and "query failed" in report["error"]
    assert report["firstSeen"]["known"] is None


def test_a_record_write_that_fails_is_reported_and_the_old_enough_customers_are_still_enqueued(tmp_path):
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    table = aged_table([item(a, "Tip")])
    table.fail = {"insert"}
    pub = FakePublisher()
    outcome = handle_sweep(
        timer(),
        "inv",
        make_deps(tmp_path, FakeListing([item(a, "Tip"), item(b, "Tip")]), pub, Clock(T3), table),
        env=sweep_env(SWEEP_INCLUDE="tip", SWEEP_MODE="delete"),
    )
    (report,) = pub.json_on(REPORTS)
    assert outcome.result == "enqueued" and [e["customerTenantId"] for e in report["enqueued"]] == [a]
    assert "only partly updated" in report["firstSeen"]["error"] and report["firstSeen"]["recorded"] == 0


def test_without_a_table_and_with_a_minimum_age_nothing_is_selected(tmp_path):
    a = str(uuid.uuid4())
    deps = make_deps(tmp_path, FakeListing([item(a, "Tip")]), FakePublisher(), Clock(T3))
    deps.tables = None
    with pytest.raises(SweepFailedError, match="no table is configured"):
        handle_sweep(timer(), "inv", deps, env=sweep_env(SWEEP_INCLUDE="tip", SWEEP_MODE="delete"))
    deps.publisher = FakePublisher()
    handle_sweep(timer(), "inv", deps, env=sweep_env(SWEEP_INCLUDE="tip", SWEEP_MODE="delete", SWEEP_MIN_AGE_HOURS="0"))
    assert len(deps.publisher.on(REQUESTS)) == 1


def test_a_row_whose_time_cannot_be_read_is_too_new_and_rewritten_at_this_runs_time(tmp_path):
    a = str(uuid.uuid4())
    table = FakeTable()
    table.seed({"PartitionKey": FIRST_SEEN_PARTITION, "RowKey": a, "firstSeen": "2026-13-45T99:00:00Z"})
    pub = FakePublisher()
    handle_sweep(
        timer(),
        "inv",
        make_deps(tmp_path, FakeListing([item(a, "Tip")]), pub, Clock(T3 + timedelta(seconds=3)), table),
        env=sweep_env(SWEEP_INCLUDE="tip", SWEEP_MODE="delete"),
    )
    (report,) = pub.json_on(REPORTS)
    assert pub.on(REQUESTS) == [] and [e["reason"] for e in report["excluded"]] == ["too_new"]
    assert table.partition(FIRST_SEEN_PARTITION)[a]["firstSeen"] == iso(T3) and report["firstSeen"]["recorded"] == 1


def test_record_writes_stop_at_their_time_limit_and_the_requests_still_go(tmp_path, monkeypatch):
    old, new = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(3)]
    table = aged_table([item(old, "Tip")])
    clock = Clock(T3)
    real_insert = table.insert

    def slow_insert(row):
        clock.advance(40)  # each write takes 40 s
        real_insert(row)

    table.insert = slow_insert
    pub = FakePublisher()
    listing = FakeListing([item(old, "Tip"), *(item(n, "Tip") for n in new)])
    handle_sweep(
        timer(),
        "inv",
        make_deps(tmp_path, listing, pub, clock, table),
        env=sweep_env(SWEEP_INCLUDE="tip", SWEEP_MODE="delete"),
    )
    (report,) = pub.json_on(REPORTS)
    assert [e["customerTenantId"] for e in report["enqueued"]] == [old]
    assert report["firstSeen"]["recorded"] == 2 and "1 write(s) left after 60 s" in report["firstSeen"]["error"]


def test_every_run_prunes_the_ledgers_finished_rows_past_the_retention_whatever_the_mode(tmp_path):
    from shared import ledger

    table = FakeTable()
    customer, old_corr, new_corr = (str(uuid.uuid4()) for _ in range(3))
    rows = {}
    for corr, finished in ((old_corr, T3 - timedelta(days=31)), (new_corr, T3 - timedelta(days=29))):
        key = ledger.request_key(customer, corr, finished, False)
        assert key is not None
        text = json.dumps({"eventId": key.event_id, "outcome": "deleted"})
        plan = ledger.on_finish(None, key, outcome="deleted", event=text, poison="none", now=finished)
        assert isinstance(plan, ledger.Insert)
        table.insert(plan.row)
        rows[corr] = key.event_id
    for mode in ("off", "report"):
        pub = FakePublisher()
        handle_sweep(
            timer(), "inv", make_deps(tmp_path, FakeListing([]), pub, Clock(T3), table), env=sweep_env(SWEEP_MODE=mode)
        )
        (report,) = pub.json_on(REPORTS)
        assert report["ledger"]["retentionDays"] == 30 and report["ledger"]["error"] is None
        assert set(table.partition(customer)) == {rows[new_corr]}
    table.fail = {"query"}
    pub = FakePublisher()
    with pytest.raises(SweepFailedError):  # the record cannot be read either: that refuses the run
        handle_sweep(timer(), "inv", make_deps(tmp_path, FakeListing([]), pub, Clock(T3), table), env=sweep_env())
    assert "could not be pruned" in pub.json_on(REPORTS)[0]["ledger"]["error"]
