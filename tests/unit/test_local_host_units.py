"""The local host's pure parts, without sockets or processes: function.json indexing, the timer's start decision and
status updates (the timer extension's TimerListener / ScheduleMonitor rules), the worker-side loading and
conversions, the singleton lock and the admin body."""

from __future__ import annotations

import json
import re
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest

from shared.ncrontab import parse
from tools.local_host.host import parse_admin_body
from tools.local_host.indexing import (
    HostError,
    index_functions,
    load_entry_points,
    read_function,
    timer_data,
    to_timer_request,
)
from tools.local_host.timers import (
    DEFAULT_TIME,
    PAST_DUE,
    RUN_ON_STARTUP,
    SCHEDULED,
    ScheduleStatus,
    SingletonLock,
    TimerListener,
    plan_startup,
    read_status,
    status_after_run,
    write_status,
)

HOURLY = parse("0 0 * * * *", strict=False)
NOW = datetime(2026, 3, 10, 12, 20, 30, tzinfo=UTC)


def at(hour, minute=0, second=0, day=10):
    return datetime(2026, 3, day, hour, minute, second, tzinfo=UTC)


# -- the start decision -----------------------------------------------------------------------------------------------


def test_first_start_stores_a_status_and_the_first_run_sees_the_unset_times():
    plan = plan_startup(HOURLY, None, NOW, use_monitor=True, run_on_startup=False)
    assert plan.action is None
    # LastUpdated = now: a restart can tell it missed 13:00
    assert plan.store == ScheduleStatus(DEFAULT_TIME, at(13), NOW)
    assert plan.status == ScheduleStatus(DEFAULT_TIME, at(13), DEFAULT_TIME)  # what the first invocation gets


def test_status_in_order_waits_for_next():
    stored = ScheduleStatus(at(12), at(13), at(12))
    plan = plan_startup(HOURLY, stored, NOW, use_monitor=True, run_on_startup=False)
    assert (plan.action, plan.store, plan.status) == (None, None, stored)


def test_missed_occurrence_is_past_due_once():
    stored = ScheduleStatus(at(9), at(10), at(9))  # the host was down at 10:00, 11:00 and 12:00
    plan = plan_startup(HOURLY, stored, NOW, use_monitor=True, run_on_startup=True)
    assert (plan.action, plan.store, plan.status) == (PAST_DUE, None, stored)  # past due wins over runOnStartup
    after = status_after_run(HOURLY, plan.status, NOW, PAST_DUE, NOW + timedelta(seconds=1))
    assert after == ScheduleStatus(NOW, at(13), NOW + timedelta(seconds=1))  # one run, then from now on


def test_never_ran_but_missed_its_first_occurrence_is_past_due():
    stored = ScheduleStatus(DEFAULT_TIME, at(11), at(10, 30))  # stored at first start (10:30), down at 11:00
    assert plan_startup(HOURLY, stored, NOW, use_monitor=True, run_on_startup=False).action == PAST_DUE


def test_schedule_change_recomputes_next_and_is_not_past_due():
    stored = ScheduleStatus(at(12), at(12, 30), at(12))  # written by a half-hourly schedule; now hourly
    plan = plan_startup(HOURLY, stored, NOW, use_monitor=True, run_on_startup=False)
    assert plan.action is None and plan.store == plan.status == ScheduleStatus(DEFAULT_TIME, at(13), at(12))
    stored = ScheduleStatus(at(9), at(9, 30), at(9))  # changed, and the new next occurrence (10:00) is already past
    plan = plan_startup(HOURLY, stored, NOW, use_monitor=True, run_on_startup=False)
    assert plan.action is None and plan.status == ScheduleStatus(DEFAULT_TIME, at(13), NOW)


def test_without_monitor_nothing_is_read_or_stored():
    stale = ScheduleStatus(at(9), at(10), at(9))
    plan = plan_startup(HOURLY, stale, NOW, use_monitor=False, run_on_startup=False)
    assert (plan.action, plan.store, plan.status.next) == (None, None, at(13))
    assert plan_startup(HOURLY, None, NOW, use_monitor=False, run_on_startup=True).action == RUN_ON_STARTUP


def test_scheduled_run_records_its_occurrence():
    status = ScheduleStatus(at(12), at(13), at(12))
    fired = at(13) + timedelta(milliseconds=3)
    assert status_after_run(HOURLY, status, fired, SCHEDULED, fired) == ScheduleStatus(at(13), at(14), fired)
    early = at(13) - timedelta(milliseconds=5)  # a timer firing a little early still counts as the 13:00 run
    assert status_after_run(HOURLY, status, early, SCHEDULED, early).next == at(14)
    assert status_after_run(HOURLY, status, NOW, RUN_ON_STARTUP, NOW) == ScheduleStatus(NOW, at(13), NOW)


