"""tools/ingestion.py, the loopback stand-in for Application Insights' ingestion, and tools.telemetry_cost's tally."""

from __future__ import annotations

import gzip
import json

import requests

from tools import ingestion
from tools.telemetry_cost import tally

LOG = {"tags": {"ai.operation.id": "ab" * 16}, "data": {"baseType": "MessageData", "baseData": {"message": "hi"}}}
DEP = {"tags": {}, "data": {"baseType": "RemoteDependencyData", "baseData": {"name": "GET /x"}}}


def test_it_records_each_envelope_with_its_size_and_counts_live_metrics_apart():
    sink = ingestion.start()
    try:
        assert sink.connection_string.endswith(f"IngestionEndpoint={sink.url};LiveEndpoint={sink.url}")
        body = gzip.compress(json.dumps([LOG, DEP]).encode())
        answer = requests.post(sink.url + "v2.1/track", data=body, headers={"Content-Encoding": "gzip"}, timeout=5)
        assert answer.json()["itemsAccepted"] == 2
        requests.post(sink.url + "QuickPulseService.svc/post", data=b"{}", timeout=5)
        kinds = [(e.kind, e.operation_id, e.size) for e in sink.envelopes]
        assert kinds == [
            ("MessageData", "ab" * 16, len(json.dumps(LOG, separators=(",", ":")))),
            ("RemoteDependencyData", "", len(json.dumps(DEP, separators=(",", ":")))),
        ]
        assert sink.live_posts == 1
        assert tally(sink.envelopes) == {
            "MessageData": (1, kinds[0][2]),
            "RemoteDependencyData": (1, kinds[1][2]),
        }
        assert sink.since(sink.envelopes[-1].received + 1) == []
    finally:
        sink.stop()


def _record(properties: dict, level: str = "Information") -> ingestion.Envelope:
    body = {"data": {"baseType": "MessageData", "baseData": {"severityLevel": level, "properties": properties}}}
    return ingestion.Envelope(received=0.0, size=0, body=body)


def test_a_records_logger_comes_from_logger_name_or_from_the_source_file_on_older_exporters():
    site = "/x/.venv/lib/python3.13/site-packages/"
    assert _record({"logger_name": "azure.core.pipeline", "code.filepath": site + "msal/a.py"}).logger == (
        "azure.core.pipeline"
    )
    assert _record({"code.filepath": site + "azure/identity/_credentials/chained.py"}).logger == (
        "azure.identity._credentials.chained"
    )
    assert _record({"code.filepath": site + "azure_functions_runtime_v1/handle_event.py"}).logger == "azure.functions"
    assert _record({"code.file.path": site + "urllib3/connectionpool.py"}).logger == "urllib3.connectionpool"
    assert _record({"code.filepath": "/work/main/shared/service.py"}).logger == ""
    assert _record({}).logger == ""


def test_from_sdk_is_a_logger_named_in_sdk_loggers_or_below_one():
    names = ["azure", "azure.core.pipeline", "msal.token_cache", "urllib3.connectionpool", "customer_deletion", ""]
    assert [_record({"logger_name": n}).from_sdk for n in names] == [True, True, True, True, False, False]
    assert _record({"logger_name": "azurex"}).from_sdk is False


def test_below_warning_reads_the_level_as_a_name_or_a_number():
    assert [_record({}, level).below_warning for level in ("Verbose", "Information", "0", "1")] == [True] * 4
    assert [_record({}, level).below_warning for level in ("Warning", "Error", "Critical", "2", "3", "4")] == [
        False
    ] * 6
