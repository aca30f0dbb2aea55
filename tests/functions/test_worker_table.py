"""The two workers side by side: the same small probe functions loaded and invoked by the local host's own worker
(``tools.local_host.worker``) and by Microsoft's runtime (``azure-functions-runtime-v1``, Python 3.13 and newer).

Each row is one probe: its ``function.json`` bindings, its Python, the trigger it gets, and what is expected. The
expectations are the runtime's behaviour, read from its code and checked here against it; the local worker must meet
the same ones. A probe writes what it was handed (``seen.json`` in its folder); the test compares that, the load
error, the invocation's failure and the outputs (``func.Out``, ``$return``, an HTTP ``$return``) across workers.

On 3.11 and 3.12 only the local worker's column runs (no runtime is published for them); ``make test`` runs the
table on 3.13 too (``test-other-python``, or ``.venv`` when 3.13 is the development default).
"""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tools.local_host import rpc
from tools.local_host.indexing import timer_data
from tools.local_host.worker import LOCAL, RUNTIME, WorkerProcess

RUNTIME_HERE = rpc.runtime_available() is not None
KINDS = [LOCAL, pytest.param(RUNTIME, marks=pytest.mark.skipif(not RUNTIME_HERE, reason="no runtime on this Python"))]

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CONTEXT = {
    "trace_parent": TRACEPARENT,
    "trace_state": "probe=1",
    "attributes": {"OperationName": "probe"},
    "retry_count": 0,
    "max_retry_count": 0,
}
QUEUE_IN = {"type": "queueTrigger", "direction": "in", "name": "msg", "queueName": "probe", "connection": "X"}

# What every probe can record about itself: the invocation's context, the trigger, sys.path's order.
RECORD = """
import json, sys, pathlib
import azure.functions as func

def record(**seen):
    pathlib.Path(__file__).with_name("seen.json").write_text(json.dumps(seen, sort_keys=True, default=str))

def app_root_after_site_packages():
    root = str(pathlib.Path(__file__).resolve().parent.parent)
    where = [i for i, p in enumerate(sys.path) if p and str(pathlib.Path(p).resolve()) == root]
    site = [i for i, p in enumerate(sys.path) if "site-packages" in p]
    return bool(where) and bool(site) and min(where) > max(site)
"""


@dataclass
class Probe:
    name: str
    bindings: list[dict]
    code: str
    trigger: str = "queue"
    load_fails: str | None = None  # a word the load error contains, for both workers
    fails: str | None = None  # a word the invocation's error contains
    seen: dict[str, Any] | None = None  # what the probe must have recorded
    outputs: dict[str, Any] = field(default_factory=dict)


PROBES = [
    Probe(
        "queue_message",
        [QUEUE_IN],
        """
        def main(msg: func.QueueMessage, context: func.Context) -> None:
            record(
                body=msg.get_body().decode(), id=msg.id, dequeue_count=msg.dequeue_count,
                pop_receipt=msg.pop_receipt, inserted=msg.insertion_time.isoformat(),
                invocation_id=context.invocation_id, function_name=context.function_name,
                trace_parent=context.trace_context.trace_parent, trace_state=context.trace_context.trace_state,
                retry=[context.retry_context.retry_count, context.retry_context.max_retry_count],
                app_root_last=app_root_after_site_packages(),
            )
        """,
        seen={
            "body": "hello",
            "id": "m-1",
            "dequeue_count": 2,
            "pop_receipt": "pr-1",
            "inserted": "2026-12-04T06:00:00+00:00",
            "invocation_id": "inv-queue_message",
            "function_name": "queue_message",
            "trace_parent": TRACEPARENT,
            "trace_state": "probe=1",
            "retry": [0, 0],
            "app_root_last": True,
        },
    ),
    Probe(
        "str_trigger",
        [QUEUE_IN],
        """
        def main(msg: str) -> None:
            record(type=type(msg).__name__, value=msg)
        """,
        seen={"type": "str", "value": "hello"},
    ),
    Probe(
        "no_annotations",
        [QUEUE_IN],
        """
        def main(msg, context):
            record(type=type(msg).__name__, body=msg.get_body().decode(), name=context.function_name)
        """,
        seen={"type": "QueueMessage", "body": "hello", "name": "no_annotations"},
    ),
    Probe(
        "returns_without_binding",
        [QUEUE_IN],
        """
        def main(msg: func.QueueMessage):
            return "a value nobody binds"
        """,
        fails="return",
    ),
    Probe(
        "raises",
        [QUEUE_IN],
        """
        def main(msg: func.QueueMessage) -> None:
            raise ValueError("probe refused the message")
        """,
        fails="probe refused the message",
    ),
    Probe(
        "dollar_return",
        [QUEUE_IN, {"type": "queue", "direction": "out", "name": "$return", "queueName": "o", "connection": "X"}],
        """
        def main(msg: func.QueueMessage) -> str:
            return "next: " + msg.get_body().decode()
        """,
        outputs={"$return": ("string", "next: hello")},
    ),
    Probe(
        "out_param",
        [QUEUE_IN, {"type": "queue", "direction": "out", "name": "outmsg", "queueName": "o", "connection": "X"}],
        """
        def main(msg: func.QueueMessage, outmsg: func.Out[str]) -> None:
            outmsg.set("forwarded")
        """,
        outputs={"outmsg": ("string", "forwarded")},
    ),
    Probe(
        "http_return",
        [QUEUE_IN, {"type": "http", "direction": "out", "name": "$return"}],
        """
        def main(msg: func.QueueMessage) -> func.HttpResponse:
            return func.HttpResponse('{"found": false}', status_code=404, mimetype="application/json")
        """,
        outputs={
            "$return": (
                "http",
                {"status_code": "404", "headers": {"content-type": "application/json"}, "body": b'{"found": false}'},
            )
        },
    ),
    Probe(
        "context_as_dict",
        [QUEUE_IN],
        """
        def main(msg: func.QueueMessage, context: dict) -> None:
            pass
        """,
        load_fails="context",
    ),
    Probe(
        "wrong_annotation",
        [QUEUE_IN],
        """
        def main(msg: int) -> None:
            pass
        """,
        load_fails="annotation",
    ),
    Probe(
        "name_mismatch",
        [QUEUE_IN],
        """
        def main(message: func.QueueMessage) -> None:
            pass
        """,
        load_fails="function.json",
    ),
    Probe(
        "out_on_trigger",
        [QUEUE_IN],
        """
        def main(msg: func.Out[str]) -> None:
            pass
        """,
        load_fails="Out",
    ),
    Probe(
        "out_without_out",
        [QUEUE_IN, {"type": "queue", "direction": "out", "name": "outmsg", "queueName": "o", "connection": "X"}],
        """
        def main(msg: func.QueueMessage, outmsg: str) -> None:
            pass
        """,
        load_fails="Out",
    ),
    Probe(
        "timer",
        [{"type": "timerTrigger", "direction": "in", "name": "timer", "schedule": "0 0 3 * * *"}],
        """
        def main(timer: func.TimerRequest, context: func.Context) -> None:
            record(past_due=timer.past_due, trace_parent=context.trace_context.trace_parent)
        """,
        trigger="timer",
        seen={"past_due": True, "trace_parent": TRACEPARENT},
    ),
]


