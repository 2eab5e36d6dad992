"""`/api/openapi.json` against the server it describes: schemathesis (https://schemathesis.io, the
``test`` extra) fuzzes every documented operation of a real ``--fakes`` daemon with all of its
checks - no 5xx, status codes, content types, headers and bodies as documented, schema-valid
calls accepted, schema-violating calls refused, unsupported methods answered 405 with ``Allow``,
and its stateful phase over the links it infers - and must report no failure at all.  Warnings
that mean the document and the server disagree (``validation_mismatch``) or that this test's
configuration went stale (``unmatched_filter``, ``dictionary_mismatch``, ...) fail it too.

The run uses the real names of the pool (devices, request ids, the relay board, PXE configs,
images, environments, events, states) as schemathesis "dictionaries" beside its generated
values, so calls reach the handlers and the state machines instead of stopping at a 404.

What is left out, and why:

- ``GET /api/events`` is an endless Server-Sent Events stream; schemathesis would wait on it
  for ever.  tests/web/test_events.py and tests/system/test_events.py cover it.
- ``GET /api/device/{device}/event/please_image/``: GET acts as a POST with an empty body, and
  please_image requires ``image`` (spec 4.1), so a schema-valid GET is always refused with 400;
  the route serves GET for every event, for the original's live-boot scripts.  For this one
  operation ``positive_data_acceptance`` expects 400 (or 404 for an unknown device) instead of
  a 2xx, and its by-design warnings are not shown.
- Images whose ``boot_config_keys`` are not empty (b2g needs ``b2gbase``) are not offered to
  request creation: which keys a request must carry is data in the images table, which the
  document (built once, served even without a database) cannot state per image.  A random
  image name still goes through, and gets its 404.
- ``boot_config`` values in bodies are drawn from a list of JSON texts: "a string holding JSON"
  cannot be asserted in JSON Schema 2020-12 (``contentMediaType`` is an annotation there), so
  schemathesis would take any string for valid, and the server rightly refuses non-JSON text
  with 400 (tests/web/test_actions.py, spec 4.1 and 5.1).
- The event dictionaries of ``.../event/{event}/`` leave out please_image and
  lifeguard_finished: those two read their bodies and have paths of their own in the document,
  which OpenAPI matches before the templated one.

Environment: ``MOZPOOL_FUZZ_EXAMPLES`` (test cases per operation, default 25),
``MOZPOOL_FUZZ_SEED`` (default fixed; ``random`` for a new one each run, printed in the report),
``MOZPOOL_FUZZ_TIMEOUT`` (seconds for the whole schemathesis run, default 300).  Without
schemathesis the test skips, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import random
import sys
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import SkipTest, TestCase

from mozpool.lifeguard.interfaces import DEVICE_EVENTS
from mozpool.web.validate import DEVICE_STATES
from tests.system.daemon import Daemon
from tests.system.test_two_servers import daemon_errors

EXAMPLES = int(os.environ.get("MOZPOOL_FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("MOZPOOL_FUZZ_SEED", "20260101")
RUN_TIMEOUT = float(os.environ.get("MOZPOOL_FUZZ_TIMEOUT", "300"))

#: Warnings that fail the run: the document and the server disagree, or this configuration no
#: longer matches the document (an operation id, a dictionary value).  missing_test_data is left
#: out: which operations keep meeting 404s is up to chance.
FAIL_ON_WARNINGS = [
    "validation_mismatch", "method_not_allowed", "unsupported_regex", "unresolvable_reference",
    "unmatched_filter", "dictionary_mismatch",
]

REQUEST_EVENTS = ["lifeguard_contacted", "find_device", "close", "expire"]
PLEASE_EVENTS = ["please_power_cycle", "please_self_test", "please_start_maintenance"]
#: JSON texts, as a boot_config must be (see the module docstring)
JSON_TEXTS = ["{}", "", '{"b2gbase": "http://example.invalid/b2g/"}', "[1, 2]", "null", '"x"', " {} "]


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _require_schemathesis() -> str:
    """schemathesis's version, or a skip (a failure under CI) saying how to install it."""
    why, version = None, ""
    if importlib.util.find_spec("schemathesis") is None:
        why = "schemathesis not installed (pip install -e '.[test]')"
    else:
        version = importlib.metadata.version("schemathesis")
        major, minor = (int(part) for part in version.split(".")[:2])
        if not (4, 32) <= (major, minor) < (5, 0):
            why = f"schemathesis {version} installed; this test speaks 4.32+ (setup.py's test extra)"
    if why is None:
        return version
    if _ci():
        raise AssertionError(f"CI=true but {why}")
    raise SkipTest(why)


