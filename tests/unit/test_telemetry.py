"""shared/telemetry.py: structured log fields on every record of a step; and the worker's Entra authentication."""

from __future__ import annotations

import logging
import threading

import pytest

from shared import telemetry


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def capture():
    handler, logger = Capture(), logging.getLogger("customer_deletion.test")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler, logger
    logger.removeHandler(handler)


def fields_of(record):
    return {name: getattr(record, name) for name in telemetry.FIELDS if hasattr(record, name)}


def test_fields_reach_every_record_made_inside_the_block_and_only_those(capture):
    handler, log = capture
    log.info("before")
    with telemetry.fields(function="poll_orders", invocationId="inv-1"):
        log.info("start")
        telemetry.bind(correlationId="c-1", customerTenantId="t-1", hop=3, requestedAt=None)
        logging.getLogger("azure.storage.queue.test").addHandler(handler)  # a library's record gets them too
        logging.getLogger("azure.storage.queue.test").warning("retry")
        telemetry.bind(outcome="deleted")
        log.info("end")
    log.info("after")
    logging.getLogger("azure.storage.queue.test").removeHandler(handler)
    before, start, retry, end, after = handler.records
    assert fields_of(before) == {} and fields_of(after) == {}
    assert fields_of(start) == {"function": "poll_orders", "invocationId": "inv-1"}
    assert fields_of(retry) == {
        "function": "poll_orders",
        "invocationId": "inv-1",
        "correlationId": "c-1",
        "customerTenantId": "t-1",
        "hop": "3",
    }  # None is left out, numbers are text
    assert fields_of(end)["outcome"] == "deleted"


def test_nested_blocks_restore_the_outer_fields_and_bind_outside_a_block_does_nothing(capture):
    handler, log = capture
    telemetry.bind(correlationId="leak")
    with telemetry.fields(function="sweep_customers"):
        with telemetry.fields(customerTenantId="a"):
            log.info("inner")
        log.info("outer")
    log.info("outside")
    inner, outer, outside = handler.records
    assert fields_of(inner) == {"function": "sweep_customers", "customerTenantId": "a"}
    assert fields_of(outer) == {"function": "sweep_customers"} and fields_of(outside) == {}


def test_a_field_given_with_extra_is_kept_and_unknown_fields_are_refused(capture):
    handler, log = capture
    with telemetry.fields(function="delete_customer"):
        log.info("x", extra={"hop": "7"})
    assert fields_of(handler.records[0]) == {"function": "delete_customer", "hop": "7"}
    with pytest.raises(ValueError, match="unknown log fields"), telemetry.fields(correlation_id="snake"):
        pass


def test_concurrent_invocations_keep_their_own_fields(capture):
    handler, log = capture
    barrier = threading.Barrier(2)

    def invocation(name):
        with telemetry.fields(invocationId=name):
            barrier.wait()
            log.info(name)
            barrier.wait()
            telemetry.bind(outcome=name)
            log.info(name)

    threads = [threading.Thread(target=invocation, args=(n,)) for n in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(handler.records) == 4
    for r in handler.records:
        assert r.invocationId == r.getMessage() and getattr(r, "outcome", r.getMessage()) == r.getMessage()


def _strings_inside(obj, depth=5, seen=None):
    """Every string reachable from ``obj`` through attributes, dicts and sequences, ``depth`` levels deep."""
    seen = set() if seen is None else seen
    if isinstance(obj, str):
        return {obj}
    if depth == 0 or id(obj) in seen:
        return set()
    seen.add(id(obj))
    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    else:
        children = list(getattr(obj, "__dict__", {}).values())
    return set().union(*(_strings_inside(c, depth - 1, seen) for c in children)) if children else set()


def test_the_workers_exporter_authenticates_with_the_identity_named_in_the_authentication_string(monkeypatch):
    """The worker calls configure_azure_monitor() without a credential; each Azure Monitor exporter then takes Entra
    authentication from APPLICATIONINSIGHTS_AUTHENTICATION_STRING, the same setting the host reads.

    Which credential, never its token: the exporter's own choice (``_get_authentication_credential``, what its
    constructor calls) is asked directly, so no exporter exists that could flush at exit and ask the instance
    metadata address for a token.
    """
    from azure.identity import ManagedIdentityCredential
    from azure.monitor.opentelemetry.exporter.export._base import _get_authentication_credential

    client_id = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
    monkeypatch.setenv("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", f"Authorization=AAD;ClientId={client_id}")
    credential = _get_authentication_credential()
    assert isinstance(credential, ManagedIdentityCredential)
    assert client_id in _strings_inside(credential)  # where azure-identity keeps it differs between versions
    monkeypatch.setenv("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "Authorization=AAD")
    assert isinstance(_get_authentication_credential(), ManagedIdentityCredential)  # the system-assigned identity
    monkeypatch.delenv("APPLICATIONINSIGHTS_AUTHENTICATION_STRING")
    assert _get_authentication_credential() is None  # no Entra authentication without the setting


def test_the_host_and_the_worker_are_set_for_opentelemetry():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert json.loads((root / "host.json").read_text())["telemetryMode"] == "OpenTelemetry"
    lines = [line.split("#")[0].strip() for line in (root / "requirements.txt").read_text().splitlines()]
    distro = [line for line in lines if line.startswith("azure-monitor-opentelemetry")]
    assert distro and ";" not in distro[0]  # on every Python, not behind a marker


def test_an_invocation_that_raises_logs_its_exception_with_the_fields(capture):
    import types

    from shared import app

    handler, _ = capture
    logging.getLogger("customer_deletion").addHandler(handler)
    # no clock, no settings: the handler fails at once
    app.set_deps(types.SimpleNamespace())  # type: ignore[arg-type]  # deliberately not a Deps: it has nothing
    try:
        with pytest.raises(AttributeError):
            app.run_delete_customer(
                types.SimpleNamespace(get_body=lambda: b"{}", id="m", dequeue_count=1, insertion_time=None),
                types.SimpleNamespace(invocation_id="inv-9"),
            )
    finally:
        app.set_deps(None)
        logging.getLogger("customer_deletion").removeHandler(handler)
    (record,) = [r for r in handler.records if r.exc_info]
    assert fields_of(record) == {"function": "delete_customer", "invocationId": "inv-9"}
    assert record.exc_info[0] is AttributeError and "the invocation failed (AttributeError)" in record.getMessage()
