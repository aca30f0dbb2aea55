"""Azure Table Storage, the way the app uses it: one table in the AzureWebJobsStorage account, rows keyed by
validated ids only, every fault turned into one error type the cores can reason about.

``TableStore`` implements ``shared.ports.TablePort`` (the unit tests' ``tests.fakes.FakeTable`` does too). Keys are
checked here as well as in the cores: a PartitionKey or RowKey is a canonical GUID or one of the fixed partition names
(``PARTITIONS``), and it reaches the service only as a key or a bound query parameter, never spliced into a filter.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Mapping
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)

from shared.ids import is_guid

__all__ = ["PARTITIONS", "Row", "TableConflictError", "TableError", "TableStore", "check_key"]

log = logging.getLogger("customer_deletion.tables")

#: The fixed partitions (every other PartitionKey is a customer id): the sweep's first-seen record.
PARTITIONS = frozenset({"sweepfirstseen"})
#: Properties a query may filter on, across partitions (the status API's "by correlation id").
QUERYABLE = frozenset({"correlationId"})
_ISO_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

#: A row as read: its properties (PartitionKey and RowKey included) and its etag (``None`` for a row not yet written).
Row = dict[str, Any]


class TableError(Exception):
    """The table could not be read or written (throttled, a 5xx, unreachable, not authorized): nothing is known about
    the outcome of a write that raised this, so a caller treats it as possibly done."""


class TableConflictError(TableError):
    """A conditional write was refused: the row exists already (an insert: 409), or changed since it was read (an
    ``If-Match`` update or delete: 412). Usually another writer won. But the SDK retries a write whose answer was lost
    (a timeout, a 503 after the service applied it), and the retry then meets the first attempt's own result: so a
    conflict proves only that the row is not as this write expected. A caller that must know re-reads the row."""


def check_key(value: str, what: str = "key") -> str:
    """``value`` if it may be a PartitionKey or RowKey (a canonical GUID, lower case, or a fixed partition name)."""
    if isinstance(value, str) and ((is_guid(value) and value == value.lower()) or value in PARTITIONS):
        return value
    raise ValueError(f"refusing a table {what} that is not a lower-case GUID or a fixed partition name")


def _describe(exc: Exception) -> str:
    """A fault in a few words, never the request (whose URL holds the keys) or a credential."""
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None)
    parts = [type(exc).__name__]
    if status:
        parts.append(f"HTTP {status}")
    if code:
        parts.append(str(code)[:60])
    return ", ".join(parts)


class TableStore:
    """One table of a ``TableServiceClient``; created on the first write that finds it missing (the template creates
    it in Azure; Azurite starts empty)."""

    def __init__(self, service: Any, table: str):
        self._service = service
        self._table = table
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._table

    def _table_client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._service.get_table_client(self._table)
            return self._client

    def _create_table(self) -> None:
        log.info("table %s does not exist; creating it", self._table)
        with contextlib.suppress(ResourceExistsError):
            self._table_client().create_table()

    def get(self, partition: str, row_key: str) -> Row | None:
        """One row, or ``None`` (no such row, or no table yet)."""
        pk, rk = check_key(partition, "PartitionKey"), check_key(row_key, "RowKey")
        try:
            return _row(self._table_client().get_entity(pk, rk))
        except ResourceNotFoundError:
            return None
        except (AzureError, OSError) as exc:
            raise TableError(f"reading table {self._table} failed ({_describe(exc)})") from exc

    def query_by(self, name: str, value: str) -> list[Row]:
        """Every row, of any partition, whose property ``name`` (one of QUERYABLE) is ``value`` (a lower-case GUID,
        bound as a query parameter)."""
        if name not in QUERYABLE:
            raise ValueError(f"refusing a query on property {name[:40]!r}")
        return self._query(f"{name} eq @v", {"v": check_key(value, name)})

    def query_finished_before(self, moment: str) -> list[Row]:
        """Every row, of any partition, whose ``finishedAt`` (ISO 8601 UTC text, compared as text) is before
        ``moment`` (the same form, bound as a query parameter)."""
        if not isinstance(moment, str) or not _ISO_RE.fullmatch(moment):
            raise ValueError("refusing a finishedAt bound that is not an ISO 8601 UTC time")
        return self._query("finishedAt lt @t", {"t": moment})

    def query_partition(self, partition: str) -> list[Row]:
        """Every row of one partition; a missing table has no rows."""
        return self._query("PartitionKey eq @pk", {"pk": check_key(partition, "PartitionKey")})

    def _query(self, query_filter: str, parameters: dict[str, str]) -> list[Row]:
        """The rows matching a fixed filter whose values are bound ``parameters`` (checked by the caller); a missing
        table has none."""
        try:
            return [_row(e) for e in self._table_client().query_entities(query_filter, parameters=parameters)]
        except ResourceNotFoundError:
            return []
        except (AzureError, OSError) as exc:
            raise TableError(f"reading table {self._table} failed ({_describe(exc)})") from exc

    def insert(self, row: Mapping[str, Any]) -> str | None:
        """Create ``row``; ``TableConflictError`` if it exists already. Returns the new etag (``None``: not told)."""
        entity = _entity(row)
        try:
            try:
                return _etag(self._table_client().create_entity(entity))
            except ResourceNotFoundError:
                self._create_table()
                return _etag(self._table_client().create_entity(entity))
        except ResourceExistsError as exc:
            raise TableConflictError(f"the row exists already in table {self._table}") from exc
        except (AzureError, OSError) as exc:
            raise TableError(f"writing table {self._table} failed ({_describe(exc)})") from exc

    def replace(self, row: Mapping[str, Any], etag: str) -> str | None:
        """Replace ``row`` only if it still has ``etag`` (``If-Match``); ``TableConflictError`` if it changed or is
        gone. Returns the new etag (``None``: not told)."""
        entity = _entity(row)
        try:
            return _etag(
                self._table_client().update_entity(
                    entity, mode="replace", etag=etag, match_condition=MatchConditions.IfNotModified
                )
            )
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            raise TableConflictError(f"the row changed or is gone in table {self._table}") from exc
        except HttpResponseError as exc:
            if exc.status_code in (404, 409, 412):
                raise TableConflictError(f"the row changed or is gone in table {self._table}") from exc
            raise TableError(f"writing table {self._table} failed ({_describe(exc)})") from exc
        except (AzureError, OSError) as exc:
            raise TableError(f"writing table {self._table} failed ({_describe(exc)})") from exc

    def delete(self, partition: str, row_key: str, etag: str) -> None:
        """Delete one row only if it still has ``etag``; a row already gone is no error."""
        pk, rk = check_key(partition, "PartitionKey"), check_key(row_key, "RowKey")
        try:
            self._table_client().delete_entity(pk, rk, etag=etag, match_condition=MatchConditions.IfNotModified)
        except ResourceNotFoundError:
            return
        except ResourceModifiedError as exc:
            raise TableConflictError(f"the row changed in table {self._table}") from exc
        except HttpResponseError as exc:
            if exc.status_code == 412:
                raise TableConflictError(f"the row changed in table {self._table}") from exc
            if exc.status_code == 404:
                return
            raise TableError(f"writing table {self._table} failed ({_describe(exc)})") from exc
        except (AzureError, OSError) as exc:
            raise TableError(f"writing table {self._table} failed ({_describe(exc)})") from exc


def _entity(row: Mapping[str, Any]) -> dict[str, Any]:
    entity = {k: v for k, v in row.items() if k != "etag"}
    check_key(entity.get("PartitionKey"), "PartitionKey")  # type: ignore[arg-type]
    check_key(entity.get("RowKey"), "RowKey")  # type: ignore[arg-type]
    return entity


def _etag(metadata: Any) -> str | None:
    """The etag of a write's answer (the SDK returns the response metadata as a dict)."""
    etag = metadata.get("etag") if isinstance(metadata, Mapping) else None
    return etag if isinstance(etag, str) else None


def _row(entity: Any) -> Row:
    metadata = getattr(entity, "metadata", None) or {}
    return {**dict(entity), "etag": metadata.get("etag")}
