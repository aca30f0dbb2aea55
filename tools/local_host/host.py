"""A small local stand-in for the Azure Functions host: queue triggers of a Python v1-model app against Azurite.

It reproduces the documented queue-trigger semantics (../shared/reference/functions-queues.md, section 9), nothing
more: host.json (+ ``AzureFunctionsJobHost__...`` overrides) with the host's defaults, ``%SETTING%`` queue names,
``__app__.<folder>`` imports, strict Base64 decoding with undecodable messages moved to ``-poison`` untouched,
dequeue counts, ``visibilityTimeout`` on failure, ``maxDequeueCount`` -> ``<queue>-poison``, randomized exponential
polling back-off, a renewed message lease, and a ``context`` with an invocation id. Development tool only.
"""
from __future__ import annotations

import base64
import binascii
import importlib
import importlib.machinery
import importlib.util
import inspect
import json
import logging
import os
import random
import re
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

log = logging.getLogger("local_host")

#: The line the host logs when an invocation ends (as the Functions host does); the tools that read host logs parse
#: it with this, so its format lives in one place.
EXECUTED_LINE = re.compile(r"Executed 'Functions\.(?P<function>\w+)' \((?P<status>Succeeded|Failed), Id=(?P<id>[^,]+), Duration=(?P<ms>\d+)ms\)")

QUEUE_DEFAULTS = {
    "maxpollinginterval": "00:01:00",
    "visibilitytimeout": "00:00:00",
    "batchsize": 16,
    "maxdequeuecount": 5,
    "newbatchthreshold": None,  # (batchSize / 2) * cores
    "messageencoding": "base64",
}
_QUEUE_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]")
_TIMESPAN_RE = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d{1,7}))?")


