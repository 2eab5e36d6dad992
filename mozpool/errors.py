"""Exceptions every layer may raise and the HTTP API understands."""


class UnknownObject(LookupError):
    """A device, request, relay board or PXE config named by the caller does not exist (404)."""
