"""Microsoft's "delete a customer from the Tip integration sandbox" loop, ported to plain ``requests``: the baseline
the benchmark runs side by side with our app against the Partner Center emulator.

    python -m tools.seed_loop --customer <customer-tenant-id> --settings-json settings.json \
        [--interval 5] [--timeout 3600]

``settings.json`` holds the dict of ``tools.devenv.Emulator.app_settings()`` (``PARTNER_CENTER_BASE_URL``,
``PARTNER_CENTER_AUTHORITY_HOST``, ``PARTNER_CENTER_TENANT_ID``, ``PARTNER_CENTER_CLIENT_ID``,
``PARTNER_CENTER_CLIENT_SECRET``, ``REQUESTS_CA_BUNDLE``). On success it prints the result of ``run`` as one JSON line
on stdout and exits 0; on any HTTP error, a refused id or the timeout it prints the reason on stderr and exits 1.

Source of the algorithm
-----------------------
The C# example of the doc page "Delete a customer account from the integration sandbox"
(MicrosoftDocs partner-center-sdk, ``develop/delete-a-customer-account-from-the-integration-sandbox.md``), which
names its sample class ``DeleteCustomerFromTipAccount.cs`` (PartnerSDK.FeatureSamples). The class files stored in
microsoft/Partner-Center-DotNet-Samples (``sdk/SdkSamples/Customers/DeleteCustomerFromTipAccount.cs``) and
microsoft/partner-center-sdk-for-dotNET (``Source/PartnerSdk.FeatureSamples/Features/Customers/``) only call
``Customers.ById(id).Delete()``; the cancel-and-poll loop exists only in the doc's snippet. It does, with app-only
Tip credentials::

    entitlements = Customers.ById(c).Entitlements.Get()           // one GET, no paging
    foreach entitlement: order = Orders.ById(entitlement.ReferenceOrder.Id).Get()
                         order.Status = "Cancelled"; Orders.ById(order.Id).Patch(order)
    bool proceed = true
    do { foreach entitlement: order = Orders.ById(entitlement.ReferenceOrder.Id).Get()
                              if (!order.Status.Equals("Cancelled", OrdinalIgnoreCase)) proceed = false
         Thread.Sleep(5000) } while (proceed == false)
    Customers.ById(c).Delete()

What this port keeps: one GET of the entitlements, with no paging and only the top-level items' ``referenceOrder.id``
(nested ``includedEntitlements`` are ignored, as ``foreach`` over the collection ignores them). Per entitlement there
is a GET of the order, then a PATCH of that whole order with its status set. There is no de-duplication, so an order
named by several entitlements is fetched, PATCHed and polled once per entitlement. Each pass polls every
entitlement's order by id, compares the status case-insensitively and only then DELETEs the customer.

Where it differs, on purpose:

* ``proceed`` is reset at the start of every pass, as the issue spec asks. The published loop never sets it back to
  true, so once one order was still pending on a pass it loops forever.
* It sleeps ``interval`` only when an order is not cancelled yet, as the spec says. The published loop also sleeps
  once after the pass that found every order cancelled, i.e. always before the DELETE. ``sleep_after_last_pass=True``
  (CLI ``--sleep-after-last-pass``) restores that.
* The PATCH sends ``"status": "cancelled"`` (the wire casing, reference §0); the snippet sets ``"Cancelled"``.
* There is an overall ``timeout`` (the snippet has none) and ``TimeoutError`` when it passes.
* The customer id must be a GUID, the tenant a GUID or domain name, and order ids the documented shape, all checked
  before they go into a URL (the SDK only checks for empty strings).
* The token: ``POST {authority}/{tenant}/oauth2/v2.0/token`` with ``grant_type=client_credentials`` and scope
  ``https://api.partnercenter.microsoft.com/.default``. That is the same token endpoint and scope our app asks via
  azure-identity (``shared.auth``), without MSAL's openid-configuration discovery GET. The SDK's
  ``ApplicationPartnerCredentials`` used the legacy graph.windows.net resource instead. The token is fetched again
  only when it is within 5 minutes of expiry.
* No retries at all. The SDK retries 5xx, 408 and transport errors up to 3 times with back-off (0.5, 1.5, 3.5 s).
  Here any non-2xx answer or transport error ends the run with ``SeedLoopError``, CLI exit code 1.

Headers as the SDK sends them: ``Authorization``, ``Accept: application/json``, ``X-Locale: en-US``, a new
``MS-RequestId`` per call and one ``MS-CorrelationId`` per run. Bodies are decoded with a UTF-8 BOM tolerated.
"""

