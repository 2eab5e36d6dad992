"""The client against real daemons (issue 13): the ``mozpool`` command and the blocking library
run as child processes, as a CI job runs them; the Twisted client runs in this process.

- a server list whose first entries are dead still serves; ``--json`` output parses;
- a busy named device and an unknown image fail with one clear line;
- the context manager returns the device when the block raises;
- ``log --follow`` follows the event stream;
- every call is bounded when all servers are gone (refusing, or accepting and never answering);
- a request made through server A for a device of server B (two daemons, one MariaDB) is
  followed to ready, then renewed and returned through B (redirected to A, the owner).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

from twisted.internet import defer, protocol, reactor, task, utils
from twisted.trial.unittest import TestCase

from mozpool.client.tx import MozpoolClient
from tests.system.daemon import ROOT, Daemon, free_port
from tests.system.test_two_servers import daemon_errors, two_servers


async def mozpool(test: TestCase, *args: str) -> tuple[int, str, str]:
    """Run the ``mozpool`` command; (exit status, stdout, stderr)."""
    return await _python(test, ["-m", "mozpool.client.cli", *args])


async def _python(test: TestCase, args: list[str]) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOZPOOL_")}
    env.update(PYTHONPATH=ROOT, XDG_CONFIG_HOME=os.path.abspath(test.mktemp()))
    out, err, code = await utils.getProcessOutputAndValue(sys.executable, args, env=env, path=ROOT)
    return code, out.decode(), err.decode()


class _Running(protocol.ProcessProtocol):
    """A ``mozpool`` command still running, its output readable as it comes."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)

    async def shows(self, check: Any, what: str, timeout: float = 30) -> None:
        """Wait (up to ``timeout`` s) until ``check(self)`` holds; fail saying ``what`` otherwise."""
        deadline = reactor.seconds() + timeout
        while not check(self):
            if self.ended.called or reactor.seconds() > deadline:
                raise AssertionError(f"the command never showed {what}:\n{self.out!r}\n{self.err!r}")
            await task.deferLater(reactor, 0.05, lambda: None)

    async def result(self) -> tuple[int, str, str]:
        code = await self.ended
        return code, self.out.decode(), self.err.decode()


def start_mozpool(test: TestCase, *args: str) -> _Running:
    """Start the ``mozpool`` command (as :func:`mozpool` runs it) and return at once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOZPOOL_")}
    env.update(PYTHONPATH=ROOT, XDG_CONFIG_HOME=os.path.abspath(test.mktemp()))
    running = _Running()
    process = reactor.spawnProcess(running, sys.executable, [sys.executable, "-m", "mozpool.client.cli", *args],
                                   env=env, path=ROOT)

    def stop() -> Any:
        if not running.ended.called:  # a test that failed before the command ended
            process.signalProcess("KILL")
            running.ended.addErrback(lambda f: None)
        return running.ended

    test.addCleanup(stop)
    return running


def dead_servers(count: int) -> list[str]:
    """URLs of ports nothing listens on."""
    return [f"http://127.0.0.1:{free_port()}" for _ in range(count)]


CONTEXT_MANAGER_SCRIPT = """
import json, sys
from mozpool.client.sync import Client

client = Client(servers=sys.argv[1:], assignee="ci-job")
try:
    with client.device("any", image="android", duration=600, timeout=60) as dev:
        print(json.dumps({"id": dev.request_id, "name": dev.name, "fqdn": dev.fqdn, "state": dev.request.state}))
        raise RuntimeError("the tests failed")
except RuntimeError as e:
    print(json.dumps({"error": str(e), "notes": getattr(e, "__notes__", [])}))
