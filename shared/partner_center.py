"""Partner Center REST client: the few calls the deletion needs, with typed errors and bounded retries.

Every path segment is a validated GUID or order id (``shared.ids``); nothing read from a message or a response goes
into a URL unchecked. Bodies are decoded with a UTF-8 BOM tolerated. Each logical call gets a new ``MS-RequestId``
that its retries reuse; ``MS-CorrelationId`` is the deletion request's.

Retries stay inside the invocation's ``Budget``: no attempt starts after its work time, and the sleeps of all calls
of one invocation together stay within its waiting allowance. A wait that does not fit raises the typed error, and
the core continues the request on the poll queue instead (``shared.workflow``).
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypedDict
from urllib.parse import urlsplit

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception

from shared.budget import Budget
from shared.config import is_loopback_host
from shared.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    OutOfTimeError,
    PartnerCenterError,
    RefusedError,
    ThrottledError,
    TransientError,
    UnsafeIdError,
)
from shared.ids import is_etag, is_guid, is_order_id
from shared.pacing import Pacer

__all__ = [
    "RETRY_AFTER_MAX",
    "RETRY_AFTER_MIN",
    "PartnerCenterClient",
    "RetryPolicy",
    "TokenCredential",
    "decode_body",
    "error_from_response",
    "parse_retry_after",
]

log = logging.getLogger("customer_deletion.partner_center")

MAX_DESCRIPTION = 1024
MAX_PAGES = 200
#: Customers asked for per page of the customer list (the documented example's size; the server may send fewer).
CUSTOMERS_PAGE_SIZE = 40
RETRY_AFTER_MIN, RETRY_AFTER_MAX = 1.0, 900.0
_DELAY_SECONDS_RE = re.compile(r"\d{1,9}(?:\.\d{1,6})?")
_CONTINUATION_RE = re.compile(r"[\x21-\x7e]{1,4096}")
_NEXT_QUERY_RE = re.compile(r"[A-Za-z0-9=&_.~%+-]*")
#: The reason an Azure entitlement is cancelled with: the one value any example shows (reference section 3.5).
AZURE_CANCELLATION_REASON = "compromise"


class _Where(TypedDict):
    """Where an error happened: the keyword arguments every ``PartnerCenterError`` takes."""

    method: str
    path: str


class TokenCredential(Protocol):
    def get_token(self, *scopes: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of the in-process retries of one logical call."""

    max_attempts: int = 6
    max_total_seconds: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    connect_timeout: float = 5.0
    read_timeout: float = 30.0


