"""The local host itself: the documented queue-trigger semantics (functions-queues.md section 9), timer triggers as
the timer extension runs them, and the admin endpoint."""

from __future__ import annotations

import itertools
import json
import re
import socket
import textwrap
import time
import uuid
from datetime import UTC, datetime

import pytest
import requests

from tools import devenv
from tools.local_host.host import (
    EXECUTED_LINE,
    HostError,
    decode_base64_strict,
    load_host_config,
    parse_timespan,
    resolve_setting_tokens,
)

# Upper time bounds (a timer tick within 1.5 s of its grid second, retries cut off at the function timeout) and host
# kills: these tests run one after another on one worker of a parallel run (see tests/conftest.py).
pytestmark = pytest.mark.xdist_group("timing")

PROBE = """
import json, os, time
import azure.functions as func

def main(msg: func.QueueMessage, context: func.Context) -> None:
    body = msg.get_body().decode()
    with open(os.environ["PROBE_LOG"], "a") as f:
        seen = {"body": body, "dequeue": msg.dequeue_count, "t": time.time(), "inv": context.invocation_id}
        f.write(json.dumps(seen) + "\\n")
    if body.startswith("sleep"):
        time.sleep(float(body.split(":")[1]))
        with open(os.environ["PROBE_LOG"], "a") as f:
            f.write(json.dumps({"done": body, "t": time.time()}) + "\\n")
    if body.startswith("fail"):
        raise RuntimeError("probe failure")
"""


@pytest.fixture
def probe_app(tmp_path):
    app = tmp_path / "app"
    (app / "probe").mkdir(parents=True)
    (app / "host.json").write_text(
        json.dumps(
            {
                "version": "2.0",
                "extensions": {
                    "queues": {
                        "maxDequeueCount": 3,
                        "visibilityTimeout": "00:00:01",
                        "maxPollingInterval": "00:00:00.200",
                    }
                },
            }
        )
    )
    (app / "probe" / "function.json").write_text(
        json.dumps(
            {
                "scriptFile": "__init__.py",
                "bindings": [
                    {
                        "name": "msg",
                        "type": "queueTrigger",
                        "direction": "in",
                        "queueName": "%PROBE_QUEUE%",
                        "connection": "AzureWebJobsStorage",
                    }
                ],
            }
        )
    )
    (app / "probe" / "__init__.py").write_text(textwrap.dedent(PROBE))
    return app


@pytest.fixture
def run_probe(probe_app, azurite, queues, tmp_path):
    hosts: list[devenv.Child] = []
    queue = f"p{uuid.uuid4().hex[:12]}"
    log = tmp_path / "probe.log"

    def start(lease_seconds=600, **extra):
        queues.ensure(queue)
        host = devenv.start_host(
            tmp_path,
            {"AzureWebJobsStorage": azurite, "PROBE_QUEUE": queue.upper(), "PROBE_LOG": str(log), **extra},
            name=f"probe{len(hosts)}",
            lease_seconds=lease_seconds,
            app_root=probe_app,
        )
        hosts.append(host)
        devenv.wait_for(lambda: "Host started" in host.log() or host.proc.poll() is not None, 30, what="host")
        assert host.proc.poll() is None, host.log()
        return host

    def calls(done=False):
        entries = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return [e for e in entries if ("done" in e) == done]

    yield start, queue, calls
    for h in hosts:
        h.stop()


def test_failing_message_is_retried_max_times_with_visibility_delay_then_poisoned(run_probe, queues):
    start, queue, calls = run_probe
    start()
    queues.send(queue, "fail-always")
    devenv.wait_for(lambda: queues.peek_raw(queue + "-poison"), 30, what="poison")
    attempts = [c for c in calls() if c["body"] == "fail-always"]
    assert [c["dequeue"] for c in attempts] == [1, 2, 3]  # maxDequeueCount 3
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(attempts)]
    assert all(g >= 0.9 for g in gaps), gaps  # visibilityTimeout 1 s before each retry
    assert [decode_base64_strict(t) for t in queues.peek_raw(queue + "-poison")] == [
        b"fail-always"
    ]  # same encoded text
    assert queues.count(queue) == 0


