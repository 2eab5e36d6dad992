"""The one POST between servers: a redirect followed once with method and body, bounded in time."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mozpool.httpcalls import post_following
from tests.broker.support import FakeHTTP


class _HTTP(FakeHTTP):
    """The broker tests' treq-like fake, keeping each response to see that its body was read."""

    def __init__(self, *answers: Any) -> None:
        super().__init__()
        self.answers = list(answers)
        self.responses: list[Any] = []

    def post(self, url: str, data: Any = None, **kwargs: Any) -> "defer.Deferred[Any]":
        return super().post(url, data, **kwargs).addCallback(lambda r: self.responses.append(r) or r)


URL = "http://a.example.com/api/x/"
BODY = json.dumps({"k": "v"}).encode()


class PostFollowing(SynchronousTestCase):
    def post(self, http: _HTTP, clock: Clock | None = None) -> "defer.Deferred[tuple[int, str]]":
        return post_following(http, clock or Clock(), URL, BODY, 5)

    def test_plain_answer(self) -> None:
        http = _HTTP(200)
        self.assertEqual(self.successResultOf(self.post(http)), (200, URL))
        call = http.calls[0]
        self.assertEqual((call["url"], call["body"], call["allow_redirects"]), (URL, {"k": "v"}, False))
        self.assertEqual(call["headers"], {b"Content-Type": [b"application/json"]})
        self.assertTrue(http.responses[0].drained, "the body is read so the connection can be reused")

    def test_one_redirect_followed_with_method_and_body(self) -> None:
        for code in (301, 302, 307, 308):
            http = _HTTP((code, "http://b.example.com/y/"), 204)
            self.assertEqual(self.successResultOf(self.post(http)), (204, "http://b.example.com/y/"))
            self.assertEqual(http.events(), [(URL, {"k": "v"}), ("http://b.example.com/y/", {"k": "v"})])
            self.assertTrue(all(r.drained for r in http.responses))

    def test_second_redirect_and_missing_location_are_answers(self) -> None:
        http = _HTTP((302, "http://b.example.com/y/"), (302, "http://c.example.com/z/"))
        self.assertEqual(self.successResultOf(self.post(http)), (302, "http://b.example.com/y/"))
        self.assertEqual(len(http.calls), 2)
        http = _HTTP(302)
        self.assertEqual(self.successResultOf(self.post(http)), (302, URL))
        self.assertEqual(len(http.calls), 1)

    def test_bounded_on_the_clock_redirect_included(self) -> None:
        clock = Clock()
        pending: defer.Deferred[Any] = defer.Deferred(lambda d: d.errback(error.ConnectingCancelledError(None)))
        d = self.post(_HTTP((302, "http://b.example.com/y/"), pending), clock)
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        f = self.failureResultOf(d, defer.TimeoutError)
        self.assertIn("no answer within 5 s", f.getErrorMessage())

    def test_transport_errors_pass_through(self) -> None:
        d = self.post(_HTTP(error.ConnectionRefusedError()))
        self.failureResultOf(d, error.ConnectionRefusedError)
