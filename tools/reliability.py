"""`make reliability`: many deletions under faults, throttling, outages and real host kills; prints a table.

Two profiles (``--profile``):

* ``standard``: 200 customers with 1-10 orders, one host killed (SIGKILL) every 20-45 s, Partner Center throttling at
  the documented rate limit, 10 % of calls failing (5xx, dropped connections), slow answers, token failures.
* ``harsh``: everything of ``standard``, plus two hosts on the same queues, each killed every 5-15 s with an 8 s
  message lease; a Partner Center outage of several minutes in the middle of the run, where every call (the token
  endpoint included) fails or is dropped; and 1 % of storage puts failing, half before and half after Azurite stored
  them, from the loopback fault proxy (tools/fault_proxy.py), never from a hook in the app.

It runs the requests through the local Functions host, Azurite and the Partner Center emulator, then checks, from the
emulator's state and request log, the outcome events, the poison queue and the host logs, that nothing was lost,
nothing was deleted twice, no DELETE went out while an order, a subscription or an Azure subscription under a plan was
open, outcomes of one request agree, and no request
that could have been deleted ended `failed` or `timed_out`. Exit status 1 if any of those happened. Not part of
`make test`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from shared.ids import derived_correlation_id
from tools import devenv
from tools.fault_proxy import start_fault_proxy
from tools.local_host.host import EXECUTED_LINE, decode_base64_strict

STATE = devenv.ROOT / ".local" / "reliability"
#: POLL_MAX_INTERVAL_SECONDS of the run. Above INVOCATION_WORK_SECONDS + maxPollingInterval, so that an order read
#: cancelled this long before the deadline always leaves a hop that can confirm it (the "could have been deleted" gate).
POLL_MAX = 20


@dataclass(frozen=True)
class Profile:
    hosts: int
    kill_every: str  # "LOW-HIGH" seconds between kills of each host, "0": never
    lease_seconds: int
    outage_at: float  # seconds after the requests are sent; 0: no outage
    outage_seconds: float
    storage_put_failures: float  # share of message puts that fail (half before, half after they were stored)
    cancel_after_seconds: tuple[int, ...]  # how long orders take to cancel after their PATCH (time only: exact)
    cancel_after_reads: tuple[int, ...]
    poll_timeout: int


PROFILES = {
    "standard": Profile(
        hosts=1,
        kill_every="20-45",
        lease_seconds=8,
        outage_at=0,
        outage_seconds=0,
        storage_put_failures=0.0,
        cancel_after_seconds=(0, 0, 0, 1, 2),
        cancel_after_reads=(0, 0, 1, 2, 3),
        poll_timeout=1500,
    ),
    "harsh": Profile(
        hosts=2,
        kill_every="5-15",
        lease_seconds=8,
        outage_at=60,
        outage_seconds=240,
        storage_put_failures=0.01,
        cancel_after_seconds=(0, 0, 1, 5, 20),
        cancel_after_reads=(0,),
        poll_timeout=1500,
    ),
}


def build_customers(rng: random.Random, count: int, min_orders: int, max_orders: int, profile: Profile) -> list[dict]:
    customers = []
    for _ in range(count):
        orders = [
            {
                "id": uuid.uuid4().hex + "A",
                "cancelAfterReads": rng.choice(profile.cancel_after_reads),
                "cancelAfterSeconds": rng.choice(profile.cancel_after_seconds),
                "status": "cancelled" if rng.random() < 0.05 else "completed",
            }
            for _ in range(rng.randint(min_orders, max_orders))
        ]
        customer: dict = {"id": str(uuid.uuid4()), "orders": orders}
        if rng.random() < SUBSCRIPTION_SHARE:
            customer["subscriptions"] = subscriptions(rng, profile)
        customers.append(customer)
    return customers


#: The share of customers that also hold subscriptions (issue 16): new commerce, SaaS, legacy with an add-on, an
#: Azure plan with Azure subscriptions under it.
SUBSCRIPTION_SHARE = 0.3


def subscriptions(rng: random.Random, profile: Profile) -> list[dict]:
    delay = profile.cancel_after_seconds
    items: list[dict] = []
    for kind in rng.sample(["nce", "saas", "legacy", "azurePlan"], rng.randint(1, 3)):
        item: dict = {"id": str(uuid.uuid4()), "kind": kind, "changeAfterSeconds": rng.choice(delay)}
        if kind == "nce" and rng.random() < 0.3:
            item["windowHours"] = -1  # past its cancellation window: suspended instead
        if kind == "azurePlan":
            item["azureEntitlements"] = [
                {"id": str(uuid.uuid4()), "inactiveAfterSeconds": rng.choice(delay)} for _ in range(rng.randint(1, 2))
            ]
        items.append(item)
        if kind == "legacy" and rng.random() < 0.5:
            items.append({"id": str(uuid.uuid4()), "kind": "legacy", "parentSubscriptionId": item["id"]})
    return items


class Killer(threading.Thread):
    """Kills one host process at random moments and starts a new one: a real SIGKILL, no cleanup."""

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
    p.add_argument("--profile", choices=sorted(PROFILES), default="standard")
    p.add_argument("--customers", type=int, default=200)
    p.add_argument("--min-orders", type=int, default=1)
    p.add_argument("--max-orders", type=int, default=10)
    p.add_argument(
        "--fault-share", type=float, default=0.10, help="share of API calls answered 5xx (another half of it: dropped)"
    )
    p.add_argument(
        "--slow-share", type=float, default=0.02, help="share of API calls slower than the client read timeout"
    )
    p.add_argument("--token-fault-share", type=float, default=0.10)
    p.add_argument(
        "--rate-limit", type=int, default=500, help="requests per window per partner tenant (documented: 500/min)"
    )
    p.add_argument("--window", type=float, default=60)
    p.add_argument(
        "--kill-every",
        default=None,
        help="seconds between kills of each host, as LOW-HIGH (0 disables); default: the profile's",
    )
    p.add_argument("--duplicates", type=float, default=0.05, help="share of customers whose request is sent twice")
    p.add_argument("--malformed", type=int, default=6)
    p.add_argument("--timeout", type=float, default=2400)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    profile = PROFILES[args.profile]
    kill_every = args.kill_every or profile.kill_every
    rng = random.Random(args.seed)
    low, high = (float(x) for x in kill_every.split("-")) if kill_every != "0" else (0.0, 0.0)

    state = STATE / args.profile
    state.mkdir(parents=True, exist_ok=True)
    for old in state.glob("host*.log"):
        old.unlink()
    children: list[devenv.Child] = []
    started = time.monotonic()
    try:
        azurite, port = devenv.start_azurite(state)
        children.append(azurite)
        storage = devenv.azurite_connection_string(port)
        proxy = table_proxy = None
        if profile.storage_put_failures:
            share = profile.storage_put_failures / 2
            proxy = start_fault_proxy(state, port.queue, before_share=share, after_share=share, seed=args.seed)
            children.append(proxy.child)
            # The request ledger's writes fail at the same rate, before or after they are stored (a lost answer).
            table_proxy = start_fault_proxy(
                state, port.table, name="fault_proxy_table", before_share=share, after_share=share, seed=args.seed + 1
            )
            children.append(table_proxy.child)
        pc = devenv.start_emulator(state)
        if pc.child:
            children.append(pc.child)
        customers = build_customers(rng, args.customers, args.min_orders, args.max_orders, profile)
        protected_id = str(uuid.uuid4())
        protected = {"id": protected_id, "orders": [{"id": uuid.uuid4().hex + "P"}]}
        pc.add_customers([*customers, protected])
        pc.knobs(rateLimitPerWindow=args.rate_limit, rateLimitWindowSeconds=args.window, randomSeed=args.seed)
        faults = [
            {"kind": "status", "status": 503, "path": "^/v1/", "share": args.fault_share / 2},
            {"kind": "status", "status": 500, "path": "^/v1/", "share": args.fault_share / 2},
            {"kind": "drop", "path": "^/v1/", "share": args.fault_share / 2},
            {"kind": "slow", "path": "^/v1/", "share": args.slow_share, "seconds": 3},
            {"kind": "status", "status": 503, "path": "/oauth2/", "share": args.token_fault_share},
        ]
        outage = None
        if profile.outage_seconds:
            begin = time.time() + profile.outage_at
            outage = (begin, begin + profile.outage_seconds)
            # Every call fails or is dropped, the token endpoint included. First in the list: it wins over the others.
            faults = [
                {"kind": "status", "status": 503, "path": ".*", "share": 0.5, "from": outage[0], "until": outage[1]},
                {"kind": "drop", "path": ".*", "share": 1.0, "from": outage[0], "until": outage[1]},
                *faults,
            ]
        pc.faults(faults)
        settings: dict[str, str] = {
            "AzureWebJobsStorage": proxy.connection_string(table_proxy.port if table_proxy else port.table)
            if proxy
            else storage,
            **devenv.unique_queues("r"),
            **pc.app_settings(),
            "POLL_INTERVAL_SECONDS": "2",
            "POLL_MAX_INTERVAL_SECONDS": str(POLL_MAX),
            "POLL_TIMEOUT_SECONDS": str(profile.poll_timeout),
            "PARTNER_CENTER_TIMEOUT_SECONDS": "2",
            "PARTNER_CENTER_RETRY_BUDGET_SECONDS": "4",
            "INVOCATION_WORK_SECONDS": "10",
            "PROTECTED_CUSTOMER_IDS": protected_id,
            "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.500",
            "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:02",
            "AzureWebJobs.sweep_customers.Disabled": "true",
        }  # the deletions only
        queues = devenv.Queues(storage)  # the harness itself talks to Azurite directly
        req_q, poll_q, out_q = (
            settings["DELETE_CUSTOMER_QUEUE"],
            settings["POLL_ORDERS_QUEUE"],
            settings["DELETION_OUTCOMES_QUEUE"],
        )
        for name in (req_q, poll_q):
            queues.ensure(name)

        generation = [0]

        def start_host() -> devenv.Child:
            generation[0] += 1
            host = devenv.start_host(
                state, settings, name=f"host{generation[0]:03d}", lease_seconds=profile.lease_seconds
            )
            children.append(host)
            return host

        killers = [Killer(rng, start_host, low, high) for _ in range(profile.hosts)] if high else []
        steady_hosts = [] if killers else [start_host() for _ in range(profile.hosts)]

        # The requests: every customer once (some twice), the protected one, and malformed ones.
        requests: dict[str, dict] = {}  # correlation id -> what was sent
        sends = (
            [c["id"] for c in customers]
            + [c["id"] for c in customers if rng.random() < args.duplicates]
            + [protected_id]
        )
        rng.shuffle(sends)
        for cid in sends:
            corr = str(uuid.uuid4())
            text = json.dumps({"customerTenantId": cid, "correlationId": corr})
            requests[corr] = {
                "customer": cid,
                "text": text,
                "kind": "protected" if cid == protected_id else "valid",
                "sent": time.time(),
            }
            queues.send(req_q, text)
        for i in range(args.malformed):
            text = [
                f"garbage {i}",
                json.dumps({"customerTenantId": f"../{i}"}),
                json.dumps({"customerTenantId": str(uuid.uuid4()), "dryRun": "no"}),
                "[1,2,3]",
                json.dumps({"customerTenantId": 42}),
                "{not json",
            ][i % 6]
            msg_id = queues.send(req_q, text)
            requests[derived_correlation_id(msg_id)] = {
                "customer": None,
                "text": text,
                "kind": "malformed",
                "sent": time.time(),
            }
        for killer in killers:
            killer.start()
        print(
            f"[{args.profile}] sent {len(requests)} requests ({len(sends)} valid or protected, {args.malformed} "
            f"malformed) for {len(customers)} customers; {profile.hosts} host(s)"
            + (f"; outage in {profile.outage_at:.0f}s for {profile.outage_seconds:.0f}s" if outage else ""),
            flush=True,
        )

        reader = devenv.OutcomeReader(queues, out_q)
        deadline = time.monotonic() + args.timeout
        last_report = 0.0
        while time.monotonic() < deadline:
            done = {e["correlationId"] for e in reader.poll()}
            poisoned = poison_correlations(queues, req_q, requests)
            settled = sum(1 for corr in requests if corr in done or corr in poisoned)
            if time.monotonic() - last_report > 15:
                print(
                    f"[{time.monotonic() - started:6.0f}s] {len(done & set(requests))}/{len(requests)} requests have "
                    f"an outcome, {sum(k.kills for k in killers)} host kills so far",
                    flush=True,
                )
                last_report = time.monotonic()
            if settled == len(requests):
                break
            time.sleep(2)
        # Keep the hosts running until the poll queue is empty: forked chains and repeated outcomes land late.
        drained = time.monotonic() + 600
        while queues.count(poll_q) and time.monotonic() < drained:
            time.sleep(2)
        for killer in killers:
            killer.finish()
        time.sleep(5)
        for host in [k.host for k in killers] + steady_hosts:
            host.stop()
        reader.poll()
        wall = time.monotonic() - started
        result = measure(
            requests,
            reader.events,
            pc,
            queues,
            req_q,
            poll_q,
            customers,
            protected,
            wall,
            sum(k.kills for k in killers),
            args,
            profile,
            state,
            outage,
            proxy,
            table_proxy,
        )
        (state / "result.json").write_text(json.dumps(result, indent=2))
        print(table(result))
        bad = (
            result["lost"]
            or result["deletes_while_open"]
            or result["deleted_twice"]
            or result["resurrected"]
            or result["protected_touched"]
            or result["inconsistent_repeats"]
            or result["could_have_been_deleted"]
        )
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


def could_have_been_deleted(
    customer: dict | None, deadline: float, poll_max: float, outage: tuple[float, float] | None
) -> bool:
    """The issue's definition: not protected, every order cancellable, and every order read cancelled in the emulator
    at least POLL_MAX_INTERVAL_SECONDS before the deadline, outside any outage window."""
    if customer is None:
        return False
    orders = customer["orders"].values()
    if not all(o["cancellable"] for o in orders):
        return False
    ready = [o["cancelledAt"] if o["readyAt"] is None else o["readyAt"] for o in orders]
    for s in customer.get("subscriptions", {}).values():  # when each change showed, and each Azure one went inactive
        ready.append(s["changedAt"] if s["status"] in ("suspended", "deleted") else None)
        ready += [e["inactiveAt"] for e in s["azureEntitlements"].values()]
    if any(r is None for r in ready):
        return False
    ready_at = max(ready, default=0.0)
    if outage and outage[0] <= ready_at < outage[1]:
        ready_at = outage[1]
    available = deadline - ready_at
    if outage:  # time inside the outage window does not count
        available -= max(0.0, min(deadline, outage[1]) - max(ready_at, outage[0]))
    return available >= poll_max


def language_worker(state_dir: Path) -> str:
    """The host's start-up line about its language worker and thread pool (the first host's)."""
    for path in sorted(state_dir.glob("host*.log")):
        m = re.search(r"Language worker: (.*)", path.read_text(errors="replace"))
        if m:
            return m.group(1).strip()
    return "unknown"


def invocation_durations(state_dir: Path) -> dict[str, dict]:
    """From the host logs: each function's invocation durations, and how many invocations never finished (killed)."""
    started: Counter = Counter()
    durations: dict[str, list[float]] = defaultdict(list)
    for path in state_dir.glob("host*.log"):
        for line in path.read_text(errors="replace").splitlines():
            m = re.search(r"Executing 'Functions\.(\w+)'", line)
            if m:
                started[m.group(1)] += 1
            m = EXECUTED_LINE.search(line)
            if m:
                durations[m["function"]].append(int(m["ms"]) / 1000)
    out = {}
    for function in sorted(started):
        values = sorted(durations[function])

        def pick(q: float, values: list[float] = values) -> float:
            return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0

        out[function] = {
            "invocations": started[function],
            "finished": len(values),
            "p50": round(statistics.median(values), 2) if values else 0.0,
            "p99": round(pick(0.99), 2),
            "max": round(values[-1], 2) if values else 0.0,
        }
    return out


