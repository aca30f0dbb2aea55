"""App settings: read once per worker process, validated all at once.

``Settings.from_env`` names every missing or malformed setting in one ``ConfigurationError``, so an operator
fixes the deployment in one pass instead of one error per restart.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from shared.ids import is_guid

__all__ = [
    "DEFAULTS",
    "ConfigurationError",
    "Settings",
    "StorageConnection",
    "get_settings",
    "host_max_polling_interval",
    "is_known_authority",
    "is_loopback_host",
    "queue_name_problem",
    "reset_settings",
    "storage_connection",
    "table_name_problem",
]

APP_ROOT = Path(__file__).resolve().parent.parent

DEFAULTS: dict[str, str] = {
    "DELETE_CUSTOMER_QUEUE": "customer-deletions",
    "POLL_ORDERS_QUEUE": "customer-deletion-polls",
    "DELETION_OUTCOMES_QUEUE": "customer-deletion-outcomes",
    "PARTNER_CENTER_BASE_URL": "https://api.partnercenter.microsoft.com",
    "PARTNER_CENTER_AUTHORITY_HOST": "https://login.microsoftonline.com",
    "PARTNER_CENTER_SCOPE": "https://api.partnercenter.microsoft.com/.default",
    "POLL_INTERVAL_SECONDS": "30",
    "POLL_MAX_INTERVAL_SECONDS": "600",
    "POLL_TIMEOUT_SECONDS": "21600",
    "PROTECTED_CUSTOMER_IDS": "",
    "PARTNER_CENTER_TIMEOUT_SECONDS": "30",
    "PARTNER_CENTER_RETRY_BUDGET_SECONDS": "4",
    "INVOCATION_WORK_SECONDS": "10",
    "PARTNER_CENTER_CALLS_PER_MINUTE": "450",
    "DELETE_REFUSAL_TIMEOUT_SECONDS": "1800",
    "CLEAR_SUBSCRIPTIONS": "true",
    "DELETION_REQUESTS_TABLE": "deletionrequests",
    "LEDGER_RETENTION_DAYS": "30",
}

#: Connect timeout of every Partner Center call (the read timeout is PARTNER_CENTER_TIMEOUT_SECONDS).
CONNECT_TIMEOUT_SECONDS = 5
#: The token endpoint: connect and read timeouts, and one retry; so a token takes at most about 31 s.
TOKEN_CONNECT_SECONDS, TOKEN_READ_SECONDS, TOKEN_RETRIES = 5, 10, 1
TOKEN_SECONDS = (TOKEN_RETRIES + 1) * (TOKEN_CONNECT_SECONDS + TOKEN_READ_SECONDS) + 1
#: The table client (``shared.app``): connect and read timeouts, retries and the pause between them; so one table
#: call takes at most about 16.5 s (a single-entity operation takes milliseconds; a longer fault is an outage).
TABLE_CONNECT_SECONDS, TABLE_READ_SECONDS, TABLE_RETRIES, TABLE_BACKOFF_SECONDS = 3, 5, 1, 0.5
TABLE_CALL_SECONDS = (TABLE_RETRIES + 1) * (
    TABLE_CONNECT_SECONDS + TABLE_READ_SECONDS
) + TABLE_RETRIES * TABLE_BACKOFF_SECONDS
#: The host's queue message lease: a message whose invocation died is received again no sooner than this (10 minutes,
#: renewed every 5 while the invocation runs; functions-queues.md section 3). A claim must run out before it.
QUEUE_LEASE_SECONDS = 600
#: Added to a claim's length, for clock steps between the instances that compare it.
CLAIM_MARGIN_SECONDS = 5
#: The in-process wait of one invocation is at most this; the previous release allowed up to 3600 (per call).
MAX_RETRY_BUDGET_SECONDS = 30
#: POLL_TIMEOUT_SECONDS is at most 30 days.
MAX_POLL_TIMEOUT_SECONDS = 30 * 24 * 3600

#: Entra ID authority hosts of the Microsoft clouds; any other host gets instance discovery switched off,
#: so a private or emulated authority works without internet access.
KNOWN_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoft.com",
        "login.windows.net",
        "sts.windows.net",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
        "login.microsoftonline.us",
        "login.microsoftonline.de",
    }
)

#: The longest delay a storage queue message can be hidden (7 days), less one second: Azure rejects visibility == TTL.
MAX_QUEUE_DELAY_SECONDS = 7 * 24 * 3600 - 1

#: An Azure Table Storage table name: 3-63 letters and digits, starting with a letter ("tables" is reserved).
_TABLE_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")
_QUEUE_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]")
_DOMAIN_RE = re.compile(r"(?=.{1,253}\Z)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")


class ConfigurationError(Exception):
    """One or more app settings are missing or malformed; the message names every one."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid app settings: " + "; ".join(problems))


