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