def test_not_base64_is_poisoned_raw_without_invocation(run_probe, queues):
    start, queue, calls = run_probe
    start()
    queues.send(queue, b"plain text!", encode=False)
    devenv.wait_for(lambda: queues.peek_raw(queue + "-poison"), 30, what="poison")
    assert queues.peek_raw(queue + "-poison") == ["plain text!"]
    assert calls() == []


def test_delayed_message_is_not_delivered_before_its_delay(run_probe, queues):
    start, queue, calls = run_probe
    start()
    sent = time.time()
    queues.send(queue, "later", delay=3)
    devenv.wait_for(calls, 30, what="delivery")
    assert calls()[0]["t"] - sent >= 2.9


def test_killed_host_lease_expires_and_message_is_redelivered(run_probe, queues):
    start, queue, calls = run_probe
    host = start(lease_seconds=3)
    queues.send(queue, "sleep:30")
    devenv.wait_for(calls, 30, what="first invocation")
    host.kill()  # a real process kill mid-invocation
    start(lease_seconds=3)
    devenv.wait_for(lambda: len(calls()) >= 2, 30, what="redelivery")
    assert [c["dequeue"] for c in calls()][:2] == [1, 2]


def test_lease_is_renewed_while_the_function_runs(run_probe, queues):
    start, queue, calls = run_probe
    start(lease_seconds=2)
    queues.send(queue, "sleep:5")
    devenv.wait_for(lambda: queues.count(queue) == 0, 30, interval=0.5, what="completion")
    assert len(calls()) == 1  # never redelivered although it ran past the lease


@pytest.mark.slow(seconds=16)
def test_function_timeout_restarts_the_worker_and_counts_as_a_failure(run_probe, queues):
    start, queue, calls = run_probe
    start(AzureFunctionsJobHost__functionTimeout="00:00:02")
    queues.send(queue, "sleep:6")  # three times the function timeout: a run not cut off would leave a gap of 7 s
    devenv.wait_for(lambda: queues.peek_raw(queue + "-poison"), 40, what="poison after timeouts")
    attempts = calls()
    assert [c["dequeue"] for c in attempts] == [1, 2, 3]
    assert all(1.9 <= b["t"] - a["t"] < 6 for a, b in itertools.pairwise(attempts))  # cut off at the timeout
    time.sleep(5)  # past the end of the last invocation's sleep, had it lived (it was cut off at 2 of its 6 s)
    assert calls(done=True) == []  # the invocations died with their worker process; none finished later


def test_unresolved_setting_stops_indexing(probe_app, tmp_path, azurite):
    host = devenv.start_host(tmp_path, {"AzureWebJobsStorage": azurite}, name="bad", app_root=probe_app)
    host.proc.wait(30)
    assert host.proc.returncode == 2 and "'%PROBE_QUEUE%' does not resolve to a value." in host.log()


def test_host_json_parsing_and_overrides(tmp_path):
    assert (
        parse_timespan("00:00:00.500", "x") == 0.5
        and parse_timespan("1.02:00:00", "x") == 93600
        and parse_timespan("30", "x") == 30 * 86400
    )
    with pytest.raises(HostError):
        parse_timespan("5s", "x")
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0"}))
    cfg = load_host_config(tmp_path, {})
    q = cfg.queues
    assert (q.batch_size, q.max_dequeue_count, q.visibility_timeout, q.message_encoding, q.max_polling_interval) == (
        16,
        5,
        0,
        "base64",
        2.0,
    )
    cfg = load_host_config(
        tmp_path,
        {
            "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "2",
            "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:05",
        },
    )
    assert cfg.queues.max_dequeue_count == 2 and cfg.queues.max_polling_interval == 5
    with pytest.raises(HostError):
        load_host_config(tmp_path, {"AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.050"})
    with pytest.raises(HostError, match="closing"):
        resolve_setting_tokens("%OPEN", {})
    assert resolve_setting_tokens("q-%A%-%B%", {"A": "x", "B": "y"}) == "q-x-y"


# -- timers and the admin endpoint -------------------------------------------------------------------------------------

