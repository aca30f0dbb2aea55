"""The request ledger: its pure core (shared.ledger) as a table of cases, and the service's use of it on fakes: an
outcome decided once and published again unchanged, a decided request that makes no call, a table fault that
publishes nothing, progress recorded for the status API."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared import ledger
from shared.config import Settings
from shared.messages import event_id, iso
from shared.service import Deps, handle_deletion_request, handle_poll
from shared.tables import TableConflictError, TableError
from tests.fakes import Clock, FakeCustomer, FakeOrder, FakePartnerCenter, FakePublisher, FakeTable, queue_message

T = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
CUSTOMER, CORRELATION = str(uuid.UUID(int=0xC1)), str(uuid.UUID(int=0xC2))


def _key() -> ledger.RequestKey:
    key = ledger.request_key(CUSTOMER, CORRELATION, T, False)
    assert key is not None
    return key


KEY = _key()


def event(outcome="deleted", finished=T, key=KEY):
    return json.dumps({"eventId": key.event_id, "outcome": outcome, "finishedAt": iso(finished)})


def stored_row(outcome="deleted", **changes):
    plan = ledger.on_finish(None, KEY, outcome=outcome, event=event(outcome), poison="none", now=T)
    assert isinstance(plan, ledger.Insert)
    return {**plan.row, "etag": "e1", **changes}


def test_the_key_is_the_customer_and_the_event_id_and_only_guids_get_one():
    assert (KEY.customer_id, KEY.event_id) == (CUSTOMER, event_id(CORRELATION, T))
    upper = ledger.request_key(CUSTOMER.upper(), CORRELATION.upper(), T, True)
    assert upper is not None and upper.customer_id == CUSTOMER and upper.correlation_id == CORRELATION
    for customer, correlation in ((None, CORRELATION), ("x", CORRELATION), (CUSTOMER, None), (CUSTOMER, "../x")):
        assert ledger.request_key(customer, correlation, T, False) is None


def test_the_first_finish_inserts_the_outcome_and_every_later_one_republishes_it():
    first = ledger.on_finish(None, KEY, outcome="timed_out", event=event("timed_out"), poison="equivalent", now=T)
    assert isinstance(first, ledger.Insert)
    row = {**first.row, "etag": "e1"}
    assert (row["PartitionKey"], row["RowKey"], row["outcome"], row["stage"]) == (
        CUSTOMER,
        KEY.event_id,
        "timed_out",
        "finished",
    )
    later = ledger.on_finish(row, KEY, outcome="deleted", event=event("deleted"), poison="none", now=T)
    assert later == ledger.Republish(event("timed_out"), "equivalent", "timed_out")
    assert ledger.on_hop_start(row, KEY) == later


def test_a_row_with_progress_only_is_replaced_with_the_outcome_on_its_etag():
    progress = ledger.on_progress(None, KEY, stage="poll", hop=1, next_step_at=T + timedelta(seconds=30), now=T)
    assert isinstance(progress, ledger.Insert) and progress.row["nextStepAt"] == iso(T + timedelta(seconds=30))
    row = {**progress.row, "etag": "e7"}
    assert ledger.on_hop_start(row, KEY) == ledger.Proceed()
    plan = ledger.on_finish(row, KEY, outcome="deleted", event=event(), poison="none", now=T)
    assert isinstance(plan, ledger.Replace) and plan.etag == "e7" and plan.row["outcome"] == "deleted"
    assert "etag" not in plan.row and plan.row["hop"] == 1


@pytest.mark.parametrize(
    "change, why",
    [
        ({"correlationId": str(uuid.UUID(int=9))}, "another correlation id"),
        ({"dryRun": True}, "dryRun differs"),
        ({"requestedAt": iso(T + timedelta(seconds=1))}, "requestedAt differs"),
        ({"schemaVersion": 2}, "schema version 2"),
        ({"RowKey": str(uuid.UUID(int=8))}, "keys differ"),
    ],
)
def test_a_row_that_is_not_this_requests_is_never_used(change, why):
    """A row never turns a dry run into a real request, nor one request into another."""
    row = stored_row(**change)
    for plan in (
        ledger.on_hop_start(row, KEY),
        ledger.on_finish(row, KEY, outcome="deleted", event=event(), poison="none", now=T),
    ):
        assert isinstance(plan, ledger.Unrelated) and why in plan.why
    assert ledger.on_progress(row, KEY, stage="poll", hop=2, next_step_at=T, now=T) is None


@pytest.mark.parametrize(
    "change",
    [
        {"event": "not json"},
        {"event": None},
        {"poison": None},
        {"outcome": "failed"},  # the event says deleted
        {"event": json.dumps({"eventId": str(uuid.UUID(int=7)), "outcome": "deleted"})},  # another request's event
    ],
)
def test_a_stored_outcome_that_cannot_be_read_is_not_republished(change):
    assert isinstance(ledger.on_hop_start({**stored_row(), **change}, KEY), ledger.Unrelated)


def test_progress_never_overwrites_an_outcome_or_a_later_hop():
    assert ledger.on_progress(stored_row(), KEY, stage="poll", hop=3, next_step_at=T, now=T) is None
    later = {**stored_row(), "outcome": None, "event": None, "hop": 5}
    assert ledger.on_progress(later, KEY, stage="poll", hop=4, next_step_at=T, now=T) is None
    assert isinstance(ledger.on_progress(later, KEY, stage="poll", hop=5, next_step_at=T, now=T), ledger.Replace)


def test_a_large_event_is_kept_in_two_properties_and_read_back_whole():
    big = json.dumps({"eventId": KEY.event_id, "outcome": "failed", "detail": "x" * 45_000})
    plan = ledger.on_finish(None, KEY, outcome="failed", event=big, poison="equivalent", now=T)
    assert isinstance(plan, ledger.Insert)
    assert len(plan.row["event"]) == ledger.EVENT_PART_CHARS and plan.row["event"] + plan.row["event2"] == big
    assert ledger.on_hop_start({**plan.row, "etag": "e"}, KEY) == ledger.Republish(big, "equivalent", "failed")
    too_big = ledger.on_finish(None, KEY, outcome="failed", event="x" * 60_001, poison="none", now=T)
    assert isinstance(too_big, ledger.Unrelated) and "more than a row holds" in too_big.why


def test_a_stored_poison_that_is_not_a_poison_copy_is_not_trusted():
    assert isinstance(ledger.on_hop_start({**stored_row(), "poison": "everything"}, KEY), ledger.Unrelated)


# -- the service, on fakes --------------------------------------------------------------------------------------------

ENV = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "POLL_INTERVAL_SECONDS": "30"}
OUTCOMES, POLLS = "customer-deletion-outcomes", "customer-deletion-polls"


def world(tmp_path, *, orders=None, table=None):
    pc = FakePartnerCenter()
    pc.customers[CUSTOMER] = FakeCustomer(orders or {})
    deps = Deps(
        settings=Settings.from_env(ENV, app_root=tmp_path),
        partner_center=pc,
        publisher=FakePublisher(),
        clock=Clock(T),
        tables=table if table is not None else FakeTable(),
    )
    return deps, pc


def request(dry_run=False, delivery=1, inserted=T):
    body = json.dumps({"customerTenantId": CUSTOMER, "correlationId": CORRELATION, "dryRun": dry_run})
    return queue_message(body.encode(), id="m1", dequeue_count=delivery, inserted=inserted)


def test_a_redelivery_after_the_outcome_was_written_republishes_it_unchanged_and_calls_nothing(tmp_path):
    deps, pc = world(tmp_path)
    handle_deletion_request(request(dry_run=True), "inv1", deps)
    (first,) = deps.publisher.on(OUTCOMES)
    calls = len(pc.calls)
    deps.clock.advance(120)
    # the host died after the outcome was sent, before it completed the message: the same message again
    handle_deletion_request(request(dry_run=True, delivery=2), "inv2", deps)
    polls = deps.publisher.on(POLLS)
    assert len(polls) == 1  # a redelivery hands over, as before; the next hop finds the outcome decided
    handle_poll(queue_message(polls[0][0], id="p1", dequeue_count=1, inserted=T), "inv3", deps)
    assert deps.publisher.on(OUTCOMES) == [first, first] and len(pc.calls) == calls
    row = deps.tables.get(CUSTOMER, event_id(CORRELATION, T, dry_run=True))
    assert row is not None and row["outcome"] == "dry_run" and row["event"] == first[0].decode()


def test_a_sibling_that_decides_differently_publishes_the_first_outcome(tmp_path):
    deps, _ = world(tmp_path)
    key = ledger.request_key(CUSTOMER, CORRELATION, T, False)
    assert key is not None
    deps.tables.insert(stored_row("timed_out"))
    handle_deletion_request(request(), "inv1", deps)  # this hop would delete the customer
    ((body, _),) = deps.publisher.on(OUTCOMES)
    assert json.loads(body)["outcome"] == "timed_out" and body.decode() == event("timed_out")
    assert deps.partner_center.calls == []  # a decided request makes no call


def test_a_table_that_cannot_be_read_before_the_first_call_continues_on_the_poll_queue_and_calls_nothing(tmp_path):
    table = FakeTable(fail={"get"})
    deps, pc = world(tmp_path, table=table)
    handle_deletion_request(request(), "inv1", deps)  # no exception: the invocation succeeds
    ((body, delay),) = deps.publisher.on(POLLS)
    poll = json.loads(body)
    assert pc.calls == [] and deps.publisher.on(OUTCOMES) == [] and delay >= 1
    assert poll["cause"] == "outage" and "request ledger could not be read" in poll["causeDetail"]
    table.fail = set()  # the table is back: the next hop works
    handle_poll(queue_message(body, id="p1", dequeue_count=1, inserted=T), "inv2", deps)
    assert pc.calls  # it called Partner Center this time


def test_a_protected_request_during_a_table_outage_is_rejected_without_the_ledger(tmp_path):
    deps, pc = world(tmp_path, table=FakeTable(fail={"get", "insert", "replace"}))
    deps.settings = Settings.from_env({**ENV, "PROTECTED_CUSTOMER_IDS": CUSTOMER}, app_root=tmp_path)
    handle_deletion_request(request(), "inv1", deps)
    ((body, _),) = deps.publisher.on(OUTCOMES)
    assert json.loads(body)["outcome"] == "rejected" and pc.calls == []


def test_a_table_that_cannot_take_the_outcome_continues_the_request_and_publishes_nothing_yet(tmp_path):
    deps, _ = world(tmp_path, orders={"a" * 33: FakeOrder("cancelled")})
    table = deps.tables
    real_get = table.get
    down = {"on": False}

    def get(partition, row_key):
        if down["on"]:
            raise TableError("503 (fake)")
        return real_get(partition, row_key)

    table.get = get
    real_insert = table.insert

    def insert(row):
        real_insert(row)
        down["on"] = True  # after the first hop's progress row, the table goes down

    table.insert = insert
    handle_deletion_request(request(dry_run=True), "inv1", deps)  # no exception
    assert deps.publisher.on(OUTCOMES) == []
    ((body, _),) = deps.publisher.on(POLLS)
    assert "could not take the outcome dry_run" in json.loads(body)["causeDetail"]
    down["on"] = False
    table.insert = real_insert
    handle_poll(queue_message(body, id="p1", dequeue_count=1, inserted=T), "inv2", deps)
    ((event_body, _),) = deps.publisher.on(OUTCOMES)
    assert json.loads(event_body)["outcome"] == "dry_run"


def test_a_lost_answer_of_the_outcomes_write_finds_its_own_outcome_and_publishes_it(tmp_path):
    """The SDK retried an insert whose answer was lost; the retry met the first attempt (409). A fresh read shows the
    outcome is this hop's own: it is published, once."""
    deps, _ = world(tmp_path)
    table = deps.tables
    real_insert = table.insert

    def insert(row):
        real_insert(row)
        raise TableConflictError("the retry met its own first attempt (fake)")

    table.insert = insert
    handle_deletion_request(request(dry_run=True), "inv1", deps)
    ((body, _),) = deps.publisher.on(OUTCOMES)
    assert json.loads(body)["outcome"] == "dry_run"
    assert table.get(CUSTOMER, event_id(CORRELATION, T, dry_run=True))["event"] == body.decode()


