"""A small local stand-in for the Azure Functions host: queue and timer triggers of a Python v1-model app.

It reproduces the documented queue-trigger semantics (../shared/reference/functions-queues.md, section 9), nothing
more: host.json (+ ``AzureFunctionsJobHost__...`` overrides) with the host's defaults, ``%SETTING%`` queue names,
strict Base64 decoding with undecodable messages moved to ``-poison`` untouched, dequeue counts,
``visibilityTimeout`` on failure, ``maxDequeueCount`` -> ``<queue>-poison``, randomized exponential polling back-off,
a renewed message lease. Timer triggers as the timer extension runs them (``timers.py``: NCRONTAB in UTC, schedule
status, past-due runs, ``runOnStartup``, a singleton lock). The admin endpoint ``POST /admin/functions/<name>`` runs
a function at once. Indexing and conversions live in ``indexing.py``, shared with the language worker
(``worker.py``), which alone imports the app's code. A function that fails indexing is disabled alone. A queue
trigger's connection is a connection string or identity-based (``<connection>__queueServiceUri`` and the host's
credential settings, ``storage_credential``). Timer status and singleton locks stay in files under the state
directory (the host keeps them in blob storage), so only queues need the connection. Development tool only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import logging
import os
import random
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tools.local_host.indexing import (  # some re-exported (__all__): tools and tests import them from here
    HTTP_TRIGGER,
    QUEUE_TRIGGER,
    TIMER_TRIGGER,
    Context,
    FunctionSpec,
    HostError,
    IdentityConnection,
    http_data,
    index_functions,
    queue_message_fields,
    resolve_connection,
    resolve_setting_tokens,
    timer_data,
    to_function_message,
    to_timer_request,
)
from tools.local_host.timers import TimerListener, read_status
from tools.local_host.worker import (
    HTTP,
    QUEUE,
    TIMER,
    WorkerDiedError,
    choose,
    default_context,
    start_worker,
    thread_count,
)

__all__ = [
    "EXECUTED_LINE",
    "Context",
    "HostError",
    "IdentityConnection",
    "LocalHost",
    "decode_base64_strict",
    "load_host_config",
    "load_local_settings",
    "parse_timespan",
    "resolve_connection",
    "resolve_setting_tokens",
    "storage_credential",
    "to_function_message",
    "to_timer_request",
]

log = logging.getLogger("local_host")
admin_log = logging.getLogger("local_host.admin")  # the admin endpoint's requests, at DEBUG

#: The line the host logs when an invocation ends (as the Functions host does); the tools that read host logs parse
#: it with this, so its format lives in one place.
EXECUTED_LINE = re.compile(
    r"Executed 'Functions\.(?P<function>\w+)' \((?P<status>Succeeded|Failed), "
    r"Id=(?P<id>[^,]+), Duration=(?P<ms>\d+)ms\)"
)

QUEUE_DEFAULTS = {
    "maxpollinginterval": "00:01:00",
    "visibilitytimeout": "00:00:00",
    "batchsize": 16,
    "maxdequeuecount": 5,
    "newbatchthreshold": None,  # (batchSize / 2) * cores
    "messageencoding": "base64",
}
_TIMESPAN_RE = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d{1,7}))?")


def parse_timespan(value: Any, name: str) -> float:
    """A .NET TimeSpan string in seconds ('hh:mm:ss[.fffffff]', 'd.hh:mm:ss'); a bare number is days, as in .NET."""
    text = str(value).strip()
    if re.fullmatch(r"\d+", text):
        return int(text) * 86400.0
    m = _TIMESPAN_RE.fullmatch(text)
    if not m:
        raise HostError(f"host.json {name}: {value!r} is not a TimeSpan (hh:mm:ss)")
    days, hours, minutes, seconds, frac = m.groups()
    if int(hours) > 23 or int(minutes) > 59 or int(seconds) > 59:
        raise HostError(f"host.json {name}: {value!r} is out of range")
    return (
        int(days or 0) * 86400
        + int(hours) * 3600
        + int(minutes) * 60
        + int(seconds)
        + (float("0." + frac) if frac else 0.0)
    )


def load_local_settings(path: Path) -> dict[str, str]:
    """``Values`` of a local.settings.json, as ``func start`` reads it (strings only, not encrypted)."""
    data = json.loads(path.read_text(encoding="utf-8-sig"))
    if data.get("IsEncrypted"):
        raise HostError(f"{path}: encrypted settings are not supported (run 'func settings decrypt')")
    values = data.get("Values") or {}
    bad = [k for k, v in values.items() if not isinstance(v, str)]
    if bad:
        raise HostError(f"{path}: Values must be strings: {', '.join(bad)}")
    return values


@dataclass(frozen=True)
class QueueOptions:
    max_polling_interval: float
    visibility_timeout: float
    batch_size: int
    max_dequeue_count: int
    new_batch_threshold: int
    message_encoding: str


@dataclass(frozen=True)
class HostConfig:
    queues: QueueOptions
    function_timeout: float | None
    route_prefix: str = "api"  # extensions.http.routePrefix


def load_host_config(app_root: Path, env: Mapping[str, str], *, development: bool = True) -> HostConfig:
    host = json.loads((app_root / "host.json").read_text(encoding="utf-8-sig"))
    if str(host.get("version")) != "2.0":
        raise HostError('host.json: "version": "2.0" is required')
    raw = {k.lower(): v for k, v in ((host.get("extensions") or {}).get("queues") or {}).items()}
    top = {k.lower(): v for k, v in host.items()}
    prefix = "azurefunctionsjobhost__"
    for key, value in env.items():
        k = key.lower()
        if k.startswith(prefix + "extensions__queues__"):
            raw[k[len(prefix + "extensions__queues__") :]] = value
        elif k == prefix + "functiontimeout":
            top["functiontimeout"] = value
    opts = {**QUEUE_DEFAULTS, **raw}
    explicit_polling = "maxpollinginterval" in raw
    polling = parse_timespan(opts["maxpollinginterval"], "maxPollingInterval")
    if development and not explicit_polling:
        polling = 2.0  # Core Tools (development environment) uses 2 s when left at the default
    if polling < 0.1:
        raise HostError("host.json maxPollingInterval must be at least 00:00:00.100")
    try:
        batch = int(opts["batchsize"])
        max_dequeue = int(opts["maxdequeuecount"])
    except (TypeError, ValueError) as exc:
        raise HostError(f"host.json queues: {exc}") from None
    if not 1 <= batch <= 32:
        raise HostError("host.json batchSize must be 1..32")
    if max_dequeue < 1:
        raise HostError("host.json maxDequeueCount must be at least 1")
    threshold = opts["newbatchthreshold"]
    threshold = (
        (batch // 2) * (1 if env.get("WEBSITE_SKU") == "Dynamic" else (os.cpu_count() or 1))
        if threshold is None
        else int(threshold)
    )
    if threshold < 0:
        raise HostError("host.json newBatchThreshold must be >= 0")
    encoding = str(opts["messageencoding"]).lower()
    if encoding not in ("base64", "none"):
        raise HostError("host.json messageEncoding must be base64 or none")
    timeout = top.get("functiontimeout")
    function_timeout = None if timeout in (None, "-1", -1) else parse_timespan(timeout, "functionTimeout")
    if timeout is None:
        function_timeout = 30 * 60.0
    http = {k.lower(): v for k, v in ((host.get("extensions") or {}).get("http") or {}).items()}
    route_prefix = http.get("routeprefix", "api")
    if not isinstance(route_prefix, str) or not re.fullmatch(r"[A-Za-z0-9._~/-]*", route_prefix):
        raise HostError(f"host.json extensions.http.routePrefix must be a path, not {route_prefix!r}")
    return HostConfig(
        QueueOptions(
            polling,
            parse_timespan(opts["visibilitytimeout"], "visibilityTimeout"),
            batch,
            max_dequeue,
            threshold,
            encoding,
        ),
        function_timeout,
        route_prefix.strip("/"),
    )


def storage_credential(connection: IdentityConnection, env: Mapping[str, str]) -> Any:
    """The token credential of an identity-based connection. The host's precedence (``credential=managedidentity``,
    then ``tenantId`` + ``clientId`` + ``clientSecret`` against ``AZURE_AUTHORITY_HOST``, then ``clientId`` alone,
    then DefaultAzureCredential) is the one the app follows for the same settings, so the app's ``storage_credential``
    serves both: the connection only changes shape here."""
    from shared.auth import storage_credential as app_storage_credential
    from shared.config import DEFAULTS, StorageConnection

    authority = (env.get("AZURE_AUTHORITY_HOST") or "").strip().rstrip("/") or DEFAULTS["PARTNER_CENTER_AUTHORITY_HOST"]
    return app_storage_credential(
        StorageConnection(
            queue_service_uri=connection.queue_service_uri,
            client_id=connection.client_id,
            use_managed_identity=connection.credential == "managedidentity",
            tenant_id=connection.tenant_id,
            client_secret=connection.client_secret,
            authority_host=authority,
        )
    )


#: The scope of a storage token (the queue SDK asks for the same).
STORAGE_SCOPE = "https://storage.azure.com/.default"


def check_token(connection: IdentityConnection, credential: Any) -> bool:
    """Ask for a storage token once, at start, so a refused credential is one clear error line. Not fatal: like the
    host, the listeners keep polling (each poll asks again, and the storage SDK retries with back-off)."""
    try:
        credential.get_token(STORAGE_SCOPE)
    except Exception as exc:  # noqa: BLE001 - any failure to get a token is reported the same way
        log.error(
            "Storage connection '%s': no token for %s (%s: %s); the queue listeners keep retrying",
            connection.name,
            connection.kind,
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        return False
    return True


def decode_base64_strict(text: str) -> bytes:
    """Like .NET Convert.FromBase64String: whitespace ignored, anything else must be valid Base64."""
    cleaned = "".join(text.split())
    return base64.b64decode(cleaned, validate=True)


#: Reason of the "Executing" line for an admin-endpoint invocation (the host's wording).
ADMIN_REASON = "This function was programmatically called via the host APIs."
#: Admin invocations running at once (more wait their turn; the endpoint answers 202 at once either way).
ADMIN_CONCURRENCY = 8
#: How long the host waits for the worker to load the functions at start.
WORKER_LOAD_TIMEOUT = 120.0

#: (function, trigger kind, data for the worker, reason, extra "Executing" fields, invocation id) -> succeeded
Execute = Callable[..., bool]


class Listener:
    """One queue listener per function, as in the queue extension 5.x."""

    def __init__(
        self,
        fn: FunctionSpec,
        options: QueueOptions,
        *,
        lease_seconds: int,
        stop: threading.Event,
        client_factory: Callable[[str | IdentityConnection, str], Any],
        execute: Execute,
    ):
        if not (fn.queue and fn.connection):
            raise HostError(f"function '{fn.name}' has no queue or connection: not a queue trigger")
        self.fn = fn
        self.queue_name: str = fn.queue
        self.poison_name = fn.queue + "-poison"
        self.execute = execute
        self.opts = options
        self.lease = lease_seconds
        self.stop = stop
        self.queue = client_factory(fn.connection, fn.queue)
        self.poison = (
            None
            if fn.queue.endswith("-poison") or len(self.poison_name) > 63
            else client_factory(fn.connection, self.poison_name)
        )
        self.pool = ThreadPoolExecutor(
            max_workers=options.batch_size + options.new_batch_threshold, thread_name_prefix=fn.name
        )
        self.in_flight = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, name=f"listener-{fn.name}", daemon=True)

    # -- polling -----------------------------------------------------------------------------------------------------

    def run(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        failures = 0  # polls in a row that found nothing (an empty or missing queue, or storage unavailable)
        while not self.stop.is_set():
            with self.lock:
                busy = self.in_flight > self.opts.new_batch_threshold
            if busy:  # fetch a new batch only when in-flight <= newBatchThreshold
                self.stop.wait(0.05)
                continue
            try:
                page: Iterable[Any] = next(
                    self.queue.receive_messages(
                        max_messages=self.opts.batch_size,
                        messages_per_page=self.opts.batch_size,
                        visibility_timeout=self.lease,
                    ).by_page(),
                    [],
                )
                messages = list(page)
            except ResourceNotFoundError:
                messages = []  # the host does not create a trigger queue: it backs off and looks again
            except Exception as exc:  # noqa: BLE001 - storage unavailable: keep polling with back-off, like the host
                log.warning("%s: polling %s failed: %s", self.fn.name, self.queue_name, exc)
                messages = []
            if not messages:
                failures += 1
                self._sleep_backoff(failures)
                continue
            failures = 0
            for message in messages:
                with self.lock:
                    self.in_flight += 1
                self.pool.submit(self._process, message)

    def _sleep_backoff(self, k: int) -> None:
        delay = 0.1 + random.uniform(0.8, 1.2) * (2 ** (k - 1)) * 0.1 if k > 0 else 0.1
        self.stop.wait(min(delay, self.opts.max_polling_interval))

    # -- one message -------------------------------------------------------------------------------------------------

    def _process(self, message: Any) -> None:
        try:
            self._process_one(message)
        except Exception:
            log.exception("%s: could not complete message %s", self.fn.name, message.id)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _process_one(self, message: Any) -> None:
        text = message.content or ""
        if self.opts.message_encoding == "base64":
            try:
                data = decode_base64_strict(text)
            except (binascii.Error, ValueError):
                log.warning(
                    "%s: Message has reached MaxDequeueCount of %d. Moving message to queue '%s'. "
                    "(the message is not valid Base64; the function was not invoked)",
                    self.fn.name,
                    self.opts.max_dequeue_count,
                    self.poison_name,
                )
                self._to_poison(message, text)
                return
        else:
            data = text.encode("utf-8")
        if message.dequeue_count > self.opts.max_dequeue_count and self.poison is not None:
            log.warning(
                "%s: message %s dequeued %d times; moving it to %s without invoking",
                self.fn.name,
                message.id,
                message.dequeue_count,
                self.poison_name,
            )
            self._to_poison(message, text)
            return

        renew_stop = threading.Event()
        receipt = {"pop": message.pop_receipt}
        renewer = threading.Thread(target=self._renew, args=(message, receipt, renew_stop), daemon=True)
        renewer.start()
        ok = self._invoke(message, data)
        renew_stop.set()
        renewer.join()
        self._complete(message, receipt["pop"], text, ok)

    def _renew(self, message: Any, receipt: dict, stop: threading.Event) -> None:
        while not stop.wait(self.lease / 2):
            try:
                updated = self.queue.update_message(
                    message.id, pop_receipt=receipt["pop"], visibility_timeout=self.lease
                )
                receipt["pop"] = updated.pop_receipt
            except Exception as exc:  # noqa: BLE001 - any failure ends the renewals; the lease then expires, as in the host
                log.debug("lease renewal of %s failed: %s", message.id, exc)
                return

    def _invoke(self, message: Any, data: bytes) -> bool:
        try:
            body = data.decode("utf-8")  # the host binds the trigger through a strict UTF-8 string conversion
        except UnicodeDecodeError:
            log.error("%s: message %s is not valid UTF-8 after decoding; invocation failed", self.fn.name, message.id)
            return False
        return self.execute(
            self.fn,
            QUEUE,
            {"fields": queue_message_fields(message), "body": body},
            f"New queue message detected on '{self.queue_name}'.",
            f", DequeueCount={message.dequeue_count}",
        )

    def _complete(self, message: Any, pop_receipt: str, text: str, ok: bool) -> None:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            if ok:
                self.queue.delete_message(message.id, pop_receipt=pop_receipt)
            elif self.poison is not None and message.dequeue_count >= self.opts.max_dequeue_count:
                log.warning(
                    "%s: Message has reached MaxDequeueCount of %d. Moving message to queue '%s'.",
                    self.fn.name,
                    self.opts.max_dequeue_count,
                    self.poison_name,
                )
                self._to_poison(message, text, pop_receipt)
            elif self.poison is not None:
                self.queue.update_message(
                    message.id, pop_receipt=pop_receipt, visibility_timeout=int(self.opts.visibility_timeout)
                )
            # no poison queue: leave it leased; it comes back when the lease runs out
        except (ResourceNotFoundError, HttpResponseError) as exc:
            log.debug("%s: completing %s: %s (ignored, as the host does)", self.fn.name, message.id, exc)

    def _to_poison(self, message: Any, text: str, pop_receipt: str | None = None) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        assert self.poison is not None
        try:
            self.poison.send_message(text)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):
                self.poison.create_queue()
            self.poison.send_message(text)
        try:
            self.queue.delete_message(message.id, pop_receipt=pop_receipt or message.pop_receipt)
        except Exception as exc:  # noqa: BLE001 - the copy is in poison; a message left behind comes back and goes again
            log.debug("delete after poison of %s: %s", message.id, exc)


# -- the admin endpoint ----------------------------------------------------------------------------------------------

_ADMIN_PATH_RE = re.compile(r"/admin/functions/([^/]+)/?")
_CODE_RE = re.compile(r"((?:^|[?&])code=)[^&\s]*", re.IGNORECASE)
#: The largest HTTP trigger request body the local host reads (a larger one gets 413).
MAX_HTTP_BODY = 1 << 20


def parse_admin_body(raw: bytes) -> str | None:
    """The ``input`` of an admin invocation body ``{"input": "<string>"}``; None if the body is not that."""
    try:
        body = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("input"), str):
        return None
    return body["input"]


class _AdminHandler(BaseHTTPRequestHandler):
    """``POST /admin/functions/<name>`` with ``{"input": "..."}`` -> 202, the invocation started in the background;
    and the HTTP triggers under the route prefix (``LocalHost.http_invoke``), on the same port, as ``func start``."""

    host: LocalHost  # set on the subclass the server uses
    protocol_version = "HTTP/1.1"
    server_version = "local_host"

    def _reply(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _drain(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self.close_connection = True
            return None
        return self.rfile.read(int(length))

    def _http(self) -> bool:
        """An HTTP trigger's request (True: answered here), read as the host reads it."""
        path = self.path.split("?", 1)[0]
        if path.startswith("/admin/") or path == "/admin":
            return False
        length = self.headers.get("Content-Length")
        if length is not None and (not length.strip().isdigit() or int(length) > MAX_HTTP_BODY):
            self.close_connection = True
            self._reply(413 if length.strip().isdigit() else 400)
            return True
        if length is None and self.headers.get("Transfer-Encoding"):  # a chunked body is not read: close after
            self.close_connection = True
        body = self.rfile.read(int(length)) if length else b""
        # The URL the function sees: this server's own address and the request's path (never the Host header).
        url = f"http://127.0.0.1:{self.server.server_port}{self.path}"  # type: ignore[attr-defined]
        status, headers, payload = self.host.http_invoke(self.command, url, dict(self.headers.items()), body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        return True

    def do_POST(self) -> None:
        if self._http():
            return
        m = _ADMIN_PATH_RE.fullmatch(self.path.split("?", 1)[0])
        raw = self._drain()
        if not m:
            self._reply(404)
            return
        text = None if raw is None else parse_admin_body(raw)
        if text is None:
            self._reply(400)
            return
        if not self.host.admin_invoke(m.group(1), text):
            self._reply(404)
            return
        self._reply(202)

    def _other(self) -> None:
        if self._http():
            return
        self._drain()
        if _ADMIN_PATH_RE.fullmatch(self.path.split("?", 1)[0]):
            self._reply(405, {"Allow": "POST"})
        else:
            self._reply(404)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _other  # noqa: N815 - http.server's names

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        # The request line may carry a function key (?code=...): never logged.
        admin_log.debug(format, *(_CODE_RE.sub(r"\1<redacted>", a) if isinstance(a, str) else a for a in args))


# -- HTTP triggers: keys and responses --------------------------------------------------------------------------------


class FunctionKeys:
    """Function keys, one file each, in the host's layout for keys kept as files (``host.master``,
    ``host.function.<name>``, ``functions.<function>.<name>``), under ``<state-dir>/keys``. At start the host writes
    a ``default`` key for every ``authLevel: function`` function that has none, as the host creates its keys on first
    start. Keys are compared in constant time and never logged. (``func start`` does not check keys unless started
    with ``--enableAuth``; Azure does, and so does this host.)"""

    def __init__(self, directory: Path):
        self.directory = directory

    def ensure(self, fn: FunctionSpec) -> Path | None:
        if fn.auth_level != "function":
            return None
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        existing = sorted(self.directory.glob(f"functions.{fn.name}.*"))
        if existing:
            return existing[0]
        path = self.directory / f"functions.{fn.name}.default"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # readable by this user only, from the start
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secrets.token_urlsafe(32))
        return path

    def _keys(self, fn: FunctionSpec) -> list[str]:
        patterns = (
            ["host.master"]
            if fn.auth_level == "admin"
            else ["host.master", "host.function.*", f"functions.{fn.name}.*"]
        )
        keys = []
        for pattern in patterns:
            for path in sorted(self.directory.glob(pattern)):
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    text = path.read_text(encoding="utf-8").strip()
                    if text:
                        keys.append(text)
        return keys

    def authorised(self, fn: FunctionSpec, headers: Mapping[str, str], url: str) -> bool:
        """The key from ``x-functions-key`` (which wins) or the ``code`` query parameter, checked like the host."""
        from urllib.parse import parse_qsl, urlsplit

        if fn.auth_level == "anonymous":
            return True
        given = next((v for k, v in headers.items() if k.lower() == "x-functions-key"), None)
        if given is None:
            given = next((v for k, v in parse_qsl(urlsplit(url).query) if k == "code"), None)
        if not given:
            return False
        return any(hmac.compare_digest(given.encode(), key.encode()) for key in self._keys(fn))


