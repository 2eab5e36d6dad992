"""``mozpool``: the MozPool client command, for CI jobs and people (issue 13).

    mozpool [--servers URLS] [--token T] [--json] COMMAND ...

Servers and token come from the options, ``$MOZPOOL_SERVERS`` / ``$MOZPOOL_TOKEN``, or
``~/.config/mozpool/client.ini`` (:mod:`mozpool.client.config`).  People get aligned tables
(colour on a terminal only); ``--json`` prints exactly one JSON document on stdout (``log
--follow --json``: one document per line, as they come).  Progress goes to stderr.  Exit status:
0 on success; 1 with one line ``mozpool: <reason>`` on stderr on failure; 2 for a usage error;
130 when interrupted.  It uses the blocking client (:mod:`mozpool.client.sync`): no reactor.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any, Callable, Sequence, TextIO

from mozpool.client import errors, plans, render
from mozpool.client.api import Request, ordinal
from mozpool.client.sync import Client

_DURATION = re.compile(r"\A(\d+)([smhd]?)\Z")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: The largest number of seconds the API takes.
MAX_INT32 = 2**31 - 1


def seconds(text: str) -> int:
    """``3600``, ``90s``, ``30m``, ``2h`` or ``1d`` as seconds."""
    found = _DURATION.match(text.strip())
    if found is None or int(found.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive duration: {text!r} (e.g. 3600, 30m, 2h)")
    return int(found.group(1)) * _UNITS[found.group(2)]


def wait_seconds(text: str) -> int:
    """As :func:`seconds`, and ``0`` too: a ``queue_timeout`` of 0 fails at once when no device
    is free.  At most the API's 2147483647."""
    found = _DURATION.match(text.strip())
    if found is None or int(found.group(1)) * _UNITS[found.group(2)] > MAX_INT32:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 0, 600, 10m, 1h)")
    return int(found.group(1)) * _UNITS[found.group(2)]


def priority(text: str) -> int:
    """0-100: higher is served first."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"not a priority from 0 to 100: {text!r}")
    return value


def request_id(text: str) -> int:
    try:
        return plans.request_id(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"b2gbase\": \"http://...\"}'")
    return value


def _common() -> argparse.ArgumentParser:
    """The options every command takes, before or after its name (defaults are applied once, in
    :func:`main`, so a subcommand's absent option does not hide the main one)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--servers", default=argparse.SUPPRESS, metavar="URLS",
                   help="comma-separated server URLs (default: $MOZPOOL_SERVERS or ~/.config/mozpool/client.ini)")
    p.add_argument("--token", default=argparse.SUPPRESS, help="API token (default: $MOZPOOL_TOKEN)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print one JSON document on stdout instead of text")
    p.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                   help="client configuration file (default: ~/.config/mozpool/client.ini)")
    p.add_argument("--http-timeout", type=float, default=argparse.SUPPRESS, metavar="S",
                   help="seconds one call may take over all servers (default 30)")
    p.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                   help="no progress lines on stderr")
    return p


