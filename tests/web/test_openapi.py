"""The OpenAPI document against the spec's endpoint index and the registered routes."""

from __future__ import annotations

import json
import re
from typing import Callable

from twisted.trial.unittest import SynchronousTestCase

from mozpool import __version__
from mozpool.web import api, auth, openapi, validate
from mozpool.web.errors import BadRequest

INDEX = [
    "/api/version/", "/api/device/list/", "/api/device/{device}/request/", "/api/request/list/",
    "/api/request/{id}/details/", "/api/request/{id}/status/", "/api/request/{id}/log/",
    "/api/request/{id}/renew/", "/api/request/{id}/return/", "/api/request/{id}/event/{event}/",
    "/api/image/list/", "/api/device/{device}/event/{event}/",
    "/api/device/{device}/state-change/{old}/to/{new}/", "/api/device/{device}/status/",
    "/api/device/{device}/state/", "/api/device/{device}/power-cycle/", "/api/device/{device}/power-off/",
    "/api/device/{device}/clear-pxe/", "/api/device/{device}/ping/", "/api/relay/{relay}/test/",
    "/api/device/{device}/log/", "/api/device/{device}/bootconfig/", "/api/device/{device}/set-comments/",
    "/api/device/{device}/set-environment/", "/api/environment/list/", "/api/bmm/pxe_config/list/",
    "/api/bmm/pxe_config/{pxe}/details/", "/api/openapi.json", "/api/pool/summary/", "/metrics",
    "/api/events", "/api/whoami/", "/api/server/list/", "/api/token/list/", "/api/token/create/", "/api/token/{name}/revoke/",
    # health (issue 15)
    "/api/device/{device}/history/", "/api/request/{id}/history/", "/api/device/{device}/why/",
    "/api/request/{id}/why/", "/api/pool/boots/",
    # fault isolation (issue 15)
    "/api/health/", "/api/relay/{relay}/health/",
]


class OpenAPITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.doc = openapi.document(__version__)

    def test_paths_are_the_index(self) -> None:
        """One entry per route, plus the concrete spellings of an event whose body differs."""
        self.assertEqual(sorted(set(self.doc["paths"]) - set(openapi.SPECIALISED)), sorted(INDEX))
        self.assertEqual(len(self.doc["paths"]) - len(openapi.SPECIALISED), 43)

    def test_routes_match_the_document(self) -> None:
        routes = {path: {m.lower() for m in methods} for path, methods in api.ROUTES}
        documented = {p: set(item) - {"parameters", "options"} for p, item in self.doc["paths"].items()}
        for concrete, template in openapi.SPECIALISED.items():
            # served by the template's route: the same methods, the placeholder spelled out
            self.assertEqual(documented.pop(concrete), routes[template])
            prefix, suffix = template.split("{event}")
            self.assertTrue(concrete.startswith(prefix) and concrete.endswith(suffix), concrete)
        self.assertEqual(routes, documented)
        with_options = {p for p, item in self.doc["paths"].items() if "options" in item}
        self.assertEqual(with_options, set(api.REDIRECTING) | set(openapi.SPECIALISED))

    def test_header(self) -> None:
        self.assertTrue(self.doc["openapi"].startswith("3."))
        self.assertEqual(self.doc["info"]["version"], __version__)
        self.assertTrue(self.doc["info"]["title"])
        json.dumps(self.doc)  # serialisable

    def test_every_operation_is_complete(self) -> None:
        schemas = self.doc["components"]["schemas"]
        refs = []
        for path, item in self.doc["paths"].items():
            names = [p["name"] for p in item.get("parameters", [])]
            self.assertEqual(names, [s[1:-1] for s in path.split("/") if s.startswith("{")], path)
            for method, op in item.items():
                if method == "parameters":
                    continue
                self.assertIn("responses", op)
                for status, response in op["responses"].items():
                    self.assertTrue(response["description"])
                    if status not in ("204",) and path != "/metrics":
                        content = response["content"]
                        (media,) = content.values()
                        refs.append(media["schema"]["$ref"])
                if "requestBody" in op:
                    refs.append(op["requestBody"]["content"]["application/json"]["schema"]["$ref"])
        for ref in refs:
            self.assertIn(ref.rsplit("/", 1)[1], schemas)

    def test_auth_statuses(self) -> None:
        """Every call that is not public may answer 401 (no or a bad credential) and 403 (too
        small a role; on a read, a device's boot token used for more than its boot config)."""
        for (template, method), rule in auth.RULES.items():
            responses = set(self.doc["paths"][template][method.lower()]["responses"])
            if rule.role == auth.PUBLIC:
                self.assertFalse({"401", "403"} & responses, template)
            else:
                self.assertLessEqual({"401", "403"}, responses, f"{method} {template}")

    def test_statuses_of_the_spec(self) -> None:
        paths = self.doc["paths"]
        self.assertEqual(set(paths["/api/device/{device}/request/"]["post"]["responses"]),
                         {"200", "400", "401", "403", "404", "405", "409", "413", "503"})
        self.assertEqual(set(paths["/api/request/{id}/renew/"]["post"]["responses"]),
                         {"204", "302", "400", "401", "403", "404", "405", "413", "503"})
        self.assertIn("409", paths["/api/device/{device}/state-change/{old}/to/{new}/"]["post"]["responses"])
        self.assertIn("requestBody", paths["/api/device/{device}/power-cycle/"]["post"])
        query = [p["name"] for p in paths["/api/device/{device}/log/"]["get"]["parameters"]]
        self.assertEqual(query, ["timeperiod", "limit"])


