"""Recording collaborators for the API tests: they note each call and answer canned results."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from mozpool.web.interfaces import IBMM, IBroker, ILifeGuard, RequestSpec


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.result: Any = None
        self.failure: Exception | None = None

    def _answer(self, *call: Any) -> defer.Deferred[Any]:
        self.calls.append(call)
        if self.failure is not None:
            return defer.fail(self.failure)
        return defer.succeed(self.result)


@implementer(IBroker)
class FakeBroker(_Recorder):
    def create_request(self, device: str, spec: RequestSpec) -> Any:
        return self._answer("create_request", device, spec)

    def renew(self, request_id: int, duration: int) -> Any:
        return self._answer("renew", request_id, duration)

    def return_request(self, request_id: int) -> Any:
        return self._answer("return_request", request_id)

    def request_event(self, request_id: int, event: str, body: dict[str, Any]) -> Any:
        return self._answer("request_event", request_id, event, body)

    def queue_place(self, request_id: int) -> Any:
        return self._answer("queue_place", request_id)


@implementer(ILifeGuard)
class FakeLifeGuard(_Recorder):
    def device_event(self, name: str, event: str, body: dict[str, Any]) -> Any:
        return self._answer("device_event", name, event, body)

    def state_change(self, name: str, old: str, new: str) -> Any:
        return self._answer("state_change", name, old, new)

    def quarantine_status(self) -> Any:
        """No fault isolation: the health report names no cap."""
        return defer.succeed(None)


@implementer(IBMM)
class FakeBMM(_Recorder):
    def power_cycle(self, name: str, pxe_config: str | None, boot_config: str | None) -> Any:
        return self._answer("power_cycle", name, pxe_config, boot_config)

    def power_off(self, name: str) -> Any:
        return self._answer("power_off", name)

    def clear_pxe(self, name: str) -> Any:
        return self._answer("clear_pxe", name)

    def ping(self, name: str) -> Any:
        return self._answer("ping", name)

    def relay_test(self, relay: str) -> Any:
        return self._answer("relay_test", relay)