from __future__ import annotations

import time

_ENTRY = time.time()  # the first statement the module executes: the CLI's fallback start time (see process_start_time)

# Every import comes after the timestamp on purpose (E402 is off for this
# file, see pyproject.toml); requests is imported lazily in run().
import argparse
import contextlib
import ipaddress
import json
import os
import re
import sys
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

__all__ = ["DEFAULT_SCOPE", "SeedLoopError", "main", "process_start_time", "run"]

DEFAULT_SCOPE = "https://api.partnercenter.microsoft.com/.default"  # shared.config DEFAULTS["PARTNER_CENTER_SCOPE"]
GUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")  # as shared.ids
ORDER_ID_RE = re.compile(r"[A-Za-z0-9_-]{33}")  # as shared.ids (plus GUID ids of legacy license orders)
TENANT_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")  # a GUID or a domain name
TIMEOUTS = (10.0, 100.0)  # connect, read; 100 s is .NET HttpClient's default timeout, which the SDK keeps
TOKEN_MARGIN = 300.0  # fetch a new token when the cached one expires within this many seconds
MAX_ERROR_TEXT = 500


class SeedLoopError(RuntimeError):
    """An HTTP error or transport failure. No retries are made (see the module docstring)."""

    def __init__(self, method: str, path: str, status: int | None, text: str):
        self.method, self.path, self.status = method, path, status
        super().__init__(f"{method} {path} -> {status if status is not None else 'no answer'}: {text}")