def test_status_json_as_the_host_writes_and_reads_it():
    status = ScheduleStatus(DEFAULT_TIME, at(13), NOW)
    assert status.to_json() == {
        "Last": "0001-01-01T00:00:00+00:00",
        "Next": "2026-03-10T13:00:00+00:00",
        "LastUpdated": "2026-03-10T12:20:30+00:00",
    }
    assert ScheduleStatus.from_json(status.to_json()) == status
    read = ScheduleStatus.from_json(
        {
            "Last": "0001-01-01T00:00:00",
            "Next": "2026-03-10T13:00:00Z",
            "LastUpdated": "2026-03-10T13:20:30.1234567+01:00",
        }
    )
    assert read == ScheduleStatus(DEFAULT_TIME, at(13), NOW + timedelta(microseconds=123456))
    with pytest.raises(ValueError):
        ScheduleStatus.from_json({"Next": "tomorrow"})


def test_status_file_round_trip_and_a_corrupt_one_reads_as_missing(tmp_path):
    assert read_status(tmp_path, "t") is None
    status = ScheduleStatus(at(12), at(13), NOW)
    write_status(tmp_path, "t", status)
    assert read_status(tmp_path, "t") == status
    (tmp_path / "timers" / "t" / "status.json").write_text("{not json")
    assert read_status(tmp_path, "t") is None


# -- the listener on a fixed clock -------------------------------------------------------------------------------------


def test_listener_runs_past_due_with_the_stored_status_then_stores_the_new_one(tmp_path):
    spec = read_function(
        _function(
            tmp_path, "tick", {"type": "timerTrigger", "direction": "in", "name": "t", "schedule": "0 0 * * * *"}
        ),
        {},
    )
    stored = ScheduleStatus(at(9), at(10), at(9))
    write_status(tmp_path / "state", "tick", stored)
    stop, calls = threading.Event(), []

    def execute(fn, data, reason):
        calls.append((data, reason))
        stop.set()  # end the listener after this run
        return False  # a failure: the status moves on all the same

    TimerListener(spec, tmp_path / "state", execute, stop, clock=lambda: NOW).run()
    ((data, reason),) = calls
    assert data == {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": stored.to_json(), "IsPastDue": True}
    assert reason == "Timer fired at 2026-03-10T12:20:30+00:00"
    assert read_status(tmp_path / "state", "tick") == ScheduleStatus(NOW, at(13), NOW)


def test_singleton_lock_is_exclusive_until_released(tmp_path):
    first, second = SingletonLock(tmp_path, "t"), SingletonLock(tmp_path, "t")
    assert first.try_acquire() and first.try_acquire()
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()


# -- indexing ----------------------------------------------------------------------------------------------------------


def _function(root, name, binding, **extra):
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "function.json").write_text(json.dumps({"bindings": [binding] if binding else [], **extra}))
    return root / name / "function.json"


def _timer(schedule, **extra):
    return {"type": "timerTrigger", "direction": "in", "name": "timer", "schedule": schedule, **extra}


def test_timer_binding_resolves_settings_and_defaults_use_monitor_by_frequency(tmp_path):
    # five fields: seconds 0
    spec = read_function(_function(tmp_path, "a", _timer("%SCHED%")), {"SCHED": "*/5 * * * *"})
    assert (spec.trigger, spec.binding, spec.schedule_text, spec.use_monitor, spec.run_on_startup) == (
        "timerTrigger",
        "timer",
        "*/5 * * * *",
        True,
        False,
    )
    assert spec.schedule.next_after(at(12, 1)) == at(12, 5)
    assert read_function(_function(tmp_path, "b", _timer("*/2 * * * * *")), {}).use_monitor is False
    explicit = read_function(
        _function(tmp_path, "c", _timer("*/2 * * * * *", useMonitor=True, runOnStartup="true")), {}
    )
    assert explicit.use_monitor is True and explicit.run_on_startup is True