"""


class OneServer(TestCase):
    timeout = 180

    async def test_ci_job(self) -> None:
        d = Daemon(self, fakes=3, time_scale=0.01)
        await d.start()
        await d.wait_ready()
        servers = ",".join(dead_servers(3) + [d.url])

        # Reads through a list whose other servers are dead: one JSON document each.
        code, out, err = await mozpool(self, "--servers", servers, "--json", "devices")
        self.assertEqual(code, 0, err)
        self.assertEqual([x["name"] for x in json.loads(out)["devices"]], ["panda-0001", "panda-0002", "panda-0003"])
        for command in (["summary"], ["servers"], ["requests"], ["device", "panda-0001"], ["log", "panda-0001"]):
            code, out, err = await mozpool(self, "--servers", servers, "--json", *command)
            self.assertEqual(code, 0, (command, err))
            json.loads(out)
        code, out, _ = await mozpool(self, "--servers", servers, "--json", "servers")
        self.assertEqual(json.loads(out)["servers"][0]["fqdn"], d.fqdn)

        # A request, waited for: the ready request, with a progress line per change on stderr.
        code, out, err = await mozpool(self, "--servers", servers, "request", "any", "--image", "android",
                                       "--duration", "600", "--wait", "--timeout", "90", "--json")
        self.assertEqual(code, 0, err)
        ready = json.loads(out)
        self.assertEqual(ready["state"], "ready")
        self.assertEqual(ready["url"], f"http://{d.fqdn}/api/request/{ready['id']}/")
        self.assertEqual(ready["device"]["name"], ready["assigned_device"])
        self.assertIn(f"request {ready['id']}: ready, device {ready['assigned_device']} ready", err)
        self.assertEqual(await d.request_state(ready["id"]), "ready")

        # The same device by name: busy; an unknown image: refused.  One line each, exit 1.
        held = ready["assigned_device"]
        code, out, err = await mozpool(self, "--servers", servers, "request", held, "--image", "android",
                                       "--duration", "60")
        self.assertEqual((code, out, err), (1, "", f"mozpool: device {held} is busy: held by request {ready['id']}\n"))
        code, out, err = await mozpool(self, "--servers", servers, "request", "any", "--image", "nosuch",
                                       "--duration", "60", "--wait")
        self.assertEqual((code, out, err), (1, "", "mozpool: unknown image nosuch\n"))

        code, out, err = await mozpool(self, "--servers", servers, "--json", "return", str(ready["id"]))
        self.assertEqual((code, json.loads(out)["state"]), (0, "closed"), err)
        await d.wait_ready()

        # The blocking library's context manager, in a script whose block raises.
        code, out, err = await _python(self, ["-c", CONTEXT_MANAGER_SCRIPT, *dead_servers(1), d.url])
        self.assertEqual(code, 0, err)
        handed, raised = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(handed["state"], "ready")
        self.assertTrue(handed["fqdn"].startswith(handed["name"]), handed)
        self.assertEqual(raised, {"error": "the tests failed", "notes": [f"request {handed['id']} was returned"]})
        self.assertEqual(await d.request_state(handed["id"]), "closed")

        # log --follow reads the event stream while a power-cycle writes to the log.  The
        # power-cycle starts once the follower printed the latest line: its stream is open then.
        follow = start_mozpool(self, "--servers", d.url, "log", "panda-0002", "--follow", "--limit", "1",
                               "--timeout", "10", "--json")
        await follow.shows(lambda p: b"\n" in p.out, "the device's latest log line")
        code, out, err = await mozpool(self, "--servers", d.url, "power-cycle", "panda-0002")
        self.assertEqual(code, 0, err)
        code, out, err = await follow.result()
        self.assertEqual(code, 0, err)
        entries = [json.loads(line) for line in out.splitlines()]
        self.assertIn("power-cycle started", [e["message"] for e in entries])
        ids = [e["id"] for e in entries]
        self.assertEqual(ids, sorted(set(ids)), "in order, none twice")

        self.assertEqual(daemon_errors(d), [])

    async def test_twisted_client(self) -> None:
        """The Twisted client on this reactor: the event stream and ``async with device()``."""
        d = Daemon(self, fakes=2, time_scale=0.01)
        await d.start()
        await d.wait_ready()
        client = MozpoolClient(dead_servers(2) + [d.url], reactor=reactor)
        self.addCleanup(client.close)
        events: list[Any] = []
        stream = client.events(events.append, types=["request_state", "device_comments"])
        stream.addErrback(lambda f: f.trap(defer.CancelledError))
        self.addCleanup(stream.cancel)

        async def seen(kind: str, **data: Any) -> list[Any]:
            deadline = reactor.seconds() + 10
            while reactor.seconds() < deadline:
                found = [e for e in events if e.type == kind and data.items() <= e.data.items()]
                if found:
                    return found
                await task.deferLater(reactor, 0.1, lambda: None)
            raise AssertionError(f"no {kind} {data} in {events}")

        # The stream is open once it shows a change made now.
        while not [e for e in events if e.type == "device_comments"]:
            await d.call("POST", "/api/device/panda-0001/set-comments/", {"comments": "stream open?"})
            await task.deferLater(reactor, 0.5, lambda: None)
        async with client.device("any", image="android", duration=600, timeout=60) as dev:
            self.assertEqual((await client.status(dev.request)).state, "ready")
            rid = dev.request_id
        self.assertEqual(await d.request_state(rid), "closed")
        await seen("request_state", request=rid, state="closed")
        states = [e.data["state"] for e in events if e.type == "request_state" and e.data["request"] == rid]
        self.assertEqual((states[0], states[-1]), ("new", "closed"), states)
        self.assertIn("ready", states)


class Queued(TestCase):
    timeout = 240

    async def test_queue_place_from_the_command(self) -> None:
        """Issue 14 through the command: --priority and --queue-timeout reach the daemon, ``status``
        says where a waiting request stands, a priority-90 request overtakes it, and ``wait``'s
        progress lines follow its place until it is served."""
        d = Daemon(self, fakes=1, time_scale=0.01)
        await d.start()
        await d.wait_ready()
        code, out, err = await mozpool(self, "--servers", d.url, "--json", "request", "any", "--image", "android",
                                       "--duration", "600", "--wait", "--timeout", "90")
        self.assertEqual(code, 0, err)
        holder = json.loads(out)["id"]
        code, out, err = await mozpool(self, "--servers", d.url, "--json", "request", "any", "--image", "android",
                                       "--duration", "600", "--priority", "20", "--queue-timeout", "10m")
        self.assertEqual(code, 0, err)
        low = json.loads(out)
        self.assertEqual((low["priority"], low["queue_timeout"]), (20, 600))

        async def place(rid: int) -> Any:
            status = await d.get(f"/api/request/{rid}/status/")
            return status.get("queue") if status["state"] == "finding_device" else None

        await d.wait_for(lambda: place(low["id"]), 30, "the request to wait in the queue")
        code, out, err = await mozpool(self, "--servers", d.url, "request", "any", "--image", "android",
                                       "--duration", "600", "--priority", "90")
        self.assertEqual(code, 0, err)
        high = int(out.split()[1])
        await d.wait_for(lambda: _at(place(low["id"]), 2), 30, "the priority-90 request to go first")
        code, out, err = await mozpool(self, "--servers", d.url, "status", str(low["id"]))
        self.assertEqual(code, 0, err)
        self.assertIn("2nd in queue, 1 ahead for the same devices", out)
        self.assertIn("priority       20", out)

        waiting = start_mozpool(self, "--servers", d.url, "wait", str(low["id"]), "--timeout", "120")
        # The devices move on once ``wait`` has shown the place it starts from.
        await waiting.shows(lambda p: b"2nd in queue (1 ahead)" in p.err, "the request 2nd in queue")
        for rid in (holder, high):
            await d.call("POST", f"/api/request/{rid}/return/", {})
            if rid == holder:
                await d.wait_request(high, timeout=90)
        code, out, err = await waiting.result()
        self.assertEqual(code, 0, err)
        lines = err.splitlines()
        second = next(i for i, line in enumerate(lines) if "2nd in queue (1 ahead), ready by ~" in line)
        first = next(i for i, line in enumerate(lines) if "1st in queue (0 ahead)" in line)
        self.assertLess(second, first, lines)
        self.assertIn(f"request {low['id']}: ready, device panda-0001 ready", lines[-1])
        self.assertEqual(daemon_errors(d), [])


async def logged(d: Daemon, text: str, timeout: float = 10) -> None:
    """Wait until ``text`` is in the daemon's log file (fail, with the log's tail, after ``timeout`` s)."""
    async def found() -> bool:
        return text in d.log_text()

    await d.wait_for(found, timeout, f"{text!r} in the log of {d.fqdn}")


async def _at(place: Any, position: int) -> bool:
    found = await place
    return bool(found) and found["position"] == position


class AllGone(TestCase):
    timeout = 120

    async def test_bounded(self) -> None:
        """Refused connections fail at once; a server that accepts and never answers costs the
        call's bound at most: one line, exit 1, within the bound."""
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel accepts; nobody answers
        self.addCleanup(silent.close)
        refused = dead_servers(2)
        all_gone = ",".join(refused + [f"http://127.0.0.1:{silent.getsockname()[1]}"])
        for command in (["devices"], ["request", "any", "--image", "android", "--duration", "60", "--wait"],
                        ["return", "7"], ["log", "panda-0001", "--follow"], ["status", "7"]):
            started = time.monotonic()
            code, out, err = await mozpool(self, "--servers", all_gone, "--http-timeout", "3", *command)
            took = time.monotonic() - started
            self.assertEqual((code, out), (1, ""), command)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertIn(":" + str(silent.getsockname()[1]) + ": no answer within", err)
            self.assertLess(took, 3 + 2.5, command)  # the bound, plus starting Python
            if "not repeated on another server" in err:
                continue  # a request creation the silent server may have received: not sent twice
            self.assertTrue(err.startswith("mozpool: no MozPool server answered "), err)
            for url in refused:  # each tried, unless the silent one, tried first, used the call's time
                self.assertTrue(f"{url}: connection refused" in err or "not tried" in err and url in err, err)
        started = time.monotonic()
        code, out, err = await mozpool(self, "--servers", ",".join(refused), "devices")
        self.assertEqual(code, 1)
        self.assertLess(time.monotonic() - started, 2.5)


