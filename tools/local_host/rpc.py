"""The host's side of the Functions language-worker protocol, for Microsoft's Python worker runtime (dev only).

On Python 3.13 and newer, Azure runs a v1-model app through ``azure-functions-runtime-v1``: a proxy worker speaks
gRPC to the host and hands each ``StreamingMessage`` to the runtime's handlers (``worker_init_request``,
``functions_metadata_request``, ``function_load_request``, ``invocation_request``). The local host plays the host:
this module builds those messages from what the host indexed (``function.json``) and from the trigger (a queue
message, a timer tick), and reads the runtime's answers. ``runtime_worker.py`` plays the proxy worker.

The protobuf classes come from the runtime's own wheel, which ships them as a top-level ``tests.protos`` package.
Our ``tests/`` package shadows that name, so they are loaded from the wheel's files under a private package name,
without the package's ``__init__`` (which imports grpc).

Trigger data is sent as the host sends it [U: read from the worker's and the library's converters, not captured
from a host]: a queue message's body as ``string``, with trigger metadata ``Id`` and ``PopReceipt`` as strings, the
times as JSON strings, ``DequeueCount`` as a JSON number, ``QueueTrigger`` (the body) and ``sys``; a timer's
``TimerInfo`` as ``json``.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import sys
import types
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any

RUNTIME_DISTRIBUTION = "azure-functions-runtime-v1"
_ALIAS = "_local_host_function_rpc"
#: From this Python on, Azure's v1 worker is the runtime package (azure-deploy.md); below it, the classic worker.
RUNTIME_FROM = (3, 13)


def runtime_available() -> str | None:
    """The runtime's version when it is installed and this Python is one it runs on, else None."""
    if sys.version_info[:2] < RUNTIME_FROM:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(RUNTIME_DISTRIBUTION)
    except PackageNotFoundError:
        return None


@cache
def protos() -> types.ModuleType:
    """The protocol's message classes (``StreamingMessage``, ``TypedData``, ...), as one module, the way the proxy
    worker hands them to the runtime (``request.properties["protos"]``)."""
    from importlib.metadata import distribution

    root = distribution(RUNTIME_DISTRIBUTION).locate_file("tests/protos")
    if _ALIAS not in sys.modules:
        spec = importlib.machinery.ModuleSpec(_ALIAS, None, is_package=True)
        spec.submodule_search_locations = [str(root)]
        package = importlib.util.module_from_spec(spec)
        package.__path__ = [str(root)]
        sys.modules[_ALIAS] = package
    merged = types.ModuleType("function_rpc_protos")
    for part in ("shared.NullableTypes_pb2", "identity.ClaimsIdentityRpc_pb2", "FunctionRpc_pb2"):
        module = importlib.import_module(f"{_ALIAS}.{part}")
        for name in dir(module):
            if not name.startswith("_"):
                setattr(merged, name, getattr(module, name))
    return merged


_DATA_TYPES = ("string", "binary", "stream")


def binding_info(binding: Mapping[str, Any]) -> Any:
    """One ``function.json`` binding as a ``BindingInfo`` (type, direction, dataType)."""
    p = protos()
    direction_name = str(binding.get("direction", "in")).lower()
    direction = p.BindingInfo.Direction.Value(direction_name if direction_name in ("in", "out", "inout") else "in")
    data_type_name = str(binding.get("dataType", "")).lower()
    data_type = p.BindingInfo.DataType.Value(data_type_name if data_type_name in _DATA_TYPES else "undefined")
    return p.BindingInfo(type=str(binding.get("type", "")), direction=direction, data_type=data_type)


def message(request_id: str, **content: Any) -> Any:
    return protos().StreamingMessage(request_id=request_id, **content)


def worker_init(app_root: str, host_version: str = "4.1040.0") -> Any:
    p = protos()
    return message(
        str(uuid.uuid4()),
        worker_init_request=p.WorkerInitRequest(
            host_version=host_version, function_app_directory=app_root, capabilities={}, log_categories={}
        ),
    )


def functions_metadata(app_root: str) -> Any:
    return message(
        str(uuid.uuid4()), functions_metadata_request=protos().FunctionsMetadataRequest(function_app_directory=app_root)
    )


def function_load(function_id: str, entry: Mapping[str, Any]) -> Any:
    """A ``FunctionLoadRequest`` for one indexed function (``FunctionSpec.for_worker()`` plus its bindings)."""
    p = protos()
    directory = str(entry["directory"])
    metadata = p.RpcFunctionMetadata(
        name=entry["name"],
        directory=directory,
        script_file=str(_script_path(directory, entry["script_file"])),
        entry_point=entry["entry_point"],
        bindings={b["name"]: binding_info(b) for b in entry["bindings"]},
    )
    return message(
        str(uuid.uuid4()), function_load_request=p.FunctionLoadRequest(function_id=function_id, metadata=metadata)
    )


