"""The loopback fault proxy (tools/fault_proxy.py) between the real queue SDK and Azurite."""

from __future__ import annotations

import http.client
import re
import socket
import time
import uuid

import pytest
from azure.core.exceptions import HttpResponseError, ServiceResponseError
from azure.storage.queue import QueueServiceClient

from tools import devenv
from tools.fault_proxy import FaultProxy, is_put, start_fault_proxy

FAST_RETRIES = {
    "initial_backoff": 0,
    "increment_base": 0,
    "random_jitter_range": 0,
}  # the default policy, without the waits


@pytest.fixture(scope="module")
def azurite_port(azurite) -> int:
    endpoint = re.search(r"QueueEndpoint=http://127\.0\.0\.1:(\d+)/", azurite)
    assert endpoint is not None
    return int(endpoint.group(1))


@pytest.fixture
def proxy(azurite_port, tmp_path):
    started = start_fault_proxy(tmp_path, azurite_port, before_share=0, after_share=0, seed=7)
    yield started
    started.stop()


@pytest.fixture
def direct(azurite) -> QueueServiceClient:
    """Azurite itself, not through the proxy: to see what was really stored."""
    return QueueServiceClient.from_connection_string(azurite)


def via(proxy: FaultProxy, **kwargs) -> QueueServiceClient:
    return QueueServiceClient.from_connection_string(proxy.connection_string(table_port=1), **kwargs)


def new_queue(service: QueueServiceClient):
    queue = service.get_queue_client(f"fp{uuid.uuid4().hex[:12]}")
    queue.create_queue()
    return queue


def contents(service: QueueServiceClient, name: str) -> list[str]:
    return [m.content for m in service.get_queue_client(name).peek_messages(max_messages=32)]


@pytest.mark.parametrize(
    "method, path, put",
    [
        ("POST", "/devstoreaccount1/q/messages", True),
        ("POST", "/devstoreaccount1/q/messages?visibilitytimeout=5&messagettl=60", True),
        ("PUT", "/devstoreaccount1/q/messages/5f3c?popreceipt=AgAAAA%3D%3D&visibilitytimeout=0", True),
        ("PUT", "/devstoreaccount1/q", False),  # create queue
        ("PUT", "/devstoreaccount1/q?comp=metadata", False),
        ("GET", "/devstoreaccount1/q/messages?numofmessages=32", False),  # receive
        ("GET", "/devstoreaccount1/q/messages?peekonly=true", False),
        ("DELETE", "/devstoreaccount1/q/messages/5f3c?popreceipt=AgAAAA%3D%3D", False),
        ("DELETE", "/devstoreaccount1/q/messages", False),  # clear
        ("POST", "/devstoreaccount1/deletionrequests", True),  # insert entity
        ("PUT", "/devstoreaccount1/deletionrequests(PartitionKey='a',RowKey='b')", True),  # replace
        ("MERGE", "/devstoreaccount1/deletionrequests(PartitionKey=%27a%27,RowKey=%27b%27)", True),
        ("DELETE", "/devstoreaccount1/deletionrequests(PartitionKey='a',RowKey='b')", True),
        ("GET", "/devstoreaccount1/deletionrequests(PartitionKey='a',RowKey='b')", False),  # read
        ("GET", "/devstoreaccount1/deletionrequests()?$filter=x", False),  # query
        ("POST", "/devstoreaccount1/Tables", False),  # create table
    ],
)
def test_only_sends_and_updates_are_puts(method, path, put):
    assert is_put(method, path) is put


def test_everything_passes_through_unchanged_with_zero_shares(proxy, direct):
    service = via(proxy, retry_total=0)
    queue = new_queue(service)
    seen = []
    queue.send_message("later", visibility_timeout=1)
    assert contents(service, queue.queue_name) == []
    devenv.wait_for(lambda: contents(service, queue.queue_name) == ["later"], 5, 0.1, "the delayed message")
    queue.send_message("now")
    [first, second] = list(queue.receive_messages(max_messages=2, visibility_timeout=30))
    updated = queue.update_message(first, content="changed", visibility_timeout=0)
    assert updated.pop_receipt and contents(direct, queue.queue_name) == ["changed"]
    queue.delete_message(second)
    queue.set_queue_metadata({"owner": "proxy-test"})
    properties = queue.get_queue_properties(raw_response_hook=lambda r: seen.append(r.http_response.headers))
    assert properties.metadata == {"owner": "proxy-test"} and properties.approximate_message_count == 1
    assert queue.queue_name in [
        q.name for q in service.list_queues(raw_response_hook=lambda r: seen.append(r.http_response.headers))
    ]
    # Azurite answers XML bodies chunked; the proxy relays them with a Content-Length, and the SDK reads them fine
    assert "Content-Length" in seen[-1] and "Transfer-Encoding" not in seen[-1]
    queue.delete_queue()
    stats = proxy.stats()
    assert stats["failed_before"] == stats["failed_after"] == stats["failed_outage"] == stats["target_errors"] == 0
    assert stats["forwarded"] == stats["requests"] and stats["puts"] == 3  # two sends, one update


