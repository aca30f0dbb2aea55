"""Timer triggers, as the timer extension runs them
(Azure/azure-webjobs-sdk-extensions: TimerListener, ScheduleMonitor).

Schedules are NCRONTAB (``shared.ncrontab``, the host's lenient reading) in UTC. With ``useMonitor`` the schedule
status ``{"Last", "Next", "LastUpdated"}`` lives in ``<state-dir>/timers/<function>/status.json`` (the host keeps it in
a blob) and drives the past-due check at start. Only the host instance holding ``<state-dir>/timers/<function>/lock``
(an ``flock``; the host's blob lease, its "singleton lock") runs the timer. The decisions are pure functions
(``plan_startup``, ``status_after_run``); ``TimerListener`` only waits, invokes and stores.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tools.local_host.indexing import FunctionSpec, timer_data
from tools.local_host.indexing import utc_iso as iso

log = logging.getLogger("local_host")

#: The host's "no value" for Last / LastUpdated (DateTime.MinValue); anything before year 2 reads as it.
DEFAULT_TIME = datetime(1, 1, 1, tzinfo=UTC)
_DEFAULT_THRESHOLD = datetime(2, 1, 1, tzinfo=UTC)
#: How often a host that does not hold a timer's singleton lock tries again.
LOCK_RETRY_SECONDS = 2.0

SCHEDULED, PAST_DUE, RUN_ON_STARTUP = "scheduled", "past_due", "run_on_startup"


def utcnow() -> datetime:
    return datetime.now(UTC)


def _read_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"not a time: {value!r}")
    moment = datetime.fromisoformat(value.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return DEFAULT_TIME if moment < _DEFAULT_THRESHOLD else moment.astimezone(UTC)


@dataclass(frozen=True)
class ScheduleStatus:
    last: datetime
    next: datetime
    last_updated: datetime

    def to_json(self) -> dict[str, str]:
        return {"Last": iso(self.last), "Next": iso(self.next), "LastUpdated": iso(self.last_updated)}

    @classmethod
    def from_json(cls, data: Any) -> ScheduleStatus:
        """Read a stored status, setting anything before year 2 to the default (the host's ``GetSafeStatusAsync``)."""
        if not isinstance(data, dict):
            raise ValueError("a schedule status is a JSON object")
        return cls(
            _read_time(data.get("Last", iso(DEFAULT_TIME))),
            _read_time(data.get("Next", iso(DEFAULT_TIME))),
            _read_time(data.get("LastUpdated", iso(DEFAULT_TIME))),
        )


def _next(schedule: Any, moment: datetime) -> datetime:
    found = schedule.next_after(moment)
    if found is None:  # indexing refuses schedules that never occur
        raise ValueError(f"the schedule '{schedule.expression}' has no occurrence after {iso(moment)}")
    return found


@dataclass(frozen=True)
class StartupPlan:
    status: ScheduleStatus  # the listener's status from now on (the next tick is at status.next)
    store: ScheduleStatus | None  # write this to the status file before anything runs (None: leave it)
    action: str | None  # PAST_DUE or RUN_ON_STARTUP: invoke once at once; None: wait for status.next


def plan_startup(
    schedule: Any, stored: ScheduleStatus | None, now: datetime, *, use_monitor: bool, run_on_startup: bool
) -> StartupPlan:
    """What a timer does when its listener starts (TimerListener.StartAsync + ScheduleMonitor.CheckPastDueAsync).

    Without a monitor nothing is read or stored. With one: no status yet -> store one (Next = next occurrence,
    LastUpdated = now), not past due. A stored status whose Next is not what the schedule gives from its Last (or
    LastUpdated) means the schedule changed: Next is recomputed (from now if that is already past, so a schedule
    change never reads as past due) and stored. Then past due when now > Next: one invocation at once, not one per
    missed occurrence. Otherwise ``runOnStartup`` runs it once at start.
    """
    store, past_due, status = None, False, None
    if use_monitor:
        if stored is None:
            store = ScheduleStatus(DEFAULT_TIME, _next(schedule, now), now)
        else:
            status = stored
            if stored.last > DEFAULT_TIME:
                basis = stored.last
            elif stored.last_updated > DEFAULT_TIME:
                basis = stored.last_updated
            else:
                basis = now
            expected = _next(schedule, basis)
            if stored.next != expected:
                if now > expected:
                    basis, expected = now, _next(schedule, now)
                status = store = ScheduleStatus(DEFAULT_TIME, expected, basis)
            past_due = now > status.next
    if status is None:  # the listener's own first status (the invocation sees Last/LastUpdated as the default)
        status = ScheduleStatus(DEFAULT_TIME, _next(schedule, now), DEFAULT_TIME)
    action = PAST_DUE if past_due else RUN_ON_STARTUP if run_on_startup else None
    return StartupPlan(status, store, action)


def status_after_run(
    schedule: Any, status: ScheduleStatus, fired_at: datetime, kind: str, now: datetime
) -> ScheduleStatus:
    """The status after an invocation, whether it succeeded or failed (TimerListener.InvokeJobFunction).

    A scheduled tick records its occurrence (``status.next``; a tick that fired a little early counts as on time)
    as Last and the occurrence after it as Next; a past-due or run-on-startup invocation records the time it fired
    and the next occurrence after that (missed occurrences are not replayed).
    """
    last = status.next if kind == SCHEDULED else fired_at
    return ScheduleStatus(last, _next(schedule, last), now)


def next_occurrences(schedule: Any, start: datetime, count: int = 5) -> list[datetime]:
    out, moment = [], start
    for _ in range(count):
        moment = schedule.next_after(moment)
        if moment is None:
            break
        out.append(moment)
    return out


# -- the files -------------------------------------------------------------------------------------------------------


def timer_dir(state_dir: Path, name: str) -> Path:
    return state_dir / "timers" / name


def read_status(state_dir: Path, name: str) -> ScheduleStatus | None:
    path = timer_dir(state_dir, name) / "status.json"
    try:
        return ScheduleStatus.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("Function '%s': schedule status %s cannot be read (%s); treating it as missing", name, path, exc)
        return None


def write_status(state_dir: Path, name: str, status: ScheduleStatus) -> None:
    folder = timer_dir(state_dir, name)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"status.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(status.to_json()), encoding="utf-8")
    os.replace(tmp, folder / "status.json")


class SingletonLock:
    """A non-blocking exclusive ``flock`` on ``<state-dir>/timers/<function>/lock`` (the host's listener lease)."""

    def __init__(self, state_dir: Path, name: str):
        self.path = timer_dir(state_dir, name) / "lock"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: another open file (another host) holds it
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the lock (as does the process ending)
            self._fd = None


# -- the listener ----------------------------------------------------------------------------------------------------

#: (function, timer JSON for the worker, reason for the "Executing" line) -> succeeded
Execute = Callable[[FunctionSpec, dict, str], bool]


class TimerListener:
    """One timer: takes the singleton lock, plans its start, then invokes at each occurrence, one at a time."""

    def __init__(
        self,
        spec: FunctionSpec,
        state_dir: Path,
        execute: Execute,
        stop: threading.Event,
        lock_retry_seconds: float = LOCK_RETRY_SECONDS,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.spec = spec
        self.state_dir = state_dir
        self.execute = execute
        self.stop = stop
        self.lock_retry = lock_retry_seconds
        self.clock = clock
        self.lock = SingletonLock(state_dir, spec.name)
        self.status: ScheduleStatus | None = None
        self.thread = threading.Thread(target=self.run, name=f"timer-{spec.name}", daemon=True)

    def run(self) -> None:
        try:
            if self._acquire():
                self._run()
        except Exception:  # a broken listener must not take the host down
            log.exception("Function '%s': the timer listener stopped", self.spec.name)
        finally:
            self.lock.release()

    def _acquire(self) -> bool:
        told = False
        while not self.lock.try_acquire():
            if not told:
                log.info(
                    "Function '%s': another host instance holds the singleton lock (%s); retrying every %gs",
                    self.spec.name,
                    self.lock.path,
                    self.lock_retry,
                )
                told = True
            if self.stop.wait(self.lock_retry):
                return False
        if told:
            log.info("Function '%s': singleton lock acquired; starting the timer", self.spec.name)
        return True

    def _run(self) -> None:
        spec, schedule = self.spec, self.spec.schedule
        now = self.clock()
        stored = read_status(self.state_dir, spec.name) if spec.use_monitor else None
        plan = plan_startup(schedule, stored, now, use_monitor=spec.use_monitor, run_on_startup=spec.run_on_startup)
        if plan.store is not None:
            write_status(self.state_dir, spec.name, plan.store)
        self.status = plan.status
        log.info(
            "The next 5 occurrences of the '%s' schedule (Cron: '%s', UTC) will be: %s",
            spec.name,
            spec.schedule_text,
            ", ".join(iso(t) for t in next_occurrences(schedule, now)),
        )
        if plan.action == PAST_DUE:
            log.info("Function '%s' is past due on startup. Executing now.", spec.name)
            self._fire(PAST_DUE)
        elif plan.action == RUN_ON_STARTUP:
            log.info("Function '%s' is configured to run on startup. Executing now.", spec.name)
            self._fire(RUN_ON_STARTUP)
        while not self.stop.is_set():
            remaining = (self.status.next - self.clock()).total_seconds()
            if remaining > 0:
                self.stop.wait(min(remaining, 30.0))  # re-check: the wall clock may jump
                continue
            self._fire(SCHEDULED)

    def _fire(self, kind: str) -> None:
        assert self.status is not None
        fired_at = self.clock()
        data = timer_data(self.status.to_json() if self.spec.use_monitor else None, past_due=kind == PAST_DUE)
        self.execute(self.spec, data, f"Timer fired at {iso(fired_at)}")  # a failure is not retried
        self.status = status_after_run(self.spec.schedule, self.status, fired_at, kind, self.clock())
        if self.spec.use_monitor:
            write_status(self.state_dir, self.spec.name, self.status)
            log.debug("Function '%s' updated status: %s", self.spec.name, self.status.to_json())
