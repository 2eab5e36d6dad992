"""Unit tests of the input parsers (no database)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mozpool.lifeguard.machine import TIMEOUTS
from mozpool.web import validate
from mozpool.web.errors import BadRequest


class FakeRequest:
    def __init__(self, uri: bytes) -> None:
        self.uri = uri


class ValidateTests(SynchronousTestCase):
    def test_request_ids(self) -> None:
        self.assertEqual(validate.request_id("0012"), 12)
        self.assertGreater(validate.request_id("9" * 5000), 2**63)
        for bad in ("", "abc", "-1", "1.5", " 1", "１", "1e3", "+1"):
            self.assertRaises(BadRequest, validate.request_id, bad)

    def test_query(self) -> None:
        r = FakeRequest(b"/x/?details&limit=5&limit=7&a%20b=c+d")
        self.assertEqual(validate.query(r), {b"details": b"", b"limit": b"5", b"a b": b"c d"})
        self.assertTrue(validate.flag(r, "details"))
        self.assertFalse(validate.flag(FakeRequest(b"/x/"), "details"))
        self.assertEqual(validate.int_param(r, "limit"), 5)
        self.assertEqual(validate.int_param(r, "timeperiod"), 0)
        self.assertRaises(BadRequest, validate.int_param, FakeRequest(b"/?limit=%ff"), "limit")

    def test_integers(self) -> None:
        for value, expected in ((60, 60), (60.0, 60), ("60", 60), ("007", 7)):
            self.assertEqual(validate.integer({"d": value}, "d", low=1), expected)
        for value in (True, False, 60.5, -1, "x", "6 0", None, [], {}, float("nan"), float("inf"), "9" * 100):
            self.assertRaises(BadRequest, validate.integer, {"d": value}, "d", low=1)
        self.assertRaises(BadRequest, validate.integer, {}, "d")

    def test_json_object(self) -> None:
        self.assertEqual(validate.json_object(b" \n"), {})
        self.assertEqual(validate.json_object(b'{"a": 1}'), {"a": 1})
        for bad in (b"[]", b"1", b"null", b"\xff", b"{", b"[" * 50000):
            self.assertRaises(BadRequest, validate.json_object, bad)

    def test_state_names(self) -> None:
        # spec 6.2's three lists (6 public, 19 transient, 12 failed) and the two health states
        self.assertEqual(len(validate.DEVICE_STATES), 6 + 19 + 12 + 2)
        self.assertEqual(validate.DEVICE_STATES, set(TIMEOUTS), "the machine's own states, said once")
        self.assertEqual(validate.state_name("pxe_booting"), "pxe_booting")
        self.assertRaises(BadRequest, validate.state_name, "failed_other")

    def test_boot_config_from_keys(self) -> None:
        text = validate.boot_config_from({"b": "2", "a": "1", "c": "3"}, ["b", "a"])
        self.assertEqual(text, '{"b": "2", "a": "1"}')
        self.assertEqual(validate.boot_config_from({"x": 1}, []), "{}")
