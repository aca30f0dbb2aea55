"""The request ledger: its pure core (shared.ledger) as a table of cases, and the service's use of it on fakes: an
outcome decided once and published again unchanged, a decided request that makes no call, a table fault that
publishes nothing, progress recorded for the status API."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from shared import config, ledger, service
from shared.config import Settings
from shared.messages import OrderState, PollMessage, event_id, iso
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


CLAIM = 150.0


def start(row, hop=1, *, invocation="inv-a", now=T, chain=None, legacy=False):
    return ledger.on_hop_start(
        row,
        KEY,
        hop=hop,
        chain=chain if chain is not None else message(hop - 1 if hop else 0),
        invocation=invocation,
        now=now,
        claim_seconds=CLAIM,
        legacy=legacy,
    )


def message(attempt=0, **changes):
    base = PollMessage(CUSTOMER, CORRELATION, (), attempt, T, T, stage="discover")
    return replace(base, **changes)


def claimed(row=None, hop=1, **kw):
    """The row as the claim of ``hop`` writes it."""
    plan = start(row, hop, **kw)
    assert isinstance(plan, ledger.Claim), plan
    return {**plan.write.row, "etag": f"e{hop}"}


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
    assert start(row) == later
    assert ledger.on_handover(row, KEY, hop=3) == later


def test_the_first_hop_claims_by_inserting_the_row_with_its_first_handling():
    plan = start(None, 0, chain=message(0, first_handled_at=T - timedelta(seconds=5)))
    assert isinstance(plan, ledger.Claim) and isinstance(plan.write, ledger.Insert)
    row = plan.write.row
    assert (row["hop"], row["claimBy"], row["claimUntil"]) == (0, "inv-a", iso(T + timedelta(seconds=CLAIM)))
    assert row["firstHandledAt"] == iso(T - timedelta(seconds=5)) and row["deletingAt"] == ""


def test_a_live_claim_of_another_invocation_reschedules_the_message_for_after_it():
    row = claimed(hop=2)
    wait = start(row, 2, invocation="inv-b", now=T + timedelta(seconds=10))
    assert isinstance(wait, ledger.Wait) and wait.holder == "inv-a"
    assert wait.delay == CLAIM - 10 + 1 and wait.until == T + timedelta(seconds=CLAIM)
    # the holder is an earlier hop, which releases right after it sent this message: look again soon
    early = start(row, 3, invocation="inv-b", now=T + timedelta(seconds=10))
    assert isinstance(early, ledger.Wait) and early.delay == ledger.EARLIER_HOP_RECHECK_SECONDS
    # once the claim has run out (its invocation died), the next message claims it: no chain is ever dropped
    taken = start(row, 2, invocation="inv-b", now=T + timedelta(seconds=CLAIM))
    assert isinstance(taken, ledger.Claim) and taken.write.row["claimBy"] == "inv-b"
    assert isinstance(taken.write, ledger.Replace) and taken.write.etag == "e2"


def test_a_message_completes_without_a_call_only_when_a_later_hop_exists_or_its_own_hop_ran_to_its_end():
    row = claimed(hop=4)
    assert isinstance(start(row, 3, invocation="inv-b"), ledger.Done)  # a later hop claimed the row
    assert isinstance(ledger.on_handover(row, KEY, hop=3), ledger.Done)
    released = ledger.on_release(
        row, KEY, invocation="inv-a", message=message(4), message_text=message(4).to_text(), next_step_at=T, now=T
    )
    assert isinstance(released, ledger.Replace) and released.row["claimUntil"] == ""
    after = {**released.row, "etag": "e9"}
    done = start(after, 4, invocation="inv-b")  # hop 4 sent hop 5's message, then released: a twin of 4 has no work
    assert isinstance(done, ledger.Done) and "ran to its end" in done.why
    assert isinstance(start(after, 5, invocation="inv-c"), ledger.Claim)  # hop 5 works
    assert isinstance(ledger.on_handover(after, KEY, hop=5), ledger.Proceed)


def test_the_row_is_the_state_for_the_hop_it_was_left_for():
    row = claimed(hop=1, chain=message(0, first_handled_at=T - timedelta(seconds=40)))
    sent = message(1, orders=(OrderState("a" * 33, "pending"),), stage="poll", customer_seen=True)
    plan = ledger.on_release(
        row, KEY, invocation="inv-a", message=sent, message_text=sent.to_text(), next_step_at=T, now=T
    )
    assert plan is not None
    after = {**plan.row, "etag": "e5"}
    assert after["stateHop"] == 2
    twin = message(1, recoveries=1, cause="recovery")  # a hand-over's copy of hop 2, with other hints
    claim = start(after, 2, invocation="inv-b", chain=twin)
    assert isinstance(claim, ledger.Claim) and claim.chain is not None
    assert claim.chain.orders == sent.orders and claim.chain.recoveries == 1 and claim.chain.cause == "recovery"
    assert claim.chain.first_handled_at == T - timedelta(seconds=40)  # the row's first handling, not the message's
    forged = message(7, first_handled_at=T + timedelta(seconds=600))  # another hop: only the first handling is taken
    claim = start(after, 8, invocation="inv-c", chain=forged)
    assert isinstance(claim, ledger.Claim) and claim.chain is not None
    assert claim.chain.first_handled_at == T - timedelta(seconds=40) and claim.chain.attempt == 7


def test_the_deleting_write_needs_the_claim_and_records_when_a_delete_was_decided():
    row = claimed(hop=3)
    later = T + timedelta(seconds=20)
    plan = ledger.on_deleting(row, KEY, invocation="inv-a", now=later, claim_seconds=CLAIM)
    assert isinstance(plan, ledger.Replace) and plan.etag == "e3"
    assert (plan.row["stage"], plan.row["deletingAt"]) == ("deleting", iso(later))
    assert plan.row["claimUntil"] == iso(later + timedelta(seconds=CLAIM))  # it covers the DELETE call
    assert ledger.on_deleting(row, KEY, invocation="inv-b", now=later, claim_seconds=CLAIM) is None
    assert ledger.on_deleting(stored_row(), KEY, invocation="inv-a", now=later, claim_seconds=CLAIM) is None
    # a DELETE whose answer was lost keeps the mark when the claim is released, and every later hop's state has it
    marked = {**plan.row, "etag": "e4"}
    lost = message(3, deleting_at=later)
    released = ledger.on_release(
        marked, KEY, invocation="inv-a", message=lost, message_text=lost.to_text(), next_step_at=T, now=T
    )
    assert released is not None and released.row["deletingAt"] == iso(later)
    claim = start({**released.row, "etag": "e5"}, 4, invocation="inv-b")
    assert isinstance(claim, ledger.Claim) and claim.chain is not None and claim.chain.deleting_at == later
    # a DELETE Partner Center answered (refused) cannot land later: the hop's state clears the mark
    answered = ledger.on_release(
        marked, KEY, invocation="inv-a", message=message(3), message_text=message(3).to_text(), next_step_at=T, now=T
    )
    assert answered is not None and answered.row["deletingAt"] == ""


def test_a_message_of_the_previous_release_marks_a_delete_possibly_in_flight():
    plan = start(None, 3, legacy=True)
    assert isinstance(plan, ledger.Claim) and plan.write.row["deletingAt"] == iso(T)
    assert plan.chain is not None and plan.chain.deleting_at == T
    row = {**stored_row(), "outcome": None, "event": None, "hop": 1, "claimUntil": "", "deletingAt": ""}
    plan = start(row, 3, legacy=True)
    assert isinstance(plan, ledger.Claim) and plan.write.row["deletingAt"] == iso(T)


def test_a_finish_under_a_claim_another_invocation_took_publishes_nothing():
    row = {**claimed(hop=3), "claimBy": "inv-b"}
    lost = ledger.on_finish(row, KEY, outcome="timed_out", event=event(), poison="none", now=T, invocation="inv-a")
    assert isinstance(lost, ledger.Done)
    mine = ledger.on_finish(
        {**row, "claimBy": "inv-a"}, KEY, outcome="deleted", event=event(), poison="none", now=T, invocation="inv-a"
    )
    assert isinstance(mine, ledger.Replace) and mine.row["outcome"] == "deleted" and mine.row["claimUntil"] == ""


def test_a_release_without_the_claim_writes_nothing():
    row = claimed(hop=2)
    text = message(2).to_text()
    kw = {"message": message(2), "message_text": text, "next_step_at": T, "now": T}
    assert ledger.on_release(row, KEY, invocation="inv-b", **kw) is None
    assert ledger.on_release(stored_row(), KEY, invocation="inv-a", **kw) is None
    assert ledger.on_release({**row, "claimUntil": ""}, KEY, invocation="inv-a", **kw) is None


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
        start(row),
        ledger.on_handover(row, KEY, hop=1),
        ledger.on_finish(row, KEY, outcome="deleted", event=event(), poison="none", now=T),
    ):
        assert isinstance(plan, ledger.Unrelated) and why in plan.why
    running = {**claimed(hop=1), **change}
    assert ledger.on_deleting(running, KEY, invocation="inv-a", now=T, claim_seconds=CLAIM) is None


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
    assert isinstance(start({**stored_row(), **change}), ledger.Unrelated)


def test_a_large_event_is_kept_in_two_properties_and_read_back_whole():
    big = json.dumps({"eventId": KEY.event_id, "outcome": "failed", "detail": "x" * 45_000})
    plan = ledger.on_finish(None, KEY, outcome="failed", event=big, poison="equivalent", now=T)
    assert isinstance(plan, ledger.Insert)
    assert len(plan.row["event"]) == ledger.EVENT_PART_CHARS and plan.row["event"] + plan.row["event2"] == big
    assert start({**plan.row, "etag": "e"}) == ledger.Republish(big, "equivalent", "failed")
    too_big = ledger.on_finish(None, KEY, outcome="failed", event="x" * 60_001, poison="none", now=T)
    assert isinstance(too_big, ledger.Unrelated) and "more than a row holds" in too_big.why


def test_a_stored_poison_that_is_not_a_poison_copy_is_not_trusted():
    assert isinstance(start({**stored_row(), "poison": "everything"}), ledger.Unrelated)


def test_the_claim_outlasts_one_invocations_longest_work_and_runs_out_before_the_hosts_lease(tmp_path):
    """CLAIM_SECONDS' two bounds. Lower: a live hop never loses its claim to a hop that thinks it dead. Upper: a
    message whose invocation died comes back after the host's lease (10 minutes), when its claim has run out, so a
    redelivery never waits for a dead claim."""
    for env in (
        {},
        {"INVOCATION_WORK_SECONDS": "120", "PARTNER_CENTER_RETRY_BUDGET_SECONDS": "30"},
        {
            "INVOCATION_WORK_SECONDS": "120",
            "PARTNER_CENTER_RETRY_BUDGET_SECONDS": "30",
            "PARTNER_CENTER_TIMEOUT_SECONDS": "300",
        },
        {
            "INVOCATION_WORK_SECONDS": "1",
            "PARTNER_CENTER_RETRY_BUDGET_SECONDS": "0",
            "PARTNER_CENTER_TIMEOUT_SECONDS": "1",
        },
    ):
        s = Settings.from_env({**ENV, **env}, app_root=tmp_path)
        one_call = config.TOKEN_SECONDS + config.CONNECT_TIMEOUT_SECONDS + s.read_timeout
        work = s.work_seconds + s.retry_budget + one_call + config.TABLE_CALL_SECONDS
        assert work < s.claim_seconds < config.QUEUE_LEASE_SECONDS, (env, s.claim_seconds)
        assert service.policy_for(s).settle == s.claim_seconds
    assert config.TABLE_CALL_SECONDS == 16.5  # two attempts at 3 + 5 s, one pause of 0.5 s (shared.app)
    assert Settings.from_env(ENV, app_root=tmp_path).claim_seconds == 101.5  # 10 + 4 + (31 + 5 + 30) + 16.5 + 5


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
    # the hand-over reads the row first: the outcome is decided, so it is published again and nothing is handed over
    assert deps.publisher.on(POLLS) == []
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
    assert poll["cause"] == "outage" and "request ledger could not be used" in poll["causeDetail"]
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

    real_replace = table.replace

    def replace_(row, etag):
        if down["on"]:
            raise TableError("503 (fake)")
        return real_replace(row, etag)

    table.get, table.replace = get, replace_
    real_insert = table.insert

    def insert(row):
        etag = real_insert(row)
        down["on"] = True  # after the first hop's claim, the table goes down
        return etag

    table.insert = insert
    handle_deletion_request(request(dry_run=True), "inv1", deps)  # no exception
    assert deps.publisher.on(OUTCOMES) == []
    ((body, _),) = deps.publisher.on(POLLS)
    assert "could not take the outcome dry_run" in json.loads(body)["causeDetail"]
    down["on"] = False
    table.insert = real_insert
    table.rows[(CUSTOMER, event_id(CORRELATION, T, dry_run=True))]["claimUntil"] = ""  # the claim ran out meanwhile
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
    # the row is the state: the message it left for the next hop, and its claim released
    assert row["state"] == body.decode() and row["stateHop"] == 1 and row["claimUntil"] == ""
    assert json.loads(body)["requestRow"] == event_id(CORRELATION, T)


def test_a_release_that_fails_is_logged_and_the_request_goes_on(tmp_path, caplog):
    deps, pc = world(tmp_path, orders={"b" * 33: FakeOrder("completed")}, table=FakeTable(fail={"replace"}))
    handle_deletion_request(request(), "inv1", deps)
    assert len(deps.publisher.on(POLLS)) == 1 and pc.calls  # claimed by the insert; the release failed
    assert "was not released" in caplog.text


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


# -- claims, through the service ---------------------------------------------------------------------------------------


def first_poll(deps):
    """Run the request's first hop; return its poll message's text and delay."""
    handle_deletion_request(request(), "inv1", deps)
    ((body, delay),) = deps.publisher.on(POLLS)
    return body, delay


def test_a_twin_message_waits_for_a_live_claim_and_makes_no_call(tmp_path):
    deps, pc = world(tmp_path, orders={"b" * 33: FakeOrder("completed")})
    body, _ = first_poll(deps)
    row_key = (CUSTOMER, event_id(CORRELATION, T))
    # another invocation claimed hop 1 a moment ago and is still working on it
    deps.tables.rows[row_key].update(hop=1, claimBy="inv-other", claimUntil=iso(T + timedelta(seconds=100)))
    calls = len(pc.calls)
    handle_poll(queue_message(body, id="p1", dequeue_count=1, inserted=T), "inv2", deps)
    assert len(pc.calls) == calls and deps.publisher.on(OUTCOMES) == []
    again, delay = deps.publisher.on(POLLS)[-1]
    assert again == body and delay == 101  # the same message, back just after the claim runs out


def test_a_message_whose_hop_already_ran_completes_without_a_call(tmp_path):
    deps, pc = world(tmp_path, orders={"b" * 33: FakeOrder("completed")})
    body, _ = first_poll(deps)
    handle_poll(queue_message(body, id="p1", dequeue_count=1, inserted=T), "inv2", deps)
    sent, calls = len(deps.publisher.on(POLLS)), len(pc.calls)
    # the host died after hop 1 sent hop 2's message: hop 1's message comes back, as a twin
    handle_poll(queue_message(body, id="p1", dequeue_count=1, inserted=T), "inv3", deps)
    assert len(deps.publisher.on(POLLS)) == sent and len(pc.calls) == calls


def test_no_delete_is_sent_once_another_invocation_took_the_claim(tmp_path):
    deps, pc = world(tmp_path, orders={"b" * 33: FakeOrder("cancelled")})
    body, _ = first_poll(deps)
    table = deps.tables
    real_replace = table.replace

    def replace_(row, etag):
        if row.get("stage") == "deleting":  # another invocation claimed the row just before this hop's mark
            raise TableConflictError("changed (fake)")
        return real_replace(row, etag)

    table.replace = replace_
    handle_poll(queue_message(body, id="p1", dequeue_count=1, inserted=T), "inv2", deps)
    assert pc.count("delete_customer") == 0 and deps.publisher.on(OUTCOMES) == []
    nxt = json.loads(deps.publisher.on(POLLS)[-1][0])
    assert nxt["cause"] == "outage" and "another invocation claimed" in nxt["causeDetail"]
    table.replace = real_replace
    row = table.rows[(CUSTOMER, event_id(CORRELATION, T))]
    row["claimUntil"] = ""  # that invocation's claim ran out
    deps.clock.advance(60)
    handle_poll(queue_message(json.dumps(nxt), id="p2", dequeue_count=1, inserted=T), "inv3", deps)
    assert pc.count("delete_customer") == 1 and json.loads(deps.publisher.on(OUTCOMES)[0][0])["outcome"] == "deleted"
    decided = table.rows[(CUSTOMER, event_id(CORRELATION, T))]
    assert decided["deletingAt"] == iso(T + timedelta(seconds=60)) and decided["outcome"] == "deleted"


def test_an_unreadable_poll_message_during_a_table_outage_comes_back_as_it_was(tmp_path):
    deps, pc = world(tmp_path, table=FakeTable(fail={"get", "insert", "replace"}))
    body = json.dumps({"schemaVersion": 1, "kind": "poll", "customerTenantId": CUSTOMER, "correlationId": CORRELATION})
    handle_poll(queue_message(body.encode(), id="p1", dequeue_count=1, inserted=T), "inv1", deps)
    assert pc.calls == [] and deps.publisher.on(OUTCOMES) == []
    ((again, delay),) = deps.publisher.on(POLLS)
    assert again in (body, body.encode()) and delay == 30


class _Died(BaseException):
    """The host killed the invocation."""


def test_a_redelivery_ends_the_claim_its_own_dead_delivery_held_so_the_hand_over_need_not_wait(tmp_path):
    deps, pc = world(tmp_path, orders={"b" * 33: FakeOrder("completed")})
    body, _ = first_poll(deps)
    real = pc.get_order

    def dies(*args, **kwargs):
        raise _Died()

    pc.get_order = dies
    with pytest.raises(_Died):  # hop 1 claimed the row, then its host was killed
        handle_poll(queue_message(body, id="p1", dequeue_count=1, inserted=T), "inv2", deps)
    row_key = (CUSTOMER, event_id(CORRELATION, T))
    assert deps.tables.rows[row_key]["claimBy"] == "inv2" and deps.tables.rows[row_key]["claimMessage"] == "p1"
    pc.get_order = real
    deps.clock.advance(30)  # the lease ran out: the same message again, a hand-over
    handle_poll(queue_message(body, id="p1", dequeue_count=2, inserted=T), "inv3", deps)
    assert deps.tables.rows[row_key]["claimUntil"] == iso(T + timedelta(seconds=30))  # ended, not released
    handed, _ = deps.publisher.on(POLLS)[-1]
    calls = len(pc.calls)
    handle_poll(queue_message(handed, id="p2", dequeue_count=1, inserted=T), "inv4", deps)
    assert len(pc.calls) > calls and deps.tables.rows[row_key]["claimBy"] == "inv4"  # it worked, without waiting
    # another message's redelivery never ends a live claim
    live = {**claimed(hop=2), "claimMessage": "p1"}
    assert ledger.on_handover(live, KEY, hop=2, message_id="p9", now=T + timedelta(seconds=10)) == ledger.Proceed()
    ended = ledger.on_handover(live, KEY, hop=2, message_id="p1", now=T + timedelta(seconds=10))
    assert isinstance(ended, ledger.Proceed) and ended.expire is not None and ended.expire.etag == "e2"


def test_slow_table_calls_before_the_first_call_take_from_the_work_time_not_from_the_claim(tmp_path):
    """The claim runs CLAIM_SECONDS from a moment after the work budget started, so no call starts after the claim
    could have run out, however slow the row's read and claim were."""
    deps, pc = world(tmp_path, orders={"b" * 33: FakeOrder("completed")})
    ticks = {"t": 0.0}
    deps.monotonic = lambda: ticks["t"]
    table = deps.tables
    real_get = table.get

    def slow_get(partition, row_key):
        ticks["t"] += deps.settings.work_seconds  # the read alone takes the whole work time
        return real_get(partition, row_key)

    table.get = slow_get
    handle_deletion_request(request(), "inv1", deps)
    assert pc.calls == []  # claimed, but no call started: the rest goes to the next hop
    ((body, _),) = deps.publisher.on(POLLS)
    assert json.loads(body)["cause"] == "out_of_time"