def measure(
    requests,
    events,
    pc,
    queues,
    req_q,
    poll_q,
    customers,
    protected,
    wall,
    kills,
    args,
    profile,
    state_dir,
    outage,
    proxy,
    table_proxy=None,
) -> dict:
    state = pc.state()
    log = pc.requests_log()
    per_corr = defaultdict(list)
    for e in events:
        per_corr[e["correlationId"]].append(e)
    poisoned = poison_correlations(queues, req_q, requests)
    outcome_counts: Counter[str] = Counter()
    for corr in requests:
        for e in per_corr.get(corr, [])[:1]:
            outcome_counts[e["outcome"]] += 1
    exactly_one = sum(1 for corr in requests if len(per_corr.get(corr, [])) == 1)
    more_than_one = sum(1 for corr in requests if len(per_corr.get(corr, [])) > 1)
    # The ledger decides once (issue 18): a repeat must be the same event, byte for byte, not only the same outcome.
    inconsistent = [
        corr for corr in requests if len({json.dumps(e, sort_keys=True) for e in per_corr.get(corr, [])}) > 1
    ]
    lost = [
        corr for corr in requests if corr not in per_corr
    ]  # every request must end in an outcome event, poisoned or not
    poison_reasons: Counter[str] = Counter()
    for corr in poisoned:
        detail = (per_corr.get(corr) or [{"detail": "no outcome event"}])[0]["detail"]
        poison_reasons[
            re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|[A-Za-z0-9_-]{33}|\d+", "#", detail.split(";")[0].split(" (")[0])[:70]
        ] += 1
    deletes_204 = Counter(r["path"].rsplit("/", 1)[1] for r in log if r["method"] == "DELETE" and r["status"] == 204)
    api_calls = [r for r in log if r["path"].startswith("/v1/")]
    deleted = state["deleted"]
    all_customers = {**state.get("deletedCustomers", {}), **state["customers"]}
    missed = []
    for corr, sent in requests.items():
        outcome = (per_corr.get(corr) or [{}])[0].get("outcome")
        if sent["kind"] != "valid" or outcome not in ("failed", "timed_out"):
            continue
        # the earliest it can be: the request was first handled after it was sent
        deadline = sent["sent"] + profile.poll_timeout
        if could_have_been_deleted(all_customers.get(sent["customer"]), deadline, POLL_MAX, outage):
            missed.append(corr)
    customer_ids = {c["id"] for c in customers}
    return {
        "profile": args.profile,
        "customers": len(customers),
        "orders": sum(len(c["orders"]) for c in customers),
        "with_subscriptions": sum(1 for c in customers if c.get("subscriptions")),
        "subscriptions": sum(len(c.get("subscriptions") or []) for c in customers),
        "requests_in": len(requests),
        "exactly_one_outcome": exactly_one,
        "more_than_one_outcome": more_than_one,
        "inconsistent_repeats": len(inconsistent),
        "inconsistent_ids": inconsistent[:10],
        "outcomes": dict(outcome_counts),
        "deletions_done": len(set(deleted) & customer_ids),
        "customers_left": len(customer_ids & set(state["customers"])),
        "could_have_been_deleted": len(missed),
        "could_have_been_deleted_ids": missed[:10],
        "deletes_while_open": len(state["violations"]),
        "deleted_twice": len(
            {c for c, n in deletes_204.items() if n > 1} | {c for c, v in deleted.items() if len(v) > 1}
        ),
        "resurrected": len(set(deleted) & set(state["customers"])),
        "protected_touched": sum(1 for r in log if protected["id"] in r["path"]),
        "lost": len(lost),
        "lost_ids": lost[:10],
        "poisoned": len(poisoned),
        "poison_reasons": dict(poison_reasons),
        "poll_poison": queues.count(poll_q + "-poison"),
        "left_on_the_poll_queue": queues.count(poll_q),
        "api_calls": len(api_calls),
        "api_calls_per_deletion": round(len(api_calls) / max(1, len(deleted)), 1),
        "throttled_429": sum(1 for r in api_calls if r["status"] == 429),
        "injected_5xx": sum(1 for r in api_calls if r["status"] in (500, 503)),
        "dropped": sum(1 for r in api_calls if r["status"] == "dropped"),
        "host_kills": kills,
        "hosts": profile.hosts,
        "durations": invocation_durations(state_dir),
        "worker": language_worker(state_dir),
        "lease_seconds": profile.lease_seconds,
        "function_timeout": "00:10:00 (host.json)",
        "storage": proxy.stats() if proxy else None,
        "table": table_proxy.stats() if table_proxy else None,
        "outage_seconds": profile.outage_seconds,
        "forks": chain_forks(state_dir),
        "wall_seconds": round(wall),
        "settings": {
            k: getattr(args, k)
            for k in (
                "customers",
                "min_orders",
                "max_orders",
                "fault_share",
                "slow_share",
                "token_fault_share",
                "rate_limit",
                "window",
                "kill_every",
                "duplicates",
                "malformed",
                "seed",
            )
        },
    }