def parser() -> argparse.ArgumentParser:
    common = _common()
    p = argparse.ArgumentParser(
        prog="mozpool", parents=[common],
        description="Request, use and return devices of a MozPool lab; look at the pool. Servers are tried in "
                    "random order until one answers.",
        epilog="Example: mozpool request any --image android --duration 1h --wait --json")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help)

    c = command("request", "request a device (a name, or 'any'); with --wait, until it is ready")
    c.add_argument("device", metavar="DEVICE|any")
    c.add_argument("--image", required=True, help="image to install (e.g. android, b2g)")
    c.add_argument("--duration", required=True, type=seconds, metavar="S",
                   help="how long the request lasts unless renewed: seconds, or 30m, 2h, 1d")
    c.add_argument("--environment", help="only devices in this environment")
    c.add_argument("--boot-config", type=json_object, metavar="JSON",
                   help="the image's boot configuration keys as a JSON object, e.g. '{\"b2gbase\": URL}'")
    c.add_argument("--assignee", help="who holds the device (default: user@host)")
    c.add_argument("--priority", type=priority, metavar="N",
                   help="0-100, higher is served first when devices are short (the server's default: 50)")
    c.add_argument("--queue-timeout", type=wait_seconds, metavar="S",
                   help="how long the request may wait for a free device before it fails with failed_device_busy: "
                        "seconds, or 10m, 1h; 0 fails at once unless a device is free (the server's default: 600)")
    c.add_argument("--wait", action="store_true", help="wait until ready; return the request if it is not")
    c.add_argument("--timeout", type=seconds, default=3600, metavar="S",
                   help="with --wait: give up (and return the request) after this long (default 1h)")

    c = command("status", "a request's state and details (while it waits for a device, its place in the queue)")
    c.add_argument("id", metavar="ID", type=request_id)
    c = command("wait", "wait until a request is ready")
    c.add_argument("id", metavar="ID", type=request_id)
    c.add_argument("--timeout", type=seconds, default=3600, metavar="S", help="give up after this long (default 1h)")
    c = command("renew", "make a request last DURATION more from now")
    c.add_argument("id", metavar="ID", type=request_id)
    c.add_argument("--duration", required=True, type=seconds, metavar="S")
    c = command("return", "return a request's device to the pool")
    c.add_argument("id", metavar="ID", type=request_id)
    c = command("requests", "open requests (with --all, closed ones too)")
    c.add_argument("--all", action="store_true", help="include closed requests")

    c = command("devices", "devices with their state, environment, image and request")
    c.add_argument("--state", help="only devices in this state (shell pattern: 'failed_*')")
    c.add_argument("--environment", help="only devices in this environment (shell pattern)")
    c = command("device", "one device's details")
    c.add_argument("name", metavar="NAME")
    c = command("log", "a device's log; with --follow, new lines as they are written")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    c.add_argument("--limit", type=int, default=100, metavar="N", help="latest N lines first (0: all kept)")
    c.add_argument("--timeout", type=seconds, metavar="S", help="with --follow: stop after this long")
    c = command("power-cycle", "power-cycle a device (optionally into a PXE config)")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--pxe-config", help="network-boot this PXE config")
    c.add_argument("--boot-config", type=json_object, metavar="JSON", help="with --pxe-config: the boot config")
    c = command("power-off", "turn a device off")
    c.add_argument("name", metavar="NAME")
    c = command("ping", "ping a device from its imaging server (exit 1 if it does not answer)")
    c.add_argument("name", metavar="NAME")
    c = command("state-change", "move a device from state OLD to NEW (fails if it is not in OLD)")
    c.add_argument("name", metavar="NAME")
    c.add_argument("old", metavar="OLD")
    c.add_argument("new", metavar="NEW")
    c = command("please", "ask a device's LifeGuard to image, power_cycle, self_test or start_maintenance")
    c.add_argument("name", metavar="NAME")
    c.add_argument("action", choices=["image", "power_cycle", "self_test", "start_maintenance"])
    c.add_argument("--image", help="with 'image': the image")
    c.add_argument("--boot-config", type=json_object, metavar="JSON", help="with 'image': the boot config")

    command("images", "images that can be requested")
    command("summary", "the pool's health: devices by category and hardware type, failed devices")
    command("servers", "the imaging servers and their devices")
    return p


