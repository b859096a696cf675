"""http_source's gatekeeping over real loopback HTTP: auth, rate limits, backpressure, routes, config check."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import orjson

from engine.api import CheckContext
from operators.connectors.http.config import HttpSourceConfig
from operators.connectors.http.source import HttpSource
from tests.connectors.http_harness import Gateway, aio, post


@aio
async def test_bearer_tokens_from_env_and_file(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("HTTP_TEST_TOKENS", "alice:tok-a, tok-b")
    (tmp_path / "tokens.txt").write_text("# ingest clients\ncarol:tok-c\n\n")
    auth = {"env": "HTTP_TEST_TOKENS", "file": "tokens.txt"}
    async with Gateway(tmp_path, auth=auth) as gw, aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic tok-a"},
                        {"Authorization": "Bearer tok-"}, {"Authorization": "Bearer tok-aa"}):
            st, body, hdrs = await post(s, gw.ingest_url, b'{"n": 0}', **headers)
            assert (st, body["error"]) == (401, "unauthorized")
            assert hdrs["WWW-Authenticate"].startswith("Bearer")
        for n, token in enumerate(("tok-a", "tok-b", "tok-c"), 1):
            st, _, _ = await post(s, gw.ingest_url, orjson.dumps({"n": n}), Authorization=f"Bearer {token}")
            assert st == 202
        lines = gw.lines()
        assert [line["body"]["n"] for line in lines] == [1, 2, 3]  # nothing from the 401s
        assert [line["meta"]["credential"] for line in lines] == ["alice", "env:HTTP_TEST_TOKENS#2", "carol"]
        # health and the OpenAPI document need no credentials
        async with s.get(gw.url + "/healthz") as resp:
            assert resp.status == 200


@aio
async def test_api_key_header(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("HTTP_TEST_KEYS", "k1")
    async with Gateway(tmp_path, auth={"scheme": "api_key", "env": "HTTP_TEST_KEYS"}) as gw, \
            aiohttp.ClientSession() as s:
        assert (await post(s, gw.ingest_url, b"{}", Authorization="Bearer k1"))[0] == 401
        assert (await post(s, gw.ingest_url, b"{}", X_API_Key="k1"))[0] == 202


def test_missing_credentials_fail_at_start(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("HTTP_TEST_NONE", raising=False)

    async def start() -> None:
        async with Gateway(tmp_path, auth={"env": "HTTP_TEST_NONE"}):
            pass

    try:
        asyncio.run(start())
    except ValueError as exc:
        assert "HTTP_TEST_NONE is not set" in str(exc)
    else:
        raise AssertionError("start() accepted an auth config without credentials")


@aio
async def test_rate_limit_global_and_per_credential(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("HTTP_TEST_TOKENS", "a:ta,b:tb")
    limits = {"per_credential": {"rate": 0.5, "burst": 2}, "global": {"rate": 0.5, "burst": 3}}
    async with Gateway(tmp_path, auth={"env": "HTTP_TEST_TOKENS"}, rate_limit=limits) as gw, \
            aiohttp.ClientSession() as s:
        a, b = {"Authorization": "Bearer ta"}, {"Authorization": "Bearer tb"}
        assert [(await post(s, gw.ingest_url, b"{}", **a))[0] for _ in range(3)] == [202, 202, 429]
        st, body, hdrs = await post(s, gw.ingest_url, b"{}", **a)
        assert (st, body["error"]) == (429, "rate_limited") and int(hdrs["Retry-After"]) >= 1
        assert (await post(s, gw.ingest_url, b"{}", **b))[0] == 202  # b has its own bucket
        assert (await post(s, gw.ingest_url, b"{}", **b))[0] == 429  # the global bucket (3) is empty
        assert len(gw.lines()) == 3


@aio
async def test_503_when_the_graph_has_no_room_and_nothing_is_lost(tmp_path: Any) -> None:
    """Many clients while the sink is stuck: the 202s are all in the sink, the 503s none of them."""
    async with Gateway(tmp_path, max_in_flight=50, retry_after=2) as gw:
        gw.gate.clear()
        results: list[tuple[int, int, Any]] = []

        async def client(c: int, session: aiohttp.ClientSession) -> None:
            for r in range(10):
                items = [{"c": c, "r": r, "i": i} for i in range(5)]
                st, body, hdrs = await post(session, gw.ingest_url, orjson.dumps(items))
                results.append((c, r, (st, body, hdrs.get("Retry-After"))))
                if st == 503:
                    continue

        async with aiohttp.ClientSession() as s:
            clients = [asyncio.ensure_future(client(c, s)) for c in range(20)]
            while sum(1 for *_, (st, _, _) in results if st == 503) < 20:
                await asyncio.sleep(0.005)
            assert gw.source.in_flight <= 50  # bounded while stuck
            gw.gate.set()
            await asyncio.gather(*clients)
        ok = {(c, r) for c, r, (st, _, _) in results if st == 202}
        busy = [(c, r, ra) for c, r, (st, _, ra) in results if st == 503]
        assert {st for *_, (st, _, _) in results} == {202, 503}
        assert all(ra == "2" for *_, ra in busy)
        got = [(line["body"]["c"], line["body"]["r"]) for line in gw.lines()]
        assert len(got) == 5 * len(ok) and set(got) == ok


@aio
async def test_routes_health_ready_openapi(tmp_path: Any) -> None:
    down = socket.socket()
    down.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    dead_port = down.getsockname()[1]
    conns = {"bus": {"type": "nats", "url": "nats://127.0.0.1:4222"}}
    async with Gateway(tmp_path, connections=conns) as gw, aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["connections"] == {"bus": "ok"}
        async with s.get(gw.url + "/openapi.json") as resp:
            doc = await resp.json()
            assert doc["paths"]["/api/v1/data/ingest"]["post"]["responses"]["202"]
        async with s.get(gw.ingest_url) as resp:
            assert (resp.status, resp.headers["Allow"]) == (405, "POST")
        async with s.get(gw.url + "/nope") as resp:
            assert resp.status == 404
    gw_down = Gateway(tmp_path, connections={"db": {"type": "postgres", "dsn": f"postgresql://x@127.0.0.1:{dead_port}/t"}})
    async with gw_down as gw, aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/readyz") as resp:
            body = await resp.json()
            assert resp.status == 503 and body["connections"]["db"].startswith("unreachable")
        async with s.get(gw.url + "/healthz") as resp:
            assert resp.status == 200
    down.close()


@aio
async def test_pipelining_keepalive_expect_continue_and_oversize_on_the_raw_socket(tmp_path: Any) -> None:
    async with Gateway(tmp_path, max_body_bytes=1000, max_connections=3) as gw:
        host, port = gw.source.address
        r, w = await asyncio.open_connection(host, port)
        req = (b"POST /api/v1/data/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 8\r\n\r\n")
        w.write(req + b'{"n": 1}' + req + b'{"n": 2}')  # two pipelined requests in one write
        for _ in range(2):
            head = await r.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 202")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await r.readexactly(length)
        w.write(req.replace(b"Content-Length: 8", b"Expect: 100-continue\r\nContent-Length: 8"))
        assert await r.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        w.write(b'{"n": 3}')
        assert (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 202")
        w.close()
        # a declared oversize body is refused before it is sent, and the connection closed
        r, w = await asyncio.open_connection(host, port)
        w.write(req.replace(b"Content-Length: 8", b"Content-Length: 5000"))
        data = await r.read()
        assert data.startswith(b"HTTP/1.1 413") and b"Connection: close" in data
        # a chunked body that grows past the cap is cut off too
        r, w = await asyncio.open_connection(host, port)
        w.write(req.replace(b"Content-Length: 8", b"Transfer-Encoding: chunked"))
        w.write(b"400\r\n" + b" " * 1024 + b"\r\n")
        assert (await r.read()).startswith(b"HTTP/1.1 413")
        # endless headers are cut off at 64 KiB
        r, w = await asyncio.open_connection(host, port)
        w.write(b"P")
        await w.drain()
        await asyncio.sleep(0.02)  # a first chunk of one byte, then the rest
        w.write(b"OST /api/v1/data/ingest HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n")
        assert (await asyncio.wait_for(r.read(), 5)).startswith(b"HTTP/1.1 431")
        # garbage is a 400
        r, w = await asyncio.open_connection(host, port)
        w.write(b"NOT HTTP\r\n\r\n")
        assert (await r.read()).startswith(b"HTTP/1.1 400")
        # the connection cap: the 4th open connection gets 503
        held = [await asyncio.open_connection(host, port) for _ in range(3)]
        await asyncio.sleep(0.05)
        r, w = await asyncio.open_connection(host, port)
        assert (await r.read()).startswith(b"HTTP/1.1 503")
        for _, hw in held:
            hw.close()
        assert [line["body"]["n"] for line in gw.lines()] == [1, 2, 3]


def test_check_refuses_an_open_listener_without_auth() -> None:
    ctx = CheckContext(schemas={"s": {}})
    codes = [i.code for i in HttpSource.check(HttpSourceConfig(host="0.0.0.0"), ctx)]
    assert codes == ["E250"]
    assert list(HttpSource.check(HttpSourceConfig(host="::1"), ctx)) == []
    assert list(HttpSource.check(HttpSourceConfig(host="localhost", schema="s"), ctx)) == []
    cfg = HttpSourceConfig(host="10.0.0.1", auth={"env": "X"}, max_body_bytes=100, max_decompressed_bytes=10)
    assert [(i.code, i.severity) for i in HttpSource.check(cfg, ctx)] == [("W251", "warning")]


@aio
async def test_body_bytes_held_over_all_connections_are_bounded(tmp_path: Any) -> None:
    """Requests waiting for acks keep their bodies; past max_buffered_bytes new bodies get 503."""
    async with Gateway(tmp_path, max_body_bytes=1500, max_buffered_bytes=2000) as gw, \
            aiohttp.ClientSession() as s:
        gw.gate.clear()
        body = orjson.dumps([{"pad": "x" * 380}, {"pad": "y" * 380}])  # ~800 bytes
        waiting = [asyncio.ensure_future(post(s, gw.ingest_url, body)) for _ in range(2)]
        while gw.source.counts["accepted"] < 4:
            await asyncio.sleep(0.005)
        st, reply, hdrs = await post(s, gw.ingest_url, body)
        assert (st, reply["error"], hdrs["Retry-After"]) == (503, "busy", "1")
        gw.gate.set()
        assert [(await w)[0] for w in waiting] == [202, 202]
        assert gw.source.server.buffered == 0
        assert (await post(s, gw.ingest_url, body))[0] == 202
        assert len(gw.lines()) == 6


@aio
async def test_429_and_503_under_load_lose_nothing(tmp_path: Any) -> None:
    """30 clients against a slow sink, a global rate limit and a small in-flight cap: every item of
    every 202 is in the sink exactly once, no item of any refused request is."""
    limits = {"global": {"rate": 300, "burst": 30}}
    async with Gateway(tmp_path, sink_delay=0.01, max_in_flight=60, rate_limit=limits) as gw:
        outcomes: dict[tuple[int, int], int] = {}

        async def client(c: int, session: aiohttp.ClientSession) -> None:
            for r in range(40):
                items = [{"c": c, "r": r, "i": i} for i in range(3)]
                st, _, hdrs = await post(session, gw.ingest_url, orjson.dumps(items))
                if st in (429, 503):
                    assert int(hdrs["Retry-After"]) >= 1
                outcomes[(c, r)] = st

        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as s:
            await asyncio.gather(*(client(c, s) for c in range(30)))
        counts = {st: sum(1 for v in outcomes.values() if v == st) for st in set(outcomes.values())}
        assert set(counts) == {202, 429, 503}, counts
        got = [(line["body"]["c"], line["body"]["r"], line["body"]["i"]) for line in gw.lines()]
        assert len(got) == len(set(got))  # no duplicates
        assert {(c, r) for c, r, _ in got} == {k for k, v in outcomes.items() if v == 202}
        assert len(got) == 3 * counts[202]
        assert gw.source.in_flight == 0 and gw.source.server.buffered == 0
        m = gw.source.metrics()
        assert (m["accepted"], m["requests"], m["rejected"]) == (len(got), len(outcomes), len(outcomes) - counts[202])


@aio
async def test_stop_lets_waiting_requests_finish(tmp_path: Any) -> None:
    gw = Gateway(tmp_path)
    async with gw, aiohttp.ClientSession() as s:
        gw.gate.clear()
        waiting = asyncio.ensure_future(post(s, gw.ingest_url, b'{"n": 1}'))
        while gw.source.counts["accepted"] < 1:
            await asyncio.sleep(0.005)
        gw.out.stopping.set()  # SIGTERM: stop admitting, drain what was admitted
        st, body, _ = await post(s, gw.ingest_url, b'{"n": 2}')
        assert (st, body["error"]) == (503, "unavailable")
        async with s.get(gw.url + "/readyz") as resp:
            assert resp.status == 503
        assert not gw.tasks[0].done()  # run() is waiting for the admitted request's ack
        gw.gate.set()
        assert (await waiting)[0] == 202
        await asyncio.wait_for(gw.tasks[0], 5)
    assert [line["body"]["n"] for line in gw.lines()] == [1]


@aio
async def test_a_client_that_hangs_up_keeps_its_idempotent_outcome(tmp_path: Any) -> None:
    async with Gateway(tmp_path) as gw, aiohttp.ClientSession() as s:
        gw.gate.clear()
        host, port = gw.source.address
        _, w = await asyncio.open_connection(host, port)
        w.write(b"POST /api/v1/data/ingest HTTP/1.1\r\nHost: x\r\nIdempotency-Key: hang\r\n"
                b"Content-Length: 8\r\n\r\n{\"n\": 1}")
        while gw.source.counts["accepted"] < 1:
            await asyncio.sleep(0.005)
        w.close()  # the client gives up before the ack
        st, body, _ = await post(s, gw.ingest_url, b'{"n": 1}', Idempotency_Key="hang")
        assert (st, body["error"]) == (409, "in_progress")
        gw.gate.set()
        while not all(entry.status for entry in gw.source.idem.values()):  # the first request finished
            await asyncio.sleep(0.005)
        st, body, hdrs = await post(s, gw.ingest_url, b'{"n": 1}', Idempotency_Key="hang")
        assert (st, hdrs.get("Idempotent-Replayed")) == (202, "true")
        assert len(gw.lines()) == 1


@aio
async def test_slow_and_idle_clients_are_disconnected(tmp_path: Any) -> None:
    async with Gateway(tmp_path, idle_timeout=0.3) as gw:
        host, port = gw.source.address
        r_idle, w_idle = await asyncio.open_connection(host, port)
        r, w = await asyncio.open_connection(host, port)
        head = b"POST /api/v1/data/ingest HTTP/1.1\r\nHost: x\r\n"

        async def trickle() -> None:
            for b in head * 20:  # one byte every 50 ms: active, but never a whole request
                if w.is_closing():
                    return
                w.write(bytes([b]))
                await asyncio.sleep(0.05)

        t = asyncio.ensure_future(trickle())
        assert await asyncio.wait_for(_closed(r), 5)  # closed by the server
        assert await asyncio.wait_for(_closed(r_idle), 5)
        t.cancel()
        w_idle.close()


async def _closed(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection (EOF, or a reset when our bytes were unread)."""
    try:
        return await reader.read() == b""
    except ConnectionResetError:
        return True