def test_before_failure_answers_server_busy_and_stores_nothing(proxy, direct):
    queue = new_queue(via(proxy, retry_total=0))
    direct.get_queue_client(queue.queue_name).send_message("original")
    proxy.configure(before_share=1.0)
    with pytest.raises(HttpResponseError) as failed:
        queue.send_message("lost")
    # error_code is set on the instance by the storage SDK, not declared by azure-core's HttpResponseError
    assert failed.value.status_code == 503 and getattr(failed.value, "error_code", None) == "ServerBusy"
    [message] = direct.get_queue_client(queue.queue_name).receive_messages(visibility_timeout=1)
    with pytest.raises(HttpResponseError, match="server is busy"):
        queue.update_message(message, content="never", visibility_timeout=0)
    # Visible again when its 1 s lease ends: unchanged (an update that got through would show "never" at once).
    devenv.wait_for(lambda: contents(direct, queue.queue_name), 10, interval=0.1, what="the message to come back")
    assert contents(direct, queue.queue_name) == ["original"]
    assert proxy.stats()["failed_before"] == 2


def test_after_failure_stores_the_put_but_loses_the_answer(proxy, direct):
    queue = new_queue(via(proxy, retry_total=0))
    proxy.configure(after_share=1.0)
    with pytest.raises(ServiceResponseError, match="Connection aborted"):
        queue.send_message("stored anyway")
    assert contents(direct, queue.queue_name) == ["stored anyway"]
    [message] = direct.get_queue_client(queue.queue_name).receive_messages(visibility_timeout=30)
    with pytest.raises(ServiceResponseError):
        queue.update_message(message, content="updated anyway", visibility_timeout=0)
    assert contents(direct, queue.queue_name) == ["updated anyway"]
    assert proxy.stats()["failed_after"] == 2


@pytest.mark.parametrize("kind", ["before_share", "after_share"])
def test_receives_deletes_and_queue_operations_are_never_failed(proxy, direct, kind):
    proxy.configure(**{kind: 1.0})
    service = via(proxy, retry_total=0)
    queue = new_queue(service)
    for text in ("a", "b"):
        direct.get_queue_client(queue.queue_name).send_message(text)
    assert sorted(contents(service, queue.queue_name)) == ["a", "b"]
    for message in queue.receive_messages(max_messages=2, visibility_timeout=30):
        queue.delete_message(message)
    assert queue.get_queue_properties().approximate_message_count == 0
    queue.clear_messages()
    queue.delete_queue()
    stats = proxy.stats()
    assert stats["puts"] == stats["failed_before"] == stats["failed_after"] == 0
    assert stats["forwarded"] == stats["requests"] >= 7


@pytest.mark.xdist_group("timing")  # calls inside a window of 1 s (see tests/conftest.py)
def test_outage_window_fails_every_request_unforwarded_until_it_ends(proxy, direct):
    queue = new_queue(via(proxy, retry_total=0))
    until = time.time() + 1.0
    proxy.configure(outage_from=time.time() - 1, outage_until=until)
    for call in (lambda: queue.send_message("x"), queue.get_queue_properties, lambda: list(queue.receive_messages())):
        with pytest.raises(HttpResponseError) as failed:
            call()
        assert failed.value.status_code == 503
    assert proxy.stats()["failed_outage"] == 3 and proxy.stats()["forwarded"] == 1  # only the create
    time.sleep(max(0.0, until - time.time()) + 0.05)
    queue.send_message("after the outage")
    assert contents(direct, queue.queue_name) == ["after the outage"]
    assert proxy.configure(outage_from=None, outage_until=None)["outage_from"] is None


def test_stats_count_requests_puts_and_methods(proxy):
    service = via(proxy, retry_total=0)
    queue = new_queue(service)  # PUT
    queue.send_message("one")  # POST, put
    proxy.configure(before_share=1.0)
    with pytest.raises(HttpResponseError):
        queue.send_message("two")  # POST, put, failed
    [message] = queue.peek_messages()  # GET
    assert message.content == "one"
    [received] = queue.receive_messages(max_messages=1)  # GET
    queue.delete_message(received)  # DELETE
    assert proxy.stats() == {
        "requests": 6,
        "forwarded": 5,
        "puts": 2,
        "failed_before": 1,
        "failed_after": 0,
        "failed_outage": 0,
        "target_errors": 0,
        "by_method": {"PUT": 1, "POST": 2, "GET": 2, "DELETE": 1},
    }


