"""Imaging results (state-machines.md 1.4): recorded on the claim, then delivered in-process or
over HTTP (through treq's StubTreq), bounded, logged, never retried."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tests.lifeguard.support import DEV, FQDN, OTHER, LifeGuardTest
from tests.support.dbtest import on_both_backends


class Recorder(Resource):
    """Answers each request with the next of ``answers``: a status code, ``(302, location)``,
    or None to never answer."""

    isLeaf = True

    def __init__(self, *answers: Any) -> None:
        super().__init__()
        self.answers = list(answers)
        self.seen: list[tuple[bytes, bytes | None, bytes, dict[str, Any]]] = []

    def render(self, request: Any) -> Any:
        body = request.content.read()
        self.seen.append((request.method, request.getHeader(b"host"), request.uri, json.loads(body)))
        answer = self.answers.pop(0) if self.answers else 200
        if answer is None:
            return NOT_DONE_YET
        if isinstance(answer, tuple):
            request.setResponseCode(answer[0])
            request.setHeader(b"location", answer[1].encode())
            return b"{}"
        request.setResponseCode(answer)
        return b"{}"


class Results(LifeGuardTest):
    def useHTTP(self, *answers: Any, in_process: bool = True) -> Recorder:
        recorder = Recorder(*answers)
        self.lg = self.makeLifeGuard(http_client=StubTreq(recorder), in_process=in_process)
        return recorder

    async def fail_device(self) -> None:
        await self.enter("failed_power_cycling")

    async def test_in_process_for_a_request_of_this_server(self) -> None:
        recorder = self.useHTTP()
        request_id = await self.claim(server=FQDN)
        await self.fail_device()
        self.assertEqual(self.delivered, [(request_id, "lifeguard_finished", {"imaging_result": "failed-bad-device"})])
        self.assertEqual(recorder.seen, [])

    async def test_http_for_a_request_of_another_server(self) -> None:
        recorder = self.useHTTP(200)
        request_id = await self.claim(server=OTHER)
        await self.fail_device()
        self.assertEqual(self.delivered, [])
        self.assertEqual(
            recorder.seen,
            [(b"POST", OTHER.encode(), f"/api/request/{request_id}/event/lifeguard_finished/".encode(),
              {"imaging_result": "failed-bad-device"})],
        )
        self.assertEqual(await self.imaging_result(), "failed-bad-device")
        self.assertFalse([m for m in await self.messages() if m.startswith("imaging result to")], "200 is quiet")

    async def test_http_to_this_server_without_an_in_process_callable(self) -> None:
        recorder = self.useHTTP(200, in_process=False)
        await self.claim(server=FQDN)
        await self.fail_device()
        self.assertEqual([s[1] for s in recorder.seen], [FQDN.encode()])

    async def test_a_status_other_than_200_is_logged_and_not_retried(self) -> None:
        recorder = self.useHTTP(500)
        request_id = await self.claim(server=OTHER)
        await self.fail_device()
        await self.after(3600)
        self.assertEqual(len(recorder.seen), 1)
        url = f"http://{OTHER}/api/request/{request_id}/event/lifeguard_finished/"
        self.assertIn(f"imaging result to {url}: HTTP 500", await self.messages())

    async def test_a_redirect_is_followed_once_with_the_same_body(self) -> None:
        moved = "http://c.example.com/api/request/1/event/lifeguard_finished/"
        recorder = self.useHTTP((302, moved), (302, moved))
        await self.claim(server=OTHER)
        await self.fail_device()
        self.assertEqual(len(recorder.seen), 2)
        self.assertEqual(recorder.seen[1][0:2], (b"POST", b"c.example.com"))
        self.assertEqual(recorder.seen[1][3], {"imaging_result": "failed-bad-device"})
        self.assertIn(f"imaging result to {moved}: HTTP 302", await self.messages())

    async def test_no_claim_no_delivery(self) -> None:
        recorder = self.useHTTP()
        await self.fail_device()
        self.assertEqual((self.delivered, recorder.seen), ([], []))
        self.assertIn("sending imaging result 'failed-bad-device' to Mozpool", await self.messages())

    async def test_no_http_client(self) -> None:
        await self.claim(server=OTHER)
        await self.fail_device()
        self.assertTrue([m for m in await self.messages() if m.startswith("no HTTP client")])

    async def test_in_process_failure_is_logged(self) -> None:
        def broken(request_id: int, event: str, body: dict[str, Any]) -> None:
            raise RuntimeError("broker down")

        self.lg.request_events = broken
        await self.claim()
        await self.fail_device()
        self.assertEqual(await self.imaging_result(), "failed-bad-device", "recorded before delivery")
        self.assertTrue([m for m in await self.messages() if m.endswith("failed: broker down")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_in_process_callable_returning_a_coroutine(self) -> None:
        seen = []

        async def request_event(request_id: int, event: str, body: dict[str, Any]) -> None:
            seen.append((request_id, event, body))

        self.lg.request_events = request_event
        request_id = await self.claim()
        await self.fail_device()
        self.assertEqual(seen, [(request_id, "lifeguard_finished", {"imaging_result": "failed-bad-device"})])


class Timeouts(LifeGuardTest):
    async def test_no_answer_is_bounded_on_the_clock(self) -> None:
        recorder = Recorder(None)
        self.lg = self.makeLifeGuard(http_client=StubTreq(recorder))
        request_id = await self.claim(server=OTHER)
        await self.lg.state_change(DEV, "ready", "failed_power_cycling")
        self.assertEqual(len(self.lg.results.inflight), 1)
        self.clock.advance(29)
        self.assertEqual(len(self.lg.results.inflight), 1)
        self.clock.advance(1)
        await self.settle()
        self.assertEqual(len(recorder.seen), 1)
        url = f"http://{OTHER}/api/request/{request_id}/event/lifeguard_finished/"
        self.assertIn(f"imaging result to {url}: no answer within 30 s", await self.messages())


ResultsSQLite, ResultsMariaDB = on_both_backends(Results)
TimeoutsSQLite, TimeoutsMariaDB = on_both_backends(Timeouts)
