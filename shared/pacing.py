"""Client-side pacing of one worker process's Partner Center calls (issue 8).

Partner Center limits each partner tenant to 500 requests per minute and answers more with 429 and ``Retry-After``.
A process that sends faster only collects 429s, and each one costs a hop. The pacer, shared by every thread of the
process, keeps the process under ``PARTNER_CENTER_CALLS_PER_MINUTE`` with the same rule the service applies: at most
that many calls in any 60 s (a sliding window; a token bucket would have to trade its burst against its rate). It
also honours a 429 for the whole process: after one, no thread sends before its ``Retry-After`` has passed.

A wait for a slot counts toward the invocation's in-process waiting allowance (``shared.budget``). A wait that does
not fit is not slept through: the call raises ``ThrottledError`` with the wait as its ``Retry-After``, and the
request continues on the poll queue like any throttled hop.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from shared.budget import Budget

__all__ = ["MARGIN_SECONDS", "WINDOW_SECONDS", "Pacer"]

WINDOW_SECONDS = 60.0
#: A slot is reused this long after the window, for the gap between our clock and Partner Center's arrival time.
MARGIN_SECONDS = 1.0


class Pacer:
    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()  # when each call of the window was let through
        self._hold_until = 0.0  # no call before this (the latest 429's Retry-After)
        self._lock = threading.Lock()

    def _wait_locked(self, now: float) -> float:
        while self._sent and self._sent[0] + WINDOW_SECONDS + MARGIN_SECONDS <= now:
            self._sent.popleft()
        wait = max(0.0, self._hold_until - now)
        if len(self._sent) >= self.per_minute:
            wait = max(wait, self._sent[0] + WINDOW_SECONDS + MARGIN_SECONDS - now)
        return wait

    def wait_seconds(self) -> float:
        """How long a call would have to wait now (0: it could go at once)."""
        with self._lock:
            return self._wait_locked(self._clock())

    def acquire(self, budget: Budget) -> float | None:
        """Take a slot for one call, sleeping for it if the budget allows. Returns ``None`` once the slot is taken,
        or the seconds until one frees when that wait does not fit the budget (no slot is taken then)."""
        while True:
            with self._lock:
                now = self._clock()
                wait = self._wait_locked(now)
                if wait <= 0:
                    self._sent.append(now)
                    return None
            if not budget.may_wait(wait):
                return wait
            budget.record_wait(wait)
            self._sleep(wait)  # then try again: another thread may have taken the slot meanwhile

    def hold_off(self, seconds: float) -> None:
        """A 429 said to wait ``seconds``: no call of this process starts before they have passed."""
        with self._lock:
            self._hold_until = max(self._hold_until, self._clock() + max(0.0, seconds))
