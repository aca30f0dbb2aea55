"""What a sandbox customer's subscriptions are, and what clearing each one takes: pure rules, no I/O (issue 16).

The research is in ``../shared/reference/partner-center-subscriptions.md``; the rules here follow it:

* **Kinds, by positive rules** from documented fields, first match wins: an Azure plan (``offerId`` starting
  ``DZH318Z0BPS6:``), marketplace SaaS (``isMicrosoftProduct`` false), new commerce (``productType.id``
  ``OnlineServicesNCE``), a software subscription (``Software``), a legacy licence subscription
  (``OnlineServices``). Anything else is of an unknown kind: listed when final, a failure when not.
* **Final statuses** are ``suspended``, ``deleted``, ``expired`` and ``disabled``; anything else still blocks.
* **What clears each kind:** NCE and SaaS inside their cancellation window (``cancellationAllowedUntilDate``, or
  ``refundOptions[].expiresAt``) are cancelled (``status: "deleted"``); past it, or when the cancel is refused with
  ``900117`` or ``900213``, suspended with ``autoRenewEnabled: false``. Legacy and software subscriptions, and an
  Azure plan (once its Azure subscriptions read inactive), are suspended.
* **In what order:** add-ons before their base; SaaS before an Azure plan; an Azure plan last.
* **The PATCH body** is the whole object as read with ``status`` changed, so nothing silently resets
  (``autoRenewEnabled`` left out becomes false).
* **Ids** (a subscription's, its parent's, an Azure subscription's) are GUIDs, checked before they go near a URL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from shared.ids import is_etag, is_guid

__all__ = [
    "AZURE_PLAN_OFFER_PREFIX",
    "FINAL_STATUSES",
    "LATE_CANCEL_CODES",
    "Kind",
    "Subscription",
    "UnreadableSubscriptionError",
    "blockers_in_refusal",
    "classify",
    "clearing_order",
    "patch_body",
    "read_subscription",
    "target_status",
]

AZURE_PLAN_OFFER_PREFIX = "DZH318Z0BPS6:"
FINAL_STATUSES = frozenset({"suspended", "deleted", "expired", "disabled"})
#: A cancel refused with one of these is past its window: the subscription is suspended instead.
LATE_CANCEL_CODES = frozenset({"900117", "900213"})
#: An id quoted in a refused DELETE: an order's alternate id (12 hex, once 11), an order id, a GUID.
_QUOTED_ID_RE = re.compile(r"[A-Za-z0-9_-]{6,64}")


class Kind(StrEnum):
    AZURE_PLAN = "azure_plan"
    SAAS = "saas"
    NCE = "nce"
    SOFTWARE = "software"
    LEGACY = "legacy"
    UNKNOWN = "unknown"


_PRODUCT_TYPES = {"onlineservicesnce": Kind.NCE, "software": Kind.SOFTWARE, "onlineservices": Kind.LEGACY}


class UnreadableSubscriptionError(ValueError):
    """A listed subscription the app cannot act on safely: its id or a field it needs is not the documented shape."""


def classify(item: Mapping[str, Any]) -> Kind:
    """The kind of a subscription as listed, by the positive rules of the module docstring."""
    offer = item.get("offerId")
    if isinstance(offer, str) and offer.upper().startswith(AZURE_PLAN_OFFER_PREFIX):
        return Kind.AZURE_PLAN
    if item.get("isMicrosoftProduct") is False:
        return Kind.SAAS
    product_type = item.get("productType")
    type_id = product_type.get("id") if isinstance(product_type, Mapping) else None
    if isinstance(type_id, str):
        return _PRODUCT_TYPES.get(type_id.strip().lower(), Kind.UNKNOWN)
    return Kind.UNKNOWN


@dataclass(frozen=True)
class Subscription:
    """One subscription as read: what the rules need of it, and the whole object for its PATCH."""

    id: str  # lower case
    kind: Kind
    status: str  # lower case; "unknown" when missing
    order_id: str | None
    parent_id: str | None  # lower case; set on add-ons
    etag: str | None
    cancel_until: datetime | None  # the latest moment of its cancellation window; None: none given
    body: Mapping[str, Any]

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def window_open(self, now: datetime) -> bool:
        return self.cancel_until is not None and now < self.cancel_until

    def describe(self) -> str:
        return f"{self.kind.value} subscription {self.id} ({self.status})"


def _moment(value: Any) -> datetime | None:
    """An ISO 8601 time as Partner Center writes it (``Z`` or an offset); None when missing or unreadable."""
    if not isinstance(value, str) or not value.strip() or len(value) > 40:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def read_subscription(item: Any) -> Subscription:
    """A listed or read subscription, checked: ``UnreadableSubscriptionError`` names what is wrong."""
    if not isinstance(item, Mapping):
        raise UnreadableSubscriptionError("a listed subscription is not an object")
    sid = item.get("id")
    if not is_guid(sid):
        raise UnreadableSubscriptionError(f"a subscription id is not a GUID: {str(sid)[:80]!r}")
    parent = item.get("parentSubscriptionId")
    if parent is not None and parent != "" and not is_guid(parent):
        raise UnreadableSubscriptionError(f"subscription {sid} names a parent that is not a GUID: {str(parent)[:80]!r}")
    attributes = item.get("attributes")
    etag = attributes.get("etag") if isinstance(attributes, Mapping) else None
    if etag is not None and not (isinstance(etag, str) and is_etag(etag.strip('"'))):
        raise UnreadableSubscriptionError(f"subscription {sid} has an etag that is not printable ASCII")
    status = item.get("status")
    order_id = item.get("orderId")
    windows = [_moment(item.get("cancellationAllowedUntilDate"))]
    refunds = item.get("refundOptions")
    if isinstance(refunds, list):
        windows += [_moment(r.get("expiresAt")) for r in refunds if isinstance(r, Mapping)]
    known = [w for w in windows if w is not None]
    return Subscription(
        id=sid.lower(),
        kind=classify(item),
        status=status.strip().lower()[:40] if isinstance(status, str) and status.strip() else "unknown",
        order_id=order_id if isinstance(order_id, str) and _QUOTED_ID_RE.fullmatch(order_id) else None,
        parent_id=parent.lower() if isinstance(parent, str) and parent else None,
        etag=etag.strip('"') if isinstance(etag, str) else None,
        cancel_until=max(known) if known else None,
        body=dict(item),
    )


def target_status(subscription: Subscription, now: datetime, *, cancel_refused_late: bool = False) -> str | None:
    """The status its PATCH asks for: ``deleted`` (a cancel) or ``suspended``; None when it is final, or of an
    unknown kind (which the app never writes to)."""
    if subscription.final or subscription.kind is Kind.UNKNOWN:
        return None
    if subscription.kind in (Kind.NCE, Kind.SAAS) and subscription.window_open(now) and not cancel_refused_late:
        return "deleted"
    return "suspended"


def patch_body(subscription: Subscription, target: str) -> dict[str, Any]:
    """The whole object as read, with ``status`` set to ``target``. A suspended NCE or SaaS subscription would renew
    and bill on, so its ``autoRenewEnabled`` is set false; every other field, ``autoRenewEnabled`` included, is
    sent as read."""
    body = {k: v for k, v in subscription.body.items() if k.lower() != "status"}
    body["status"] = target
    if target == "suspended" and subscription.kind in (Kind.NCE, Kind.SAAS):
        body["autoRenewEnabled"] = False
    return body


def clearing_order(subscriptions: Iterable[Subscription]) -> list[Subscription]:
    """The order to clear them in: an Azure plan last (after the SaaS that may bill through it); before it, add-ons
    before their base (deepest first), and SaaS first among equals; otherwise as listed."""
    items = list(subscriptions)
    by_id = {s.id: s for s in items}

    def depth(s: Subscription) -> int:
        seen, d = {s.id}, 0
        while s.parent_id is not None and s.parent_id in by_id and s.parent_id not in seen:
            seen.add(s.parent_id)
            s, d = by_id[s.parent_id], d + 1
        return d

    return sorted(items, key=lambda s: (s.kind is Kind.AZURE_PLAN, -depth(s), s.kind is not Kind.SAAS))


def blockers_in_refusal(
    description: str | None, alternate_ids: Mapping[str, str], subscriptions: Iterable[Subscription]
) -> list[str]:
    """The blockers a refused DELETE names: Partner Center quotes order ids after "following orders:" (an order's
    alternate id, or the ``orderId`` of a subscription). Each quoted id becomes the order or subscription it names
    (``alternate_ids``: order id -> alternate id), or stays as quoted when nothing read matches it."""
    if not description:
        return []
    _, found, quoted = description.partition("following orders:")
    if not found:
        return []
    by_alternate = {alt.lower(): oid for oid, alt in alternate_ids.items() if alt}
    order_ids = {oid.lower() for oid in alternate_ids}
    by_order = {s.order_id.lower(): s for s in subscriptions if s.order_id}
    names: list[str] = []
    for token in re.split(r"[\s,;]+", quoted.strip())[:20]:
        if not _QUOTED_ID_RE.fullmatch(token):
            continue
        key = token.lower()
        if key in by_alternate:
            name = f"order {by_alternate[key]}"
        elif key in order_ids:
            name = f"order {token}"
        elif key in by_order:
            name = by_order[key].describe()
        else:
            name = f"an order Partner Center calls {token}"
        if name not in names:
            names.append(name)
    return names