class HostError(Exception):
    """The app cannot be indexed or the host is misconfigured (the message names what and where)."""


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
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds) + (float("0." + frac) if frac else 0.0)


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
            raw[k[len(prefix + "extensions__queues__"):]] = value
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
    threshold = (batch // 2) * (1 if env.get("WEBSITE_SKU") == "Dynamic" else (os.cpu_count() or 1)) if threshold is None else int(threshold)
    if threshold < 0:
        raise HostError("host.json newBatchThreshold must be >= 0")
    encoding = str(opts["messageencoding"]).lower()
    if encoding not in ("base64", "none"):
        raise HostError("host.json messageEncoding must be base64 or none")
    timeout = top.get("functiontimeout")
    function_timeout = None if timeout in (None, "-1", -1) else parse_timespan(timeout, "functionTimeout")
    if timeout is None:
        function_timeout = 30 * 60.0
    return HostConfig(QueueOptions(polling, parse_timespan(opts["visibilitytimeout"], "visibilityTimeout"), batch, max_dequeue, threshold, encoding),
                      function_timeout)


def resolve_setting_tokens(value: str, env: Mapping[str, str]) -> str:
    """Replace every ``%NAME%`` with the app setting, as the host's name resolver does."""
    out, i = [], 0
    while i < len(value):
        start = value.find("%", i)
        if start < 0:
            out.append(value[i:])
            break
        end = value.find("%", start + 1)
        if end < 0:
            raise HostError(f"The '%' at position {start} does not have a closing '%'")
        name = value[start + 1:end]
        if name not in env:
            raise HostError(f"'%{name}%' does not resolve to a value.")
        out.append(value[i:start])
        out.append(env[name])
        i = end + 1
    return "".join(out)


def resolve_connection(name: str | None, env: Mapping[str, str]) -> str:
    name = name or "AzureWebJobsStorage"
    for candidate in (f"AzureWebJobs{name}", name):
        if env.get(candidate):
            return env[candidate]
    if any(k.startswith(f"{name}__") or k.startswith(f"AzureWebJobs{name}__") for k in env):
        raise HostError(f"connection '{name}' is identity-based; the local host supports connection strings only (Azurite)")
    raise HostError(f"Storage account connection string 'AzureWebJobs{name}' does not exist")


@dataclass
class Context:
    """What the worker passes as ``context`` (the parts a v1 function uses)."""

    invocation_id: str
    function_name: str
    function_directory: str
    trace_context: Any = None
    retry_context: Any = None
    thread_local_storage: threading.local = field(default_factory=threading.local)


@dataclass
class LoadedFunction:
    name: str
    queue: str
    connection: str
    binding: str
    entry: Callable[..., Any]
    wants_context: bool
    directory: Path


def load_functions(app_root: Path, env: Mapping[str, str], only: set[str] | None = None) -> list[LoadedFunction]:
    """Index the app like the Python worker: ``__app__.<folder>``, entry point checked against function.json."""
    root = str(app_root)
    if root not in sys.path:
        sys.path.insert(0, root)
    if "__app__" not in sys.modules:
        spec = importlib.machinery.ModuleSpec("__app__", None, is_package=True)
        spec.submodule_search_locations = [root]
        sys.modules["__app__"] = importlib.util.module_from_spec(spec)
    functions = []
    for fj in sorted(app_root.glob("*/function.json")):
        name = fj.parent.name
        if only and name not in only:
            continue
        if env.get(f"AzureWebJobs.{name}.Disabled", "").lower() == "true":
            log.info("function %s is disabled", name)
            continue
        spec_json = json.loads(fj.read_text(encoding="utf-8-sig"))
        if spec_json.get("disabled") is True:
            continue
        triggers = [b for b in spec_json.get("bindings", []) if b.get("type") == "queueTrigger"]
        if len(triggers) != 1 or len(spec_json["bindings"]) != 1:
            raise HostError(f"{name}: the local host runs functions with exactly one queueTrigger binding")
        trig = triggers[0]
        if trig.get("direction") != "in":
            raise HostError(f"{name}: a queueTrigger binding must have direction 'in'")
        queue = resolve_setting_tokens(trig["queueName"], env).lower()
        if not (3 <= len(queue) <= 63) or not _QUEUE_NAME_RE.fullmatch(queue):
            raise HostError(f"{name}: invalid queue name {queue!r}")
        script = spec_json.get("scriptFile", "__init__.py")
        module_name = f"__app__.{name}" if script == "__init__.py" else f"__app__.{name}.{Path(script).stem}"
        module = importlib.import_module(module_name)
        entry = getattr(module, spec_json.get("entryPoint", "main"))
        params = set(inspect.signature(entry).parameters)
        binding = trig["name"]
        if params - {binding, "context"} or binding not in params:
            raise HostError(f"{name}: parameters {sorted(params)} do not match the bindings ['{binding}'] (+ optional context)")
        functions.append(LoadedFunction(name, queue, resolve_connection(trig.get("connection"), env), binding, entry, "context" in params, fj.parent))
    if not functions:
        raise HostError(f"no functions found under {app_root}")
    return functions


def decode_base64_strict(text: str) -> bytes:
    """Like .NET Convert.FromBase64String: whitespace ignored, anything else must be valid Base64."""
    cleaned = "".join(text.split())
    return base64.b64decode(cleaned, validate=True)


def to_function_message(message: Any, body: str) -> Any:
    """The ``azure.functions.QueueMessage`` the Python worker builds from a received message and its decoded body."""
    from azure.functions import meta
    from azure.functions.queue import QueueMessageInConverter

    def iso(moment: datetime | None) -> str | None:
        return moment.astimezone(timezone.utc).isoformat() if moment else None

    fields = {
        "Id": (message.id, "string"),
        "DequeueCount": (message.dequeue_count, "int"),
        "InsertionTime": (iso(message.inserted_on), "string"),
        "ExpirationTime": (iso(message.expires_on), "string"),
        "NextVisibleTime": (iso(message.next_visible_on), "string"),
        "PopReceipt": (message.pop_receipt, "string"),
    }
    metadata = {name: meta.Datum(value, kind) for name, (value, kind) in fields.items() if value is not None}
    return QueueMessageInConverter.decode(meta.Datum(body, "string"), trigger_metadata=metadata)


class Listener:
    """One queue listener per function, as in the queue extension 5.x."""

    def __init__(self, fn: LoadedFunction, options: QueueOptions, *, lease_seconds: int, function_timeout: float | None,
                 stop: threading.Event, client_factory: Callable[[str, str], Any], worker: Callable[[], Any],
                 restart_worker: Callable[[Any], None]):
        self.fn = fn
        self.worker = worker
        self.restart_worker = restart_worker
        self.opts = options
        self.lease = lease_seconds
        self.function_timeout = function_timeout
        self.stop = stop
        self.queue = client_factory(fn.connection, fn.queue)
        poison_name = fn.queue + "-poison"
        self.poison = None if fn.queue.endswith("-poison") or len(poison_name) > 63 else client_factory(fn.connection, poison_name)
        self.pool = ThreadPoolExecutor(max_workers=options.batch_size + options.new_batch_threshold, thread_name_prefix=fn.name)
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
                page = next(self.queue.receive_messages(max_messages=self.opts.batch_size, messages_per_page=self.opts.batch_size,
                                                        visibility_timeout=self.lease).by_page(), [])
                messages = list(page)
            except ResourceNotFoundError:
                messages = []  # the host does not create a trigger queue: it backs off and looks again
            except Exception as exc:  # storage unavailable: keep polling with back-off, like the host
                log.warning("%s: polling %s failed: %s", self.fn.name, self.fn.queue, exc)
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
                log.warning("%s: Message has reached MaxDequeueCount of %d. Moving message to queue '%s'. "
                            "(the message is not valid Base64; the function was not invoked)",
                            self.fn.name, self.opts.max_dequeue_count, self.fn.queue + "-poison")
                self._to_poison(message, text)
                return
        else:
            data = text.encode("utf-8")
        if message.dequeue_count > self.opts.max_dequeue_count and self.poison is not None:
            log.warning("%s: message %s dequeued %d times; moving it to %s without invoking", self.fn.name, message.id,
                        message.dequeue_count, self.fn.queue + "-poison")
            self._to_poison(message, text)
            return

        invocation_id = str(uuid.uuid4())
        renew_stop = threading.Event()
        receipt = {"pop": message.pop_receipt}
        renewer = threading.Thread(target=self._renew, args=(message, receipt, renew_stop), daemon=True)
        renewer.start()
        ok = self._invoke(message, data, invocation_id)
        renew_stop.set()
        renewer.join()
        self._complete(message, receipt["pop"], text, ok)

    def _renew(self, message: Any, receipt: dict, stop: threading.Event) -> None:
        while not stop.wait(self.lease / 2):
            try:
                updated = self.queue.update_message(message.id, pop_receipt=receipt["pop"], visibility_timeout=self.lease)
                receipt["pop"] = updated.pop_receipt
            except Exception as exc:
                log.debug("lease renewal of %s failed: %s", message.id, exc)
                return

    def _invoke(self, message: Any, data: bytes, invocation_id: str) -> bool:
        from tools.local_host.worker import WorkerDied

        try:
            body = data.decode("utf-8")  # the host binds the trigger through a strict UTF-8 string conversion
        except UnicodeDecodeError:
            log.error("%s: message %s is not valid UTF-8 after decoding; invocation failed", self.fn.name, message.id)
            return False
        log.info("Executing 'Functions.%s' (Reason='New queue message detected on '%s'.', Id=%s, DequeueCount=%d)",
                 self.fn.name, self.fn.queue, invocation_id, message.dequeue_count)
        started = time.monotonic()
        worker = self.worker()
        try:
            error = worker.invoke(invocation_id, self.fn.name, message, body).result(timeout=self.function_timeout)
        except (TimeoutError, FutureTimeout):  # distinct classes before Python 3.11
            log.error("A function timeout has occurred. Restarting worker process executing invocationId '%s'.", invocation_id)
            self.restart_worker(worker)
            return False
        except WorkerDied as exc:
            error = str(exc)
        ms = (time.monotonic() - started) * 1000
        if error:
            log.error("Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms): %s", self.fn.name, invocation_id, ms, error)
            return False
        log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)", self.fn.name, invocation_id, ms)
        return True

    def _complete(self, message: Any, pop_receipt: str, text: str, ok: bool) -> None:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            if ok:
                self.queue.delete_message(message.id, pop_receipt=pop_receipt)
            elif self.poison is not None and message.dequeue_count >= self.opts.max_dequeue_count:
                log.warning("%s: Message has reached MaxDequeueCount of %d. Moving message to queue '%s'.",
                            self.fn.name, self.opts.max_dequeue_count, self.fn.queue + "-poison")
                self._to_poison(message, text, pop_receipt)
            elif self.poison is not None:
                self.queue.update_message(message.id, pop_receipt=pop_receipt, visibility_timeout=int(self.opts.visibility_timeout))
            # no poison queue: leave it leased; it comes back when the lease runs out
        except (ResourceNotFoundError, HttpResponseError) as exc:
            log.debug("%s: completing %s: %s (ignored, as the host does)", self.fn.name, message.id, exc)

    def _to_poison(self, message: Any, text: str, pop_receipt: str | None = None) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        assert self.poison is not None
        try:
            self.poison.send_message(text)
        except ResourceNotFoundError:
            try:
                self.poison.create_queue()
            except ResourceExistsError:
                pass
            self.poison.send_message(text)
        try:
            self.queue.delete_message(message.id, pop_receipt=pop_receipt or message.pop_receipt)
        except Exception as exc:  # noqa: BLE001
            log.debug("delete after poison of %s: %s", message.id, exc)


