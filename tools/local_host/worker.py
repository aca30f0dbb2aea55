"""The Python language worker of the local host: a separate process that runs invocations in a thread pool.

As in Azure, a function timeout restarts the worker process: every invocation running in it is lost and counts as
failed. If the host process dies, the worker notices its pipe closing and exits at once, with its invocations.
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


class WorkerDied(Exception):
    """The worker process ended (restarted after a function timeout, or crashed) while the invocation ran."""


def _worker_main(conn: Any, app_root: str, names: list[str], log_level: str, threads: int) -> None:
    logging.basicConfig(level=log_level, stream=sys.stdout, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("azure", "urllib3", "msal"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from tools.local_host.host import Context, load_functions, to_function_message

    functions = {fn.name: fn for fn in load_functions(Path(app_root), os.environ, set(names))}
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="worker")
    send_lock = threading.Lock()

    def run(invocation_id: str, name: str, fields: dict, body: str) -> None:
        fn = functions[name]
        error = None
        try:
            msg = to_function_message(types.SimpleNamespace(**fields), body)
            kwargs: dict[str, Any] = {fn.binding: msg}
            if fn.wants_context:
                kwargs["context"] = Context(invocation_id, fn.name, str(fn.directory))
            fn.entry(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - any exception is a failed invocation
            error = f"{type(exc).__name__}: {exc}"
            logging.getLogger("local_host").debug("invocation %s failed:\n%s", invocation_id, traceback.format_exc())
        with send_lock:
            conn.send((invocation_id, error))

    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            os._exit(3)  # the host is gone: so are we, with every invocation in flight (as when a host dies)
        pool.submit(run, *request)


class WorkerProcess:
    def __init__(self, app_root: Path, names: list[str], threads: int):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        level = logging.getLevelName(logging.getLogger().level)
        self.proc = ctx.Process(target=_worker_main, args=(child, str(app_root), names, level, threads), name="python-worker", daemon=True)
        self.proc.start()
        child.close()
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="worker-reader", daemon=True)
        self._reader.start()

    def invoke(self, invocation_id: str, name: str, message: Any, body: str) -> Future:
        fields = {k: getattr(message, k) for k in ("id", "dequeue_count", "inserted_on", "expires_on", "next_visible_on", "pop_receipt")}
        future: Future = Future()
        with self._lock:
            self._pending[invocation_id] = future
            try:
                self._conn.send((invocation_id, name, fields, body))
            except (OSError, ValueError):
                self._pending.pop(invocation_id, None)
                future.set_exception(WorkerDied("the worker process is not running"))
        return future

    def _read(self) -> None:
        while True:
            try:
                invocation_id, error = self._conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                future = self._pending.pop(invocation_id, None)
            if future is not None:
                future.set_result(error)
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(WorkerDied("the worker process ended while the invocation ran"))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(10)
        self._conn.close()
