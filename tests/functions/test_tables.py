"""shared.tables.TableStore against Azurite's table service (the real azure-data-tables code path): conditional
writes, a missing table, key validation, and faults turned into TableError without the request in the message."""

from __future__ import annotations

import json
import socket
import uuid

import pytest
from azure.data.tables import TableServiceClient

from shared.tables import TableConflictError, TableError, TableStore, check_key
from tools import devenv

P = "sweepfirstseen"


@pytest.fixture
def store(azurite) -> TableStore:
    return TableStore(TableServiceClient.from_connection_string(azurite), f"t{uuid.uuid4().hex[:12]}")


def row(rk: str, **props) -> dict:
    return {"PartitionKey": P, "RowKey": rk, **props}


def test_insert_creates_the_table_and_a_second_insert_of_the_row_is_a_conflict(store):
    a = str(uuid.uuid4())
    assert store.query_partition(P) == []  # no table yet: no rows, no error
    store.insert(row(a, firstSeen="2026-12-01T03:00:00.000Z"))
    with pytest.raises(TableConflictError):
        store.insert(row(a, firstSeen="2026-12-02T03:00:00.000Z"))
    (stored,) = store.query_partition(P)
    assert stored["firstSeen"] == "2026-12-01T03:00:00.000Z" and stored["RowKey"] == a and stored["etag"]


def test_replace_and_delete_only_with_the_etag_that_was_read(store):
    a = str(uuid.uuid4())
    store.insert(row(a, n=1))
    (first,) = store.query_partition(P)
    store.replace(row(a, n=2), first["etag"])
    with pytest.raises(TableConflictError):
        store.replace(row(a, n=3), first["etag"])  # stale: another writer's change wins
    with pytest.raises(TableConflictError):
        store.delete(P, a, first["etag"])
    (second,) = store.query_partition(P)
    assert second["n"] == 2
    store.delete(P, a, second["etag"])
    store.delete(P, a, second["etag"])  # already gone: no error
    assert store.query_partition(P) == []
    with pytest.raises(TableConflictError):
        store.replace(row(a, n=4), second["etag"])  # gone


def test_a_query_reads_one_partition_only(store, azurite):
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    store.insert(row(a))
    store.insert({"PartitionKey": b, "RowKey": a})
    assert [r["RowKey"] for r in store.query_partition(P)] == [a]
    assert [r["RowKey"] for r in store.query_partition(b)] == [a]


@pytest.mark.parametrize(
    "key", ["x' or PartitionKey ne 'x", "A1B2C3D4-0000-4000-8000-000000000000", "", "../..", None, "sweepfirstseen2"]
)
def test_only_lower_case_guids_and_fixed_partitions_become_keys(store, key):
    with pytest.raises(ValueError, match="refusing a table"):
        store.query_partition(key)
    with pytest.raises(ValueError, match="refusing a table"):
        store.insert({"PartitionKey": P, "RowKey": key})
    with pytest.raises(ValueError):
        check_key(key)


def test_an_unreachable_table_service_is_a_table_error_naming_no_secret():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    conn = devenv.azurite_connection_string(devenv.AzuritePorts(queue=port, table=port))
    store = TableStore(TableServiceClient.from_connection_string(conn, retry_total=0), "deletionrequests")
    for call in (lambda: store.query_partition(P), lambda: store.insert(row(str(uuid.uuid4())))):
        with pytest.raises(TableError) as err:
            call()
        assert not isinstance(err.value, TableConflictError)
        assert devenv.AZURITE_KEY not in str(err.value) and "deletionrequests" in str(err.value)


def test_the_queues_cli_shows_the_sweeps_first_seen_record(azurite, tmp_path, capsys):
    from tools import queues

    table = f"cli{uuid.uuid4().hex[:12]}"
    store = TableStore(TableServiceClient.from_connection_string(azurite), table)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    store.insert(row(b, firstSeen="2026-12-02T03:00:00.000Z"))
    store.insert(row(a, firstSeen="2026-12-01T03:00:00.000Z"))
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"Values": {"AzureWebJobsStorage": azurite, "DELETION_REQUESTS_TABLE": table}}))
    assert queues.main(["--settings", str(settings), "show", "first-seen"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{a}  first seen 2026-12-01T03:00:00.000Z",
        f"{b}  first seen 2026-12-02T03:00:00.000Z",
        f"2 customer(s) in the first-seen record ({table}, partition sweepfirstseen)",
    ]


def test_the_queues_cli_shows_a_requests_ledger_rows(azurite, tmp_path, capsys):
    from shared import ledger
    from tools import queues

    table = f"cli{uuid.uuid4().hex[:12]}"
    store = TableStore(TableServiceClient.from_connection_string(azurite), table)
    customer, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    from datetime import UTC, datetime

    key = ledger.request_key(customer, correlation, datetime(2026, 12, 4, 9, 0, tzinfo=UTC), False)
    assert key is not None
    text = json.dumps({"eventId": key.event_id, "outcome": "deleted"})
    plan = ledger.on_finish(None, key, outcome="deleted", event=text, poison="none", now=key.requested_at)
    assert isinstance(plan, ledger.Insert)
    store.insert(plan.row)
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"Values": {"AzureWebJobsStorage": azurite, "DELETION_REQUESTS_TABLE": table}}))
    assert queues.main(["--settings", str(settings), "request", correlation.upper()]) == 0
    out = capsys.readouterr().out
    assert '"outcome": "deleted"' in out and key.event_id in out and out.rstrip().endswith(f"in {table}")
    assert queues.main(["--settings", str(settings), "request", str(uuid.uuid4())]) == 1