@dataclass(frozen=True)
class StorageConnection:
    """How the app reaches its queues: a connection string, or an identity-based service URI.

    Identity-based, with the Functions host's own setting names (``AzureWebJobsStorage__...``): ``credential=
    managedidentity`` (+ ``clientId``), or, for local development only, ``tenantId`` + ``clientId`` + ``clientSecret``
    (an app registration's client secret, against ``authority_host``: ``AZURE_AUTHORITY_HOST``, as azure-identity
    and the host's Azure.Identity read it; default the public cloud).
    """

    connection_string: str | None = None
    queue_service_uri: str | None = None
    table_service_uri: str | None = None  # identity-based only; a connection string names its own table endpoint
    client_id: str | None = None
    use_managed_identity: bool = False
    tenant_id: str | None = None
    client_secret: str | None = None
    authority_host: str = DEFAULTS["PARTNER_CENTER_AUTHORITY_HOST"]

    @property
    def uses_client_secret(self) -> bool:
        return bool(self.client_secret) and not self.use_managed_identity

    def __repr__(self) -> str:  # never print the account key or the client secret
        if self.connection_string:
            return "StorageConnection(connection_string=<redacted>)"
        extra = (
            f", tenant_id={self.tenant_id!r}, client_secret=<redacted>, authority_host={self.authority_host!r}"
            if self.uses_client_secret
            else ""
        )
        return (
            f"StorageConnection(queue_service_uri={self.queue_service_uri!r}, "
            f"table_service_uri={self.table_service_uri!r}, client_id={self.client_id!r}{extra})"
        )


