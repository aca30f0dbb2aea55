"""`make reliability`: many deletions under faults, throttling and real host kills; prints a table.

Runs deletion requests for many sandbox customers (default 200, 1-10 orders each) through the local Functions host,
Azurite and the Partner Center emulator while the emulator throttles at the documented rate limit and injects 5xx,
dropped connections, responses slower than the client timeout and token-endpoint failures, and while the host is
killed (SIGKILL) and restarted at random moments. Then it checks, from the emulator's state and request log, the
outcome events and the poison queue, that nothing was lost, nothing was deleted twice and no DELETE went out while
an order was open. Exit status 1 if any of those happened. Not part of `make test`.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

from shared.ids import derived_correlation_id
from tools import devenv
from tools.local_host.host import decode_base64_strict

STATE = devenv.ROOT / ".local" / "reliability"


def build_customers(rng: random.Random, count: int, min_orders: int, max_orders: int) -> list[dict]:
    customers = []
    for _ in range(count):
        orders = []
        for _ in range(rng.randint(min_orders, max_orders)):
            orders.append({"id": uuid.uuid4().hex + "A", "cancelAfterReads": rng.choice([0, 0, 1, 2, 3]),
                           "cancelAfterSeconds": rng.choice([0, 0, 0, 1, 2]), "status": "cancelled" if rng.random() < 0.05 else "completed"})
        customers.append({"id": str(uuid.uuid4()), "orders": orders})
    return customers


class Killer(threading.Thread):
    """Kills the host process at random moments and starts a new one: a real SIGKILL, no cleanup."""

    def __init__(self, rng: random.Random, start_host, low: float, high: float):
        super().__init__(daemon=True)
        self.rng, self.start_host, self.low, self.high = rng, start_host, low, high
        self.stop_event = threading.Event()
        self.kills = 0
        self.host = start_host()

    def run(self) -> None:
        while not self.stop_event.wait(self.rng.uniform(self.low, self.high)):
            self.host.kill()
            self.kills += 1
            time.sleep(0.5)
            self.host = self.start_host()

    def finish(self) -> None:
        self.stop_event.set()
        self.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.reliability", description=__doc__.split("\n")[0])
    p.add_argument("--customers", type=int, default=200)
    p.add_argument("--min-orders", type=int, default=1)
    p.add_argument("--max-orders", type=int, default=10)
    p.add_argument("--fault-share", type=float, default=0.10, help="share of API calls answered 5xx (another half of it: dropped)")
    p.add_argument("--slow-share", type=float, default=0.02, help="share of API calls slower than the client read timeout")
    p.add_argument("--token-fault-share", type=float, default=0.10)
    p.add_argument("--rate-limit", type=int, default=500, help="requests per window per partner tenant (documented: 500/min)")
    p.add_argument("--window", type=float, default=60)
    p.add_argument("--kill-every", default="20-45", help="seconds between host kills, as LOW-HIGH (0 disables)")
    p.add_argument("--duplicates", type=float, default=0.05, help="share of customers whose request is sent twice")
    p.add_argument("--malformed", type=int, default=6)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    low, high = (float(x) for x in args.kill_every.split("-")) if args.kill_every != "0" else (0.0, 0.0)

    STATE.mkdir(parents=True, exist_ok=True)
    for old in STATE.glob("host*.log"):
        old.unlink()
    children: list[devenv.Child] = []
    started = time.monotonic()
    try:
        azurite, port = devenv.start_azurite(STATE)
        children.append(azurite)
        pc = devenv.start_emulator(STATE)
        children.append(pc.child)
        customers = build_customers(rng, args.customers, args.min_orders, args.max_orders)
        protected = {"id": str(uuid.uuid4()), "orders": [{"id": uuid.uuid4().hex + "P"}]}
        pc.add_customers(customers + [protected])
        pc.knobs(rateLimitPerWindow=args.rate_limit, rateLimitWindowSeconds=args.window, randomSeed=args.seed)
        pc.faults([
            {"kind": "status", "status": 503, "path": "^/v1/", "share": args.fault_share / 2},
            {"kind": "status", "status": 500, "path": "^/v1/", "share": args.fault_share / 2},
            {"kind": "drop", "path": "^/v1/", "share": args.fault_share / 2},
            {"kind": "slow", "path": "^/v1/", "share": args.slow_share, "seconds": 3},
            {"kind": "status", "status": 503, "path": "/oauth2/", "share": args.token_fault_share},
        ])
        settings = {"AzureWebJobsStorage": devenv.azurite_connection_string(port), **devenv.unique_queues("r"), **pc.app_settings(),
                    "POLL_INTERVAL_SECONDS": "2", "POLL_MAX_INTERVAL_SECONDS": "8", "POLL_TIMEOUT_SECONDS": "1500",
                    "PARTNER_CENTER_TIMEOUT_SECONDS": "2", "PARTNER_CENTER_RETRY_BUDGET_SECONDS": "30",
                    "PROTECTED_CUSTOMER_IDS": protected["id"],
                    "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.500",
                    "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:02"}
        queues = devenv.Queues(settings["AzureWebJobsStorage"])
        req_q, poll_q, out_q = settings["DELETE_CUSTOMER_QUEUE"], settings["POLL_ORDERS_QUEUE"], settings["DELETION_OUTCOMES_QUEUE"]
        for name in (req_q, poll_q):
            queues.ensure(name)

        generation = [0]

        def start_host() -> devenv.Child:
            generation[0] += 1
            host = devenv.start_host(STATE, settings, name=f"host{generation[0]:03d}", lease_seconds=8)
            children.append(host)
            return host

        killer = Killer(rng, start_host, low, high) if high else None
        host_if_no_killer = None if killer else start_host()

        # The requests: every customer once (some twice), the protected one, and malformed ones.
        requests: dict[str, dict] = {}  # correlation id -> what was sent
        sends = [c["id"] for c in customers] + [c["id"] for c in customers if rng.random() < args.duplicates] + [protected["id"]]
        rng.shuffle(sends)
        for cid in sends:
            corr = str(uuid.uuid4())
            text = json.dumps({"customerTenantId": cid, "correlationId": corr})
            requests[corr] = {"customer": cid, "text": text, "kind": "protected" if cid == protected["id"] else "valid"}
            queues.send(req_q, text)
        for i in range(args.malformed):
            text = [f"garbage {i}", json.dumps({"customerTenantId": f"../{i}"}), json.dumps({"customerTenantId": str(uuid.uuid4()), "dryRun": "no"}),
                    "[1,2,3]", json.dumps({"customerTenantId": 42}), "{not json"][i % 6]
            msg_id = queues.send(req_q, text)
            requests[derived_correlation_id(msg_id)] = {"customer": None, "text": text, "kind": "malformed"}
        if killer:
            killer.start()
        print(f"sent {len(requests)} requests ({len(sends)} valid or protected, {args.malformed} malformed) for {len(customers)} customers", flush=True)

        reader = devenv.OutcomeReader(queues, out_q)
        deadline = time.monotonic() + args.timeout
        last_report = 0.0
        while time.monotonic() < deadline:
            done = {e["correlationId"] for e in reader.poll()}
            poisoned = poison_correlations(queues, req_q, requests)
            settled = sum(1 for corr in requests if corr in done or corr in poisoned)
            if time.monotonic() - last_report > 15:
                print(f"[{time.monotonic() - started:6.0f}s] {len(done & set(requests))}/{len(requests)} requests have an outcome, "
                      f"{killer.kills if killer else 0} host kills so far", flush=True)
                last_report = time.monotonic()
            if settled == len(requests):
                break
            time.sleep(2)
        if killer:
            killer.finish()
            final_host = killer.host
        else:
            final_host = host_if_no_killer
        time.sleep(8)  # let stragglers (forked chains, duplicate outcomes) land
        final_host.stop()
        reader.poll()
        wall = time.monotonic() - started
        result = measure(requests, reader.events, pc, queues, req_q, poll_q, customers, protected, wall, killer.kills if killer else 0, args)
        (STATE / "result.json").write_text(json.dumps(result, indent=2))
        print(table(result))
        bad = result["lost"] or result["deletes_while_open"] or result["deleted_twice"] or result["resurrected"] or result["protected_touched"]
        return 1 if bad else 0
    finally:
        for child in reversed(children):
            child.stop()


def poison_correlations(queues: devenv.Queues, req_q: str, requests: dict[str, dict]) -> set[str]:
    by_text = {r["text"]: corr for corr, r in requests.items()}
    found = set()
    for raw in queues.peek_all(req_q + "-poison"):
        text = decode_base64_strict(raw).decode("utf-8", "replace")
        if text in by_text:
            found.add(by_text[text])
            continue
        try:
            corr = json.loads(text).get("correlationId")
        except (ValueError, AttributeError):
            corr = None
        if corr in requests:
            found.add(corr)
    return found


def measure(requests, events, pc, queues, req_q, poll_q, customers, protected, wall, kills, args) -> dict:
    state = pc.state()
    log = pc.requests_log()
    per_corr = defaultdict(list)
    for e in events:
        per_corr[e["correlationId"]].append(e)
    poisoned = poison_correlations(queues, req_q, requests)
    outcome_counts = Counter()
    for corr in requests:
        for e in per_corr.get(corr, [])[:1]:
            outcome_counts[e["outcome"]] += 1
    exactly_one = sum(1 for corr in requests if len(per_corr.get(corr, [])) == 1)
    more_than_one = sum(1 for corr in requests if len(per_corr.get(corr, [])) > 1)
    inconsistent = sum(1 for corr in requests if len({e["outcome"] for e in per_corr.get(corr, [])}) > 1)
    lost = [corr for corr in requests if corr not in per_corr and corr not in poisoned]
    poison_reasons = Counter()
    for corr in poisoned:
        detail = (per_corr.get(corr) or [{"detail": "no outcome event"}])[0]["detail"]
        poison_reasons[re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|[A-Za-z0-9_-]{33}|\d+", "#", detail.split(";")[0].split(" (")[0])[:70]] += 1
    deletes_204 = Counter(r["path"].rsplit("/", 1)[1] for r in log if r["method"] == "DELETE" and r["status"] == 204)
    api_calls = [r for r in log if r["path"].startswith("/v1/")]
    deleted = state["deleted"]
    forks = chain_forks(STATE)
    customer_ids = {c["id"] for c in customers}
    return {
        "customers": len(customers), "orders": sum(len(c["orders"]) for c in customers), "requests_in": len(requests),
        "exactly_one_outcome": exactly_one, "more_than_one_outcome": more_than_one, "inconsistent_repeats": inconsistent,
        "outcomes": dict(outcome_counts), "deletions_done": len(set(deleted) & customer_ids),
        "customers_left": len(customer_ids & set(state["customers"])),
        "deletes_while_open": len(state["violations"]), "deleted_twice": len({c for c, n in deletes_204.items() if n > 1} | {c for c, v in deleted.items() if len(v) > 1}),
        "resurrected": len(set(deleted) & set(state["customers"])),
        "protected_touched": sum(1 for r in log if protected["id"] in r["path"]),
        "lost": len(lost), "lost_ids": lost[:10], "poisoned": len(poisoned), "poison_reasons": dict(poison_reasons),
        "poll_poison": queues.count(poll_q + "-poison"),
        "api_calls": len(api_calls), "api_calls_per_deletion": round(len(api_calls) / max(1, len(deleted)), 1),
        "throttled_429": sum(1 for r in api_calls if r["status"] == 429), "injected_5xx": sum(1 for r in api_calls if r["status"] in (500, 503)),
        "dropped": sum(1 for r in api_calls if r["status"] == "dropped"), "host_kills": kills,
        "worst_live_chains_per_request": forks["worst"], "forked_hops": forks["forked"], "wall_seconds": round(wall),
        "settings": {k: getattr(args, k) for k in ("customers", "min_orders", "max_orders", "fault_share", "slow_share", "token_fault_share",
                                                   "rate_limit", "window", "kill_every", "duplicates", "malformed", "seed")},
    }


def chain_forks(state_dir: Path) -> dict:
    """From the host logs: distinct poll messages that ran the same hop of the same request (a forked chain)."""
    hops: dict[tuple[str, int], set[str]] = defaultdict(set)
    pattern = re.compile(r"poll hop (\d+) \(message ([^,]+), delivery \d+\).*correlation=([0-9a-f-]+)")
    for path in state_dir.glob("host*.log"):
        for line in path.read_text(errors="replace").splitlines():
            m = pattern.search(line)
            if m:
                hops[(m.group(3), int(m.group(1)))].add(m.group(2))
    worst = max((len(v) for v in hops.values()), default=0)
    return {"worst": worst, "forked": sum(1 for v in hops.values() if len(v) > 1)}


def table(r: dict) -> str:
    rows = [
        ("customers (orders)", f"{r['customers']} ({r['orders']})"),
        ("requests in (incl. duplicates, protected, malformed)", r["requests_in"]),
        ("requests ending in exactly one outcome event", r["exactly_one_outcome"]),
        ("requests with a repeated outcome (same outcome, same correlation id)", f"{r['more_than_one_outcome']} (inconsistent: {r['inconsistent_repeats']})"),
        ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))),
        ("deletions done (customers left)", f"{r['deletions_done']} ({r['customers_left']})"),
        ("DELETEs sent while an order was open", r["deletes_while_open"]),
        ("customers deleted twice / resurrected", f"{r['deleted_twice']} / {r['resurrected']}"),
        ("protected customer: Partner Center calls", r["protected_touched"]),
        ("requests lost (neither outcome nor poison)", r["lost"]),
        ("requests waiting in poison (reasons)", f"{r['poisoned']} (" + "; ".join(f"{v}x {k}" for k, v in sorted(r["poison_reasons"].items())) + ")"),
        ("Partner Center calls (per deletion)", f"{r['api_calls']} ({r['api_calls_per_deletion']})"),
        ("429 / injected 5xx / dropped connections", f"{r['throttled_429']} / {r['injected_5xx']} / {r['dropped']}"),
        ("host kills (SIGKILL mid-run)", r["host_kills"]),
        ("worst live poll chains per request (forked hops)", f"{r['worst_live_chains_per_request']} ({r['forked_hops']})"),
        ("wall time", f"{r['wall_seconds']} s"),
    ]
    lines = ["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
