"""A local Partner Center integration-sandbox emulator (HTTPS on loopback), with an Entra ID token endpoint.

It behaves like the documented API (../shared/reference/partner-center-api.md): customers (get, paged list),
entitlements (paged, nested), orders (get, list, PATCH to cancel with a configurable lag), DELETE customer with the
documented refusal while orders are active, error bodies in the documented shapes, a per-tenant rate limit answering
429 with Retry-After, a UTF-8 BOM on every body, and injected faults. Admin endpoints under ``/_emulator/`` expose
the state, the request log, the knobs and the faults. Development tool: never deployed.

* A fault may carry a time window, ``from`` and ``until`` (unix times as ``time.time()``, either optional): outside it
  the fault does not apply. A Partner Center outage is e.g. a 503 fault and a drop fault with the same window and the
  path ``.*`` (which also covers the token endpoint).
* The state shows each order's cancellation timing (``cancelRequestedAt``, ``readyAt``, ``cancelledAt``,
  ``cancellable``, see ``Sandbox.order_state``) and keeps deleted customers, as at their deletion, in
  ``deletedCustomers``.
* ``POST /_emulator/customers/<id>/orders`` adds purchases to an existing customer while a deletion runs. An order
  with ``hidden: true`` blocks DELETE but is in no entitlement (see ``Sandbox.new_order`` for every order knob).
* Each request log entry has ``time`` (ISO, ms) and ``t`` (the same moment as a unix time).
* A fault's ``path`` regex is searched in the request path only, never the query. A fault may carry ``skip`` (an
  int >= 0, default 0): the first ``skip`` requests it otherwise applies to (method, path, ``times`` left, window)
  pass untouched by it and draw nothing; only then does it apply, with ``times`` and ``share`` as before. So
  ``{"kind": "status", "status": 503, "method": "GET", "path": "^/v1/customers$", "skip": 2, "times": 1}`` fails
  exactly the third page of a customer listing. ``skip`` counts a request whether or not an earlier fault of the
  list is injected into it; the state shows what is left of it, like ``times``. An injected fault does not use up a
  continuation token: the same ``links.next`` can be asked again.
* ``GET /v1/customers`` requires ``size`` (a positive integer; else 400, code 800002) on the first page; a later
  page (``seekOperation=Next``) without ``size`` keeps the size asked before. The knob ``customersMaxPageSize``
  (0: no cap) caps every page whatever ``size`` asks, as a real server may answer fewer items than asked: clients
  must stop on a missing ``links.next`` only. ``links.next.uri`` is ``/customers?size=N&seekOperation=Next`` (no
  ``/v1``, N as asked) with the ``MS-ContinuationToken`` header, and the token is also the top-level
  ``continuationToken``. ``totalCount`` is the number of items on that page, not of the whole collection.
* A customer's ``companyName`` and ``domain`` are any JSON string or null, shown exactly (hostile text included) by
  the list, the GET and the state. ``full_sandbox_customers`` makes a full, deterministic test sandbox;
  ``POST /_emulator/customers/fill`` (``{"count": 75, "seed": 7, "prefix": "Tip test run"}``) adds it, and
  ``python -m tools.pc_emulator --full-sandbox N`` starts with it.
* Storage tokens: a client-credentials request for ``https://storage.azure.com/.default`` gets a JWT shaped like
  Entra ID's v1 app tokens for Azure Storage (``iss`` ``https://sts.windows.net/<tenant>/``, ``aud``
  ``https://storage.azure.com``, ``tid``, ``oid``, ``appid``, ``iat``/``nbf``/``exp``), RS256-signed with a key made
  at start (its JWKS at the ``jwks_uri`` of the OpenID configuration). Azurite's ``--oauth basic`` accepts it. Either
  the partner's app registration or the storage identity (seed ``storageIdentity``, default
  ``DEFAULT_STORAGE_IDENTITY``; storage tokens only) may ask for one. Partner Center never accepts them, and
  ``revoke-tokens`` cannot reach them (Azurite keeps accepting a storage token until its ``exp``).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import math
import random
import re
import secrets
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
ORDER = r"[A-Za-z0-9_-]{1,64}"
BOM = b"\xef\xbb\xbf"

DEFAULT_KNOBS: dict[str, Any] = {
    "bom": True,  # a UTF-8 BOM before every JSON body
    "statusCase": "lower",  # lower | title | upper: casing of order statuses on the wire
    "rateLimitPerWindow": 500,  # requests per partner tenant per window (documented: 500/minute)
    "rateLimitWindowSeconds": 60,
    "entitlementsPageSize": 0,  # 0: one page; n: page through links.next + MS-ContinuationToken
    "customersMaxPageSize": 0,  # 0: pages of the size asked; n: at most n customers a page, whatever size asks
    "cancellationWindowDays": 60,  # orders older than this refuse PATCH (900117)
    "secondCancel": "idempotent",  # idempotent | error (800061) when an already cancelled order is cancelled again
    "deleteRefusalStatus": 400,  # HTTP status of the DELETE refusal while orders are active
    "tokenLifetimeSeconds": 3600,
    "randomSeed": 1,
}


#: The storage scope and the claims of a storage token (Entra ID v1 app tokens, as Azure Storage gets them).
STORAGE_SCOPE = "https://storage.azure.com/.default"
STORAGE_AUDIENCE = "https://storage.azure.com"
#: The second app registration of the emulated tenant, for identity-based storage only (a seed's ``storageIdentity``
#: replaces it). Development values, not a secret of anything real.
DEFAULT_STORAGE_IDENTITY = {
    "clientId": "7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d9e0f",
    "clientSecret": "local-emulator-storage-secret-not-a-real-one",
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenSigner:
    """An RSA key made at start: storage tokens are RS256 JWTs with its ``kid``, verifiable with ``jwks()``."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(8)

    def sign(self, claims: dict) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = self.key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def jwks(self) -> dict:
        numbers = self.key.public_key().public_numbers()

        def b64int(n: int) -> str:
            return _b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "alg": "RS256",
                    "kid": self.kid,
                    "n": b64int(numbers.n),
                    "e": b64int(numbers.e),
                }
            ]
        }


