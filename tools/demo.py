"""`make demo`: delete one sandbox customer end to end, on this machine, and show it happening.

Starts Azurite, the Partner Center emulator (sample sandbox) and the local Functions host, drops a deletion request
for a customer of 2026 (a Reserved-Instance order that takes a while to cancel, a new-commerce subscription, and an
Azure plan with two Azure subscriptions under it), prints what the app does as it happens (the subscriptions cancelled
or suspended, the Azure subscriptions cancelled, the order cancelled, each poll, the DELETE, the outcome event), then
stops everything it started (also on Ctrl-C). The sweep is disabled for
the demo (``AzureWebJobs.sweep_customers.Disabled``, which the local host honours as the Functions host does): a timer
status kept in .local/demo from an earlier demo would otherwise start a past-due sweep at once.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
import uuid

from tools import devenv

#: "Woodgrove (a 2026 customer: new commerce, an Azure plan, a reservation)" in the sample sandbox
CUSTOMER = "a7b8c9d0-e1f2-4a3b-8c4d-5e6f7a8b9c0d"
STATE = devenv.ROOT / ".local" / "demo"


def say(t0: float, text: str) -> None:
    print(f"[{time.monotonic() - t0:6.1f}s] {text}", flush=True)


def describe(entry: dict, customer: str) -> str | None:
    path, method, status = entry["path"], entry["method"], entry["status"]
    if "/oauth2/" in path:
        return f"token requested from the emulated Entra ID -> {status}"
    if customer not in path:
        return None
    tail = path.split(customer, 1)[1] or "(customer)"
    if "/subscriptions" in tail:
        return _describe_subscription_call(tail, method, status, entry)
    if "/orders/" in tail:
        order = tail.rsplit("/", 1)[1]
        verb = {"GET": "read order", "PATCH": "cancel order"}.get(method, method)
        return f"{verb} {order[:10]}... -> HTTP {status}, status '{entry.get('orderStatus', '?')}'"
    if tail.startswith("/entitlements"):
        return f"list entitlements -> HTTP {status}"
    if method == "DELETE":
        return f"DELETE customer -> HTTP {status}" + ("  (tenant purged)" if status == 204 else "")
    return f"{method} customer -> HTTP {status}"


def _describe_subscription_call(tail: str, method: str, status: object, entry: dict) -> str:
    items = ", ".join(f"{i[:8]}... {s}" for i, s in entry.get("items") or [])
    if tail.endswith("/azureEntitlements"):
        return f"list the Azure subscriptions under the plan -> HTTP {status}: {items or 'none'}"
    if tail.endswith("/cancel"):
        return f"cancel Azure subscription {tail.split('/')[-2][:8]}... -> HTTP {status}"
    if tail.endswith("/subscriptions"):
        return f"list subscriptions -> HTTP {status}: {items or 'none'}"
    sid = tail.rsplit("/", 1)[1][:8]
    if method == "PATCH":
        verb = {"deleted": "cancel", "suspended": "suspend"}.get(entry.get("askedStatus", ""), "change")
        return f"{verb} subscription {sid}... (PATCH status '{entry.get('askedStatus')}') -> HTTP {status}"
    return f"read subscription {sid}... -> HTTP {status}, status '{entry.get('subscriptionStatus', '?')}'"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGINT, _interrupt)  # also when started in the background, where SIGINT is ignored
    signal.signal(signal.SIGTERM, _interrupt)
    STATE.mkdir(parents=True, exist_ok=True)
    children: list[devenv.Child] = []
    t0 = time.monotonic()
    try:
        say(t0, "starting Azurite (queues and tables) and the Partner Center emulator with the sample sandbox ...")
        azurite, port = devenv.start_azurite(STATE)
        children.append(azurite)
        pc = devenv.start_emulator(STATE)
        if pc.child:
            children.append(pc.child)
        say(t0, f"Azurite on 127.0.0.1:{port.queue} (queues) and :{port.table} (tables), emulator on {pc.url}")

        example = json.loads((devenv.ROOT / "local.settings.example.json").read_text())["Values"]
        settings = {
            **example,
            "AzureWebJobsStorage": devenv.azurite_connection_string(port),
            **pc.app_settings(),
            "POLL_INTERVAL_SECONDS": "2",
            "POLL_MAX_INTERVAL_SECONDS": "8",
            "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.500",
            "AzureWebJobs.sweep_customers.Disabled": "true",
        }  # the single deletion only; no past-due sweep at start
        queues = devenv.Queues(settings["AzureWebJobsStorage"])
        for name in (settings["DELETE_CUSTOMER_QUEUE"], settings["POLL_ORDERS_QUEUE"]):
            queues.ensure(name)  # trigger queues are created by whoever deploys
        host = devenv.start_host(STATE, settings)
        children.append(host)
        devenv.wait_for(lambda: "Host started" in host.log() or host.proc.poll() is not None, 60, what="the local host")
        if host.proc.poll() is not None:
            print(host.log(), file=sys.stderr)
            return 1
        say(
            t0,
            "local Functions host started (delete_customer, poll_orders, deletion_status; sweep_customers disabled for "
            "this demo)",
        )
        worker = re.search(r"Language worker: (.*)", host.log())
        say(t0, f"functions run by {worker.group(1) if worker else 'an unknown worker'}")

        state = pc.state()["customers"][CUSTOMER]
        say(
            t0,
            f"customer {CUSTOMER} '{state['companyName']}' has {len(state['orders'])} order(s): "
            + ", ".join(f"{oid[:10]}... {o['status']}" for oid, o in state["orders"].items())
            + f"; and {len(state['subscriptions'])} subscription(s): "
            + ", ".join(
                f"{sid[:8]}... {s['kind']} {s['status']}"
                + (f" with {len(s['azureEntitlements'])} Azure subscription(s)" if s["azureEntitlements"] else "")
                for sid, s in state["subscriptions"].items()
            ),
        )
        correlation = str(uuid.uuid4())
        request = {"customerTenantId": CUSTOMER, "correlationId": correlation}
        queues.send(settings["DELETE_CUSTOMER_QUEUE"], json.dumps(request))
        say(t0, f"dropped a deletion request on '{settings['DELETE_CUSTOMER_QUEUE']}': {json.dumps(request)}")

        outcomes = devenv.OutcomeReader(queues, settings["DELETION_OUTCOMES_QUEUE"])
        seen, hops = 0, 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for entry in pc.requests_log(seen):
                seen += 1
                text = describe(entry, CUSTOMER)
                if text:
                    say(t0, "  Partner Center: " + text)
            for line in host.log().splitlines():
                if correlation in line and f"poll hop {hops + 1}, stage" in line:
                    hops += 1
                    say(
                        t0,
                        f"poll_orders: hop {hops} ran (reads the orders, the ones last seen open first, up to "
                        "the first still open; when every order reads cancelled it lists the entitlements and the "
                        "subscriptions again, suspends the Azure plan once everything under it reads inactive, and "
                        "DELETEs in the hop that reads everything final)",
                    )
            if outcomes.poll():
                break
            time.sleep(0.3)
        if not outcomes.events:
            say(t0, "no outcome within 120 s; host log follows")
            print(host.log()[-4000:])
            return 1
        event = outcomes.events[0]
        say(t0, f"outcome event on '{settings['DELETION_OUTCOMES_QUEUE']}':")
        print(json.dumps(event, indent=2))
        gone = CUSTOMER not in pc.state()["customers"]
        say(t0, f"customer present in the sandbox afterwards: {'no' if gone else 'YES'}")
        url = f"{host.admin_url()}/api/deletions/{correlation}"
        status = devenv.http_get(url, key=host.function_key("deletion_status"))
        shown = status.json().get("requests", [{}])[0] if status.status_code == 200 else {}
        say(
            t0,
            f"status API: GET {url}?code=<key> -> {status.status_code}, outcome {shown.get('outcome')} "
            f"(the request ledger's row; the same event as above: {shown.get('eventId') == event['eventId']})",
        )
        return 0 if event["outcome"] == "deleted" and gone and shown.get("eventId") == event["eventId"] else 1
    except KeyboardInterrupt:
        say(t0, "interrupted")
        return 130
    finally:
        for child in reversed(children):
            child.stop()
        say(t0, "stopped everything the demo started (logs in .local/demo/)")


if __name__ == "__main__":
    sys.exit(main())