@dataclass(frozen=True)
class Settings:
    storage: StorageConnection
    delete_queue: str
    poll_queue: str
    outcomes_queue: str
    base_url: str
    authority_host: str
    scope: str
    tenant_id: str | None
    client_id: str | None
    client_secret: str | None = field(repr=False)
    client_certificate_path: str | None
    poll_interval: int
    poll_max_interval: int
    poll_timeout: int
    protected_ids: frozenset[str]
    read_timeout: int = 30
    retry_budget: int = 4  # seconds one invocation may wait in-process, in total
    work_seconds: int = 10  # no Partner Center call starts after this long in one invocation
    max_polling_interval: float = 60.0  # the host's maxPollingInterval: how late a due message may be picked up
    calls_per_minute: int = 450  # the most Partner Center calls one worker process sends in any 60 s (shared.pacing)
    delete_refusal_timeout: int = 1800  # a DELETE still refused this long after the first refusal ends `failed`
    clear_subscriptions: bool = True  # CLEAR_SUBSCRIPTIONS: cancel or suspend subscriptions, and prove them final
    requests_table: str = DEFAULTS["DELETION_REQUESTS_TABLE"]  # the request ledger and the sweep's first-seen record
    ledger_retention_days: int = 30  # LEDGER_RETENTION_DAYS: finished rows are pruned this long after they finished
    notes: tuple[str, ...] = ()  # settings that were accepted, but not as given: logged once at start

    @property
    def claim_seconds(self) -> float:
        """CLAIM_SECONDS, the request ledger's claim: one invocation's longest work after it claimed the row (no call
        starts after INVOCATION_WORK_SECONDS; the in-process waits; one call started just before that, with a fresh
        token; the table write that follows it) and a margin. At most 508 s with the largest settings, so a claim has
        always run out when the host's lease (600 s) gives a dead invocation's message to another."""
        call = TOKEN_SECONDS + CONNECT_TIMEOUT_SECONDS + self.read_timeout
        return float(self.work_seconds + self.retry_budget + call + TABLE_CALL_SECONDS + CLAIM_MARGIN_SECONDS)

    @property
    def delete_poison_queue(self) -> str:
        return self.delete_queue + "-poison"

    @property
    def poll_poison_queue(self) -> str:
        return self.poll_queue + "-poison"

    @property
    def authority_is_known_cloud(self) -> bool:
        return is_known_authority(self.authority_host)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, app_root: Path = APP_ROOT) -> Settings:
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def get(name: str) -> str:
            value = env.get(name)
            if value is None or value.strip() == "":
                return DEFAULTS.get(name, "")
            return value.strip()

        storage = _storage_connection(env, problems)
        queues = {}
        for name in ("DELETE_CUSTOMER_QUEUE", "POLL_ORDERS_QUEUE", "DELETION_OUTCOMES_QUEUE"):
            queues[name] = _queue_name(name, get(name), problems)
        if len(set(queues.values())) != len(queues):
            problems.append(
                "DELETE_CUSTOMER_QUEUE, POLL_ORDERS_QUEUE and DELETION_OUTCOMES_QUEUE must be different queues"
            )

        base_url = _url("PARTNER_CENTER_BASE_URL", get("PARTNER_CENTER_BASE_URL"), problems, allow_loopback_http=True)
        authority = _url(
            "PARTNER_CENTER_AUTHORITY_HOST", get("PARTNER_CENTER_AUTHORITY_HOST"), problems, allow_loopback_http=False
        )
        scope = get("PARTNER_CENTER_SCOPE")
        if not scope.endswith("/.default") or any(c.isspace() for c in scope):
            problems.append(f"PARTNER_CENTER_SCOPE must be one scope ending in '/.default' (got {scope!r})")

        tenant_id = env.get("PARTNER_CENTER_TENANT_ID", "").strip() or None
        client_id = env.get("PARTNER_CENTER_CLIENT_ID", "").strip() or None
        secret = env.get("PARTNER_CENTER_CLIENT_SECRET", "").strip() or None
        cert = env.get("PARTNER_CENTER_CLIENT_CERTIFICATE_PATH", "").strip() or None
        if any((tenant_id, client_id, secret, cert)):
            if not tenant_id:
                problems.append("PARTNER_CENTER_TENANT_ID is required with an app credential")
            elif not _is_tenant(tenant_id):
                problems.append("PARTNER_CENTER_TENANT_ID must be a tenant GUID or domain name")
            if not client_id:
                problems.append("PARTNER_CENTER_CLIENT_ID is required with an app credential")
            elif not is_guid(client_id):
                problems.append("PARTNER_CENTER_CLIENT_ID must be a GUID")
            if secret and secret.startswith("@Microsoft.KeyVault("):
                # App Service leaves a reference it cannot resolve as its own
                # text: a token request would fail later, and vaguely.
                problems.append(
                    "PARTNER_CENTER_CLIENT_SECRET is a Key Vault reference the platform could not resolve: does the "
                    "secret exist, and does the app's identity hold Key Vault Secrets User on the vault?"
                )
            if secret and cert:
                problems.append("set PARTNER_CENTER_CLIENT_SECRET or PARTNER_CENTER_CLIENT_CERTIFICATE_PATH, not both")
            elif not secret and not cert:
                problems.append(
                    "PARTNER_CENTER_CLIENT_SECRET or PARTNER_CENTER_CLIENT_CERTIFICATE_PATH is required with an app "
                    "credential"
                )

        interval = _seconds("POLL_INTERVAL_SECONDS", get("POLL_INTERVAL_SECONDS"), problems, minimum=1)
        max_interval = _seconds("POLL_MAX_INTERVAL_SECONDS", get("POLL_MAX_INTERVAL_SECONDS"), problems, minimum=1)
        timeout = _seconds(
            "POLL_TIMEOUT_SECONDS", get("POLL_TIMEOUT_SECONDS"), problems, minimum=1, maximum=MAX_POLL_TIMEOUT_SECONDS
        )
        if interval and max_interval and max_interval < interval:
            problems.append("POLL_MAX_INTERVAL_SECONDS must not be smaller than POLL_INTERVAL_SECONDS")

        protected: set[str] = set()
        for raw in get("PROTECTED_CUSTOMER_IDS").split(","):
            item = raw.strip()
            if not item:
                continue
            if is_guid(item):
                protected.add(item.lower())
            else:
                # A protection entry that cannot be read must stop the app: ignoring it could delete that customer.
                problems.append(f"PROTECTED_CUSTOMER_IDS has an entry that is not a GUID: {item[:60]!r}")

        read_timeout = _seconds(
            "PARTNER_CENTER_TIMEOUT_SECONDS", get("PARTNER_CENTER_TIMEOUT_SECONDS"), problems, minimum=1, maximum=300
        )
        # Compatible with the previous release (1-3600, per call): a larger value still starts, at the new maximum.
        retry_budget = _seconds(
            "PARTNER_CENTER_RETRY_BUDGET_SECONDS",
            get("PARTNER_CENTER_RETRY_BUDGET_SECONDS"),
            problems,
            minimum=0,
            maximum=3600,
        )
        notes = []
        if retry_budget > MAX_RETRY_BUDGET_SECONDS:
            notes.append(
                f"PARTNER_CENTER_RETRY_BUDGET_SECONDS={retry_budget} is used as {MAX_RETRY_BUDGET_SECONDS}: it now "
                "bounds the in-process waits of a whole invocation; longer waits continue on the poll queue"
            )
            retry_budget = MAX_RETRY_BUDGET_SECONDS
        work_seconds = _seconds(
            "INVOCATION_WORK_SECONDS", get("INVOCATION_WORK_SECONDS"), problems, minimum=1, maximum=120
        )
        polling = host_max_polling_interval(app_root, env, problems)
        calls_per_minute = _seconds(
            "PARTNER_CENTER_CALLS_PER_MINUTE",
            get("PARTNER_CENTER_CALLS_PER_MINUTE"),
            problems,
            minimum=1,
            maximum=100_000,
            unit="calls",
        )

        refusal_timeout = _seconds(
            "DELETE_REFUSAL_TIMEOUT_SECONDS",
            get("DELETE_REFUSAL_TIMEOUT_SECONDS"),
            problems,
            minimum=1,
            maximum=MAX_POLL_TIMEOUT_SECONDS,
        )
        if timeout and refusal_timeout > timeout:
            if (env.get("DELETE_REFUSAL_TIMEOUT_SECONDS") or "").strip():
                problems.append(
                    f"DELETE_REFUSAL_TIMEOUT_SECONDS ({refusal_timeout}) must not be larger than POLL_TIMEOUT_SECONDS "
                    f"({timeout})"
                )
            refusal_timeout = timeout  # the default, under a shorter POLL_TIMEOUT_SECONDS: the request's whole life

        clear_text = get("CLEAR_SUBSCRIPTIONS").lower()
        if clear_text not in ("true", "false"):
            problems.append(f"CLEAR_SUBSCRIPTIONS must be true or false (got {get('CLEAR_SUBSCRIPTIONS')[:20]!r})")

        table = get("DELETION_REQUESTS_TABLE")
        table_problem = table_name_problem("DELETION_REQUESTS_TABLE", table)
        if table_problem:
            problems.append(table_problem)
        retention = _seconds(
            "LEDGER_RETENTION_DAYS", get("LEDGER_RETENTION_DAYS"), problems, minimum=1, maximum=3650, unit="days"
        )

        if problems or storage is None:  # no storage connection is always one of the problems
            raise ConfigurationError(problems)
        return cls(
            storage=storage,
            delete_queue=queues["DELETE_CUSTOMER_QUEUE"],
            poll_queue=queues["POLL_ORDERS_QUEUE"],
            outcomes_queue=queues["DELETION_OUTCOMES_QUEUE"],
            base_url=base_url.rstrip("/"),
            authority_host=authority.rstrip("/"),
            scope=scope,
            tenant_id=tenant_id,
            client_id=client_id,
            client_secret=secret,
            client_certificate_path=cert,
            poll_interval=interval,
            poll_max_interval=max_interval,
            poll_timeout=timeout,
            protected_ids=frozenset(protected),
            read_timeout=read_timeout,
            retry_budget=retry_budget,
            work_seconds=work_seconds,
            max_polling_interval=polling,
            calls_per_minute=calls_per_minute,
            delete_refusal_timeout=refusal_timeout,
            clear_subscriptions=clear_text != "false",
            requests_table=table,
            ledger_retention_days=retention,
            notes=tuple(notes),
        )


