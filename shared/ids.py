"""Identifier shapes. Every value that goes into a Partner Center URL is checked here first."""

from __future__ import annotations

import re
import uuid
from typing import TypeGuard

__all__ = [
    "ETAG_RE",
    "GUID_RE",
    "ORDER_ID_RE",
    "derived_correlation_id",
    "is_etag",
    "is_guid",
    "is_order_id",
    "normalise_guid",
]

#: Canonical 8-4-4-4-12 hex form, any letter case. ``fullmatch`` is used, so no trailing newline slips through.
GUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

#: Documented order id: a 33-character URL-safe token (e.g. ``UKXASSO1dezh3HdxClHxSp5UEFXGbAnt1``);
#: legacy license-based orders have GUID ids (accepted through ``GUID_RE``).
ORDER_ID_RE = re.compile(r"[A-Za-z0-9_-]{33}")

#: An etag as it may travel in ``If-Match`` (the client quotes it): printable ASCII without quotes or backslashes.
ETAG_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,256}")

#: Namespace for correlation ids derived from a queue message id (stable across redeliveries).
_CORRELATION_NAMESPACE = uuid.UUID("6b1b6c9e-3f0e-4f5e-9c56-2f1b1d0c8a11")


def is_guid(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and GUID_RE.fullmatch(value) is not None


def normalise_guid(value: str) -> str:
    """Return the lower-case GUID, or raise ``ValueError`` when ``value`` is not the canonical form."""
    if not is_guid(value):
        raise ValueError("not a GUID in the canonical 8-4-4-4-12 hex form")
    return value.lower()


def is_order_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and (ORDER_ID_RE.fullmatch(value) is not None or is_guid(value))


def is_etag(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and ETAG_RE.fullmatch(value) is not None


def derived_correlation_id(message_id: str) -> str:
    """A correlation id derived from the queue message id, so a redelivered message keeps it."""
    return str(uuid.uuid5(_CORRELATION_NAMESPACE, message_id or ""))