def storage_token_claims(tenant_id: str, client_id: str, now: float, lifetime: int) -> dict:
    """What Azurite's basic OAuth checks (iss prefix, aud, iat/nbf/exp) plus the usual app-token claims."""
    oid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"pc-emulator:service-principal:{client_id.lower()}"))
    issued = int(now)
    return {
        "aud": STORAGE_AUDIENCE,
        "iss": f"https://sts.windows.net/{tenant_id}/",
        "iat": issued,
        "nbf": issued,
        "exp": issued + lifetime,
        "appid": client_id,
        "appidacr": "1",
        "idp": f"https://sts.windows.net/{tenant_id}/",
        "idtyp": "app",
        "oid": oid,
        "sub": oid,
        "tid": tenant_id,
        "uti": secrets.token_urlsafe(16),
        "ver": "1.0",
    }


class DropConnectionError(Exception):
    """Close the connection without an answer."""


@dataclass
class Fault:
    """An injected fault. It applies to a request whose method and path (a regex, searched) match, while ``times``
    lasts and while the clock is inside its window: from ``start`` (``from`` in JSON) included to ``until`` excluded,
    unix times as ``time.time()``; a missing bound is unbounded. ``path`` is searched in the path only (no query).
    While ``skip`` is above 0, a request the fault applies to counts it down and passes untouched by it, without a
    draw (whether or not another fault is injected into it). Of the faults that apply with no ``skip`` left, the
    first that wins its seeded random draw against ``share`` is injected; a fault that does not apply draws nothing,
    and neither do the faults after the injected one."""

    kind: str  # status | throttle | drop | slow
    method: str = "*"
    path: str = ".*"
    share: float = 1.0
    times: int | None = None  # remaining injections; None: unlimited
    status: int = 503
    seconds: float = 1.0  # slow: delay; throttle: Retry-After
    start: float | None = None  # "from": unix time the window opens; None: always open before "until"
    until: float | None = None  # unix time the window closes; None: never
    skip: int = 0  # requests the fault would apply to that still pass untouched (counted down, no draw)

    @classmethod
    def from_json(cls, data: dict) -> Fault:
        keys = ("kind", "method", "path", "share", "times", "status", "seconds", "until", "skip")
        fault = cls(**{k: data[k] for k in keys if k in data}, start=data.get("from"))
        if fault.kind not in ("status", "throttle", "drop", "slow"):
            raise ValueError(f"unknown fault kind {fault.kind!r}")
        if isinstance(fault.skip, bool) or not isinstance(fault.skip, int) or fault.skip < 0:
            raise ValueError(f"fault 'skip' must be an integer >= 0, not {fault.skip!r}")
        re.compile(fault.path)
        for bound in (fault.start, fault.until):
            if bound is not None and (
                isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound)
            ):
                raise ValueError(f"fault window bounds 'from' and 'until' must be unix times (numbers), not {bound!r}")
        if fault.start is not None and fault.until is not None and fault.start >= fault.until:
            raise ValueError("fault window: 'from' must be before 'until'")
        return fault

    def to_json(self) -> dict:
        data = dict(self.__dict__)
        data["from"] = data.pop("start")
        return data

    def applies(self, method: str, path: str, now: float) -> bool:
        return (
            self.method in ("*", method)
            and re.search(self.path, path) is not None
            and (self.times is None or self.times > 0)
            and (self.start is None or self.start <= now)
            and (self.until is None or now < self.until)
        )


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Sandbox:
    """All emulator state, guarded by one lock."""

    def __init__(self, seed: dict):
        self.lock = threading.RLock()
        self.seed = copy.deepcopy(seed)
        self.signer = TokenSigner()
        self.reset()

    def reset(self, seed: dict | None = None) -> None:
        with self.lock:
            if seed is not None:
                self.seed = copy.deepcopy(seed)
            s = self.seed
            self.partner = dict(s.get("partner") or {})
            self.storage_identity = dict(s.get("storageIdentity") or DEFAULT_STORAGE_IDENTITY)
            self.knobs = dict(DEFAULT_KNOBS, **(s.get("knobs") or {}))
            self.random = random.Random(self.knobs["randomSeed"])
            self.faults = [Fault.from_json(f) for f in s.get("faults") or []]
            self.customers: dict[str, dict] = {}
            self.deleted: dict[str, list[str]] = {}  # customer id -> times of accepted DELETEs
            self.deleted_customers: dict[str, dict] = {}  # customer id -> its state entry at its (last) deletion
            self.violations: list[dict] = []  # DELETEs received while an order was not cancelled
            self.tokens: dict[str, float] = {}
            self.log: list[dict] = []
            self.windows: dict[str, deque] = {}
            self.continuations: dict[str, tuple[str, int, int]] = {}  # token -> (owner, first item, page size)
            for customer in s.get("customers") or []:
                self.add_customer(customer)

    @staticmethod
    def new_order(o: dict, now: float) -> dict:
        """An order from its seed knobs, added at unix time ``now``: ``id``; ``alternateId`` (default random);
        ``status`` (default ``completed``; ``cancelled`` counts as cancelled at ``now``); ``kind``
        (``reservedInstance``,
        ``software``, or ``license``, which refuses PATCH with 800063); ``ageDays`` (default 1; older than the
        ``cancellationWindowDays`` knob refuses PATCH with 900117); after an accepted cancel PATCH it reads ``pending``
        until it has been read more than ``cancelAfterReads`` times and ``cancelAfterSeconds`` have passed, or forever
        with ``neverCancels``; ``hidden``: in no derived entitlement (like an Azure plan the app cannot see), yet it
        blocks DELETE until cancelled, and the order list and a read by id show it."""
        age = float(o.get("ageDays", 1))
        status = o.get("status", "completed")
        return {
            "id": o["id"],
            "alternateId": o.get("alternateId") or secrets.token_hex(6),
            "status": status,
            "creationDate": _iso(datetime.fromtimestamp(now, UTC) - timedelta(days=age)),
            "ageDays": age,
            "kind": o.get("kind", "reservedInstance"),
            "cancelAfterReads": int(o.get("cancelAfterReads", 0)),
            "cancelAfterSeconds": float(o.get("cancelAfterSeconds", 0)),
            "neverCancels": bool(o.get("neverCancels", False)),
            "hidden": bool(o.get("hidden", False)),
            "addedAt": now,
            "cancelRequestedAt": None,
            "readyAt": now if status == "cancelled" else None,
            "cancelledAt": now if status == "cancelled" else None,
            "readsSinceCancel": 0,
            "patches": 0,
        }

    @staticmethod
    def check_customer(data: Any) -> None:
        """ValueError unless ``data`` is a customer a seed may hold: an object with a GUID ``id``, ``companyName`` and
        ``domain`` absent, null or any string (shown exactly as given, however hostile), and ``orders`` a list of
        objects with a string ``id``."""
        if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not re.fullmatch(GUID, data["id"]):
            raise ValueError(f"a customer must be an object with a GUID id, not {str(data)[:200]!r}")
        for key in ("companyName", "domain"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ValueError(f"customer {data['id']}: {key} must be a string or null")
        orders = data.get("orders")
        if orders is not None and not (
            isinstance(orders, list) and all(isinstance(o, dict) and isinstance(o.get("id"), str) for o in orders)
        ):
            raise ValueError(f"customer {data['id']}: orders must be a list of objects with a string id")

    def add_customer(self, data: dict) -> None:
        """Add a customer (one of a seed's), replacing any with its id. ValueError (see ``check_customer``)."""
        self.check_customer(data)
        with self.lock:
            cid = data["id"].lower()
            now = time.time()
            orders = {o["id"]: self.new_order(o, now) for o in data.get("orders") or []}
            entitlements = data.get("entitlements")
            if entitlements is None:
                entitlements = _derived_entitlements(orders)
            self.customers[cid] = {
                "id": cid,
                "companyName": data.get("companyName", f"Test customer {cid[:8]}"),
                "domain": data.get("domain", f"test{cid[:8]}.onmicrosoft.com"),
                "orders": orders,
                "entitlements": entitlements,
            }

    def add_orders(self, cid: str, data: list) -> int:
        """New purchases of an existing customer: listed in its entitlements from now on, unless license or hidden.
        Returns the customer's order count. ValueError (nothing added) for a malformed or already existing order."""
        with self.lock:
            customer = self.customers[cid]
            if not all(isinstance(o, dict) and isinstance(o.get("id"), str) for o in data):
                raise ValueError("each order must be an object with a string id")
            taken = sorted({o["id"] for o in data} & set(customer["orders"]))
            if taken:
                raise ValueError(f"orders already exist: {taken}")
            now = time.time()
            orders = {o["id"]: self.new_order(o, now) for o in data}
            customer["orders"].update(orders)
            customer["entitlements"].extend(_derived_entitlements(orders))
            return len(customer["orders"])

    # -- order state machine --------------------------------------------------------------------------------------

    def _advance(self, order: dict) -> None:
        if order["status"] != "pending" or order["cancelRequestedAt"] is None or order["neverCancels"]:
            return
        order["readsSinceCancel"] += 1
        now = time.time()
        if (
            order["readsSinceCancel"] > order["cancelAfterReads"]
            and now - order["cancelRequestedAt"] >= order["cancelAfterSeconds"]
        ):
            order["status"], order["cancelledAt"] = "cancelled", now

    def wire_status(self, status: str) -> str:
        case = self.knobs.get("statusCase", "lower")
        return status.upper() if case == "upper" else status.title() if case == "title" else status.lower()

    def order_json(self, cid: str, order: dict) -> dict:
        return {
            "id": order["id"],
            "alternateId": order["alternateId"],
            "referenceCustomerId": cid,
            "billingCycle": "one_time",
            "currencyCode": "USD",
            "currencySymbol": "$",
            "creationDate": order["creationDate"],
            "status": self.wire_status(order["status"]),
            "transactionType": "UserPurchase",
            "lineItems": [
                {
                    "lineItemNumber": 0,
                    "offerId": "DZH318Z0BQ3W:007J:DZH318Z0BQ3W",
                    "friendlyName": "Reserved VM Instance",
                    "quantity": 1,
                }
            ],
            "links": {"self": {"uri": f"/customers/{cid}/orders/{order['id']}", "method": "GET", "headers": []}},
            "attributes": {"objectType": "Order"},
        }

    def order_state(self, order: dict) -> dict:
        """An order as the state shows it. Unix times: ``addedAt``; ``cancelRequestedAt``, of the first accepted cancel
        PATCH; ``readyAt``, the earliest a read can return cancelled (known when the order cancels by time alone, or
        was added cancelled); ``cancelledAt``, when its status became cancelled. ``cancellable``: a cancel PATCH can
        get it cancelled (not license, not past the cancellation window, not ``neverCancels``)."""
        cancellable = (
            order["kind"] != "license"
            and not order["neverCancels"]
            and order["ageDays"] <= float(self.knobs["cancellationWindowDays"])
        )
        keys = (
            "status",
            "alternateId",
            "patches",
            "kind",
            "hidden",
            "addedAt",
            "cancelRequestedAt",
            "readyAt",
            "cancelledAt",
        )
        return {**{k: order[k] for k in keys}, "cancellable": cancellable}

    def customer_state(self, customer: dict) -> dict:
        return {
            "companyName": customer["companyName"],
            "domain": customer["domain"],
            "orders": {oid: self.order_state(o) for oid, o in customer["orders"].items()},
        }

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "knobs": self.knobs,
                "faults": [f.to_json() for f in self.faults],
                "customers": {cid: self.customer_state(c) for cid, c in self.customers.items()},
                "deleted": self.deleted,
                "deletedCustomers": self.deleted_customers,
                "violations": self.violations,
                "requests": len(self.log),
            }