def _body(doc: dict, path: str, method: str = "post") -> dict:
    ref = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return doc["components"]["schemas"][ref.rsplit("/", 1)[1]]


def _accepts(check: Callable[[], object]) -> bool:
    try:
        check()
    except BadRequest:
        return False
    return True


class DocumentIsTheValidatorsTests(SynchronousTestCase):
    """What the schemathesis run (tests/system/test_openapi_fuzz.py) found the document said
    differently from mozpool.web.validate; each test pins one of the agreements."""

    def setUp(self) -> None:
        self.doc = openapi.document(__version__)

    def test_duration_string_is_one_to_max_int32(self) -> None:
        """A string of digits is a duration from 1 to 2**31-1 (the pattern said any digits)."""
        (as_number, as_string) = openapi.DURATION["oneOf"]
        self.assertEqual((as_number["minimum"], as_number["maximum"]), (1, validate.MAX_INT32))
        pattern = re.compile(as_string["pattern"])
        samples = ["0", "00", "1", "01", "0001", "9", "10", "999999999", "1000000000", "2000000000", "2147483646",
                   "2147483647", "002147483647", "2147483648", "2147483650", "2147484000", "2200000000",
                   "3000000000", "9999999999", "10000000000", "99999999999999999999999", "", "1.5", "-1", "+1",
                   " 1", "1 ", "1e3", "\u0661"]
        samples += [str(n) for n in range(0, 1200)] + [str(2147483647 - n) for n in range(0, 1200, 7)]
        for text in samples:
            self.assertEqual(bool(pattern.search(text)), _accepts(lambda: validate.duration({"duration": text})), text)

    def test_new_state_is_a_device_state(self) -> None:
        path = "/api/device/{device}/state-change/{old}/to/{new}/"
        (new,) = [p for p in self.doc["paths"][path]["parameters"] if p["name"] == "new"]
        self.assertEqual(set(new["schema"]["enum"]), validate.DEVICE_STATES)
        # The preflight reads no state name: any text is answered 204.
        (any_new,) = self.doc["paths"][path]["options"]["parameters"]
        self.assertEqual((any_new["name"], any_new["schema"]), ("new", {"type": "string"}))

    def test_bodies_the_server_needs_are_required(self) -> None:
        """An empty body reads as {}: where {} is refused, the document says the body is required."""
        refused = {
            "/api/device/{device}/request/": lambda: validate.request_creation({}),
            "/api/request/{id}/renew/": lambda: validate.duration({}),
            "/api/device/{device}/set-comments/": lambda: validate.comments({}),
            "/api/device/{device}/set-environment/": lambda: validate.environment({}),
            "/api/device/{device}/event/please_image/": lambda: validate.device_event_body("please_image", {}),
        }
        accepted = {
            "/api/device/{device}/power-cycle/": lambda: validate.power_cycle_body({}),
            "/api/device/{device}/event/{event}/": lambda: validate.device_event_body("please_power_cycle", {}),
            "/api/request/{id}/event/{event}/": lambda: validate.request_event_body("close", {}),
            "/api/request/{id}/event/lifeguard_finished/":
                lambda: validate.request_event_body("lifeguard_finished", {}),
        }
        for path, check in {**refused, **accepted}.items():
            self.assertEqual(self.doc["paths"][path]["post"]["requestBody"]["required"], path in refused, path)
            self.assertEqual(_accepts(check), path in accepted, path)

    def test_event_bodies_depend_on_the_event(self) -> None:
        """please_image and lifeguard_finished read their bodies, on paths of their own; any other
        event ignores its body, whatever it holds."""
        self.assertEqual(_body(self.doc, "/api/device/{device}/event/{event}/"),
                         _body(self.doc, "/api/request/{id}/event/{event}/"))
        self.assertNotIn("properties", _body(self.doc, "/api/device/{device}/event/{event}/"))
        self.assertTrue(_accepts(lambda: validate.device_event_body("please_self_test", {"image": 5})))
        self.assertTrue(_accepts(lambda: validate.request_event_body("close", {"imaging_result": 5})))
        please_image = _body(self.doc, "/api/device/{device}/event/please_image/")
        self.assertEqual(please_image["required"], ["image"])
        self.assertFalse(_accepts(lambda: validate.device_event_body("please_image", {"image": 5})))
        self.assertIn("null", please_image["properties"]["boot_config"]["type"])
        no_config = {"image": "", "boot_config": None}
        self.assertTrue(_accepts(lambda: validate.device_event_body("please_image", no_config)))
        finished = _body(self.doc, "/api/request/{id}/event/lifeguard_finished/")["properties"]["imaging_result"]
        self.assertEqual(finished["type"], ["string", "null"])  # any string: the machine reads three of them
        self.assertTrue(_accepts(lambda: validate.request_event_body("lifeguard_finished", {"imaging_result": "x"})))
        self.assertFalse(_accepts(lambda: validate.request_event_body("lifeguard_finished", {"imaging_result": 5})))
        self.assertEqual(self.doc["paths"]["/api/device/{device}/event/please_image/"]["get"]["description"],
                         "acts as a POST with an empty body, which this call refuses (400)")

    def test_request_creation_needs_assignee_or_requester(self) -> None:
        body = _body(self.doc, "/api/device/{device}/request/")
        self.assertEqual(body["anyOf"][0], {"required": ["assignee"]})
        self.assertEqual(body["anyOf"][1]["required"], ["requester"])
        self.assertNotIn("type", body["properties"]["requester"])  # not read beside an assignee
        base = {"duration": 60, "image": "android"}
        self.assertFalse(_accepts(lambda: validate.request_creation(base)))
        self.assertTrue(_accepts(lambda: validate.request_creation({**base, "requester": "r"})))
        self.assertFalse(_accepts(lambda: validate.request_creation({**base, "requester": 5})))
        self.assertTrue(_accepts(lambda: validate.request_creation({**base, "assignee": "a", "requester": 5})))
        # other keys: the image's boot_config_keys (checked against the image), or ignored
        self.assertNotIn("type", body["additionalProperties"])
        self.assertTrue(_accepts(lambda: validate.boot_config_from({**base, "x": 5}, [])))

    def test_power_cycle_pxe_config_may_be_null(self) -> None:
        body = _body(self.doc, "/api/device/{device}/power-cycle/")
        self.assertEqual(body["properties"]["pxe_config"]["type"], ["string", "null"])
        self.assertEqual(validate.power_cycle_body({"pxe_config": None, "boot_config": None}), (None, None))

    def test_boot_config_is_any_json(self) -> None:
        """GET .../bootconfig/ answers the stored JSON text as it is: any JSON value, not only objects."""
        self.assertNotIn("type", self.doc["components"]["schemas"]["BootConfig"])
        self.assertEqual(validate.json_text("boot_config", '"x"'), '"x"')
