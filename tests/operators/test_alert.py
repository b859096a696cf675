"""`alert` sink against a real HTTP server in the test: the CEL body template, retries of a busy
webhook without repeating accepted alerts, a 400 to `errors`, grouping, a wrong URL bounded by
`retry.max_attempts`, bad config offline."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from engine.compile.diagnostics import GraphInvalid
from engine.compile.validate import load_graph
from engine.runtime.scheduler import Runner, RunReport
from tests.connectors.http_harness import serve_post

GRAPH = """
    version: 1
    name: alerting
    defaults:
      dead_letter: dead
      retry: {{initial_backoff: 0.01, max_backoff: 0.02{attempts}}}
    nodes:
      events:
        type: generate
        config: {{count: {count}, batch: 10, template: '{{"id": msg.i, "node": "n" + string(msg.i % 3)}}'}}
      page:
        type: alert
        inputs: [events]
        config:
          url: "http://127.0.0.1:{port}{path}"
          body: '{{"text": "alert " + string(msg.id) + " at " + msg.node}}'
          headers: {{Authorization: "Bearer s3cret"}}
          group: {group}
      dead: {{type: file_sink, inputs: [page.errors], config: {{path: dead.ndjson}}}}
"""


class Hook:
    """A webhook that is busy (503) for the requests numbered in `busy` and answers 400 to the text in `reject`."""

    def __init__(self, busy: range = range(0), reject: str = "\x00", status: int = 200, status_from: int = 1):
        self.busy, self.reject, self.status, self.status_from = busy, reject, status, status_from
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.calls = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        body = await request.read()
        if self.calls in self.busy:
            return web.Response(status=503, text="busy")
        if self.reject.encode() in body:
            return web.Response(status=400, text="no such channel")
        if self.status != 200 and self.calls >= self.status_from:
            return web.Response(status=self.status, text="not here")
        self.requests.append((dict(request.headers), body))
        return web.Response(text="ok")


async def _run(tmp_path: Path, hook: Hook, count: int = 20, group: bool = False, path: str = "/hook",
               attempts: str = "") -> RunReport:
    runner, port = await serve_post("/hook", hook.handle)
    try:
        text = GRAPH.format(port=port, count=count, group=str(group).lower(), path=path, attempts=attempts)
        (tmp_path / "g.yaml").write_text(textwrap.dedent(text))
        return await asyncio.wait_for(Runner(load_graph(str(tmp_path / "g.yaml"))).run(), 20)
    finally:
        await runner.cleanup()


def _dead(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "dead.ndjson"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_alerts_sent_once_each_through_a_busy_webhook(tmp_path: Path) -> None:
    hook = Hook(busy=range(3, 6), reject="alert 7 ")  # busy after two alerts of the first batch went
    report = asyncio.run(_run(tmp_path, hook))
    assert report.error is None and report.balanced
    texts = [json.loads(body)["text"] for _, body in hook.requests]
    # every alert but the rejected one, once, in order, from the template; the 503s were retried
    assert texts == [f"alert {i} at n{i % 3}" for i in range(20) if i != 7]
    headers = hook.requests[0][0]
    assert headers["Authorization"] == "Bearer s3cret" and headers["Content-Type"] == "application/json"
    dead = _dead(tmp_path)
    assert [d["payload"]["id"] for d in dead] == [7]
    assert dead[0]["node"] == "page" and "webhook answered 400: no such channel" in dead[0]["error"]
    assert report.stats["page"].committed == 19 and report.stats["page"].retries >= 1


def test_group_sends_one_request_per_batch(tmp_path: Path) -> None:
    hook = Hook()
    report = asyncio.run(_run(tmp_path, hook, count=30, group=True))
    assert report.error is None and report.balanced
    bodies = [json.loads(body) for _, body in hook.requests]
    assert all(isinstance(b, list) for b in bodies) and len(bodies) < 30
    assert [item["text"] for b in bodies for item in b] == [f"alert {i} at n{i % 3}" for i in range(30)]


def test_wrong_url_is_retried_up_to_max_attempts_then_dead_lettered(tmp_path: Path) -> None:
    hook = Hook(status=404)
    report = asyncio.run(_run(tmp_path, hook, count=5, path="/hook", attempts=", max_attempts: 2"))
    assert report.error is None and report.balanced
    assert hook.calls == 2  # one request per attempt (the first message fails each time)
    dead = _dead(tmp_path)
    assert sorted(d["payload"]["id"] for d in dead) == list(range(5))
    assert "webhook answered 404" in dead[0]["error"]


def test_last_attempt_dead_letters_only_the_alerts_not_sent(tmp_path: Path) -> None:
    """The webhook takes two alerts of a batch of ten, then answers 404: after the last attempt
    `max_attempts` allows, the eight unsent go to `errors`, the two it accepted do not."""
    hook = Hook(status=404, status_from=3)
    report = asyncio.run(_run(tmp_path, hook, count=10, attempts=", max_attempts: 3"))
    assert report.error is None and report.balanced
    assert [json.loads(b)["text"] for _, b in hook.requests] == ["alert 0 at n0", "alert 1 at n1"]
    assert hook.calls == 2 + 3  # one 404 per attempt; the accepted two were not sent again
    dead = _dead(tmp_path)
    assert [d["payload"]["id"] for d in dead] == list(range(2, 10))
    assert all("webhook answered 404: not here" in d["error"] for d in dead)
    assert report.stats["page"].committed == 2 and report.stats["page"].retries == 2


def test_webhook_down_is_retried_until_back(tmp_path: Path) -> None:
    """Connection refused is `Unavailable`: retried whatever max_attempts says, until the server is up."""

    async def scenario() -> tuple[RunReport, Hook]:
        hook = Hook()
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        text = GRAPH.format(port=port, count=3, group="false", path="/hook", attempts=", max_attempts: 1")
        (tmp_path / "g.yaml").write_text(textwrap.dedent(text))
        run = asyncio.ensure_future(Runner(load_graph(str(tmp_path / "g.yaml"))).run())
        await asyncio.sleep(0.3)  # refused meanwhile
        assert not run.done() and not hook.requests
        runner, _ = await serve_post("/hook", hook.handle, port)
        try:
            return await asyncio.wait_for(run, 20), hook
        finally:
            await runner.cleanup()

    report, hook = asyncio.run(scenario())
    assert report.error is None and report.balanced and not _dead(tmp_path)
    assert [json.loads(b)["text"] for _, b in hook.requests] == [f"alert {i} at n{i % 3}" for i in range(3)]


@pytest.mark.parametrize(("config", "expect"), [
    ('{url: "ftp://x/y"}', "expected an http:// or https:// URL"),
    ('{url: "http://x/", headers: {"A b": "c"}}', "header 'A b'"),
    ('{url: "http://x/", body: "msg.id +"}', "E203"),
])
def test_bad_config_is_reported_offline(tmp_path: Path, config: str, expect: str) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(f"""
        version: 1
        name: bad
        nodes:
          events: {{type: generate, config: {{count: 1}}}}
          page: {{type: alert, inputs: [events], config: {config}}}
    """))
    with pytest.raises(GraphInvalid, match=expect):
        load_graph(str(path))


def test_group_retry_counts_a_message_that_cannot_render_once() -> None:
    """group: a batch retried after a 503 reports its message whose body does not render once, not once per attempt."""
    from engine.errors import Unavailable
    from engine.message import Msg
    from engine.runtime.context import NodeContext, Resources
    from operators.alert import Alert, AlertConfig

    async def scenario() -> list[tuple[Msg, str]]:
        hook = Hook(busy=range(1, 2))
        runner, port = await serve_post("/hook", hook.handle)
        try:
            config = AlertConfig(url=f"http://127.0.0.1:{port}/hook", body='{"t": msg.node}', group=True)
            sink = Alert("page", config, NodeContext("page", {}, {}, Resources()))
            batch = [Msg({"node": "a"}), Msg({"id": 2})]
            with pytest.raises(Unavailable):
                await sink.write(batch)
            failed = await sink.write(batch)
            assert [json.loads(b) for _, b in hook.requests] == [[{"t": "a"}]]
            return failed or []
        finally:
            await runner.cleanup()

    failed = asyncio.run(scenario())
    assert [m.body for m, _ in failed] == [{"id": 2}] and "body:" in failed[0][1]
