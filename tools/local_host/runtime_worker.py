"""The proxy worker's part, locally: a process that hands the host's protocol messages to Microsoft's runtime.

In Azure, on Python 3.13 and newer, the proxy worker receives the host's gRPC stream and calls
``azure_functions_runtime_v1``'s handlers with each ``StreamingMessage`` (``request.request``) and the protobuf
module (``request.properties["protos"]``), on its asyncio event loop. It starts the runtime's thread pool first
(``PYTHON_THREADPOOL_THREAD_COUNT``, else ``ThreadPoolExecutor``'s default, ``min(32, cpus + 4)``) and appends the
app root to ``sys.path`` last. This process does the same over a pipe: serialized ``StreamingMessage`` bytes both
ways (``rpc.py`` builds and reads them on the host's side). The loader, the signature and annotation checks, the
conversions, ``Context``, ``func.Out``, ``$return`` and the OpenTelemetry set-up are the runtime's own code.

If the host goes away (its pipe closes), the process exits at once with every invocation in flight.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import types
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from tools.local_host import rpc

log = logging.getLogger("local_host")

_HANDLERS = {
    "worker_init_request": ("worker_init_request", "worker_init_response"),
    "functions_metadata_request": ("functions_metadata_request", "function_metadata_response"),
    "function_load_request": ("function_load_request", "function_load_response"),
    "invocation_request": ("invocation_request", "invocation_response"),
    "function_environment_reload_request": (
        "function_environment_reload_request",
        "function_environment_reload_response",
    ),
}


def app_root_last(app_root: str) -> None:
    """``sys.path`` as the proxy worker leaves it: the app root appended after the worker's own entries."""
    resolved = os.path.realpath(app_root)
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != resolved]
    sys.path.append(app_root)


