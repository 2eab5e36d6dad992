"""The client's calls, listed once for both clients.  Each method builds a plan
(:mod:`mozpool.client.plans`) from the API table (:mod:`mozpool.client.api`) and hands it to
``_run``: the Twisted client's returns a Deferred, the blocking client's returns the value.

A request may be named by its :class:`~mozpool.client.api.Request` (its calls then go straight
to the server that owns it), by its id, or by a string of digits."""

from __future__ import annotations

from typing import Any, Callable

from mozpool.client import api, plans
from mozpool.client.config import ClientConfig
from mozpool.client.plans import POLL_INTERVAL, Context, RequestRef, exchange, owner, request_id

ProgressCallback = Callable[[plans.Progress], None]

#: How long a wait for a request to become ready lasts unless told otherwise, in seconds.
DEFAULT_WAIT = 3600.0


class BaseClient:
    """The calls of the MozPool API (spec/http-api.md), over a list of servers."""

    def __init__(self, config: ClientConfig, context: Context) -> None:
        self.config = config
        self.context = context

    def _run(self, plan: plans.Plan[Any], emit: Callable[[Any], None] | None = None) -> Any:
        raise NotImplementedError

    def _call(self, call: api.Call, prefer: str | None = None) -> Any:
        return self._run(exchange(self.context, call, prefer))

    # --- the pool ---------------------------------------------------------------------------

    def version(self) -> Any:
        return self._call(api.version())

    def devices(self, state: str | None = None, environment: str | None = None) -> Any:
        """Every device's details; ``state``/``environment``: shell patterns (``failed_*``)."""
        return self._call(api.devices(state, environment))

    def device_names(self) -> Any:
        return self._call(api.device_names())

    def device_details(self, name: str) -> Any:
        """One device's details (``name``, ``fqdn``, ``state``, ``imaging_server``, ...)."""
        return self._call(api.device(name))

    def images(self) -> Any:
        return self._call(api.images())

    def environments(self) -> Any:
        return self._call(api.environments())

    def pool_summary(self) -> Any:
        return self._call(api.pool_summary())

    def servers(self) -> Any:
        """The imaging servers ``[{"fqdn", "alive", "last_seen", "devices"}]`` (see
        :func:`plans.servers` for servers without a server list)."""
        return self._run(plans.servers(self.context))

    # --- requests ---------------------------------------------------------------------------

    def request(self, device: str, image: str, duration: int, *, environment: str | None = None,
                boot_config: dict[str, Any] | None = None, assignee: str | None = None,
                priority: int | None = None, queue_timeout: int | None = None) -> Any:
        """Ask for ``device`` (a name or ``"any"``); the new :class:`api.Request`, not yet
        ready.  ``priority`` (0-100, the server's default 50) orders the queue, higher first;
        ``queue_timeout`` is how many seconds it may wait for a device (default 600) before it
        fails with ``failed_device_busy``.  A held named device is :class:`errors.DeviceBusy`,
        an unknown image or device :class:`errors.NotFound`."""
        return self._call(api.request_device(device, image, duration, assignee or self.config.assignee,
                                             environment, boot_config, priority, queue_timeout))

    def request_ready(self, device: str, image: str, duration: int, *, environment: str | None = None,
                      boot_config: dict[str, Any] | None = None, assignee: str | None = None,
                      priority: int | None = None, queue_timeout: int | None = None,
                      timeout: float = DEFAULT_WAIT, on_progress: ProgressCallback | None = None,
                      interval: float = POLL_INTERVAL) -> Any:
        """Request (``priority`` and ``queue_timeout`` as for :meth:`request`), wait until ready,
        and look the device up: a :class:`plans.Handover`.  A request that fails, times out or is
        interrupted is returned before the error is raised."""
        return self._run(plans.acquire(self.context, device, image, duration, environment=environment,
                                       boot_config=boot_config, assignee=assignee, priority=priority,
                                       queue_timeout=queue_timeout, timeout=timeout, interval=interval),
                         on_progress)

    def wait(self, request: RequestRef, timeout: float = DEFAULT_WAIT, on_progress: ProgressCallback | None = None,
             interval: float = POLL_INTERVAL) -> Any:
        """Wait until the request is ready: its :class:`api.Request` (state ``ready``), or
        :class:`errors.RequestFailed` / :class:`errors.WaitTimeout`.  ``on_progress`` gets a
        :class:`plans.Progress` whenever the request's or its device's state, or its place in the
        queue, changes."""
        return self._run(plans.wait_ready(self.context, request, timeout, interval), on_progress)

    def status(self, request: RequestRef) -> Any:
        """The request's details with its current ``state``, and its ``queue`` place
        (:class:`api.QueuePlace`) while it waits for a device."""
        return self._run(plans.request_view(self.context, request))

    def requests(self, include_closed: bool = False) -> Any:
        return self._call(api.requests(include_closed))

    def request_log(self, request: RequestRef, timeperiod: int = 0, limit: int = 0) -> Any:
        return self._call(api.request_log(request_id(request), timeperiod, limit), owner(request))

    def renew(self, request: RequestRef, duration: int) -> Any:
        """Make the request expire ``duration`` seconds from now."""
        return self._call(api.renew(request_id(request), duration), owner(request))

    def return_request(self, request: RequestRef) -> Any:
        """Give the device back; the request is closed."""
        return self._call(api.return_request(request_id(request)), owner(request))

    def request_event(self, request: RequestRef, event: str, body: dict[str, Any] | None = None) -> Any:
        return self._call(api.request_event(request_id(request), event, body), owner(request))

    # --- devices ----------------------------------------------------------------------------

    def device_status(self, name: str) -> Any:
        return self._call(api.device_status(name))

    def device_state(self, name: str) -> Any:
        return self._call(api.device_state(name))

    def device_log(self, name: str, timeperiod: int = 0, limit: int = 0) -> Any:
        return self._call(api.device_log(name, timeperiod, limit))

    def power_cycle(self, name: str, pxe_config: str | None = None,
                    boot_config: dict[str, Any] | str | None = None) -> Any:
        return self._call(api.power_cycle(name, pxe_config, boot_config))

    def power_off(self, name: str) -> Any:
        return self._call(api.power_off(name))

    def ping(self, name: str) -> Any:
        """True when the device answers a ping from its imaging server."""
        return self._call(api.ping(name))

    def state_change(self, name: str, old: str, new: str) -> Any:
        """Move the device to ``new`` if it is in ``old`` (:class:`errors.Conflict` if not)."""
        return self._call(api.state_change(name, old, new))

    def please(self, name: str, action: str, image: str | None = None,
               boot_config: dict[str, Any] | str | None = None) -> Any:
        """Ask the device's LifeGuard to ``image``, ``power_cycle``, ``self_test`` or
        ``start_maintenance``."""
        return self._call(api.please(name, action, image, boot_config))

    def device_event(self, name: str, event: str, body: dict[str, Any] | None = None) -> Any:
        return self._call(api.device_event(name, event, body))


class Device:
    """A device handed over for a ready request: what a job needs to use it, and ``renew``.
    (Returned by both clients' ``device()`` context managers.)"""

    def __init__(self, client: BaseClient, handover: plans.Handover) -> None:
        self._client = client
        #: the ready request holding the device
        self.request: api.Request = handover.request
        #: the device's row of the detailed device list
        self.details: dict[str, Any] = handover.device

    @property
    def name(self) -> str:
        return str(self.details["name"])

    @property
    def fqdn(self) -> str:
        return str(self.details.get("fqdn") or "")

    @property
    def request_id(self) -> int:
        return self.request.id

    @property
    def imaging_server(self) -> str:
        return str(self.details.get("imaging_server") or "")

    def renew(self, duration: int) -> Any:
        """Keep the device ``duration`` more seconds from now."""
        return self._client.renew(self.request, duration)

    def __repr__(self) -> str:
        return f"<Device {self.name} ({self.fqdn}) for request {self.request_id}>"