def test_queue_binding(tmp_path):
    fj = _function(
        tmp_path, "q", {"type": "queueTrigger", "direction": "in", "name": "msg", "queueName": "%Q%"}, entryPoint="run"
    )
    spec = read_function(fj, {"Q": "Jobs-1", "AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert (spec.queue, spec.connection, spec.entry_point) == ("jobs-1", "UseDevelopmentStorage=true", "run")
    assert spec.for_worker() == {
        "bindings": [{"type": "queueTrigger", "direction": "in", "name": "msg", "queueName": "%Q%"}],
        "name": "q",
        "directory": str(tmp_path / "q"),
        "trigger": "queueTrigger",
        "binding": "msg",
        "script_file": "__init__.py",
        "entry_point": "run",
    }


@pytest.mark.parametrize(
    "binding, env, message",
    [
        (_timer("%MISSING%"), {}, "'%MISSING%' does not resolve to a value."),
        (_timer("0 0 25 * * *"), {}, "was not recognized as a valid cron expression"),
        (_timer("00:05:00"), {}, "is a TimeSpan"),
        (_timer("0 0 0 30 2 *"), {}, "never occurs"),
        (_timer("0 * * * * *", useMonitor="yes"), {}, "must be true or false"),
        (
            {"type": "httpTrigger", "direction": "in", "name": "req"},
            {},
            "exactly one queueTrigger or timerTrigger binding",
        ),
        (None, {}, "exactly one"),
        ({"type": "queueTrigger", "direction": "out", "name": "m", "queueName": "abc"}, {}, "direction 'in'"),
        (
            {"type": "queueTrigger", "direction": "in", "name": "m", "queueName": "a--b"},
            {"AzureWebJobsStorage": "x"},
            "invalid queue name",
        ),
        (
            {"type": "queueTrigger", "direction": "in", "name": "m", "queueName": "abc"},
            {},
            "'AzureWebJobsStorage' does not exist",
        ),
    ],
)
def test_indexing_errors(tmp_path, binding, env, message):
    with pytest.raises(HostError, match=message.replace("(", r"\(").replace("*", r"\*")):
        read_function(_function(tmp_path, "f", binding), env)


# -- identity-based storage connections (storage credential parts) ----------------------------------------------------

TENANT, APP = "11111111-2222-3333-4444-555555555555", "66666666-7777-8888-9999-000000000000"
QUEUE_URI = "https://127.0.0.1:10001/devstoreaccount1"


def test_identity_based_connection_is_read_as_the_host_does():
    from tools.local_host.indexing import IdentityConnection, resolve_connection

    env = {
        "AzureWebJobsStorage__queueServiceUri": QUEUE_URI + "/",
        "azurewebjobsstorage__TENANTID": TENANT,
        "AzureWebJobsStorage__clientId": APP,
        "AzureWebJobsStorage__clientSecret": "s3cret",
    }
    conn = resolve_connection(None, env)
    assert conn == IdentityConnection("AzureWebJobsStorage", QUEUE_URI, None, APP, TENANT, "s3cret")
    assert "s3cret" not in repr(conn) and "s3cret" not in conn.describe() and APP in conn.describe()
    assert (
        resolve_connection(None, {**env, "AzureWebJobsStorage": "UseDevelopmentStorage=true"})
        == "UseDevelopmentStorage=true"
    )
    by_account = resolve_connection(None, {"AzureWebJobsStorage__accountName": "acct"})
    assert isinstance(by_account, IdentityConnection)
    assert by_account.queue_service_uri == "https://acct.queue.core.windows.net"
    custom = resolve_connection("Orders", {"Orders__serviceUri": QUEUE_URI, "Orders__credential": "ManagedIdentity"})
    assert isinstance(custom, IdentityConnection)
    assert (custom.name, custom.credential, custom.kind) == (
        "Orders",
        "managedidentity",
        "managed identity (system-assigned)",
    )


@pytest.mark.parametrize(
    "env, message",
    [
        ({"AzureWebJobsStorage__clientId": APP}, "has no AzureWebJobsStorage__queueServiceUri"),
        ({"AzureWebJobsStorage__queueServiceUri": "http://127.0.0.1:10001/devstoreaccount1"}, "must be an https URL"),
        (
            {"AzureWebJobsStorage__queueServiceUri": QUEUE_URI, "AzureWebJobsStorage__credential": "secret"},
            "'managedidentity' or not set",
        ),
        ({"AzureWebJobsStorage__queueServiceUri": QUEUE_URI, "AzureWebJobsStorage__clientSecret": "s"}, "go together"),
    ],
)
def test_identity_based_connection_problems(env, message):
    from tools.local_host.indexing import resolve_connection

    with pytest.raises(HostError, match=message):
        resolve_connection(None, env)


def test_host_storage_credential_precedence():
    from azure.identity import ClientSecretCredential, DefaultAzureCredential, ManagedIdentityCredential

    from tools.local_host.host import storage_credential
    from tools.local_host.indexing import IdentityConnection

    secret = IdentityConnection("AzureWebJobsStorage", QUEUE_URI, None, APP, TENANT, "s3cret")
    cred = storage_credential(secret, {"AZURE_AUTHORITY_HOST": "https://127.0.0.1:9443/"})
    # emulated authority: no discovery
    assert isinstance(cred, ClientSecretCredential) and cred._instance_discovery is False
    assert storage_credential(secret, {})._instance_discovery is None  # the public cloud
    managed = IdentityConnection("AzureWebJobsStorage", QUEUE_URI, "managedidentity", APP)
    assert isinstance(storage_credential(managed, {}), ManagedIdentityCredential)
    assert isinstance(
        storage_credential(IdentityConnection("AzureWebJobsStorage", QUEUE_URI, None, APP), {}),
        ManagedIdentityCredential,
    )
    assert isinstance(
        storage_credential(IdentityConnection("AzureWebJobsStorage", QUEUE_URI), {}), DefaultAzureCredential
    )


def test_an_index_error_disables_only_that_function(tmp_path):
    _function(tmp_path, "bad", _timer("%MISSING%"))
    _function(tmp_path, "good", _timer("0 * * * * *"))
    _function(tmp_path, "off", _timer("0 * * * * *"))
    result = index_functions(tmp_path, {"AzureWebJobs.off.Disabled": "True"})
    assert [f.name for f in result.functions] == ["good"]
    assert result.errors == {"bad": "'%MISSING%' does not resolve to a value."} and result.disabled == ["off"]


# -- the worker's side -------------------------------------------------------------------------------------------------


@pytest.fixture
def app_package(tmp_path):
    """A fresh ``__app__`` over tmp_path for this test, removed afterwards (it is process-wide)."""
    saved = {k: v for k, v in sys.modules.items() if k == "__app__" or k.startswith("__app__.")}
    for k in saved:
        del sys.modules[k]
    yield tmp_path
    for k in [k for k in sys.modules if k == "__app__" or k.startswith("__app__.")]:
        del sys.modules[k]
    sys.modules.update(saved)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def test_worker_loading_reports_each_function_that_cannot_load(app_package):
    root = app_package
    sources = {
        "ok": "def main(timer, context):\n    return timer\n",
        "wrong": "def main(msg):\n    pass\n",
        "broken": "raise ImportError('no such thing')\n",
        "noentry": "def other(timer):\n    pass\n",
    }
    entries = []
    for name, source in sources.items():
        spec = read_function(_function(root, name, _timer("0 * * * * *")), {})
        (root / name / "__init__.py").write_text(source)
        entries.append(spec.for_worker())
    loaded, errors = load_entry_points(root, entries)
    assert list(loaded) == ["ok"] and loaded["ok"].wants_context and loaded["ok"].binding == "timer"
    assert "declared in Python but not in function.json: {'msg'}" in errors["wrong"]
    assert "ImportError: no such thing" in errors["broken"]
    assert "has no function 'main'" in errors["noentry"]


def test_timer_request_through_the_library_converter():
    first = to_timer_request(timer_data(None, past_due=False))
    # A null ScheduleStatus reads as {} in recent azure-functions and as
    # None in 1.20 (the lowest allowed): the app takes both.
    assert first.past_due is False and first.schedule_status in ({}, None) and first.schedule == {"AdjustForDST": True}
    status = ScheduleStatus(at(12), at(13), NOW).to_json()
    later = to_timer_request(timer_data(status, past_due=True))
    assert later.past_due is True and later.schedule_status == status


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b'{"input": ""}', ""),
        (b'{"input": "x", "other": 1}', "x"),
        ('\ufeff{"input": "é"}'.encode(), "é"),
        (b"", None),
        (b"not json", None),
        (b'{"input": 5}', None),
        (b'["input"]', None),
        (b"\xff", None),
    ],
)
def test_admin_body(raw, expected):
    assert parse_admin_body(raw) == expected


