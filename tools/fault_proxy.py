"""A loopback HTTP proxy in front of Azurite that makes storage *writes* fail (queue message puts, and table entity
writes when it fronts the table service): a development tool, never deployed.

    python -m tools.fault_proxy --target-port 10001 [--port 0] [--before-share 0.005] [--after-share 0.005]
                                [--seed 1] [--state-dir .local/fault_proxy]

The reliability run injects storage put failures from outside the app: the app and the local Functions host get a
connection string whose ``QueueEndpoint`` points here instead of at Azurite, and nothing else changes. Every request
is forwarded verbatim (method, path and query, headers, body), so SharedKey signatures still verify; Azurite's
path-style URLs keep the account name in the path. Only puts, i.e. ``POST .../<queue>/messages`` (send) and
``PUT .../<queue>/messages/<id>?popreceipt=...`` (update), can fail, each with one roll of a seeded die:

* ``before`` (``before_share``): 503 ServerBusy, Azure-style, without forwarding: nothing was stored.
* ``after`` (``after_share``): forwarded (the message *is* stored), then the client connection is dropped without an
  answer: the client sees a connection error although the put happened.

An outage window (``outage_from`` <= now < ``outage_until``, unix times) answers every request with 503, unforwarded.
The admin API on the same port, never forwarded: ``GET /_proxy/stats``, ``GET /_proxy/config`` and
``POST /_proxy/config`` (JSON with any of before_share, after_share, seed, outage_from, outage_until; a seed restarts
the die). On start it writes ``<state-dir>/fault_proxy.json`` (port, url, target) and prints one line. Stop it with
Ctrl-C or SIGTERM. ``start_fault_proxy`` runs it as a child process for tools and tests.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import random
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, fields
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from tools.devenv import Child

log = logging.getLogger("fault_proxy")

HOST = "127.0.0.1"
#: Path-style table URLs: /<account>/<table> (insert) and /<account>/<table>(PartitionKey='..',RowKey='..').
_TABLE_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")
_ENTITY_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}\(PartitionKey=.*,RowKey=.*\)")
ADMIN_PREFIX = "/_proxy/"
STATE_FILE = "fault_proxy.json"
# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection and are never relayed; Expect was answered here.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect"}
)
UPSTREAM_IDLE_LIMIT = 2.0  # seconds; Azurite drops keep-alive connections idle for 5 s, so never reuse one near that
UPSTREAM_TIMEOUT = 30.0
CLIENT_IDLE_TIMEOUT = 120.0


@dataclass
class FaultConfig:
    before_share: float = 0.0
    after_share: float = 0.0
    seed: int = 1
    outage_from: float | None = None
    outage_until: float | None = None

    def validate(self) -> None:
        for name in ("before_share", "after_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.before_share + self.after_share > 1.0:
            raise ValueError("before_share + after_share must not exceed 1")
        if (self.outage_from is None) != (self.outage_until is None):
            raise ValueError("outage_from and outage_until go together (both null to clear)")

    def in_outage(self, now: float) -> bool:
        return (
            self.outage_from is not None
            and self.outage_until is not None
            and self.outage_from <= now < self.outage_until
        )


def coerce_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """Checks the keys and types of a config change (JSON numbers, null clears an outage bound)."""
    known = {f.name for f in fields(FaultConfig)}
    unknown = set(changes) - known
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if value is None and name.startswith("outage_"):
            out[name] = None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = int(value) if name == "seed" else float(value)
        else:
            raise ValueError(f"{name} must be a number")
    return out


def is_put(method: str, path: str) -> bool:
    """A write the proxy may fail: a queue message's send (POST .../messages) or update (PUT
    .../messages/<id>?popreceipt=...), or a table entity's insert (POST .../<table>), update or delete (PUT, MERGE,
    PATCH or DELETE .../<table>(PartitionKey='..',RowKey='..')). Creating a queue or a table is not one."""
    parts = urlsplit(path)
    segments = [s for s in parts.path.split("/") if s]
    if method == "POST":
        if bool(segments) and segments[-1] == "messages":
            return True
        return len(segments) == 2 and _TABLE_RE.fullmatch(segments[1]) is not None and segments[1] != "Tables"
    if method in ("PUT", "MERGE", "PATCH", "DELETE") and len(segments) == 2 and _ENTITY_RE.fullmatch(segments[1]):
        return True
    return (
        method == "PUT" and len(segments) >= 2 and segments[-2] == "messages" and "popreceipt" in parse_qs(parts.query)
    )


class Faults:
    """The configuration, the seeded die and the counters, shared by the handler threads."""

    def __init__(self, config: FaultConfig):
        config.validate()
        self._lock = threading.Lock()
        self._config = config
        self._rng = random.Random(config.seed)
        self._counts: Counter[str] = Counter()
        self._by_method: Counter[str] = Counter()

    def config(self) -> dict[str, Any]:
        with self._lock:
            return asdict(self._config)

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        clean = coerce_changes(changes)
        with self._lock:
            candidate = FaultConfig(**{**asdict(self._config), **clean})
            candidate.validate()
            self._config = candidate
            if "seed" in clean:
                self._rng = random.Random(candidate.seed)
            return asdict(candidate)

    def decide(self, method: str, path: str) -> str | None:
        """``"outage"``, ``"before"``, ``"after"`` or None (pass through); counts the request. One roll per put."""
        with self._lock:
            self._counts["requests"] += 1
            self._by_method[method] += 1
            put = is_put(method, path)
            self._counts["puts"] += put
            fault = self._roll(put)
            if fault:
                self._counts[f"failed_{fault}"] += 1
            return fault

    def _roll(self, put: bool) -> str | None:
        if self._config.in_outage(time.time()):
            return "outage"
        if not put:
            return None
        roll = self._rng.random()
        if roll < self._config.before_share:
            return "before"
        if roll < self._config.before_share + self._config.after_share:
            return "after"
        return None

    def count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def stats(self) -> dict[str, Any]:
        """Counts since start: requests (admin ones excluded), forwarded (answered by the target, after-faults
        included), puts, failed_<kind> per injected fault, target_errors (answered 502), requests by_method."""
        names = ("requests", "forwarded", "puts", "failed_before", "failed_after", "failed_outage", "target_errors")
        with self._lock:
            return {**{n: self._counts[n] for n in names}, "by_method": dict(self._by_method)}


@dataclass
class Answer:
    """A response as read from the target, body complete (de-chunked by http.client)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