TIMER_PROBE = """
import json, os, time
import azure.functions as func

def main(timer: func.TimerRequest, context: func.Context) -> None:
    with open(os.environ["TIMER_LOG"], "a") as f:
        f.write(json.dumps({"past_due": timer.past_due, "status": timer.schedule_status, "t": time.time(),
                            "inv": context.invocation_id}) + "\\n")
    if os.environ.get("TIMER_SLEEP"):
        time.sleep(float(os.environ["TIMER_SLEEP"]))
        with open(os.environ["TIMER_LOG"], "a") as f:
            f.write(json.dumps({"done": context.invocation_id}) + "\\n")
"""
DEFAULT_TIME = "0001-01-01T00:00:00+00:00"  # the host's unset Last / LastUpdated


def write_timer_app(root, *, use_monitor=True, run_on_startup=False):
    """An app with a timer function ``tick`` (schedule from %TICK_SCHEDULE%) and the queue function ``probe``."""
    (root / "tick").mkdir(parents=True)
    (root / "probe").mkdir()
    (root / "host.json").write_text(
        json.dumps({"version": "2.0", "extensions": {"queues": {"maxPollingInterval": "00:00:00.200"}}})
    )
    (root / "tick" / "function.json").write_text(
        json.dumps(
            {
                "bindings": [
                    {
                        "name": "timer",
                        "type": "timerTrigger",
                        "direction": "in",
                        "schedule": "%TICK_SCHEDULE%",
                        "useMonitor": use_monitor,
                        "runOnStartup": run_on_startup,
                    }
                ]
            }
        )
    )
    (root / "tick" / "__init__.py").write_text(textwrap.dedent(TIMER_PROBE))
    (root / "probe" / "function.json").write_text(
        json.dumps(
            {"bindings": [{"name": "msg", "type": "queueTrigger", "direction": "in", "queueName": "%PROBE_QUEUE%"}]}
        )
    )
    (root / "probe" / "__init__.py").write_text(textwrap.dedent(PROBE))
    return root


def iso_seconds(text):
    return datetime.fromisoformat(text).timestamp()


class TimerWorld:
    def __init__(self, tmp_path, azurite, queues, app):
        self.tmp, self.app, self.queues = tmp_path, app, queues
        self.timer_log, self.probe_log = tmp_path / "timer.log", tmp_path / "probe.log"
        self.state_dir = tmp_path / "state"
        self.queue = f"t{uuid.uuid4().hex[:12]}"
        self.settings = {
            "AzureWebJobsStorage": azurite,
            "PROBE_QUEUE": self.queue,
            "TIMER_LOG": str(self.timer_log),
            "PROBE_LOG": str(self.probe_log),
        }
        self.hosts = []

    def start(self, wait=True, **settings):
        self.queues.ensure(self.queue)
        host = devenv.start_host(
            self.tmp,
            {**self.settings, **settings},
            name=f"thost{len(self.hosts)}",
            app_root=self.app,
            state_dir=self.state_dir,
        )
        self.hosts.append(host)
        if wait:
            devenv.wait_for(lambda: "Host started" in host.log() or host.proc.poll() is not None, 30, what="host")
            assert host.proc.poll() is None, host.log()
        return host

    def runs(self, done=False):
        entries = (
            [json.loads(line) for line in self.timer_log.read_text().splitlines()] if self.timer_log.exists() else []
        )
        return [e for e in entries if ("done" in e) == done]

    def probe_calls(self):
        return [json.loads(line) for line in self.probe_log.read_text().splitlines()] if self.probe_log.exists() else []

    def status_path(self):
        return self.state_dir / "timers" / "tick" / "status.json"

    def stored(self):
        return json.loads(self.status_path().read_text())

    def store(self, last, next_, last_updated=None):
        self.status_path().parent.mkdir(parents=True, exist_ok=True)
        self.status_path().write_text(json.dumps({"Last": last, "Next": next_, "LastUpdated": last_updated or last}))


@pytest.fixture
def timer_world(tmp_path, azurite, queues):
    w = TimerWorld(tmp_path, azurite, queues, write_timer_app(tmp_path / "tapp"))
    yield w
    for h in w.hosts:
        h.stop()