def test_each_poll_message_sent_records_the_stage_the_hop_and_the_next_steps_time(tmp_path):
    deps, _ = world(tmp_path, orders={"b" * 33: FakeOrder("completed")})
    handle_deletion_request(request(), "inv1", deps)
    ((body, delay),) = deps.publisher.on(POLLS)
    row = deps.tables.get(CUSTOMER, event_id(CORRELATION, T))
    assert row is not None and "outcome" not in row and "event" not in row
    assert row["stage"] == json.loads(body)["stage"] and row["hop"] == json.loads(body)["attempt"]
    assert row["nextStepAt"] == iso(T + timedelta(seconds=delay)) and row["dryRun"] is False


def test_a_progress_write_that_fails_is_logged_and_the_request_goes_on(tmp_path, caplog):
    deps, _ = world(tmp_path, orders={"b" * 33: FakeOrder("completed")}, table=FakeTable(fail={"insert"}))
    handle_deletion_request(request(), "inv1", deps)
    assert len(deps.publisher.on(POLLS)) == 1
    assert "progress was not recorded" in caplog.text


# -- retention ---------------------------------------------------------------------------------------------------------


def test_finished_rows_older_than_the_retention_are_pruned_oldest_first_and_running_ones_never():
    before = ledger.prune_before(T, 30)
    assert before == T - timedelta(days=30)
    old = {**stored_row(), "finishedAt": iso(before - timedelta(seconds=1)), "etag": "e-old"}
    older = {
        **stored_row(),
        "RowKey": str(uuid.UUID(int=5)),
        "finishedAt": iso(before - timedelta(days=9)),
        "etag": "e2",
    }
    fresh = {**stored_row(), "finishedAt": iso(before), "etag": "e3"}  # exactly at the bound: kept
    running = {**stored_row(), "event": None, "outcome": None, "finishedAt": iso(before - timedelta(days=1))}
    no_etag = {k: v for k, v in old.items() if k != "etag"}
    foreign = {"PartitionKey": "sweepfirstseen", "RowKey": CUSTOMER, "finishedAt": iso(before - timedelta(days=1))}
    upper = {**old, "PartitionKey": CUSTOMER.upper()}
    plan = ledger.prune_plan([old, fresh, running, no_etag, foreign, upper, older], before)
    assert plan == [(CUSTOMER, older["RowKey"], "e2"), (CUSTOMER, KEY.event_id, "e-old")]


