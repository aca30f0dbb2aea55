"""The sweep's shell: list the customers, let the core decide, enqueue deletion requests, write the report.

Every decision is the core's (``shared.sweep``); this module only executes and observes, like ``shared.service``.
It runs the patterns' searches the core asks for (``search``) in a child process with a time limit: Python's ``re``
holds the GIL while it backtracks, so in this process a pattern such as ``(a+)+$`` on a hostile name would freeze every
thread of the worker, ``delete_customer`` and ``poll_orders`` included.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from shared import ledger, telemetry
from shared.budget import Budget
from shared.errors import AppError, PartnerCenterError
from shared.messages import iso
from shared.service import Deps
from shared.sweep import (
    FIRST_SEEN_PARTITION,
    MATCH_SECONDS,
    Enqueued,
    FirstSeen,
    LedgerHousekeeping,
    Outcome,
    RecordChanges,
    RecordResult,
    RunTime,
    Searches,
    SearchJob,
    SweepPolicy,
    before_listing,
    check_patterns,
    correlation_id,
    match_job,
    plan,
    probe_job,
    read_first_seen,
    read_policy,
    record_changes,
    record_needed,
    report_text,
    request_text,
    run_id,
    run_time,
)
from shared.tables import TableConflictError, TableError

__all__ = ["LISTING_WORK_SECONDS", "SweepFailedError", "handle_sweep", "search"]

log = logging.getLogger("customer_deletion.sweep")

#: The listing's work time: no page is asked for after it (the timer has no lease to lose, so it is generous).
LISTING_WORK_SECONDS = 60.0
#: The first-seen record's writes: none starts after this long (a slow table must not keep the requests back).
RECORD_WORK_SECONDS = 60.0


class SweepFailedError(Exception):
    """The run was refused or failed; its report is written. Raised so that the host records a failed invocation."""


#: The child's whole program: it only executes the job (JSON on stdin) and writes what it found (JSON on stdout).
#: ``-I -S``: no environment variables, no site-packages, no current directory on the path; its address space is capped
#: so that a pattern cannot exhaust the instance's memory either.
_CHILD = r"""
import json, re, sys
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (1 << 29, 1 << 29))
except Exception:
    pass
job = json.loads(sys.stdin.buffer.read())
texts, found, zero = job["texts"], {}, {}
for p in job["patterns"]:
    c = re.compile(p, re.IGNORECASE)
    found[p] = [i for i, t in enumerate(texts) if c.search(t) is not None]
    if job["zeroWidth"]:
        zero[p] = [i for i, t in enumerate(texts) if any(m.end() == m.start() for m in c.finditer(t))]
sys.stdout.write(json.dumps({"found": found, "zeroWidth": zero}))
"""


def search(job: SearchJob | None, timeout: float = MATCH_SECONDS) -> Searches | None:
    """Run ``job`` in a child Python process, killed after ``timeout`` seconds; this thread only waits (without the
    GIL), so the worker's other threads keep running. Never raises: a failure is in ``Searches.failure``."""
    if job is None:
        return None
    try:
        payload = json.dumps(
            {"patterns": list(job.patterns), "texts": list(job.texts), "zeroWidth": job.zero_width}
        ).encode("ascii")
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _CHILD],
            input=payload,
            capture_output=True,
            timeout=timeout,
            env={},
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Searches(job, failure=f"stopped at the time limit of {timeout:g} s")
    except Exception as exc:  # noqa: BLE001 - no child, no results: the core refuses
        return Searches(job, failure=f"the child process could not run ({type(exc).__name__})")
    if done.returncode != 0:
        return Searches(job, failure=f"the child process ended with exit status {done.returncode}")
    try:
        out = json.loads(done.stdout)
        found = {p: frozenset(job.texts[i] for i in out["found"][p]) for p in job.patterns}
        zero = {p: frozenset(job.texts[i] for i in out["zeroWidth"][p]) for p in job.patterns} if job.zero_width else {}
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return Searches(job, failure=f"the child process's results cannot be read ({type(exc).__name__})")
    return Searches(job, found, zero)