class TwoServers(TestCase):
    timeout = 240

    async def test_request_through_a_for_a_device_of_b(self) -> None:
        a, b = await two_servers(self, fakes=2, time_scale=0.01, access_log=True)
        await a.wait_ready()
        await b.wait_ready()
        listed = (await a.get("/api/device/list/?details"))["devices"]
        target = next(x["name"] for x in listed if x["imaging_server"] == b.fqdn)

        code, out, err = await mozpool(self, "--servers", a.url, "request", target, "--image", "android",
                                       "--duration", "600", "--wait", "--timeout", "120", "--json")
        self.assertEqual(code, 0, err)
        ready = json.loads(out)
        rid = ready["id"]
        self.assertEqual((ready["state"], ready["assigned_device"]), ("ready", target))
        self.assertEqual(ready["url"], f"http://{a.fqdn}/api/request/{rid}/")
        self.assertEqual(ready["device"]["imaging_server"], b.fqdn)

        # Through B only: B redirects the request's calls to A, the client follows with the body.
        code, out, err = await mozpool(self, "--servers", b.url, "--json", "renew", str(rid), "--duration", "1200")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["state"], "ready")
        # (the daemons' access lines reach their log files through pipes this process reads: wait)
        await logged(b, f'"POST /api/request/{rid}/renew/ HTTP/1.1" 302')
        await logged(a, f'"POST /api/request/{rid}/renew/ HTTP/1.1" 204')
        code, out, err = await mozpool(self, "--servers", b.url, "--json", "return", str(rid))
        self.assertEqual((code, json.loads(out)["state"]), (0, "closed"), err)
        self.assertEqual(await a.request_state(rid), "closed")
        # A power-cycle of B's device sent to A goes to B.
        code, out, err = await mozpool(self, "--servers", a.url, "power-cycle", target)
        self.assertEqual(code, 0, err)
        self.assertEqual(daemon_errors(a) + daemon_errors(b), [])
