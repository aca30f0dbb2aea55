"""The Python language workers of the local host: a separate process that loads the functions and runs invocations
in a thread pool.

Two workers, chosen by the Python at hand (``choose``):

* ``runtime``: on Python 3.13 and newer, Microsoft's own worker runtime, ``azure-functions-runtime-v1`` (a
  development dependency), driven over the host's protocol (``rpc.py``, ``runtime_worker.py``). This is what Azure
  runs for a v1-model app on 3.13.
* ``local``: on 3.11 and 3.12, where no current worker is published, this module's hand-written worker. It matches
  the runtime where the app could notice: the load-time annotation checks (``indexing.check_signature``), the
  return-value rule (a value returned without a ``$return`` binding fails the invocation), ``func.Out`` and
  ``$return`` through the binding's converter, ``trace_context`` and ``retry_context`` filled from what the host
  sends, one thread pool of ``PYTHON_THREADPOOL_THREAD_COUNT`` threads (default ``min(32, cpus + 4)``, as
  ``ThreadPoolExecutor``'s), and the app root appended to ``sys.path`` after the worker's own entries.

Either way the worker owns loading and the trigger conversions and never imports the host. A function timeout
restarts the worker process: every invocation running in it is lost and counts as failed. If the host process dies,
the worker notices its pipe closing and exits at once, with its invocations.

The local worker's pipe protocol (pickled tuples):

* worker -> host, once, first: ``("loaded", {function: error})`` (the functions that failed to load; empty if none);
* host -> worker: ``(invocation_id, function, kind, data, context)`` with ``kind`` ``"queue"`` (``data`` =
  ``{"fields": <message fields>, "body": <decoded text>}``) or ``"timer"`` (``data`` = the host's timer JSON,
  ``{"Schedule", "ScheduleStatus", "IsPastDue"}``), and ``context`` the trace and retry context (``default_context``);
* worker -> host, per invocation: ``("done", invocation_id, error, outputs)``: ``error`` None when it succeeded,
  ``outputs`` ``{"$return" or an out binding: (kind, value)}`` (``rpc.typed_value``'s shape).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import sys
import threading
import traceback
import types
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger("local_host")

QUEUE, TIMER, HTTP = "queue", "timer", "http"
LOCAL, RUNTIME = "local", "runtime"


class WorkerDiedError(Exception):
    """The worker process ended (restarted after a function timeout, or crashed) while the invocation ran."""


def default_context(function: str) -> dict[str, Any]:
    """The trace and retry context the host sends with an invocation: a new W3C ``traceparent`` (the host starts an
    activity per invocation, sampled), no trace state, the function's name as the operation's, and zero retries (no
    retry policy is configured). [U: the attributes are the ones the runtime's tests show, not captured from a host.]"""
    return {
        "trace_parent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01",
        "trace_state": "",
        "attributes": {"OperationName": function},
        "retry_count": 0,
        "max_retry_count": 0,
    }


def thread_count(env: Mapping[str, str]) -> int:
    """The worker's thread pool size: ``PYTHON_THREADPOOL_THREAD_COUNT`` if it is a positive integer, else
    ``ThreadPoolExecutor``'s default, ``min(32, cpus + 4)``, as the runtime starts it."""
    raw = (env.get("PYTHON_THREADPOOL_THREAD_COUNT") or "").strip()
    if raw.isdigit() and int(raw) >= 1:
        return int(raw)
    return min(32, (os.cpu_count() or 1) + 4)


def choose(python: tuple[int, int] | None = None) -> tuple[str, str]:
    """(worker kind, what the start-up line says about it) for this Python."""
    from tools.local_host import rpc

    version = rpc.runtime_available() if python is None or python >= rpc.RUNTIME_FROM else None
    here = ".".join(map(str, python or sys.version_info[:2]))
    if version:
        return RUNTIME, f"Microsoft's worker runtime azure-functions-runtime-v1 {version} (Python {here})"
    if (python or sys.version_info[:2]) >= rpc.RUNTIME_FROM:
        return LOCAL, (
            f"the local host's own worker (Python {here}: azure-functions-runtime-v1 is not installed; "
            "pip install -r requirements-dev.txt)"
        )
    return LOCAL, f"the local host's own worker (Python {here}: no current Microsoft worker is published for it)"


def _run_function(fn: Any, kind: str, data: dict, context: dict, invocation_id: str) -> dict[str, Any]:
    """One invocation by the local worker's rules: the trigger converted (or raw for a str/bytes annotation),
    ``context`` and ``Out`` parameters, the return-value rule, the outputs encoded. Raises on failure."""
    from tools.local_host.indexing import (
        Context,
        Out,
        RetryContext,
        TraceContext,
        encode_output,
        to_function_message,
        to_http_request,
        to_timer_request,
    )

    use, _ = fn.inputs.get(fn.binding, (fn.trigger, None))
    if kind == QUEUE:
        raw: Any = data["body"]
        value = raw if use == "generic" else to_function_message(types.SimpleNamespace(**data["fields"]), raw)
    elif kind == TIMER:
        import json

        value = json.dumps(data) if use == "generic" else to_timer_request(data)
    elif kind == HTTP:
        value = to_http_request(data)
    else:
        raise RuntimeError(f"unknown trigger kind {kind!r}")
    kwargs: dict[str, Any] = {fn.binding: value}
    if fn.wants_context:
        kwargs["context"] = Context(
            invocation_id,
            fn.name,
            fn.directory,
            TraceContext(context["trace_parent"], context.get("trace_state", ""), dict(context.get("attributes", {}))),
            RetryContext(int(context.get("retry_count", 0)), int(context.get("max_retry_count", 0))),
        )
    outs = {name: Out() for name in fn.outputs}
    kwargs.update(outs)
    result = fn.entry(**kwargs)
    if result is not None and fn.returns is None:
        raise RuntimeError(f"function {fn.name!r} without a $return binding returned a non-None value")
    outputs: dict[str, Any] = {}
    for name, (binding_type, pytype) in fn.outputs.items():
        if outs[name].get() is not None:
            outputs[name] = encode_output(binding_type, outs[name].get(), pytype)
    if fn.returns is not None:
        outputs["$return"] = encode_output(fn.returns[0], result, fn.returns[1])
    return outputs


def _worker_main(conn: Any, app_root: str, entries: list[dict], log_level: str, threads: int) -> None:
    logging.basicConfig(level=log_level, stream=sys.stdout, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    from tools.local_host.indexing import load_entry_points
    from tools.local_host.runtime_worker import app_root_last

    app_root_last(app_root)  # the worker's own entries first, as the proxy worker leaves sys.path
    functions, errors = load_entry_points(Path(app_root), entries)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="worker")
    send_lock = threading.Lock()
    with send_lock:
        conn.send(("loaded", errors))

    def run(invocation_id: str, name: str, kind: str, data: dict, context: dict) -> None:
        error, outputs = None, {}
        try:
            fn = functions.get(name)
            if fn is None:
                raise RuntimeError(
                    f"function '{name}' is not loaded in this worker: {errors.get(name, 'unknown function')}"
                )
            outputs = _run_function(fn, kind, data, context, invocation_id)
        except BaseException as exc:  # noqa: BLE001 - any exception is a failed invocation
            error = f"{type(exc).__name__}: {exc}"
            logging.getLogger("local_host").debug("invocation %s failed:\n%s", invocation_id, traceback.format_exc())
        with send_lock:
            conn.send(("done", invocation_id, error, outputs))

    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            os._exit(3)  # the host is gone: so are we, with every invocation in flight (as when a host dies)
        pool.submit(run, *request)


class WorkerProcess:
    """The host's end of the local worker."""

    kind = LOCAL

    def __init__(self, app_root: Path, entries: list[dict], threads: int):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        level = logging.getLevelName(logging.getLogger().level)
        self.proc = ctx.Process(
            target=_worker_main, args=(child, str(app_root), entries, level, threads), name="python-worker", daemon=True
        )
        self.proc.start()
        child.close()
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()
        self.loaded: Future = Future()  # -> {function: load error}
        self._reader = threading.Thread(target=self._read, name="worker-reader", daemon=True)
        self._reader.start()

    def wait_loaded(self, timeout: float) -> dict[str, str]:
        """The functions that failed to load in the worker (raises WorkerDiedError if it ended before reporting)."""
        return self.loaded.result(timeout=timeout)

    def invoke(self, invocation_id: str, name: str, kind: str, data: dict, context: dict | None = None) -> Future:
        """An invocation; the future's result is ``(error or None, outputs)``."""
        future: Future = Future()
        with self._lock:
            self._pending[invocation_id] = future
            try:
                self._conn.send((invocation_id, name, kind, data, context or default_context(name)))
            except (OSError, ValueError):
                self._pending.pop(invocation_id, None)
                future.set_exception(WorkerDiedError("the worker process is not running"))
        return future

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "loaded":
                self.loaded.set_result(message[1])
                continue
            _, invocation_id, error, outputs = message
            with self._lock:
                future = self._pending.pop(invocation_id, None)
            if future is not None:
                future.set_result((error, outputs))
        if not self.loaded.done():
            self.loaded.set_exception(
                WorkerDiedError(
                    f"the worker process exited while loading the functions (exit code {self.proc.exitcode})"
                )
            )
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(WorkerDiedError("the worker process ended while the invocation ran"))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(10)
        self._conn.close()


def start_worker(kind: str, app_root: Path, entries: list[dict], threads: int) -> Any:
    """A worker process of ``kind`` (``choose``), loading ``entries``."""
    if kind == RUNTIME:
        from tools.local_host.runtime_worker import RuntimeWorkerProcess

        return RuntimeWorkerProcess(app_root, entries)
    return WorkerProcess(app_root, entries, threads)