# -- the worker's choice, its thread pool and the context it sends ---------------------------------------------------


def test_thread_count_is_the_runtimes():
    from concurrent.futures import ThreadPoolExecutor

    from tools.local_host.worker import thread_count

    default = ThreadPoolExecutor()._max_workers  # what the runtime's pool gets without the setting
    assert thread_count({}) == default
    assert thread_count({"PYTHON_THREADPOOL_THREAD_COUNT": "3"}) == 3
    for invalid in ("0", "-2", "many", " "):
        assert thread_count({"PYTHON_THREADPOOL_THREAD_COUNT": invalid}) == default


def test_choose_names_the_worker_for_each_python():
    from tools.local_host import rpc
    from tools.local_host.worker import LOCAL, RUNTIME, choose

    kind, said = choose((3, 11))
    assert kind == LOCAL and "3.11" in said and "no current Microsoft worker" in said
    kind, said = choose((3, 13))
    if rpc.runtime_available():
        assert kind == RUNTIME and "azure-functions-runtime-v1" in said
    else:
        assert kind == LOCAL and "not installed" in said


def test_default_context_is_a_fresh_sampled_traceparent():
    from shared.telemetry import _TRACEPARENT_RE
    from tools.local_host.worker import default_context

    one, two = default_context("poll_orders"), default_context("poll_orders")
    assert _TRACEPARENT_RE.fullmatch(one["trace_parent"]) and one["trace_parent"].endswith("-01")
    assert one["trace_parent"] != two["trace_parent"]
    assert one["attributes"] == {"OperationName": "poll_orders"}
    assert (one["retry_count"], one["max_retry_count"]) == (0, 0)