class LocalHost:
    def __init__(self, app_root: Path, env: Mapping[str, str], *, lease_seconds: int = 600, functions: set[str] | None = None):
        self.app_root = app_root
        self.env = env
        self.config = load_host_config(app_root, env)
        self.functions = load_functions(app_root, env, functions)
        self.stop_event = threading.Event()
        self.lease = lease_seconds
        self._clients: dict[str, Any] = {}
        q = self.config.queues
        self._threads = max(1, (q.batch_size + q.new_batch_threshold) * len(self.functions))
        self._worker_lock = threading.Lock()
        self._worker: Any = None

    def worker(self) -> Any:
        from tools.local_host.worker import WorkerProcess

        with self._worker_lock:
            if self._worker is None:
                self._worker = WorkerProcess(self.app_root, [fn.name for fn in self.functions], self._threads)
            return self._worker

    def restart_worker(self, old: Any) -> None:
        """After a function timeout: every invocation in that worker process is lost with it, as in Azure."""
        with self._worker_lock:
            if self._worker is old:
                old.kill()
                self._worker = None

    def _client(self, connection: str, queue: str) -> Any:
        from azure.storage.queue import QueueServiceClient

        service = self._clients.get(connection)
        if service is None:
            service = QueueServiceClient.from_connection_string(connection)
            self._clients[connection] = service
        return service.get_queue_client(queue)

    def start(self) -> list[Listener]:
        self.listeners = [Listener(fn, self.config.queues, lease_seconds=self.lease, function_timeout=self.config.function_timeout,
                                   stop=self.stop_event, client_factory=self._client, worker=self.worker,
                                   restart_worker=self.restart_worker) for fn in self.functions]
        self.worker()  # start the language worker before the first message
        for listener in self.listeners:
            log.info("Found function %s: queue trigger on '%s' (poison '%s')", listener.fn.name, listener.fn.queue,
                     listener.fn.queue + "-poison" if listener.poison else "none")
            listener.thread.start()
        q = self.config.queues
        log.info("Host started: batchSize=%d newBatchThreshold=%d maxDequeueCount=%d visibilityTimeout=%ss maxPollingInterval=%ss lease=%ss",
                 q.batch_size, q.new_batch_threshold, q.max_dequeue_count, q.visibility_timeout, q.max_polling_interval, self.lease)
        return self.listeners

    def stop(self, timeout: float = 30) -> None:
        self.stop_event.set()
        for listener in getattr(self, "listeners", []):
            listener.thread.join(timeout)
            listener.pool.shutdown(wait=True)
        with self._worker_lock:
            if self._worker is not None:
                self._worker.kill()
                self._worker = None