def runtime_worker_main(conn: Any, app_root: str, log_level: str) -> None:
    logging.basicConfig(level=log_level, stream=sys.stdout, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    protos = rpc.protos()
    import azure_functions_runtime_v1 as runtime

    app_root_last(app_root)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    send_lock = threading.Lock()

    async def dispatch(data: bytes) -> None:
        request = protos.StreamingMessage.FromString(data)
        kind = request.WhichOneof("content")
        if kind not in _HANDLERS:
            log.error("runtime worker: no handler for %s", kind)
            return
        handler_name, response_field = _HANDLERS[kind]
        wrapped = types.SimpleNamespace(name=kind, request=request, properties={"host": "local_host", "protos": protos})
        if kind == "worker_init_request":
            runtime.start_threadpool_executor()  # before init, as the proxy worker does
        response = await getattr(runtime, handler_name)(wrapped)
        out = protos.StreamingMessage(request_id=request.request_id, **{response_field: response})
        with send_lock:
            conn.send_bytes(out.SerializeToString())

    def read() -> None:
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                os._exit(3)  # the host is gone: so are we, with every invocation in flight
            asyncio.run_coroutine_threadsafe(dispatch(data), loop)

    threading.Thread(target=read, name="host-stream", daemon=True).start()
    loop.run_forever()


class RuntimeWorkerProcess:
    """The host's end of a runtime worker: the same interface as ``worker.WorkerProcess`` (``loaded``,
    ``wait_loaded``, ``invoke``, ``kill``), speaking protobuf over the pipe."""

    kind = "runtime"

    def __init__(self, app_root: Path, entries: list[dict], threads: int | None = None):
        import multiprocessing

        from tools.local_host.worker import WorkerDiedError as Died

        self._died = Died
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        level = logging.getLevelName(logging.getLogger().level)
        self.proc = ctx.Process(
            target=runtime_worker_main, args=(child, str(app_root), level), name="python-worker", daemon=True
        )
        self.proc.start()
        child.close()
        self._app_root = str(app_root)
        self._entries = entries
        self._ids = {entry["name"]: entry.get("function_id") or _function_id(entry["name"]) for entry in entries}
        self._pending: dict[str, tuple[str, Future]] = {}  # request id -> (response kind, future)
        self._lock = threading.Lock()
        self.loaded: Future = Future()
        self._reader = threading.Thread(target=self._read, name="worker-reader", daemon=True)
        self._reader.start()
        threading.Thread(target=self._load, name="worker-load", daemon=True).start()

    # -- the stream ------------------------------------------------------------------------------------------------

    def _send(self, message: Any) -> Future:
        future: Future = Future()
        with self._lock:
            self._pending[message.request_id] = (message.WhichOneof("content"), future)
            try:
                self._conn.send_bytes(message.SerializeToString())
            except (OSError, ValueError):
                self._pending.pop(message.request_id, None)
                future.set_exception(self._died("the worker process is not running"))
        return future

    def _read(self) -> None:
        protos = rpc.protos()
        while True:
            try:
                data = self._conn.recv_bytes()
            except (EOFError, OSError):
                break
            response = protos.StreamingMessage.FromString(data)
            with self._lock:
                entry = self._pending.pop(response.request_id, None)
            if entry is not None:
                entry[1].set_result(getattr(response, response.WhichOneof("content")))
        with self._lock:
            pending, self._pending = self._pending, {}
        for _, future in pending.values():
            future.set_exception(self._died("the worker process ended while the invocation ran"))
        if not self.loaded.done():
            self.loaded.set_exception(
                self._died(f"the worker process exited while loading the functions (exit code {self.proc.exitcode})")
            )

    def _load(self) -> None:
        """Init, metadata, then one load per function, each answered before the next: as the host starts a worker."""
        try:
            init = self._send(rpc.worker_init(self._app_root)).result()
            if init.result.status != rpc.protos().StatusResult.Success:
                raise self._died(f"the worker refused WorkerInitRequest: {init.result.exception.message}")
            self._send(rpc.functions_metadata(self._app_root)).result()
            errors = {}
            for entry in self._entries:
                response = self._send(rpc.function_load(self._ids[entry["name"]], entry)).result()
                error = rpc.load_error(response)
                if error:
                    errors[entry["name"]] = error
        except BaseException as exc:  # noqa: BLE001 - reported through loaded
            if not self.loaded.done():
                self.loaded.set_exception(exc if isinstance(exc, self._died) else self._died(str(exc)))
            return
        if not self.loaded.done():
            self.loaded.set_result(errors)

    # -- the worker interface --------------------------------------------------------------------------------------

    def wait_loaded(self, timeout: float) -> dict[str, str]:
        return self.loaded.result(timeout=timeout)

    def invoke(self, invocation_id: str, name: str, kind: str, data: dict, context: dict | None = None) -> Future:
        """An invocation; the future's result is ``(error or None, outputs)``."""
        from tools.local_host.worker import HTTP, QUEUE, TIMER, default_context

        entry = next((e for e in self._entries if e["name"] == name), None)
        result: Future = Future()
        if entry is None:
            result.set_result((f"function '{name}' is not loaded in this worker", {}))
            return result
        if kind == QUEUE:
            trigger = rpc.queue_trigger(data["fields"], data["body"], name)
        elif kind == TIMER:
            trigger = rpc.timer_trigger(data, name)
        elif kind == HTTP:
            trigger = rpc.http_trigger(data, name)
        else:
            result.set_result((f"unknown trigger kind {kind!r}", {}))
            return result
        request = rpc.invocation(
            invocation_id, self._ids[name], entry["binding"], trigger, context or default_context(name)
        )

        def done(f: Future) -> None:
            if f.exception() is not None:
                result.set_exception(f.exception())
            else:
                result.set_result(rpc.invocation_result(f.result()))

        def send(loaded: Future) -> None:
            # As the host does: no invocation before the worker has answered every load (a restarted worker gets
            # the next message while it still loads; the runtime fails an invocation of a function not loaded yet).
            if loaded.exception() is not None:
                result.set_exception(loaded.exception())
                return
            self._send(request).add_done_callback(done)

        self.loaded.add_done_callback(send)
        return result

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(10)
        self._conn.close()


def _function_id(name: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"local_host/{name}"))
