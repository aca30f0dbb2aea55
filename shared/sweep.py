"""The sweep's pure core: its settings, the run's time, which listed customers are selected and why, and the report.

Nothing here does I/O or reads a clock; ``shared.sweeper`` lists the customers, calls these functions, enqueues the
deletion requests and writes the report. Every decision of a sweep is made here, so it is tested as a table.

Safety rules (see docs/sweep.md):
* A customer is selected only when ``SWEEP_INCLUDE`` (case-insensitive ``re.search``) matches its company name or its
  default domain, ``SWEEP_EXCLUDE`` matches neither, its id is a canonical GUID that its company profile agrees with,
  it is listed once, it is not in ``PROTECTED_CUSTOMER_IDS``, and neither text is over 256 characters.
* A customer is selected only when the sweep first saw it at least ``SWEEP_MIN_AGE_HOURS`` before this run, by the
  runs' own times (``first_seen``): a customer a running test created a minute ago is ``too_new``. A record that cannot
  be read selects nothing. The record is the sweep's own (``record_changes``): it is not a creation date.
* A list of more customers than ``SANDBOX_CUSTOMER_LIMIT`` is not an integration sandbox: nothing is selected.
* A setting problem selects nothing, and names every problem; it never touches the deletion functions' settings.
* No pattern is ever run here. Python's ``re`` backtracks and holds the GIL while it matches, so a pattern such as
  ``(a+)+$`` on a hostile name would freeze every thread of the worker, the deletion functions' too. The core only
  compiles the patterns (bounded work) and says what to search (``probe_job``, ``match_job``); the shell runs those
  searches in a child process under ``MATCH_SECONDS`` and hands the results back (``Searches``); the core decides
  from them, and refuses the run when they are missing.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.config import queue_name_problem
from shared.ids import is_guid
from shared.messages import deletion_request_text, iso
from shared.ncrontab import Schedule, ScheduleError, parse

__all__ = [
    "FIRST_SEEN_PARTITION",
    "MATCH_SECONDS",
    "MAX_NAME_CHARS",
    "MAX_REPORT_BYTES",
    "MODES",
    "PROBES",
    "REASONS",
    "REPORT_SCHEMA_VERSION",
    "SWEEP_DEFAULTS",
    "TICK_LATENESS",
    "Decision",
    "FirstSeen",
    "LedgerHousekeeping",
    "Plan",
    "RecordChanges",
    "RecordResult",
    "RunTime",
    "SearchJob",
    "Searches",
    "SweepPolicy",
    "before_listing",
    "check_patterns",
    "correlation_id",
    "first_seen_row",
    "match_job",
    "plan",
    "probe_job",
    "read_first_seen",
    "read_policy",
    "record_changes",
    "record_needed",
    "report_text",
    "request_text",
    "run_id",
    "run_time",
    "seen_at",
]

SWEEP_DEFAULTS: dict[str, str] = {
    "SWEEP_MODE": "report",
    "SWEEP_INCLUDE": "",
    "SWEEP_EXCLUDE": "",
    "SWEEP_MAX_PER_RUN": "25",
    "SANDBOX_CUSTOMER_LIMIT": "75",
    "SWEEP_REPORTS_QUEUE": "customer-sweep-reports",
    "SWEEP_MIN_AGE_HOURS": "24",
}
MODES = ("off", "report", "delete")
#: Why a listed customer was or was not selected, in the order they are checked.
REASONS = (
    "invalid_id",
    "duplicate",
    "protected",
    "name_too_long",
    "not_matching",
    "excluded",
    "too_new",
    "over_limit",
    "selected",
)
#: SWEEP_MIN_AGE_HOURS's maximum (a year); 0 switches the minimum age, and the first-seen record, off.
MAX_MIN_AGE_HOURS = 8760
#: The first-seen record's partition in the DELETION_REQUESTS_TABLE table (every other partition is a customer id).
FIRST_SEEN_PARTITION = "sweepfirstseen"
MAX_NAME_CHARS = 256
MAX_PATTERN_CHARS = 1000
MAX_LIMIT = 1000
#: SWEEP_MAX_PER_RUN's maximum: the report names every enqueued request, and 100 of them fit a queue message.
MAX_PER_RUN = 100
REPORT_SCHEMA_VERSION = 1
#: A storage queue message holds 64 KiB of Base64 text, 48 KiB of JSON; less a margin.
MAX_REPORT_BYTES = 46 * 1024
#: Texts a sane pattern never matches with zero characters: a pattern that does (``x*``, ``\B``, a lone lookahead)
#: matches at positions, not names, and would select nearly every customer.
PROBES = (
    "",
    "a",
    "ab",
    "a b",
    "0",
    "a-b.c",
    "é",
    "Tip test run 0001 – Contoso",
    "contosotiptestrun0001.onmicrosoft.com",
)
#: A run is the scheduled one when it starts this close after the latest occurrence and nothing else tells.
SCHEDULED_TOLERANCE = timedelta(seconds=60)
#: A stored schedule status whose ``Next`` has come is this run's tick only if the run starts at most this long after
#: ``Next``. The host fires a tick at ``Next``, so a tick starts within the worker's dispatch delay (seconds; a cold
#: worker on Flex Consumption, tens of seconds), far inside 5 minutes. A ``Next`` further back is a stale status (the
#: host was stopped, or failed to record a tick), as an admin call gets it; a tick the host missed runs as past due.
#: An admin call within 5 minutes of an occurrence whose tick is still running (the host records the status when the
#: invocation ends) reuses that occurrence's run time and correlation ids, which is harmless.
TICK_LATENESS = timedelta(minutes=5)
#: The most time the patterns may take, all names and domains of one run together (in a child process: see above).
#: Plain patterns need milliseconds; starting the child takes about 0.1 s, a cold one on a busy instance a few seconds.
MATCH_SECONDS = 10.0
#: The host and the app read one clock, but not at the same instant.
CLOCK_SKEW = timedelta(seconds=5)
#: Fixed namespace of the sweep's ids: uuid5(it, "<run time>") is the run id, uuid5(it, "<run time>/<customer id>") a
#: request's correlation id. Never change it: a repeat of a run must give the same ids.
_NAMESPACE = uuid.UUID("5f0c2d7e-9b61-4c3a-8e0f-7a9d1c4b2e63")


@dataclass(frozen=True)
class SweepPolicy:
    mode: str
    include: str | None  # the pattern as written (it compiles, case-insensitive); None: not set or has a problem
    exclude: str | None
    max_per_run: int
    sandbox_limit: int
    reports_queue: str | None  # None: no queue can take the report (it is logged)
    schedule: Schedule | None
    problems: tuple[str, ...] = ()
    tried: bool = False  # the patterns were tried on PROBES (check_patterns); until then a set pattern selects nothing
    min_age_hours: int = 24  # SWEEP_MIN_AGE_HOURS; 0: no minimum age, and no first-seen record

    @property
    def patterns(self) -> tuple[str, ...]:
        """The set patterns, include first (each once)."""
        return tuple(dict.fromkeys(p for p in (self.include, self.exclude) if p is not None))


def read_policy(env: Mapping[str, str], *, app_queues: tuple[str, ...] = ()) -> SweepPolicy:
    """The sweep's settings. Never raises: every problem is named in ``problems``, and a policy with problems selects
    nothing. ``app_queues`` are the deletion functions' queues, which the report queue must not be. The patterns are
    compiled, never run: ``check_patterns`` finishes the reading with what ``probe_job`` found in a child process."""
    problems: list[str] = []

    def get(name: str) -> str:
        value = env.get(name)
        return SWEEP_DEFAULTS[name] if value is None or not value.strip() else value.strip()

    mode = get("SWEEP_MODE").lower()
    if mode not in MODES:
        problems.append(f"SWEEP_MODE must be off, report or delete (got {get('SWEEP_MODE')[:40]!r})")
    include = _pattern("SWEEP_INCLUDE", env.get("SWEEP_INCLUDE", ""), problems)
    exclude = _pattern("SWEEP_EXCLUDE", env.get("SWEEP_EXCLUDE", ""), problems)
    if mode == "delete" and include is None and not (env.get("SWEEP_INCLUDE") or "").strip():
        problems.append("SWEEP_MODE=delete needs SWEEP_INCLUDE: the sweep never deletes every customer by default")
    max_per_run = _count("SWEEP_MAX_PER_RUN", get("SWEEP_MAX_PER_RUN"), problems, MAX_PER_RUN)
    min_age_text = get("SWEEP_MIN_AGE_HOURS")
    min_age = int(min_age_text) if re.fullmatch(r"[0-9]{1,5}", min_age_text) else -1
    if not 0 <= min_age <= MAX_MIN_AGE_HOURS:
        problems.append(
            f"SWEEP_MIN_AGE_HOURS must be a whole number of hours from 0 to {MAX_MIN_AGE_HOURS} "
            f"(got {min_age_text[:40]!r})"
        )
        min_age = int(SWEEP_DEFAULTS["SWEEP_MIN_AGE_HOURS"])
    limit = _count("SANDBOX_CUSTOMER_LIMIT", get("SANDBOX_CUSTOMER_LIMIT"), problems, MAX_LIMIT)

    wanted_reports = get("SWEEP_REPORTS_QUEUE").lower()
    reports: str | None = wanted_reports
    problem = queue_name_problem("SWEEP_REPORTS_QUEUE", wanted_reports)
    taken = {q for app in app_queues for q in (app, app + "-poison")}
    if problem is None and reports in taken:
        problem = f"SWEEP_REPORTS_QUEUE must not be one of the deletion functions' queues ({reports!r})"
    if problem is not None:
        fallback = SWEEP_DEFAULTS["SWEEP_REPORTS_QUEUE"]
        if fallback in taken:  # not even the default is free: the report is only logged
            problems.append(problem + "; this report is only logged")
            reports = None
        else:
            problems.append(problem + f"; this report goes to {fallback!r}")
            reports = fallback

    schedule = None
    text = (env.get("SWEEP_SCHEDULE") or "").strip()
    if not text:
        problems.append("SWEEP_SCHEDULE is not set (an NCRONTAB expression with six fields, such as '0 0 3 * * *')")
    else:
        try:
            schedule = parse(text)
        except ScheduleError as exc:
            problems.append(f"SWEEP_SCHEDULE is not valid NCRONTAB: {exc}")
        else:
            if schedule.next_after(datetime(2000, 1, 1, tzinfo=UTC)) is None:
                problems.append(f"SWEEP_SCHEDULE never occurs: {text[:80]!r}")
                schedule = None
    return SweepPolicy(
        mode if mode in MODES else "report",
        include,
        exclude,
        max_per_run,
        limit,
        reports,
        schedule,
        tuple(problems),
        min_age_hours=min_age,
    )


def _pattern(name: str, raw: str, problems: list[str]) -> str | None:
    text = raw or ""
    if not text.strip():
        return None  # not set (spaces around a pattern are part of it: nothing is trimmed)
    if len(text) > MAX_PATTERN_CHARS:
        problems.append(f"{name} is longer than {MAX_PATTERN_CHARS} characters")
        return None
    try:  # compiling is bounded work (no backtracking); matching is not, so it never happens in this process
        re.compile(text, re.IGNORECASE)
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        problems.append(f"{name} is not a valid regular expression: {exc}")
        return None
    return text


# -- the patterns' searches (run by the shell in a child process) ------------------------------------------------------


@dataclass(frozen=True)
class SearchJob:
    """What to search: every pattern (compiled with ``re.IGNORECASE``) in every text, with ``re.search``; with
    ``zero_width``, also whether ``finditer`` yields a match of zero characters in the text."""

    patterns: tuple[str, ...]
    texts: tuple[str, ...]
    zero_width: bool = False


@dataclass(frozen=True)
class Searches:
    """What a ``SearchJob`` found, or why it found nothing (``failure``: the time limit, the child process failed)."""

    job: SearchJob
    found: Mapping[str, frozenset[str]] = field(default_factory=dict)  # pattern -> the texts re.search finds it in
    zero_width: Mapping[str, frozenset[str]] = field(default_factory=dict)  # pattern -> texts with a zero-width match
    failure: str | None = None

    def usable_for(self, job: SearchJob) -> bool:
        return (
            self.failure is None
            and self.job == job
            and all(p in self.found for p in job.patterns)
            and (not job.zero_width or all(p in self.zero_width for p in job.patterns))
        )


def probe_job(policy: SweepPolicy) -> SearchJob | None:
    """The search that finishes reading the patterns (``check_patterns``), or ``None`` when no pattern is set."""
    return SearchJob(policy.patterns, PROBES, zero_width=True) if policy.patterns else None


def check_patterns(policy: SweepPolicy, searches: Searches | None) -> SweepPolicy:
    """The policy with its patterns tried on ``PROBES``: a pattern that matches the empty string, that can match zero
    characters, or whose search did not finish within the limit is a setting problem (and is dropped)."""
    job = probe_job(policy)
    if job is None:
        return replace(policy, tried=True)
    problems = list(policy.problems)
    named = [(n, p) for n, p in (("SWEEP_INCLUDE", policy.include), ("SWEEP_EXCLUDE", policy.exclude)) if p is not None]
    if searches is None or not searches.usable_for(job):
        why = searches.failure if searches is not None and searches.failure else "no results"
        problems.append(
            f"{' and '.join(n for n, _ in named)} could not be tried on test texts ({why}); a pattern with "
            "nested repetition, such as (a+)+$, can take hours on some texts"
        )
        return replace(policy, include=None, exclude=None, problems=tuple(problems), tried=True)
    kept = {}
    for name, text in named:
        if "" in searches.found[text]:
            problems.append(f"{name} matches the empty string, so it would match every customer: {text[:80]!r}")
        elif searches.zero_width[text]:
            problems.append(
                f"{name} can match zero characters (such as \\B or a lookahead alone), so it would match nearly "
                f"every customer: {text[:80]!r}"
            )
        else:
            kept[name] = text
    return replace(
        policy,
        include=kept.get("SWEEP_INCLUDE"),
        exclude=kept.get("SWEEP_EXCLUDE"),
        problems=tuple(problems),
        tried=True,
    )


def match_job(policy: SweepPolicy, items: list[Any]) -> SearchJob | None:
    """The search ``plan`` needs for this list: the patterns in every company name and domain of at most
    MAX_NAME_CHARS characters; ``None`` when ``plan`` needs none (nothing to match, or it refuses anyway)."""
    if policy.include is None or policy.problems or not policy.tried or len(items) > policy.sandbox_limit:
        return None
    texts: dict[str, None] = {}
    for item in items:
        profile = item.get("companyProfile") if isinstance(item, dict) else None
        for key in ("companyName", "domain"):
            text = _text(profile.get(key)) if isinstance(profile, dict) else ""
            if len(text) <= MAX_NAME_CHARS:
                texts[text] = None
    return SearchJob(policy.patterns, tuple(sorted(texts)))


def _count(name: str, value: str, problems: list[str], maximum: int) -> int:
    if not re.fullmatch(r"[0-9]{1,6}", value) or not 1 <= int(value) <= maximum:
        problems.append(f"{name} must be a whole number from 1 to {maximum} (got {value[:40]!r})")
        return 0
    return int(value)


# -- the run's time ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunTime:
    moment: datetime  # the run's time: the scheduled occurrence, or the start of a manual run
    trigger: str  # "schedule" | "manual"
    why: str  # how the trigger was told apart, for the report and the log


def run_time(schedule: Schedule | None, started: datetime, past_due: bool, status: Mapping[str, Any] | None) -> RunTime:
    """Scheduled or started by hand, and the run's time.

    The v1 ``TimerRequest`` has no scheduled time, and a run started through the admin endpoint looks like a first
    scheduled run (no past-due flag, an empty status when nothing is stored). So:
    * past due (the host's catch-up at start): scheduled;
    * the host's schedule status names its next occurrence: at or up to TICK_LATENESS before the start, scheduled (a
      tick fires at its ``Next``); after the start, or longer before it (a stale status), started by hand (an admin
      call gets the stored status, whose ``Next`` is ahead unless the host missed or is still running that tick);
    * no status (the first run, or ``useMonitor`` off): scheduled if the start is within 60 s of an occurrence.
    A scheduled run's time is the latest occurrence at or before the start (UTC); a manual run's is its start. Both
    mistakes this can make are harmless: a manual run within 60 s of an occurrence reuses that run's correlation ids,
    and a late first tick gets ids of its own.
    """
    latest = schedule.latest_at_or_before(started) if schedule is not None else None
    nxt = _status_time((status or {}).get("Next"))
    if schedule is None or latest is None:
        return RunTime(started, "manual", "the schedule cannot be read, so the run's time is its start")
    if past_due:
        return RunTime(latest, "schedule", "past due (the host's catch-up run)")
    if nxt is not None:
        if nxt > started + CLOCK_SKEW:
            return RunTime(started, "manual", f"the schedule status's next occurrence {iso(nxt)} is still ahead")
        if started - nxt > TICK_LATENESS:
            return RunTime(
                started,
                "manual",
                f"the schedule status's next occurrence {iso(nxt)} passed more than "
                f"{TICK_LATENESS.total_seconds() / 60:g} minutes before the start (a stale status)",
            )
        # a tick; one seen a moment early is still that occurrence's run
        return RunTime(
            latest if nxt <= started else schedule.latest_at_or_before(nxt) or latest,
            "schedule",
            f"the schedule status's next occurrence {iso(nxt)} has come",
        )
    if started - latest <= SCHEDULED_TOLERANCE:
        return RunTime(latest, "schedule", "no schedule status; started within 60 s of an occurrence")
    return RunTime(started, "manual", "no schedule status; not near an occurrence")


_STATUS_TIME_RE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,7}))?(Z|[+-]\d\d:\d\d)")


def _status_time(value: Any) -> datetime | None:
    """A time of the host's schedule status (ISO 8601 with an offset, up to 7 fractional digits as .NET writes
    them). ``None`` for anything else, including the host's "never", 0001-01-01, and a time without an offset."""
    m = _STATUS_TIME_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None:
        return None
    base, fraction, offset = m.groups()
    try:
        moment = datetime.fromisoformat(
            base + (f".{(fraction + '000000')[:6]}" if fraction else "") + ("+00:00" if offset == "Z" else offset)
        )
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.year >= 2000 else None