def _is_tenant(value: str) -> bool:
    """An Entra tenant as a token endpoint takes it: its GUID or one of its domain names."""
    return bool(is_guid(value) or _DOMAIN_RE.fullmatch(value))


def is_known_authority(url: str) -> bool:
    """Whether ``url`` is the Entra ID authority of a Microsoft cloud (else instance discovery is switched off)."""
    return (urlsplit(url).hostname or "").lower() in KNOWN_AUTHORITY_HOSTS


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def storage_connection(env: Mapping[str, str]) -> StorageConnection:
    """The storage ``env`` names, as the app reads it (a connection string, or the host's identity-based
    ``AzureWebJobsStorage__...`` settings). Raises ConfigurationError, naming each problem, when it is unusable."""
    problems: list[str] = []
    storage = _storage_connection(env, problems)
    if problems or storage is None:
        raise ConfigurationError(problems or ["AzureWebJobsStorage is required"])
    return storage


def _storage_connection(env: Mapping[str, str], problems: list[str]) -> StorageConnection | None:
    conn = env.get("AzureWebJobsStorage", "").strip()
    if conn:
        if "=" not in conn:
            problems.append("AzureWebJobsStorage must be a storage connection string")
        else:
            problem = _table_endpoint_problem(conn)
            if problem:
                problems.append(problem)
        return StorageConnection(connection_string=conn)
    prefix = "AzureWebJobsStorage__"

    def get(name: str) -> str:
        return env.get(prefix + name, "").strip()

    uri = get("queueServiceUri")
    table_uri = get("tableServiceUri")
    account = get("accountName")
    if account and not re.fullmatch(r"[a-z0-9]{3,24}", account):
        problems.append(f"AzureWebJobsStorage__accountName must be a storage account name (got {account[:40]!r})")
        account = ""
    if not uri and account:
        uri = f"https://{account}.queue.core.windows.net"
    if not table_uri and account:  # as the host derives it
        table_uri = f"https://{account}.table.core.windows.net"
    if not uri:
        problems.append(
            "AzureWebJobsStorage is required (a connection string, or AzureWebJobsStorage__queueServiceUri for an "
            "identity)"
        )
        return None
    parts = urlsplit(uri)
    if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback_host(parts.hostname)):
        problems.append("AzureWebJobsStorage__queueServiceUri must be an https URL")
    table_parts = urlsplit(table_uri)
    if not table_uri:
        problems.append(
            "AzureWebJobsStorage__tableServiceUri is required with an identity-based AzureWebJobsStorage (or "
            "AzureWebJobsStorage__accountName, from which it is derived): the sweep's first-seen record is a table in "
            "that account"
        )
    elif table_parts.scheme != "https" and not (
        table_parts.scheme == "http" and is_loopback_host(table_parts.hostname)
    ):
        problems.append("AzureWebJobsStorage__tableServiceUri must be an https URL")
    elif not table_parts.hostname or table_parts.query or table_parts.fragment or table_parts.username:
        problems.append("AzureWebJobsStorage__tableServiceUri must be a plain URL without credentials or query")
    client_id = get("clientId") or None
    if client_id and not is_guid(client_id):
        problems.append("AzureWebJobsStorage__clientId must be a GUID")
    credential = get("credential")
    if credential and credential.lower() != "managedidentity":
        problems.append(
            f"AzureWebJobsStorage__credential must be 'managedidentity' or not set (got {credential[:40]!r})"
        )
    managed = credential.lower() == "managedidentity"
    tenant_id, secret = get("tenantId") or None, get("clientSecret") or None
    authority = DEFAULTS["PARTNER_CENTER_AUTHORITY_HOST"]
    if managed and (tenant_id or secret):
        problems.append(
            "AzureWebJobsStorage__tenantId and __clientSecret are for local development: "
            "not with AzureWebJobsStorage__credential=managedidentity"
        )
    elif secret or tenant_id:
        # Local development only (as the host documents it): an app registration's secret. All three or none.
        if not tenant_id:
            problems.append("AzureWebJobsStorage__tenantId is required with AzureWebJobsStorage__clientSecret")
        elif not _is_tenant(tenant_id):
            problems.append("AzureWebJobsStorage__tenantId must be a tenant GUID or domain name")
        if not client_id:
            problems.append("AzureWebJobsStorage__clientId is required with AzureWebJobsStorage__clientSecret")
        if not secret:
            problems.append("AzureWebJobsStorage__clientSecret is required with AzureWebJobsStorage__tenantId")
        raw = env.get("AZURE_AUTHORITY_HOST", "").strip()
        if raw:  # azure-identity's own variable: the storage credential's authority
            authority = _url("AZURE_AUTHORITY_HOST", raw, problems, allow_loopback_http=False).rstrip("/")
        if parts.scheme != "https":
            problems.append("AzureWebJobsStorage__queueServiceUri must be an https URL with a token credential")
        if table_uri and table_parts.scheme != "https":
            problems.append("AzureWebJobsStorage__tableServiceUri must be an https URL with a token credential")
    return StorageConnection(
        queue_service_uri=uri.rstrip("/"),
        table_service_uri=table_uri.rstrip("/") or None,
        client_id=client_id,
        use_managed_identity=managed,
        tenant_id=tenant_id,
        client_secret=secret,
        authority_host=authority,
    )