def _toml(value: Any) -> str:
    """A TOML value from strings, numbers, booleans, lists and inline tables (ASCII only)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"


def _pick(name: str, probability: float = 0.7) -> dict[str, Any]:
    return {"dictionary": name, "probability": probability}


def config(names: dict[str, list[str]]) -> str:
    """schemathesis.toml for a pool with these ``names`` (dictionary -> values)."""
    lines = ["[warnings]", f"fail-on = {_toml(FAIL_ON_WARNINGS)}", ""]
    for name, values in names.items():
        lines += [f"[dictionaries.{name}]", f"values = {_toml(values)}", ""]
    parameters = {
        "path.device": _pick("devices"), "path.id": _pick("requests"), "path.relay": _pick("relays"),
        "path.pxe": _pick("pxe_configs"), "path.old": _pick("states"), "path.event": _pick("device_events"),
        "body.image": _pick("images"), "body.environment": _pick("environments", 0.5),
        "body.pxe_config": _pick("pxe_configs"), "body.boot_config": _pick("json_texts", 1.0),
    }
    lines += ["[parameters]"] + [f"{json.dumps(k)} = {_toml(v)}" for k, v in parameters.items()] + [""]
    lines += [
        "[[operations]]",
        f"include-operation-id = {_toml(['get_api_request_id_event_event', 'post_api_request_id_event_event'])}",
        f"parameters = {_toml({'path.event': _pick('request_events')})}",
        "",
        "[[operations]]",
        'include-operation-id = "get_api_device_device_event_please_image"',
        "warnings = false",
        "checks.positive_data_acceptance.expected-statuses = [400, 404]",
        "",
    ]
    return "\n".join(lines)


class _Collect(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output: list[bytes] = []
        self.ended: defer.Deferred[int | None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output.append(data)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))

    def text(self) -> str:
        return b"".join(self.output).decode("utf-8", "replace")


class OpenAPIFuzz(TestCase):
    timeout = RUN_TIMEOUT + 120

    async def pool_names(self, d: Daemon) -> dict[str, list[str]]:
        """The pool's real names, after making a few requests to have ids to use."""

        async def schema_made() -> bool:
            # /api/version/ answers first; reads answer 503 until start-up has created the schema
            return (await d.call("GET", "/api/device/list/"))[0] == 200

        await d.wait_for(schema_made, 60, "the database schema")
        await d.wait_ready()
        ids = []
        for _ in range(3):
            code, body = await d.request("any", duration=3600)
            self.assertEqual(code, 200, body)
            ids.append(str(body["request"]["id"]))
        code, _ = await d.call("POST", f"/api/request/{ids[-1]}/return/")  # and a closed one
        self.assertEqual(code, 204)
        devices = (await d.get("/api/device/list/?details"))["devices"]
        # relay_info is host:port:bank:relay; the board is named host-port.
        relays = sorted({"-".join(x["relay_info"].split(":")[:2]) for x in devices})
        for relay in relays:
            self.assertEqual((await d.call("GET", f"/api/relay/{relay}/test/"))[0], 200, relay)
        images = [x["name"] for x in (await d.get("/api/image/list/"))["images"] if not x["boot_config_keys"]]
        self.assertTrue(images)
        return {
            "devices": [x["name"] for x in devices] + ["any"],
            "requests": ids,
            "relays": relays,
            "pxe_configs": (await d.get("/api/bmm/pxe_config/list/"))["pxe_configs"],
            "images": images,
            "environments": (await d.get("/api/environment/list/"))["environments"],
            "device_events": PLEASE_EVENTS + sorted(DEVICE_EVENTS),
            "request_events": REQUEST_EVENTS,
            "states": sorted(DEVICE_STATES),
            "json_texts": JSON_TEXTS,
        }

    async def test_schemathesis_finds_nothing(self) -> None:
        version = _require_schemathesis()
        d = Daemon(self, fakes=4, time_scale=0.01)
        await d.start()
        names = await self.pool_names(d)
        config_path = os.path.join(d.dir, "schemathesis.toml")
        with open(config_path, "w") as f:
            f.write(config(names))
        seed = str(random.randrange(2**32)) if SEED == "random" else SEED
        argv = [
            sys.executable, "-m", "schemathesis.cli", "--config-file", config_path, "run",
            f"{d.url}/api/openapi.json", "--checks", "all", "--exclude-path", "/api/events",
            "--max-examples", str(EXAMPLES), "--seed", seed, "--workers", "1", "--request-timeout", "20",
            "--generation-database", "none", "--no-color",
        ]
        env = dict(os.environ, NO_COLOR="1", COLUMNS="120", PYTHONUNBUFFERED="1")
        run = _Collect()
        process = reactor.spawnProcess(run, sys.executable, argv, env=env, path=d.dir)
        timer = reactor.callLater(RUN_TIMEOUT, process.signalProcess, "KILL")
        try:
            code = await run.ended
        finally:
            if timer.active():
                timer.cancel()
        report = run.text()
        command = " ".join(argv[1:])
        print(f"schemathesis {version}: {command}\n{report[-3000:]}")
        if timer.called:
            self.fail(f"schemathesis did not finish in {RUN_TIMEOUT:.0f} s ({command}):\n{report}")
        self.assertEqual(code, 0, f"schemathesis reported failures ({command}):\n{report}")
        self.assertIn("Test cases:", report)
        self.assertEqual((await d.call("GET", "/api/version/"))[0], 200, "the daemon still answers")
        self.assertEqual(daemon_errors(d), [])