def run_id(run: RunTime) -> str:
    return str(uuid.uuid5(_NAMESPACE, iso(run.moment)))


def correlation_id(run: RunTime, customer_id: str) -> str:
    """uuid5(namespace, "<run time>/<customer id>"): a repeat of the same run enqueues the same correlation ids."""
    return str(uuid.uuid5(_NAMESPACE, f"{iso(run.moment)}/{customer_id}"))


# -- the first-seen record --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FirstSeen:
    """The sweep's record of when it first listed each customer, as read at the start of a run (``read_first_seen``),
    or why it could not be read (``failure``)."""

    times: Mapping[str, datetime] = field(default_factory=dict)  # customer id (lower case) -> first seen (a run time)
    etags: Mapping[str, str] = field(default_factory=dict)  # customer id -> its row's etag, for a conditional change
    unreadable: frozenset[str] = frozenset()  # customer ids whose row has no readable time (rewritten by this run)
    failure: str | None = None


def read_first_seen(rows: Sequence[Mapping[str, Any]]) -> FirstSeen:
    """The record from its rows. A row whose RowKey is not a lower-case GUID is ignored (it never becomes a key
    again); one whose time cannot be read counts as not seen, so that customer is ``too_new`` until this run's
    rewrite of the row ages."""
    times: dict[str, datetime] = {}
    etags: dict[str, str] = {}
    unreadable: set[str] = set()
    for row in rows:
        cid = row.get("RowKey")
        if not (is_guid(cid) and isinstance(cid, str) and cid == cid.lower()):
            continue
        etag = row.get("etag")
        if isinstance(etag, str):
            etags[cid] = etag
        moment = _status_time(row.get("firstSeen"))
        if moment is None:
            unreadable.add(cid)
        else:
            times[cid] = moment
    return FirstSeen(times, etags, frozenset(unreadable))