# -- HTTP triggers -----------------------------------------------------------------------------------------------------


def _http_function(tmp_path, name, **trigger):
    folder = tmp_path / name
    folder.mkdir()
    bindings = [
        {"type": "httpTrigger", "direction": "in", "name": "req", **trigger},
        {"type": "http", "direction": "out", "name": "$return"},
    ]
    (folder / "function.json").write_text(json.dumps({"bindings": bindings}))
    return folder / "function.json"


def test_an_http_trigger_is_indexed_with_its_route_methods_and_auth_level(tmp_path):
    spec = read_function(
        _http_function(tmp_path, "status", route="deletions/{id?}", methods=["GET"], authLevel="function"), {}
    )
    assert (spec.trigger, spec.methods, spec.auth_level) == ("httpTrigger", ("get",), "function")
    assert spec.route is not None and spec.route.template == "deletions/{id?}"
    default = read_function(_http_function(tmp_path, "Plain"), {})
    assert default.route is not None and default.route.template == "Plain" and default.methods is None
    assert default.auth_level == "function"


@pytest.mark.parametrize(
    "trigger, message",
    [
        ({"route": "a/{id?}/b"}, "only the last segment"),
        ({"route": "a/{id:int}"}, "literals, {name} or a last {name?}"),
        ({"route": "a/{*rest}"}, "literals"),
        ({"route": "/"}, "must not be empty"),
        ({"methods": ["fetch"]}, "unknown HTTP method"),
        ({"methods": "get"}, "must be a list"),
        ({"authLevel": "system"}, "authLevel must be one of"),
    ],
)
def test_http_trigger_features_the_local_host_does_not_have_fail_indexing(tmp_path, trigger, message):
    with pytest.raises(HostError, match=re.escape(message)):
        read_function(_http_function(tmp_path, "f", **trigger), {})


@pytest.mark.parametrize(
    "template, path, params",
    [
        ("deletions/{id?}", "deletions/abc", {"id": "abc"}),
        ("deletions/{id?}", "DELETIONS/abc/", {"id": "abc"}),
        ("deletions/{id?}", "deletions", {}),
        ("deletions/{id?}", "deletions/a/b", None),
        ("deletions/{id?}", "other", None),
        ("deletions/{id}", "deletions", None),
        ("a/{x}/b/{y}", "a/1/b/%7B2%7D", {"x": "1", "y": "{2}"}),
    ],
)
def test_route_matching(template, path, params):
    from tools.local_host.indexing import Route

    assert Route.parse(template).match(path) == params


def test_function_keys_the_header_wins_and_a_default_is_written_once(tmp_path):
    from tools.local_host.host import FunctionKeys

    spec = read_function(_http_function(tmp_path, "status", authLevel="function"), {})
    keys = FunctionKeys(tmp_path / "keys")
    path = keys.ensure(spec)
    assert path is not None and keys.ensure(spec) == path and len(path.read_text()) >= 40
    key = path.read_text()
    url = "http://127.0.0.1/api/status"
    assert keys.authorised(spec, {}, f"{url}?code={key}")
    assert keys.authorised(spec, {"X-Functions-Key": key}, f"{url}?code=wrong")
    assert not keys.authorised(spec, {"x-functions-key": "wrong"}, f"{url}?code={key}")  # the header wins
    assert not keys.authorised(spec, {}, url)
    (tmp_path / "keys" / "host.master").write_text("master-key")
    assert keys.authorised(spec, {}, f"{url}?code=master-key")
    admin = read_function(_http_function(tmp_path, "admin_only", authLevel="admin"), {})
    assert keys.ensure(admin) is None and not keys.authorised(admin, {}, f"{url}?code={key}")
    assert keys.authorised(admin, {"x-functions-key": "master-key"}, url)
    anonymous = read_function(_http_function(tmp_path, "open", authLevel="anonymous"), {})
    assert keys.authorised(anonymous, {}, url)