def azure_error_body(code: str, message: str) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime())
    return (
        f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{message}\n'
        f"RequestId:{uuid.uuid4()}\nTime:{stamp}</Message></Error>"
    ).encode()


def hop_by_hop(headers: list[tuple[str, str]]) -> frozenset[str]:
    """The hop-by-hop header names, including any a Connection header lists."""
    named = {
        token.strip().lower() for name, value in headers if name.lower() == "connection" for token in value.split(",")
    }
    return HOP_BY_HOP | named


def body_allowed(method: str, status: int) -> bool:
    return method != "HEAD" and status >= 200 and status not in (204, 304)


class ProxyHandler(BaseHTTPRequestHandler):
    """One client connection (keep-alive): requests are forwarded one by one over one upstream connection."""

    protocol_version = "HTTP/1.1"
    timeout = CLIENT_IDLE_TIMEOUT
    disable_nagle_algorithm = True  # headers and body go out in two writes: without this, delayed ACKs cost 40 ms each
    server: FaultProxyServer
    _upstream: http.client.HTTPConnection | None = None
    _upstream_used = 0.0

    def handle_request(self) -> None:
        body = self._read_body()
        if body is None:
            return
        if self.path.startswith(ADMIN_PREFIX):
            self._admin(body)
            return
        fault = self.server.faults.decide(self.command, self.path)
        if fault in ("outage", "before"):
            log.info("%s: 503 ServerBusy for %s %s, not forwarded", fault, self.command, self.path)
            self._send_azure_error(503, "ServerBusy", "The server is busy.")
            return
        answer = self._forward(body)
        if answer is None:
            self._send_azure_error(502, "ProxyTargetError", f"The fault proxy could not reach {self.server.target}.")
        elif fault == "after":
            log.info(
                "after: %s %s forwarded (target answered %d), dropping the client connection",
                self.command,
                self.path,
                answer.status,
            )
            self._drop_connection()
        else:
            self._relay(answer)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_MERGE = handle_request  # noqa: N815 - http.server's names

    def _read_body(self) -> bytes | None:
        """The request body by Content-Length; None after answering a request this proxy will not forward."""
        if "transfer-encoding" in {k.lower() for k in self.headers}:
            self.close_connection = True  # the body's end is unknown: the rest of the stream cannot be trusted
            self._send_azure_error(
                411, "MissingContentLengthHeader", "The fault proxy needs Content-Length on request bodies."
            )
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            self._send_azure_error(400, "InvalidHeaderValue", "Content-Length is not a valid length.")
            return None
        body = self.rfile.read(length)
        if len(body) < length:
            # logged by handle_error
            raise ConnectionResetError(f"client closed after {len(body)} of {length} body bytes")
        return body

    def _connection(self) -> http.client.HTTPConnection:
        idle = time.monotonic() - self._upstream_used
        if self._upstream is not None and idle > UPSTREAM_IDLE_LIMIT:
            self._close_upstream()
        if self._upstream is None:
            self._upstream = http.client.HTTPConnection(HOST, self.server.target_port, timeout=UPSTREAM_TIMEOUT)
        return self._upstream

    def _close_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def _forward(self, body: bytes) -> Answer | None:
        """Sends the request to the target as received; None (logged, counted) when the target fails."""
        items = self.headers.items()
        skip = hop_by_hop(items)
        conn = self._connection()
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in items:
                if name.lower() not in skip:
                    conn.putheader(name, value)
            conn.endheaders(body or None)
            resp = conn.getresponse()
            answer = Answer(resp.status, resp.reason, resp.getheaders(), resp.read())
        except (OSError, http.client.HTTPException) as exc:
            self._close_upstream()
            self.server.faults.count("target_errors")
            log.warning("target error on %s %s: %r", self.command, self.path, exc)
            return None
        if resp.will_close:
            self._close_upstream()
        self._upstream_used = time.monotonic()
        self.server.faults.count("forwarded")
        return answer

    def _relay(self, answer: Answer) -> None:
        skip = hop_by_hop(answer.headers)
        headers = [(k, v) for k, v in answer.headers if k.lower() not in skip]
        if body_allowed(self.command, answer.status) and not any(k.lower() == "content-length" for k, _ in headers):
            headers.append(("Content-Length", str(len(answer.body))))  # was chunked (or close-delimited) upstream
        self._respond(answer.status, answer.reason, headers, answer.body)

    def _respond(self, status: int, reason: str | None, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response_only(status, reason)  # no Server/Date of our own: the target's are relayed
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and body_allowed(self.command, status):
            self.wfile.write(body)

    def _send_azure_error(self, status: int, code: str, message: str) -> None:
        body = azure_error_body(code, message)
        self._respond(
            status,
            None,
            [
                ("Content-Type", "application/xml"),
                ("Content-Length", str(len(body))),
                ("x-ms-error-code", code),
                ("x-ms-request-id", str(uuid.uuid4())),
                ("Date", formatdate(usegmt=True)),
            ],
            body,
        )

    def _send_json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self._respond(status, None, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body)

    def _admin(self, body: bytes) -> None:
        route = (self.command, urlsplit(self.path).path)
        faults = self.server.faults
        if route == ("GET", "/_proxy/stats"):
            self._send_json(200, faults.stats())
        elif route == ("GET", "/_proxy/config"):
            self._send_json(200, faults.config())
        elif route == ("POST", "/_proxy/config"):
            try:
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("the body must be a JSON object")
                new = faults.update(changes)
            except ValueError as exc:  # JSONDecodeError is a ValueError
                self._send_json(400, {"error": str(exc)})
                return
            log.info("config now %s", new)
            self._send_json(200, new)
        else:
            self._send_json(404, {"error": f"no admin route {route[0]} {route[1]}"})

    def _drop_connection(self) -> None:
        """Closes the client connection without an answer, as a lost response looks to the client."""
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client is gone already
            self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        self._close_upstream()
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)


class FaultProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], target_port: int, faults: Faults):
        super().__init__(address, ProxyHandler)
        self.target_port = target_port
        self.faults = faults

    @property
    def target(self) -> str:
        return f"http://{HOST}:{self.target_port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that goes away ends its connection's thread, quietly;
        anything else is logged, the server goes on."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.info("client %s:%s went away: %r", *client_address[:2], exc)
        else:
            log.error("unexpected error serving %s:%s", *client_address[:2], exc_info=exc)


def write_state(state_dir: Path, info: dict[str, Any]) -> None:
    """Written whole or not at all: readers poll for the file."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(info), encoding="utf-8")
    os.replace(tmp, state_dir / STATE_FILE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fault_proxy", description=__doc__.split("\n")[0])
    parser.add_argument("--target-port", type=int, required=True, help="Azurite's queue port on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="port to listen on, 0 for any free one (default 0)")
    parser.add_argument("--before-share", type=float, default=0.005, help="share of puts answered 503 unforwarded")
    parser.add_argument(
        "--after-share", type=float, default=0.005, help="share of puts forwarded, then the answer dropped"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the die (default 1)")
    parser.add_argument("--state-dir", default=".local/fault_proxy", help=f"where {STATE_FILE} goes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    try:
        faults = Faults(FaultConfig(args.before_share, args.after_share, args.seed))
    except ValueError as exc:
        parser.error(str(exc))

    server = FaultProxyServer((HOST, args.port), args.target_port, faults)
    port = server.server_address[1]
    url = f"http://{HOST}:{port}"
    write_state(Path(args.state_dir), {"port": port, "url": url, "target": server.target})

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"Fault proxy listening on {url} -> {server.target}; admin: {url}{ADMIN_PREFIX}stats", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    log.info("stopped; stats %s", faults.stats())
    return 0


# ---- for tools and tests: the proxy as a child process ----------------------------------------------------------

CLI_SETTINGS = ("before_share", "after_share", "seed")


@dataclass
class FaultProxy:
    port: int
    target_port: int
    child: Child

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _admin(self, method: str, name: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            body = None if payload is None else json.dumps(payload)
            conn.request(method, f"{ADMIN_PREFIX}{name}", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            answer = json.loads(resp.read())
        finally:
            conn.close()
        if resp.status != 200:
            raise ValueError(f"fault proxy {method} {name}: {resp.status} {answer}")
        return answer

    def stats(self) -> dict[str, Any]:
        return self._admin("GET", "stats")

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Any of before_share, after_share, seed, outage_from, outage_until; returns the new configuration."""
        return self._admin("POST", "config", changes)

    def connection_string(self, table_port: int) -> str:
        """Azurite's connection string with the proxy as QueueEndpoint (and Azurite's table service at
        ``table_port``)."""
        from tools.devenv import AzuritePorts, azurite_connection_string

        return azurite_connection_string(AzuritePorts(queue=self.port, table=table_port))

    def stop(self) -> None:
        self.child.stop()