def table_name_problem(setting: str, name: str) -> str | None:
    """Why ``name`` cannot be an Azure Table Storage table, or ``None`` (table names keep their case)."""
    if not _TABLE_NAME_RE.fullmatch(name) or name.lower() == "tables":
        return (
            f"{setting} must be a table name of 3-63 letters and digits, starting with a letter, and not 'tables' "
            f"(got {name[:70]!r})"
        )
    return None


def _table_endpoint_problem(conn: str) -> str | None:
    """Why the table endpoint of connection string ``conn`` is unknown or untrusted, or ``None``. The storage SDKs
    derive it from ``AccountName`` (and ``EndpointSuffix``) when no endpoint is named; once other endpoints are named
    explicitly (an emulator, a private endpoint), deriving it would be a guess that may leave the network."""
    parts: dict[str, str] = {}
    for item in conn.split(";"):
        name, sep, value = item.partition("=")
        if sep:
            parts[name.strip().lower()] = value.strip()
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        return None
    table = parts.get("tableendpoint")
    if table:
        url = urlsplit(table)
        if url.scheme == "https" or (url.scheme == "http" and is_loopback_host(url.hostname)):
            return None
        return "AzureWebJobsStorage's TableEndpoint must be an https URL (http only for loopback hosts)"
    if not parts.get("accountname"):
        return "AzureWebJobsStorage names no table endpoint and no AccountName to derive one from: add TableEndpoint="
    if any(parts.get(k) for k in ("blobendpoint", "queueendpoint", "fileendpoint")):
        return (
            "AzureWebJobsStorage names its other endpoints but no TableEndpoint: add TableEndpoint= (the table holds "
            "the sweep's first-seen record; its endpoint is not guessed)"
        )
    return None