def _http_response(value: Any) -> tuple[int, dict[str, str], bytes]:
    """A function's ``$return`` as the host answers it: an HttpResponse's status, headers and body; a string: 200."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        kind, data = value
        if kind == "http" and isinstance(data, dict):
            body = data.get("body") or b""
            payload = body.encode("utf-8") if isinstance(body, str) else bytes(body)
            return int(str(data.get("status_code") or "200")), dict(data.get("headers") or {}), payload
        if kind in ("string", "json"):
            return 200, {"Content-Type": "text/plain; charset=utf-8"}, str(data).encode("utf-8")
        if kind == "bytes":
            return 200, {"Content-Type": "application/octet-stream"}, bytes(data)
    return 204, {}, b""


# -- the host --------------------------------------------------------------------------------------------------------


class LocalHost:
    def __init__(
        self,
        app_root: Path,
        env: Mapping[str, str],
        *,
        lease_seconds: int = 600,
        functions: set[str] | None = None,
        state_dir: Path | None = None,
        admin_port: int | None = None,
    ):
        self.app_root = app_root
        self.env = env
        self.config = load_host_config(app_root, env)
        self.state_dir = state_dir or app_root / ".local" / "local_host"
        self.admin_port = admin_port
        indexed = index_functions(app_root, env, functions)
        for name in indexed.disabled:
            log.info("Function '%s' is disabled", name)
        for name, error in indexed.errors.items():
            log.error("Function '%s' failed indexing and will be disabled: %s", name, error)
        self.functions: list[FunctionSpec] = indexed.functions
        self._check_any_left(indexed.errors)
        self.stop_event = threading.Event()
        self.lease = lease_seconds
        self._clients: dict[str | IdentityConnection, Any] = {}
        # One pool in the worker for every function, sized as the runtime sizes it; invocations beyond it wait
        # there for a thread while their message's lease runs, as in Azure.
        self._threads = thread_count(env)
        self.worker_kind, self.worker_description = choose()
        self._worker_lock = threading.Lock()
        self._worker: Any = None
        self.listeners: list[Listener] = []
        self.timers: list[TimerListener] = []
        self._admin: ThreadingHTTPServer | None = None
        self._admin_pool: ThreadPoolExecutor | None = None
        self._admin_serving = False
        self.keys = FunctionKeys(self.state_dir / "keys")

    def _check_any_left(self, errors: Mapping[str, str]) -> None:
        if not self.functions:
            detail = "; ".join(f"{name}: {error}" for name, error in errors.items())
            raise HostError(f"no functions to run under {self.app_root}" + (f" ({detail})" if detail else ""))

    # -- the language worker ---------------------------------------------------------------------------------------

    def worker(self) -> Any:
        with self._worker_lock:
            if self._worker is None:
                self._worker = start_worker(
                    self.worker_kind, self.app_root, [fn.for_worker() for fn in self.functions], self._threads
                )
                self._worker.loaded.add_done_callback(self._report_reload)
            return self._worker

    def _report_reload(self, loaded: Any) -> None:
        """A restarted worker that cannot load a function any more: its
        invocations fail (the first load is _load_in_worker's)."""
        if loaded.exception() is None and self.listeners + self.timers:
            for name, error in loaded.result().items():
                log.error("Function '%s' failed to load in the restarted worker; its invocations fail: %s", name, error)

    def restart_worker(self, old: Any) -> None:
        """After a function timeout: every invocation in that worker process is lost with it, as in Azure."""
        with self._worker_lock:
            if self._worker is old:
                old.kill()
                self._worker = None

    def execute(
        self, fn: FunctionSpec, kind: str, data: dict, reason: str, extra: str = "", invocation_id: str | None = None
    ) -> bool:
        """One invocation through the worker, logged as the host does; a function timeout restarts the worker."""
        return self._invoke(fn, kind, data, reason, extra, invocation_id)[0]

    def _invoke(
        self, fn: FunctionSpec, kind: str, data: dict, reason: str, extra: str = "", invocation_id: str | None = None
    ) -> tuple[bool, dict[str, Any]]:
        """``execute``, with the invocation's outputs (``$return`` among them) when it succeeded."""
        invocation_id = invocation_id or str(uuid.uuid4())
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s%s)", fn.name, reason, invocation_id, extra)
        started = time.monotonic()
        worker = self.worker()
        try:
            error, outputs = worker.invoke(invocation_id, fn.name, kind, data, default_context(fn.name)).result(
                timeout=self.config.function_timeout
            )
        except (TimeoutError, FutureTimeout):  # distinct classes before Python 3.11
            log.error(
                "A function timeout has occurred. Restarting worker process executing invocationId '%s'.", invocation_id
            )
            self.restart_worker(worker)
            return False, {}  # no "Executed" line: the invocation never finished (the log readers count it as cut off)
        except WorkerDiedError as exc:
            error, outputs = str(exc), {}
        ms = (time.monotonic() - started) * 1000
        if error:
            log.error("Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms): %s", fn.name, invocation_id, ms, error)
            return False, {}
        log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)", fn.name, invocation_id, ms)
        return True, dict(outputs or {})

    # -- HTTP triggers -----------------------------------------------------------------------------------------------

    def http_invoke(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """One request to an HTTP trigger, as the host answers it: no route, or a method the function does not list:
        404 (the host's route constraint, azure-functions-host#10098); no valid key for an ``authLevel: function``
        function: 401 before it runs; a failed invocation: an empty 500; else the function's ``$return``."""
        from urllib.parse import urlsplit

        path = urlsplit(url).path
        prefix = f"/{self.config.route_prefix}" if self.config.route_prefix else ""
        if prefix and not (path == prefix or path.startswith(prefix + "/")):
            return 404, {}, b""
        rest = path[len(prefix) :]
        for fn in self.functions:
            if fn.trigger != HTTP_TRIGGER or fn.route is None:
                continue
            params = fn.route.match(rest)
            if params is None or (fn.methods is not None and method.lower() not in fn.methods):
                continue
            if not self.keys.authorised(fn, headers, url):
                return 401, {}, b""
            ok, outputs = self._invoke(
                fn,
                HTTP,
                http_data(method, url, headers, params, body),
                "This function was programmatically called via the host APIs.",
            )
            if not ok:
                return 500, {}, b""
            return _http_response(outputs.get("$return"))
        return 404, {}, b""

    # -- the admin endpoint ----------------------------------------------------------------------------------------

    def admin_invoke(self, name: str, text: str) -> bool:
        """Start an invocation of ``name`` with ``text`` as its input; False if there is no such running function.

        A timer gets IsPastDue false and the stored status (none without a monitor); the status is not updated and
        the singleton lock is not taken, as in the host. A queue function gets a message with ``text`` as its body,
        a new id and dequeue count 1; no queue changes.
        """
        fn = next((f for f in self.functions if f.name.lower() == name.lower()), None)
        if fn is None or self._admin_pool is None or fn.trigger == HTTP_TRIGGER:  # an HTTP function is called by URL
            return False
        if fn.trigger == TIMER_TRIGGER:
            status = read_status(self.state_dir, fn.name) if fn.use_monitor else None
            kind, data = TIMER, timer_data(status.to_json() if status else None, past_due=False)
        else:
            fields = {
                "id": str(uuid.uuid4()),
                "dequeue_count": 1,
                "inserted_on": datetime.now(UTC),
                "expires_on": None,
                "next_visible_on": None,
                "pop_receipt": None,
            }
            kind, data = QUEUE, {"fields": fields, "body": text}
        try:
            self._admin_pool.submit(self.execute, fn, kind, data, ADMIN_REASON)
        except RuntimeError:  # the host is stopping
            return False
        return True

    def _start_admin(self) -> None:
        if self.admin_port is None:
            return
        handler = type("AdminHandler", (_AdminHandler,), {"host": self})
        try:
            server = ThreadingHTTPServer(("127.0.0.1", self.admin_port), handler)
        except OSError as exc:
            raise HostError(
                f"the admin endpoint cannot listen on 127.0.0.1:{self.admin_port} ({exc.strerror or exc}); "
                f"choose another port with --admin-port (0 = any free port)"
            ) from None
        server.daemon_threads = True
        self._admin = server
        self._admin_pool = ThreadPoolExecutor(max_workers=ADMIN_CONCURRENCY, thread_name_prefix="admin")

    # -- start and stop --------------------------------------------------------------------------------------------

    def _client(self, connection: str | IdentityConnection, queue: str) -> Any:
        from azure.storage.queue import QueueServiceClient

        service = self._clients.get(connection)
        if service is None:
            if isinstance(connection, IdentityConnection):
                log.info("Storage connection '%s': %s", connection.name, connection.describe())
                credential = storage_credential(connection, self.env)
                check_token(connection, credential)
                service = QueueServiceClient(connection.queue_service_uri, credential=credential)
            else:
                service = QueueServiceClient.from_connection_string(connection)
            self._clients[connection] = service
        return service.get_queue_client(queue)

    def start(self) -> list[Listener]:
        self._start_admin()  # first: a taken port fails at once
        try:
            self._load_in_worker()
        except BaseException:
            self.stop()
            raise
        for fn in self.functions:
            if fn.trigger == QUEUE_TRIGGER:
                listener = Listener(
                    fn,
                    self.config.queues,
                    lease_seconds=self.lease,
                    stop=self.stop_event,
                    client_factory=self._client,
                    execute=self.execute,
                )
                self.listeners.append(listener)
                log.info(
                    "Found function %s: queue trigger on '%s' (poison '%s')",
                    fn.name,
                    listener.queue_name,
                    listener.poison_name if listener.poison else "none",
                )
            elif fn.trigger == HTTP_TRIGGER:
                key_file = self.keys.ensure(fn)
                route = f"{self.config.route_prefix}/{fn.route.template}" if fn.route else "?"
                log.info(
                    "Found function %s: HTTP trigger, route '%s' [%s], authLevel %s%s",
                    fn.name,
                    route.lstrip("/"),
                    ",".join(fn.methods or ("any",)),
                    fn.auth_level,
                    f" (its key: {key_file})" if key_file else "",
                )
            else:
                timer = TimerListener(
                    fn,
                    self.state_dir,
                    lambda spec, data, reason: self.execute(spec, TIMER, data, reason),
                    self.stop_event,
                )
                self.timers.append(timer)
                log.info(
                    "Found function %s: timer trigger '%s' (UTC; useMonitor=%s, runOnStartup=%s; status in %s)",
                    fn.name,
                    fn.schedule_text,
                    str(fn.use_monitor).lower(),
                    str(fn.run_on_startup).lower(),
                    timer.lock.path.parent,
                )
        runners: list[Listener | TimerListener] = [*self.listeners, *self.timers]
        for runner in runners:
            runner.thread.start()
        if self._admin is not None:
            threading.Thread(target=self._admin.serve_forever, name="admin", daemon=True).start()
            self._admin_serving = True
            log.info("Admin endpoint listening on http://127.0.0.1:%d", self._admin.server_address[1])
        q = self.config.queues
        log.info(
            "Host started: batchSize=%d newBatchThreshold=%d maxDequeueCount=%d visibilityTimeout=%ss "
            "maxPollingInterval=%ss lease=%ss",
            q.batch_size,
            q.new_batch_threshold,
            q.max_dequeue_count,
            q.visibility_timeout,
            q.max_polling_interval,
            self.lease,
        )
        return self.listeners

    def _load_in_worker(self) -> None:
        """Start the language worker and let it load the code; a function it cannot load is disabled alone."""
        log.info("Language worker: %s, %d threads", self.worker_description, self._threads)
        try:
            errors = self.worker().wait_loaded(WORKER_LOAD_TIMEOUT)
        except (WorkerDiedError, TimeoutError, FutureTimeout) as exc:
            raise HostError(f"the language worker did not load the functions: {exc or 'timed out'}") from None
        for name, error in errors.items():
            log.error("Function '%s' failed indexing and will be disabled: %s", name, error)
        self.functions = [fn for fn in self.functions if fn.name not in errors]
        self._check_any_left(errors)

    def stop(self, timeout: float = 30) -> None:
        self.stop_event.set()
        if self._admin is not None:
            if self._admin_serving:
                self._admin.shutdown()  # waits for serve_forever to return: only once it has started
            self._admin.server_close()
        runners: list[Listener | TimerListener] = [*self.listeners, *self.timers]
        for runner in runners:
            if runner.thread.is_alive():
                runner.thread.join(timeout)
        for listener in self.listeners:
            listener.pool.shutdown(wait=True)
        if self._admin_pool is not None:
            self._admin_pool.shutdown(wait=True)
        with self._worker_lock:
            if self._worker is not None:
                self._worker.kill()
                self._worker = None