def record_needed(policy: SweepPolicy) -> bool:
    """Whether a run reads and writes the first-seen record: only with a minimum age."""
    return policy.min_age_hours > 0


def seen_at(run: RunTime, started: datetime) -> datetime:
    """The time a run records a customer first seen at: the run's time, so that ages compare the runs' own times (a
    daily schedule means 24 hours, not 48), unless the run started more than TICK_LATENESS after it (a past-due
    catch-up hours late): then its start, since a customer it lists was not seen at the missed occurrence. Ages are
    still compared with the run's time, which is never later than its start: the safe side."""
    return run.moment if started - run.moment <= TICK_LATENESS else started


def first_seen_row(customer_id: str, when: datetime) -> dict[str, Any]:
    """The record's row of a customer first seen at ``when`` (``seen_at``)."""
    return {"PartitionKey": FIRST_SEEN_PARTITION, "RowKey": customer_id, "firstSeen": iso(when)}


@dataclass(frozen=True)
class RecordChanges:
    """What a run changes in the record, each write complete: rows to create (listed, not recorded), rows to rewrite
    (recorded without a readable time: row and the etag it was read with), rows to delete (recorded, no longer
    listed: the customer is gone; id and etag). A row read without an etag is left alone."""

    add: tuple[dict[str, Any], ...] = ()
    rewrite: tuple[tuple[dict[str, Any], str], ...] = ()
    prune: tuple[tuple[str, str], ...] = ()

    @property
    def writes(self) -> int:
        return len(self.add) + len(self.rewrite) + len(self.prune)