def _write_app(root: Path) -> list[dict]:
    entries = []
    for probe in PROBES:
        folder = root / probe.name
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text(RECORD + textwrap.dedent(probe.code), encoding="utf-8")
        (folder / "function.json").write_text(json.dumps({"bindings": probe.bindings}), encoding="utf-8")
        trigger = probe.bindings[0]
        entries.append(
            {
                "bindings": probe.bindings,
                "name": probe.name,
                "directory": str(folder),
                "trigger": trigger["type"],
                "binding": trigger["name"],
                "script_file": "__init__.py",
                "entry_point": "main",
            }
        )
    return entries


def _data(probe: Probe) -> dict:
    if probe.trigger == "timer":
        return timer_data({"Last": "2026-12-03T03:00:00+00:00", "Next": "2026-12-04T03:00:00+00:00"}, True)
    inserted = datetime(2026, 12, 4, 6, 0, tzinfo=UTC)
    fields = {
        "id": "m-1",
        "dequeue_count": 2,
        "inserted_on": inserted,
        "expires_on": inserted + timedelta(days=7),
        "next_visible_on": inserted + timedelta(minutes=10),
        "pop_receipt": "pr-1",
    }
    return {"fields": fields, "body": "hello"}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Per worker kind: {probe: (load error, invocation error, seen, outputs)}, every probe run once."""
    from tools.local_host.runtime_worker import RuntimeWorkerProcess

    table: dict[str, dict[str, Any]] = {}
    for kind in (LOCAL, RUNTIME) if RUNTIME_HERE else (LOCAL,):
        root = tmp_path_factory.mktemp(f"probes-{kind}")
        entries = _write_app(root)
        worker: Any = RuntimeWorkerProcess(root, entries) if kind == RUNTIME else WorkerProcess(root, entries, 2)
        try:
            errors = worker.wait_loaded(120)
            rows = {}
            for probe in PROBES:
                load_error = errors.get(probe.name)
                error, outputs, seen = None, {}, None
                if load_error is None:
                    error, outputs = worker.invoke(
                        f"inv-{probe.name}", probe.name, probe.trigger, _data(probe), CONTEXT
                    ).result(timeout=60)
                    seen_file = root / probe.name / "seen.json"
                    seen = json.loads(seen_file.read_text()) if seen_file.exists() else None
                rows[probe.name] = (load_error, error, seen, outputs)
            table[kind] = rows
        finally:
            worker.kill()
    return table


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
def test_each_worker_meets_the_runtimes_rules(results, kind, probe):
    load_error, error, seen, outputs = results[kind][probe.name]
    if probe.load_fails:
        assert load_error is not None and probe.load_fails.lower() in load_error.lower(), load_error
        return
    assert load_error is None
    if probe.fails:
        assert error is not None and probe.fails.lower() in error.lower(), error
    else:
        assert error is None
    assert seen == probe.seen
    assert outputs == probe.outputs


@pytest.mark.skipif(not RUNTIME_HERE, reason="no runtime on this Python")
@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
def test_both_workers_agree(results, probe):
    local, runtime = results[LOCAL][probe.name], results[RUNTIME][probe.name]
    assert (local[0] is None) == (runtime[0] is None), (local[0], runtime[0])
    assert (local[1] is None) == (runtime[1] is None), (local[1], runtime[1])
    assert local[2:] == runtime[2:]


def test_the_runtime_is_there_wherever_it_is_published():
    """On 3.13 and newer the table's runtime column must run, not skip: requirements-dev.txt installs it there."""
    if sys.version_info[:2] >= rpc.RUNTIME_FROM:
        assert RUNTIME_HERE, "azure-functions-runtime-v1 is missing: pip install -r requirements-dev.txt"
    else:
        assert rpc.runtime_available() is None
