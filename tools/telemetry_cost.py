"""What the app exports to Application Insights, and so what its telemetry costs (dev only, Python 3.13 and newer).

    .venv/bin/python -m tools.telemetry_cost [--idle-seconds 120]

Runs the local host on Microsoft's worker runtime with ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true`` (the
runtime configures the Azure Monitor distro, as in Azure) against Azurite, the emulator's sample sandbox and a
loopback ingestion endpoint (``tools.ingestion``), and counts the envelopes and their bytes:

* the worker's start-up;
* an idle stretch (no message), given per hour;
* one deletion of the demo's customer (new commerce, an Azure plan, a reservation), request to outcome;
* one sweep in ``report`` mode over the sample sandbox.

Bytes are the envelopes' uncompressed JSON, which is what Application Insights meters as ingested data. It prints
a table per phase and kind (log records ``MessageData``, dependency calls ``RemoteDependencyData``, metrics
``MetricData``) and the monthly figures of the cost model in docs/performance.md. Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import Counter
from typing import Any

from tools import devenv, ingestion
from tools.coldstart import EXPORTER_OFFLINE
from tools.demo import CUSTOMER
from tools.local_host import rpc

STATE = devenv.ROOT / ".local" / "telemetry-cost"


def tally(envelopes: list[ingestion.Envelope]) -> dict[str, tuple[int, int]]:
    """kind -> (envelopes, bytes)."""
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for e in envelopes:
        counts[e.kind] += 1
        sizes[e.kind] += e.size
    return {k: (counts[k], sizes[k]) for k in sorted(counts)}


def show(phase: str, envelopes: list[ingestion.Envelope]) -> dict[str, tuple[int, int]]:
    figures = tally(envelopes)
    total = sum(n for n, _ in figures.values()), sum(b for _, b in figures.values())
    print(f"{phase}: {total[0]} envelopes, {total[1]:,} bytes")
    for kind, (n, b) in figures.items():
        print(f"    {kind:<22} {n:>5}  {b:>9,} bytes")
    return figures


def _noise(envelopes: list[ingestion.Envelope]) -> str:
    """What an operator does not need: SDK records below Warning, and log records under no operation."""
    logs = [e for e in envelopes if e.kind == "MessageData"]
    low = sum(1 for e in logs if e.from_sdk and e.below_warning)
    untraced = sum(1 for e in logs if e.operation_id.strip("0") == "")
    return f"    SDK records below Warning: {low}; log records without an operation id: {untraced}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle-seconds", type=float, default=120.0)
    args = parser.parse_args(argv)
    if rpc.runtime_available() is None:
        print(
            "tools.telemetry_cost needs Microsoft's worker runtime, which runs on Python 3.13 and newer "
            "(pip install -r requirements-dev.txt there); this is Python " + ".".join(map(str, sys.version_info[:2])),
            file=sys.stderr,
        )
        return 2
    STATE.mkdir(parents=True, exist_ok=True)
    sink = ingestion.start()
    children: list[devenv.Child] = []
    try:
        azurite, port = devenv.start_azurite(STATE)
        children.append(azurite)
        pc = devenv.start_emulator(STATE)
        if pc.child:
            children.append(pc.child)
        example = json.loads((devenv.ROOT / "local.settings.example.json").read_text())["Values"]
        settings = {
            **example,
            "AzureWebJobsStorage": devenv.azurite_connection_string(port),
            **pc.app_settings(),
            "POLL_INTERVAL_SECONDS": "2",
            "POLL_MAX_INTERVAL_SECONDS": "8",
            "SWEEP_SCHEDULE": "0 0 3 1 1 *",  # run by hand below, never by the clock
            "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true",
            "APPLICATIONINSIGHTS_CONNECTION_STRING": sink.connection_string,
            **EXPORTER_OFFLINE,
        }
        queues = devenv.Queues(settings["AzureWebJobsStorage"])
        for name in (settings["DELETE_CUSTOMER_QUEUE"], settings["POLL_ORDERS_QUEUE"]):
            queues.ensure(name)
        started = time.monotonic()
        host = devenv.start_host(STATE, settings)
        children.append(host)
        devenv.wait_for(lambda: "Host started" in host.log() or host.proc.poll() is not None, 90, what="the host")
        if host.proc.poll() is not None or "Microsoft's worker runtime" not in host.log():
            print(host.log()[-4000:], file=sys.stderr)
            return 1
        sink.settle(quiet=8)
        results: dict[str, Any] = {"start-up": show("worker start-up", sink.since(started))}

        idle_from = time.monotonic()
        time.sleep(args.idle_seconds)
        idle = sink.since(idle_from)
        hours = (time.monotonic() - idle_from) / 3600
        figures = show(f"idle, {args.idle_seconds:.0f} s", idle)
        results["idle hour"] = {k: (round(n / hours), round(b / hours)) for k, (n, b) in figures.items()}
        print("    per hour: " + ", ".join(f"{k} {n} ({b:,} bytes)" for k, (n, b) in results["idle hour"].items()))

        deletion_from = time.monotonic()
        correlation = str(uuid.uuid4())
        queues.send(
            settings["DELETE_CUSTOMER_QUEUE"], json.dumps({"customerTenantId": CUSTOMER, "correlationId": correlation})
        )
        outcomes = devenv.OutcomeReader(queues, settings["DELETION_OUTCOMES_QUEUE"])
        (event,) = outcomes.wait(1, 180)
        sink.settle(quiet=8)
        deletion = [e for e in sink.since(deletion_from) if e.kind != "MetricData"]
        results["deletion"] = show(f"one deletion ({event['outcome']})", deletion)
        print(_noise(deletion))

        sweep_from = time.monotonic()
        customers = len(pc.state()["customers"])
        url = host.admin_url()
        assert url, "the host gave no admin endpoint"
        devenv.invoke_admin(url, "sweep_customers")
        devenv.wait_for(lambda: "Executed 'Functions.sweep_customers'" in host.log(), 120, what="the sweep")
        sink.settle(quiet=8)
        sweep = [e for e in sink.since(sweep_from) if e.kind != "MetricData"]
        results["sweep"] = show(f"one sweep, report mode, {customers} customers", sweep)
        print(_noise(sweep))
        print(json.dumps({"customers_in_sweep": customers, **results}))
        return 0
    finally:
        for child in reversed(children):
            child.stop()
        sink.stop()


if __name__ == "__main__":
    sys.exit(main())
