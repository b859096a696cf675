"""`ack: committed` when a request's items settle in separate ack rounds, not all in one.

The reply waits for the last item of the request: none while any item is unsettled, 202 when all
were committed, 502 (naming the failed indexes) when any failed, whichever order they settle in.
First with the sink in the test's hands (each item settled by hand, one ack round each), then
through the scheduler with a sink that writes one item per permit.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from engine.message import DELIVERED, Msg
from engine.runtime.scheduler import Runner
from tests.connectors.http_harness import Gateway, aio, post
from tests.connectors.test_http_graph import Running, graph
from tests.runtime.test_nodes import PERMITS, RECORD

UNSETTLED = 0.1  # seconds a test lets the server run to show that no reply comes


class HeldGateway(Gateway):
    """A gateway whose sink keeps the items it gets; the test settles them one at a time."""

    def __init__(self, tmp_path: Any, **config: Any):
        super().__init__(tmp_path, **config)
        self.held: list[Msg] = []
        self.replies: list[asyncio.Future[Any]] = []  # the test's requests, cancelled if left pending

    async def _send(self, lists: dict[str, list[Msg]]) -> None:
        self.held.extend(lists["out"])

    async def __aexit__(self, *exc: object) -> None:
        for m in self.held:  # a test that failed midway: settle the rest, so the stop need not wait
            if not m.ack.settled:
                m.ack.fail("test ended")
        for reply in self.replies:
            reply.cancel()
        await super().__aexit__(*exc)

    async def settle(self, index: int, failure: str | None = None) -> None:
        """Commit (or fail) one held item, and wait until its ack round reached the source."""
        before = self.source.in_flight
        msg = self.held[index]
        if failure is None:
            msg.ack.finish(DELIVERED)
        else:
            msg.ack.fail(failure)
        while self.source.in_flight != before - 1:
            await asyncio.sleep(0)


async def held_request(gw: HeldGateway, s: aiohttp.ClientSession, n: int) -> tuple[asyncio.Future[Any], Any]:
    """POST n items; return the client's pending reply and the source's record of the request."""
    reply = asyncio.ensure_future(post(s, gw.ingest_url, orjson.dumps([{"n": i} for i in range(n)])))
    gw.replies.append(reply)
    while len(gw.held) < n:
        await asyncio.sleep(0)
    request = gw.held[0].ack.token[0]
    assert all(m.ack.token == (request, i) for i, m in enumerate(gw.held))  # one request, n items
    return reply, request


async def assert_no_reply(reply: asyncio.Future[Any], request: Any) -> None:
    assert not request.future.done()
    done, _ = await asyncio.wait({reply}, timeout=UNSETTLED)
    assert not done, reply.result()


@aio
async def test_no_reply_until_the_last_item_commits(tmp_path: Any) -> None:
    async with HeldGateway(tmp_path) as gw, aiohttp.ClientSession() as s:
        reply, request = await held_request(gw, s, 3)
        await assert_no_reply(reply, request)
        for i, left in ((0, 2), (2, 1)):  # out of order, one round each
            await gw.settle(i)
            assert request.remaining == left
            await assert_no_reply(reply, request)
        await gw.settle(1)
        status, body, _ = await reply
        assert (status, body) == (202, {"accepted": 3, "ack": "committed"})


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1)], ids=["fails-last", "fails-first"])
@aio
async def test_an_item_failing_in_another_round_gives_502(tmp_path: Any, order: tuple[int, ...]) -> None:
    """Item 2 fails: after the others committed (502, never 202), or before them (no early reply)."""
    async with HeldGateway(tmp_path) as gw, aiohttp.ClientSession() as s:
        reply, request = await held_request(gw, s, 3)
        for i in order[:-1]:
            await gw.settle(i, "sink gave up" if i == 2 else None)
            await assert_no_reply(reply, request)
        last = order[-1]
        await gw.settle(last, "sink gave up" if last == 2 else None)
        status, body, _ = await reply
        assert status == 502 and body["error"] == "not_committed"
        assert body["accepted"] == 2 and body["failed"] == [{"index": 2, "reason": "sink gave up"}]


@aio
async def test_other_requests_do_not_settle_a_request(tmp_path: Any) -> None:
    """Two requests interleaved: committing all of one and part of the other replies to one only."""
    async with HeldGateway(tmp_path) as gw, aiohttp.ClientSession() as s:
        first, req1 = await held_request(gw, s, 2)
        second = asyncio.ensure_future(post(s, gw.ingest_url, orjson.dumps([{"m": 0}, {"m": 1}])))
        gw.replies.append(second)
        while len(gw.held) < 4:
            await asyncio.sleep(0)
        req2 = gw.held[2].ack.token[0]
        assert req2 is not req1
        await gw.settle(2)  # the second request's first item
        await gw.settle(0)  # the first request's first item
        await assert_no_reply(first, req1)
        await assert_no_reply(second, req2)
        await gw.settle(3)
        assert (await second)[:2] == (202, {"accepted": 2, "ack": "committed"})
        await assert_no_reply(first, req1)
        await gw.settle(1)
        assert (await first)[:2] == (202, {"accepted": 2, "ack": "committed"})


# -- through the scheduler: a sink of batch size 1 that writes one item per permit


class Stepped(Running):
    """The graph below, run with no permits; a test that fails midway leaves with the sink let go."""

    def __init__(self, tmp_path: Path, reject_odd: bool):
        RECORD.clear()
        PERMITS["http_rounds"] = asyncio.Semaphore(0)
        super().__init__(stepped_graph(tmp_path, reject_odd))

    async def __aexit__(self, *exc: object) -> None:
        for _ in range(3):
            PERMITS["http_rounds"].release()
        await super().__aexit__(*exc)


def stepped_graph(tmp_path: Path, reject_odd: bool) -> Path:
    return graph(
        tmp_path,
        f"""
        version: 1
        name: http_rounds
        nodes:
          ingest: {{type: http_source, config: {{port: 0}}}}
          sink:
            type: test_sink
            inputs: [ingest]
            config: {{permits: http_rounds, reject_if_odd: {str(reject_odd).lower()}}}
            batch_size: 1
    """,
    )


async def settled(runner: Runner, in_flight: int) -> None:
    while runner.nodes["ingest"].in_flight != in_flight:
        await asyncio.sleep(0)


async def post_in_rounds(
    runner: Runner, url: str, s: aiohttp.ClientSession, items: list[Any]
) -> tuple[int, Any]:
    """POST the items and let the sink write them one per round: no reply before the last round.
    Return the reply's status and body."""
    reply = asyncio.ensure_future(post(s, url + "/api/v1/data/ingest", orjson.dumps(items)))
    await settled(runner, len(items))
    for left in range(len(items) - 1, 0, -1):
        PERMITS["http_rounds"].release()
        await settled(runner, left)  # one more item settled, its ack round done
        done, _ = await asyncio.wait({reply}, timeout=UNSETTLED)
        assert not done, reply.result()
    PERMITS["http_rounds"].release()
    status, body, _ = await reply
    return status, body