def test_a_run_prunes_at_most_its_share():
    before = ledger.prune_before(T, 1)
    rows = [
        {**stored_row(), "RowKey": str(uuid.UUID(int=i + 100)), "finishedAt": iso(before - timedelta(minutes=i))}
        for i in range(ledger.MAX_PRUNED_PER_RUN + 10)
    ]
    assert len(ledger.prune_plan(rows, before)) == ledger.MAX_PRUNED_PER_RUN


def test_a_dry_run_and_a_real_request_in_the_same_second_are_two_requests_with_two_rows(tmp_path):
    """Same correlation id, same insertion second: different eventIds, so a row never turns one into the other."""
    dry, real = ledger.request_key(CUSTOMER, CORRELATION, T, True), ledger.request_key(CUSTOMER, CORRELATION, T, False)
    assert dry is not None and real is not None and dry.event_id != real.event_id
    deps, _ = world(tmp_path)
    handle_deletion_request(request(dry_run=True), "inv1", deps)
    handle_deletion_request(request(dry_run=False), "inv2", deps)  # not the dry run's row: it works
    ((poll, _),) = deps.publisher.on(POLLS)
    handle_poll(queue_message(poll, id="p1", dequeue_count=1, inserted=T), "inv3", deps)
    outcomes = [json.loads(b) for b, _ in deps.publisher.on(OUTCOMES)]
    assert [o["outcome"] for o in outcomes] == ["dry_run", "deleted"]
    assert outcomes[0]["eventId"] == dry.event_id and outcomes[1]["eventId"] == real.event_id
