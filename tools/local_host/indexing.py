"""Function indexing and trigger conversion, shared by the local host and its language worker.

As in Azure, the host reads each ``function.json`` (``index_functions``: trigger, resolved ``%SETTING%`` values,
schedule) and the Python worker imports the code (``load_entry_points``: ``__app__.<folder>``, the entry point's
signature checked against the bindings) and turns the trigger data it receives into what the function gets
(``to_function_message``, ``to_timer_request``, through the ``azure.functions`` library's own converters). A
function that fails either step is disabled alone; the others run. The host process never imports app code.

This module must stay importable in the worker without side effects on the app's imports: it imports nothing from
the app's packages at module level (``shared.ncrontab`` is imported where the host parses a schedule only).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import json
import re
import sys
import threading
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

QUEUE_TRIGGER = "queueTrigger"
TIMER_TRIGGER = "timerTrigger"
HTTP_TRIGGER = "httpTrigger"
SUPPORTED_TRIGGERS = (QUEUE_TRIGGER, TIMER_TRIGGER, HTTP_TRIGGER)
AUTH_LEVELS = ("anonymous", "function", "admin")
HTTP_METHODS = ("get", "post", "put", "delete", "head", "patch", "options")
_ROUTE_SEGMENT_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\?)?\}|[A-Za-z0-9._~-]+")

_QUEUE_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]")
_TIMESPAN_LIKE_RE = re.compile(r"\s*(?:\d+\.)?\d{1,2}:\d{1,2}(?::\d{1,2}(?:\.\d+)?)?\s*")


class HostError(Exception):
    """The app cannot be indexed or the host is misconfigured (the message names what and where)."""


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
        name = value[start + 1 : end]
        if name not in env:
            raise HostError(f"'%{name}%' does not resolve to a value.")
        out.append(value[i:start])
        out.append(env[name])
        i = end + 1
    return "".join(out)


@dataclass(frozen=True)
class IdentityConnection:
    """An identity-based storage connection, as the host reads one (functions-queues.md section 5): the settings
    ``<name>__queueServiceUri`` (or ``__serviceUri``; for AzureWebJobsStorage also ``__accountName``), with
    ``__credential=managedidentity`` (+ ``__clientId``), or, for local development, ``__tenantId`` + ``__clientId`` +
    ``__clientSecret``. The secret is never shown."""

    name: str  # the setting prefix the host found, e.g. "AzureWebJobsStorage"
    queue_service_uri: str
    credential: str | None = None  # "managedidentity" or None
    client_id: str | None = None
    tenant_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        if self.credential == "managedidentity":
            return "managed identity" + (f" {self.client_id}" if self.client_id else " (system-assigned)")
        if self.tenant_id and self.client_id and self.client_secret:
            return f"client secret of app {self.client_id} in tenant {self.tenant_id}"
        if self.client_id:
            return f"managed identity {self.client_id}"
        return "DefaultAzureCredential"

    def describe(self) -> str:
        return f"identity-based, {self.queue_service_uri}, {self.kind}"


def _section(env: Mapping[str, str], prefix: str) -> dict[str, str]:
    """The ``<prefix>__<key>`` settings, keys lower-cased (configuration keys are case-insensitive in the host)."""
    head = prefix.lower() + "__"
    return {k[len(head) :].lower(): v.strip() for k, v in env.items() if k.lower().startswith(head) and v and v.strip()}


def resolve_connection(name: str | None, env: Mapping[str, str]) -> str | IdentityConnection:
    """The connection string of ``name``, or its identity-based settings (no connection string set)."""
    name = name or "AzureWebJobsStorage"
    for candidate in (f"AzureWebJobs{name}", name):
        if env.get(candidate):
            return env[candidate]
    for prefix in (f"AzureWebJobs{name}", name):
        section = _section(env, prefix)
        if not section:
            continue
        uri = section.get("queueserviceuri") or section.get("serviceuri")
        if not uri and prefix == "AzureWebJobsStorage" and section.get("accountname"):
            uri = f"https://{section['accountname']}.queue.core.windows.net"
        if not uri:
            raise HostError(f"connection '{prefix}' is identity-based but has no {prefix}__queueServiceUri")
        if not uri.lower().startswith("https://"):
            raise HostError(
                f"{prefix}__queueServiceUri must be an https URL (tokens are sent over HTTPS only): {uri!r}"
            )
        credential = section.get("credential", "").lower() or None
        if credential not in (None, "managedidentity"):
            raise HostError(f"{prefix}__credential must be 'managedidentity' or not set, not {section['credential']!r}")
        secret_parts = [section.get(k) for k in ("tenantid", "clientid", "clientsecret")]
        if (section.get("clientsecret") or section.get("tenantid")) and not all(secret_parts):
            raise HostError(
                f"connection '{prefix}': __tenantId, __clientId and __clientSecret go together (local development)"
            )
        return IdentityConnection(
            prefix,
            uri.rstrip("/"),
            credential,
            section.get("clientid"),
            section.get("tenantid"),
            section.get("clientsecret"),
        )
    shown = name if name.startswith("AzureWebJobs") else f"AzureWebJobs{name}"
    raise HostError(f"Storage account connection string '{shown}' does not exist")


# -- the host's side: function.json ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """An HTTP trigger's route template: literal segments (case-insensitive), ``{name}``, and a last ``{name?}``.
    The host's other template features (constraints, defaults, ``{*catchall}``) are refused at indexing."""

    template: str
    segments: tuple[tuple[str, str, bool], ...]  # (kind "literal"|"param", text or name, optional)

    @classmethod
    def parse(cls, template: str) -> Route:
        text = template.strip().strip("/")
        if not text:
            raise HostError("an httpTrigger route must not be empty")
        segments = []
        parts = text.split("/")
        for i, part in enumerate(parts):
            m = _ROUTE_SEGMENT_RE.fullmatch(part)
            if m is None:
                raise HostError(
                    f"the local host supports route segments that are literals, {{name}} or a last {{name?}}; "
                    f"not {part!r} in {template!r}"
                )
            if m.group(1):
                optional = bool(m.group(2))
                if optional and i != len(parts) - 1:
                    raise HostError(f"only the last segment of a route may be optional: {template!r}")
                segments.append(("param", m.group(1), optional))
            else:
                segments.append(("literal", part, False))
        return cls(text, tuple(segments))

    def match(self, path: str) -> dict[str, str] | None:
        """The route parameters of ``path`` (after the route prefix, no query), or ``None``. A missing optional
        parameter is absent, as the host sends only parameters that have a value."""
        parts = path.strip("/").split("/") if path.strip("/") else []
        params: dict[str, str] = {}
        for i, (kind, text, optional) in enumerate(self.segments):
            if i >= len(parts):
                return params if optional and i == len(self.segments) - 1 else None
            if kind == "literal":
                if parts[i].lower() != text.lower():
                    return None
            else:
                from urllib.parse import unquote

                params[text] = unquote(parts[i])
        return params if len(parts) == len(self.segments) else None


