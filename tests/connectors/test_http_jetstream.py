"""http_source → jetstream_sink against the real NATS server: 202 only after the PubAck, and a
client retry with the same Idempotency-Key is dropped by JetStream (`Nats-Msg-Id` from `meta.id`)."""

from __future__ import annotations

import os
import textwrap
import uuid
from pathlib import Path

import aiohttp
import nats
import orjson
import pytest

from tests.connectors.http_harness import aio, post
from tests.connectors.test_http_graph import Running

pytestmark = pytest.mark.services
NATS_URL = os.environ.get("STREAMDAG_TEST_NATS", "nats://127.0.0.1:4222")


@aio
async def test_http_to_jetstream_retries_do_not_duplicate(tmp_path: Path) -> None:
    name = f"HTTP_{uuid.uuid4().hex[:10].upper()}"
    subject = f"http_{name.lower()}.in"
    path = tmp_path / "g.yaml"
    # idempotency_cache 0: the gateway does not replay, so deduplication is JetStream's alone
    path.write_text(textwrap.dedent(f"""
        version: 1
        name: http_js
        connections:
          nats:
            type: nats
            url: {NATS_URL}
            streams:
              {name}: {{subjects: ["{subject}"], duplicate_window: 2m}}
        nodes:
          ingest: {{type: http_source, config: {{port: 0, idempotency_cache: 0}}}}
          out: {{type: jetstream_sink, inputs: [ingest], config: {{connection: nats, subject: {subject}}}}}
    """))
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    try:
        run = Running(path)
        async with run as (runner, url), aiohttp.ClientSession() as s:
            ingest = url + "/api/v1/data/ingest"
            batch = orjson.dumps([{"n": 1}, {"n": 2}, {"n": 3}])
            for _ in range(3):  # the first try and two retries of the same request
                st, body, _ = await post(s, ingest, batch, Idempotency_Key="order-77")
                assert (st, body) == (202, {"accepted": 3, "ack": "committed"})
                # 202 came after the PubAck: the stream already holds the messages
                assert (await js.stream_info(name)).state.messages == 3
            st, _, _ = await post(s, ingest, b'{"n": 4}')  # no key: no id, always stored
            assert st == 202
            async with s.get(url + "/readyz") as resp:
                assert resp.status == 200 and (await resp.json())["connections"] == {"nats": "ok"}
            sink = runner.nodes["out"]
        info = await js.stream_info(name)
        assert info.state.messages == 4
        stored = [await js.get_msg(name, seq) for seq in range(1, 5)]
        assert [orjson.loads(m.data)["n"] for m in stored] == [1, 2, 3, 4]
        assert [m.headers.get("Nats-Msg-Id") if m.headers else None for m in stored] == [
            "out:order-77:0", "out:order-77:1", "out:order-77:2", None]
        assert sink.metrics()["duplicates"] == 6  # the two retries, dropped by the server
        assert run.report.error is None and run.report.balanced
    finally:
        try:
            await js.delete_stream(name)
        finally:
            await nc.close()
