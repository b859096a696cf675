"""Metrics of a graph reading the real NATS JetStream: counts, end-to-end latency from the server's
timestamps, the ledger, and (when the source implements the hook) its lag."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from tests.observe.conftest import start_run, wait_for
from tests.observe.test_metrics import scrape, value

pytestmark = pytest.mark.services

N = 400


async def _publish(stream: str, subject: str, n: int) -> None:
    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect("nats://127.0.0.1:4222")
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=[subject + ".>"]))
        for i in range(n):
            await js.publish(f"{subject}.new", f'{{"id": {i}, "amount": {i % 50}}}'.encode())
    finally:
        await nc.close()


async def _delete(stream: str) -> None:
    import nats

    nc = await nats.connect("nats://127.0.0.1:4222")
    try:
        await nc.jetstream().delete_stream(stream)
    except Exception:  # noqa: BLE001, S110 - already gone
        pass
    finally:
        await nc.close()


def test_jetstream_graph_metrics(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    stream, subject = f"OPERATE_{tag.upper()}", f"operate_{tag}"
    asyncio.run(_publish(stream, subject, N))
    graph = f"""
        version: 1
        name: observed_js
        connections:
          nats: {{type: nats, url: "nats://127.0.0.1:4222"}}
        nodes:
          src:
            type: jetstream_source
            config: {{connection: nats, stream: {stream}, durable: operate-{tag}, subjects: ["{subject}.>"], batch: 100}}
          price:
            type: map
            inputs: [src]
            config: {{expr: '{{"id": msg.id, "total": double(msg.amount) * 1.2}}'}}
          out:
            type: file_sink
            inputs: [price]
            config: {{path: out.ndjson}}
          dead:
            type: file_sink
            inputs: [src.errors, price.errors, out.errors]
            config: {{path: dead.ndjson}}
    """
    run = start_run(tmp_path, graph)
    try:
        sm = wait_for(
            lambda: (
                (s := scrape(run))
                and value(s, "streamdag_node_committed_total", node="out") == N
                and value(s, "streamdag_source_in_flight", source="src") == 0
                and s
            ),
            30,
            "every JetStream message committed and acknowledged",
        )
        assert value(sm, "streamdag_source_settled_total", source="src", outcome="delivered") == N
        assert value(sm, "streamdag_integrity_mismatch", source="src") == 0
        # JetStream stamps each message on publish: latency = publish -> file commit, for all N
        assert value(sm, "streamdag_end_to_end_latency_seconds_count", sink="out") == N
        mean = value(sm, "streamdag_end_to_end_latency_seconds_sum", sink="out") / N
        assert 0 < mean < 60
        lag = [v for (name, lab), v in sm.items() if name == "streamdag_source_lag_messages"]
        assert lag in ([], [0.0])  # the gauge appears once jetstream_source implements lag()
        assert run.stop() == 0
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
        asyncio.run(_delete(stream))
    assert len((tmp_path / "out.ndjson").read_text().splitlines()) == N
