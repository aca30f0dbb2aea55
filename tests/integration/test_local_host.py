"""The local host itself, against the documented queue-trigger semantics (functions-queues.md section 9)."""
from __future__ import annotations

import json
import textwrap
import time
import uuid

import pytest

from tools import devenv
from tools.local_host.host import HostError, decode_base64_strict, load_host_config, parse_timespan, resolve_setting_tokens

PROBE = '''
import json, os, time
import azure.functions as func

def main(msg: func.QueueMessage, context: func.Context) -> None:
    body = msg.get_body().decode()
    with open(os.environ["PROBE_LOG"], "a") as f:
        f.write(json.dumps({"body": body, "dequeue": msg.dequeue_count, "t": time.time(), "inv": context.invocation_id}) + "\\n")
    if body.startswith("sleep"):
        time.sleep(float(body.split(":")[1]))
        with open(os.environ["PROBE_LOG"], "a") as f:
            f.write(json.dumps({"done": body, "t": time.time()}) + "\\n")
    if body.startswith("fail"):
        raise RuntimeError("probe failure")
'''


@pytest.fixture
def probe_app(tmp_path):
    app = tmp_path / "app"
    (app / "probe").mkdir(parents=True)
    (app / "host.json").write_text(json.dumps({"version": "2.0", "extensions": {"queues": {
        "maxDequeueCount": 3, "visibilityTimeout": "00:00:01", "maxPollingInterval": "00:00:00.200"}}}))
    (app / "probe" / "function.json").write_text(json.dumps({"scriptFile": "__init__.py", "bindings": [
        {"name": "msg", "type": "queueTrigger", "direction": "in", "queueName": "%PROBE_QUEUE%", "connection": "AzureWebJobsStorage"}]}))
    (app / "probe" / "__init__.py").write_text(textwrap.dedent(PROBE))
    return app


@pytest.fixture
def run_probe(probe_app, azurite, queues, tmp_path):
    hosts = []
    queue = f"p{uuid.uuid4().hex[:12]}"
    log = tmp_path / "probe.log"

    def start(lease_seconds=600, **extra):
        queues.ensure(queue)
        host = devenv.start_host(tmp_path, {"AzureWebJobsStorage": azurite, "PROBE_QUEUE": queue.upper(), "PROBE_LOG": str(log), **extra},
                                 name=f"probe{len(hosts)}", lease_seconds=lease_seconds, app_root=probe_app)
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
    gaps = [b["t"] - a["t"] for a, b in zip(attempts, attempts[1:])]
    assert all(g >= 0.9 for g in gaps), gaps  # visibilityTimeout 1 s before each retry
    assert [decode_base64_strict(t) for t in queues.peek_raw(queue + "-poison")] == [b"fail-always"]  # same encoded text
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


def test_function_timeout_restarts_the_worker_and_counts_as_a_failure(run_probe, queues):
    start, queue, calls = run_probe
    start(AzureFunctionsJobHost__functionTimeout="00:00:02")
    queues.send(queue, "sleep:8")
    devenv.wait_for(lambda: queues.peek_raw(queue + "-poison"), 40, what="poison after timeouts")
    attempts = calls()
    assert [c["dequeue"] for c in attempts] == [1, 2, 3]
    assert all(1.9 <= b["t"] - a["t"] < 6 for a, b in zip(attempts, attempts[1:]))  # cut off at the timeout
    time.sleep(7)
    assert calls(done=True) == []  # the invocations died with their worker process; none finished later


def test_unresolved_setting_stops_indexing(probe_app, tmp_path, azurite):
    host = devenv.start_host(tmp_path, {"AzureWebJobsStorage": azurite}, name="bad", app_root=probe_app)
    host.proc.wait(30)
    assert host.proc.returncode == 2 and "'%PROBE_QUEUE%' does not resolve to a value." in host.log()


def test_host_json_parsing_and_overrides(tmp_path):
    assert parse_timespan("00:00:00.500", "x") == 0.5 and parse_timespan("1.02:00:00", "x") == 93600 and parse_timespan("30", "x") == 30 * 86400
    with pytest.raises(HostError):
        parse_timespan("5s", "x")
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0"}))
    cfg = load_host_config(tmp_path, {})
    q = cfg.queues
    assert (q.batch_size, q.max_dequeue_count, q.visibility_timeout, q.message_encoding, q.max_polling_interval) == (16, 5, 0, "base64", 2.0)
    cfg = load_host_config(tmp_path, {"AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "2",
                                      "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:05"})
    assert cfg.queues.max_dequeue_count == 2 and cfg.queues.max_polling_interval == 5
    with pytest.raises(HostError):
        load_host_config(tmp_path, {"AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.050"})
    with pytest.raises(HostError, match="closing"):
        resolve_setting_tokens("%OPEN", {})
    assert resolve_setting_tokens("q-%A%-%B%", {"A": "x", "B": "y"}) == "q-x-y"