def queue_name_problem(setting: str, name: str) -> str | None:
    """Why ``name`` (already lower-cased) cannot be one of the app's queues, or ``None``."""
    if not (3 <= len(name) <= 56) or not _QUEUE_NAME_RE.fullmatch(name):
        return (
            f"{setting} must be a queue name of 3-56 lower-case letters, digits and single hyphens "
            f"(56, so that '<name>-poison' is still valid; got {name!r})"
        )
    return None


def _queue_name(setting: str, value: str, problems: list[str]) -> str:
    name = value.lower()  # the host lower-cases %SETTING% queue names; so do we
    problem = queue_name_problem(setting, name)
    if problem:
        problems.append(problem)
    return name


def _url(setting: str, value: str, problems: list[str], *, allow_loopback_http: bool) -> str:
    parts = urlsplit(value)
    if parts.scheme == "https" or (allow_loopback_http and parts.scheme == "http" and is_loopback_host(parts.hostname)):
        if not parts.hostname or parts.query or parts.fragment or parts.username or parts.password:
            problems.append(f"{setting} must be a plain URL without credentials, query or fragment (got {value!r})")
        return value
    allowed = "https (http only for loopback hosts)" if allow_loopback_http else "https"
    problems.append(f"{setting} must use {allowed}: {value!r}")
    return value