def _script_path(directory: str, script_file: str) -> Any:
    from pathlib import Path

    path = Path(script_file)
    return path if path.is_absolute() else Path(directory) / path


def _json(value: Any) -> Any:
    return protos().TypedData(json=json.dumps(value))


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment else None


def _sys_metadata(function: str) -> Any:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return _json({"MethodName": function, "UtcNow": now, "RandGuid": str(uuid.uuid4())})


def queue_trigger(fields: Mapping[str, Any], body: str, function: str) -> tuple[Any, dict[str, Any]]:
    """(the trigger's ``TypedData``, its trigger metadata) for a received queue message."""
    p = protos()
    metadata: dict[str, Any] = {"QueueTrigger": p.TypedData(string=body), "sys": _sys_metadata(function)}
    if fields.get("id") is not None:
        metadata["Id"] = p.TypedData(string=str(fields["id"]))
    if fields.get("pop_receipt") is not None:
        metadata["PopReceipt"] = p.TypedData(string=str(fields["pop_receipt"]))
    if fields.get("dequeue_count") is not None:
        metadata["DequeueCount"] = _json(int(fields["dequeue_count"]))
    for key, name in (
        ("inserted_on", "InsertionTime"),
        ("expires_on", "ExpirationTime"),
        ("next_visible_on", "NextVisibleTime"),
    ):
        text = _iso(fields.get(key))
        if text is not None:
            metadata[name] = _json(text)
    return p.TypedData(string=body), metadata


def http_trigger(data: Mapping[str, Any], function: str) -> tuple[Any, dict[str, Any]]:
    """(the trigger's ``TypedData``, its trigger metadata) for an HTTP request, as the host builds ``RpcHttp``: the
    full URL, lower-cased headers, the query without empty values, the route parameters that have a value, and the
    body only when there is one. The runtime asks for ``RpcHttpTriggerMetadataRemoved``, so the metadata is ``sys``."""
    p = protos()
    http = p.RpcHttp(
        method=str(data["method"]),
        url=str(data["url"]),
        headers={k: str(v) for k, v in dict(data["headers"]).items()},
        query={k: str(v) for k, v in dict(data["query"]).items()},
        params={k: str(v) for k, v in dict(data["params"]).items()},
    )
    if data.get("body"):
        http.body.CopyFrom(p.TypedData(bytes=bytes(data["body"])))
    return p.TypedData(http=http), {"sys": _sys_metadata(function)}


def timer_trigger(data: Mapping[str, Any], function: str) -> tuple[Any, dict[str, Any]]:
    return _json(dict(data)), {"sys": _sys_metadata(function)}


def invocation(
    invocation_id: str,
    function_id: str,
    binding: str,
    trigger: tuple[Any, dict[str, Any]],
    context: Mapping[str, Any],
) -> Any:
    """An ``InvocationRequest``: the trigger under its binding name, its metadata, and the trace and retry context."""
    p = protos()
    data, metadata = trigger
    request = p.InvocationRequest(
        invocation_id=invocation_id,
        function_id=function_id,
        input_data=[p.ParameterBinding(name=binding, data=data)],
        trigger_metadata=metadata,
        trace_context=p.RpcTraceContext(
            trace_parent=context["trace_parent"],
            trace_state=context.get("trace_state", ""),
            attributes=dict(context.get("attributes", {})),
        ),
        retry_context=p.RetryContext(
            retry_count=int(context.get("retry_count", 0)), max_retry_count=int(context.get("max_retry_count", 0))
        ),
    )
    return message(str(uuid.uuid4()), invocation_request=request)


def typed_value(data: Any) -> tuple[str, Any] | None:
    """A ``TypedData`` as ``(kind, value)``: the same shape the hand-written worker reports its outputs in."""
    kind = data.WhichOneof("data")
    if kind is None:
        return None
    if kind == "http":
        http = data.http
        body = typed_value(http.body) if http.HasField("body") else None
        return "http", {
            "status_code": http.status_code,
            "headers": dict(http.headers),
            "body": body[1] if body else b"",
        }
    value = getattr(data, kind)
    if kind in ("string", "json", "bytes", "int", "double"):
        return kind, value
    return kind, str(value)


def invocation_result(response: Any) -> tuple[str | None, dict[str, Any]]:
    """(error or None, outputs) from an ``InvocationResponse``; outputs = {"$return": ..., <out binding>: ...}."""
    p = protos()
    outputs: dict[str, Any] = {}
    if response.HasField("return_value"):
        outputs["$return"] = typed_value(response.return_value)
    for binding in response.output_data:
        outputs[binding.name] = typed_value(binding.data)
    if response.result.status == p.StatusResult.Success:
        return None, outputs
    exception = response.result.exception
    return (exception.message or "the invocation failed").strip(), outputs


def load_error(response: Any) -> str | None:
    p = protos()
    if response.result.status == p.StatusResult.Success:
        return None
    return (response.result.exception.message or "the function failed to load").strip()