def test_timer_fires_on_the_second_grid_with_its_schedule_status(timer_world):
    w = timer_world
    host = w.start(TICK_SCHEDULE="*/2 * * * * *")  # the schedule from a %SETTING%; useMonitor true in function.json
    devenv.wait_for(lambda: len(w.runs()) >= 3, 20, what="three ticks")
    runs = w.runs()[:3]
    assert [r["past_due"] for r in runs] == [False, False, False]
    for r in runs:  # the status passed is the one before the run: Next is this occurrence, on the 2-second grid
        nxt = iso_seconds(r["status"]["Next"])
        assert nxt % 2 == 0 and 0 <= r["t"] - nxt < 1.5, r
    first, second, third = runs
    # never ran before (the host's unset time)
    assert first["status"]["Last"] == DEFAULT_TIME == first["status"]["LastUpdated"]
    # the previous run's occurrence
    assert iso_seconds(second["status"]["Last"]) == iso_seconds(first["status"]["Next"])
    assert iso_seconds(third["status"]["Next"]) - iso_seconds(second["status"]["Next"]) == 2
    assert "The next 5 occurrences of the 'tick' schedule" in host.log()
    assert re.search(
        r"Executing 'Functions\.tick' \(Reason='Timer fired at \d{4}-\d\d-\d\dT[^']*\+00:00', Id=", host.log()
    )
    executed = [m for m in map(EXECUTED_LINE.search, host.log().splitlines()) if m and m["function"] == "tick"]
    assert executed and all(m["status"] == "Succeeded" for m in executed)
    stored = w.stored()  # after each run: Last = that occurrence, Next = the one after it
    assert iso_seconds(stored["Next"]) - iso_seconds(stored["Last"]) == 2


def test_stale_status_runs_once_past_due_at_start_then_ticks(timer_world):
    w = timer_world
    hour_ago = int(time.time()) // 2 * 2 - 3600
    last, nxt = (datetime.fromtimestamp(t, UTC).isoformat() for t in (hour_ago - 2, hour_ago))
    w.store(last, nxt)  # consistent with the schedule (Next = the occurrence after Last): not a schedule change
    host = w.start(TICK_SCHEDULE="*/2 * * * * *")
    devenv.wait_for(lambda: len(w.runs()) >= 3, 20, what="a past-due run and two ticks")
    first, *later = w.runs()[:3]
    assert first["past_due"] is True and first["status"] == {"Last": last, "Next": nxt, "LastUpdated": last}
    assert [r["past_due"] for r in later] == [False, False]  # missed occurrences are not replayed
    assert all(iso_seconds(r["status"]["Next"]) > time.time() - 30 for r in later)
    assert host.log().count("Function 'tick' is past due on startup. Executing now.") == 1


def test_run_on_startup_without_monitor(tmp_path, azurite, queues):
    w = TimerWorld(
        tmp_path, azurite, queues, write_timer_app(tmp_path / "tapp", use_monitor=False, run_on_startup=True)
    )
    try:
        host = w.start(TICK_SCHEDULE="0 0 0 1 1 *")  # once a year: the run comes from runOnStartup
        devenv.wait_for(w.runs, 15, what="the startup run")
        assert w.runs()[0]["past_due"] is False and w.runs()[0]["status"] == {}  # no monitor: ScheduleStatus null
        assert "Function 'tick' is configured to run on startup. Executing now." in host.log()
        assert not w.status_path().exists()
    finally:
        for h in w.hosts:
            h.stop()


def test_admin_endpoint_runs_a_timer_now_and_leaves_its_status(timer_world):
    w = timer_world
    year = datetime.now(UTC).year
    # Next is not what the schedule gives from Last
    w.store(f"{year}-01-01T00:00:00+00:00", "2999-01-01T00:00:00+00:00")
    host = w.start(TICK_SCHEDULE="0 0 0 1 1 *")
    # a schedule change: Next recomputed from Last (the next 1 January), Last reset, as the host does
    stored = w.stored()
    assert stored == {
        "Last": DEFAULT_TIME,
        "Next": f"{year + 1}-01-01T00:00:00+00:00",
        "LastUpdated": f"{year}-01-01T00:00:00+00:00",
    }
    url = host.admin_url()
    assert url and w.runs() == []
    assert devenv.invoke_admin(url, "tick") == 202
    devenv.wait_for(lambda: "Executed 'Functions.tick'" in host.log(), 15, what="the admin run")
    (run,) = w.runs()
    assert run["past_due"] is False and run["status"] == stored
    assert w.stored() == stored  # an admin run does not update the status
    assert (
        "Executing 'Functions.tick' (Reason='This function was programmatically called via the host APIs.', Id="
        in host.log()
    )