def chain_forks(state_dir: Path) -> dict:
    """From the host logs: hops of one request run by more than one message to the end (a forked chain). A hand-over
    after a redelivery is a recovery, not a fork: the message it replaces ran nothing to the end."""
    hop_of: dict[str, tuple[str, int, str]] = {}  # invocation -> (correlation, hop, message)
    handovers: set[str] = set()
    succeeded: set[str] = set()
    hop_line = re.compile(
        r"poll hop (\d+), stage \w+ \(message ([^,]+), delivery \d+\)"
        r".*correlation=([0-9a-f-]+) .*invocation=([0-9a-f-]+)\)"
    )
    claims: Counter[str] = Counter()
    for path in state_dir.glob("host*.log"):
        for line in path.read_text(errors="replace").splitlines():
            for what, words in CLAIM_LINES.items():
                if words in line:
                    claims[what] += 1
            if m := hop_line.search(line):
                hop_of[m.group(4)] = (m.group(3), int(m.group(1)), m.group(2))
            elif any(w in line for w in ("handed over", "nothing left to do", "is claimed by invocation")) and (
                m := re.search(r"invocation=([0-9a-f-]+)\)", line)
            ):
                handovers.add(m.group(1))  # it ran nothing of the hop: a hand-over, a twin that found it done, a wait
            elif (m := EXECUTED_LINE.search(line)) and m["function"] == "poll_orders" and m["status"] == "Succeeded":
                succeeded.add(m["id"])
    messages: dict[tuple[str, int], set[str]] = defaultdict(set)
    for invocation, (correlation, hop, message) in hop_of.items():
        if invocation in succeeded and invocation not in handovers:
            messages[(correlation, hop)].add(message)
    return {
        "worst": max((len(v) for v in messages.values()), default=0),
        "forked": sum(1 for v in messages.values() if len(v) > 1),
        "recoveries": len(handovers),
        "claims": {k: claims[k] for k in CLAIM_LINES},
    }


