"""Typed errors, by what the caller must do.

    AppError
    ├── InvalidMessageError          the queue message can never be processed: reject it, never retry
    ├── UnsafeIdError                a value would have gone into a URL without matching its documented shape
    └── PartnerCenterError           Partner Center answered with an error (status, code, description)
        ├── RefusedError             Partner Center's considered refusal (400, 403, 8000xx/9001xx codes)
        │   └── NotFoundError        404
        ├── ConflictError            409, e.g. 800060: the order is in progress
        ├── AuthenticationError      401 even with a fresh credential
        ├── ThrottledError           429 whose Retry-After does not fit in the invocation's in-process waits
        └── TransientError           408, 5xx, connection failures and timeouts that outlasted the retries
            └── OutOfTimeError       the work time ran out in the middle of a logical call (paging, a renewed 401)

The service turns each into an observation; what it means is decided by the core (``shared.workflow``).
"""

from __future__ import annotations

__all__ = [
    "AppError",
    "AuthenticationError",
    "ConflictError",
    "InvalidMessageError",
    "NotFoundError",
    "OutOfTimeError",
    "PartnerCenterError",
    "RefusedError",
    "ThrottledError",
    "TransientError",
    "UnsafeIdError",
]


class AppError(Exception):
    """Base of the app's own errors."""


class InvalidMessageError(AppError):
    """A queue message is malformed; ``reason`` says why, ``customer_id``/``correlation_id`` what could be read."""

    def __init__(self, reason: str, *, customer_id: str | None = None, correlation_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.customer_id = customer_id
        self.correlation_id = correlation_id


class UnsafeIdError(AppError):
    """An id did not match its documented shape, so no request was built from it."""


class PartnerCenterError(AppError):
    """Partner Center answered with an error status."""

    def __init__(
        self,
        status: int | None,
        code: str | None = None,
        description: str | None = None,
        *,
        method: str = "",
        path: str = "",
        retry_after: float | None = None,
    ):
        self.status = status
        self.code = code
        self.description = description
        self.method = method
        self.path = path
        self.retry_after = retry_after
        super().__init__(self.summary())

    def summary(self) -> str:
        where = f"{self.method} {self.path}".strip()
        what = f"HTTP {self.status}" if self.status else "no response"
        if self.code:
            what += f", code {self.code}"
        text = f"{where}: {what}" if where else what
        if self.description:
            text += f": {self.description}"
        return text


class RefusedError(PartnerCenterError):
    """A refusal that no retry can change."""


class NotFoundError(RefusedError):
    """404."""


class ConflictError(PartnerCenterError):
    """409, e.g. 800060 'Your order is in progress'."""


class AuthenticationError(PartnerCenterError):
    """401 (or a token that could not be obtained)."""


class ThrottledError(PartnerCenterError):
    """429 not waited for in-process; ``retry_after``: seconds (clamped
    to 1-900), or None when absent or unparseable."""


class TransientError(PartnerCenterError):
    """A failure that may pass (408, 5xx, connection error, timeout) and outlasted the in-process retries."""


class OutOfTimeError(TransientError):
    """The invocation's work time ran out before a logical call could finish (a further page, a renewed attempt)."""