@dataclass(frozen=True)
class FunctionSpec:
    """One indexed function: what its function.json says, with settings resolved."""

    name: str
    directory: Path
    trigger: str  # "queueTrigger" or "timerTrigger"
    binding: str  # the trigger's parameter name
    script_file: str = "__init__.py"
    entry_point: str = "main"
    queue: str | None = None  # queueTrigger: resolved, lower-cased, validated
    connection: str | IdentityConnection | None = None  # queueTrigger: the connection string, or identity-based
    schedule_text: str | None = None  # timerTrigger: resolved NCRONTAB text
    schedule: Any = None  # timerTrigger: shared.ncrontab.Schedule (UTC)
    run_on_startup: bool = False
    use_monitor: bool = False
    #: function.json's bindings as written (the host sends them to the worker in the function's metadata)
    bindings: tuple[dict[str, Any], ...] = ()
    route: Route | None = None  # httpTrigger: the route template (default: the function's name)
    methods: tuple[str, ...] | None = None  # httpTrigger: lower case; None: every method
    auth_level: str = "function"  # httpTrigger: anonymous | function | admin

    def for_worker(self) -> dict[str, Any]:
        """What the worker needs to load the function (plain data: the worker must not unpickle app-side types)."""
        return {
            "bindings": [dict(b) for b in self.bindings]
            or [{"type": self.trigger, "direction": "in", "name": self.binding}],
            "name": self.name,
            "directory": str(self.directory),
            "trigger": self.trigger,
            "binding": self.binding,
            "script_file": self.script_file,
            "entry_point": self.entry_point,
        }