def _seconds(
    setting: str,
    value: str,
    problems: list[str],
    *,
    minimum: int,
    maximum: int | None = MAX_QUEUE_DELAY_SECONDS,
    unit: str = "seconds",
) -> int:
    try:
        seconds = int(value)
    except ValueError:
        problems.append(f"{setting} must be a whole number of {unit} (got {value!r})")
        return 0
    if seconds < minimum or (maximum is not None and seconds > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        problems.append(f"{setting} must be at least {minimum}{upper} (got {seconds})")
        return 0
    return seconds


def _host_queue_option(app_root: Path, env: Mapping[str, str], name: str) -> object:
    """``extensions.queues.<name>`` of the host: the ``AzureFunctionsJobHost__``
    app setting, else host.json, else None."""
    override_key = f"azurefunctionsjobhost__extensions__queues__{name.lower()}"
    for key, value in env.items():
        if key.lower() == override_key:
            return value
    try:
        host = json.loads((app_root / "host.json").read_text(encoding="utf-8-sig"))
        queues = {k.lower(): v for k, v in host.get("extensions", {}).get("queues", {}).items()}
    except (OSError, ValueError, AttributeError):
        return None
    return queues.get(name.lower())


_TIMESPAN_RE = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d{1,7}))?")


def host_max_polling_interval(app_root: Path, env: Mapping[str, str], problems: list[str] | None = None) -> float:
    """The host's ``extensions.queues.maxPollingInterval`` in seconds (a .NET TimeSpan), 60 when not set."""
    raw = _host_queue_option(app_root, env, "maxPollingInterval")
    if raw is None:
        return 60.0
    m = _TIMESPAN_RE.fullmatch(str(raw).strip())
    if not m:
        if problems is not None:
            problems.append(f"maxPollingInterval must be a TimeSpan such as 00:00:10 (got {raw!r})")
        return 60.0
    days, hours, minutes, seconds, fraction = m.groups()
    return (
        int(days or 0) * 86400
        + int(hours) * 3600
        + int(minutes) * 60
        + int(seconds)
        + (float("0." + fraction) if fraction else 0.0)
    )


_lock = threading.Lock()
_settings: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read on first use (never at import time)."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = Settings.from_env()
        return _settings


def reset_settings() -> None:
    """Forget the cached settings (tests; a real worker process reads them once)."""
    global _settings
    with _lock:
        _settings = None