@aio
async def test_scheduler_replies_after_the_last_of_three_sink_rounds(tmp_path: Path) -> None:
    run = Stepped(tmp_path, reject_odd=False)
    async with run as (runner, url), aiohttp.ClientSession() as s:
        reply = await post_in_rounds(runner, url, s, [{"i": 0}, {"i": 2}, {"i": 4}])
        assert reply == (202, {"accepted": 3, "ack": "committed"})
    assert [b["i"] for b in RECORD["sink"]["bodies"]] == [0, 2, 4]
    assert run.report.error is None and run.report.balanced


@aio
async def test_scheduler_502_when_a_later_round_fails(tmp_path: Path) -> None:
    """Item 0 commits, item 1 fails in the next round (its errors port is unwired, so the graph
    stops, and its ack fails), item 2 commits while the graph drains: then 502, naming item 1."""
    run = Stepped(tmp_path, reject_odd=True)
    async with run as (runner, url), aiohttp.ClientSession() as s:
        status, body = await post_in_rounds(runner, url, s, [{"i": 0}, {"i": 1}, {"i": 2}])
        assert status == 502 and body["accepted"] == 2
        assert [f["index"] for f in body["failed"]] == [1]
        assert "unhandled error in sink" in body["failed"][0]["reason"]
    assert [b["i"] for b in RECORD["sink"]["bodies"]] == [0, 2]
    assert "UnhandledError" in type(run.report.error).__name__
