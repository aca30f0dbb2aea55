"""Composition root: settings, credential and clients built once per worker process, on first use."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from shared import telemetry
from shared.config import (
    CONNECT_TIMEOUT_SECONDS,
    TABLE_BACKOFF_SECONDS,
    TABLE_CONNECT_SECONDS,
    TABLE_READ_SECONDS,
    TABLE_RETRIES,
    get_settings,
)
from shared.service import Deps, handle_deletion_request, handle_poll

__all__ = ["deps", "run_delete_customer", "run_deletion_status", "run_poll_orders", "run_sweep_customers", "set_deps"]

log = logging.getLogger("customer_deletion")

_lock = threading.Lock()
_deps: Deps | None = None

# At load, before any invocation: the worker configured the exporter already, and an idle worker must not export
# the SDKs' and the exporter's own INFO records (shared.telemetry.SDK_LOGGERS).
telemetry.quiet_sdk_loggers()


def _build() -> Deps:
    from azure.core.pipeline.policies import RetryMode
    from azure.data.tables import TableServiceClient
    from azure.storage.queue import LinearRetry, QueueServiceClient

    from shared.auth import partner_center_credential, storage_credential
    from shared.pacing import Pacer
    from shared.partner_center import PartnerCenterClient, RetryPolicy
    from shared.queues import QueuePublisher
    from shared.tables import TableStore

    settings = get_settings()
    # The storage SDK's default retries back off for 15 s and more: far longer than an invocation may wait. A send
    # that still fails raises, and the redelivered message hands the request over (shared.workflow).
    retry = LinearRetry(backoff=0.5, random_jitter_range=0.3, retry_total=2)  # type: ignore[arg-type]  # hinted int, used as float seconds (random.uniform)
    if settings.storage.connection_string:
        service = QueueServiceClient.from_connection_string(
            settings.storage.connection_string, retry_policy=retry, connection_timeout=5, read_timeout=15
        )
    elif settings.storage.queue_service_uri:
        service = QueueServiceClient(
            settings.storage.queue_service_uri,
            credential=storage_credential(settings.storage),
            retry_policy=retry,
            connection_timeout=5,
            read_timeout=15,
        )
    else:  # Settings refuses this at start-up; never guess an endpoint
        raise ValueError("AzureWebJobsStorage has neither a connection string nor a queue service URI")
    # The table client: the same account, credential and short waits (azure-core's retry options).
    table_options: dict[str, Any] = {  # CLAIM_SECONDS counts one table call at these (shared.config)
        "retry_total": TABLE_RETRIES,
        "retry_backoff_factor": TABLE_BACKOFF_SECONDS,
        "retry_mode": RetryMode.Fixed,
        "connection_timeout": TABLE_CONNECT_SECONDS,
        "read_timeout": TABLE_READ_SECONDS,
    }
    if settings.storage.connection_string:
        tables = TableServiceClient.from_connection_string(settings.storage.connection_string, **table_options)
    elif settings.storage.table_service_uri:
        tables = TableServiceClient(
            settings.storage.table_service_uri, credential=storage_credential(settings.storage), **table_options
        )
    else:  # Settings refuses this at start-up too
        raise ValueError("AzureWebJobsStorage has no table service URI")
    policy = RetryPolicy(
        connect_timeout=float(CONNECT_TIMEOUT_SECONDS),
        read_timeout=float(settings.read_timeout),
        max_total_seconds=float(settings.retry_budget),
    )
    client = PartnerCenterClient(
        settings.base_url,
        partner_center_credential(settings),
        settings.scope,
        policy=policy,
        credential_factory=lambda: partner_center_credential(settings),
        pacer=Pacer(settings.calls_per_minute),
    )
    log.info(
        "customer deletion app configured: Partner Center %s, queues %s / %s / %s, table %s",
        settings.base_url,
        settings.delete_queue,
        settings.poll_queue,
        settings.outcomes_queue,
        settings.requests_table,
    )
    for note in settings.notes:
        log.warning("setting: %s", note)
    return Deps(
        settings=settings,
        partner_center=client,
        publisher=QueuePublisher(service),
        tables=TableStore(tables, settings.requests_table),
    )


def deps() -> Deps:
    global _deps
    with _lock:
        if _deps is None:
            _deps = _build()
        return _deps


def set_deps(value: Deps | None) -> None:
    """Replace (or with ``None`` forget) the process-wide dependencies: tests only."""
    global _deps
    with _lock:
        _deps = value


def _invocation_id(context: Any) -> str:
    return str(getattr(context, "invocation_id", None) or "-")


def _invoke(function: str, context: Any, handler: Callable[[str], object]) -> None:
    """Run one invocation inside its structured log fields. An invocation that raises (a queue message then comes
    back) logs the exception here, inside the fields, so the exception's record carries them too; then it raises on."""
    invocation = _invocation_id(context)
    telemetry.quiet_sdk_loggers()
    with telemetry.invocation_trace(context), telemetry.fields(function=function, invocationId=invocation):
        try:
            handler(invocation)
        except Exception as exc:
            log.exception("[%s] the invocation failed (%s); the host records the failure", function, type(exc).__name__)
            raise


def run_delete_customer(msg: Any, context: Any) -> None:
    _invoke("delete_customer", context, lambda invocation: handle_deletion_request(msg, invocation, deps()))


def run_poll_orders(msg: Any, context: Any) -> None:
    _invoke("poll_orders", context, lambda invocation: handle_poll(msg, invocation, deps()))


def run_deletion_status(route_params: Any, url: str, context: Any) -> Any:
    """``deletion_status``: the ledger's rows for one correlation id or customer, as JSON (``shared.status``). Returns
    the ``shared.status.Reply``; the function turns it into its HttpResponse. No Partner Center call."""
    from urllib.parse import urlsplit

    from shared import status
    from shared.tables import TableError

    invocation = _invocation_id(context)
    with telemetry.invocation_trace(context), telemetry.fields(function="deletion_status", invocationId=invocation):
        question = status.parse_query(dict(route_params or {}), urlsplit(url).query)
        if isinstance(question, status.Reply):
            log.info("[deletion_status] %d: %s", question.status, question.body.get("error"))
            return question
        tables = deps().tables
        try:
            if tables is None:
                raise TableError("no table is configured")
            if isinstance(question, status.ByCustomer):
                rows = tables.query_partition(question.customer_id)
            else:
                rows = tables.query_by("correlationId", question.correlation_id)
        except TableError as exc:
            log.warning("[deletion_status] the ledger cannot be read: %s", exc)
            return status.unavailable()
        reply = status.answer(question, rows)
        log.info("[deletion_status] %d: %d request(s)", reply.status, len(reply.body.get("requests", [])))
        return reply


def run_sweep_customers(timer: Any, context: Any) -> None:
    from shared.sweeper import handle_sweep

    _invoke("sweep_customers", context, lambda invocation: handle_sweep(timer, invocation, deps()))
