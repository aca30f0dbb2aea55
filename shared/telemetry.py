"""Structured log fields: every log record of a step carries who it works for, so operators can query by field.

With ``"telemetryMode": "OpenTelemetry"`` in host.json and ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true``, the
Python worker configures Azure Monitor's OpenTelemetry distro (``azure-monitor-opentelemetry``). Its logging handler
turns a record's own attributes into log attributes, which Application Insights stores as custom dimensions of the
``traces`` row. So the fields below are set as record attributes, on every record made while a step runs (the app's
lines and those of the libraries it calls, such as a retry of the storage SDK), by a log record factory.

The fields live in a context variable: an invocation sets them at its start (``fields``), adds to them as it learns
more (``bind``: the request once it is parsed, the outcome at the end), and they are gone when it returns. Threads
that the worker runs invocations on each have their own context, so concurrent invocations never mix their fields.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from types import MappingProxyType
from typing import Any

__all__ = ["FIELDS", "SDK_LOGGERS", "bind", "current", "fields", "install", "invocation_trace", "quiet_sdk_loggers"]

#: The loggers of the libraries the app runs on: the storage and identity SDKs, the exporter itself, msal, urllib3,
#: and the worker runtime's own (``azure.functions``). Their records below Warning are not exported: with the distro's
#: handler on the root logger, an idle worker would otherwise export the exporter's own INFO lines about its sends,
#: and a deletion about 140 INFO lines of HTTP requests. Their warnings and errors still are, with the fields above.
SDK_LOGGERS = ("azure", "msal", "urllib3")

_TRACEPARENT_RE = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")

#: The field names, as they appear as custom dimensions (``customDimensions.correlationId`` in KQL).
FIELDS = ("function", "invocationId", "correlationId", "customerTenantId", "hop", "requestedAt", "outcome", "sweepRun")

_current: ContextVar[Mapping[str, str]] = ContextVar("customer_deletion_log_fields", default=MappingProxyType({}))
_open: ContextVar[bool] = ContextVar("customer_deletion_log_fields_open", default=False)
_install_lock = threading.Lock()
_installed = False


def _text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


def _merged(values: Mapping[str, Any]) -> dict[str, str]:
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown log fields: {sorted(unknown)}")
    merged = dict(_current.get())
    merged.update({k: _text(v) for k, v in values.items() if v is not None})
    return merged


@contextmanager
def fields(**values: Any) -> Iterator[None]:
    """Set fields for the records made inside the block (``None`` values are left out); restored when it ends."""
    install()
    token, opened = _current.set(_merged(values)), _open.set(True)
    try:
        yield
    finally:
        _open.reset(opened)
        _current.reset(token)


def bind(**values: Any) -> None:
    """Add fields for the rest of the enclosing ``fields`` block (which restores the previous ones when it ends).

    Outside any block it does nothing: fields set there would never be taken back.
    """
    if _open.get():
        _current.set(_merged(values))


def current() -> Mapping[str, str]:
    return dict(_current.get())


def install() -> None:
    """Wrap the process's log record factory once, so every record gets the current fields as attributes.

    A field a record already has (set by ``extra=``) is kept as it is.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            for name, value in _current.get().items():
                if name not in record.__dict__:
                    setattr(record, name, value)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


def quiet_sdk_loggers() -> None:
    """Raise every SDK logger (``SDK_LOGGERS``) still at its default level (NOTSET) to Warning; a level set on
    purpose (to debug a call, say) is kept."""
    for name in SDK_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


@contextmanager
def invocation_trace(context: Any) -> Iterator[None]:
    """Make the host's trace (``context.trace_context``) current for the block, so every record the invocation
    writes is exported under the invocation's operation id.

    Microsoft's OpenTelemetry guidance for Python Functions does this with ``context.trace_context``. It matters on
    Python 3.13: the worker runtime attaches the trace on its event loop but runs a synchronous function in a thread
    pool that does not carry it over. The older worker re-attaches it; attaching it again there changes nothing. A
    missing or malformed ``traceparent``, or no OpenTelemetry, leaves the context as it is.
    """
    trace_context = getattr(context, "trace_context", None)
    parent = str(getattr(trace_context, "trace_parent", None) or getattr(trace_context, "Traceparent", None) or "")
    if not _TRACEPARENT_RE.fullmatch(parent):
        yield
        return
    try:
        from opentelemetry import context as otel_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:  # pragma: no cover - azure-monitor-opentelemetry brings it
        yield
        return
    state = str(getattr(trace_context, "trace_state", None) or "")
    carrier = {"traceparent": parent, **({"tracestate": state} if state else {})}
    token = otel_context.attach(TraceContextTextMapPropagator().extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)
