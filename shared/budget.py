"""An invocation's time budget: how long it may work, and how long it may wait in-process in total.

No invocation waits long in-process (Retry-After, back-off): a longer wait continues on the poll queue. No call starts
after ``work_seconds``: the rest is handed to the next hop. So no deletion ever needs one long invocation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Budget"]


class Budget:
    def __init__(self, work_seconds: float, wait_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.work_seconds = work_seconds
        self.wait_seconds = wait_seconds
        self._clock = clock
        self._started = clock()
        self._waited = 0.0
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        return self._clock() - self._started

    def may_start_call(self) -> bool:
        return self.elapsed() < self.work_seconds

    def may_wait(self, seconds: float) -> bool:
        """Whether sleeping ``seconds`` stays inside both the waiting allowance and the work time."""
        with self._lock:
            return self._waited + seconds <= self.wait_seconds and self.elapsed() + seconds < self.work_seconds

    def record_wait(self, seconds: float) -> None:
        with self._lock:
            self._waited += seconds
