"""Injected faults and the per-tenant rate limit.

* A fault may carry a time window, ``from`` and ``until`` (unix times as ``time.time()``, either optional): outside it
  the fault does not apply. A Partner Center outage is e.g. a 503 fault and a drop fault with the same window and the
  path ``.*`` (which also covers the token endpoint).
* A fault's ``path`` regex is searched in the request path only, never the query. A fault may carry ``skip`` (an
  int >= 0, default 0): the first ``skip`` requests it otherwise applies to (method, path, ``times`` left, window)
  pass untouched by it and draw nothing; only then does it apply, with ``times`` and ``share`` as before. So
  ``{"kind": "status", "status": 503, "method": "GET", "path": "^/v1/customers$", "skip": 2, "times": 1}`` fails
  exactly the third page of a customer listing. ``skip`` counts a request whether or not an earlier fault of the
  list is injected into it; the state shows what is left of it, like ``times``. An injected fault does not use up a
  continuation token: the same ``links.next`` can be asked again.
"""

from __future__ import annotations

import copy
import math
import random
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from tools.pc_emulator.exceptions import DropConnectionError, injected, throttled

KINDS = ("status", "throttle", "drop", "slow")


@dataclass
class Fault:
    """An injected fault. It applies to a request whose method and path (a regex, searched) match, while ``times``
    lasts and while the clock is inside its window: from ``start`` (``from`` in JSON) included to ``until`` excluded,
    unix times as ``time.time()``; a missing bound is unbounded. ``path`` is searched in the path only (no query).
    While ``skip`` is above 0, a request the fault applies to counts it down and passes untouched by it, without a
    draw (whether or not another fault is injected into it). Of the faults that apply with no ``skip`` left, the
    first that wins its seeded random draw against ``share`` is injected; a fault that does not apply draws nothing,
    and neither do the faults after the injected one."""

    kind: str  # status | throttle | drop | slow
    method: str = "*"
    path: str = ".*"
    share: float = 1.0
    times: int | None = None  # remaining injections; None: unlimited
    status: int = 503
    seconds: float = 1.0  # slow: delay; throttle: Retry-After
    start: float | None = None  # "from": unix time the window opens; None: always open before "until"
    until: float | None = None  # unix time the window closes; None: never
    skip: int = 0  # requests the fault would apply to that still pass untouched (counted down, no draw)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        keys = ("kind", "method", "path", "share", "times", "status", "seconds", "until", "skip")
        fault = cls(**{k: data[k] for k in keys if k in data}, start=data.get("from"))
        if fault.kind not in KINDS:
            raise ValueError(f"unknown fault kind {fault.kind!r}")
        if isinstance(fault.skip, bool) or not isinstance(fault.skip, int) or fault.skip < 0:
            raise ValueError(f"fault 'skip' must be an integer >= 0, not {fault.skip!r}")
        re.compile(fault.path)
        for bound in (fault.start, fault.until):
            if bound is not None and (
                isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound)
            ):
                raise ValueError(f"fault window bounds 'from' and 'until' must be unix times (numbers), not {bound!r}")
        if fault.start is not None and fault.until is not None and fault.start >= fault.until:
            raise ValueError("fault window: 'from' must be before 'until'")
        return fault

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["from"] = data.pop("start")
        return data

    def applies(self, method: str, path: str, now: float) -> bool:
        return (
            self.method in ("*", method)
            and re.search(self.path, path) is not None
            and (self.times is None or self.times > 0)
            and (self.start is None or self.start <= now)
            and (self.until is None or now < self.until)
        )


def choose(faults: list[Fault], rng: random.Random, method: str, path: str, now: float) -> Fault | None:
    """The fault to inject into this request, if any (a copy), counting down ``skip`` and ``times`` as the
    ``Fault`` docstring says. The caller holds the sandbox lock."""
    chosen = None
    for fault in faults:
        if not fault.applies(method, path, now):
            continue
        if fault.skip > 0:  # passes this request untouched, and draws nothing
            fault.skip -= 1
            continue
        if chosen is not None or rng.random() >= fault.share:
            continue  # after the injected fault only the skips above count down
        if fault.times is not None:
            fault.times -= 1
        chosen = copy.copy(fault)
    return chosen


def inject(fault: Fault) -> None:
    """Act out a chosen fault: raise the error or the dropped connection, or sleep (``slow``, then the request goes
    on). Called without the sandbox lock, so a slow answer stalls no other request."""
    if fault.kind == "drop":
        raise DropConnectionError()
    if fault.kind == "slow":
        time.sleep(fault.seconds)
    elif fault.kind == "throttle":
        raise throttled(max(1, math.ceil(fault.seconds)))
    elif fault.kind == "status":
        raise injected(fault.status)


class RateLimiter:
    """A sliding window per partner tenant: at most ``limit`` requests in any ``window`` seconds; the next one gets
    429 with the seconds until the oldest leaves the window. The caller holds the sandbox lock."""

    def __init__(self) -> None:
        self.windows: dict[str, deque[float]] = {}

    def clear(self) -> None:
        self.windows.clear()

    def admit(self, key: str, limit: int, window: float, now: float) -> None:
        """Count a request, or raise the 429 (``ApiError``) that refuses it."""
        q = self.windows.setdefault(key, deque())
        while q and q[0] <= now - window:
            q.popleft()
        if len(q) >= limit:
            raise throttled(max(1, math.ceil(q[0] + window - now)))
        q.append(now)
