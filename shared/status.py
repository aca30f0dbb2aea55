"""The status API's pure core: which requests a ``GET /api/deletions...`` asks for, and the answer, from ledger rows.

``deletion_status`` (an HTTP trigger, ``authLevel: function``, GET only) calls ``shared.app.run_deletion_status``,
which reads the rows this module asks for and sends what ``answer`` returns. It makes no Partner Center call.

* ``GET /api/deletions/{correlationId}``: the requests with that correlation id (a redrive shares it), newest first.
* ``GET /api/deletions?customerTenantId=<guid>``: the same, for one customer.

At most ``MAX_RESULTS`` requests, each in the outcome event's shape: the stored event once decided, else the same
fields with ``outcome: null``, plus ``stage`` and ``nextStepAt``. A malformed id, an unknown parameter or a repeated
one is a 400 whose message never repeats the raw input (names are quoted, escaped and cut); an unknown id is a 404.
The function key may come as the ``code`` query parameter, as in the portal's function URL: it is not unknown.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from shared.ids import is_guid

__all__ = ["MAX_RESULTS", "ByCorrelation", "ByCustomer", "Reply", "answer", "parse_query", "unavailable"]

MAX_RESULTS = 20
#: Query parameters the API reads; ``code`` is the function key, read by the host.
PARAMETERS = frozenset({"customerTenantId", "code"})
_HEADERS = {"Content-Type": "application/json; charset=utf-8", "X-Content-Type-Options": "nosniff"}


@dataclass(frozen=True)
class ByCorrelation:
    correlation_id: str  # lower case


@dataclass(frozen=True)
class ByCustomer:
    customer_id: str  # lower case


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]

    @property
    def text(self) -> str:
        """JSON, ASCII only, with ``<``, ``>`` and ``&`` escaped too: nothing a caller sent comes back as markup."""
        text = json.dumps(self.body, ensure_ascii=True, separators=(",", ":"))
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")

    @property
    def headers(self) -> dict[str, str]:
        return dict(_HEADERS)


def _shown(text: str) -> str:
    """A caller's text in a message: quoted, escaped, at most 40 characters."""
    cut = text[:40] + ("…" if len(text) > 40 else "")
    return json.dumps(cut, ensure_ascii=True)


def _bad(message: str) -> Reply:
    return Reply(400, {"error": message})


def parse_query(route_params: Mapping[str, str | None], query_string: str) -> ByCorrelation | ByCustomer | Reply:
    """The request's question, or a 400. ``query_string`` is the URL's raw query (``HttpRequest.params`` keeps one
    value per name, so a repeated parameter would go unseen)."""
    try:
        pairs = parse_qsl(query_string, keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except ValueError:
        return _bad("too many query parameters")
    counts = Counter(name for name, _ in pairs)
    unknown = sorted(name for name in counts if name not in PARAMETERS)
    if unknown:
        return _bad(
            f"unknown query parameter {_shown(unknown[0])}: the only one is customerTenantId (and code, the key)"
        )
    repeated = sorted(name for name, n in counts.items() if n > 1)
    if repeated:
        return _bad(f"query parameter {_shown(repeated[0])} is given more than once")
    values = dict(pairs)
    correlation = route_params.get("correlationId") or None
    customer = values.get("customerTenantId")
    if correlation is not None and customer is not None:
        return _bad("ask by correlation id (/api/deletions/{correlationId}) or by customerTenantId, not both")
    if correlation is not None:
        if not is_guid(correlation):
            return _bad("the correlation id must be a GUID (8-4-4-4-12 hexadecimal digits)")
        return ByCorrelation(correlation.lower())
    if customer is not None:
        if not is_guid(customer):
            return _bad("customerTenantId must be a GUID (8-4-4-4-12 hexadecimal digits)")
        return ByCustomer(customer.lower())
    return _bad("give a correlation id (/api/deletions/{correlationId}) or ?customerTenantId=<guid>")


def _entry(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """A request row as the API shows it; ``None`` for a row that is not a request's (the sweep's record)."""
    if row.get("schemaVersion") != 1 or not is_guid(row.get("correlationId")) or not is_guid(row.get("RowKey")):
        return None
    event = row.get("event")
    if isinstance(event, str) and isinstance(row.get("event2", ""), str):
        event += row.get("event2", "")
        try:
            decided = json.loads(event)
        except ValueError:
            decided = None
        if isinstance(decided, dict):
            return {**decided, "stage": "finished", "nextStepAt": None}
    return {
        "schemaVersion": 1,
        "eventId": row.get("RowKey"),
        "customerTenantId": row.get("customerTenantId"),
        "correlationId": row.get("correlationId"),
        "outcome": None,
        "orders": [],
        "subscriptions": [],
        "pollAttempts": row.get("hop") if isinstance(row.get("hop"), int) else 0,
        "detail": f"in progress: stage {row.get('stage')!s}",
        "requestedAt": row.get("requestedAt"),
        "finishedAt": None,
        "dryRun": row.get("dryRun") is True,
        "stage": row.get("stage"),
        "nextStepAt": row.get("nextStepAt"),
    }


def answer(question: ByCorrelation | ByCustomer, rows: Iterable[Mapping[str, Any]]) -> Reply:
    """The requests the rows hold for ``question``, newest first (by ``requestedAt``), at most MAX_RESULTS."""
    entries = []
    for row in rows:
        entry = _entry(row)
        if entry is None:
            continue
        if isinstance(question, ByCorrelation) and entry.get("correlationId") != question.correlation_id:
            continue
        if isinstance(question, ByCustomer) and row.get("PartitionKey") != question.customer_id:
            continue
        entries.append(entry)
    if not entries:
        what = "correlation id" if isinstance(question, ByCorrelation) else "customer"
        return Reply(404, {"error": f"no deletion request is recorded for this {what}"})
    entries.sort(key=lambda e: (str(e.get("requestedAt") or ""), str(e.get("eventId"))), reverse=True)
    return Reply(200, {"requests": entries[:MAX_RESULTS], "more": len(entries) > MAX_RESULTS})


def unavailable() -> Reply:
    return Reply(503, {"error": "the request ledger cannot be read right now; try again in a minute"})
