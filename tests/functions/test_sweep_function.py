"""sweep_customers' ``main`` called with a real ``azure.functions.TimerRequest`` (built by the library's own timer
converter, as the Python worker builds it) against Azurite and the emulator over real HTTPS."""

from __future__ import annotations

import json
import threading
import time
import types
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableServiceClient
from azure.functions import meta
from azure.functions.timer import TimerRequest, TimerRequestConverter

import delete_customer
import sweep_customers
from shared import app
from shared.config import reset_settings
from shared.sweeper import SweepFailedError
from tests.functions import receive
from tools import devenv
from tools.local_host.host import decode_base64_strict


def timer_request(past_due=False, status=None) -> TimerRequest:
    """What the worker hands a v1 timer function: the host's TimerInfo JSON through TimerRequestConverter."""
    data = {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": status, "IsPastDue": past_due}
    request = TimerRequestConverter.decode(meta.Datum(json.dumps(data), "json"), trigger_metadata={})
    assert isinstance(request, TimerRequest)
    return request


@pytest.fixture
def sweep_env(monkeypatch, azurite, pc):
    names = devenv.unique_queues("s")
    reports = names["DELETE_CUSTOMER_QUEUE"].replace("-req", "-rep")
    tag = uuid.uuid4().hex[:8]
    settings = {
        "AzureWebJobsStorage": azurite,
        **names,
        **pc.app_settings(),
        "SWEEP_SCHEDULE": "0 0 3 * * *",
        "SWEEP_REPORTS_QUEUE": reports,
        "SWEEP_INCLUDE": f"^sweep {tag} ",
        "SANDBOX_CUSTOMER_LIMIT": "1000",
        "DELETION_REQUESTS_TABLE": f"sweep{tag}",  # each test its own first-seen record
    }
    table = TableServiceClient.from_connection_string(azurite).get_table_client(f"sweep{tag}")

    def seed(customers, hours):
        """The record as an earlier run left it: these customers first seen ``hours`` before now."""
        table.create_table()
        for c in customers:
            seen = (datetime.now(UTC) - timedelta(hours=hours)).isoformat(timespec="milliseconds")
            table.create_entity({"PartitionKey": "sweepfirstseen", "RowKey": c["id"], "firstSeen": seen[:-6] + "Z"})

    def recorded():
        return {e["RowKey"]: e["firstSeen"] for e in table.query_entities("PartitionKey eq 'sweepfirstseen'")}

    def apply(**extra):
        for key, value in {**settings, **extra}.items():
            monkeypatch.setenv(key, value)
        reset_settings()
        app.set_deps(None)

    apply()
    yield types.SimpleNamespace(
        tag=tag, reports=reports, apply=apply, seed=seed, recorded=recorded, **{k.lower(): v for k, v in names.items()}
    )
    reset_settings()
    app.set_deps(None)


def context():
    return types.SimpleNamespace(invocation_id=str(uuid.uuid4()))


def reports(queues, name):
    return [json.loads(decode_base64_strict(m.content)) for m in queues.drain(name)]


def test_a_scheduled_report_run_lists_and_changes_nothing(sweep_env, queues, pc, make_customer):
    mine = [
        make_customer(companyName=f"Sweep {sweep_env.tag} run {i}", domain=f"sweep{sweep_env.tag}{i}.onmicrosoft.com")
        for i in range(2)
    ]
    sweep_env.seed(mine, hours=48)
    now = datetime.now(UTC)
    status = {
        "Last": (now - timedelta(days=1)).isoformat(),
        "Next": (now - timedelta(seconds=1)).isoformat(),
        "LastUpdated": now.isoformat(),
    }
    sweep_customers.main(timer_request(status=status), context())
    (report,) = reports(queues, sweep_env.reports)
    assert report["mode"] == "report" and report["trigger"] == "schedule" and report["result"] == "reported"
    assert sorted(s["customerTenantId"] for s in report["selected"]) == sorted(c["id"] for c in mine)
    assert report["capacity"]["listed"] == len(pc.state()["customers"]) and report["enqueued"] == []
    assert queues.count(sweep_env.delete_customer_queue) == 0
    assert not any(c["id"] in pc.state()["deleted"] for c in mine)


def test_a_manual_delete_run_enqueues_ordinary_requests_that_delete_customer_processes(
    sweep_env, queues, pc, make_customer
):
    mine = make_customer(companyName=f"Sweep {sweep_env.tag} doomed", domain="doomed.onmicrosoft.com")
    sweep_env.seed([mine], hours=25)
    sweep_env.apply(SWEEP_MODE="delete")
    nxt = (datetime.now(UTC) + timedelta(hours=5)).isoformat()  # an admin call gets the stored status: Next ahead
    sweep_customers.main(timer_request(status={"Next": nxt}), context())
    (report,) = reports(queues, sweep_env.reports)
    assert report["trigger"] == "manual" and [e["customerTenantId"] for e in report["enqueued"]] == [mine["id"]]
    msg, _ = receive(queues, sweep_env.delete_customer_queue)
    request = json.loads(msg.get_body())
    assert request == {
        "customerTenantId": mine["id"],
        "correlationId": report["enqueued"][0]["correlationId"],
        "dryRun": False,
    }
    delete_customer.main(msg, context())  # the deletion itself is the ordinary one
    assert queues.count(sweep_env.poll_orders_queue) == 1


def test_a_customer_created_a_minute_ago_is_spared_and_recorded_in_the_real_table(sweep_env, queues, make_customer):
    """The minimum age against Azurite's table service: a customer the record shows 25 h old is enqueued, one just
    created (a running test's) is too_new and recorded at this run's time, and a recorded customer that is gone is
    pruned."""
    old = make_customer(companyName=f"Sweep {sweep_env.tag} old")
    new = make_customer(companyName=f"Sweep {sweep_env.tag} new")
    gone = {"id": str(uuid.uuid4())}
    sweep_env.seed([old, gone], hours=25)
    sweep_env.apply(SWEEP_MODE="delete")
    sweep_customers.main(
        timer_request(status={"Next": (datetime.now(UTC) + timedelta(hours=5)).isoformat()}), context()
    )
    (report,) = reports(queues, sweep_env.reports)
    assert [e["customerTenantId"] for e in report["enqueued"]] == [old["id"]]
    too_new = [e for e in report["excluded"] if e["reason"] == "too_new"]
    assert [e["customerTenantId"] for e in too_new] == [new["id"]] and "not seen by the sweep" in too_new[0]["detail"]
    recorded = sweep_env.recorded()
    assert set(recorded) >= {old["id"], new["id"]} and gone["id"] not in recorded
    assert recorded[new["id"]] == report["runTime"] and report["firstSeen"]["pruned"] == 1
    assert report["firstSeen"]["table"] == f"sweep{sweep_env.tag}" and report["minAgeHours"] == 24


def test_broken_sweep_settings_fail_only_the_sweep(sweep_env, queues, pc, make_customer):
    target = make_customer(companyName=f"Sweep {sweep_env.tag} untouched")
    sweep_env.apply(
        SWEEP_MODE="delete",
        SWEEP_INCLUDE="(",
        SWEEP_EXCLUDE=".*",
        SWEEP_SCHEDULE="every night",
        SWEEP_MAX_PER_RUN="lots",
        SANDBOX_CUSTOMER_LIMIT="0",
    )
    before = len(pc.requests_log())
    with pytest.raises(SweepFailedError, match="settings have problems"):
        sweep_customers.main(timer_request(), context())
    (report,) = reports(queues, sweep_env.reports)
    assert report["result"] == "refused" and len(report["problems"]) == 5 and len(pc.requests_log()) == before
    # The deletion functions read none of those settings.
    queues.ensure(sweep_env.delete_customer_queue)
    queues.send(sweep_env.delete_customer_queue, json.dumps({"customerTenantId": target["id"], "dryRun": True}))
    msg, _ = receive(queues, sweep_env.delete_customer_queue)
    delete_customer.main(msg, context())
    (event,) = [json.loads(decode_base64_strict(m.content)) for m in queues.drain(sweep_env.deletion_outcomes_queue)]
    assert event["outcome"] == "dry_run"


@pytest.mark.slow(seconds=10)
def test_a_catastrophic_pattern_refuses_the_sweep_while_delete_customer_keeps_working(
    sweep_env, queues, pc, make_customer
):
    """SWEEP_INCLUDE=(a+)+$ and a company name built for it: in the worker's process the search would hold the GIL for
    hours and stop every invocation. The sweep searches in a child process, so a deletion request is handled while the
    sweep waits, and the sweep is refused at its time limit with a report."""
    make_customer(companyName="a" * 40 + "!")
    target = make_customer(companyName=f"Sweep {sweep_env.tag} untouched")
    sweep_env.apply(SWEEP_MODE="delete", SWEEP_INCLUDE="(a+)+$")
    failures, done = [], threading.Event()

    def sweep():
        try:
            sweep_customers.main(timer_request(), context())
        except SweepFailedError as exc:
            failures.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=sweep, daemon=True)
    began, started = time.monotonic(), time.time()
    thread.start()
    devenv.wait_for(  # the sweep has listed (and then waits for its child)
        lambda: any(
            r["method"] == "GET" and r["path"] == "/v1/customers" and r["status"] == 200 and r["t"] >= started
            for r in pc.requests_log()
        ),
        20,
        what="the sweep's listing",
    )
    queues.ensure(sweep_env.delete_customer_queue)
    queues.send(sweep_env.delete_customer_queue, json.dumps({"customerTenantId": target["id"], "dryRun": True}))
    msg, _ = receive(queues, sweep_env.delete_customer_queue)
    delete_customer.main(msg, context())
    (event,) = [json.loads(decode_base64_strict(m.content)) for m in queues.drain(sweep_env.deletion_outcomes_queue)]
    assert event["outcome"] == "dry_run" and not done.is_set()  # handled while the sweep was still waiting
    thread.join(timeout=60)
    assert done.is_set() and time.monotonic() - began < 30
    assert len(failures) == 1 and "did not finish" in str(failures[0])
    (report,) = reports(queues, sweep_env.reports)
    assert report["result"] == "refused" and report["enqueued"] == [] and report["selected"] == []
