"""The Python language worker of the local host: a separate process that loads the functions and runs invocations
in a thread pool.

As in Azure, the worker owns loading (``__app__.<folder>`` imports, signature checks) and the trigger conversions
(``tools.local_host.indexing``); it never imports the host. A function timeout restarts the worker process: every
invocation running in it is lost and counts as failed. If the host process dies, the worker notices its pipe
closing and exits at once, with its invocations.

The pipe protocol (pickled tuples):

* worker -> host, once, first: ``("loaded", {function: error})`` — the functions that failed to load (empty if none);
* host -> worker: ``(invocation_id, function, kind, data)`` with ``kind`` ``"queue"`` (``data`` =
  ``{"fields": <message fields>, "body": <decoded text>}``) or ``"timer"`` (``data`` = the host's timer JSON,
  ``{"Schedule", "ScheduleStatus", "IsPastDue"}``);
* worker -> host, per invocation: ``("done", invocation_id, error)``, ``error`` None when it succeeded.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import traceback
import types
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger("local_host")

QUEUE, TIMER = "queue", "timer"


class WorkerDiedError(Exception):
    """The worker process ended (restarted after a function timeout, or crashed) while the invocation ran."""


def _worker_main(conn: Any, app_root: str, entries: list[dict], log_level: str, threads: int) -> None:
    logging.basicConfig(level=log_level, stream=sys.stdout, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("azure", "urllib3", "msal"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from tools.local_host.indexing import Context, load_entry_points, to_function_message, to_timer_request

    functions, errors = load_entry_points(Path(app_root), entries)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="worker")
    send_lock = threading.Lock()
    with send_lock:
        conn.send(("loaded", errors))

    def run(invocation_id: str, name: str, kind: str, data: dict) -> None:
        error = None
        try:
            fn = functions.get(name)
            if fn is None:
                raise RuntimeError(
                    f"function '{name}' is not loaded in this worker: {errors.get(name, 'unknown function')}"
                )
            if kind == QUEUE:
                value = to_function_message(types.SimpleNamespace(**data["fields"]), data["body"])
            elif kind == TIMER:
                value = to_timer_request(data)
            else:
                raise RuntimeError(f"unknown trigger kind {kind!r}")
            kwargs: dict[str, Any] = {fn.binding: value}
            if fn.wants_context:
                kwargs["context"] = Context(invocation_id, fn.name, fn.directory)
            fn.entry(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - any exception is a failed invocation
            error = f"{type(exc).__name__}: {exc}"
            logging.getLogger("local_host").debug("invocation %s failed:\n%s", invocation_id, traceback.format_exc())
        with send_lock:
            conn.send(("done", invocation_id, error))

    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            os._exit(3)  # the host is gone: so are we, with every invocation in flight (as when a host dies)
        pool.submit(run, *request)


class WorkerProcess:
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

    def invoke(self, invocation_id: str, name: str, kind: str, data: dict) -> Future:
        future: Future = Future()
        with self._lock:
            self._pending[invocation_id] = future
            try:
                self._conn.send((invocation_id, name, kind, data))
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
            _, invocation_id, error = message
            with self._lock:
                future = self._pending.pop(invocation_id, None)
            if future is not None:
                future.set_result(error)
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
