"""End-to-end fixtures: the local Functions host as a process, with unique queues per test."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tools import devenv
from tools.local_host.host import decode_base64_strict

FAST_HOST = {
    "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.300",
    "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:01",
}


@dataclass
class World:
    settings: dict
    queues: devenv.Queues
    pc: devenv.Emulator
    log_dir: Path
    hosts: list = field(default_factory=list)

    @property
    def request_queue(self) -> str:
        return self.settings["DELETE_CUSTOMER_QUEUE"]

    @property
    def poll_queue(self) -> str:
        return self.settings["POLL_ORDERS_QUEUE"]

    def start(self, lease_seconds: int = 600, **overrides: str) -> devenv.Child:
        self.settings.update(overrides)
        self.queues.ensure(self.request_queue)
        self.queues.ensure(self.poll_queue)
        host = devenv.start_host(
            self.log_dir, self.settings, name=f"host{len(self.hosts)}", lease_seconds=lease_seconds
        )
        self.hosts.append(host)
        devenv.wait_for(lambda: "Host started" in host.log() or host.proc.poll() is not None, 30, what="the local host")
        assert host.proc.poll() is None, host.log()
        return host

    def request(self, body: dict | str | bytes) -> str:
        data = json.dumps(body) if isinstance(body, dict) else body
        return self.queues.send(self.request_queue, data)

    def outcomes(self, count: int, timeout: float = 60) -> list[dict]:
        reader = getattr(self, "_reader", None) or devenv.OutcomeReader(
            self.queues, self.settings["DELETION_OUTCOMES_QUEUE"]
        )
        self._reader = reader
        try:
            return reader.wait(count, timeout)
        except TimeoutError:
            raise AssertionError(
                f"only {reader.events} arrived; host log:\n" + "\n".join(h.log()[-6000:] for h in self.hosts)
            ) from None

    def poison(self, queue: str | None = None) -> list[bytes]:
        return [decode_base64_strict(t) for t in self.queues.peek_raw((queue or self.request_queue) + "-poison")]

    def api_calls(self, customer_id: str) -> list[dict]:
        return [r for r in self.pc.requests_log() if customer_id in r["path"]]


@pytest.fixture
def world(azurite, pc, queues, tmp_path):
    # Short work and read times keep the wait before the final check short (settle = work + call + 5 s).
    settings = {
        "AzureWebJobsStorage": azurite,
        **devenv.unique_queues("e"),
        **pc.app_settings(),
        "POLL_INTERVAL_SECONDS": "1",
        "POLL_MAX_INTERVAL_SECONDS": "2",
        "POLL_TIMEOUT_SECONDS": "60",
        "PARTNER_CENTER_RETRY_BUDGET_SECONDS": "3",
        "INVOCATION_WORK_SECONDS": "4",
        "PARTNER_CENTER_TIMEOUT_SECONDS": "3",
        **FAST_HOST,
        "AzureWebJobs.sweep_customers.Disabled": "true",
    }  # the sweep has tests of its own
    w = World(settings, queues, pc, tmp_path)
    yield w
    for host in w.hosts:
        host.stop()