def record_changes(
    result: Plan, policy: SweepPolicy, first_seen: FirstSeen | None, run: RunTime, started: datetime
) -> RecordChanges:
    """The record's changes after ``result``: none without a minimum age, after a refusal (the list is not to be
    trusted, or the record could not be read), or when nothing was listed validly (an empty or unusable page is no
    proof that every customer is gone, and pruning on it would make every customer new again). Only ids the plan
    validated as customer GUIDs are ever added; only recorded GUIDs are ever pruned."""
    if not record_needed(policy) or first_seen is None or first_seen.failure is not None or result.refusal:
        return RecordChanges()
    listed = list(dict.fromkeys(d.customer_id for d in result.decisions if d.reason != "invalid_id"))
    if not listed:
        return RecordChanges()
    known = set(first_seen.times) | set(first_seen.unreadable)
    listed_set, when, etags = set(listed), seen_at(run, started), first_seen.etags
    return RecordChanges(
        add=tuple(first_seen_row(c, when) for c in listed if c not in known),
        rewrite=tuple((first_seen_row(c, when), etags[c]) for c in listed if c in first_seen.unreadable and c in etags),
        prune=tuple((c, etags[c]) for c in sorted(known - listed_set) if c in etags),
    )


# -- the selection -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    customer_id: str  # lower case when it is a GUID; otherwise a printable excerpt of what was listed
    company_name: str
    domain: str
    reason: str  # one of REASONS
    detail: str = ""

    @property
    def selected(self) -> bool:
        return self.reason == "selected"