def handle_sweep(
    timer: Any,
    invocation_id: str,
    deps: Deps,
    *,
    env: Mapping[str, str] | None = None,
    match_seconds: float = MATCH_SECONDS,
) -> Outcome:
    """One run: the host's ``TimerRequest`` in, the report out (raises
    ``SweepFailedError`` after a refused or failed run)."""
    clock = deps.clock
    started = clock()
    settings = deps.settings
    policy = read_policy(
        os.environ if env is None else env,
        app_queues=(settings.delete_queue, settings.poll_queue, settings.outcomes_queue),
    )
    policy = check_patterns(policy, search(probe_job(policy), match_seconds))
    past_due = bool(getattr(timer, "past_due", False))
    status = getattr(timer, "schedule_status", None)
    run = run_time(policy.schedule, started, past_due, status if isinstance(status, dict) else None)
    rid = run_id(run)
    telemetry.bind(sweepRun=rid)
    log.info(
        "sweep %s: %s run at %s (%s), mode %s, invocation %s",
        rid,
        run.trigger,
        run.moment.isoformat(),
        run.why,
        policy.mode,
        invocation_id,
    )

    outcome = _run(policy, run, started, rid, deps, match_seconds)
    outcome.ledger = _prune_ledger(deps, run, started)
    text = report_text(
        policy=policy,
        run=run,
        past_due=past_due,
        started=started,
        finished=clock(),
        invocation_id=invocation_id,
        outcome=outcome,
    )
    if policy.reports_queue is None:
        log.error("sweep %s: no queue can take the report (see its problems); the report: %s", rid, text)
    else:
        deps.publisher.send(policy.reports_queue, text)  # never expires
    summary = (
        f"sweep {rid}: {outcome.result}; listed {outcome.plan.listed if outcome.plan else '-'} of "
        f"{policy.sandbox_limit or '-'}, selected {len(outcome.plan.selected) if outcome.plan else 0}, "
        f"enqueued {len(outcome.enqueued)}, deferred {outcome.plan.deferred if outcome.plan else 0}; report on "
        f"{policy.reports_queue}"
    )
    telemetry.bind(outcome=outcome.result)
    if outcome.result in ("refused", "failed"):
        log.error("%s: %s", summary, outcome.error)
        raise SweepFailedError(f"{summary}: {outcome.error}")
    log.info("%s", summary)
    return outcome


def _run(policy: SweepPolicy, run: RunTime, started: datetime, rid: str, deps: Deps, match_seconds: float) -> Outcome:
    early = before_listing(policy)
    if early is not None:
        for problem in policy.problems if early.result == "refused" else ():
            log.error("sweep %s: setting problem: %s", rid, problem)
        return early
    settings = deps.settings
    try:
        try:
            items = deps.partner_center.list_customers(
                correlation_id=rid,
                budget=Budget(LISTING_WORK_SECONDS, settings.retry_budget, deps.monotonic),
                stop_after=policy.sandbox_limit,
            )
        except (PartnerCenterError, AppError) as exc:
            return Outcome(
                "failed",
                error=f"listing the customers failed, so nothing was enqueued (a partial list is never acted on): "
                f"{exc}",
            )
        first_seen, record = _read_record(policy, deps)
        result = plan(
            items,
            policy,
            settings.protected_ids,
            run,
            search(match_job(policy, items), match_seconds),
            first_seen,
        )
        if result.refusal:
            log.error("sweep %s: %s", rid, result.refusal)
            return Outcome("refused", plan=result, error=result.refusal, record=record)
        if record is not None:
            _write_record(deps, record_changes(result, policy, first_seen, run, started), record)
            log.log(
                logging.WARNING if record.error else logging.INFO,
                "sweep %s: first-seen record %s: %s known, %s recorded, %s pruned%s",
                rid,
                record.table,
                record.known,
                record.added + record.rewritten,
                record.pruned,
                f"; {record.error}" if record.error else "",
            )
        for d in result.decisions:
            with telemetry.fields(customerTenantId=d.customer_id):
                log.info(
                    "sweep %s: customer %s %s -> %s%s",
                    rid,
                    d.customer_id,
                    _shown(d.company_name),
                    d.reason,
                    f" ({d.detail})" if d.detail else "",
                )
    except Exception as exc:  # noqa: BLE001 - anything else before the first request: still a report, never a secret
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        at = f" at {os.path.basename(where.filename)}:{where.lineno} in {where.name}" if where else ""
        log.error("sweep %s: the run failed before enqueueing anything: %s%s", rid, type(exc).__name__, at)
        return Outcome(
            "failed",
            error=f"the run failed before enqueueing anything ({type(exc).__name__}{at}), so nothing was enqueued",
        )
    if policy.mode != "delete":
        return Outcome("reported", plan=result, record=record)
    outcome = Outcome("enqueued", plan=result, record=record)
    for d in result.selected:
        try:
            cid = correlation_id(run, d.customer_id)
            message_id = deps.publisher.send(settings.delete_queue, request_text(run, d.customer_id))
        except Exception as exc:  # noqa: BLE001 - storage failed: stop, report what was enqueued
            outcome.result = "failed"
            outcome.error = (
                f"enqueueing the deletion request of {d.customer_id} failed ({type(exc).__name__}); "
                f"{len(outcome.enqueued)} of {len(result.selected)} were enqueued, the rest wait for the next run"
            )
            return outcome
        outcome.enqueued.append(Enqueued(d.customer_id, cid, message_id))
        with telemetry.fields(customerTenantId=d.customer_id, correlationId=cid):
            log.info(
                "sweep %s: enqueued the deletion of %s (correlation %s) on %s",
                rid,
                d.customer_id,
                cid,
                settings.delete_queue,
            )
    return outcome


