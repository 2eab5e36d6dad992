"""Domain exceptions of the HTTP API: routes raise them, ``MozpoolAPI.handle_errors`` writes them.

Each carries its HTTP status so the error handler stays one table lookup; none of them is a bug.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An answer other than success, with a JSON body ``{"error": message, **extra}``."""

    status = 500

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra
        self.headers: dict[str, str | bytes] = {}

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    """No credential, or one that is not (or no longer) valid."""

    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers["WWW-Authenticate"] = 'Bearer realm="mozpool"'


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class MethodNotAllowed(ApiError):
    status = 405

    def __init__(self, message: str, allow: list[str]) -> None:
        super().__init__(message)
        self.headers["Allow"] = ", ".join(allow)


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class NotAvailable(ApiError):
    """The collaborator behind this endpoint is not part of this build (yet)."""

    status = 501


class ServiceUnavailable(ApiError):
    """The database cannot answer now; ``Retry-After`` says when to ask again (seconds)."""

    status = 503

    def __init__(self, message: str, retry_after: int = 5, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.headers["Retry-After"] = str(int(retry_after))


class Redirect(ApiError):
    """Not an error: another imaging server owns the object (spec 2.3)."""

    status = 302

    def __init__(self, location: bytes) -> None:
        super().__init__("redirect")
        self.location = location.decode("utf-8", "replace")
        self.headers["Location"] = location

    def body(self) -> dict[str, Any]:
        return {"redirect": self.location}