@dataclass(frozen=True)
class Plan:
    listed: int  # items in the customer list (every one, valid or not)
    decisions: tuple[Decision, ...] = ()  # one per listed item, in the order listed; empty when refused
    refusal: str | None = None
    known: int | None = None  # customers in the first-seen record before this run (None: no minimum age)

    @property
    def selected(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.selected)

    @property
    def deferred(self) -> int:
        return sum(d.reason == "over_limit" for d in self.decisions)


def _settings_refusal(policy: SweepPolicy) -> str:
    return "the sweep's settings have problems, so this run selects and enqueues nothing: " + "; ".join(policy.problems)


def before_listing(policy: SweepPolicy) -> Outcome | None:
    """The run's outcome when it must not list the customers at all, else ``None``: ``off`` (any setting problem is
    in the report, and the run does not fail), or settings with problems (refused)."""
    if policy.mode == "off":
        return Outcome("off")
    if policy.problems:
        return Outcome("refused", error=_settings_refusal(policy))
    return None


def plan(
    items: list[Any],
    policy: SweepPolicy,
    protected_ids: frozenset[str] | set[str],
    run: RunTime,
    searches: Searches | None = None,
    first_seen: FirstSeen | None = None,
) -> Plan:
    """Decide, for every listed customer, whether this run selects it, and why (or why not). ``searches`` is what
    ``match_job(policy, items)`` found (needed whenever that job is not ``None``); ``first_seen`` is the record as
    this run read it (needed unless SWEEP_MIN_AGE_HOURS is 0)."""
    if policy.problems:
        return Plan(len(items), refusal=_settings_refusal(policy))
    if policy.patterns and not policy.tried:
        return Plan(
            len(items),
            refusal="the patterns were not tried on test texts (check_patterns), so this run selects nothing",
        )
    if len(items) > policy.sandbox_limit:
        return Plan(
            len(items),
            refusal=f"the partner lists more than SANDBOX_CUSTOMER_LIMIT={policy.sandbox_limit} customers "
            f"(at least {len(items)}), so this is not an integration sandbox (a production credential?); "
            "nothing is selected",
        )
    if policy.min_age_hours and (first_seen is None or first_seen.failure is not None):
        why = first_seen.failure if first_seen is not None and first_seen.failure else "it was not read"
        return Plan(
            len(items),
            refusal=f"the sweep's first-seen record cannot be read ({why}), so no customer's age is known and this "
            f"run selects nothing (SWEEP_MIN_AGE_HOURS={policy.min_age_hours})",
        )
    job = match_job(policy, items)
    if job is not None and (searches is None or not searches.usable_for(job)):
        why = searches.failure if searches is not None and searches.failure else "no results for this list"
        return Plan(
            len(items),
            refusal=f"matching the patterns against the {len(job.texts)} listed names and domains did not "
            f"finish ({why}); a pattern with nested repetition, such as (a+)+$, can take hours on a hostile name, so "
            "this run selects and enqueues nothing",
        )
    protected = frozenset(p.lower() for p in protected_ids if isinstance(p, str))  # never relies on config's lower case
    found = searches.found if job is not None and searches is not None else {}
    decisions: list[Decision] = []
    seen: set[str] = set()
    candidates: list[int] = []
    ages = _Ages(policy.min_age_hours, run, first_seen)
    for item in items:
        decision = _decide(item, policy, protected, seen, found, ages)
        if decision.reason == "selected":
            candidates.append(len(decisions))
        decisions.append(decision)
    # The same customers on a repeat of the same run, a different draw on each new run: by this run's correlation id
    # (uuid5 of "<run time>/<id>"), so customers that can never be deleted cannot fill every run.
    candidates.sort(key=lambda i: correlation_id(run, decisions[i].customer_id))
    for i in candidates[policy.max_per_run :]:
        d = decisions[i]
        decisions[i] = Decision(
            d.customer_id,
            d.company_name,
            d.domain,
            "over_limit",
            f"selected, but over SWEEP_MAX_PER_RUN={policy.max_per_run}: left for a later run",
        )
    known = len(first_seen.times) + len(first_seen.unreadable) if policy.min_age_hours and first_seen else None
    return Plan(len(items), tuple(decisions), known=known)