def decode_body(content: bytes) -> Any:
    """JSON from a Partner Center body, tolerating the UTF-8 BOM it may start with. Empty body: ``None``."""
    if not content or not content.strip():
        return None
    return json.loads(content.decode("utf-8-sig"))


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as delay-seconds or an HTTP-date (RFC 9110), clamped to 1-900 s. ``None``: absent or unparseable.

    ``now`` is the moment an HTTP-date is measured from (the response's ``Date`` when it has one).
    """
    if value is None:
        return None
    text = value.strip()
    if _DELAY_SECONDS_RE.fullmatch(text):
        seconds = float(text)
    else:
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return _clamp_retry_after(seconds)


def _clamp_retry_after(seconds: float) -> float:
    return min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, seconds))


def _retry_after(resp: requests.Response) -> float | None:
    now = datetime.now(UTC)
    try:
        server_now = email.utils.parsedate_to_datetime(resp.headers.get("Date", ""))
        if server_now is not None:
            now = server_now if server_now.tzinfo else server_now.replace(tzinfo=UTC)
    except (TypeError, ValueError, IndexError, OverflowError):
        pass
    return parse_retry_after(resp.headers.get("Retry-After"), now)


def error_from_response(resp: requests.Response, method: str, path: str) -> PartnerCenterError:
    """Map an error response in any of the three documented body shapes to a typed error."""
    code: str | None = None
    description: str | None = None
    try:
        body = decode_body(resp.content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        body = None
    if isinstance(body, dict):
        raw_code = body.get("code", body.get("statusCode"))
        code = None if raw_code is None else str(raw_code)[:40]
        for key in ("description", "message", "errorMessageExtended"):
            if isinstance(body.get(key), str) and body[key].strip():
                description = body[key]
                break
    if description is None:
        text = resp.content[:MAX_DESCRIPTION].decode("utf-8-sig", errors="replace").strip()
        description = text or (resp.reason or None)
    if description:
        description = " ".join(description.split())[:MAX_DESCRIPTION]
    status = resp.status_code
    where = _Where(method=method, path=path)
    if status == 429:
        return ThrottledError(status, code, description, retry_after=_retry_after(resp), **where)
    if status == 408 or status >= 500:
        return TransientError(status, code, description, **where)
    if status == 401:
        return AuthenticationError(status, code, description, **where)
    if status == 404:
        return NotFoundError(status, code, description, **where)
    if status == 409:
        return ConflictError(status, code, description, **where)
    return RefusedError(status, code, description, **where)


def _segment(value: str, kind: str) -> str:
    """A URL path segment: ``kind`` is ``order`` (an order id) or an id that is a GUID (``customer``,
    ``subscription``, ``azure entitlement``)."""
    ok = is_order_id(value) if kind == "order" else is_guid(value)
    if not ok:
        raise UnsafeIdError(
            f"refusing to build a URL from a {kind} id that is not the documented shape: {str(value)[:80]!r}"
        )
    return value


class PartnerCenterClient:
    """The calls of a sandbox customer deletion. Build one per process; it is thread-safe (one session per thread)."""

    def __init__(
        self,
        base_url: str,
        credential: TokenCredential,
        scope: str,
        *,
        policy: RetryPolicy = RetryPolicy(),
        session_factory: Callable[[], requests.Session] = requests.Session,
        sleep: Callable[[float], None] = time.sleep,
        credential_factory: Callable[[], TokenCredential] | None = None,
        pacer: Pacer | None = None,
    ):
        parts = urlsplit(base_url)
        if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback_host(parts.hostname)):
            # Checked before any token is requested: a bearer token must never travel in clear text.
            raise ValueError(f"Partner Center base URL must be https (http only for loopback hosts): {base_url!r}")
        self._base = base_url.rstrip("/")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._credential = credential
        self._credential_factory = credential_factory
        self._credential_lock = threading.Lock()
        self._scope = scope
        self._policy = policy
        self._session_factory = session_factory
        self._sleep = sleep
        self._local = threading.local()
        self._pacer = pacer

    # -- the calls -------------------------------------------------------------------------------------------

    def get_customer(self, customer_id: str, *, correlation_id: str, budget: Budget | None = None) -> dict[str, Any]:
        path = f"/v1/customers/{_segment(customer_id, 'customer')}"
        return self._call("GET", path, correlation_id=correlation_id, budget=budget) or {}

    def list_entitlement_order_ids(
        self, customer_id: str, *, correlation_id: str, budget: Budget | None = None
    ) -> list[str]:
        """Every ``referenceOrder.id`` of the customer's entitlements (nested ones too), de-duplicated, in order."""
        seen: dict[str, None] = {}
        for item in self._entitlements(customer_id, correlation_id, budget):
            for order_id in _reference_order_ids(item):
                if not is_order_id(order_id):
                    raise UnsafeIdError(
                        f"entitlement names an order id that is not the documented shape: {str(order_id)[:80]!r}"
                    )
                seen.setdefault(order_id, None)
        return list(seen)

    def get_order(
        self, customer_id: str, order_id: str, *, correlation_id: str, budget: Budget | None = None
    ) -> dict[str, Any]:
        path = f"/v1/customers/{_segment(customer_id, 'customer')}/orders/{_segment(order_id, 'order')}"
        return self._call("GET", path, correlation_id=correlation_id, budget=budget) or {}

    def cancel_order(
        self, customer_id: str, order_id: str, *, correlation_id: str, budget: Budget | None = None
    ) -> dict[str, Any]:
        path = f"/v1/customers/{_segment(customer_id, 'customer')}/orders/{_segment(order_id, 'order')}"
        body = {"id": order_id, "status": "cancelled"}
        return self._call("PATCH", path, correlation_id=correlation_id, json_body=body, budget=budget) or {}

    def delete_customer(self, customer_id: str, *, correlation_id: str, budget: Budget | None = None) -> None:
        self._call(
            "DELETE", f"/v1/customers/{_segment(customer_id, 'customer')}", correlation_id=correlation_id, budget=budget
        )

    def list_customers(
        self, *, correlation_id: str, budget: Budget | None = None, stop_after: int | None = None
    ) -> list[Any]:
        """Every item of the partner's customer list, all pages (``links.next`` + ``MS-ContinuationToken``), as
        listed: items are not validated here (the sweep's core does that). With ``stop_after``, paging stops as soon
        as more than that many items were listed (the caller refuses such a list anyway). Any failure raises: a
        partial list is never returned."""
        items: list[Any] = []
        for page in self._pages("/v1/customers", f"size={CUSTOMERS_PAGE_SIZE}", "customers", correlation_id, budget):
            items.extend(page)
            if stop_after is not None and len(items) > stop_after:
                break
        return items

    # -- subscriptions (issue 16; partner-center-subscriptions.md section 3) --------------------------------------

    def list_subscriptions(
        self, customer_id: str, *, correlation_id: str, budget: Budget | None = None
    ) -> list[dict[str, Any]]:
        """Every subscription of the customer, as listed (items that are not objects are dropped; the core checks
        each one). No paging is documented; ``links.next`` is followed anyway if a page has one."""
        collection = f"/v1/customers/{_segment(customer_id, 'customer')}/subscriptions"
        return list(self._objects(collection, "subscriptions", correlation_id, budget))

    def get_subscription(
        self, customer_id: str, subscription_id: str, *, correlation_id: str, budget: Budget | None = None
    ) -> dict[str, Any]:
        return (
            self._call(
                "GET",
                self._subscription_path(customer_id, subscription_id),
                correlation_id=correlation_id,
                budget=budget,
            )
            or {}
        )

    def patch_subscription(
        self,
        customer_id: str,
        subscription_id: str,
        subscription: dict[str, Any],
        *,
        etag: str | None,
        correlation_id: str,
        budget: Budget | None = None,
    ) -> dict[str, Any]:
        """PATCH the full subscription object (as read, its status changed by the caller), with ``If-Match`` when
        there is an etag. The answer is returned as is (a 202 has no body) and proves nothing: the caller reads the
        subscription again. A ``Location`` header is never followed."""
        path = self._subscription_path(customer_id, subscription_id)
        headers = {}
        if etag is not None:
            if not is_etag(etag):
                raise UnsafeIdError(f"refusing to send an etag that is not printable ASCII: {etag[:40]!r}")
            headers["If-Match"] = f'"{etag}"'
        return (
            self._call(
                "PATCH",
                path,
                correlation_id=correlation_id,
                json_body=subscription,
                extra_headers=headers,
                budget=budget,
            )
            or {}
        )

    def list_azure_entitlements(
        self, customer_id: str, plan_id: str, *, correlation_id: str, budget: Budget | None = None
    ) -> list[dict[str, Any]]:
        """The Azure subscriptions under an Azure plan (``azureEntitlements``), all pages if a page links on."""
        collection = self._subscription_path(customer_id, plan_id) + "/azureEntitlements"
        return list(self._objects(collection, "azureEntitlements", correlation_id, budget))

    def cancel_azure_entitlement(
        self, customer_id: str, plan_id: str, entitlement_id: str, *, correlation_id: str, budget: Budget | None = None
    ) -> dict[str, Any]:
        """Ask for an Azure subscription under a plan to be cancelled. 200 (still active) and 202 (no body) both mean
        "asked"; only a later read that says inactive counts."""
        path = (
            self._subscription_path(customer_id, plan_id)
            + f"/azureEntitlements/{_segment(entitlement_id, 'azure entitlement')}/cancel"
        )
        body = {"cancellationReason": AZURE_CANCELLATION_REASON}
        return self._call("POST", path, correlation_id=correlation_id, json_body=body, budget=budget) or {}

    @staticmethod
    def _subscription_path(customer_id: str, subscription_id: str) -> str:
        cid, sid = _segment(customer_id, "customer"), _segment(subscription_id, "subscription")
        return f"/v1/customers/{cid}/subscriptions/{sid}"

    # -- paging ----------------------------------------------------------------------------------------------

    def _entitlements(self, customer_id: str, correlation_id: str, budget: Budget | None) -> Iterator[dict[str, Any]]:
        collection = f"/v1/customers/{_segment(customer_id, 'customer')}/entitlements"
        return self._objects(collection, "entitlements", correlation_id, budget)

    def _objects(
        self, collection: str, what: str, correlation_id: str, budget: Budget | None
    ) -> Iterator[dict[str, Any]]:
        """The items of every page of a collection that are objects (anything else is dropped here)."""
        for page in self._pages(collection, "", what, correlation_id, budget):
            yield from (i for i in page if isinstance(i, dict))

    def _pages(
        self, collection: str, query: str, what: str, correlation_id: str, budget: Budget | None
    ) -> Iterator[list[Any]]:
        """The ``items`` of each page of a collection, following ``links.next``; a malformed page, a page repeated,
        or more than MAX_PAGES pages raise ``TransientError``, a ``links.next`` elsewhere raises ``UnsafeIdError``."""
        path = collection + (f"?{query}" if query else "")
        headers: dict[str, str] = {}
        visited: set[tuple[str, str]] = set()
        for _ in range(MAX_PAGES):
            page = self._call("GET", path, correlation_id=correlation_id, extra_headers=headers, budget=budget) or {}
            items = page.get("items") if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise TransientError(200, None, f"{what} response has no 'items' list", method="GET", path=path)
            yield items
            nxt = (page.get("links") or {}).get("next") if isinstance(page.get("links"), dict) else None
            if not nxt:
                return
            path, headers = self._next_link(nxt, collection, what)
            if budget is not None and not budget.may_start_call():
                raise OutOfTimeError(None, None, f"no work time left for the next {what} page", method="GET", path=path)
            key = (path, headers.get("MS-ContinuationToken", ""))
            if key in visited:
                raise TransientError(200, None, f"{what} paging repeats a page", method="GET", path=path)
            visited.add(key)
        raise TransientError(200, None, f"{what} paging exceeded {MAX_PAGES} pages", method="GET", path=path)

    def _next_link(self, link: Any, collection: str, what: str) -> tuple[str, dict[str, str]]:
        """Validate a ``links.next`` from a response; it may only page the same collection (``collection``)."""
        uri = link.get("uri") if isinstance(link, dict) else None
        if not isinstance(uri, str):
            raise UnsafeIdError(f"{what} links.next has no uri")
        parts = urlsplit(uri)
        if (parts.scheme or parts.netloc) and f"{parts.scheme}://{parts.netloc}" != self._origin:
            raise UnsafeIdError(f"{what} links.next points to another host: {uri[:120]!r}")
        path = parts.path if parts.path.startswith("/v1/") else "/v1" + parts.path
        if path.rstrip("/").lower() != collection.lower() or parts.fragment:
            raise UnsafeIdError(f"{what} links.next is not the same collection ({collection}): {uri[:120]!r}")
        if not _NEXT_QUERY_RE.fullmatch(parts.query):
            raise UnsafeIdError(f"{what} links.next has an unexpected query: {uri[:120]!r}")
        headers: dict[str, str] = {}
        for header in link.get("headers") or []:
            if not isinstance(header, dict):
                continue
            if str(header.get("key", "")).lower() == "ms-continuationtoken":
                value = header.get("value")
                if not isinstance(value, str) or not _CONTINUATION_RE.fullmatch(value):
                    raise UnsafeIdError(f"{what} links.next has a malformed MS-ContinuationToken")
                headers["MS-ContinuationToken"] = value
        return collection + (f"?{parts.query}" if parts.query else ""), headers

    # -- transport -------------------------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._session_factory()
            self._local.session = session
        return session

    def _call(
        self,
        method: str,
        path: str,
        *,
        correlation_id: str,
        json_body: Any = None,
        extra_headers: dict[str, str] | None = None,
        budget: Budget | None = None,
    ) -> Any:
        request_id = str(uuid.uuid4())  # one per logical call, the same on its retries
        budget = budget or Budget(float("inf"), self._policy.max_total_seconds)
        try:
            return self._send(method, path, request_id, correlation_id, json_body, extra_headers or {}, budget)
        except AuthenticationError:
            if self._credential_factory is None:
                raise
        # The cached token may have been revoked: a new credential (empty cache) fetches a fresh one, once.
        if not budget.may_start_call():
            raise OutOfTimeError(None, None, "no work time left to retry after a 401", method=method, path=path)
        log.warning(
            "%s %s answered 401: renewing the credential and retrying once (request %s)", method, path, request_id
        )
        with self._credential_lock:
            self._credential = self._credential_factory()
        return self._send(method, path, request_id, correlation_id, json_body, extra_headers or {}, budget)

    def _send(
        self,
        method: str,
        path: str,
        request_id: str,
        correlation_id: str,
        json_body: Any,
        extra: dict[str, str],
        budget: Budget,
    ) -> Any:
        """One logical call with bounded retries: 429 waits its Retry-After, 408/5xx/connection failures back off."""
        policy = self._policy
        planned: dict[int, float | None] = {}

        def delay(state: RetryCallState) -> float | None:
            """The sleep after this attempt, once per attempt (tenacity asks for stop and wait in either order)."""
            if state.attempt_number not in planned:
                exc = state.outcome.exception() if state.outcome else None
                if isinstance(exc, ThrottledError):
                    planned[state.attempt_number] = exc.retry_after  # None: nothing to wait for in-process
                else:
                    ceiling = min(policy.backoff_max, policy.backoff_initial * (2 ** (state.attempt_number - 1)))
                    planned[state.attempt_number] = random.uniform(0, ceiling)
            return planned[state.attempt_number]

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= policy.max_attempts or not budget.may_start_call():
                return True
            seconds = delay(state)
            # A wait that does not fit is not slept through: the request continues on the poll queue.
            return seconds is None or not budget.may_wait(seconds)

        def sleep(seconds: float) -> None:
            budget.record_wait(seconds)
            exc = last["exc"]
            log.warning(
                "retrying %s %s after %s (request %s, correlation %s, sleeping %.1fs)",
                method,
                path,
                exc,
                request_id,
                correlation_id,
                seconds,
            )
            self._sleep(seconds)

        last: dict[str, Any] = {"exc": None}

        def attempt() -> Any:
            try:
                if self._pacer is not None:
                    wait = self._pacer.acquire(budget)
                    if wait is not None:  # no slot within this invocation's waiting allowance: continue later
                        raise ThrottledError(
                            None,
                            None,
                            f"paced: this instance has used its {self._pacer.per_minute} calls per "
                            f"minute (PARTNER_CENTER_CALLS_PER_MINUTE); the next slot frees in {wait:.1f}s",
                            method=method,
                            path=path,
                            retry_after=_clamp_retry_after(wait),
                        )
                return self._attempt(method, path, request_id, correlation_id, json_body, extra)
            except (TransientError, ThrottledError) as exc:
                last["exc"] = exc
                raise

        retrying = Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, (TransientError, ThrottledError))),
            stop=stop,
            wait=lambda state: delay(state) or 0.0,
            sleep=sleep,
            reraise=True,
        )
        return retrying(attempt)

    def _attempt(
        self, method: str, path: str, request_id: str, correlation_id: str, json_body: Any, extra: dict[str, str]
    ) -> Any:
        try:
            token = self._credential.get_token(self._scope).token
        except Exception as exc:  # azure-identity raises ClientAuthenticationError / ServiceRequestError
            raise TransientError(
                None, None, f"could not obtain a token: {type(exc).__name__}", method=method, path=path
            ) from exc
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "MS-RequestId": request_id,
            "MS-CorrelationId": correlation_id,
            **extra,
        }
        data = None
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(json_body).encode("utf-8")
        try:
            resp = self._session().request(
                method,
                self._base + path,
                headers=headers,
                data=data,
                timeout=(self._policy.connect_timeout, self._policy.read_timeout),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise TransientError(
                None, None, f"{type(exc).__name__} talking to Partner Center", method=method, path=path
            ) from exc
        if 200 <= resp.status_code < 300:
            try:
                return decode_body(resp.content)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise TransientError(
                    resp.status_code, None, "response body is not JSON", method=method, path=path
                ) from exc
        if 300 <= resp.status_code < 400:
            raise RefusedError(resp.status_code, None, "unexpected redirect (not followed)", method=method, path=path)
        error = error_from_response(resp, method, path)
        if isinstance(error, ThrottledError) and self._pacer is not None:
            # Honoured by every thread of the process, not only by this call's retry.
            self._pacer.hold_off(error.retry_after if error.retry_after is not None else RETRY_AFTER_MIN)
        raise error


def _reference_order_ids(entitlement: dict[str, Any]) -> Iterator[Any]:
    """``referenceOrder.id`` of an entitlement and of its nested
    ``includedEntitlements`` (iteratively: no depth limit)."""
    stack = [entitlement]
    while stack:
        item = stack.pop()
        ref = item.get("referenceOrder")
        if isinstance(ref, dict) and ref.get("id") is not None:
            yield ref.get("id")
        nested = item.get("includedEntitlements")
        if isinstance(nested, list):
            stack.extend(reversed([n for n in nested if isinstance(n, dict)]))
