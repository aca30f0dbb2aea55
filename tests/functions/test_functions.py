"""Each function's ``main`` called with a real QueueMessage (built as the worker builds it) against Azurite and the
emulator over real HTTPS, with the real azure-identity credential and azure-storage-queue client."""

from __future__ import annotations

import json
import time
import types
import uuid
from collections.abc import Callable

import pytest

import delete_customer
import poll_orders
from shared import app
from shared.config import reset_settings
from shared.messages import parse_poll_message
from tests.functions import receive
from tools import devenv
from tools.local_host.host import decode_base64_strict, to_function_message


@pytest.fixture
def env(monkeypatch, azurite, pc):
    names = devenv.unique_queues("f")
    settings = {
        "AzureWebJobsStorage": azurite,
        **names,
        **pc.app_settings(),
        "POLL_INTERVAL_SECONDS": "3",
        "POLL_MAX_INTERVAL_SECONDS": "4",
        "POLL_TIMEOUT_SECONDS": "120",
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    app.set_deps(None)
    yield types.SimpleNamespace(**{k.lower(): v for k, v in names.items()})
    reset_settings()
    app.set_deps(None)


def context():
    return types.SimpleNamespace(invocation_id=str(uuid.uuid4()))


def outcomes(queues, name):
    return [json.loads(decode_base64_strict(m.content)) for m in queues.drain(name)]


def test_delete_then_poll_through_real_queues(env, queues, pc, make_customer):
    customer = make_customer([{"cancelAfterReads": 1}, {}])
    queues.ensure(env.delete_customer_queue)
    queues.send(env.delete_customer_queue, json.dumps({"customerTenantId": customer["id"]}))
    msg, _ = receive(queues, env.delete_customer_queue)
    delete_customer.main(msg, context())
    sent = time.monotonic()

    # The poll message exists but stays invisible for POLL_INTERVAL_SECONDS.
    assert queues.count(env.poll_orders_queue) == 1
    assert queues.peek_raw(env.poll_orders_queue) == []
    (text,) = devenv.wait_for(lambda: queues.peek_raw(env.poll_orders_queue), 15, what="the first poll message")
    assert 2 <= time.monotonic() - sent < 6  # hidden for about 3 s (counted from a little after the send)
    poll = parse_poll_message(decode_base64_strict(text))  # Base64, as the trigger reads it
    assert poll.customer_id == customer["id"] and len(poll.orders) == 2

    msg, _ = receive(queues, env.poll_orders_queue)
    poll_orders.main(msg, context())  # hop 1: one order still pending -> re-enqueue
    sent = time.monotonic()
    assert outcomes(queues, env.deletion_outcomes_queue) == []
    assert queues.peek_raw(env.poll_orders_queue) == []  # the next delay: POLL_INTERVAL_SECONDS (3) again
    msg, _ = devenv.wait_for(lambda: receive(queues, env.poll_orders_queue), 15, what="the second poll message")
    assert 2 <= time.monotonic() - sent < 6  # the same delay again, not a longer one
    poll_orders.main(msg, context())  # hop 2: all cancelled -> DELETE
    (event,) = outcomes(queues, env.deletion_outcomes_queue)
    assert event["outcome"] == "deleted" and event["pollAttempts"] == 2 and event["customerTenantId"] == customer["id"]
    assert event["requestedAt"].endswith("Z") and event["finishedAt"].endswith("Z")
    assert customer["id"] in pc.state()["deleted"]


def test_invalid_message_goes_to_poison_with_zero_partner_center_calls(env, queues, pc):
    before = len(pc.requests_log())
    queues.ensure(env.delete_customer_queue)
    queues.send(env.delete_customer_queue, '{"customerTenantId": "../../v1/customers"}')
    msg, _ = receive(queues, env.delete_customer_queue)
    delete_customer.main(msg, context())  # completes without raising
    (event,) = outcomes(queues, env.deletion_outcomes_queue)
    assert event["outcome"] == "rejected" and event["customerTenantId"] is None
    (poisoned,) = queues.peek_raw(env.delete_customer_queue + "-poison")
    assert decode_base64_strict(poisoned) == b'{"customerTenantId": "../../v1/customers"}'  # redrivable unchanged
    assert len(pc.requests_log()) == before


def test_outcome_messages_never_expire(env, queues, pc, make_customer):
    customer = make_customer([])
    queues.ensure(env.delete_customer_queue)
    queues.send(env.delete_customer_queue, json.dumps({"customerTenantId": customer["id"], "dryRun": True}))
    msg, _ = receive(queues, env.delete_customer_queue)
    delete_customer.main(msg, context())
    (m,) = list(queues.client(env.deletion_outcomes_queue).peek_messages())
    assert m.expires_on.year == 9999  # time-to-live -1
    assert json.loads(decode_base64_strict(m.content))["outcome"] == "dry_run"


def test_settings_errors_name_every_setting(monkeypatch):
    for key in ("AzureWebJobsStorage", "POLL_INTERVAL_SECONDS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("POLL_INTERVAL_SECONDS", "0")
    reset_settings()
    app.set_deps(None)
    msg = to_function_message(
        types.SimpleNamespace(
            id="x", dequeue_count=1, inserted_on=None, expires_on=None, next_visible_on=None, pop_receipt="p"
        ),
        "x",
    )
    with pytest.raises(Exception) as info:
        delete_customer.main(msg, context())
    assert "AzureWebJobsStorage" in str(info.value) and "POLL_INTERVAL_SECONDS" in str(info.value)
    reset_settings()


def otel_handler(exporter):
    """A logger provider exporting each record at once to ``exporter``, and the logging handler the distro attaches."""
    import logging

    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

    handler_class: Callable[..., logging.Handler]  # one of two classes, whichever this install has
    try:
        # the distro's handler, where it has one
        from opentelemetry.instrumentation.logging.handler import (
            LoggingHandler as DistroHandler,
        )

        handler_class = DistroHandler
    except ImportError:
        from opentelemetry.sdk._logs import LoggingHandler as SdkHandler

        handler_class = SdkHandler

    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    return provider, handler_class(level=logging.INFO, logger_provider=provider)


def first_request(env, queues, make_customer):
    """A customer with one order and its deletion request, received from
    the request queue: (customer, correlation, msg)."""
    customer, correlation = make_customer([{}]), str(uuid.uuid4())
    queues.ensure(env.delete_customer_queue)
    queues.send(
        env.delete_customer_queue, json.dumps({"customerTenantId": customer["id"], "correlationId": correlation})
    )
    msg, _ = receive(queues, env.delete_customer_queue)
    return customer, correlation, msg


@pytest.fixture
def otel_logs():
    """An OpenTelemetry logging handler on the root logger, as the worker's Azure Monitor distro attaches it
    (PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true), exporting into memory instead of to Application Insights."""
    import logging

    try:
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter as Exporter
    except ImportError:
        from opentelemetry.sdk._logs.export import InMemoryLogExporter as Exporter

    exporter = Exporter()
    provider, handler = otel_handler(exporter)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield exporter
    root.removeHandler(handler)
    root.setLevel(level)
    provider.shutdown()


def test_every_log_record_of_a_deletion_carries_its_structured_fields(env, queues, pc, make_customer, otel_logs):
    customer, correlation, msg = first_request(env, queues, make_customer)
    first = context()
    delete_customer.main(msg, first)
    hops, deadline = [], time.monotonic() + 30
    while not outcomes_seen(queues, env) and time.monotonic() < deadline:
        got = receive(queues, env.poll_orders_queue)
        if got is None:
            time.sleep(0.5)
            continue
        hops.append(context())
        poll_orders.main(got[0], hops[-1])
    assert hops, "the deletion never reached poll_orders"

    records = [getattr(x, "log_record", x) for x in otel_logs.get_finished_logs()]
    ours = [r for r in records if f"correlation={correlation}" in str(r.body)]
    assert len(ours) >= 4  # received, the calls, the poll message(s), the outcome
    for r in ours:
        a = r.attributes
        assert a["correlationId"] == correlation and a["customerTenantId"] == customer["id"], (r.body, dict(a))
        assert a["function"] in ("delete_customer", "poll_orders") and a["requestedAt"].endswith("Z"), (r.body, dict(a))
        expected_invocation = first.invocation_id if a["function"] == "delete_customer" else None
        assert a["invocationId"] == expected_invocation or a["invocationId"] in {h.invocation_id for h in hops}
        assert a["hop"] == "0" if a["function"] == "delete_customer" else int(a["hop"]) >= 1
    assert {r.attributes["hop"] for r in ours if r.attributes["function"] == "poll_orders"} == {
        str(i + 1) for i in range(len(hops))
    }
    last = ours[-1]
    assert "outcome deleted" in str(last.body) and last.attributes["outcome"] == "deleted"
    assert all("outcome" not in r.attributes for r in ours[:-1])  # only the end carries the outcome


def outcomes_seen(queues, env):
    return queues.count(env.deletion_outcomes_queue) > 0


@pytest.fixture
def ingestion():
    """A loopback stand-in for Application Insights' ingestion endpoint: records each envelope the exporter POSTs."""
    import gzip
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    envelopes: list[dict] = []

    class Track(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path.endswith("/track"):
                envelopes.extend(json.loads(body))
            answer = json.dumps({"itemsReceived": 1, "itemsAccepted": 1, "errors": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Track)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield types.SimpleNamespace(
        envelopes=envelopes,
        connection_string="InstrumentationKey=00000000-0000-0000-0000-000000000000;"
        f"IngestionEndpoint=http://127.0.0.1:{server.server_port}/",
    )
    server.shutdown()
    server.server_close()


def test_the_azure_monitor_exporter_sends_the_fields_as_properties_of_each_message(
    env, queues, pc, make_customer, ingestion, monkeypatch
):
    """The distro's own exporter, pointed at a loopback ingestion endpoint: each log record becomes a MessageData
    envelope whose properties (Application Insights' customDimensions) hold the structured fields."""
    import logging

    from azure.monitor.opentelemetry.exporter import AzureMonitorLogExporter

    provider, handler = otel_handler(
        AzureMonitorLogExporter(connection_string=ingestion.connection_string, disable_offline_storage=True)
    )
    logger = logging.getLogger("customer_deletion")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        customer, correlation, msg = first_request(env, queues, make_customer)
        invocation = context()
        delete_customer.main(msg, invocation)
        provider.force_flush()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        provider.shutdown()
    messages = [e["data"]["baseData"] for e in ingestion.envelopes if e["data"]["baseType"] == "MessageData"]
    ours = [m for m in messages if f"correlation={correlation}" in m["message"]]
    assert len(ours) >= 3, [m["message"] for m in messages]  # received, the reads and cancels, the poll message
    for m in ours:
        assert {
            k: m["properties"].get(k) for k in ("function", "invocationId", "correlationId", "customerTenantId", "hop")
        } == {
            "function": "delete_customer",
            "invocationId": invocation.invocation_id,
            "correlationId": correlation,
            "customerTenantId": customer["id"],
            "hop": "0",
        }, m
        assert m["properties"]["requestedAt"].endswith("Z")
