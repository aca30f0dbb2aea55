"""The app's ports: what the service needs from Partner Center, from the queues and from the table.

``shared.partner_center.PartnerCenterClient``, ``shared.queues.QueuePublisher`` and ``shared.tables.TableStore``
implement them in production; the unit tests' fakes and the property test's simulated world implement them too.
"""

from __future__ import annotations

from typing import Any, Protocol

from shared.budget import Budget

__all__ = ["PartnerCenterPort", "PublisherPort", "TablePort"]


class PartnerCenterPort(Protocol):
    """Raises ``shared.errors.PartnerCenterError`` subclasses or ``UnsafeIdError``; returns parsed JSON."""

    def get_customer(
        self, customer_id: str, *, correlation_id: str, budget: Budget | None = None
    ) -> dict[str, Any]: ...

    def list_entitlement_order_ids(
        self, customer_id: str, *, correlation_id: str, budget: Budget | None = None
    ) -> list[str]: ...

    def get_order(
        self, customer_id: str, order_id: str, *, correlation_id: str, budget: Budget | None = None
    ) -> dict[str, Any]: ...

    def cancel_order(
        self, customer_id: str, order_id: str, *, correlation_id: str, budget: Budget | None = None
    ) -> dict[str, Any]: ...

    def delete_customer(self, customer_id: str, *, correlation_id: str, budget: Budget | None = None) -> None: ...

    def list_customers(
        self, *, correlation_id: str, budget: Budget | None = None, stop_after: int | None = None
    ) -> list[Any]: ...

    def list_subscriptions(
        self, customer_id: str, *, correlation_id: str, budget: Budget | None = None
    ) -> list[dict[str, Any]]: ...

    def get_subscription(
        self, customer_id: str, subscription_id: str, *, correlation_id: str, budget: Budget | None = None
    ) -> dict[str, Any]: ...

    def patch_subscription(
        self,
        customer_id: str,
        subscription_id: str,
        subscription: dict[str, Any],
        *,
        etag: str | None,
        correlation_id: str,
        budget: Budget | None = None,
    ) -> dict[str, Any]: ...

    def list_azure_entitlements(
        self, customer_id: str, plan_id: str, *, correlation_id: str, budget: Budget | None = None
    ) -> list[dict[str, Any]]: ...

    def cancel_azure_entitlement(
        self, customer_id: str, plan_id: str, entitlement_id: str, *, correlation_id: str, budget: Budget | None = None
    ) -> dict[str, Any]: ...


class PublisherPort(Protocol):
    def send(self, queue: str, data: bytes | str, *, delay: int = 0, time_to_live: int = -1) -> str: ...


class TablePort(Protocol):
    """One table; raises ``shared.tables.TableError`` (``TableConflictError`` when a conditional write loses).
    A row is a dict of its properties with its ``etag``."""

    @property
    def name(self) -> str: ...

    def get(self, partition: str, row_key: str) -> dict[str, Any] | None: ...

    def query_partition(self, partition: str) -> list[dict[str, Any]]: ...

    def query_by(self, name: str, value: str) -> list[dict[str, Any]]: ...

    def query_finished_before(self, moment: str) -> list[dict[str, Any]]: ...

    def insert(self, row: dict[str, Any]) -> str | None: ...

    def replace(self, row: dict[str, Any], etag: str) -> str | None: ...

    def delete(self, partition: str, row_key: str, etag: str) -> None: ...