def test_admin_api_is_never_forwarded_and_target_errors_answer_502(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as target:
        target.setblocking(False)
        proxy = start_fault_proxy(tmp_path, target.getsockname()[1])
        try:
            assert proxy.configure(before_share=0.25, seed=3) == {
                "before_share": 0.25,
                "after_share": 0.005,
                "seed": 3,
                "outage_from": None,
                "outage_until": None,
            }
            assert proxy.stats()["requests"] == 0
            with pytest.raises(ValueError, match="400"):
                proxy.configure(before_share=0.9, after_share=0.2)
            with pytest.raises(ValueError, match=r"400.*unknown"):
                proxy.configure(share=1)
            with pytest.raises(BlockingIOError):
                target.accept()  # nobody came
            target.close()  # now nothing listens there: forwarding fails, the proxy answers and goes on
            for _ in range(2):
                conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
                conn.request("GET", "/devstoreaccount1/somequeue?comp=metadata")
                resp = conn.getresponse()
                assert resp.status == 502 and resp.getheader("x-ms-error-code") == "ProxyTargetError" and resp.read()
                conn.close()
            assert proxy.stats()["target_errors"] == 2
        finally:
            proxy.stop()
    assert proxy.child.proc.returncode == 0
    assert f"Fault proxy listening on {proxy.url} -> http://127.0.0.1:{proxy.target_port}" in proxy.child.log()


def test_keep_alive_and_request_bodies_need_a_content_length(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    for _ in range(3):  # unsigned, so Azurite refuses it, but through one kept-alive connection
        conn.request("GET", "/devstoreaccount1/?comp=list")
        resp = conn.getresponse()
        assert resp.status == 403 and resp.getheader("Content-Length") == str(len(resp.read()))
        if _ == 0:
            first = conn.sock
    assert conn.sock is first
    conn.putrequest("POST", "/devstoreaccount1/q/messages")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()  # the proxy answers before any body arrives
    resp = conn.getresponse()
    assert (
        resp.status == 411 and resp.getheader("Connection") == "close" and b"MissingContentLengthHeader" in resp.read()
    )
    conn.close()
    assert proxy.stats()["forwarded"] == 3


def test_default_retry_policy_recovers_from_before_failures(proxy, direct):
    queue = new_queue(via(proxy, **FAST_RETRIES))
    proxy.configure(before_share=0.3)
    for i in range(10):
        queue.send_message(f"m{i}")
    stats = proxy.stats()
    assert stats["failed_before"] >= 1 and stats["puts"] == 10 + stats["failed_before"]
    assert sorted(contents(direct, queue.queue_name)) == [f"m{i}" for i in range(10)]


def test_retried_after_failures_duplicate_the_message(proxy, direct):
    queue = new_queue(via(proxy, **FAST_RETRIES))
    proxy.configure(after_share=0.25)
    for i in range(5):
        queue.send_message(f"m{i}")
    stats = proxy.stats()
    stored = contents(direct, queue.queue_name)
    assert stats["failed_after"] >= 1 and len(stored) == 5 + stats["failed_after"]  # every forwarded put stored a copy
    assert all(stored.count(f"m{i}") >= 1 for i in range(5))


def test_a_table_write_whose_answers_are_lost_fails_although_it_was_stored(azurite, tmp_path):
    """The trap the ledger re-reads for: the proxy forwards each attempt of an insert (the first is stored, the SDK's
    retries meet it), then drops every answer. The caller gets a TableError for a write that was made, so a failed
    write is only ever "possibly done" (the ledger fails the invocation, and the redelivery reads the row)."""
    import uuid as _uuid

    from azure.data.tables import TableServiceClient

    from shared.tables import TableConflictError, TableError, TableStore

    endpoint = re.search(r"TableEndpoint=http://127\.0\.0\.1:(\d+)/", azurite)
    assert endpoint is not None
    table_port = int(endpoint.group(1))
    proxy = start_fault_proxy(tmp_path, table_port, name="table_proxy", before_share=0, after_share=0, seed=3)
    try:
        direct = TableStore(TableServiceClient.from_connection_string(azurite), f"t{_uuid.uuid4().hex[:12]}")
        direct.query_partition("sweepfirstseen")  # nothing yet
        conn = azurite.replace(f"127.0.0.1:{table_port}", f"127.0.0.1:{proxy.port}")
        store = TableStore(TableServiceClient.from_connection_string(conn, retry_total=2), direct.name)
        row = {"PartitionKey": "sweepfirstseen", "RowKey": str(_uuid.uuid4()), "firstSeen": "2026-12-04T03:00:00.000Z"}
        store.insert({**row, "RowKey": str(_uuid.uuid4())})  # creates the table while nothing fails
        proxy.configure(after_share=1.0)
        with pytest.raises(TableError) as failed:
            store.insert(row)
        assert not isinstance(failed.value, TableConflictError)
        proxy.configure(after_share=0.0)
        with pytest.raises(TableConflictError):  # now answered: the row is there
            store.insert(row)
        assert [r["RowKey"] for r in direct.query_partition("sweepfirstseen") if r["RowKey"] == row["RowKey"]] == [
            row["RowKey"]
        ]
        assert proxy.stats()["failed_after"] >= 1
    finally:
        proxy.stop()
