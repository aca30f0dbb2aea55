"""A loopback stand-in for Application Insights' ingestion endpoint (dev only): it records every envelope the Azure
Monitor exporter POSTs to ``/v2.1/track``, with its size, and answers as the service does.

The connection string it gives (``connection_string``) also points live metrics (``LiveEndpoint``) at it, so that a
worker with telemetry on never leaves loopback: the distro turns live metrics on by default, and the worker runtime
calls ``configure_azure_monitor`` with no argument to turn it off. Live-metrics posts are counted apart
(``live_posts``); Azure does not bill them as ingestion.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: The instrumentation key of the stand-in's connection string: all zeros, never a real resource.
KEY = "00000000-0000-0000-0000-000000000000"


@dataclass
class Envelope:
    received: float  # time.monotonic() when it arrived
    size: int  # bytes of its JSON, uncompressed, as the service meters ingestion
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("data", {}).get("baseType", "?"))

    @property
    def data(self) -> dict[str, Any]:
        return self.body.get("data", {}).get("baseData", {})

    @property
    def operation_id(self) -> str:
        return str(self.body.get("tags", {}).get("ai.operation.id", ""))

    @property
    def logger(self) -> str:
        """The name of the logger that wrote a log record. The exporter requirements.txt resolves today (1.0.0b58)
        sends it as the ``logger_name`` property; the floor's (1.0.0b40) sends only the source file
        (``code.filepath``), so the name is derived from it: the module's dotted path under site-packages, with
        Microsoft's worker runtime, which logs as ``azure.functions``, named so. "" when neither is there."""
        properties = self.data.get("properties", {})
        if properties.get("logger_name"):
            return str(properties["logger_name"])
        path = str(properties.get("code.filepath") or properties.get("code.file.path") or "")
        if "site-packages/" not in path:
            return ""
        module = path.rsplit("site-packages/", 1)[1].removesuffix(".py").replace("/", ".")
        return "azure.functions" if module.startswith("azure_functions_runtime_v1") else module

    @property
    def from_sdk(self) -> bool:
        """A log record written by one of the SDKs' loggers (``shared.telemetry.SDK_LOGGERS``) or below them."""
        from shared.telemetry import SDK_LOGGERS

        return self.logger.split(".")[0] in SDK_LOGGERS

    @property
    def below_warning(self) -> bool:
        """A log record at Verbose or Information (newer exporters send the level's name, older ones its number)."""
        return str(self.data.get("severityLevel")) in ("Verbose", "Information", "0", "1")


@dataclass
class Ingestion:
    server: ThreadingHTTPServer
    envelopes: list[Envelope] = field(default_factory=list)
    live_posts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/"

    @property
    def connection_string(self) -> str:
        return f"InstrumentationKey={KEY};IngestionEndpoint={self.url};LiveEndpoint={self.url}"

    def since(self, moment: float) -> list[Envelope]:
        with self.lock:
            return [e for e in self.envelopes if e.received >= moment]

    def settle(self, quiet: float = 3.0, timeout: float = 60.0) -> None:
        """Wait until nothing has arrived for ``quiet`` seconds, counted from the call at the earliest (the
        exporter's batches are sent)."""
        called = time.monotonic()
        deadline = called + timeout
        while time.monotonic() < deadline:
            with self.lock:
                last = max(called, self.envelopes[-1].received if self.envelopes else called)
            if time.monotonic() - last >= quiet:
                return
            time.sleep(0.2)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start() -> Ingestion:
    """Serve on a free loopback port, in a daemon thread."""
    holder: dict[str, Ingestion] = {}

    class Track(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            sink = holder["sink"]
            accepted = 0
            if self.path.rstrip("/").endswith("/track"):
                now = time.monotonic()
                items = json.loads(body or b"[]")
                with sink.lock:
                    for item in items if isinstance(items, list) else [items]:
                        sink.envelopes.append(Envelope(now, len(json.dumps(item, separators=(",", ":"))), item))
                        accepted += 1
            else:
                with sink.lock:
                    sink.live_posts += 1
            answer = json.dumps({"itemsReceived": accepted, "itemsAccepted": accepted, "errors": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Track)
    sink = Ingestion(server)
    holder["sink"] = sink
    threading.Thread(target=server.serve_forever, name="ingestion", daemon=True).start()
    return sink
