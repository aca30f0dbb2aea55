"""The emulator's HTTP server: TLS, the request log, faults, auth and the rate limit, then the route tables.

The request handler only parses, calls and renders: routes are in ``urls.py``, handlers in ``responses.py``,
``identity.py`` and ``admin.py``, rules in ``models.py``, faults and the rate limit in ``faults.py``, error bodies in
``exceptions.py``. Every Partner Center and Entra ID request is logged (``GET /_emulator/requests``) before faults
apply; admin requests are not. Partner Center bodies start with a UTF-8 BOM (knob ``bom``); Entra ID's and the admin
API's never do.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tools.pc_emulator import admin, faults, identity, urls
from tools.pc_emulator.exceptions import Answer, ApiError, DropConnectionError, resource_not_found, unauthorised
from tools.pc_emulator.models import Sandbox, iso
from tools.pc_emulator.responses import Request

BOM = b"\xef\xbb\xbf"


def _log_subscriptions(entry: dict[str, Any], path: str, raw: bytes, body: Any) -> None:
    """What the request log shows of a subscription call (for ``make demo`` and the tests): the status a PATCH asked
    for, the status a subscription read shows, and the (id, status) pairs a listing shows."""
    if "/subscriptions" not in path:
        return
    if entry["method"] == "PATCH":
        try:
            asked = json.loads(raw.decode("utf-8-sig") or "null")
        except ValueError:
            asked = None
        if isinstance(asked, dict) and isinstance(asked.get("status"), str):
            entry["askedStatus"] = asked["status"]
    if isinstance(body, dict) and isinstance(body.get("status"), str):
        entry["subscriptionStatus"] = body["status"]
    if isinstance(body, dict) and isinstance(body.get("items"), list):
        entry["items"] = [[i.get("id"), i.get("status")] for i in body["items"] if isinstance(i, dict)]


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sandbox: Sandbox, ssl_context: ssl.SSLContext | None):
        super().__init__(address, Handler)
        self.sandbox = sandbox
        self.ssl_context = ssl_context

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.ssl_context is None:
            return sock, addr
        # The TLS handshake happens on first read, in the handler thread, so a slow client cannot stall accept().
        return self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:  # client went away: not our problem
        pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EmulatorServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature; quiet, the request log is the record
        pass

    # one entry point for every method
    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        sandbox = self.server.sandbox
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        path, query = parts.path, {k.lower(): v for k, v in parse_qs(parts.query).items()}
        now = time.time()
        entry: dict[str, Any] = {
            "time": iso(datetime.fromtimestamp(now, UTC)),
            "t": now,
            "method": method,
            "path": path,
            "query": parts.query,
            "requestId": self.headers.get("MS-RequestId"),
            "correlationId": self.headers.get("MS-CorrelationId"),
            "continuation": self.headers.get("MS-ContinuationToken"),
            "auth": bool(self.headers.get("Authorization")),
            "status": None,
        }
        try:
            if path.startswith("/_emulator/"):
                status, body, headers = admin.handle(sandbox, method, path, query, raw)
            else:
                with sandbox.lock:
                    entry["seq"] = len(sandbox.log)
                    sandbox.log.append(entry)
                status, body, headers = self._serve(Request(sandbox, method, path, query, self._read_headers(), raw))
        except DropConnectionError:
            with sandbox.lock:
                entry["status"] = "dropped"
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        with sandbox.lock:
            entry["status"] = status
            if status == 429 and headers.get("Retry-After"):
                entry["retryAfter"] = headers["Retry-After"]
            if isinstance(body, dict) and "/orders/" in path and isinstance(body.get("status"), str):
                entry["orderStatus"] = body["status"]
            _log_subscriptions(entry, path, raw, body)
        self._send(status, body, headers, bom=not path.startswith("/_emulator/") and not identity.is_identity(path))

    def _read_headers(self) -> dict[str, str]:
        return {
            k: v for k in ("Host", "Authorization", "MS-ContinuationToken", "If-Match") if (v := self.headers.get(k))
        }

    def _serve(self, req: Request) -> Answer:
        """Faults first (they cover the token endpoint too), then Entra ID, or Partner Center after its token check
        and its rate limit. Any ``ApiError`` is rendered here; a dropped connection is raised."""
        sandbox = req.sandbox
        try:
            with sandbox.lock:
                chosen = faults.choose(sandbox.faults, sandbox.random, req.method, req.path, time.time())
            if chosen is not None:
                faults.inject(chosen)
            if identity.is_identity(req.path):
                return self._route(urls.IDENTITY, req, resolve=False)
            if not sandbox.authorised(req.headers.get("Authorization", "")):
                raise unauthorised()
            sandbox.admit()
            with sandbox.lock:
                return self._route(urls.API, req, resolve=True)
        except ApiError as exc:
            return exc.answer()

    @staticmethod
    def _route(table: tuple[urls.Route, ...], req: Request, *, resolve: bool) -> Answer:
        """The handler of the route the path matches. With ``resolve``, the customer (``cid``) and the order
        (``oid``) the path names are looked up first, so a missing one is a 404 whatever the method."""
        found = urls.match(table, req.path)
        if found is None:
            raise resource_not_found()
        route, groups = found
        args: dict[str, Any] = dict(groups)
        if resolve:
            args = {}
            if "cid" in groups:
                args["customer"] = req.sandbox.customer(groups["cid"])
            if "oid" in groups:
                args["order"] = args["customer"].order(groups["oid"])
            if "sid" in groups:
                args["subscription"] = args["customer"].subscription(groups["sid"])
            if "eid" in groups:
                args["entitlement"] = args["customer"].azure_entitlement(args["subscription"], groups["eid"])
        handler = route.methods.get(req.method)
        if handler is None:
            raise route.otherwise()
        return handler(req, **args)

    def _send(self, status: int, body: Any, headers: dict[str, str], *, bom: bool) -> None:
        data = b"" if body is None else json.dumps(body).encode("utf-8")
        if data and bom and self.server.sandbox.knobs.get("bom"):
            data = BOM + data
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key in ("MS-RequestId", "MS-CorrelationId"):
            if self.headers.get(key):
                self.send_header(key, self.headers[key])
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if data:
            self.wfile.write(data)