@dataclass(frozen=True)
class _Ages:
    """Whether a customer is old enough: by the runs' own times (a daily schedule means 24 hours, not 48)."""

    hours: int
    run: RunTime
    first_seen: FirstSeen | None

    def too_new(self, customer_id: str) -> str | None:
        """Why ``customer_id`` is too new, or ``None``."""
        if not self.hours:
            return None
        seen = self.first_seen.times.get(customer_id) if self.first_seen else None
        rule = f"it is selected once it was first seen SWEEP_MIN_AGE_HOURS={self.hours} before a run"
        if seen is None:
            return f"not seen by the sweep before this run; {rule}"
        age = self.run.moment - seen
        if age >= timedelta(hours=self.hours):
            return None
        if age < timedelta(0):
            return f"first seen at {iso(seen)}, after this run's time; {rule}"
        return f"first seen at {iso(seen)}, {age.total_seconds() / 3600:.1f} h before this run's time; {rule}"


def _decide(
    item: Any,
    policy: SweepPolicy,
    protected_ids: frozenset[str],
    seen: set[str],
    found: Mapping[str, frozenset[str]],
    ages: _Ages,
) -> Decision:
    profile = item.get("companyProfile") if isinstance(item, dict) else None
    profile = profile if isinstance(profile, dict) else {}
    name = _text(profile.get("companyName"))
    domain = _text(profile.get("domain"))
    raw_id = item.get("id") if isinstance(item, dict) else None
    if not is_guid(raw_id):
        return Decision(
            _printable(raw_id),
            name,
            domain,
            "invalid_id",
            "the id is not a GUID in the 8-4-4-4-12 form; never enqueued",
        )
    cid = raw_id.lower()
    tenant = profile.get("tenantId")
    if tenant is not None and (not isinstance(tenant, str) or tenant.lower() != cid):
        return Decision(cid, name, domain, "invalid_id", "companyProfile.tenantId differs from the id; never enqueued")
    if cid in seen:
        return Decision(cid, name, domain, "duplicate", "listed more than once; decided at its first listing")
    seen.add(cid)
    if cid in protected_ids:
        return Decision(cid, name, domain, "protected", "in PROTECTED_CUSTOMER_IDS")
    if len(name) > MAX_NAME_CHARS or len(domain) > MAX_NAME_CHARS:
        return Decision(cid, name, domain, "name_too_long", f"company name or domain over {MAX_NAME_CHARS} characters")
    if policy.include is None:
        return Decision(cid, name, domain, "not_matching", "SWEEP_INCLUDE is not set, so nothing is selected")
    if not (name in found[policy.include] or domain in found[policy.include]):
        return Decision(
            cid, name, domain, "not_matching", "SWEEP_INCLUDE matches neither the company name nor the domain"
        )
    if policy.exclude is not None and (name in found[policy.exclude] or domain in found[policy.exclude]):
        return Decision(cid, name, domain, "excluded", "SWEEP_EXCLUDE matches the company name or the domain")
    too_new = ages.too_new(cid)
    if too_new is not None:
        return Decision(cid, name, domain, "too_new", too_new)
    return Decision(cid, name, domain, "selected")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _printable(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)[:80]
    return text[:80].encode("unicode_escape").decode("ascii")