class Output:
    """Where a command's results go: JSON or text on stdout, progress on stderr."""

    def __init__(self, args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> None:
        self.json = bool(getattr(args, "json", False))
        self.quiet = bool(getattr(args, "quiet", False))
        self.stdout = stdout
        self.stderr = stderr
        self.style = render.Style(render.wants_colour(stdout))

    def document(self, value: Any) -> None:
        self.stdout.write(json.dumps(value, indent=2) + "\n")

    def text(self, value: str) -> None:
        self.stdout.write(value + "\n")

    def emit(self, value: Any, text: Callable[[], str]) -> None:
        """``value`` as JSON, or ``text()`` for people."""
        if self.json:
            self.document(value)
        else:
            self.text(text())

    def progress(self) -> tuple[Callable[[plans.Progress], None] | None, Callable[[], None]]:
        if self.quiet:
            return None, lambda: None
        line = render.ProgressLine(self.stderr, render.Style(render.wants_colour(self.stderr)))
        return line.show, line.end


# --- commands -----------------------------------------------------------------------------


def _request_text(request: Request, style: render.Style, device: dict[str, Any] | None = None) -> str:
    pairs: list[tuple[str, Any]] = [
        ("state", style.state(request.state)),
        ("device", request.assigned_device),
    ]
    place = request.queue
    if place is not None:
        # while it waits for a device (issue 14)
        pairs += [
            ("queue", f"{ordinal(place.position)} in queue, {place.ahead} ahead for the same devices"),
            ("ready by", f"~{place.eta.replace('T', ' ')} UTC (estimate)" if place.eta else "no estimate yet"),
            ("why", place.why),
        ]
    if device is not None:
        pairs += [("fqdn", device.get("fqdn")), ("imaging server", device.get("imaging_server"))]
    pairs += [
        ("requested", request.data.get("requested_device")),
        ("image", request.data.get("image")),
        ("environment", request.data.get("environment")),
        ("assignee", request.data.get("assignee")),
    ]
    if request.priority is not None:  # absent from a server without a queue
        pairs.append(("priority", request.priority))
    if request.queue_timeout is not None:
        pairs.append(("queue timeout", f"{request.queue_timeout} s"))
    pairs += [
        ("expires", f"{request.data.get('expires')} UTC"),
        ("url", request.url),
    ]
    return f"request {request.id}\n" + render.block(pairs, style)


def cmd_request(client: Client, args: argparse.Namespace, out: Output) -> int:
    asked = dict(environment=args.environment, boot_config=args.boot_config, assignee=args.assignee,
                 priority=args.priority, queue_timeout=args.queue_timeout)
    if not args.wait:
        request = client.request(args.device, args.image, args.duration, **asked)
        out.emit(request.to_json(), lambda: _request_text(request, out.style))
        return 0
    show, end = out.progress()
    try:
        handover = client.request_ready(args.device, args.image, args.duration, **asked, timeout=args.timeout,
                                        on_progress=show)
    finally:
        end()
    out.emit({**handover.request.to_json(), "device": handover.device},
             lambda: _request_text(handover.request, out.style, handover.device))
    return 0


def cmd_status(client: Client, args: argparse.Namespace, out: Output) -> int:
    request = client.status(args.id)
    out.emit(request.to_json(), lambda: _request_text(request, out.style))
    return 0


def cmd_wait(client: Client, args: argparse.Namespace, out: Output) -> int:
    show, end = out.progress()
    try:
        request = client.wait(args.id, timeout=args.timeout, on_progress=show)
    finally:
        end()
    out.emit(request.to_json(), lambda: _request_text(request, out.style))
    return 0


def cmd_renew(client: Client, args: argparse.Namespace, out: Output) -> int:
    rid = args.id
    client.renew(rid, args.duration)
    request = client.status(rid)
    out.emit(request.to_json(), lambda: f"request {rid} renewed: expires {request.data.get('expires')} UTC")
    return 0


def cmd_return(client: Client, args: argparse.Namespace, out: Output) -> int:
    rid = args.id
    client.return_request(rid)
    request = client.status(rid)
    out.emit(request.to_json(), lambda: f"request {rid} returned ({request.state})")
    return 0


def cmd_requests(client: Client, args: argparse.Namespace, out: Output) -> int:
    rows = client.requests(include_closed=args.all)
    out.emit({"requests": rows}, lambda: render.table(
        ["ID", "STATE", "DEVICE", "DEVICE STATE", "REQUESTED", "ENVIRONMENT", "ASSIGNEE", "EXPIRES", "SERVER"],
        [[r.get("id"), out.style.state(r.get("state")), r.get("assigned_device"),
          out.style.state(r.get("device_state")) if r.get("device_state") else "", r.get("requested_device"),
          r.get("environment"), r.get("assignee"), r.get("expires"), r.get("imaging_server")] for r in rows],
        out.style))
    return 0


def cmd_devices(client: Client, args: argparse.Namespace, out: Output) -> int:
    rows = client.devices(state=args.state, environment=args.environment)
    out.emit({"devices": rows}, lambda: render.table(
        ["NAME", "STATE", "ENVIRONMENT", "IMAGE", "REQUEST", "SERVER", "COMMENTS"],
        [[r.get("name"), out.style.state(r.get("state")), r.get("environment"), r.get("image"), r.get("request_id"),
          r.get("imaging_server"), r.get("comments")] for r in rows],
        out.style))
    return 0


def cmd_device(client: Client, args: argparse.Namespace, out: Output) -> int:
    row = client.device_details(args.name)
    keys = ["fqdn", "imaging_server", "environment", "image", "boot_config", "request_id", "relay_info",
            "mac_address", "inventory_id", "comments"]
    pairs = [("state", out.style.state(row.get("state")))] + [(k.replace("_", " "), row.get(k)) for k in keys]
    out.emit(row, lambda: f"device {row['name']}\n" + render.block(pairs, out.style))
    return 0


def cmd_log(client: Client, args: argparse.Namespace, out: Output) -> int:
    if not args.follow:
        entries = client.device_log(args.name, limit=args.limit)
        out.emit({"log": entries}, lambda: "\n".join(render.log_line(e, out.style) for e in entries))
        return 0
    for entry in client.follow_log(args.name, limit=args.limit, timeout=args.timeout):
        out.stdout.write((json.dumps(entry) if out.json else render.log_line(entry, out.style)) + "\n")
        out.stdout.flush()
    return 0


def _done(out: Output, name: str, action: str, text: str) -> int:
    out.emit({"device": name, "action": action, "ok": True}, lambda: text)
    return 0


def cmd_power_cycle(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.boot_config is not None and not args.pxe_config:
        raise errors.MozpoolError("--boot-config needs --pxe-config")
    client.power_cycle(args.name, args.pxe_config, args.boot_config)
    return _done(out, args.name, "power-cycle",
                 f"power-cycle of {args.name} started (mozpool log {args.name} --follow shows how it goes)")


def cmd_power_off(client: Client, args: argparse.Namespace, out: Output) -> int:
    client.power_off(args.name)
    return _done(out, args.name, "power-off", f"power-off of {args.name} started")


def cmd_ping(client: Client, args: argparse.Namespace, out: Output) -> int:
    answered = client.ping(args.name)
    if out.json:
        out.document({"device": args.name, "success": answered})
    elif answered:
        out.text(f"{args.name} answers ping")
    if not answered:
        raise errors.MozpoolError(f"{args.name} does not answer ping")
    return 0


def cmd_state_change(client: Client, args: argparse.Namespace, out: Output) -> int:
    client.state_change(args.name, args.old, args.new)
    return _done(out, args.name, "state-change", f"{args.name}: {args.old} -> {args.new}")


def cmd_please(client: Client, args: argparse.Namespace, out: Output) -> int:
    try:
        client.please(args.name, args.action, args.image, args.boot_config)
    except ValueError as e:
        raise errors.MozpoolError(str(e)) from None
    return _done(out, args.name, "please_" + args.action, f"{args.name}: please_{args.action} sent")


def cmd_images(client: Client, args: argparse.Namespace, out: Output) -> int:
    rows = client.images()
    out.emit({"images": rows}, lambda: render.table(
        ["NAME", "BOOT CONFIG KEYS", "REUSABLE", "SUT AGENT"],
        [[r.get("name"), ", ".join(r.get("boot_config_keys") or []), "yes" if r.get("can_reuse") else "no",
          "yes" if r.get("has_sut_agent") else "no"] for r in rows], out.style))
    return 0


_CATEGORIES = ("in_use", "idle", "processing", "failed")


def cmd_summary(client: Client, args: argparse.Namespace, out: Output) -> int:
    report = client.pool_summary()

    def text() -> str:
        by = report.get("by_category", {})
        head = f"{report.get('total', 0)} devices: " + ", ".join(
            f"{by.get(c, 0)} {c.replace('_', ' ')}" for c in _CATEGORIES)
        types = render.table(["HARDWARE TYPE", "TOTAL", *(c.upper().replace("_", " ") for c in _CATEGORIES)],
                             [[name, counts.get("total"), *(counts.get(c, 0) for c in _CATEGORIES)]
                              for name, counts in sorted(report.get("by_hardware_type", {}).items())], out.style)
        parts = [head, "", types]
        failed = report.get("failed_devices") or []
        if failed:
            parts += ["", out.style.paint("failed devices", "bold"), render.table(
                ["NAME", "STATE", "HARDWARE TYPE", "SERVER", "ENVIRONMENT", "COMMENTS"],
                [[d.get("name"), out.style.state(d.get("state")), d.get("hardware_type"), d.get("imaging_server"),
                  d.get("environment"), d.get("comments")] for d in failed], out.style)]
        return "\n".join(parts)

    out.emit(report, text)
    return 0


def cmd_servers(client: Client, args: argparse.Namespace, out: Output) -> int:
    rows = client.servers()

    def alive(value: Any) -> str:
        return "?" if value is None else out.style.paint("yes", "green") if value else out.style.paint("no", "red")

    out.emit({"servers": rows}, lambda: render.table(
        ["SERVER", "ALIVE", "LAST SEEN", "DEVICES"],
        [[r.get("fqdn"), alive(r.get("alive")), r.get("last_seen"), r.get("devices")] for r in rows], out.style))
    return 0


COMMANDS: dict[str, Callable[[Client, argparse.Namespace, Output], int]] = {
    "request": cmd_request, "status": cmd_status, "wait": cmd_wait, "renew": cmd_renew, "return": cmd_return,
    "requests": cmd_requests, "devices": cmd_devices, "device": cmd_device, "log": cmd_log,
    "power-cycle": cmd_power_cycle, "power-off": cmd_power_off, "ping": cmd_ping, "state-change": cmd_state_change,
    "please": cmd_please, "images": cmd_images, "summary": cmd_summary, "servers": cmd_servers,
}


def _one_line(e: BaseException, text: str | None = None) -> str:
    """The error and its notes (e.g. "request 12 was returned") on one line."""
    notes = getattr(e, "__notes__", None) or []
    text = text or " ".join(str(e).split()) or type(e).__name__
    return text + (f" ({'; '.join(notes)})" if notes else "")


def run(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None,
        make_client: Callable[..., Client] = Client) -> int:
    """The command's exit status (argparse exits by itself with 2 on a usage error)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    args = parser().parse_args(argv)
    out = Output(args, stdout, stderr)
    try:
        client = make_client(getattr(args, "servers", None), token=getattr(args, "token", None),
                             timeout=getattr(args, "http_timeout", None), config_file=getattr(args, "config", None))
        return COMMANDS[args.command](client, args, out)
    except (errors.MozpoolError, ValueError) as e:
        stdout.flush()
        stderr.write(f"mozpool: {_one_line(e)}\n")
        return 1
    except KeyboardInterrupt as e:
        stderr.write(f"\nmozpool: {_one_line(e, 'interrupted')}\n")
        return 130
    except BrokenPipeError:
        return 1


def main(argv: Sequence[str] | None = None) -> None:
    raise SystemExit(run(argv))


if __name__ == "__main__":
    main()
