"""The OpenAPI document against the spec's endpoint index and the registered routes."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from mozpool import __version__
from mozpool.web import api, openapi

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
    "/api/events",
]


class OpenAPITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.doc = openapi.document(__version__)

    def test_paths_are_the_index(self) -> None:
        self.assertEqual(sorted(self.doc["paths"]), sorted(INDEX))
        self.assertEqual(len(self.doc["paths"]), 31)

    def test_routes_match_the_document(self) -> None:
        routes = {path: {m.lower() for m in methods} for path, methods in api.ROUTES}
        documented = {p: set(item) - {"parameters", "options"} for p, item in self.doc["paths"].items()}
        self.assertEqual(routes, documented)
        with_options = {p for p, item in self.doc["paths"].items() if "options" in item}
        self.assertEqual(with_options, set(api.REDIRECTING))

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

    def test_statuses_of_the_spec(self) -> None:
        paths = self.doc["paths"]
        self.assertEqual(set(paths["/api/device/{device}/request/"]["post"]["responses"]),
                         {"200", "400", "404", "405", "409", "413", "503"})
        self.assertEqual(set(paths["/api/request/{id}/renew/"]["post"]["responses"]),
                         {"204", "302", "400", "403", "404", "405", "413", "503"})
        self.assertIn("409", paths["/api/device/{device}/state-change/{old}/to/{new}/"]["post"]["responses"])
        self.assertIn("requestBody", paths["/api/device/{device}/power-cycle/"]["post"])
        query = [p["name"] for p in paths["/api/device/{device}/log/"]["get"]["parameters"]]
        self.assertEqual(query, ["timeperiod", "limit"])