def request_text(run: RunTime, customer_id: str) -> str:
    """The deletion request for one selected customer: the public request format, as any producer writes it."""
    return deletion_request_text(customer_id, correlation_id(run, customer_id))


# -- the report --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Enqueued:
    customer_id: str
    correlation_id: str
    message_id: str


@dataclass
class RecordResult:
    """What the shell did to the first-seen record (``RecordChanges``), and the first failure if any: a failed write
    only makes customers look newer on a later run, never older, so it fails nothing."""

    table: str
    known: int | None = None  # rows read (None: not read)
    added: int = 0
    rewritten: int = 0
    pruned: int = 0
    error: str | None = None


@dataclass
class LedgerHousekeeping:
    """What the run pruned from the request ledger (finished rows older than LEDGER_RETENTION_DAYS)."""

    retention_days: int
    pruned: int = 0
    error: str | None = None


@dataclass
class Outcome:
    """What a run did: filled in by the shell, turned into the report here."""

    result: str  # off | reported | enqueued | refused | failed
    plan: Plan | None = None
    enqueued: list[Enqueued] = field(default_factory=list)
    error: str | None = None
    record: RecordResult | None = None
    ledger: LedgerHousekeeping | None = None


def _selection(policy: SweepPolicy, outcome: Outcome) -> str:
    """One sentence on what was selected and why not the rest, from counts: it survives any cut of ``excluded``."""
    p = outcome.plan
    if outcome.result == "off":
        return "nothing is listed or selected: SWEEP_MODE is off"
    if p is None or p.refusal:
        return f"nothing is selected: the run {'was refused' if outcome.result == 'refused' else 'failed'} (see error)"
    counts = Counter(d.reason for d in p.decisions)
    head = f"{counts['selected']} selected" if counts["selected"] else "nothing is selected"
    if policy.include is None:
        head += " (SWEEP_INCLUDE is not set, and without it nothing is ever selected)"
    others = ", ".join(f"{counts[r]} {r}" for r in REASONS if r != "selected" and counts[r])
    if not p.decisions:
        return head + "; no customer is listed"
    tail = ""
    if counts["too_new"] and p.known == 0:
        tail = (
            f" (the first-seen record was empty before this run, as on the first run after a deploy: every customer "
            f"is new to the sweep, and none is selected before SWEEP_MIN_AGE_HOURS={policy.min_age_hours} have "
            "passed)"
        )
    return head + "; " + (f"not selected: {others}" if others else "every listed customer") + tail