@dataclass
class IndexResult:
    functions: list[FunctionSpec]
    errors: dict[str, str]  # function -> why it failed indexing (it is disabled)
    disabled: list[str]  # disabled by setting or by function.json


def _flag(binding: dict, key: str, default: bool | None) -> bool | None:
    value = binding.get(key, default)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if value is None or isinstance(value, bool):
        return value
    raise HostError(f"the timerTrigger property '{key}' must be true or false, not {value!r}")


def read_function(function_json: Path, env: Mapping[str, str]) -> FunctionSpec:
    """Index one function folder like the host: one trigger binding, settings resolved, values validated."""
    name = function_json.parent.name
    try:
        spec_json = json.loads(function_json.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise HostError(f"function.json cannot be read: {exc}") from None
    if not isinstance(spec_json, dict):
        raise HostError("function.json is not a JSON object")
    bindings = spec_json.get("bindings") or []
    types = [b.get("type") if isinstance(b, dict) else None for b in bindings]
    http_return = types == [HTTP_TRIGGER, "http"] and bindings[1].get("direction") == "out"
    if not ((len(bindings) == 1 and types[0] in SUPPORTED_TRIGGERS and types[0] != HTTP_TRIGGER) or http_return):
        raise HostError(
            "the local host runs functions with exactly one queueTrigger or timerTrigger binding, or an httpTrigger "
            f"with one http output binding; found {types}"
        )
    trig = bindings[0]
    kind = trig["type"]
    if trig.get("direction") != "in":
        raise HostError(f"a {kind} binding must have direction 'in'")
    binding = trig.get("name")
    if not isinstance(binding, str) or not binding.isidentifier():
        raise HostError(f"the {kind} binding needs a 'name' that is a Python parameter name, not {binding!r}")
    common = {
        "name": name,
        "directory": function_json.parent,
        "trigger": kind,
        "binding": binding,
        "script_file": str(spec_json.get("scriptFile") or "__init__.py"),
        "entry_point": str(spec_json.get("entryPoint") or "main"),
        "bindings": tuple(dict(b) for b in bindings),
    }
    if kind == HTTP_TRIGGER:
        level = str(trig.get("authLevel") or "function").lower()
        if level not in AUTH_LEVELS:
            raise HostError(f"authLevel must be one of {', '.join(AUTH_LEVELS)}, not {trig.get('authLevel')!r}")
        methods = trig.get("methods")
        if methods is not None:
            if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
                raise HostError("an httpTrigger's 'methods' must be a list of HTTP methods")
            methods = tuple(m.lower() for m in methods)
            unknown = [m for m in methods if m not in HTTP_METHODS]
            if unknown:
                raise HostError(f"unknown HTTP method(s) {unknown} in 'methods'")
        route = Route.parse(str(trig.get("route") or name))
        return FunctionSpec(**common, route=route, methods=methods or None, auth_level=level)
    if kind == QUEUE_TRIGGER:
        if not isinstance(trig.get("queueName"), str):
            raise HostError("a queueTrigger binding needs a 'queueName'")
        queue = resolve_setting_tokens(trig["queueName"], env).lower()
        if not (3 <= len(queue) <= 63) or not _QUEUE_NAME_RE.fullmatch(queue):
            raise HostError(f"invalid queue name {queue!r}")
        return FunctionSpec(**common, queue=queue, connection=resolve_connection(trig.get("connection"), env))

    from shared.ncrontab import ScheduleError, parse  # the host's NCRONTAB reading (five or six fields, lenient)

    raw = trig.get("schedule")
    if not isinstance(raw, str) or not raw.strip():
        raise HostError("a timerTrigger binding needs a 'schedule'")
    text = resolve_setting_tokens(raw, env).strip()
    if _TIMESPAN_LIKE_RE.fullmatch(text):
        raise HostError(f"the schedule {text!r} is a TimeSpan; the local host supports NCRONTAB expressions only")
    try:
        schedule = parse(text, strict=False)
    except ScheduleError as exc:
        raise HostError(
            f"The schedule expression '{text}' was not recognized as a valid cron expression: {exc}"
        ) from None
    if schedule.next_after(datetime.now(UTC)) is None:
        raise HostError(f"the schedule '{text}' never occurs")
    use_monitor = _flag(trig, "useMonitor", None)
    if use_monitor is None:  # the host's default: monitor unless the schedule fires more than once a minute
        use_monitor = not schedule.more_than_once_a_minute
    return FunctionSpec(
        **common,
        schedule_text=text,
        schedule=schedule,
        run_on_startup=bool(_flag(trig, "runOnStartup", False)),
        use_monitor=bool(use_monitor),
    )


def index_functions(app_root: Path, env: Mapping[str, str], only: set[str] | None = None) -> IndexResult:
    """Every ``<folder>/function.json`` under the app root; a function that cannot be indexed is reported, not fatal."""
    result = IndexResult([], {}, [])
    for fj in sorted(app_root.glob("*/function.json")):
        name = fj.parent.name
        if only and name not in only:
            continue
        if env.get(f"AzureWebJobs.{name}.Disabled", "").strip().lower() == "true":
            result.disabled.append(name)
            continue
        try:
            disabled = json.loads(fj.read_text(encoding="utf-8-sig")).get("disabled") is True
        except (OSError, ValueError, AttributeError):
            disabled = False  # read_function reports it
        if disabled:
            result.disabled.append(name)
            continue
        try:
            result.functions.append(read_function(fj, env))
        except HostError as exc:
            result.errors[name] = str(exc)
    return result


# -- the worker's side: imports and signatures -----------------------------------------------------------------------


@dataclass
class LoadedFunction:
    name: str
    trigger: str
    binding: str
    entry: Callable[..., Any]
    wants_context: bool
    directory: str
    #: parameter -> (binding type used for conversion, annotated Python type or None), as the runtime records them
    inputs: dict[str, tuple[str, Any]] = field(default_factory=dict)
    outputs: dict[str, tuple[str, Any]] = field(default_factory=dict)
    #: ($return's binding type, return annotation) when function.json has a ``$return`` binding, else None
    returns: tuple[str, Any] | None = None


def install_app_package(app_root: Path) -> None:
    """The app root appended to ``sys.path`` and the ``__app__`` namespace package over it, as the proxy worker
    leaves them (the worker's own entries come first)."""
    root = str(app_root)
    if root not in sys.path:
        sys.path.append(root)
    if "__app__" not in sys.modules:
        spec = importlib.machinery.ModuleSpec("__app__", None, is_package=True)
        spec.submodule_search_locations = [root]
        sys.modules["__app__"] = importlib.util.module_from_spec(spec)


class GenericBinding:
    """A binding type the library has no converter for, or a ``str``/``bytes`` trigger: the raw value (the
    runtime's ``GenericBinding``)."""

    @staticmethod
    def check_input_type_annotation(pytype: type) -> bool:
        return issubclass(pytype, (str, bytes))

    @staticmethod
    def check_output_type_annotation(pytype: type) -> bool:
        return issubclass(pytype, (str, bytes, bytearray))

    @staticmethod
    def has_implicit_output() -> bool:
        return False


def converter(binding_type: str) -> Any:
    """The ``azure.functions`` converter for a binding type (the registry both workers use), or GenericBinding."""
    from azure.functions import get_binding_registry

    registry = get_binding_registry()
    found = registry.get(binding_type) if registry is not None and binding_type != "generic" else None
    return found or GenericBinding


def _implicit_output(binding_type: str) -> bool:
    return bool(getattr(converter(binding_type), "has_implicit_output", lambda: False)())


def _out_argument(annotation: Any) -> tuple[bool, Any]:
    """(is it ``func.Out[...]``, its argument) for a parameter's annotation."""
    origin = typing.get_origin(annotation)
    if isinstance(origin, type) and origin.__name__ == "Out":
        args = typing.get_args(annotation)
        if len(args) != 1:
            raise HostError(f"has invalid Out annotation {annotation!r}")
        return True, args[0]
    if isinstance(annotation, type) and annotation.__name__ == "Out":
        raise HostError(f"has invalid Out annotation {annotation!r}")
    return False, annotation


def _is_type(annotation: Any) -> bool:
    return isinstance(annotation, type) or typing.get_origin(annotation) is not None


def check_signature(name: str, func: Callable[..., Any], bindings: Sequence[Mapping[str, Any]]) -> LoadedFunction:
    """The runtime's load-time rules (azure_functions_runtime_v1/functions.py ``add_function``), by hand: the
    parameters against function.json's bindings, each annotation against its binding's converter, ``func.Out``
    for "out" bindings only, a ``context`` annotated ``Context`` if at all, and ``$return``."""
    params = dict(inspect.signature(func).parameters)
    try:
        annotations = typing.get_type_hints(func)
    except Exception as exc:  # noqa: BLE001 - an annotation that cannot be resolved fails the load, as in the runtime
        raise HostError(f"cannot load the {name} function: its annotations cannot be resolved: {exc}") from None
    bound: dict[str, Mapping[str, Any]] = {}
    returns_type: str | None = None
    for b in bindings:
        direction = str(b.get("direction", "in")).lower()
        if direction == "inout":
            raise HostError(f'cannot load the {name} function: "inout" bindings are not supported')
        if b.get("name") == "$return":
            if direction != "out":
                raise HostError(f'cannot load the {name} function: "$return" binding must have direction set to "out"')
            returns_type = str(b.get("type"))
        else:
            bound[str(b.get("name"))] = b
    wants_context = "context" in params and "context" not in bound
    if wants_context:
        params.pop("context")
        anno = annotations.get("context")
        if "context" in annotations and not (isinstance(anno, type) and anno.__name__ == "Context"):
            raise HostError(
                f'cannot load the {name} function: the "context" parameter is expected to be of type '
                f'azure.functions.Context, got "{anno!r}"'
            )
    if set(params) - set(bound):
        raise HostError(
            f"cannot load the {name} function: the following parameters are declared in Python but not in "
            f"function.json: {set(params) - set(bound)!r}"
        )
    if set(bound) - set(params):
        raise HostError(
            f"cannot load the {name} function: the following parameters are declared in function.json but not in "
            f"Python: {set(bound) - set(params)!r}"
        )
    inputs: dict[str, tuple[str, Any]] = {}
    outputs: dict[str, tuple[str, Any]] = {}
    for param in params:
        b = bound[param]
        btype = str(b.get("type"))
        has_anno = param in annotations
        anno = annotations.get(param)
        try:
            is_out, pytype = _out_argument(anno) if has_anno else (False, None)
        except HostError as exc:
            raise HostError(f"cannot load the {name} function: binding {param} {exc}") from None
        binding_out = str(b.get("direction", "in")).lower() == "out"
        if has_anno and not _is_type(pytype):
            raise HostError(
                f"cannot load the {name} function: binding {param} has invalid non-type annotation {anno!r}"
            )
        if binding_out and has_anno and not is_out:
            raise HostError(
                f'cannot load the {name} function: binding {param} is declared to have the "out" direction, but its '
                "annotation in Python is not a subclass of azure.functions.Out"
            )
        if not binding_out and is_out:
            raise HostError(
                f'cannot load the {name} function: binding {param} is declared to have the "in" direction in '
                "function.json, but its annotation is azure.functions.Out in Python"
            )
        use = "generic" if has_anno and pytype in (str, bytes) and not _implicit_output(btype) else btype
        if has_anno:
            check = (
                converter(use).check_output_type_annotation if is_out else converter(use).check_input_type_annotation
            )
            if not (isinstance(pytype, type) and check(pytype)):
                shown = getattr(pytype, "__name__", repr(pytype))
                raise HostError(
                    f'cannot load the {name} function: type of {param} binding in function.json "{btype}" does not '
                    f'match its Python annotation "{shown}"'
                )
        (outputs if binding_out else inputs)[param] = (use, pytype)
    returns = None
    if returns_type is not None:
        anno = annotations.get("return")
        if "return" in annotations:
            if not isinstance(anno, type):
                raise HostError(f"cannot load the {name} function: has invalid non-type return annotation {anno!r}")
            if not converter(returns_type).check_output_type_annotation(anno):
                raise HostError(
                    f'cannot load the {name} function: Python return annotation "{anno.__name__}" does not match '
                    f'binding type "{returns_type}"'
                )
        returns = (returns_type, anno)
    trigger = next((b for b in bindings if str(b.get("type", "")).endswith("Trigger")), bindings[0] if bindings else {})
    return LoadedFunction(
        name,
        str(trigger.get("type", "")),
        str(trigger.get("name", "")),
        func,
        wants_context,
        "",
        inputs,
        outputs,
        returns,
    )


def load_entry_point(entry: Mapping[str, Any]) -> LoadedFunction:
    """Import one function as ``__app__.<folder>`` and check its signature against the bindings (worker side)."""
    name, script = entry["name"], entry["script_file"]
    module_name = f"__app__.{name}" if script == "__init__.py" else f"__app__.{name}.{Path(script).stem}"
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:  # noqa: BLE001 - any import failure disables the function, as in the worker
        raise HostError(f"importing {module_name} failed: {type(exc).__name__}: {exc}") from None
    func = getattr(module, entry["entry_point"], None)
    if not callable(func):
        raise HostError(f"{module_name} has no function '{entry['entry_point']}' (the entryPoint)")
    bindings = entry.get("bindings") or [{"type": entry["trigger"], "direction": "in", "name": entry["binding"]}]
    loaded = check_signature(name, func, bindings)
    loaded.directory = entry["directory"]
    return loaded


def load_entry_points(
    app_root: Path, entries: Sequence[Mapping[str, str]]
) -> tuple[dict[str, LoadedFunction], dict[str, str]]:
    """Load every function the host indexed: (loaded by name, load errors by name)."""
    install_app_package(app_root)
    loaded, errors = {}, {}
    for entry in entries:
        try:
            loaded[entry["name"]] = load_entry_point(entry)
        except HostError as exc:
            errors[entry["name"]] = str(exc)
    return loaded, errors


@dataclass(frozen=True)
class TraceContext:
    """``context.trace_context``, as the runtime builds it from the host's ``RpcTraceContext`` (W3C trace context)."""

    trace_parent: str
    trace_state: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def Traceparent(self) -> str:  # noqa: N802 - the library's deprecated names, kept by the runtime
        return self.trace_parent

    @property
    def Tracestate(self) -> str:  # noqa: N802
        return self.trace_state

    @property
    def Attributes(self) -> dict[str, str]:  # noqa: N802
        return self.attributes


@dataclass(frozen=True)
class RetryContext:
    """``context.retry_context``: no retry policy is configured, so the host sends zeros."""

    retry_count: int = 0
    max_retry_count: int = 0
    rpc_exception: Any = None


@dataclass
class Context:
    """What the worker passes as ``context``: the runtime's ``Context`` fields, filled from what the host sends."""

    invocation_id: str
    function_name: str
    function_directory: str
    trace_context: TraceContext | None = None
    retry_context: RetryContext = field(default_factory=RetryContext)
    thread_local_storage: threading.local = field(default_factory=threading.local)


class Out:
    """``func.Out[T]`` as the runtime hands it to a function: ``set`` a value, the worker ``get``s it afterwards."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


def datum_value(datum: Any) -> tuple[str, Any] | None:
    """An encoded ``azure.functions.meta.Datum`` as ``(kind, value)``, the way the runtime puts it into
    ``TypedData`` (dict and list as JSON, bool as int, an HTTP response as status, headers and body)."""
    if datum is None or datum.type is None:
        return None
    kind, value = datum.type, datum.value
    if kind == "http":
        body = datum_value(value.get("body"))
        return "http", {
            "status_code": str(value["status_code"].value),
            "headers": {k: v.value for k, v in value.get("headers", {}).items()},
            "body": body[1] if body else b"",
        }
    if kind in ("dict", "list"):
        return "json", json.dumps(value)
    if kind == "bool":
        return "int", int(value)
    if kind in ("string", "bytes", "json", "int", "double"):
        return kind, value
    raise TypeError(f"unexpected Datum type: {kind!r}")


def encode_output(binding_type: str, value: Any, pytype: Any) -> tuple[str, Any] | None:
    """A returned or ``Out`` value through its binding's converter (``encode``), as the runtime does."""
    binding = converter(binding_type)
    if binding is GenericBinding:
        from azure.functions import meta

        if isinstance(value, str):
            return datum_value(meta.Datum(value, "string"))
        if isinstance(value, (bytes, bytearray)):
            return datum_value(meta.Datum(bytes(value), "bytes"))
        for kind, types_ in (("bool", bool), ("int", int), ("double", float), ("dict", dict), ("list", list)):
            if isinstance(value, types_):
                return datum_value(meta.Datum(value, kind))
        return None if value is None else datum_value(meta.Datum(value, None))
    try:
        return datum_value(binding.encode(value, expected_type=pytype))
    except NotImplementedError:
        raise TypeError(
            f'unable to encode outgoing TypedData: unsupported type "{binding}" '
            f'for Python type "{type(value).__name__}"'
        ) from None


# -- trigger data ----------------------------------------------------------------------------------------------------

QUEUE_MESSAGE_FIELDS = ("id", "dequeue_count", "inserted_on", "expires_on", "next_visible_on", "pop_receipt")


def queue_message_fields(message: Any) -> dict[str, Any]:
    """The parts of a received ``azure.storage.queue.QueueMessage`` the worker needs (plain, picklable)."""
    return {k: getattr(message, k, None) for k in QUEUE_MESSAGE_FIELDS}


def utc_iso(moment: datetime) -> str:
    """ISO 8601 in UTC with +00:00, as the host serialises times (trigger metadata, the timer's schedule status)."""
    return moment.astimezone(UTC).isoformat()


def to_function_message(message: Any, body: str) -> Any:
    """The ``azure.functions.QueueMessage`` the Python worker builds from a received message and its decoded body."""
    from azure.functions import meta
    from azure.functions.queue import QueueMessageInConverter

    def iso(moment: datetime | None) -> str | None:
        return utc_iso(moment) if moment else None

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


def timer_data(schedule_status: dict | None, past_due: bool) -> dict:
    """The JSON the host sends the worker for a timer invocation (its ``TimerInfo``)."""
    return {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": schedule_status, "IsPastDue": bool(past_due)}


def http_data(method: str, url: str, headers: Mapping[str, str], route_params: Mapping[str, str], body: bytes) -> dict:
    """What the host sends the worker for an HTTP invocation (as plain data): header names lower-cased, the query
    parsed from the URL with empty values left out, only the route parameters that have a value."""
    from urllib.parse import parse_qsl, urlsplit

    query = {k: v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True) if v}
    return {
        "method": method.upper(),
        "url": url,
        "headers": {k.lower(): v for k, v in headers.items()},
        "query": query,
        "params": {k: v for k, v in route_params.items() if v},
        "body": bytes(body),
    }


def to_http_request(data: dict) -> Any:
    """The ``azure.functions.HttpRequest`` the Python worker builds from the host's HTTP data."""
    from azure.functions import HttpRequest

    return HttpRequest(
        method=data["method"],
        url=data["url"],
        headers=dict(data["headers"]),
        params=dict(data["query"]),
        route_params=dict(data["params"]),
        body=data["body"],
    )


def to_timer_request(data: dict) -> Any:
    """The ``azure.functions.TimerRequest`` the Python worker builds from the host's timer JSON, by its converter."""
    from azure.functions import meta
    from azure.functions.timer import TimerRequestConverter

    return TimerRequestConverter.decode(meta.Datum(json.dumps(data), "json"), trigger_metadata={})
