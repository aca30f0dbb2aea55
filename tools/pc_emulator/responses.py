"""HTTP in and out for the Partner Center API: each handler reads its request, calls one rule of the model and
renders the answer in the documented JSON. No rule lives here (see ``models.py``).

* ``GET /v1/customers`` requires ``size`` (a positive integer; else 400, code 800002) on the first page; a later
  page (``seekOperation=Next``) without ``size`` keeps the size asked before. The knob ``customersMaxPageSize``
  (0: no cap) caps every page whatever ``size`` asks, as a real server may answer fewer items than asked: clients
  must stop on a missing ``links.next`` only. ``links.next.uri`` is ``/customers?size=N&seekOperation=Next`` (no
  ``/v1``, N as asked) with the ``MS-ContinuationToken`` header, and the token is also the top-level
  ``continuationToken``. ``totalCount`` is the number of items on that page, not of the whole collection.
* Entitlements page the same way when the ``entitlementsPageSize`` knob is set; their ``totalCount`` counts the
  whole (filtered) collection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tools.pc_emulator.exceptions import Answer, invalid_input
from tools.pc_emulator.models import AzureEntitlement, Customer, Order, Page, Sandbox, Subscription, iso


@dataclass
class Request:
    """What a handler may read of a request. ``query`` has lower-case names, each with its values."""

    sandbox: Sandbox
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # the ones handlers read: Host, Authorization, MS-ContinuationToken, If-Match
    raw: bytes

    def arg(self, name: str) -> str | None:
        values = self.query.get(name.lower())
        return values[0] if values else None

    @property
    def next_page(self) -> bool:
        return (self.arg("seekOperation") or "").lower() == "next"


def _link(uri: str) -> dict[str, Any]:
    return {"uri": uri, "method": "GET", "headers": []}


def _next_link(body: dict[str, Any], page: Page, uri: str) -> None:
    if page.token is not None:
        body["continuationToken"] = page.token
        body["links"]["next"] = {
            "uri": uri.format(size=page.size),
            "method": "GET",
            "headers": [{"key": "MS-ContinuationToken", "value": page.token}],
        }


def customer_json(customer: Customer) -> dict[str, Any]:
    return {
        "id": customer.id,
        "companyProfile": {
            "tenantId": customer.id,
            "domain": customer.domain,
            "companyName": customer.company_name,
        },
        "relationshipToPartner": "reseller",
        "attributes": {"objectType": "Customer"},
    }


def order_json(sandbox: Sandbox, customer: Customer, order: Order) -> dict[str, Any]:
    cid = customer.id
    return {
        "id": order.id,
        "alternateId": order.alternate_id,
        "referenceCustomerId": cid,
        "billingCycle": "one_time",
        "currencyCode": "USD",
        "currencySymbol": "$",
        "creationDate": order.creation_date,
        "status": sandbox.wire_status(order.status),
        "transactionType": "UserPurchase",
        "lineItems": [
            {
                "lineItemNumber": 0,
                "offerId": "DZH318Z0BQ3W:007J:DZH318Z0BQ3W",
                "friendlyName": "Reserved VM Instance",
                "quantity": 1,
            }
        ],
        "links": {"self": _link(f"/customers/{cid}/orders/{order.id}")},
        "attributes": {"objectType": "Order"},
    }


# -- handlers: (request, the resources the path names) -> answer ----------------------------------------------------


def list_customers(req: Request) -> Answer:
    sandbox = req.sandbox
    page = sandbox.customer_page(req.arg("size"), req.next_page, req.headers.get("MS-ContinuationToken"))
    body: dict[str, Any] = {"links": {}, "attributes": {"objectType": "Collection"}}
    body["items"] = page.items
    _next_link(body, page, "/customers?size={size}&seekOperation=Next")
    body["links"] = {"self": _link(f"/customers?size={page.size}"), **body["links"]}
    body["items"] = [customer_json(sandbox.customers[cid]) for cid in page.items]
    body["totalCount"] = len(body["items"])
    return 200, body, {}


def get_customer(req: Request, customer: Customer) -> Answer:
    return 200, customer_json(customer), {}


def delete_customer(req: Request, customer: Customer) -> Answer:
    req.sandbox.delete_customer(customer)
    return 204, None, {}


def list_entitlements(req: Request, customer: Customer) -> Answer:
    cid = customer.id
    wanted = req.arg("entitlementType") or ""
    total = len(req.sandbox.entitlements(customer, wanted))
    page = req.sandbox.entitlement_page(customer, wanted, req.next_page, req.headers.get("MS-ContinuationToken"))
    body: dict[str, Any] = {
        "totalCount": total,
        "attributes": {"objectType": "Collection"},
        "links": {"self": _link(f"/customers/{cid}/entitlements")},
        "items": page.items,
    }
    _next_link(body, page, f"/customers/{cid}/entitlements?seekOperation=Next")
    return 200, body, {}


def list_orders(req: Request, customer: Customer) -> Answer:
    items = [order_json(req.sandbox, customer, req.sandbox.read_order(o)) for o in customer.orders.values()]
    body = {
        "totalCount": len(items),
        "items": items,
        "links": {"self": _link(f"/customers/{customer.id}/orders")},
        "attributes": {"objectType": "Collection"},
    }
    return 200, body, {}


def get_order(req: Request, customer: Customer, order: Order) -> Answer:
    return 200, order_json(req.sandbox, customer, req.sandbox.read_order(order)), {}


def _json_body(req: Request) -> Any:
    """A request's JSON body (a BOM tolerated); an empty body is None, a malformed one 400 800002."""
    try:
        return json.loads(req.raw.decode("utf-8-sig") or "null")
    except ValueError:
        raise invalid_input() from None


