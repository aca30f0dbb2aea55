"""Every answer the emulator gives that is not a success, in the wire shapes of partner-center-api.md §5.

The model raises these; ``responses.py`` and ``server.py`` render them. Keeping them in one module keeps every error
body in one place, as moto keeps each service's errors in its ``exceptions.py``.
"""

from __future__ import annotations

from typing import Any

#: An answer: HTTP status, JSON body (None: no body), extra headers.
Answer = tuple[int, Any, dict[str, str]]


def error_body(status: int, code: Any, description: str, shape: str = "classic") -> dict[str, Any]:
    """The body of an error: ``classic`` (PartnerFD: code, description, data, source), ``new`` (the newer services:
    code, message, description, errorName, isRetryable, parameters, errorMessageExtended) or ``gateway`` (API
    management, in front of Partner Center: statusCode and message only)."""
    if shape == "gateway":
        return {"statusCode": status, "message": description}
    if shape == "new":
        return {
            "code": code,
            "message": description,
            "description": description,
            "errorName": "Error",
            "isRetryable": status >= 500,
            "parameters": {},
            "errorMessageExtended": f"InternalErrorCode={code}",
        }
    return {"code": code, "description": description, "data": [], "source": "PartnerFD"}


class ApiError(Exception):
    """A Partner Center refusal: HTTP ``status``, Partner Center ``code`` and ``description``, in ``shape`` (see
    ``error_body``), with extra ``headers`` (``Retry-After``, ``WWW-Authenticate``)."""

    def __init__(
        self,
        status: int,
        code: Any,
        description: str,
        shape: str = "classic",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {description}")
        self.status, self.code, self.description, self.shape = status, code, description, shape
        self.headers = dict(headers or {})

    def answer(self) -> Answer:
        return self.status, error_body(self.status, self.code, self.description, self.shape), self.headers


def resource_not_found() -> ApiError:
    """A path Partner Center has no resource at: the gateway answers, not Partner Center."""
    return ApiError(404, 404, "Resource not found", "gateway")


def method_not_allowed() -> ApiError:
    return ApiError(405, 405, "Method not allowed")


def invalid_input(detail: str = "") -> ApiError:
    return ApiError(400, 800002, "Invalid request input" + (f": {detail}" if detail else ""))


def customer_not_found() -> ApiError:
    return ApiError(404, 60003, "Tenant not found")


def order_not_found() -> ApiError:
    return ApiError(404, 20000, "Order Id not found")


def unauthorised() -> ApiError:
    return ApiError(
        401,
        800001,
        "Partner Token missing in request context",
        headers={"WWW-Authenticate": "OAuth realm=urn:cpsvc:cpid:emulator"},
    )


def throttled(seconds: int) -> ApiError:
    """The gateway's 429, with the wait in ``Retry-After`` and in the message."""
    return ApiError(
        429,
        None,
        f"Rate limit is exceeded. Try again in {seconds} seconds.",
        "gateway",
        {"Retry-After": str(seconds)},
    )


def injected(status: int) -> ApiError:
    """The answer of a ``status`` fault."""
    return ApiError(status, 800003 if status >= 500 else status, "Unexpected service error (injected)", "new")


class DropConnectionError(Exception):
    """Close the connection without an answer."""
