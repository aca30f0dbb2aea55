"""Telemetry as Azure exports it on Python 3.13: the app run by Microsoft's worker runtime with
``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true``, so the runtime configures the Azure Monitor distro itself, and
the distro's exporter pointed at a loopback ingestion endpoint (``tools.ingestion``).

* An idle worker exports no log record.
* Every log record exported during an invocation carries the host's trace id (the ``traceparent`` the host sent) as
  its operation id, which is what the portal's per-invocation view and ``operation_Id`` in KQL select by.
* Nothing below Warning from the SDKs or the exporter itself is exported.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid

import pytest

from tests.functions import receive
from tests.functions.test_functions import env  # noqa: F401 - the fixture
from tools import devenv, ingestion
from tools.local_host import rpc
from tools.local_host.host import decode_base64_strict
from tools.local_host.indexing import index_functions, queue_message_fields
from tools.local_host.worker import default_context

pytestmark = pytest.mark.skipif(rpc.runtime_available() is None, reason="Microsoft's runtime runs on 3.13 and newer")

IDLE_SECONDS = 8


@pytest.fixture
def sink(monkeypatch):
    server = ingestion.start()
    monkeypatch.setenv("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", "true")
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", server.connection_string)
    monkeypatch.setenv("OTEL_BLRP_SCHEDULE_DELAY", "500")  # the exporter's batches every 0.5 s, not 5 s
    yield server
    server.stop()


def test_every_record_of_an_invocation_carries_its_trace_and_an_idle_worker_exports_none(
    env,  # noqa: F811
    queues,
    make_customer,
    sink,
):
    from tools.local_host.runtime_worker import RuntimeWorkerProcess

    functions = index_functions(devenv.ROOT, os.environ).functions
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.INFO)  # the worker's root logger at INFO, as the host starts it and as in Azure
    try:
        worker = RuntimeWorkerProcess(devenv.ROOT, [fn.for_worker() for fn in functions])
    finally:
        root.setLevel(level)
    try:
        assert worker.wait_loaded(120) == {}
        sink.settle(quiet=2)
        start_up = [e for e in sink.envelopes if e.kind == "MessageData"]
        started = time.monotonic()
        time.sleep(IDLE_SECONDS)
        idle_logs = [e for e in sink.since(started) if e.kind == "MessageData"]

        customer = make_customer([{}])
        correlation = str(uuid.uuid4())
        queues.ensure(env.delete_customer_queue)
        queues.send(
            env.delete_customer_queue, json.dumps({"customerTenantId": customer["id"], "correlationId": correlation})
        )
        _, raw = receive(queues, env.delete_customer_queue)
        context = default_context("delete_customer")
        trace_id = context["trace_parent"].split("-")[1]
        data = {"fields": queue_message_fields(raw), "body": decode_base64_strict(raw.content).decode("utf-8")}
        invoked = time.monotonic()
        error, _ = worker.invoke(str(uuid.uuid4()), "delete_customer", "queue", data, context).result(timeout=120)
        assert error is None
        sink.settle(quiet=3)
        exported = sink.since(invoked)
        records = [e for e in exported if e.kind == "MessageData"]
    finally:
        worker.kill()

    # Before the app is imported, the runtime's own start-up lines ("Successfully configured Azure monitor distro")
    # and the exporter's first sends are at INFO; nothing of the app's, and nothing after the load.
    assert all(e.from_sdk for e in start_up), [(e.logger, e.data) for e in start_up]
    assert idle_logs == [], [e.data.get("message") for e in idle_logs]
    ours = [e for e in records if f"correlation={correlation}" in e.data.get("message", "")]
    assert len(ours) >= 3, [e.data.get("message") for e in records]  # received, the reads and cancels, the poll
    traced = [e for e in exported if e.kind in ("MessageData", "RemoteDependencyData")]
    strays = [
        (e.kind, e.operation_id, e.data.get("message") or e.data.get("name"))
        for e in traced
        if e.operation_id != trace_id
    ]
    assert strays == [], f"{len(strays)} of {len(traced)} records not under the invocation's trace {trace_id}"
    low_sdk = [e.data.get("message") for e in records if e.below_warning and e.from_sdk]
    assert low_sdk == []
