"""The admin API under ``/_emulator/``: the state, the request log, the knobs, the faults and the seed. Not part of
Partner Center: plain JSON, no BOM, no token, errors as ``{"error": ...}``.

* ``GET state``: knobs, faults (with what is left of ``times`` and ``skip``), customers with their orders' timing,
  ``deleted`` (the times of accepted DELETEs), ``deletedCustomers`` (each as at its last deletion), ``violations``
  (DELETEs received while an order was open) and the request count.
* ``GET requests?since=N``: the request log from entry N, and ``next``. Each entry has ``time`` (ISO, ms) and ``t``
  (the same moment as a unix time).
* ``POST knobs`` (an object of known knobs), ``POST faults`` (the new list, replacing the old), ``POST customers``
  (a list, all checked before any is added), ``POST customers/fill`` (``{"count": 75, "seed": 7, "prefix": "Tip
  test run"}``: a full, deterministic test sandbox), ``POST customers/<id>/orders`` (purchases during a deletion; an
  order with ``hidden: true`` blocks DELETE but is in no entitlement), ``POST customers/<id>/subscriptions`` (the
  same for subscriptions, seeded as ``models.Subscription.from_seed`` says), ``POST revoke-tokens``, ``POST reset`` (to
  the seed, or to a new seed given as the body; a malformed one is refused before it replaces anything).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tools.pc_emulator.exceptions import Answer
from tools.pc_emulator.faults import Fault
from tools.pc_emulator.models import FULL_SANDBOX_PREFIX, GUID, Sandbox, full_sandbox_customers

Handler = Callable[..., Answer]


def _bad(message: str) -> Answer:
    return 400, {"error": message}, {}


def state(sandbox: Sandbox, data: Any, query: dict[str, list[str]]) -> Answer:
    return 200, sandbox.snapshot(), {}


def requests(sandbox: Sandbox, data: Any, query: dict[str, list[str]]) -> Answer:
    since = int((query.get("since") or ["0"])[0])
    return 200, {"requests": sandbox.log[since:], "next": len(sandbox.log)}, {}


def knobs(sandbox: Sandbox, data: dict[str, Any], query: dict[str, list[str]]) -> Answer:
    try:
        return 200, sandbox.set_knobs(data), {}
    except ValueError as exc:
        return _bad(str(exc))


def faults(sandbox: Sandbox, data: list[Any], query: dict[str, list[str]]) -> Answer:
    try:
        sandbox.faults = [Fault.from_json(f) for f in data]
    except (TypeError, ValueError, re.error) as exc:
        return _bad(str(exc))
    return 200, [f.to_json() for f in sandbox.faults], {}


def customers(sandbox: Sandbox, data: list[Any], query: dict[str, list[str]]) -> Answer:
    try:
        sandbox.add_customers(data)
    except ValueError as exc:
        return _bad(str(exc))
    return 200, {"customers": len(sandbox.customers)}, {}


def fill(sandbox: Sandbox, data: dict[str, Any] | None, query: dict[str, list[str]]) -> Answer:
    args = data or {}
    unknown = set(args) - {"count", "seed", "prefix"}
    count, seed, prefix = args.get("count", 75), args.get("seed", 7), args.get("prefix", FULL_SANDBOX_PREFIX)
    if (
        unknown
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in (count, seed))
        or not 0 <= count <= 10000
        or not isinstance(prefix, str)
        or not prefix.strip()
    ):
        return _bad('fill takes {"count": 0..10000, "seed": <int>, "prefix": <non-blank string>}')
    made = full_sandbox_customers(count, seed=seed, prefix=prefix)
    for customer in made:
        sandbox.add_customer(customer)
    return 200, {"customers": len(sandbox.customers), "ids": [c["id"] for c in made]}, {}


def _add_to_customer(
    sandbox: Sandbox, cid: str, what: str, add: Callable[[str, list[Any]], int], data: list[Any]
) -> Answer:
    """New purchases (``what``: orders or subscriptions) of an existing customer: its new count, or why not."""
    cid = cid.lower()
    if cid not in sandbox.customers:
        return 404, {"error": f"no customer {cid}"}, {}
    try:
        return 200, {what: add(cid, data)}, {}
    except (TypeError, ValueError) as exc:
        return _bad(str(exc))


def orders(sandbox: Sandbox, data: list[Any], query: dict[str, list[str]], cid: str) -> Answer:
    return _add_to_customer(sandbox, cid, "orders", sandbox.add_orders, data)


def subscriptions(sandbox: Sandbox, data: list[Any], query: dict[str, list[str]], cid: str) -> Answer:
    return _add_to_customer(sandbox, cid, "subscriptions", sandbox.add_subscriptions, data)


def revoke_tokens(sandbox: Sandbox, data: Any, query: dict[str, list[str]]) -> Answer:
    return 200, {"revoked": sandbox.revoke_tokens()}, {}


def reset(sandbox: Sandbox, data: Any, query: dict[str, list[str]]) -> Answer:
    if isinstance(data, dict):
        try:
            Sandbox(data)  # a malformed seed is refused before it replaces anything
        except (KeyError, TypeError, ValueError, re.error) as exc:
            return _bad(f"malformed seed: {exc}")
    sandbox.reset(data if isinstance(data, dict) else None)
    return 200, {"customers": len(sandbox.customers)}, {}


@dataclass(frozen=True)
class AdminRoute:
    """``method`` and ``name`` (a regex, matched whole, on the path after ``/_emulator/``) with the JSON body types the
    endpoint takes (None: any body); a request that matches no route, or sends another body type, gets 404."""

    method: str
    name: str
    handler: Handler
    body: tuple[type, ...] | None = None


ROUTES = (
    AdminRoute("GET", "state", state),
    AdminRoute("GET", "requests", requests),
    AdminRoute("POST", "knobs", knobs, (dict,)),
    AdminRoute("POST", "faults", faults, (list,)),
    AdminRoute("POST", "customers", customers, (list,)),
    AdminRoute("POST", "customers/fill", fill, (dict, type(None))),
    AdminRoute("POST", rf"customers/(?P<cid>{GUID})/orders", orders, (list,)),
    AdminRoute("POST", rf"customers/(?P<cid>{GUID})/subscriptions", subscriptions, (list,)),
    AdminRoute("POST", "revoke-tokens", revoke_tokens),
    AdminRoute("POST", "reset", reset),
)


def handle(sandbox: Sandbox, method: str, path: str, query: dict[str, list[str]], raw: bytes) -> Answer:
    try:
        data = json.loads(raw.decode("utf-8") or "null")
    except ValueError:
        return _bad("body is not JSON")
    name = path[len("/_emulator/") :].strip("/")
    with sandbox.lock:
        for route in ROUTES:
            m = re.fullmatch(route.name, name)
            if m and route.method == method and (route.body is None or isinstance(data, route.body)):
                return route.handler(sandbox, data, query, **m.groupdict())
    return 404, {"error": f"no admin endpoint {method} {path}"}, {}
