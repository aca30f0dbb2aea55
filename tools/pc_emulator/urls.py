"""The route tables: which path and method reach which handler.

A Partner Center route names its resources by group: ``cid`` (a customer, looked up first: 404 ``60003`` when it does
not exist), ``oid`` (one of its orders: 404 ``20000``), ``sid`` (one of its subscriptions: 404 ``20003``) and
``eid`` (an Azure subscription under that plan: 404 ``800111``). Only then is the method looked at: a method the
route does not serve gets 405, or the route's ``otherwise``. A path no route matches gets the gateway's 404.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from tools.pc_emulator import identity, responses
from tools.pc_emulator.exceptions import Answer, ApiError, method_not_allowed, resource_not_found
from tools.pc_emulator.models import GUID

ORDER = r"[A-Za-z0-9_-]{1,64}"
CUSTOMER = rf"/v1/customers/(?P<cid>{GUID})"
SUBSCRIPTION = rf"{CUSTOMER}/subscriptions/(?P<sid>{GUID})"


@dataclass(frozen=True)
class Route:
    pattern: str  # matched against the whole path
    methods: dict[str, Callable[..., Answer]]
    otherwise: Callable[[], ApiError] = method_not_allowed
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", re.compile(self.pattern))


API = (
    Route(r"/v1/customers/*", {"GET": responses.list_customers}, otherwise=resource_not_found),
    Route(rf"{CUSTOMER}/?", {"GET": responses.get_customer, "DELETE": responses.delete_customer}),
    Route(rf"{CUSTOMER}/entitlements/?", {"GET": responses.list_entitlements}),
    Route(rf"{CUSTOMER}/orders/?", {"GET": responses.list_orders}),
    Route(rf"{CUSTOMER}/orders/(?P<oid>{ORDER})/?", {"GET": responses.get_order, "PATCH": responses.cancel_order}),
    Route(rf"{CUSTOMER}/subscriptions/?", {"GET": responses.list_subscriptions}),
    Route(
        rf"{SUBSCRIPTION}/?",
        {"GET": responses.get_subscription, "PATCH": responses.patch_subscription},
    ),
    Route(rf"{SUBSCRIPTION}/azureEntitlements/?", {"GET": responses.list_azure_entitlements}),
    Route(rf"{SUBSCRIPTION}/azureEntitlements/(?P<eid>{GUID})/?", {"GET": responses.get_azure_entitlement}),
    Route(rf"{SUBSCRIPTION}/azureEntitlements/(?P<eid>{GUID})/cancel/?", {"POST": responses.cancel_azure_entitlement}),
)

#: Entra ID: its handlers get the tenant as it is in the path; anything else is the gateway's 404.
TENANT = r"/(?P<tenant>[^/]+)"
IDENTITY = (
    Route(
        rf"{TENANT}/v2\.0/\.well-known/openid-configuration",
        {"GET": identity.openid_configuration},
        otherwise=resource_not_found,
    ),
    Route(rf"{TENANT}/discovery/(?:v2\.0/)?keys", {"GET": identity.signing_keys}, otherwise=resource_not_found),
    Route(rf"{TENANT}/oauth2/(?:v2\.0/)?token", {"POST": identity.token}, otherwise=resource_not_found),
)


def match(table: tuple[Route, ...], path: str) -> tuple[Route, dict[str, str]] | None:
    for route in table:
        m = route.regex.fullmatch(path)
        if m:
            return route, m.groupdict()
    return None