def _prune_ledger(deps: Deps, run: RunTime, started: datetime) -> LedgerHousekeeping | None:
    """The request ledger's housekeeping, on the sweep's schedule whatever SWEEP_MODE: finished rows older than
    LEDGER_RETENTION_DAYS are deleted (each on its etag), within RECORD_WORK_SECONDS. A fault is reported; it fails
    nothing (the rows wait for the next run)."""
    table = deps.tables
    if table is None:
        return None
    days = deps.settings.ledger_retention_days
    result = LedgerHousekeeping(retention_days=days)
    began = deps.monotonic()
    try:
        before = ledger.prune_before(started, days)
        for pk, rk, etag in ledger.prune_plan(table.query_finished_before(iso(before)), before):
            if deps.monotonic() - began > RECORD_WORK_SECONDS:
                result.error = f"stopped after {RECORD_WORK_SECONDS:g} s; the rest waits for the next run"
                break
            with contextlib.suppress(TableConflictError):
                table.delete(pk, rk, etag)
                result.pruned += 1
    except TableError as exc:
        result.error = f"the request ledger could not be pruned ({exc}); the rows wait for the next run"
    if result.pruned or result.error:
        log.log(
            logging.WARNING if result.error else logging.INFO,
            "sweep: pruned %d finished request row(s) older than %d days%s",
            result.pruned,
            days,
            f"; {result.error}" if result.error else "",
        )
    return result


def _read_record(policy: SweepPolicy, deps: Deps) -> tuple[FirstSeen | None, RecordResult | None]:
    """The first-seen record as this run reads it (``None`` when the policy needs none); a fault is its
    ``failure``."""
    if not record_needed(policy):
        return None, None
    table = deps.tables
    if table is None:
        return FirstSeen(failure="no table is configured"), RecordResult(table="-")
    record = RecordResult(table=table.name)
    try:
        first_seen = read_first_seen(table.query_partition(FIRST_SEEN_PARTITION))
    except TableError as exc:
        return FirstSeen(failure=str(exc)), record
    record.known = len(first_seen.times) + len(first_seen.unreadable)
    return first_seen, record


def _write_record(deps: Deps, changes: RecordChanges, record: RecordResult) -> None:
    """Execute ``changes``; a conditional write that is refused (another run changed the row) is left as it is. The
    first other fault, or the end of RECORD_WORK_SECONDS, stops the writes and is recorded: it fails nothing (see
    ``RecordResult``)."""
    table = deps.tables
    if table is None or not changes.writes:
        return
    began = deps.monotonic()
    writes: list[tuple[Callable[[], object], str]] = [
        *((functools.partial(table.insert, row), "added") for row in changes.add),
        *((functools.partial(table.replace, row, etag), "rewritten") for row, etag in changes.rewrite),
        *((functools.partial(table.delete, FIRST_SEEN_PARTITION, c, etag), "pruned") for c, etag in changes.prune),
    ]
    try:
        for done, (write, counter) in enumerate(writes):
            if deps.monotonic() - began > RECORD_WORK_SECONDS:
                record.error = (
                    f"the first-seen record was only partly updated: {len(writes) - done} write(s) left after "
                    f"{RECORD_WORK_SECONDS:g} s; a customer not recorded counts as new"
                )
                return
            with contextlib.suppress(TableConflictError):
                write()
                setattr(record, counter, getattr(record, counter) + 1)
    except TableError as exc:
        record.error = f"the first-seen record was only partly updated ({exc}); a customer not recorded counts as new"


def _shown(name: str) -> str:
    """A company name in a log line: quoted, control and non-ASCII characters escaped, at most 80 characters."""
    return repr(name[:80] + ("…" if len(name) > 80 else "")).encode("ascii", "backslashreplace").decode("ascii")
