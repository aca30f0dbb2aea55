"""The sweep end to end through the local host: scheduled and admin-started runs, a listing that fails on page 3, a
full sandbox with SWEEP_MAX_PER_RUN below the number selected (and the deletions it starts), and a sandbox over its
limit. The sweep lists every customer of the partner, so these tests have an emulator of their own."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableServiceClient

from shared.sweep import RunTime, correlation_id
from tests.integration.conftest import FAST_HOST
from tools import devenv
from tools.local_host.host import decode_base64_strict

EMPTY = {"partner": json.loads(devenv.SAMPLE_SANDBOX.read_text())["partner"], "customers": []}


@pytest.fixture(scope="module")
def own_pc(tmp_path_factory):
    emu = devenv.start_emulator(tmp_path_factory.mktemp("sweep-emulator"))
    yield emu
    assert emu.child is not None  # start_emulator always gives its child
    emu.child.stop()


@pytest.fixture
def sweep(own_pc, azurite, queues, tmp_path):
    own_pc.reset(EMPTY)
    names = devenv.unique_queues("w")
    reports = names["DELETE_CUSTOMER_QUEUE"].replace("-req", "-rep")
    settings = {
        "AzureWebJobsStorage": azurite,
        **names,
        **own_pc.app_settings(),
        **FAST_HOST,
        "SWEEP_REPORTS_QUEUE": reports,
        "SWEEP_SCHEDULE": "0 0 0 1 1 *",
        "SWEEP_INCLUDE": "^tip test run",
        "POLL_INTERVAL_SECONDS": "1",
        "POLL_MAX_INTERVAL_SECONDS": "2",
        "POLL_TIMEOUT_SECONDS": "120",
        "PARTNER_CENTER_RETRY_BUDGET_SECONDS": "2",
        "DELETION_REQUESTS_TABLE": f"sweep{uuid.uuid4().hex[:12]}",  # each test its own first-seen record
    }
    hosts: list[devenv.Child] = []
    table = TableServiceClient.from_connection_string(azurite).get_table_client(settings["DELETION_REQUESTS_TABLE"])

    class Sweep:
        pc = own_pc

        def record(self, customer_ids, hours):
            """The first-seen record as earlier runs left it: these customers first seen ``hours`` before now."""
            with contextlib.suppress(ResourceExistsError):
                table.create_table()
            seen = (datetime.now(UTC) - timedelta(hours=hours)).isoformat(timespec="milliseconds")
            for cid in customer_ids:
                table.upsert_entity({"PartitionKey": "sweepfirstseen", "RowKey": cid, "firstSeen": seen[:-6] + "Z"})

        def recorded(self):
            return {e["RowKey"]: e["firstSeen"] for e in table.query_entities("PartitionKey eq 'sweepfirstseen'")}

        def start(self, *, record_all=True, **overrides):
            """A host; with ``record_all``, every customer the emulator holds now is first seen 48 h ago (so that
            the minimum age is not what these tests are about)."""
            if record_all:
                self.record(list(own_pc.state()["customers"]), hours=48)
            settings.update(overrides)
            for name in (settings["DELETE_CUSTOMER_QUEUE"], settings["POLL_ORDERS_QUEUE"]):
                queues.ensure(name)
            host = devenv.start_host(tmp_path, settings, name=f"host{len(hosts)}")
            hosts.append(host)
            devenv.wait_for(lambda: host.admin_url() or host.proc.poll() is not None, 30, what="the local host")
            assert host.proc.poll() is None, host.log()
            return host

        def reports(self, count, timeout=30):
            found: list[dict[str, Any]] = []

            def arrived():
                found.extend(json.loads(decode_base64_strict(m.content)) for m in queues.drain(reports))
                return len(found) >= count

            devenv.wait_for(
                arrived,
                timeout,
                what=f"{count} sweep report(s); host log:\n" + "\n".join(h.log()[-4000:] for h in hosts),
            )
            return found

        def outcomes(self, count, timeout=90):
            return devenv.OutcomeReader(queues, settings["DELETION_OUTCOMES_QUEUE"]).wait(count, timeout)

        def outcomes_of(self, correlation_ids, timeout=90):
            """The outcome events of these requests (others, such as a later tick's, are left aside)."""
            reader = devenv.OutcomeReader(queues, settings["DELETION_OUTCOMES_QUEUE"])
            devenv.wait_for(
                lambda: set(correlation_ids) <= {e["correlationId"] for e in reader.poll()},
                timeout,
                what=f"the outcomes of {len(correlation_ids)} request(s)",
            )
            return [e for e in reader.events if e["correlationId"] in set(correlation_ids)]

        def requests(self):
            return [json.loads(decode_base64_strict(t)) for t in queues.peek_all(settings["DELETE_CUSTOMER_QUEUE"])]

    yield Sweep()
    for host in hosts:
        host.stop()


@pytest.mark.slow(seconds=18)
def test_a_scheduled_run_selects_by_name_and_deletes_through_the_ordinary_requests(sweep):
    assert sweep.pc.fill(6, seed=11) == 6
    sweep.pc.add_customers(
        [
            {
                "id": "6f1d2c3b-4a59-4e8f-9d7c-1b2a3c4d5e6f",
                "companyName": "Tip test run lookalike, kept",
                "domain": "contoso.onmicrosoft.com",
            }
        ]
    )
    fire = datetime.now(UTC) + timedelta(seconds=15)
    # Every minute at that second: a tick that a slow host start misses comes again within 60 s.
    sweep.start(SWEEP_MODE="delete", SWEEP_EXCLUDE="lookalike", SWEEP_SCHEDULE=f"{fire.second} * * * * *")
    report = sweep.reports(1, timeout=15 + 60 + 60)[0]  # the first tick's (a later one may follow)
    assert (
        report["trigger"] == "schedule"
        and report["runTime"].endswith(f":{fire.second:02d}.000Z")
        and report["pastDue"] is False
    )
    assert (
        report["result"] == "enqueued"
        and len(report["enqueued"]) == 6
        and report["capacity"] == {"listed": 7, "limit": 75, "free": 68}
    )
    assert {e["reason"] for e in report["excluded"]} == {"excluded"}
    events = sweep.outcomes_of([e["correlationId"] for e in report["enqueued"]])
    assert sorted(e["outcome"] for e in events) == ["deleted"] * 6
    assert list(sweep.pc.state()["customers"]) == ["6f1d2c3b-4a59-4e8f-9d7c-1b2a3c4d5e6f"]


def test_a_run_started_through_the_admin_endpoint_is_manual_and_report_mode_changes_nothing(sweep):
    sweep.pc.fill(5, seed=12)
    host = sweep.start()  # report mode, the schedule far away (1 January)
    assert devenv.invoke_admin(host.admin_url(), "sweep_customers") == 202
    (report,) = sweep.reports(1)
    assert report["trigger"] == "manual" and report["scheduledTime"] is None and report["mode"] == "report"
    assert len(report["selected"]) == 5 and report["enqueued"] == [] and sweep.requests() == []
    assert len(sweep.pc.state()["customers"]) == 5 and not sweep.pc.state()["deleted"]
    assert devenv.invoke_admin(host.admin_url(), "no_such_function") == 404


def test_a_listing_that_fails_on_page_3_enqueues_nothing_and_the_next_run_recovers(sweep):
    sweep.pc.fill(35, seed=13)
    sweep.pc.knobs(customersMaxPageSize=10)
    sweep.pc.faults([{"kind": "status", "status": 503, "method": "GET", "path": "^/v1/customers$", "skip": 2}])
    host = sweep.start(SWEEP_MODE="delete")
    assert devenv.invoke_admin(host.admin_url(), "sweep_customers") == 202
    (report,) = sweep.reports(1)
    assert (
        report["result"] == "failed" and "listing the customers failed" in report["error"] and "503" in report["error"]
    )
    assert report["enqueued"] == [] and report["selected"] == [] and sweep.requests() == []
    pages = [r for r in sweep.pc.requests_log() if r["path"] == "/v1/customers"]
    # retried within the budget, then gave up
    assert [r["status"] for r in pages[:3]] == [200, 200, 503] and len(pages) >= 4
    assert "Executed 'Functions.sweep_customers' (Failed" in host.log()

    sweep.pc.faults([])
    assert devenv.invoke_admin(host.admin_url(), "sweep_customers") == 202
    (report,) = sweep.reports(1)
    assert report["result"] == "enqueued" and report["capacity"]["listed"] == 35 and len(report["enqueued"]) == 25
    assert report["deferred"] == 10


def test_a_full_sandbox_with_max_per_run_below_the_selection_deletes_a_batch_per_run(sweep):
    sweep.pc.fill(75, seed=14)
    host = sweep.start(
        SWEEP_MODE="delete", SWEEP_MAX_PER_RUN="8", SWEEP_INCLUDE=r"^tip test run \d+ – (contoso|fabrikam|litware)"
    )
    assert devenv.invoke_admin(host.admin_url(), "sweep_customers") == 202
    (first,) = sweep.reports(1)
    selected = [e["customerTenantId"] for e in first["selected"]]
    deferred = [e["customerTenantId"] for e in first["excluded"] if e["reason"] == "over_limit"]
    assert (
        first["capacity"] == {"listed": 75, "limit": 75, "free": 0}
        and len(selected) == 8
        and len(deferred) == first["deferred"] > 0
    )
    # this run's draw: the lowest correlation ids (uuid5 of "<run time>/<id>"), so a repeat of the run draws the same
    first_run = RunTime(datetime.fromisoformat(first["runTime"].replace("Z", "+00:00")), "manual", "")
    assert [e["correlationId"] for e in first["selected"]] == [correlation_id(first_run, i) for i in selected]
    assert max(correlation_id(first_run, i) for i in selected) < min(correlation_id(first_run, i) for i in deferred)
    assert sorted(e["outcome"] for e in sweep.outcomes(8)) == ["deleted"] * 8

    assert devenv.invoke_admin(host.admin_url(), "sweep_customers") == 202
    (second,) = sweep.reports(1)
    second_run = RunTime(datetime.fromisoformat(second["runTime"].replace("Z", "+00:00")), "manual", "")
    assert second["capacity"]["listed"] == 67 and second_run.moment != first_run.moment
    assert sorted(e["customerTenantId"] for e in second["selected"]) == sorted(
        sorted(deferred, key=lambda i: correlation_id(second_run, i))[:8]
    )


def test_more_customers_than_the_sandbox_limit_is_refused(sweep):
    sweep.pc.fill(76, seed=15)
    host = sweep.start(SWEEP_MODE="delete")
    assert devenv.invoke_admin(host.admin_url(), "sweep_customers") == 202
    (report,) = sweep.reports(1)
    assert (
        report["result"] == "refused" and "not an integration sandbox" in report["error"] and report["enqueued"] == []
    )
    assert report["selected"] == [] and sweep.requests() == []


def test_the_minimum_age_spares_new_customers_and_the_first_run_after_a_deploy_selects_none(sweep):
    """Through the local host and Azurite's table service: a first run with an empty record selects nothing and
    records everyone at its run time; a run whose record shows a customer 25 h old deletes that one only."""
    sweep.pc.fill(3, seed=16)
    host = sweep.start(SWEEP_MODE="delete", record_all=False)
    assert devenv.invoke_admin(host.admin_url(), "sweep_customers") == 202
    (first,) = sweep.reports(1)
    assert first["result"] == "enqueued" and first["enqueued"] == [] and sweep.requests() == []
    assert [e["reason"] for e in first["excluded"]] == ["too_new"] * 3
    assert "first run after a deploy" in first["selection"] and first["firstSeen"]["recorded"] == 3
    ids = list(sweep.pc.state()["customers"])
    assert sweep.recorded() == dict.fromkeys(ids, first["runTime"])

    old = ids[0]
    sweep.record([old], hours=25)  # as if that first run had been a day ago, for one of them
    assert devenv.invoke_admin(host.admin_url(), "sweep_customers") == 202
    (second,) = sweep.reports(1)
    assert [e["customerTenantId"] for e in second["enqueued"]] == [old]
    assert sorted(e["customerTenantId"] for e in second["excluded"] if e["reason"] == "too_new") == sorted(ids[1:])
    (event,) = sweep.outcomes_of([second["enqueued"][0]["correlationId"]])
    assert event["outcome"] == "deleted" and old not in sweep.pc.state()["customers"]

    assert devenv.invoke_admin(host.admin_url(), "sweep_customers") == 202
    (third,) = sweep.reports(1)
    assert third["firstSeen"]["pruned"] == 1 and set(sweep.recorded()) == set(ids[1:])  # the deleted one is gone
