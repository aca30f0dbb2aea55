"""The local world, for the demo, the integration tests and the reliability run: Azurite, the Partner Center
emulator and the local Functions host as child processes, plus small helpers to drive and inspect them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from shared.queues import encode_for_trigger
from tools.local_host.host import decode_base64_strict

ROOT = Path(__file__).resolve().parent.parent
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
SAMPLE_SANDBOX = ROOT / "tools" / "pc_emulator" / "sample_sandbox.json"


#: Azurite's account, path-style on loopback (``https://127.0.0.1:<port>/devstoreaccount1`` in OAuth mode).
AZURITE_ACCOUNT = "devstoreaccount1"


def azurite_queue_service_uri(port: int) -> str:
    """The queue service URI of an Azurite started with ``oauth=True`` (HTTPS):
    ``AzureWebJobsStorage__queueServiceUri``."""
    return f"https://127.0.0.1:{port}/{AZURITE_ACCOUNT}"


def azurite_table_service_uri(port: int) -> str:
    """The table service URI of an Azurite started with ``oauth=True``: ``AzureWebJobsStorage__tableServiceUri``."""
    return f"https://127.0.0.1:{port}/{AZURITE_ACCOUNT}"


@dataclass(frozen=True)
class AzuritePorts:
    """Where one Azurite listens: its queue and table services (and the blob service nothing here uses)."""

    queue: int
    table: int
    blob: int = 0


def azurite_connection_string(ports: AzuritePorts) -> str:
    return (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={AZURITE_KEY};QueueEndpoint=http://127.0.0.1:{ports.queue}/devstoreaccount1;"
        f"TableEndpoint=http://127.0.0.1:{ports.table}/devstoreaccount1;"
    )


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


#: The line a local host logs once its admin endpoint listens.
ADMIN_LINE = re.compile(r"Admin endpoint listening on (http://127\.0\.0\.1:\d+)")


@dataclass
class Child:
    """A child process in its own process group, so stopping it stops everything it started."""

    name: str
    proc: subprocess.Popen
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def kill(self) -> None:
        """A real process kill: no cleanup, no completion of in-flight messages."""
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def admin_url(self) -> str | None:
        """A local host's admin endpoint (``http://127.0.0.1:<port>``), from its log line; None before it listens.
        The HTTP triggers are served on the same port, under ``/api``."""
        m = ADMIN_LINE.search(self.log())
        return m.group(1) if m else None

    def function_key(self, function: str) -> str:
        """The ``default`` key a local host wrote for an ``authLevel: function`` HTTP function (its log names the
        file; the key itself is never logged)."""
        m = re.search(rf"Found function {re.escape(function)}: HTTP trigger.*\(its key: (.+)\)", self.log())
        if m is None:
            raise LookupError(f"the host did not report a key file for {function}")
        return Path(m.group(1).strip()).read_text(encoding="utf-8").strip()


def _spawn(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> Child:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as out:  # a fresh log per start: readers look for "listening" lines in it
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(cwd),
            env=env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
    return Child(name, proc, log_path)


def azurite_binary() -> Path:
    """``node_modules/.bin/azurite`` (every service in one process: the standalone ``azurite-table`` does not report
    the port it picked); ``AZURITE_BIN`` names another one (a checkout without node_modules)."""
    override = os.environ.get("AZURITE_BIN")
    path = Path(override) if override else ROOT / "node_modules" / ".bin" / "azurite"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run 'make setup' (npm ci installs azurite@3.35.0)")
    return path


def start_azurite(
    log_dir: Path,
    port: int = 0,
    *,
    oauth: bool = False,
    cert: str | Path | None = None,
    key: str | Path | None = None,
    name: str = "azurite",
) -> tuple[Child, AzuritePorts]:
    """Azurite's queue and table services on loopback, in memory, each on a port of its own (``port`` is the queue's;
    the table's and the unused blob service's are picked by the system). ``oauth=True``: HTTPS with ``cert``/``key``
    (PEM; the emulator's ``storage-cert.pem``/``storage-key.pem``, ``Emulator.storage_tls``) and ``--oauth basic``, so
    bearer tokens are accepted (and checked: format, issuer, audience, lifetime; not the signature). The account key
    keeps working in either mode."""
    argv = [
        str(azurite_binary()),
        "--queueHost",
        "127.0.0.1",
        "--queuePort",
        str(port),
        "--tableHost",
        "127.0.0.1",
        "--tablePort",
        "0",
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        "0",
        "--inMemoryPersistence",
        "--skipApiVersionCheck",
        "--disableTelemetry",
        "--silent",
    ]
    if oauth:
        if not (cert and key):
            raise ValueError("Azurite's OAuth mode needs HTTPS: pass cert and key")
        argv += ["--cert", str(cert), "--key", str(key), "--oauth", "basic"]
    child = _spawn(name, argv, log_dir)
    scheme = "https" if oauth else "http"
    try:

        def listening() -> dict[str, int] | str | None:
            found = dict(
                re.findall(
                    rf"Azurite (Blob|Queue|Table) service is successfully listening at {scheme}://127\.0\.0\.1:(\d+)",
                    child.log(),
                )
            )
            if len(found) == 3:
                return {k: int(v) for k, v in found.items()}
            return "exit" if child.proc.poll() is not None else None

        found = wait_for(listening, 30, what="Azurite to listen")
        if found == "exit" or not isinstance(found, dict):
            raise RuntimeError(f"Azurite exited: {child.log()[-2000:]}")
    except BaseException:
        child.stop()  # also on Ctrl-C while waiting: leave nothing running
        raise
    return child, AzuritePorts(queue=found["Queue"], table=found["Table"], blob=found["Blob"])


@dataclass
class Emulator:
    url: str
    ca: str
    partner: dict
    child: Child | None = None
    _session: requests.Session = field(default_factory=requests.Session)
    storage_identity: dict | None = (
        None  # {"clientId", "clientSecret"}: the tenant's app registration for storage tokens
    )
    storage_tls: dict | None = None  # {"cert", "key"}: PEM files from the emulator's CA, for Azurite's HTTPS

    def _req(self, method: str, name: str, body: Any = None, **params: Any) -> Any:
        resp = self._session.request(
            method, f"{self.url}/_emulator/{name}", json=body, params=params, verify=self.ca, timeout=10
        )
        resp.raise_for_status()
        return resp.json()

    def state(self) -> dict:
        return self._req("GET", "state")

    def requests_log(self, since: int = 0) -> list[dict]:
        return self._req("GET", "requests", since=since)["requests"]

    def knobs(self, **knobs: Any) -> dict:
        return self._req("POST", "knobs", knobs)

    def faults(self, faults: list[dict]) -> list:
        return self._req("POST", "faults", faults)

    def add_customers(self, customers: list[dict]) -> None:
        self._req("POST", "customers", customers)

    def add_orders(self, customer_id: str, orders: list[dict]) -> int:
        """New purchases of an existing customer (order knobs as in a seed); returns its order count."""
        return self._req("POST", f"customers/{customer_id}/orders", orders)["orders"]

    def add_subscriptions(self, customer_id: str, subscriptions: list[dict]) -> int:
        """New subscriptions of an existing customer (as in a seed); returns its subscription count."""
        return self._req("POST", f"customers/{customer_id}/subscriptions", subscriptions)["subscriptions"]

    def revoke_tokens(self) -> int:
        return self._req("POST", "revoke-tokens")["revoked"]

    def reset(self, seed: dict | None = None) -> None:
        self._req("POST", "reset", seed)

    def fill(self, count: int = 75, seed: int = 7) -> int:
        """Add ``count`` generated customers (the same ones for the same
        seed); returns the emulator's customer total."""
        return self._req("POST", "customers/fill", {"count": count, "seed": seed})["customers"]

    def app_settings(self) -> dict[str, str]:
        return {
            "PARTNER_CENTER_BASE_URL": self.url,
            "PARTNER_CENTER_AUTHORITY_HOST": self.url,
            "PARTNER_CENTER_TENANT_ID": self.partner["tenantId"],
            "PARTNER_CENTER_CLIENT_ID": self.partner["clientId"],
            "PARTNER_CENTER_CLIENT_SECRET": self.partner["clientSecret"],
            "REQUESTS_CA_BUNDLE": self.ca,
        }

    def storage_identity_settings(
        self, queue_service_uri: str, table_service_uri: str, *, client_secret: str | None = None
    ) -> dict[str, str]:
        """Identity-based ``AzureWebJobsStorage`` as the host documents it for local development (no connection
        string): the storage identity's client secret, against the emulator as ``AZURE_AUTHORITY_HOST``."""
        assert self.storage_identity, "this emulator has no storage identity"
        return {
            "AzureWebJobsStorage__queueServiceUri": queue_service_uri,
            "AzureWebJobsStorage__tableServiceUri": table_service_uri,
            "AzureWebJobsStorage__tenantId": self.partner["tenantId"],
            "AzureWebJobsStorage__clientId": self.storage_identity["clientId"],
            "AzureWebJobsStorage__clientSecret": client_secret or self.storage_identity["clientSecret"],
            "AZURE_AUTHORITY_HOST": self.url,
            "REQUESTS_CA_BUNDLE": self.ca,
        }

    def storage_credential(self, *, client_secret: str | None = None) -> Any:
        """A real ClientSecretCredential of the storage identity against the emulator (TLS checked with its CA)."""
        from azure.identity import ClientSecretCredential

        assert self.storage_identity, "this emulator has no storage identity"
        return ClientSecretCredential(
            self.partner["tenantId"],
            self.storage_identity["clientId"],
            client_secret or self.storage_identity["clientSecret"],
            authority=self.url,
            disable_instance_discovery=True,
            connection_verify=self.ca,
        )


def start_emulator(log_dir: Path, seed: Path = SAMPLE_SANDBOX, port: int = 0) -> Emulator:
    state_dir = Path(tempfile.mkdtemp(prefix="pc-emulator-", dir=log_dir if log_dir.exists() else None))
    child = _spawn(
        "emulator",
        [
            sys.executable,
            "-m",
            "tools.pc_emulator",
            "--seed",
            str(seed),
            "--port",
            str(port),
            "--state-dir",
            str(state_dir),
        ],
        log_dir,
    )
    info_path = state_dir / "emulator.json"
    try:
        wait_for(
            lambda: info_path.exists() or (child.proc.poll() is not None and "exit"), 30, what="the emulator to start"
        )
        if child.proc.poll() is not None:
            raise RuntimeError(f"emulator exited: {child.log()[-2000:]}")
        info = json.loads(info_path.read_text())
    except BaseException:
        child.stop()
        raise
    return Emulator(
        info["url"],
        info["ca"],
        info["partner"],
        child,
        storage_identity=info.get("storageIdentity"),
        storage_tls=info.get("storageTls"),
    )


def start_host(
    log_dir: Path,
    settings: dict[str, str],
    *,
    name: str = "host",
    lease_seconds: int = 600,
    extra_env: dict[str, str] | None = None,
    app_root: Path = ROOT,
    admin_port: int = 0,
    state_dir: Path | None = None,
) -> Child:
    """The local Functions host with ``settings`` as its local.settings.json ``Values``.

    ``admin_port`` 0 lets it pick a free port (``Child.admin_url()`` reads it from the log); ``state_dir`` (timer
    status and singleton locks) defaults to ``<log_dir>/<name>-state``: hosts given the same one share their timers'
    singleton locks, as hosts sharing a storage account do.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    settings_file = log_dir / f"{name}.settings.json"
    settings_file.write_text(json.dumps({"IsEncrypted": False, "Values": settings}, indent=2))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("PARTNER_CENTER_", "AzureWebJobs", "POLL_", "DELETE_CUSTOMER", "DELETION_OUTCOMES", "SWEEP_")
        )
    }
    env.update(extra_env or {})
    env["PYTHONUNBUFFERED"] = "1"
    return _spawn(
        name,
        [
            sys.executable,
            "-m",
            "tools.local_host",
            "--settings",
            str(settings_file),
            "--lease-seconds",
            str(lease_seconds),
            "--app-root",
            str(app_root),
            "--admin-port",
            str(admin_port),
            "--state-dir",
            str(state_dir or log_dir / f"{name}-state"),
        ],
        log_dir,
        env,
    )


def invoke_admin(url: str, name: str, input: str = "") -> int:  # noqa: A002 - the endpoint's field name
    """``POST <url>/admin/functions/<name>`` with ``{"input": input}`` (run a function now); returns the status code."""
    with requests.Session() as session:
        session.trust_env = False  # loopback: never through a proxy from the environment
        return session.post(f"{url}/admin/functions/{name}", json={"input": input}, timeout=10).status_code


def unique_queues(prefix: str = "t") -> dict[str, str]:
    tag = f"{prefix}{uuid.uuid4().hex[:10]}"
    return {
        "DELETE_CUSTOMER_QUEUE": f"{tag}-req",
        "POLL_ORDERS_QUEUE": f"{tag}-poll",
        "DELETION_OUTCOMES_QUEUE": f"{tag}-out",
    }


class Queues:
    """Send and read messages as the app and the host do (Base64 text)."""

    def __init__(
        self,
        connection_string: str | None = None,
        *,
        account_url: str | None = None,
        credential: Any = None,
        ca: str | None = None,
    ):
        """From a connection string, or identity-based: ``account_url`` (``azurite_queue_service_uri``) with a token
        ``credential``, TLS checked against ``ca`` (the emulator's)."""
        from azure.storage.queue import QueueServiceClient

        if connection_string:
            self.service = QueueServiceClient.from_connection_string(connection_string)
        elif account_url:
            self.service = QueueServiceClient(
                account_url, credential=credential, **({"connection_verify": ca} if ca else {})
            )
        else:
            raise ValueError("Queues needs a connection string or an account_url")

    def client(self, name: str) -> Any:
        return self.service.get_queue_client(name)

    def ensure(self, name: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self.client(name).create_queue()

    def send(self, name: str, data: bytes | str, *, encode: bool = True, delay: int = 0) -> str:
        raw = data.encode() if isinstance(data, str) else data
        text = encode_for_trigger(raw) if encode else raw.decode("utf-8", "surrogateescape")
        return self.client(name).send_message(text, visibility_timeout=delay).id

    def peek_raw(self, name: str) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return [m.content for m in self.client(name).peek_messages(max_messages=32)]
        except ResourceNotFoundError:
            return []

    def peek_all(self, name: str, limit: int = 5000) -> list[str]:
        """Every message's text without consuming it (peek stops at 32): receive with a 1 s lease, delete nothing."""
        from azure.core.exceptions import ResourceNotFoundError

        seen: dict[str, str] = {}
        try:
            while len(seen) < limit:
                page = list(
                    next(
                        self.client(name)
                        .receive_messages(max_messages=32, messages_per_page=32, visibility_timeout=1)
                        .by_page(),
                        [],
                    )
                )
                fresh = [m for m in page if m.id not in seen]
                if not fresh:
                    return list(seen.values())
                for m in fresh:
                    seen[m.id] = m.content
        except ResourceNotFoundError:
            pass
        return list(seen.values())

    def drain(self, name: str) -> list[Any]:
        """Receive and delete every visible message; returns the decoded bodies (bytes)."""
        from azure.core.exceptions import ResourceNotFoundError

        out: list[Any] = []
        try:
            while True:
                page = list(
                    next(
                        self.client(name)
                        .receive_messages(max_messages=32, messages_per_page=32, visibility_timeout=30)
                        .by_page(),
                        [],
                    )
                )
                if not page:
                    return out
                for m in page:
                    out.append(m)
                    self.client(name).delete_message(m)
        except ResourceNotFoundError:
            return out

    def count(self, name: str) -> int:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.client(name).get_queue_properties().approximate_message_count
        except ResourceNotFoundError:
            return 0


class OutcomeReader:
    """Collects outcome events (JSON) from the outcomes queue as they land."""

    def __init__(self, queues: Queues, name: str):
        self.queues, self.name = queues, name
        self.events: list[dict] = []

    def poll(self) -> list[dict]:
        for m in self.queues.drain(self.name):
            self.events.append(json.loads(decode_base64_strict(m.content)))
        return self.events

    def wait(self, count: int, timeout: float) -> list[dict]:
        return wait_for(
            lambda: len(self.poll()) >= count and self.events, timeout, 0.3, f"{count} outcome event(s) on {self.name}"
        )


def http_get(url: str, *, key: str | None = None, header: bool = False, method: str = "GET") -> requests.Response:
    """A request to a local host's HTTP trigger, with the function key as ``code`` (the portal's function URL) or as
    the ``x-functions-key`` header."""
    headers: dict[str, str] = {}
    params: dict[str, str] = {}
    if key is not None and header:
        headers["x-functions-key"] = key
    elif key is not None:
        params["code"] = key
    with requests.Session() as session:
        session.trust_env = False  # loopback: never through a proxy from the environment
        return session.request(method, url, headers=headers, params=params, timeout=30)