def cancel_order(req: Request, customer: Customer, order: Order) -> Answer:
    return 200, order_json(req.sandbox, customer, req.sandbox.cancel_order(customer, order, _json_body(req))), {}


# -- subscriptions (partner-center-subscriptions.md section 3) -------------------------------------------------------


def subscription_json(customer: Customer, subscription: Subscription) -> dict[str, Any]:
    """A subscription as documented (subscription-resources.md): its kind's fields, the cancellation window as
    ``cancellationAllowedUntilDate`` (NCE and software) and ``refundOptions`` (NCE and SaaS), and ``attributes`` with
    an ``etag`` only when it has one (NCE examples have none)."""
    body: dict[str, Any] = {"id": subscription.id, **subscription.fields, "status": subscription.status}
    body["creationDate"] = iso(datetime.fromtimestamp(subscription.created_at, UTC))
    if subscription.cancel_until is not None:
        until = iso(datetime.fromtimestamp(subscription.cancel_until, UTC))
        if subscription.kind in ("nce", "software"):
            body["cancellationAllowedUntilDate"] = until
        if subscription.kind in ("nce", "saas"):
            body["refundOptions"] = [{"type": "Full", "expiresAt": until}]
    if subscription.status == "suspended":
        body["suspensionReasons"] = ["CustomerCancellation"]
    attributes: dict[str, Any] = {"objectType": "Subscription"}
    if subscription.etag is not None:
        attributes = {"etag": subscription.etag, **attributes}
    body["links"] = {"self": _link(f"/customers/{customer.id}/subscriptions/{subscription.id}")}
    parent = subscription.fields.get("parentSubscriptionId")
    if parent:
        body["links"]["parentSubscription"] = _link(f"/customers/{customer.id}/subscriptions/{parent}")
    body["attributes"] = attributes
    return body


def azure_entitlement_json(plan: Subscription, entitlement: AzureEntitlement) -> dict[str, Any]:
    return {
        "id": entitlement.id,
        "friendlyName": entitlement.friendly_name,
        "status": entitlement.status,
        "subscriptionId": plan.id,
        "attributes": {"objectType": "AzureEntitlement"},
    }


def list_subscriptions(req: Request, customer: Customer) -> Answer:
    page = req.sandbox.subscription_page(customer, req.next_page, req.headers.get("MS-ContinuationToken"))
    body: dict[str, Any] = {
        "totalCount": len(customer.subscriptions),
        "items": [subscription_json(customer, s) for s in page.items],
        "links": {"self": _link(f"/customers/{customer.id}/subscriptions")},
        "attributes": {"objectType": "Collection"},
    }
    _next_link(body, page, f"/customers/{customer.id}/subscriptions?seekOperation=Next")
    return 200, body, {}


def get_subscription(req: Request, customer: Customer, subscription: Subscription) -> Answer:
    return 200, subscription_json(customer, req.sandbox.read_subscription(subscription, customer)), {}


def patch_subscription(req: Request, customer: Customer, subscription: Subscription) -> Answer:
    """200 with the subscription as it now reads (a delayed change does not show yet), or 202 with no body and a
    ``Location`` of the subscription's own address."""
    changed, answer = req.sandbox.patch_subscription(
        customer, subscription, _json_body(req), req.headers.get("If-Match")
    )
    if answer == 202:
        return 202, None, {"Location": f"/customers/{customer.id}/subscriptions/{subscription.id}"}
    return 200, subscription_json(customer, changed), {}


def list_azure_entitlements(req: Request, customer: Customer, subscription: Subscription) -> Answer:
    items = [azure_entitlement_json(subscription, e) for e in req.sandbox.azure_entitlements(subscription)]
    return 200, {"totalCount": len(items), "items": items, "attributes": {"objectType": "Collection"}}, {}


def get_azure_entitlement(
    req: Request, customer: Customer, subscription: Subscription, entitlement: AzureEntitlement
) -> Answer:
    return 200, azure_entitlement_json(subscription, req.sandbox.read_azure_entitlement(subscription, entitlement)), {}


def cancel_azure_entitlement(
    req: Request, customer: Customer, subscription: Subscription, entitlement: AzureEntitlement
) -> Answer:
    if subscription.kind != "azurePlan":
        raise invalid_input("not an Azure plan")
    cancelled, answer = req.sandbox.cancel_azure_entitlement(entitlement, _json_body(req))
    if answer == 202:
        return 202, None, {}
    return 200, azure_entitlement_json(subscription, cancelled), {}