def _record(record: RecordResult | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "table": record.table,
        "partition": FIRST_SEEN_PARTITION,
        "known": record.known,
        "recorded": record.added + record.rewritten,
        "pruned": record.pruned,
        "error": record.error,
    }


def report_text(
    *,
    policy: SweepPolicy,
    run: RunTime,
    past_due: bool,
    started: datetime,
    finished: datetime,
    invocation_id: str,
    outcome: Outcome,
) -> str:
    """The run's report (Base64-encoded by the publisher): at most MAX_REPORT_BYTES, shortening names and then leaving
    out entries of not-selected customers (counted in ``excludedOmitted``) if it must."""
    p = outcome.plan
    selected = [
        {
            "customerTenantId": d.customer_id,
            "companyName": d.company_name,
            "domain": d.domain,
            "correlationId": correlation_id(run, d.customer_id),
        }
        for d in (p.selected if p else ())
    ]
    excluded = [
        {
            "customerTenantId": d.customer_id,
            "companyName": d.company_name,
            "reason": d.reason,
            **({"detail": d.detail} if d.detail else {}),
        }
        for d in (p.decisions if p else ())
        if not d.selected
    ]
    body: dict[str, Any] = {
        "schemaVersion": REPORT_SCHEMA_VERSION,
        "kind": "sweepReport",
        "runId": run_id(run),
        "mode": policy.mode,
        "trigger": run.trigger,
        "runTime": iso(run.moment),
        "scheduledTime": iso(run.moment) if run.trigger == "schedule" else None,
        "pastDue": past_due,
        "startedAt": iso(started),
        "finishedAt": iso(finished),
        "invocationId": invocation_id,
        "result": outcome.result,
        "capacity": {
            "listed": p.listed if p else None,
            "limit": policy.sandbox_limit or None,
            "free": policy.sandbox_limit - p.listed
            if p and policy.sandbox_limit and p.listed <= policy.sandbox_limit
            else None,
        },
        "selected": selected,
        "excluded": excluded,
        "deferred": p.deferred if p else 0,
        "enqueued": [
            {"customerTenantId": e.customer_id, "correlationId": e.correlation_id, "messageId": e.message_id}
            for e in outcome.enqueued
        ],
        "minAgeHours": policy.min_age_hours,
        "firstSeen": _record(outcome.record),
        "ledger": {
            "retentionDays": outcome.ledger.retention_days,
            "pruned": outcome.ledger.pruned,
            "error": outcome.ledger.error,
        }
        if outcome.ledger
        else None,
        "problems": list(policy.problems),
        "error": outcome.error or (p.refusal if p else None),
        "note": run.why,
        "selection": _selection(policy, outcome),
    }
    text = json.dumps(body, separators=(",", ":"))
    for cut in (MAX_NAME_CHARS, 64, 16, 0):
        if len(text.encode("utf-8")) <= MAX_REPORT_BYTES:
            return text
        for entry in (*body["selected"], *body["excluded"]):
            for key in ("companyName", "domain"):
                if key in entry and len(entry[key]) > cut:
                    entry[key] = entry[key][:cut] + "…"
        text = json.dumps(body, separators=(",", ":"))
    omitted = 0
    while len(text.encode("utf-8")) > MAX_REPORT_BYTES and body["excluded"]:
        body["excluded"].pop()
        omitted += 1
        body["excludedOmitted"] = omitted
        text = json.dumps(body, separators=(",", ":"))
    return text