def process_start_time() -> tuple[float, str]:
    """Unix time at which this process started, and where that came from.

    ``"proc"``: from ``/proc/self/stat`` field 22 (``starttime``, clock ticks after boot) against ``/proc/uptime``:
    ``time.time() - (uptime - starttime / CLK_TCK)``. Both have 10 ms resolution, so it is accurate to about 20 ms,
    and it includes the interpreter's start-up and imports. ``"entry"``: ``/proc`` is unavailable or gives an
    implausible value (in the future, or more than 10 minutes before this module was loaded); the time this module
    started executing is used instead.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()  # the command name may contain spaces and parentheses
        start_ticks = int(fields[19])  # field 22; fields[0] is field 3 (state)
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        started = time.time() - (uptime - start_ticks / ticks)
    except (OSError, ValueError, IndexError, AttributeError):
        return _ENTRY, "entry"
    if not (_ENTRY - 600.0 <= started <= _ENTRY + 0.05):
        return _ENTRY, "entry"
    return started, "proc"


def _check_base(url: str, what: str) -> str:
    parts = urlsplit(url)
    loopback = False
    with contextlib.suppress(ValueError):
        loopback = parts.hostname == "localhost" or ipaddress.ip_address(parts.hostname or "").is_loopback
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError(f"{what} must be https (http only for loopback hosts): {url!r}")
    return url.rstrip("/")


def _decode(content: bytes) -> Any:
    if not content or not content.strip():
        return None
    return json.loads(content.decode("utf-8-sig"))


def run(
    customer_id: str,
    *,
    base_url: str,
    authority_host: str,
    tenant_id: str,
    client_id: str,
    client_secret: str,
    ca: str,
    interval: float = 5.0,
    timeout: float = 3600,
    scope: str = DEFAULT_SCOPE,
    started: float | None = None,
    sleep_after_last_pass: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Cancel the customer's orders the sample's way, poll until all read cancelled, then DELETE the customer.

    Returns ``{"customer", "started", "deletedAt", "deleteStatus", "calls": {"GET", "PATCH", "DELETE"}, "passes",
    "wall", "tokenRequests"}``. ``calls`` counts Partner Center API requests sent, failed ones included. Token
    requests are counted in ``tokenRequests``. ``started`` is the given value (the CLI passes the process start),
    else the time this function was entered. ``deletedAt`` is when the DELETE's answer arrived. ``wall`` is the
    return time minus ``started``. ``passes`` is the number of polling passes.

    Raises ``ValueError`` for an id or URL that is refused before any request, ``SeedLoopError`` on the first
    non-2xx answer or transport error (no retries), and ``TimeoutError`` when the orders are not all cancelled
    within ``timeout`` seconds of entry.
    """
    entered = time.time()
    started = entered if started is None else started
    t0 = time.monotonic()
    if not isinstance(customer_id, str) or not GUID_RE.fullmatch(customer_id):
        raise ValueError(f"customer id must be a GUID (8-4-4-4-12 hex): {str(customer_id)[:80]!r}")
    if not isinstance(tenant_id, str) or not TENANT_RE.fullmatch(tenant_id):
        raise ValueError(f"tenant id must be a GUID or a domain name: {str(tenant_id)[:80]!r}")
    base = _check_base(base_url, "base URL")
    authority = _check_base(authority_host, "authority host")

    import requests  # lazily: not part of the measured start-up before the first statement

    session = requests.Session()
    session.trust_env = False  # else a machine-wide REQUESTS_CA_BUNDLE or proxy setting would win over ``ca``
    verify: Any = ca or True
    correlation_id = str(uuid.uuid4())  # one per run, as the SDK's partner operations context
    calls = {"GET": 0, "PATCH": 0, "DELETE": 0}
    token: dict[str, Any] = {"value": None, "expires": 0.0, "requests": 0}

    def access_token() -> str:
        if token["value"] is not None and time.monotonic() < token["expires"] - TOKEN_MARGIN:
            return token["value"]
        path = f"/{tenant_id}/oauth2/v2.0/token"
        token["requests"] += 1
        try:
            resp = session.post(
                authority + path,
                data={
                    "grant_type": "client_credentials",
                    "client_id": client_id,
                    "client_secret": client_secret,
                    "scope": scope,
                },
                verify=verify,
                timeout=TIMEOUTS,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise SeedLoopError("POST", path, None, type(exc).__name__) from exc
        if resp.status_code != 200:
            raise SeedLoopError("POST", path, resp.status_code, resp.text[:MAX_ERROR_TEXT])
        body = _decode(resp.content)
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise SeedLoopError("POST", path, resp.status_code, "token response has no access_token")
        token["value"] = body["access_token"]
        token["expires"] = time.monotonic() + float(body.get("expires_in") or 3600)  # v1 answers a string
        return token["value"]

    def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {
            "Authorization": f"Bearer {access_token()}",
            "Accept": "application/json",
            "X-Locale": "en-US",
            "MS-RequestId": str(uuid.uuid4()),
            "MS-CorrelationId": correlation_id,
        }
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode("utf-8")
        calls[method] += 1
        try:
            resp = session.request(
                method, base + path, headers=headers, data=data, verify=verify, timeout=TIMEOUTS, allow_redirects=False
            )
        except requests.RequestException as exc:
            raise SeedLoopError(method, path, None, type(exc).__name__) from exc
        if not 200 <= resp.status_code < 300:
            raise SeedLoopError(
                method, path, resp.status_code, resp.content[:MAX_ERROR_TEXT].decode("utf-8-sig", errors="replace")
            )
        try:
            return resp.status_code, _decode(resp.content)
        except ValueError as exc:
            raise SeedLoopError(method, path, resp.status_code, "response body is not JSON") from exc

    def order_path(order_id: Any) -> str:
        if not isinstance(order_id, str) or not (ORDER_ID_RE.fullmatch(order_id) or GUID_RE.fullmatch(order_id)):
            raise ValueError(f"entitlement names an order id that is not the documented shape: {str(order_id)[:80]!r}")
        return f"/v1/customers/{customer_id}/orders/{order_id}"

    try:
        # Entitlements.Get(): one GET, the first page only; the sample walks the top-level items.
        _, page = call("GET", f"/v1/customers/{customer_id}/entitlements")
        items = page.get("items") if isinstance(page, dict) else None
        if not isinstance(items, list):
            raise SeedLoopError("GET", f"/v1/customers/{customer_id}/entitlements", 200, "no 'items' list")
        # ``entitlement.ReferenceOrder.Id`` of each entitlement, duplicates kept: the sample GETs and PATCHes (and
        # later polls) once per entitlement, not once per distinct order. We mirror that.
        paths = [order_path((e.get("referenceOrder") or {}).get("id") if isinstance(e, dict) else None) for e in items]

        # Cancel all orders: GET the order, set its status, PATCH the whole order back.
        for path in paths:
            _, order = call("GET", path)
            order = dict(order) if isinstance(order, dict) else {}
            order["status"] = "cancelled"  # the sample writes "Cancelled"; the wire casing is lowercase
            call("PATCH", path, order)

        # Keep polling until the status of every order is cancelled.
        passes = 0
        while True:
            passes += 1
            proceed = (
                True  # reset on every pass: the published loop never does, so one pending read made it loop forever
            )
            for path in paths:
                _, order = call("GET", path)
                order_status = order.get("status") if isinstance(order, dict) else None
                if not isinstance(order_status, str) or order_status.lower() != "cancelled":
                    proceed = False
            if proceed and not sleep_after_last_pass:
                break
            if time.monotonic() - t0 + interval > timeout:
                if proceed:
                    break  # the sample's trailing sleep is not worth a timeout
                raise TimeoutError(
                    f"orders of customer {customer_id} not all cancelled within {timeout} s ({passes} passes)"
                )
            sleep(interval)
            if proceed:
                break

        delete_status, _ = call("DELETE", f"/v1/customers/{customer_id}")
        deleted_at = time.time()
    finally:
        session.close()
    return {
        "customer": customer_id,
        "started": started,
        "deletedAt": deleted_at,
        "deleteStatus": delete_status,
        "calls": calls,
        "tokenRequests": token["requests"],
        "passes": passes,
        "wall": time.time() - started,
    }


def main(argv: list[str] | None = None, *, started: float | None = None, started_source: str = "caller") -> int:
    """The CLI. ``started`` defaults to ``process_start_time()``; the result gains ``startedSource`` (``proc``,
    ``entry`` or ``caller``), which says where ``started`` came from."""
    parser = argparse.ArgumentParser(prog="python -m tools.seed_loop", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--customer", required=True, help="the customer tenant id (a GUID)")
    parser.add_argument("--settings-json", required=True, help="JSON file with the dict of Emulator.app_settings()")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between polling passes (default 5)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds (default 3600)")
    parser.add_argument(
        "--sleep-after-last-pass",
        action="store_true",
        help="also sleep after the pass that found every order cancelled, as the published loop does",
    )
    args = parser.parse_args(argv)
    if started is None:
        started, started_source = process_start_time()
    try:
        with open(args.settings_json, encoding="utf-8") as f:
            settings = json.load(f)
        result = run(
            args.customer,
            base_url=settings["PARTNER_CENTER_BASE_URL"],
            authority_host=settings["PARTNER_CENTER_AUTHORITY_HOST"],
            tenant_id=settings["PARTNER_CENTER_TENANT_ID"],
            client_id=settings["PARTNER_CENTER_CLIENT_ID"],
            client_secret=settings["PARTNER_CENTER_CLIENT_SECRET"],
            ca=settings.get("REQUESTS_CA_BUNDLE") or "",
            scope=settings.get("PARTNER_CENTER_SCOPE") or DEFAULT_SCOPE,
            interval=args.interval,
            timeout=args.timeout,
            started=started,
            sleep_after_last_pass=args.sleep_after_last_pass,
        )
    except (OSError, KeyError, ValueError, SeedLoopError, TimeoutError) as exc:
        print(f"seed_loop: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    result["startedSource"] = started_source
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    _started, _source = process_start_time()  # the first statement of the __main__ handling
    sys.exit(main(started=_started, started_source=_source))