def error(status: int, code: Any, description: str, shape: str = "classic") -> tuple[int, dict, dict]:
    if shape == "gateway":
        return status, {"statusCode": status, "message": description}, {}
    if shape == "new":
        return (
            status,
            {
                "code": code,
                "message": description,
                "description": description,
                "errorName": "Error",
                "isRetryable": status >= 500,
                "parameters": {},
                "errorMessageExtended": f"InternalErrorCode={code}",
            },
            {},
        )
    return status, {"code": code, "description": description, "data": [], "source": "PartnerFD"}, {}


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
        entry = {
            "time": _iso(datetime.fromtimestamp(now, UTC)),
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
                status, body, headers = self._admin(method, path, query, raw)
            else:
                with sandbox.lock:
                    entry["seq"] = len(sandbox.log)
                    sandbox.log.append(entry)
                status, body, headers = self._faulted(method, path, query, raw)
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
        self._send(status, body, headers, bom=not path.startswith("/_emulator/") and not self._is_identity(path))

    def _send(self, status: int, body: Any, headers: dict, *, bom: bool) -> None:
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

    # -- faults, rate limit, auth ----------------------------------------------------------------------------------

    def _faulted(self, method: str, path: str, query: dict, raw: bytes) -> tuple[int, Any, dict]:
        sandbox = self.server.sandbox
        with sandbox.lock:
            chosen, now = None, time.time()
            for fault in sandbox.faults:
                if not fault.applies(method, path, now):
                    continue
                if fault.skip > 0:  # passes this request untouched, and draws nothing
                    fault.skip -= 1
                    continue
                if chosen is not None or sandbox.random.random() >= fault.share:
                    continue  # after the injected fault only the skips above count down
                if fault.times is not None:
                    fault.times -= 1
                chosen = copy.copy(fault)
        if chosen is not None:
            if chosen.kind == "drop":
                raise DropConnectionError()
            if chosen.kind == "slow":
                time.sleep(chosen.seconds)
            elif chosen.kind == "throttle":
                secs = max(1, math.ceil(chosen.seconds))
                return (
                    429,
                    {"statusCode": 429, "message": f"Rate limit is exceeded. Try again in {secs} seconds."},
                    {"Retry-After": str(secs)},
                )
            elif chosen.kind == "status":
                return error(
                    chosen.status,
                    800003 if chosen.status >= 500 else chosen.status,
                    "Unexpected service error (injected)",
                    "new",
                )
        if self._is_identity(path):
            return self._identity(method, path, raw)
        return self._api(method, path, query, raw)

    @staticmethod
    def _is_identity(path: str) -> bool:
        """The Entra ID side (token endpoint, OpenID configuration, signing keys): no BOM, no Partner Center auth."""
        return (
            "/oauth2/" in path
            or "/.well-known/" in path
            or re.fullmatch(r"/[^/]+/discovery/(v2\.0/)?keys", path) is not None
        )

    def _identity(self, method: str, path: str, raw: bytes) -> tuple[int, Any, dict]:
        sandbox = self.server.sandbox
        host = f"https://{self.headers.get('Host')}"
        m = re.fullmatch(r"/([^/]+)/v2\.0/\.well-known/openid-configuration", path)
        if m and method == "GET":
            t = m.group(1)
            return (
                200,
                {
                    "issuer": f"{host}/{t}/v2.0",
                    "token_endpoint": f"{host}/{t}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{host}/{t}/oauth2/v2.0/authorize",
                    "jwks_uri": f"{host}/{t}/discovery/v2.0/keys",
                    "response_types_supported": ["code", "token"],
                    "subject_types_supported": ["pairwise"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "tenant_region_scope": "NA",
                },
                {},
            )
        m = re.fullmatch(r"/([^/]+)/discovery/(v2\.0/)?keys", path)
        if m and method == "GET":
            return 200, sandbox.signer.jwks(), {}
        m = re.fullmatch(r"/([^/]+)/oauth2/(v2\.0/)?token", path)
        if m and method == "POST":
            form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
            partner, storage = sandbox.partner, sandbox.storage_identity
            if m.group(1).lower() != str(partner.get("tenantId", "")).lower():
                return 400, {"error": "invalid_tenant", "error_description": "AADSTS90002: Tenant not found."}, {}
            if form.get("grant_type") != "client_credentials":
                return (
                    400,
                    {"error": "unsupported_grant_type", "error_description": "AADSTS70003: only client_credentials"},
                    {},
                )
            client = next((app for app in (partner, storage) if form.get("client_id") == app.get("clientId")), None)
            if client is None or form.get("client_secret") != client.get("clientSecret"):
                return (
                    401,
                    {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."},
                    {},
                )
            lifetime = int(sandbox.knobs["tokenLifetimeSeconds"])
            if STORAGE_SCOPE in (form.get("scope") or "").split():
                token = sandbox.signer.sign(
                    storage_token_claims(str(partner["tenantId"]), client["clientId"], time.time(), lifetime)
                )
            elif client is storage:
                return (
                    400,
                    {
                        "error": "invalid_scope",
                        "error_description": "AADSTS70011: the storage identity gets storage tokens only.",
                    },
                    {},
                )
            else:
                token = "emu-" + secrets.token_urlsafe(32)
                with sandbox.lock:
                    sandbox.tokens[token] = time.time() + lifetime
            return (
                200,
                {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token},
                {},
            )
        return error(404, 404, "Resource not found", "gateway")

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization") or ""
        if not header.startswith("Bearer "):
            return False
        expiry = self.server.sandbox.tokens.get(header[7:])
        return expiry is not None and expiry > time.time()

    def _throttled(self) -> tuple[int, Any, dict] | None:
        sandbox = self.server.sandbox
        key = str(sandbox.partner.get("tenantId"))
        limit, window = int(sandbox.knobs["rateLimitPerWindow"]), float(sandbox.knobs["rateLimitWindowSeconds"])
        now = time.time()
        with sandbox.lock:
            q = sandbox.windows.setdefault(key, deque())
            while q and q[0] <= now - window:
                q.popleft()
            if len(q) >= limit:
                wait = max(1, math.ceil(q[0] + window - now))
                return (
                    429,
                    {"statusCode": 429, "message": f"Rate limit is exceeded. Try again in {wait} seconds."},
                    {"Retry-After": str(wait)},
                )
            q.append(now)
        return None

    # -- the API -----------------------------------------------------------------------------------------------------

    def _api(self, method: str, path: str, query: dict, raw: bytes) -> tuple[int, Any, dict]:
        if not self._authorised():
            return (
                401,
                {
                    "code": 800001,
                    "description": "Partner Token missing in request context",
                    "data": [],
                    "source": "PartnerFD",
                },
                {"WWW-Authenticate": "OAuth realm=urn:cpsvc:cpid:emulator"},
            )
        limited = self._throttled()
        if limited:
            return limited
        sandbox = self.server.sandbox
        with sandbox.lock:
            if method == "GET" and path.rstrip("/") == "/v1/customers":
                return self._list_customers(query)
            m = re.fullmatch(rf"/v1/customers/({GUID})(/entitlements|/orders(?:/({ORDER}))?)?/?", path)
            if not m:
                return error(404, 404, "Resource not found", "gateway")
            cid, sub, oid = m.group(1).lower(), m.group(2), m.group(3)
            customer = sandbox.customers.get(cid)
            if customer is None:
                return error(404, 60003, "Tenant not found")
            if sub is None:
                if method == "GET":
                    return (
                        200,
                        {
                            "id": cid,
                            "companyProfile": {
                                "tenantId": cid,
                                "domain": customer["domain"],
                                "companyName": customer["companyName"],
                            },
                            "relationshipToPartner": "reseller",
                            "attributes": {"objectType": "Customer"},
                        },
                        {},
                    )
                if method == "DELETE":
                    return self._delete_customer(cid, customer)
                return error(405, 405, "Method not allowed")
            if sub == "/entitlements" and method == "GET":
                return self._entitlements(cid, customer, query)
            if sub == "/orders" and method == "GET":
                items = []
                for order in customer["orders"].values():
                    sandbox._advance(order)
                    items.append(sandbox.order_json(cid, order))
                return (
                    200,
                    {
                        "totalCount": len(items),
                        "items": items,
                        "links": {"self": {"uri": f"/customers/{cid}/orders", "method": "GET", "headers": []}},
                        "attributes": {"objectType": "Collection"},
                    },
                    {},
                )
            if oid:
                order = customer["orders"].get(oid)
                if order is None:
                    return error(404, 20000, "Order Id not found")
                if method == "GET":
                    sandbox._advance(order)
                    return 200, sandbox.order_json(cid, order), {}
                if method == "PATCH":
                    return self._cancel(cid, order, raw)
            return error(405, 405, "Method not allowed")

    def _page(
        self, items: list, size: int | None, owner: str, next_uri: str, query: dict, body: dict, cap: int = 0
    ) -> int | None:
        """Put one page of ``items`` into ``body["items"]``; ``size`` 0 means one page, and ``cap`` > 0 at most ``cap``
        items whatever ``size`` asks. A later page is asked for with ``seekOperation=Next`` and the
        ``MS-ContinuationToken`` of ``links.next``, which only pages ``owner``'s collection; there ``size`` None keeps
        the size asked before. ``next_uri`` may hold ``{size}``. Returns the size asked (uncapped); None: the
        continuation token is not valid here (or a first page without a size)."""
        sandbox = self.server.sandbox
        start = 0
        if (query.get("seekoperation") or [""])[0].lower() == "next":
            token = self.headers.get("MS-ContinuationToken")
            if not token or sandbox.continuations.get(token, ("", 0, 0))[0] != owner:
                return None
            _, start, asked = sandbox.continuations.pop(token)
            size = asked if size is None else size
        if size is None:
            return None
        take = min(size, cap) if size and cap > 0 else size
        body["items"] = items[start : start + take] if take else items[start:]
        if take and start + take < len(items):
            nxt = secrets.token_urlsafe(16)
            sandbox.continuations[nxt] = (owner, start + take, size)
            body["continuationToken"] = nxt
            body["links"]["next"] = {
                "uri": next_uri.format(size=size),
                "method": "GET",
                "headers": [{"key": "MS-ContinuationToken", "value": nxt}],
            }
        return size

    def _list_customers(self, query: dict) -> tuple[int, Any, dict]:
        """Customers by id, in pages: ``size`` (required on the first page, a positive integer) capped by the
        ``customersMaxPageSize`` knob; ``totalCount`` counts the page's items."""
        sandbox = self.server.sandbox
        given = (query.get("size") or [None])[0]
        if given is not None and not (re.fullmatch(r"[0-9]{1,18}", given) and int(given) > 0):
            return error(400, 800002, "Invalid request input: size must be a positive integer")
        next_page = (query.get("seekoperation") or [""])[0].lower() == "next"
        if given is None and not next_page:
            return error(400, 800002, "Invalid request input: size is required")
        body: dict = {"links": {}, "attributes": {"objectType": "Collection"}}
        cap = int(sandbox.knobs.get("customersMaxPageSize") or 0)
        size = self._page(
            sorted(sandbox.customers),
            None if given is None else int(given),
            "customers",
            "/customers?size={size}&seekOperation=Next",
            query,
            body,
            cap,
        )
        if size is None:
            return error(400, 800002, "Invalid request input: continuation token")
        body["links"] = {"self": {"uri": f"/customers?size={size}", "method": "GET", "headers": []}, **body["links"]}
        body["items"] = [
            {
                "id": c,
                "companyProfile": {
                    "tenantId": c,
                    "domain": sandbox.customers[c]["domain"],
                    "companyName": sandbox.customers[c]["companyName"],
                },
                "relationshipToPartner": "reseller",
                "attributes": {"objectType": "Customer"},
            }
            for c in body["items"]
        ]
        body["totalCount"] = len(body["items"])
        return 200, body, {}

    def _entitlements(self, cid: str, customer: dict, query: dict) -> tuple[int, Any, dict]:
        sandbox = self.server.sandbox
        items = customer["entitlements"]
        wanted = (query.get("entitlementtype") or [""])[0].lower()
        if wanted:
            items = [
                e for e in items if str(e.get("entitlementType", "")).lower() in (wanted, "virtualmachine" + wanted)
            ]
        body: dict = {
            "totalCount": len(items),
            "attributes": {"objectType": "Collection"},
            "links": {"self": {"uri": f"/customers/{cid}/entitlements", "method": "GET", "headers": []}},
        }
        size = int(sandbox.knobs.get("entitlementsPageSize") or 0)
        if self._page(items, size, cid, f"/customers/{cid}/entitlements?seekOperation=Next", query, body) is None:
            return error(400, 800002, "Invalid request input: continuation token")
        return 200, body, {}

    def _cancel(self, cid: str, order: dict, raw: bytes) -> tuple[int, Any, dict]:
        sandbox = self.server.sandbox
        try:
            body = json.loads(raw.decode("utf-8-sig") or "{}")
        except ValueError:
            return error(400, 800002, "Invalid request input")
        if (
            not isinstance(body, dict)
            or str(body.get("status", "")).lower() != "cancelled"
            or body.get("id", order["id"]) != order["id"]
        ):
            return error(400, 3000, "Invalid property: status must be cancelled and id must match")
        order["patches"] += 1
        if order["kind"] == "license":
            return error(
                400,
                800063,
                f"This order {order['id']} cannot be canceled. Use PATCH "
                f"/customers/{cid}/subscriptions/<subscriptionId> to suspend subscriptions",
            )
        if order["ageDays"] > float(sandbox.knobs["cancellationWindowDays"]):
            days = int(sandbox.knobs["cancellationWindowDays"])
            return error(
                400,
                900117,
                f"You have passed your {days}-day cancellation window. We are unable to cancel your purchase",
                "new",
            )
        if order["status"] == "cancelled":
            if sandbox.knobs.get("secondCancel") == "error":
                return error(400, 800061, "Order cannot be canceled")
            return 200, sandbox.order_json(cid, order), {}
        if order["status"] != "pending" or order["cancelRequestedAt"] is None:
            now = time.time()
            order["cancelRequestedAt"] = now
            order["readsSinceCancel"] = 0
            by_time = not order["neverCancels"] and order["cancelAfterReads"] == 0
            order["readyAt"] = now + order["cancelAfterSeconds"] if by_time else None
            if by_time and order["cancelAfterSeconds"] == 0:
                order["status"], order["cancelledAt"] = "cancelled", now
            else:
                order["status"] = "pending"
        return 200, sandbox.order_json(cid, order), {}

    def _delete_customer(self, cid: str, customer: dict) -> tuple[int, Any, dict]:
        sandbox = self.server.sandbox
        referenced = {e_id for e in customer["entitlements"] for e_id in _order_ids(e)}
        active = [
            o
            for oid, o in customer["orders"].items()
            if (oid in referenced or o["hidden"]) and o["status"] != "cancelled"
        ]
        if active:
            sandbox.violations.append({"customer": cid, "time": _iso(_now()), "openOrders": [o["id"] for o in active]})
            alt = ",".join(o["alternateId"] for o in active)
            return error(
                int(sandbox.knobs["deleteRefusalStatus"]),
                800000,
                "Customer relationship cannot be removed due to active Azure reserved instances.Please cancel the "
                f"following orders: {alt}",
            )
        sandbox.deleted_customers[cid] = sandbox.customer_state(customer)
        del sandbox.customers[cid]
        sandbox.deleted.setdefault(cid, []).append(_iso(_now()))
        return 204, None, {}

    # -- admin ---------------------------------------------------------------------------------------------------------

    def _admin(self, method: str, path: str, query: dict, raw: bytes) -> tuple[int, Any, dict]:
        sandbox = self.server.sandbox
        try:
            data = json.loads(raw.decode("utf-8") or "null")
        except ValueError:
            return 400, {"error": "body is not JSON"}, {}
        name = path[len("/_emulator/") :].strip("/")
        with sandbox.lock:
            if name == "state" and method == "GET":
                return 200, sandbox.snapshot(), {}
            if name == "requests" and method == "GET":
                since = int((query.get("since") or ["0"])[0])
                return 200, {"requests": sandbox.log[since:], "next": len(sandbox.log)}, {}
            if name == "knobs" and method == "POST" and isinstance(data, dict):
                unknown = set(data) - set(DEFAULT_KNOBS)
                if unknown:
                    return 400, {"error": f"unknown knobs {sorted(unknown)}"}, {}
                sandbox.knobs.update(data)
                if {"rateLimitPerWindow", "rateLimitWindowSeconds"} & set(data):
                    sandbox.windows.clear()  # a new limit starts with a fresh window
                if "randomSeed" in data:
                    sandbox.random.seed(data["randomSeed"])
                return 200, sandbox.knobs, {}
            if name == "faults" and method == "POST" and isinstance(data, list):
                try:
                    sandbox.faults = [Fault.from_json(f) for f in data]
                except (TypeError, ValueError, re.error) as exc:
                    return 400, {"error": str(exc)}, {}
                return 200, [f.to_json() for f in sandbox.faults], {}
            if name == "customers" and method == "POST" and isinstance(data, list):
                try:
                    for customer in data:  # all checked before any is added
                        sandbox.check_customer(customer)
                except ValueError as exc:
                    return 400, {"error": str(exc)}, {}
                for customer in data:
                    sandbox.add_customer(customer)
                return 200, {"customers": len(sandbox.customers)}, {}
            if name == "customers/fill" and method == "POST" and isinstance(data, (dict, type(None))):
                args = data or {}
                unknown = set(args) - {"count", "seed", "prefix"}
                count, seed, prefix = (
                    args.get("count", 75),
                    args.get("seed", 7),
                    args.get("prefix", FULL_SANDBOX_PREFIX),
                )
                if (
                    unknown
                    or not all(isinstance(n, int) and not isinstance(n, bool) for n in (count, seed))
                    or not 0 <= count <= 10000
                    or not isinstance(prefix, str)
                    or not prefix.strip()
                ):
                    return (
                        400,
                        {"error": 'fill takes {"count": 0..10000, "seed": <int>, "prefix": <non-blank string>}'},
                        {},
                    )
                made = full_sandbox_customers(count, seed=seed, prefix=prefix)
                for customer in made:
                    sandbox.add_customer(customer)
                return 200, {"customers": len(sandbox.customers), "ids": [c["id"] for c in made]}, {}
            m = re.fullmatch(rf"customers/({GUID})/orders", name)
            if m and method == "POST" and isinstance(data, list):
                cid = m.group(1).lower()
                if cid not in sandbox.customers:
                    return 404, {"error": f"no customer {cid}"}, {}
                try:
                    return 200, {"orders": sandbox.add_orders(cid, data)}, {}
                except (TypeError, ValueError) as exc:
                    return 400, {"error": str(exc)}, {}
            if name == "revoke-tokens" and method == "POST":
                revoked = len(sandbox.tokens)
                sandbox.tokens.clear()  # as after a secret rotation or an emulator restart: cached tokens now get 401
                return 200, {"revoked": revoked}, {}
            if name == "reset" and method == "POST":
                if isinstance(data, dict):
                    try:
                        Sandbox(data)  # a malformed seed is refused before it replaces anything
                    except (KeyError, TypeError, ValueError, re.error) as exc:
                        return 400, {"error": f"malformed seed: {exc}"}, {}
                sandbox.reset(data if isinstance(data, dict) else None)
                return 200, {"customers": len(sandbox.customers)}, {}
        return 404, {"error": f"no admin endpoint {method} {path}"}, {}


FULL_SANDBOX_PREFIX = "Tip test run"
FULL_SANDBOX_STEMS = (
    "Contoso",
    "Fabrikam",
    "Northwind Traders",
    "Tailspin Toys",
    "Wingtip Toys",
    "Litware",
    "Adventure Works",
    "Woodgrove Bank",
    "Proseware",
    "Alpine Ski House",
)
ORDER_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def full_sandbox_customers(count: int = 75, *, seed: int = 7, prefix: str = FULL_SANDBOX_PREFIX) -> list[dict]:
    """``count`` seed customers of a busy integration sandbox, the same for the same arguments: random GUID ids from
    ``seed`` alone; company names ``"<prefix> 0001 – <stem>"`` (numbered from 1, stems of the usual sample companies,
    picked by ``seed``); matching lower-case default domains ``"<stem><prefix>0001.onmicrosoft.com"`` (letters and
    digits only, the label cut to 63 characters). About one in eight has an order or two (33 URL-safe characters,
    ``reservedInstance`` or ``software``, cancelling 1 to 3 s after the cancel PATCH). A different ``prefix`` gives
    other names and domains, a different ``seed`` other ids; a smaller ``count`` gives the first of a larger one."""
    rng = random.Random(seed)
    slug = re.sub(r"[^a-z0-9]", "", prefix.lower())
    customers = []
    for n in range(1, count + 1):
        cid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        stem = rng.choice(FULL_SANDBOX_STEMS)
        number = f"{n:04d}"
        label = (re.sub(r"[^a-z0-9]", "", stem.lower()) + slug)[: 63 - len(number)] + number
        orders = [
            {
                "id": "".join(rng.choice(ORDER_ID_CHARS) for _ in range(32)) + "1",
                "alternateId": f"{rng.getrandbits(48):012x}",
                "kind": rng.choice(("reservedInstance", "software")),
                "cancelAfterSeconds": rng.randint(1, 3),
            }
            for _ in range(rng.choice((1, 1, 2)) if rng.random() < 0.125 else 0)
        ]
        customers.append(
            {
                "id": cid,
                "companyName": f"{prefix} {number} – {stem}",
                "domain": f"{label}.onmicrosoft.com",
                "orders": orders,
            }
        )
    return customers


def _derived_entitlements(orders: dict[str, dict]) -> list[dict]:
    """One entitlement per order, as Partner Center lists them; none for license orders and hidden ones."""
    return [
        {
            "referenceOrder": {"id": oid, "lineItemId": "0", "alternateId": o["alternateId"]},
            "productId": "DZH318Z0BQ3W",
            "skuId": "007J",
            "quantity": 1,
            "entitlementType": "software" if o["kind"] == "software" else "reservedinstance",
            "includedEntitlements": [],
            "entitledArtifacts": [],
        }
        for oid, o in orders.items()
        if o["kind"] != "license" and not o["hidden"]
    ]


def _order_ids(entitlement: dict) -> list[str]:
    ids, stack = [], [entitlement]
    while stack:
        e = stack.pop()
        ref = e.get("referenceOrder") or {}
        if ref.get("id"):
            ids.append(ref["id"])
        stack.extend(e.get("includedEntitlements") or [])
    return ids


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
