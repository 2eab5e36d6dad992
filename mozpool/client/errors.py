"""What can go wrong in a client call, as exceptions whose ``str`` is one line a person can act
on: the CLI prints it after ``mozpool: ``, a CI log shows it as the reason a job failed."""

from __future__ import annotations

from typing import Any


class MozpoolError(Exception):
    """Every failure the client reports; ``str(e)`` is one line."""


class ApiError(MozpoolError):
    """A server answered, with an error: ``status`` and the server's ``{"error": ...}`` text."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class NotFound(ApiError):
    """404: an unknown device, request, image or PXE config (the message names it), or an
    endpoint this server does not have (an older server)."""


class BadRequest(ApiError):
    """400: the server refused the call's arguments."""


class NotAllowed(ApiError):
    """401 (no token, or a bad one) or 403 (the token's role may not do this)."""


class Conflict(ApiError):
    """409: a conditional state change whose old state did not match."""


class DeviceBusy(Conflict):
    """409 on a named request: another open request holds the device.  The server still
    created a request for the call and closed it at once; it is ``request``."""

    def __init__(self, status: int, message: str, body: Any, device: str) -> None:
        held = message.removeprefix(f"device {device} is ")  # the server says "device X is held by request N"
        super().__init__(status, f"device {device} is busy: {held}", body)
        self.device = device
        self.request: dict[str, Any] | None = body.get("request") if isinstance(body, dict) else None


class ServerError(ApiError):
    """A 5xx other than 503 (a bug in the server), or an answer that is not the API's JSON."""


class NoServerReachable(MozpoolError):
    """Every server was tried and none answered: each refused, timed out, answered 503 or
    redirected too often.  ``problems`` says what happened with each."""

    def __init__(self, what: str, problems: list[str]) -> None:
        detail = "; ".join(problems) if problems else "no servers configured"
        super().__init__(f"no MozPool server answered {what}: {detail}")
        self.problems = problems


class MaybeSent(MozpoolError):
    """A call that must not be repeated (request creation) got no answer after it was sent:
    the server may have acted on it, so no other server is asked."""


class RequestFailed(MozpoolError):
    """A request ended without becoming ready: a ``failed_*`` state, or ``closed`` (returned
    or expired) while it was being waited for."""

    def __init__(self, request_id: int, state: str) -> None:
        reason = FAILURE_REASONS.get(state)
        if reason is None:
            reason = "closed before it was ready (expired or returned)" if state == "closed" else state
        super().__init__(f"request {request_id} failed: {state} ({reason})" if state.startswith("failed_")
                         else f"request {request_id} {reason}")
        self.request_id = request_id
        self.state = state


class WaitTimeout(MozpoolError):
    """A wait's bound passed before the request was ready; ``state`` is where it was, and
    ``queue`` (a :class:`~mozpool.client.api.QueuePlace`) its place while it waited for a device."""

    def __init__(self, request_id: int, seconds: float, state: str, device: str | None, queue: Any = None) -> None:
        on = f" with device {device}" if device else ""
        place = f"; {queue.text()}" if queue is not None else ""
        super().__init__(f"request {request_id} not ready after {seconds:g} s (state {state}{on}{place})")
        self.request_id = request_id
        self.state = state
        self.queue = queue


#: What each public failed state means for the one who asked (http-api.md 6.1).
FAILURE_REASONS = {
    "failed_device_not_found": "no device fitting the request could be found; its log says why",
    "failed_bad_image": "installing the image failed in a way that points at the image",
    "failed_bad_device": "the named device failed or is in a failed state",
    # the original says it of a named device; a server with the queue (issue 14), of any request
    "failed_device_busy": "no fitting device became free within its queue_timeout",
}