def start_fault_proxy(log_dir: Path, target_port: int, *, name: str = "fault_proxy", **config: Any) -> FaultProxy:
    """The proxy as a child process (log ``<log_dir>/<name>.log``); ``config`` as for ``FaultProxy.configure``.

    Shares and seed left out take the command line's defaults (0.005, 0.005, 1).
    """
    from tools.devenv import _spawn, wait_for  # here, not at the top: the proxy process itself needs none of the app

    log_dir.mkdir(parents=True, exist_ok=True)
    state_dir = Path(tempfile.mkdtemp(prefix="fault-proxy-", dir=log_dir))
    flags = [
        arg for key in CLI_SETTINGS if key in config for arg in (f"--{key.replace('_', '-')}", str(config.pop(key)))
    ]
    child = _spawn(
        name,
        [
            sys.executable,
            "-m",
            "tools.fault_proxy",
            "--target-port",
            str(target_port),
            "--port",
            "0",
            "--state-dir",
            str(state_dir),
            *flags,
        ],
        log_dir,
    )
    info_path = state_dir / STATE_FILE
    try:
        wait_for(lambda: info_path.exists() or child.proc.poll() is not None, 30, 0.05, "the fault proxy to start")
        if child.proc.poll() is not None:
            raise RuntimeError(f"fault proxy exited: {child.log()[-2000:]}")
        proxy = FaultProxy(json.loads(info_path.read_text(encoding="utf-8"))["port"], target_port, child)
        if config:
            proxy.configure(**config)
    except BaseException:
        child.stop()
        raise
    return proxy


if __name__ == "__main__":
    sys.exit(main())