#: What the host logs say about the request ledger's claims (shared.service), counted by ``chain_forks``.
CLAIM_LINES = {
    "waited": "is claimed by invocation",  # a message came back later: another invocation held the claim
    "done": "nothing left to do for this message",  # a twin or stale message that found a later hop: no call
    "taken_over": "took over the claim of invocation",  # unreleased: ended by its message's redelivery, or ran out
    "lost": "another invocation claimed the request since",  # a hop lost its claim before its DELETE: none sent
    "lost_at_outcome": "holds the request's claim now",  # a hop lost its claim before its outcome: not published
    "not_released": "was not released",
}


def table(r: dict) -> str:
    durations = "; ".join(
        f"{f}: p50 {d['p50']} s, p99 {d['p99']} s, max {d['max']} s ({d['invocations'] - d['finished']} of "
        f"{d['invocations']} killed)"
        for f, d in r["durations"].items()
    )
    storage = r["storage"]
    puts = (
        (
            f"{storage['failed_before'] + storage['failed_after']} of {storage['puts']} ({storage['failed_before']} "
            f"before, {storage['failed_after']} after being stored)"
        )
        if storage
        else "none injected"
    )
    table_stats = r.get("table")
    table_writes = (
        (
            f"{table_stats['failed_before'] + table_stats['failed_after']} of {table_stats['puts']} "
            f"({table_stats['failed_before']} before, {table_stats['failed_after']} after being stored)"
        )
        if table_stats
        else "none injected"
    )
    rows = [
        (
            "profile",
            f"{r['profile']}: {r['hosts']} host(s), message lease {r['lease_seconds']} s, functionTimeout "
            f"{r['function_timeout']}"
            + (f", Partner Center outage {r['outage_seconds']:.0f} s" if r["outage_seconds"] else ""),
        ),
        (
            "customers (orders; customers with subscriptions, subscriptions)",
            f"{r['customers']} ({r['orders']}; {r['with_subscriptions']}, {r['subscriptions']})",
        ),
        ("requests in (incl. duplicates, protected, malformed)", r["requests_in"]),
        ("requests ending in exactly one outcome event", r["exactly_one_outcome"]),
        (
            "requests with a repeated outcome (repeats not identical to the first)",
            f"{r['more_than_one_outcome']} ({r['inconsistent_repeats']})",
        ),
        ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))),
        ("failed or timed_out although they could have been deleted", r["could_have_been_deleted"]),
        ("deletions done (customers left)", f"{r['deletions_done']} ({r['customers_left']})"),
        ("DELETEs sent while an order, a subscription or an Azure subscription was open", r["deletes_while_open"]),
        ("customers deleted twice / resurrected", f"{r['deleted_twice']} / {r['resurrected']}"),
        ("protected customer: Partner Center calls", r["protected_touched"]),
        ("requests lost (no outcome event)", r["lost"]),
        (
            "poll messages left at the end / in the poll poison queue",
            f"{r['left_on_the_poll_queue']} / {r['poll_poison']}",
        ),
        (
            "requests waiting in poison (reasons)",
            f"{r['poisoned']} (" + "; ".join(f"{v}x {k}" for k, v in sorted(r["poison_reasons"].items())) + ")",
        ),
        ("Partner Center calls (per deletion)", f"{r['api_calls']} ({r['api_calls_per_deletion']})"),
        ("429 / injected 5xx / dropped connections", f"{r['throttled_429']} / {r['injected_5xx']} / {r['dropped']}"),
        ("storage puts failed", puts),
        ("request ledger (table) writes failed", table_writes),
        ("host kills (SIGKILL mid-run)", r["host_kills"]),
        ("language worker", r.get("worker", "unknown")),
        ("invocation durations (the host's: waiting for a worker thread included)", durations),
        (
            "forked chains: most copies of one hop (hops run by more than one copy)",
            f"{r['forks']['worst']} ({r['forks']['forked']})",
        ),
        ("hand-overs after a redelivery, twins that found their hop done, waits for a claim", r["forks"]["recoveries"]),
        (
            "claims: waited for / taken over (their invocation died) / lost (before a DELETE, before an outcome)",
            (
                lambda c: (
                    f"{c['waited']} / {c['taken_over']} / {c['lost'] + c['lost_at_outcome']} "
                    f"({c['lost']}, {c['lost_at_outcome']})"
                )
            )(r["forks"]["claims"]),
        ),
        ("wall time", f"{r['wall_seconds']} s"),
    ]
    lines = ["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