def test_admin_endpoint_errors(timer_world):
    w = timer_world
    url = w.start(TICK_SCHEDULE="0 0 0 1 1 *").admin_url()
    assert devenv.invoke_admin(url, "nope") == 404
    session = requests.Session()
    session.trust_env = False

    def post(path, **kw):
        return session.post(url + path, timeout=10, **kw).status_code

    assert post("/admin/functions/tick", data="not json") == 400
    assert post("/admin/functions/tick", json={"inputs": ""}) == 400
    assert post("/admin/functions/tick", json={"input": 5}) == 400
    assert post("/admin/functions/tick") == 400  # no body
    assert post("/admin/other", json={"input": ""}) == 404
    assert session.get(url + "/admin/functions/tick", timeout=10).status_code == 405
    time.sleep(0.5)
    assert w.runs() == []


def test_admin_endpoint_delivers_input_to_a_queue_function(timer_world, queues):
    w = timer_world
    host = w.start(TICK_SCHEDULE="0 0 0 1 1 *")
    assert devenv.invoke_admin(host.admin_url(), "probe", "hello admin") == 202
    devenv.wait_for(w.probe_calls, 15, what="the admin run")
    (call,) = w.probe_calls()
    assert call["body"] == "hello admin" and call["dequeue"] == 1
    assert queues.count(w.queue) == 0 and queues.peek_raw(w.queue + "-poison") == []


def test_missing_schedule_setting_disables_only_that_function(timer_world, queues):
    w = timer_world
    host = w.start()  # no TICK_SCHEDULE
    assert (
        "Function 'tick' failed indexing and will be disabled: '%TICK_SCHEDULE%' does not resolve to a value."
        in host.log()
    )
    queues.send(w.queue, "still here")
    devenv.wait_for(w.probe_calls, 15, what="the queue function")
    assert devenv.invoke_admin(host.admin_url(), "tick") == 404
    assert w.runs() == []


def test_two_hosts_sharing_a_state_dir_run_the_timer_once(timer_world):
    w = timer_world
    first = w.start(TICK_SCHEDULE="* * * * * *")
    devenv.wait_for(w.runs, 15, what="the first host's ticks")
    second = w.start(TICK_SCHEDULE="* * * * * *")
    devenv.wait_for(
        lambda: "another host instance holds the singleton lock" in second.log(), 15, what="the second host to wait"
    )
    count = len(w.runs())
    devenv.wait_for(lambda: len(w.runs()) >= count + 2, 15, what="two more ticks")
    assert "Executing 'Functions.tick'" not in second.log()
    ticks = sorted(iso_seconds(r["status"]["Next"]) for r in w.runs())
    assert len(ticks) == len(set(ticks))  # no occurrence ran twice
    first.stop()  # the lock goes with it: the other host takes the timer over
    devenv.wait_for(lambda: "Executing 'Functions.tick'" in second.log(), 15, what="the second host to take over")


def test_admin_port_in_use_stops_the_host(timer_world):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        host = devenv.start_host(
            timer_world.tmp,
            {**timer_world.settings, "TICK_SCHEDULE": "0 0 0 1 1 *"},
            name="busy",
            app_root=timer_world.app,
            admin_port=port,
            state_dir=timer_world.state_dir,
        )
        host.proc.wait(30)
    assert host.proc.returncode == 2
    assert f"127.0.0.1:{port}" in host.log() and "--admin-port" in host.log()


def test_timer_run_cut_off_by_function_timeout_is_not_retried_and_updates_the_status(timer_world):
    w = timer_world
    host = w.start(TICK_SCHEDULE="*/2 * * * * *", TIMER_SLEEP="2.5", AzureFunctionsJobHost__functionTimeout="00:00:01")
    devenv.wait_for(lambda: len(w.runs()) >= 2, 20, what="two ticks")
    first, second = w.runs()[:2]
    assert "A function timeout has occurred. Restarting worker process" in host.log()
    # the next occurrence, no retry
    assert iso_seconds(second["status"]["Next"]) - iso_seconds(first["status"]["Next"]) == 2
    # status updated after the failure
    assert iso_seconds(second["status"]["Last"]) == iso_seconds(first["status"]["Next"])
    assert "Executed 'Functions.tick' (Succeeded" not in host.log()
    time.sleep(1)
    assert w.runs(done=True) == []  # each run died with its worker process
